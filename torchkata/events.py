"""The pytest side of ``kata``: a plugin (``-p torchkata.events``) that streams each test's
start and outcome as JSON lines to the file named by ``TORCHKATA_KATA_EVENTS``.

Events: ``{"event": "start", "test": nodeid}`` when a test begins, and
``{"event": "result", "test": nodeid, "name": ..., "outcome": ..., "message": ...}`` when
it ends, where outcome is passed, failed, skipped or "not checked" (a skip whose reason
begins with "not checked:"). Counts built from these agree with pytest's own summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV_EVENTS = "TORCHKATA_KATA_EVENTS"
NOT_CHECKED = "not checked: "


def _emit(event: dict) -> None:
    path = os.environ.get(ENV_EVENTS)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def display_name(nodeid: str) -> str:
    """``test_x[mnist]`` for ``exercises/05_data/test_data.py::test_x[mnist]``."""
    return nodeid.split("::")[-1]


def failure_message(report) -> str:
    """The learner-facing message: the test's own text, or the error and where it happened."""
    longrepr = report.longrepr
    if isinstance(longrepr, str):
        message = longrepr
    else:
        crash = getattr(longrepr, "reprcrash", None)
        chain = getattr(longrepr, "chain", None)
        style = getattr(chain[-1][0], "style", None) if chain else None
        if crash is None:
            message = report.longreprtext
        elif style == "value":  # pytest.fail(..., pytrace=False): the message is the story
            message = crash.message
            message = message[len("Failed: "):] if message.startswith("Failed: ") else message
        else:
            message = "\n".join(line for line in crash.message.splitlines()
                                if not line.lstrip().startswith("+"))  # "+  where ..." lines
            where = crash.path
            try:
                where = str(Path(crash.path).resolve().relative_to(Path.cwd()))
            except ValueError:
                pass
            message = f"{message}\n  at {where}:{crash.lineno}"
    code = [text for title, text in report.sections if title == "code under test"]
    if code:
        message += "\n  code under test: " + "; ".join(code[0].splitlines())
    return message


def skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        text = str(longrepr[2])
        return text[len("Skipped: "):] if text.startswith("Skipped: ") else text
    return ""


def pytest_runtest_logstart(nodeid, location) -> None:
    _emit({"event": "start", "test": nodeid})


_failed: set[str] = set()


def pytest_runtest_logreport(report) -> None:
    name = display_name(report.nodeid)
    if report.failed:
        _failed.add(report.nodeid)
        when = "" if report.when == "call" else f" (error in {report.when})"
        _emit({"event": "result", "test": report.nodeid, "name": name + when,
               "outcome": "failed", "message": failure_message(report)})
    elif report.skipped:
        reason = skip_reason(report)
        outcome = "not checked" if reason.startswith(NOT_CHECKED) else "skipped"
        _emit({"event": "result", "test": report.nodeid, "name": name, "outcome": outcome,
               "message": reason})
    elif report.when == "call" and report.passed:
        _emit({"event": "result", "test": report.nodeid, "name": name, "outcome": "passed",
               "message": ""})


def pytest_collectreport(report) -> None:
    if report.failed:
        lines = report.longreprtext.splitlines()
        errors = [line[4:] for line in lines if line.startswith("E   ")]
        message = "\n".join(errors[-15:]) if errors else report.longreprtext
        name = Path(report.nodeid.split("::")[0]).name or report.nodeid
        _emit({"event": "result", "test": report.nodeid, "name": f"{name} (does not load)",
               "outcome": "failed", "message": message})
