"""Running an exercise's suite: ``python -m pytest exercises/NN_topic`` in a subprocess.

The JUnit XML of that pytest gives the outcome, while this module, loaded into it as a
plugin (``-p torchkata.runner``), streams each failure as it happens so that the first one
shows at once. It never imports torch itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from torchkata.progress import Exercise, rel

ENV_EVENTS = "TORCHKATA_KATA_EVENTS"
MAX_MESSAGE_LINES = 15


@dataclass
class RunResult:
    returncode: int
    failed: set[str]
    passed: set[str]
    events: list[dict]
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.passed) and not self.failed


def build_pytest_command(ex: Exercise, root: Path, junit: Path, device: str | None,
                         target: str | None, verbose: bool) -> list[str]:
    """``python -m pytest exercises/NN_topic ...``, run with the repository as cwd."""
    cmd = [sys.executable, "-m", "pytest", rel(root, ex.folder), "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if device:
        cmd.append(f"--device={device}")
    if target:
        cmd.append(f"--target={target}")
    cmd += ["-v"] if verbose else ["-p", "torchkata.runner", "-q", "--no-header"]
    return cmd


def run_suite(root: Path, ex: Exercise, device: str | None = None, target: str | None = None,
              verbose: bool = False, on_event=None) -> RunResult:
    """Run the exercise's suite in a subprocess; call ``on_event`` for each failure at once."""
    from torchkata.selfcheck import outcomes

    with tempfile.TemporaryDirectory(prefix="kata-") as tmp:
        junit, events, out = Path(tmp) / "junit.xml", Path(tmp) / "events.jsonl", Path(tmp) / "out"
        cmd = build_pytest_command(ex, root, junit, device, target, verbose)
        env = {**os.environ, ENV_EVENTS: str(events)}
        seen: list[dict] = []
        with out.open("w") as sink:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=None if verbose else sink,
                                    stderr=None if verbose else subprocess.STDOUT)
            try:
                offset = 0
                while True:
                    returncode = proc.poll()
                    offset = _read_events(events, offset, seen, on_event)
                    if returncode is not None:
                        break
                    time.sleep(0.05)
            except BaseException:
                _stop(proc)
                raise
        failed, passed = outcomes(junit)
        return RunResult(returncode, failed, passed, seen, out.read_text(errors="replace"))


def _read_events(path: Path, offset: int, seen: list[dict], on_event) -> int:
    """Read the complete JSON lines the pytest plugin appended since ``offset``."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        seen.append(event)
        if on_event:
            on_event(event)
    return offset + end


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def effective_target(target: str | None) -> str:
    return target or os.environ.get("TORCHKATA_TARGET") or "student"


# --- the pytest side: streaming failures to the runner ---------------------------------------


def _emit(event: dict) -> None:
    path = os.environ.get(ENV_EVENTS)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def _failure_message(report) -> str:
    """The learner-facing message: the test's own text, or the error and where it happened."""
    crash = getattr(report.longrepr, "reprcrash", None)
    chain = getattr(report.longrepr, "chain", None)
    style = getattr(chain[-1][0], "style", None) if chain else None
    if crash is None:
        return report.longreprtext
    if style == "value":  # pytest.fail(..., pytrace=False): the message is the whole story
        message = crash.message
        return message[len("Failed: "):] if message.startswith("Failed: ") else message
    message = "\n".join(line for line in crash.message.splitlines()
                        if not line.lstrip().startswith("+"))  # pytest's "+  where ..." lines
    where = crash.path
    try:
        where = str(Path(crash.path).resolve().relative_to(Path.cwd()))
    except ValueError:
        pass
    return f"{message}\n  at {where}:{crash.lineno}"


def pytest_runtest_logreport(report) -> None:
    if report.failed:
        name = report.nodeid.split("::")[-1].split("[", 1)[0]
        when = "" if report.when == "call" else f" (error in {report.when})"
        _emit({"test": report.nodeid, "name": name + when, "message": _failure_message(report)})


def pytest_collectreport(report) -> None:
    if report.failed:
        lines = report.longreprtext.splitlines()
        errors = [line[4:] for line in lines if line.startswith("E   ")]
        message = "\n".join(errors[-MAX_MESSAGE_LINES:]) if errors else report.longreprtext
        name = Path(report.nodeid.split("::")[0]).name or report.nodeid
        _emit({"test": report.nodeid, "name": f"{name} (does not load)", "message": message})
