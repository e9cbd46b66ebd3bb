"""The pytest plugin: targets and devices, test order, dependencies, limits, a clean slate.

Registered through the ``pytest11`` entry point, so it is active wherever torchkata is
installed. It imports nothing heavy at the top level: an exercise pays only for what its
own tests import.

* ``--target`` / ``--device`` choose the code under test and where models run.
* ``--threads`` sets torch's intra-op thread count for the whole run (default 1, chosen by
  measurement: see the README), so results and timings do not depend on the machine.
* Order: within each test file, cheap property tests run first and ``@pytest.mark.trains``
  tests after them; a test runs after the tests it ``@pytest.mark.requires``.
* Dependencies: while a required test fails, the dependent test is skipped as
  "not checked: depends on ..." instead of giving a diagnosis that may be wrong.
* Limits: a time budget per test (see torchkata.limits), os._exit refused, captured output
  capped in reports, and every process-wide setting restored after each test.
"""

from __future__ import annotations

import gc
import heapq
import os
import sys
from pathlib import Path

import pytest

from torchkata import globalstate, impact, limits, loader, paths, targets

SEED = 0
ENV_THREADS = "TORCHKATA_THREADS"
ENV_BUDGET_SCALE = "TORCHKATA_BUDGET_SCALE"
DEFAULT_THREADS = 1
# Per-test time budgets, a few times the slowest reference test of each kind measured on a
# 2-core machine (README, "Timings"): cheap property tests take well under 1 s each.
BUDGET_CHEAP = 15.0
BUDGET_TRAINS = 60.0
MAX_CAPTURE = 4000  # characters of captured output kept per section of a report
NOT_CHECKED = "not checked: "


MARKERS = (
    "slow: takes more than a few seconds; skipped unless --runslow is given",
    "gpu: needs CUDA; runs only with --device cuda (or auto on a CUDA machine)",
    "trains(budget=SECONDS): trains a model or runs a script; runs after the cheap tests",
    "requires(*tests): relies on these tests of the same file; not checked while one fails",
)


def _register_hypothesis_profiles() -> None:
    """At import, before hypothesis's own plugin reads --hypothesis-profile."""
    try:
        from hypothesis import HealthCheck, Phase, settings
    except ImportError:  # pragma: no cover - hypothesis is a dependency
        return
    common = dict(
        deadline=None,  # the first call of a model on a cold CPU can take far over 200 ms
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
        report_multiple_bugs=False,  # one clear failure per test, not an exception group
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )
    # the default: deterministic, so a learner's failure is the same on every run
    settings.register_profile("torchkata", derandomize=True, max_examples=25, **common)
    # fresh random examples (vary them with --hypothesis-seed), for maintainers
    settings.register_profile("random", derandomize=False, max_examples=25, database=None,
                              **common)
    settings.register_profile("thorough", derandomize=False, max_examples=300, database=None,
                              **common)


_register_hypothesis_profiles()


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
    group.addoption(
        "--threads", type=int, default=int(os.environ.get(ENV_THREADS, DEFAULT_THREADS)),
        help=f"torch's intra-op threads for the run [env {ENV_THREADS}; "
             f"default: {DEFAULT_THREADS}]",
    )
    group.addoption(
        "--budget-scale", type=float,
        default=float(os.environ.get(ENV_BUDGET_SCALE, "1")),
        help=f"multiply every per-test time budget (a slow machine) [env {ENV_BUDGET_SCALE}]",
    )
    group.addoption(
        "--record-impact", metavar="FILE", default=None,
        help="write which functions of the code under test each test calls, as JSON (for "
             "the self-check's and the mutation tool's test selection; see torchkata.impact)",
    )


_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    targets.set_current(config.getoption("--target"))
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    threads = config.getoption("--threads")
    if threads < 1:
        raise pytest.UsageError(f"--threads must be at least 1, got {threads}")
    # child processes the tests start (scripts, distributed ranks) get the same count
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    if config.getoption("--device") == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(
            "--device cuda was asked for, but torch.cuda.is_available() is False on "
            "this machine (no GPU, or a CPU-only build of torch). Use --device cpu or auto."
        )
    config._torchkata_outcomes = {}  # (test file, function name) -> "failed" | "not checked"
    config._torchkata_recorder = None
    if config.getoption("--record-impact"):
        config._torchkata_recorder = impact.Recorder()
    try:
        from hypothesis import settings
    except ImportError:  # pragma: no cover
        return
    if not config.getoption("hypothesis_profile", default=None):
        settings.load_profile("torchkata")


