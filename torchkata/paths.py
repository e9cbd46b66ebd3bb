"""Where things live: the repository, its exercises and their reference solutions."""

from __future__ import annotations

import re
from pathlib import Path

EXERCISE_DIR = re.compile(r"^\d\d_[a-z0-9_]+$")


def repo_root() -> Path:
    """The repository this copy of torchkata was installed from (an editable install)."""
    return Path(__file__).resolve().parent.parent


def exercise_names(root: Path | None = None) -> list[str]:
    """Exercise folder names (``NN_topic``) in curriculum order."""
    base = (root or repo_root()) / "exercises"
    return sorted(p.name for p in base.iterdir() if p.is_dir() and EXERCISE_DIR.match(p.name))


def is_exercise_dir(path: Path) -> bool:
    return bool(EXERCISE_DIR.match(path.name)) and path.parent.name == "exercises"


def exercise_dir_of(test_file: str | Path) -> Path:
    """The exercise folder a test file belongs to (the folder that holds it)."""
    folder = Path(test_file).resolve().parent
    if not EXERCISE_DIR.match(folder.name):
        raise ValueError(f"{test_file} is not inside an exercise folder named NN_topic")
    return folder
