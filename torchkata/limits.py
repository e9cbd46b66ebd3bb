"""Hard limits on code under test: a time budget per test, and no way to end the process.

A test over its budget is interrupted at once by SIGALRM with :class:`OverBudget`, a
BaseException, so hypothesis neither shrinks nor retries it (it only catches Exception). The
learner's function that was running is remembered: every later test that calls it is skipped
at once as "not checked" instead of waiting out its own budget. Where SIGALRM is missing
(Windows) only pytest-timeout's backstop applies.

That backstop (for code stuck outside Python, or that silenced SIGALRM) keeps
pytest-timeout's settings, markers and report, but runs on one :class:`Watchdog` thread per
process instead of a thread started and joined for every test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
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


class Watchdog:
    """One daemon thread that calls an armed action once its deadline has passed.

    pytest-timeout's thread method starts a ``threading.Timer`` for each test and joins it
    after the test. Each start and join hands the interpreter lock to another thread and
    waits for it to be scheduled: nothing on an idle machine, but beside busy processes
    about 15 ms a test (an 08 run: 2.1 s instead of 1.5 s). This thread is started once per
    process (again in a forked child, which does not inherit it) and looks at its deadlines
    every ``tick`` seconds; arming and disarming only set a dictionary entry.
    """

    def __init__(self, tick: float = 0.5) -> None:
        self.tick = tick
        self.armed: dict[object, tuple[float, object]] = {}  # key -> (deadline, action)
        self._pid: int | None = None
        self._ident: int | None = None

    def arm(self, key: object, seconds: float, action) -> None:
        """Call ``action()`` (on the watchdog's thread) if ``key`` is still armed ``seconds`` on."""
        self.armed[key] = (time.monotonic() + seconds, action)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            thread = threading.Thread(target=self._watch, name="torchkata watchdog", daemon=True)
            thread.start()

    def is_current(self) -> bool:
        """Whether the calling thread is the watchdog (whose os._exit must not be refused)."""
        return threading.get_ident() == self._ident and self._pid == os.getpid()

    def disarm(self, key: object) -> None:
        self.armed.pop(key, None)

    def _watch(self) -> None:
        self._ident = threading.get_ident()  # before it can act
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            for key, (deadline, action) in list(self.armed.items()):
                if now >= deadline and self.armed.get(key, (None,))[0] == deadline:
                    self.armed.pop(key, None)
                    try:
                        action()  # pytest-timeout's: dump the stacks and end the process
                    except BaseException:  # noqa: BLE001 - the backstop must not die quietly
                        import traceback

                        traceback.print_exc()
                        _REAL_EXIT(1)


WATCHDOG = Watchdog()
_REAL_EXIT = os._exit


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
        if os.getpid() != pid or WATCHDOG.is_current():  # a forked child, or the backstop
            real(status)
        raise ProcessExit(f"os._exit({status}) was called while {doing}. Expected code under "
                          f"test to return or raise: ending the process ends the whole test "
                          f"run, with no report of any test.")

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real