def pytest_report_header(config: pytest.Config) -> str:
    target = config.getoption("--target")
    return (f"torchkata: target={targets.describe(target)}, device="
            f"{config.getoption('--device')}, threads={config.getoption('--threads')}")


# --- collection: skips, order, dependencies --------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_gpu = _resolved_device_name(config) == "cuda"
    run_slow = config.getoption("--runslow")
    for item in items:
        if item.get_closest_marker("gpu") and not run_gpu:
            item.add_marker(pytest.mark.skip(reason="needs --device cuda"))
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        _check_requires(item)
    items[:] = order(items)
    # Everything collection imported (torch, the tests, the code under test) lives to the end
    # of the run: frozen, the garbage collector no longer walks it in every collection, nor
    # in pytest's gc.collect() calls at exit (half a second with torch loaded).
    gc.collect()
    gc.freeze()
    recorder = config._torchkata_recorder
    if recorder is not None:
        recorder.watch({str(f) for f in map(_code_folder, items) if f is not None})
        recorder.start()


def test_id(item: pytest.Item) -> str:
    """``test_file.py::test_name``, the catalog's way of naming a test (parameters dropped)."""
    return f"{item.path.name}::{_function_name(item)}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    recorder = getattr(session.config, "_torchkata_recorder", None)
    if recorder is None:
        return
    recorder.stop()
    uses: dict[str, list[str]] = {}
    for item in session.items:
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        keys = uses.setdefault(test_id(item), [])
        keys += [_fixture_key(d) for ds in defs.values() for d in ds]
    impact.write(Path(session.config.getoption("--record-impact")), recorder.tests(uses))


def _fixture_key(fixturedef) -> str:
    return f"fixture {fixturedef.baseid}::{fixturedef.argname}"


def _function_name(item: pytest.Item) -> str:
    return getattr(item, "originalname", None) or item.name.split("[", 1)[0]


def required(item: pytest.Item) -> list[str]:
    names: list[str] = []
    for mark in item.iter_markers("requires"):
        names += [str(a) for a in mark.args]
    return names


def _check_requires(item: pytest.Item) -> None:
    module = getattr(item, "module", None)
    for name in required(item):
        if module is not None and not callable(getattr(module, name, None)):
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.requires names {name!r}, which is not a test "
                f"of the same file")


def order(items: list[pytest.Item]) -> list[pytest.Item]:
    """Cheap tests before ``trains`` tests within each file; required tests first."""
    first_seen: dict[Path, int] = {}
    for item in items:
        first_seen.setdefault(item.path, len(first_seen))

    def key(i: int) -> tuple:
        item = items[i]
        stage = 1 if item.get_closest_marker("trains") else 0
        return (first_seen[item.path], stage, i)

    by_name: dict[tuple[Path, str], list[int]] = {}
    for i, item in enumerate(items):
        by_name.setdefault((item.path, _function_name(item)), []).append(i)
    waits_for: dict[int, set[int]] = {}
    unlocks: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        deps = {j for name in required(item) for j in by_name.get((item.path, name), [])}
        deps.discard(i)
        waits_for[i] = deps
        for j in deps:
            unlocks.setdefault(j, []).append(i)
    ready = [key(i) for i in range(len(items)) if not waits_for[i]]
    heapq.heapify(ready)
    result: list[int] = []
    while ready:
        i = heapq.heappop(ready)[-1]
        result.append(i)
        for k in unlocks.get(i, []):
            waits_for[k].discard(i)
            if not waits_for[k]:
                heapq.heappush(ready, key(k))
    if len(result) < len(items):  # a cycle: keep the rest in their original order
        result += [i for i in range(len(items)) if i not in set(result)]
    return [items[i] for i in result]


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


# --- running one test ---------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    """Seed every RNG before a test and restore every global it may change afterwards."""
    saved = globalstate.save()
    globalstate.seed_everything(SEED)
    loader.touched.clear()
    recorder = item.config._torchkata_recorder
    if recorder is not None:
        recorder.push(test_id(item))
        checks = sys.modules.get("torchkata.checks")
        if checks is not None:  # a model cached by an earlier test would hide this one's calls
            checks._shared.clear()
    try:
        return (yield)
    finally:
        if recorder is not None:
            recorder.pop()
        globalstate.restore(saved)


