"""Hard limits on code under test: a time budget per test, and no way to end the process.

A test over its budget is interrupted at once by SIGALRM with :class:`OverBudget`, a
BaseException, so hypothesis neither shrinks nor retries it (it only catches Exception). The
learner's function that was running is remembered: every later test that calls it is skipped
at once as "not checked" instead of waiting out its own budget. Where SIGALRM is missing
(Windows) only pytest-timeout's backstop applies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from types import CodeType, FrameType

HAS_ALARM = hasattr(signal, "setitimer") and hasattr(signal, "SIGALRM")


class OverBudget(BaseException):  # noqa: N818 - reads as a verdict, like KeyboardInterrupt
    """The test ran past its budget; ``where`` is the learner's line that was running."""

    def __init__(self, budget: float, where: str, function: str) -> None:
        super().__init__(where)
        self.budget, self.where, self.function = budget, where, function


class ProcessExit(BaseException):  # noqa: N818
    """Code under test called os._exit, which would end the whole test run without a word."""


# code objects of learner functions that did not return: code -> (function, budget, test)
hung: dict[CodeType, tuple[str, float, str]] = {}


def _short(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename


def _learner_frame(frame: FrameType | None, folder: Path) -> FrameType | None:
    """The innermost frame running a file of ``folder`` (the code under test)."""
    while frame is not None:
        if Path(frame.f_code.co_filename).resolve().parent == folder:
            return frame
        frame = frame.f_back
    return None


@contextlib.contextmanager
def budget(seconds: float, folder: Path, test: str):
    """Run the body with an alarm after ``seconds``; remember which learner code hung."""
    if (not HAS_ALARM or seconds <= 0 or not _in_main_thread()
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):  # an outer budget is running
        yield
        return

    deferred = [0]

    def on_alarm(signum, frame):
        # Interrupting a library's import would leave a half-made module in sys.modules for
        # every later test: let it finish (for up to 30 s more), then stop the test.
        if _importing_below_learner_code(frame, folder) and deferred[0] < 60:
            deferred[0] += 1
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            return
        learner = _learner_frame(frame, folder)
        if learner is None:
            raise OverBudget(seconds, "", "")
        code = learner.f_code
        function = f"{code.co_name} ({Path(code.co_filename).name})"
        hung.setdefault(code, (function, seconds, test))
        line = _source_line(code.co_filename, learner.f_lineno)
        where = f"{_short(code.co_filename)}:{learner.f_lineno}{': ' + line if line else ''}"
        raise OverBudget(seconds, where, function)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracer = _install_hang_tracer()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if tracer and sys.gettrace() is tracer:
            sys.settrace(None)


def _importing_below_learner_code(frame: FrameType | None, folder: Path) -> bool:
    """Whether Python's import machinery runs inside (below) the innermost learner frame."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith("<frozen importlib"):
            return True
        if Path(filename).resolve().parent == folder:
            return False
        frame = frame.f_back
    return False


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _source_line(filename: str, lineno: int) -> str:
    import linecache

    return linecache.getline(filename, lineno).strip()


def _install_hang_tracer():
    """Once some learner code hung, calling it again skips the test at once."""
    if not hung or sys.gettrace() is not None:
        return None

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code in hung:
            import pytest

            function, seconds, test = hung[frame.f_code]
            raise pytest.skip.Exception(
                f"not checked: {function} did not return in {seconds:g} s in {test}")
        return None

    sys.settrace(tracer)
    return tracer


@contextlib.contextmanager
def no_process_exit(doing: str):
    """While the body runs, os._exit raises ProcessExit instead of ending the process."""
    real = os._exit
    pid = os.getpid()

    def refuse(status: int = 0):
        if os.getpid() != pid:  # a child forked by the code under test leaves as usual
            real(status)
        raise ProcessExit(f"os._exit({status}) was called while {doing}. Expected code under "
                          f"test to return or raise: ending the process ends the whole test "
                          f"run, with no report of any test.")

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real
