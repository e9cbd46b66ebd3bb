"""Which copy of an exercise's code the tests run against.

``student`` (the default) is the learner's folder ``exercises/NN_topic``; ``reference`` is
``reference/NN_topic``; anything else is a path: either a folder that holds ``NN_topic``
folders, or the folder of one exercise's copy (used by the self-check for mutants).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_TARGET = "TORCHKATA_TARGET"
ENV_DEVICE = "TORCHKATA_DEVICE"
DEVICES = ("cpu", "cuda", "auto")

_current: str | None = None


def set_current(target: str | None) -> None:
    """Called by the pytest plugin once the command line is parsed."""
    global _current
    _current = target


def current() -> str:
    return _current or os.environ.get(ENV_TARGET) or "student"


def resolve(exercise_dir: Path, target: str | None = None) -> Path:
    """The folder whose code is under test for ``exercise_dir`` and ``target``."""
    target = target or current()
    name = exercise_dir.name
    if target == "student":
        return exercise_dir
    if target == "reference":
        return exercise_dir.parent.parent / "reference" / name
    path = Path(target).expanduser().resolve()
    if (path / name).is_dir():
        return path / name
    return path


def describe(target: str) -> str:
    if target in ("student", "reference"):
        return target
    return f"path {Path(target).expanduser().resolve()}"
