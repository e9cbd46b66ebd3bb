"""The pytest plugin: --target and --device, the device fixture, and a clean slate per test.

Registered through the ``pytest11`` entry point, so it is active wherever torchkata is
installed. It imports nothing heavy at the top level: an exercise pays only for what its
own tests import.
"""

from __future__ import annotations

import os
import random
import sys

import pytest

from torchkata import targets

SEED = 0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("torchkata")
    group.addoption(
        "--target",
        default=os.environ.get(targets.ENV_TARGET, "student"),
        help="code under test: student (exercises/), reference (reference/) or a PATH "
        "holding a copy of an exercise [env TORCHKATA_TARGET; default: student]",
    )
    group.addoption(
        "--device",
        default=os.environ.get(targets.ENV_DEVICE, "cpu"),
        choices=targets.DEVICES,
        help="where models run: cpu, cuda, or auto (cuda when available) "
        "[env TORCHKATA_DEVICE; default: cpu]",
    )
    group.addoption(
        "--runslow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_configure(config: pytest.Config) -> None:
    target = config.getoption("--target")
    targets.set_current(target)
    device = config.getoption("--device")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(
                "--device cuda was asked for, but torch.cuda.is_available() is False on "
                "this machine (no GPU, or a CPU-only build of torch). Use --device cpu or auto."
            )
    _load_hypothesis_profile(config)


def _load_hypothesis_profile(config: pytest.Config) -> None:
    try:
        from hypothesis import HealthCheck, Phase, settings
    except ImportError:  # pragma: no cover - hypothesis is a dependency
        return
    # Deterministic and without deadlines: a kata's failures must be reproducible, and the
    # first call of a model on a cold CPU can take far longer than hypothesis's 200 ms.
    settings.register_profile(
        "torchkata",
        deadline=None,
        derandomize=True,
        max_examples=25,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
        report_multiple_bugs=False,  # one clear failure per test, not an exception group
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )
    settings.register_profile("thorough", deadline=None, max_examples=300)
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile("torchkata")


def pytest_report_header(config: pytest.Config) -> str:
    target = config.getoption("--target")
    return f"torchkata: target={targets.describe(target)}, device={config.getoption('--device')}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_gpu = _resolved_device_name(config) == "cuda"
    run_slow = config.getoption("--runslow")
    for item in items:
        if "gpu" in item.keywords and not run_gpu:
            item.add_marker(pytest.mark.skip(reason="needs --device cuda"))
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))


def _resolved_device_name(config: pytest.Config) -> str:
    device = config.getoption("--device")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config):
    """The torch.device every model and tensor of a test should live on."""
    import torch

    return torch.device(_resolved_device_name(pytestconfig))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    """Seed every RNG before a test and restore every global it may change afterwards."""
    saved = _save_globals()
    _seed_everything(SEED)
    try:
        return (yield)
    finally:
        _restore_globals(saved)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    import torch

    torch.manual_seed(seed)  # seeds CUDA too, lazily


def _save_globals() -> dict:
    import torch

    state = {
        "random": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cwd": os.getcwd(),
    }
    if "numpy" in sys.modules:
        state["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore_globals(state: dict) -> None:
    import torch

    random.setstate(state["random"])
    torch.set_rng_state(state["torch_rng"])
    torch.set_grad_enabled(state["grad"])
    torch.set_default_dtype(state["dtype"])
    if torch.get_num_threads() != state["threads"]:
        torch.set_num_threads(state["threads"])
    if torch.are_deterministic_algorithms_enabled() != state["deterministic"]:
        torch.use_deterministic_algorithms(state["deterministic"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if os.getcwd() != state["cwd"]:
        os.chdir(state["cwd"])
