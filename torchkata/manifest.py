"""The manifest of shipped test files: exercises/MANIFEST.sha256.

A green run means what it says only with the shipped tests, harness and pytest settings;
these hashes tell the runner (and ``kata verify``) which of those files were edited, removed
or added (a conftest.py that turns failures into passes is one such file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torchkata import paths

MANIFEST = "exercises/MANIFEST.sha256"
HARNESS = Path(__file__).resolve().parent


# Files outside the exercises that change what a suite concludes: the harness, pytest's
# configuration, and any conftest.py pytest would load (recorded relative to exercises/).
CONFIG_FILES = ("pyproject.toml", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml",
                "tox.ini", "setup.cfg", "conftest.py")


def suite_files(root: Path) -> list[str]:
    """Every file that decides what the suites conclude, relative to exercises/.

    The exercises' test_*.py and any conftest.py under exercises/, plus (as ``../NAME``)
    the harness package, pytest's configuration files and a conftest.py at the root.
    """
    found = []
    base = root / "exercises"
    for path in base.rglob("conftest.py"):
        found.append(path.relative_to(base).as_posix())
    for name in paths.exercise_names(root):
        folder = base / name
        found += [f"{name}/{p.name}" for p in folder.glob("test_*.py") if p.is_file()]
    found += [f"../{name}" for name in CONFIG_FILES if (root / name).is_file()]
    found += [f"../torchkata/{p.name}" for p in HARNESS.glob("*.py")]
    return sorted(set(found))


def display(name: str) -> str:
    """A manifest entry as a path from the repository root."""
    return name[3:] if name.startswith("../") else f"exercises/{name}"


def _path(root: Path, name: str) -> Path:
    if name.startswith("../torchkata/"):  # the harness that runs, wherever it is installed
        return HARNESS / name[len("../torchkata/"):]
    return root / "exercises" / name


def is_shared(name: str) -> bool:
    """Whether a manifest entry concerns every exercise (not one exercise's folder)."""
    return name.startswith("../") or "/" not in name


def file_hash(path: Path) -> str:
    """sha256 of the file with line endings normalised (a Windows checkout is not an edit)."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def compute_manifest(root: Path) -> dict[str, str]:
    return {f: file_hash(_path(root, f)) for f in suite_files(root)}


def format_manifest(manifest: dict[str, str]) -> str:
    """``sha256sum`` format, so ``cd exercises && sha256sum -c MANIFEST.sha256`` works too."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.items()))


def read_manifest(root: Path) -> dict[str, str] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    manifest = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            manifest[name.lstrip("*")] = digest
    return manifest


def suite_problems(root: Path, manifest: dict[str, str],
                       names: list[str] | None = None) -> dict[str, str]:
    """``exercises/``-relative test file -> what is wrong with it (edited, missing, unknown)."""
    actual = compute_manifest(root)
    wanted = set(manifest) | set(actual)
    if names is not None:
        wanted = {f for f in wanted if is_shared(f) or f.split("/", 1)[0] in names}
    problems = {}
    for f in sorted(wanted):
        if f not in actual:
            problems[f] = "missing"
        elif f not in manifest:
            problems[f] = "not in the manifest"
        elif actual[f] != manifest[f]:
            problems[f] = "edited"
    return problems
