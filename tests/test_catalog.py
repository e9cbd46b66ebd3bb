"""The static half of the self-check: every exercise is complete and its catalog consistent.

Proofs 1 and 5 of DESIGN.md: the starter is exactly the reference with every planted bug
applied (nothing unlisted), and the metadata of every exercise is consistent.
"""

from __future__ import annotations

import ast
import sys

import pytest

from torchkata import catalog, paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = paths.repo_root()
EXERCISES = paths.exercise_names(ROOT)


def exercise(name):
    return ROOT / "exercises" / name


def reference(name):
    return ROOT / "reference" / name


def test_there_are_exercises():
    assert EXERCISES, "no exercises/NN_topic folders found"


@pytest.mark.parametrize("name", EXERCISES)
def test_exercise_has_lesson_metadata_and_tests(name):
    folder = exercise(name)
    assert (folder / "README.md").is_file(), f"{name}: README.md (the lesson) is missing"
    meta = tomllib.loads((folder / "exercise.toml").read_text(encoding="utf-8"))
    for key in ("title", "order", "files", "hints"):
        assert key in meta, f"{name}/exercise.toml: `{key}` is missing"
    assert meta["order"] == int(name[:2]), f"{name}: order {meta['order']} != folder number"
    assert len(meta["hints"]) >= 3, f"{name}: at least three progressive hints"
    assert sorted(meta["files"]) == catalog.code_files(folder), (
        f"{name}: exercise.toml `files` must list exactly the code files a learner edits"
    )
    assert list(folder.glob("test_*.py")), f"{name}: no test_*.py suite"


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_mirrors_exercise(name):
    ref = reference(name)
    assert ref.is_dir(), f"reference/{name} is missing"
    assert catalog.code_files(ref) == catalog.code_files(exercise(name)), (
        f"reference/{name} must hold the same code files as exercises/{name}"
    )
    assert not list(ref.glob("test_*.py")), "tests live only in exercises/: one copy of each"
    assert (ref / "bugs.toml").is_file(), f"reference/{name}/bugs.toml is missing"


@pytest.mark.parametrize("name", EXERCISES)
def test_catalog_is_complete_and_consistent(name):
    cat = catalog.load(reference(name) / "bugs.toml")
    ids = [b.id for b in cat.bugs]
    assert 3 <= len(ids) <= 6, f"{name}: plant 3 to 6 bugs, found {len(ids)}"
    assert len(set(ids)) == len(ids), f"{name}: bug ids must be unique"
    assert sum(v.kind == "alt_fix" for v in cat.variants) >= 1, f"{name}: add an alt_fix"
    assert sum(v.kind == "wrong_fix" for v in cat.variants) >= 2, f"{name}: add 2 wrong_fix"
    tests = _test_functions(exercise(name))
    for bug in cat.bugs:
        assert bug.lesson.strip(), f"{name}/{bug.id}: a one-line lesson"
        assert bug.caught_by, f"{name}/{bug.id}: name the tests that catch it"
        assert bug.fixed != bug.planted
    for test_id in [t for b in cat.bugs for t in b.caught_by] + [
        t for v in cat.variants for t in v.caught_by
    ]:
        assert test_id in tests, f"{name}: caught_by names {test_id}, which does not exist"
    for variant in cat.variants:
        text = (reference(name) / variant.file).read_text(encoding="utf-8")
        assert text.count(variant.fixed) == 1, f"{name}/{variant.name}: anchor not unique"


@pytest.mark.parametrize("name", EXERCISES)
def test_starter_is_reference_with_every_bug_planted(name):
    cat = catalog.load(reference(name) / "bugs.toml")
    expected = catalog.starter_texts(reference(name), cat)
    for file, text in expected.items():
        actual = (exercise(name) / file).read_text(encoding="utf-8")
        assert actual == text, (
            f"exercises/{name}/{file} differs from reference/{name}/{file} with the catalog's "
            f"bugs planted: every difference must be a [[bug]] in bugs.toml"
        )


@pytest.mark.parametrize("name", EXERCISES)
def test_starter_has_no_spoilers(name):
    for file in catalog.code_files(exercise(name)):
        text = (exercise(name) / file).read_text(encoding="utf-8")
        for marker in ("BUG", "FIXME", "XXX"):
            assert marker not in text, f"exercises/{name}/{file} gives a bug away: {marker!r}"


def _test_functions(folder) -> set[str]:
    found = set()
    for path in folder.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            if is_function and node.name.startswith("test_"):
                found.add(f"{path.name}::{node.name}")
    return found
