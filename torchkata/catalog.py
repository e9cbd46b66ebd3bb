"""The bug catalog of an exercise (``reference/NN_topic/bugs.toml``) and the copies it implies.

A catalog lists, as plain text replacements on the reference files:

* ``[[bug]]``: a planted bug: ``id``, ``file``, ``fixed`` (text in the reference),
  ``planted`` (what the starter has instead), ``lesson`` and ``caught_by`` (test ids,
  ``test_file.py::test_name``, that must fail when this bug alone is planted);
* ``[[alt_fix]]``: another correct repair of bug ``bug``: ``text`` replaces its fixed text,
  and the whole suite must pass;
* ``[[wrong_fix]]``: a plausible repair that is still wrong: ``text`` replaces the fixed
  text of bug ``bug`` (or, for a mistake that is not planted, the ``fixed`` text of ``file``),
  and the suite must fail (in ``caught_by`` if given, else anywhere).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Bug:
    id: str
    file: str
    fixed: str
    planted: str
    lesson: str
    caught_by: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    """A reference with one text replaced: an alternative fix or a wrong fix."""

    kind: str  # "alt_fix" or "wrong_fix"
    name: str
    file: str
    fixed: str
    text: str
    caught_by: tuple[str, ...] = ()
    note: str = ""


@dataclass
class Catalog:
    exercise: str
    bugs: list[Bug] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)

    def bug(self, bug_id: str) -> Bug:
        for b in self.bugs:
            if b.id == bug_id:
                return b
        raise KeyError(f"{self.exercise}: no bug with id {bug_id!r}")


def load(path: Path) -> Catalog:
    """Read ``bugs.toml``; raise ValueError with the file name on any missing field."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    cat = Catalog(exercise=path.parent.name)
    try:
        for b in raw.get("bug", []):
            cat.bugs.append(Bug(b["id"], b["file"], b["fixed"], b["planted"], b["lesson"],
                                tuple(b["caught_by"])))
        for kind in ("alt_fix", "wrong_fix"):
            for i, v in enumerate(raw.get(kind, []), 1):
                if "bug" in v:
                    anchor = cat.bug(v["bug"])
                    file, fixed, name = anchor.file, anchor.fixed, f"{kind}-{i}-{anchor.id}"
                else:
                    file, fixed, name = v["file"], v["fixed"], f"{kind}-{i}-{v['file']}"
                cat.variants.append(Variant(kind, v.get("id", name), file, fixed, v["text"],
                                            tuple(v.get("caught_by", ())), v.get("note", "")))
    except KeyError as exc:
        raise ValueError(f"{path}: missing field {exc}") from None
    return cat


def replace_once(text: str, old: str, new: str, where: str) -> str:
    """Replace the single occurrence of ``old``; anything else is a catalog error."""
    count = text.count(old)
    if count != 1:
        raise ValueError(f"{where}: expected the text to occur exactly once, found {count}:\n{old}")
    return text.replace(old, new)


def code_files(folder: Path) -> list[str]:
    """The files a learner edits: every .py that is not a test, sorted."""
    return sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("test_"))


def starter_texts(reference: Path, catalog: Catalog) -> dict[str, str]:
    """The starter implied by the catalog: the reference with every planted bug applied."""
    texts = {name: (reference / name).read_text(encoding="utf-8") for name in code_files(reference)}
    for bug in catalog.bugs:
        texts[bug.file] = replace_once(texts[bug.file], bug.fixed, bug.planted,
                                       f"{catalog.exercise}/{bug.file} (bug {bug.id})")
    return texts


def write_mutant(reference: Path, dest: Path, file: str, old: str, new: str) -> Path:
    """Copy the reference's code files to ``dest`` with one replacement made in ``file``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in code_files(reference):
        shutil.copy2(reference / name, dest / name)
    target = dest / file
    target.write_text(replace_once(target.read_text(encoding="utf-8"), old, new, str(target)),
                      encoding="utf-8")
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m torchkata.catalog write-starter NN_topic``: starter = reference + bugs."""
    import argparse

    from torchkata import paths

    parser = argparse.ArgumentParser(prog="python -m torchkata.catalog")
    parser.add_argument("command", choices=["write-starter"])
    parser.add_argument("exercise", help="folder name, e.g. 01_mlp")
    args = parser.parse_args(argv)
    root = paths.repo_root()
    reference = root / "reference" / args.exercise
    texts = starter_texts(reference, load(reference / "bugs.toml"))
    for name, text in texts.items():
        (root / "exercises" / args.exercise / name).write_text(text, encoding="utf-8")
        print(f"wrote exercises/{args.exercise}/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
