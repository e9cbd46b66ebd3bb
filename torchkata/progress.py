"""Where the learner stands: the exercises of a repository and the progress in .kata/.

``find_root`` walks up to the folder that holds ``exercises/`` and ``reference/``; each
exercise is read anew from its folder and ``exercise.toml``. Progress lives in
``.kata/state.json`` there (ignored by git); a corrupt file is set aside, never a crash.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from torchkata import paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATE_DIR = ".kata"
STATE_FILE = "state.json"
STATUSES = ("failing", "edited", "done")


class KataError(Exception):
    """A problem to tell the learner in one message (exit status 2), not a crash."""


# --- the repository and its exercises -----------------------------------------------------


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding exercises/ and reference/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "exercises").is_dir() and (folder / "reference").is_dir():
            return folder
    return paths.repo_root()


def rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@dataclass
class Exercise:
    name: str  # "01_mlp"
    folder: Path
    reference: Path
    title: str = ""
    hints: list[str] = field(default_factory=list)

    @property
    def number(self) -> int:
        return int(self.name[:2])

    @property
    def short(self) -> str:
        return self.name[:2]


def read_meta(folder: Path) -> dict:
    """exercise.toml, or {} when it is missing or broken (an exercise being written)."""
    try:
        meta = tomllib.loads((folder / "exercise.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def exercises(root: Path) -> list[Exercise]:
    """Every exercise folder of ``root``, in curriculum order (found anew on each call)."""
    found = []
    for name in paths.exercise_names(root):
        meta = read_meta(root / "exercises" / name)
        hints = meta.get("hints", [])
        found.append(Exercise(
            name=name,
            folder=root / "exercises" / name,
            reference=root / "reference" / name,
            title=str(meta.get("title", "")),
            hints=[str(h) for h in hints] if isinstance(hints, list) else [],
        ))
    if not found:
        raise KataError(f"no exercises found in {root / 'exercises'}")
    return found


def pick(all_exercises: list[Exercise], spec: str) -> Exercise:
    """The exercise named by ``spec``: ``1``, ``01``, ``01_mlp``, ``mlp`` or its folder path."""
    name = Path(spec.strip()).name
    for ex in all_exercises:
        if name in (ex.name, ex.name[3:]) or (name.isdigit() and int(name) == ex.number):
            return ex
    choices = ", ".join(ex.name for ex in all_exercises)
    raise KataError(f"no exercise {spec!r}; choose one of: {choices}")


# --- progress state: .kata/state.json ---------------------------------------------------


def state_path(root: Path) -> Path:
    return root / STATE_DIR / STATE_FILE


def fresh_state() -> dict:
    return {"version": 1, "exercises": {}}


def load_state(root: Path) -> dict:
    """The learner's progress; a missing or corrupt file gives a fresh state, never a crash."""
    path = state_path(root)
    if not path.exists():
        return fresh_state()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("exercises"), dict):
            raise ValueError("not a kata state")
    except (OSError, ValueError, UnicodeDecodeError):
        kept = path.with_name(f"{STATE_FILE}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            path.replace(kept)
            note = f" (the old file is kept as {kept.relative_to(root)})"
        except OSError:
            note = ""
        print(f"kata: {path.relative_to(root)} was unreadable; starting a fresh one{note}.",
              file=sys.stderr)
        return fresh_state()
    state = fresh_state()
    for name, entry in raw["exercises"].items():
        if isinstance(name, str) and isinstance(entry, dict):
            state["exercises"][name] = clean_entry(entry)
    return state


def clean_entry(entry: dict) -> dict:
    """Keep only the well-formed fields of one exercise's record."""
    clean: dict = {}
    if entry.get("status") in STATUSES:
        clean["status"] = entry["status"]
    for key in ("passed", "total", "hints_seen"):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            clean[key] = value
    failing = entry.get("failing")
    if isinstance(failing, list) and all(isinstance(t, str) for t in failing):
        clean["failing"] = failing
    if entry.get("done_once") is True:
        clean["done_once"] = True
    if isinstance(entry.get("last_run"), str):
        clean["last_run"] = entry["last_run"]
    return clean


def save_state(root: Path, state: dict) -> None:
    folder = root / STATE_DIR
    folder.mkdir(exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():  # keeps progress out of git even in a copy without .gitignore
        ignore.write_text("*\n", encoding="utf-8")
    tmp = folder / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(state_path(root))


def entry_of(state: dict, ex: Exercise) -> dict:
    return state["exercises"].setdefault(ex.name, {})


def status_of(state: dict, ex: Exercise) -> str:
    return state["exercises"].get(ex.name, {}).get("status", "not started")


def finished(state: dict, ex: Exercise) -> bool:
    """Done now, or done once (a later experiment that breaks it does not undo that)."""
    entry = state["exercises"].get(ex.name, {})
    return entry.get("status") == "done" or entry.get("done_once") is True


def current(all_exercises: list[Exercise], state: dict) -> Exercise | None:
    """The first exercise, in curriculum order, that was never done."""
    for ex in all_exercises:
        if not finished(state, ex):
            return ex
    return None


def next_after(all_exercises: list[Exercise], state: dict, ex: Exercise) -> Exercise | None:
    """The next exercise never done: after ``ex`` first, then from the start."""
    later = [e for e in all_exercises if e.name > ex.name]
    earlier = [e for e in all_exercises if e.name < ex.name]
    for e in later + earlier:
        if not finished(state, e):
            return e
    return None


def record(root: Path, ex: Exercise, ok: bool, passed: int, total: int, failing: list[str],
           tests_intact: bool) -> str:
    """Store the outcome of a run of the learner's code; return the new status."""
    state = load_state(root)
    entry = entry_of(state, ex)
    if ok:
        status = "done" if tests_intact else "edited"
    else:
        status = "failing"
    if status == "done":
        entry["done_once"] = True
    entry.update(status=status, passed=passed, total=total, failing=sorted(failing),
                 last_run=time.strftime("%Y-%m-%dT%H:%M:%S"))
    save_state(root, state)
    return status
