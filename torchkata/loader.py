"""Load the code under test from the folder the target names, in isolation.

An exercise is a folder of plain scripts that import each other by their bare names
(``from model import Net`` in ``main.py``), as a learner who runs them directly expects.
The loader imports such a module with its folder first on ``sys.path`` and takes every
sibling module it loaded back out of ``sys.modules`` afterwards, so that two exercises (or
the student's and the reference's copy of one exercise) never see each other's modules.
Modules are cached per (folder, name): a test file and the code it loads share one copy.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from types import ModuleType

from torchkata import globalstate, limits, paths, targets

_cache: dict[tuple[Path, str], ModuleType] = {}
_failures: dict[tuple[Path, str], str] = {}


class StarterImportError(Exception):
    """The code under test does not import; the message names the file and line."""


def _sibling_names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.py") if not p.stem.startswith("test_")}


def _describe_import_error(folder: Path, name: str, exc: BaseException) -> str:
    if isinstance(exc, limits.OverBudget):
        return (f"{exc.where or name + '.py'}: importing {name}.py did not finish within "
                f"{exc.budget:g} s.\nExpected importing a module to define things, not run "
                f"them: look for a loop that never ends, or training at the top level (put it "
                f"under `if __name__ == \"__main__\":`).")
    where = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where = (exc.filename, exc.lineno)
    else:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if Path(frame.filename).resolve().parent == folder:
                where = (frame.filename, frame.lineno)
                break
    if where is None:
        where = (str(folder / f"{name}.py"), None)
    file = _short(Path(where[0]))
    line = f":{where[1]}" if where[1] else ""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    kind = type(exc).__name__
    return (
        f"{file}{line}: {kind}: {detail}\n"
        f"The exercise's code must import before its tests can run: fix this line first, "
        f"then run the tests again."
    )


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load(folder: Path, name: str) -> ModuleType:
    """Import ``name`` from ``folder``; raise StarterImportError if it does not import."""
    folder = folder.resolve()
    key = (folder, name)
    if key in _cache:
        return _cache[key]
    if key in _failures:
        raise StarterImportError(_failures[key])
    if not (folder / f"{name}.py").is_file():
        raise StarterImportError(f"{_short(folder / (name + '.py'))} does not exist")

    siblings = _sibling_names(folder)
    hidden = {n: sys.modules.pop(n) for n in siblings if n in sys.modules}
    for n in siblings:  # modules of this folder loaded earlier are reused, not re-imported
        if (folder, n) in _cache:
            sys.modules[n] = _cache[(folder, n)]
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    saved = globalstate.save()
    before = globalstate.settings()
    try:
        with limits.no_process_exit(f"importing {name}.py"):
            module = importlib.import_module(name)
    except BaseException as exc:  # noqa: B036 - a starter may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        _failures[key] = _describe_import_error(folder, name, exc)
        raise StarterImportError(_failures[key]) from None
    finally:
        changed = globalstate.describe_changes(before, globalstate.settings())
        globalstate.restore(saved)
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        for n in siblings:
            mod = sys.modules.pop(n, None)
            if mod is not None and Path(getattr(mod, "__file__", "") or "").parent == folder:
                _cache[(folder, n)] = mod
        sys.modules.update(hidden)
    if changed:
        _cache.pop(key, None)
        _failures[key] = (
            f"{_short(folder / (name + '.py'))}: importing it changes torch's process-wide "
            f"{', '.join(changed)}.\n"
            f"Expected importing a module to change no global setting: a setting made at the "
            f"top of a file applies to every other module and test in the process. Move it into "
            f"the function that needs it (or under `if __name__ == \"__main__\":`)."
        )
        raise StarterImportError(_failures[key])
    return module


class LazyModule:
    """Stands for a module of the code under test; imports it on first attribute access.

    Loading late keeps a broken starter from crashing test collection: the error becomes
    a short failure of each test that uses the module, and other exercises still run.
    """

    def __init__(self, exercise_dir: Path, name: str) -> None:
        self._exercise_dir = exercise_dir
        self._name = name

    def resolve(self) -> ModuleType:
        folder = targets.resolve(self._exercise_dir)
        try:
            return load(folder, self._name)
        except StarterImportError as exc:
            message = str(exc)
        import pytest

        pytest.fail(message, pytrace=False)

    def __getattr__(self, attr: str):
        if attr.startswith("_"):
            raise AttributeError(attr)
        module = self.resolve()
        if hasattr(module, attr):
            value = getattr(module, attr)
            _touch(module, attr, value)
            return value
        import pytest

        pytest.fail(
            f"{self._name}.py has no `{attr}`: the tests expect it to define `{attr}` "
            f"(check the spelling, or restore it if you removed it).",
            pytrace=False,
        )

    def __repr__(self) -> str:
        return f"<code under test: {self._exercise_dir.name}/{self._name}.py>"


# learner definitions the current test used, for "code under test: file:line" in a failure
touched: dict[str, str] = {}


def _touch(module: ModuleType, attr: str, value) -> None:
    import inspect
    import re

    if attr in touched:
        return
    file = getattr(module, "__file__", None)
    if inspect.isfunction(value) and value.__code__.co_filename == file:
        touched[attr] = f"{_short(Path(file))}:{value.__code__.co_firstlineno} (def {attr})"
    elif inspect.isclass(value) and value.__module__ == module.__name__ and file:
        try:
            text = Path(file).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        found = re.search(rf"^\s*class {re.escape(attr)}\b", text, re.MULTILINE)
        if found:
            line = text.count("\n", 0, found.start()) + 1
            touched[attr] = f"{_short(Path(file))}:{line} (class {attr})"


def under_test(name: str, test_file: str | None = None) -> LazyModule:
    """The module ``name`` of the code under test, for the exercise of the calling test file.

    Use it at the top of a test file: ``mlp = under_test("mlp")``. Which copy is loaded
    (the learner's, the reference, a mutant) is decided by ``--target`` when first used.
    """
    if test_file is None:
        test_file = sys._getframe(1).f_globals["__file__"]
    return LazyModule(paths.exercise_dir_of(test_file), name)