def pytest_runtest_setup(item: pytest.Item) -> None:
    outcomes = item.config._torchkata_outcomes
    file = item.nodeid.split("::")[0]
    for name in required(item):
        outcome = outcomes.get((file, name))
        if outcome:
            which = "fails" if outcome == "failed" else "was not checked"
            pytest.skip(f"{NOT_CHECKED}depends on {name}, which {which}")


def budget_of(item: pytest.Item) -> float:
    mark = item.get_closest_marker("trains")
    seconds = BUDGET_CHEAP
    if mark is not None:
        seconds = float(mark.kwargs.get("budget", BUDGET_TRAINS))
    return seconds * item.config.getoption("--budget-scale")


def _code_folder(item: pytest.Item) -> Path | None:
    """The folder of the code under test, or None for a test outside an exercise."""
    try:
        return targets.resolve(paths.exercise_dir_of(item.path)).resolve()
    except ValueError:
        return None


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings):
    """pytest-timeout's thread backstop, on one watchdog thread (see torchkata.limits)."""
    if settings.method != "thread":
        return None  # its signal method: pytest-timeout's own
    import pytest_timeout

    limits.WATCHDOG.arm(item, settings.timeout,
                        lambda: pytest_timeout.timeout_timer(item, settings))
    return True


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item):
    if item not in limits.WATCHDOG.armed:
        return None  # not ours (the signal method)
    limits.WATCHDOG.disarm(item)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    folder = _code_folder(item)
    if folder is None:
        return (yield)
    with limits.budget(budget_of(item), folder, item.name), \
            limits.no_process_exit(f"running {item.name}"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    # fixtures may run learner code too (a trained model shared by a module's tests)
    item = getattr(request, "_pyfuncitem", None)
    folder = _code_folder(item) if item is not None else None
    if folder is None or fixturedef.argname in ("device", "tmp_path", "request"):
        return (yield)
    recorder = item.config._torchkata_recorder
    if recorder is not None:  # what a fixture calls counts for every test that uses it
        recorder.push(_fixture_key(fixturedef))
    try:
        with limits.budget(budget_of(item), folder, f"fixture {fixturedef.argname}"), \
                limits.no_process_exit(f"setting up {fixturedef.argname}"):
            return (yield)
    finally:
        if recorder is not None:
            recorder.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    excinfo = call.excinfo
    if excinfo is not None and excinfo.errisinstance(limits.OverBudget):
        exc = excinfo.value
        if exc.where:
            report.longrepr = (
                f"{exc.function} did not return within {exc.budget:g} s, the budget of this "
                f"test (the reference needs a fraction of it). Still running at:\n"
                f"  {exc.where}\nExpected it to finish: look for a loop that never ends, or "
                f"far more work than a small test needs.")
        else:
            report.longrepr = (f"{item.name} did not finish within {exc.budget:g} s, its "
                               f"budget (the reference needs a fraction of it).")
    elif excinfo is not None and excinfo.errisinstance(limits.ProcessExit):
        report.longrepr = str(excinfo.value)
    if report.failed and loader.touched:
        report.sections.append(("code under test", "\n".join(loader.touched.values())))
    report.sections = [(title, _cap(text) if title.startswith("Captured") else text)
                       for title, text in report.sections]
    return report


def _cap(text: str) -> str:
    if len(text) <= MAX_CAPTURE:
        return text
    head, tail = text[: MAX_CAPTURE // 2], text[-MAX_CAPTURE // 4:]
    cut = len(text) - len(head) - len(tail)
    return f"{head}\n... [{cut} characters of output cut by torchkata] ...\n{tail}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _config is None:
        return
    key = (report.nodeid.split("::")[0], report.nodeid.split("::")[-1].split("[", 1)[0])
    if report.failed:
        _config._torchkata_outcomes[key] = "failed"
    elif report.skipped and _reason(report).startswith(NOT_CHECKED):
        _config._torchkata_outcomes.setdefault(key, "not checked")


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
        return text[len("Skipped: "):] if text.startswith("Skipped: ") else text
    return ""
