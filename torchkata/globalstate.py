"""Process-wide settings that code under test can change, snapshotted and restored.

The plugin takes a snapshot before each test and restores it afterwards, so nothing one
test (or the learner's module, at import) changes reaches the next test or exercise. The
loader also compares a snapshot before and after importing the learner's module, to tell the
learner when their import itself changes a setting. torch is imported lazily.
"""

from __future__ import annotations

import os
import random
import sys
import warnings

# settings compared around an import of the learner's code: name -> how to read it
_TORCH_SETTINGS = {
    "default device": lambda t: str(t.get_default_device()),
    "default dtype": lambda t: str(t.get_default_dtype()),
    "grad mode": lambda t: t.is_grad_enabled(),
    "anomaly detection": lambda t: t.is_anomaly_enabled(),
    "deterministic algorithms": lambda t: t.are_deterministic_algorithms_enabled(),
    "float32 matmul precision": lambda t: t.get_float32_matmul_precision(),
    "thread count": lambda t: t.get_num_threads(),
}


def settings() -> dict[str, object]:
    """The torch settings a learner's module should never change when it is imported."""
    import torch

    return {name: read(torch) for name, read in _TORCH_SETTINGS.items()}


def describe_changes(before: dict, after: dict) -> list[str]:
    return [f"{name} ({before[name]} -> {after[name]})" for name in before
            if after.get(name) != before[name]]


def save() -> dict:
    """Everything :func:`restore` puts back."""
    import torch

    state = {
        "random": random.getstate(),
        "torch_rng": torch.get_rng_state(),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "device": torch.get_default_device(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "anomaly": (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
        "matmul": torch.get_float32_matmul_precision(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                  torch.backends.cudnn.enabled),
        "warnings": list(warnings.filters),
        "sys_path": list(sys.path),
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
    }
    if "numpy" in sys.modules:
        state["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    import torch

    if torch.get_default_device() != state["device"]:
        torch.set_default_device(None if state["device"].type == "cpu" else state["device"])
    torch.set_default_dtype(state["dtype"])
    torch.set_grad_enabled(state["grad"])
    random.setstate(state["random"])
    torch.set_rng_state(state["torch_rng"])
    if torch.get_num_threads() != state["threads"]:
        torch.set_num_threads(state["threads"])
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    if deterministic != (state["deterministic"], state["deterministic_warn_only"]):
        torch.use_deterministic_algorithms(state["deterministic"],
                                           warn_only=state["deterministic_warn_only"])
    if (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()) != state["anomaly"]:
        torch.set_anomaly_enabled(*state["anomaly"])
    if torch.get_float32_matmul_precision() != state["matmul"]:
        torch.set_float32_matmul_precision(state["matmul"])
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
     torch.backends.cudnn.enabled) = state["cudnn"]
    if warnings.filters != state["warnings"]:
        warnings.filters[:] = state["warnings"]
        warnings._filters_mutated()  # type: ignore[attr-defined]
    if sys.path != state["sys_path"]:
        sys.path[:] = state["sys_path"]
    if dict(os.environ) != state["environ"]:
        for key in set(os.environ) - set(state["environ"]):
            del os.environ[key]
        os.environ.update(state["environ"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if os.getcwd() != state["cwd"]:
        os.chdir(state["cwd"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    import torch

    torch.manual_seed(seed)  # seeds CUDA too, lazily
