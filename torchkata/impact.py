"""Test-impact selection: which tests of a suite can see a change to the code under test.

The bug-catalog proofs and the mutation tool run a suite against hundreds of copies of a
reference, each with one small change. A test that never calls the changed function gives
the same verdict on the copy as on the reference (which passes), so only the tests that do
call it need to run.

* **Recording** (``pytest --record-impact=FILE``, one run against the reference): a
  ``sys.settrace`` hook notes every function of the code under test that each test calls.
  Calls made while a fixture is set up count for every test that uses the fixture (a
  module-scoped fixture trains once for several tests). A test that starts a process
  (``subprocess``, ``os.fork``, ``multiprocessing``) counts as calling everything: its
  children are not traced.
* **Selecting** (:func:`select`): a change that lies wholly inside the body of one function
  selects the tests that called that function. A change anywhere else (imports, module
  constants, class bodies, decorators, default values, a ``def`` line) selects every test.

Caches shared between tests defeat the recording (the second test that uses a cached model
never calls its ``__init__``): tests share objects through fixtures or
:func:`torchkata.checks.shared`, which the recording run does not cache across tests.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import threading
from pathlib import Path

EVERYTHING = "*"  # in a test's set of calls: it started a process, so it sees every change
ENV_RECORDING = "TORCHKATA_RECORDING_IMPACT"


# --- recording ------------------------------------------------------------------------------


class Recorder:
    """Notes, per context (a test or a fixture), the learner functions called in it."""

    def __init__(self) -> None:
        self.folders: set[str] = set()
        self.calls: dict[str, set[str]] = {}
        self._watched: dict[str, bool] = {}  # co_filename -> whether it is code under test
        self.context: list[str] = []
        self._patched: list[tuple[object, str, object]] = []

    # contexts: a stack, since a fixture's setup may set up other fixtures
    def push(self, key: str) -> None:
        self.context.append(key)
        self.calls.setdefault(key, set())

    def pop(self) -> None:
        self.context.pop()

    def watch(self, folders: set[str]) -> None:
        """The code under test lives in ``folders``; tests may also run copies of its files
        elsewhere (a script run from a temporary folder), so a file of the same name outside
        the installed libraries counts too."""
        self.folders = folders
        self._names = {p.name for f in folders for p in Path(f).glob("*.py")
                       if not p.name.startswith("test_")}
        import sysconfig

        self._libraries = tuple({sysconfig.get_path(k) for k in ("stdlib", "platstdlib",
                                                                    "purelib", "platlib")}
                                | {os.path.dirname(os.path.abspath(__file__))})
        self._watched.clear()

    def _is_watched(self, filename: str) -> bool:
        watched = self._watched.get(filename)
        if watched is None:
            name = os.path.basename(filename)
            if name.startswith("test_"):  # the tests themselves live beside the student's code
                watched = False
            elif os.path.dirname(filename) in self.folders:
                watched = True
            else:  # a copy of a code file, outside the libraries
                watched = name in self._names and not os.path.abspath(filename).startswith(
                    self._libraries)
            self._watched[filename] = watched
        return watched

    def _trace(self, frame, event, arg):
        code = frame.f_code
        if event == "call" and self.context and self._is_watched(code.co_filename):
            self.calls[self.context[-1]].add(
                f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}")
        return None

    def _process_started(self) -> None:
        if self.context:
            self.calls[self.context[-1]].add(EVERYTHING)

    def start(self) -> None:
        import _posixsubprocess
        import subprocess

        os.environ[ENV_RECORDING] = "1"
        for owner, name in ((os, "fork"), (os, "posix_spawn"), (os, "posix_spawnp"),
                            (os, "system"), (_posixsubprocess, "fork_exec"),
                            (subprocess, "_fork_exec")):  # subprocess keeps its own name
            real = getattr(owner, name, None)
            if real is None:
                continue
            self._patched.append((owner, name, real))
            setattr(owner, name, self._noting(real))
        sys.settrace(self._trace)
        threading.settrace(self._trace)

    def _noting(self, real):
        def wrapper(*args, **kwargs):
            self._process_started()
            return real(*args, **kwargs)
        return wrapper

    def stop(self) -> None:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
        for owner, name, real in reversed(self._patched):
            setattr(owner, name, real)
        self._patched.clear()
        os.environ.pop(ENV_RECORDING, None)

    def tests(self, uses: dict[str, list[str]]) -> dict[str, list[str]]:
        """Per test id, its own calls and those of the fixtures it uses (``uses``)."""
        out: dict[str, set[str]] = {}
        for test, contexts in uses.items():
            seen = out.setdefault(test, set())
            for key in (test, *contexts):
                seen |= self.calls.get(key, set())
        return {t: sorted(c) for t, c in sorted(out.items())}


def recording() -> bool:
    """Whether this process is the recording run (caches must not cross tests)."""
    return os.environ.get(ENV_RECORDING) == "1"


def write(path: Path, tests: dict[str, list[str]]) -> None:
    path.write_text(json.dumps({"tests": tests}, indent=1), encoding="utf-8")


def read(path: Path) -> dict[str, list[str]]:
    return json.loads(path.read_text(encoding="utf-8"))["tests"]


# --- selecting ------------------------------------------------------------------------------


def _functions(tree: ast.AST) -> list[tuple[int, int, int]]:
    """(first line as co_firstlineno counts it, first body line, last line) of each def."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append((first, node.body[0].lineno, node.end_lineno or node.lineno))
        elif isinstance(node, ast.Lambda):
            out.append((node.lineno, node.body.lineno, node.end_lineno or node.lineno))
    return out


def enclosing_function(source: str, start: int, end: int) -> int | None:
    """co_firstlineno of the innermost function whose body holds lines start..end, or None."""
    best = None
    for first, body, last in _functions(ast.parse(source)):
        if body <= start and end <= last and (best is None or body > best[1]):
            best = (first, body)
    return best[0] if best else None


def select(tests: dict[str, list[str]], file: str, old: str, new: str) -> list[str] | None:
    """The tests that can see ``file`` changed from ``old`` to ``new`` (None: every test)."""
    chosen: set[str] = set()
    for start, end in changed_spans(old, new):
        first = enclosing_function(old, start, end)
        if first is None:
            return None
        key = f"{file}:{first}"
        chosen |= {t for t, calls in tests.items() if key in calls or EVERYTHING in calls}
    return sorted(chosen)


def changed_spans(old: str, new: str) -> list[tuple[int, int]]:
    """The lines of ``old`` (1-based, inclusive) each change touches; an insertion touches
    the lines on both sides of it."""
    import difflib

    a, b = old.splitlines(), new.splitlines()
    spans = []
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(None, a, b,
                                                         autojunk=False).get_opcodes():
        if tag == "insert":
            spans.append((i1, i1 + 1))  # 0-based i1 - 1 and i1, as 1-based lines
        elif tag != "equal":
            spans.append((i1 + 1, i2))
    return spans
