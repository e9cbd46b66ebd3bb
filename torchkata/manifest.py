"""The manifest of shipped test files: exercises/MANIFEST.sha256.

A green run means what it says only with the shipped tests; these hashes tell the runner
(and ``kata verify``) which test files were edited, removed or added.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torchkata import paths

MANIFEST = "exercises/MANIFEST.sha256"


def suite_files(root: Path) -> list[str]:
    """Test files of every exercise, relative to exercises/: test_*.py and conftest.py."""
    found = []
    base = root / "exercises"
    if (base / "conftest.py").is_file():
        found.append("conftest.py")
    for name in paths.exercise_names(root):
        folder = base / name
        files = [*folder.glob("test_*.py"), *folder.glob("conftest.py")]
        found += [f"{name}/{p.name}" for p in files if p.is_file()]
    return sorted(found)


def file_hash(path: Path) -> str:
    """sha256 of the file with line endings normalised (a Windows checkout is not an edit)."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def compute_manifest(root: Path) -> dict[str, str]:
    return {f: file_hash(root / "exercises" / f) for f in suite_files(root)}


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
        wanted = {f for f in wanted if f.split("/", 1)[0] in names}
    problems = {}
    for f in sorted(wanted):
        if f not in actual:
            problems[f] = "missing"
        elif f not in manifest:
            problems[f] = "not in the manifest"
        elif actual[f] != manifest[f]:
            problems[f] = "edited"
    return problems
