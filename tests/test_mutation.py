"""The mutation tool's record of a run (torchkata.mutation): what a rerun of survivors may
trust, and when it must refuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchkata import mutation

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path):
    """A repository with one exercise's reference (the code, its catalog, its equivalents)."""
    shutil.copytree(REPO / "reference" / "00_tensors", tmp_path / "reference" / "00_tensors")
    return tmp_path


def recorded(root: Path, survivors=(("tensors.py", 3, "core/AddNot", 0),)) -> dict:
    m = mutation.Mutant(*survivors[0], "f", "survived", "") if survivors else None
    result = {"name": "00_tensors", "total": 10, "ran": 10, "seconds": 5.0,
              "counts": {"killed": 8, "timeout": 1, "survived": len(survivors),
                         "equivalent": 0, "error": 0},
              "survivors": [m] if m else [], "matched": [], "stale": []}
    mutation.save_record(root, result)
    return json.loads(mutation.record_path(root, "00_tensors").read_text())


def test_the_record_keeps_the_counts_the_survivors_and_the_code_they_belong_to(repo):
    data = recorded(repo)
    assert data["total"] == 10 and data["counts"]["killed"] == 8
    assert data["survivors"] == [["tensors.py", 3, "core/AddNot", 0]]
    assert data["reference"] == mutation.code_hash(repo / "reference" / "00_tensors")


def test_the_code_hash_follows_the_code_and_nothing_else(repo):
    folder = repo / "reference" / "00_tensors"
    before = mutation.code_hash(folder)
    (folder / "bugs.toml").write_text((folder / "bugs.toml").read_text() + "\n# note\n")
    assert mutation.code_hash(folder) == before, "the catalog is not code that mutants change"
    code = folder / mutation.catalog.code_files(folder)[0]
    code.write_text(code.read_text() + "\n")
    assert mutation.code_hash(folder) != before


def test_a_rerun_refuses_without_a_record_or_after_the_code_changed(repo):
    with pytest.raises(SystemExit, match="no recorded run"):
        mutation.rerun_survivors("00_tensors", repo)
    recorded(repo)
    folder = repo / "reference" / "00_tensors"
    code = folder / mutation.catalog.code_files(folder)[0]
    code.write_text(code.read_text() + "\nX = 1\n")
    with pytest.raises(SystemExit, match="the reference changed"):
        mutation.rerun_survivors("00_tensors", repo)


def test_a_rerun_adds_the_recorded_kills_to_its_own(repo, monkeypatch):
    recorded(repo)
    asked = {}

    def fake(name, root, select=True, only=None):
        asked["only"] = only
        return {"name": name, "total": 1, "ran": 1, "seconds": 1.0,
                "counts": {"killed": 1, "timeout": 0, "survived": 0, "equivalent": 0,
                           "error": 0}, "survivors": [], "matched": [], "stale": []}

    monkeypatch.setattr(mutation, "mutate_exercise", fake)
    r = mutation.rerun_survivors("00_tensors", repo)
    assert asked["only"] == {("tensors.py", 3, "core/AddNot", 0)}
    assert (r["total"], r["counts"]["killed"], r["counts"]["timeout"]) == (10, 9, 1)
    assert mutation.report(r).startswith("00_tensors: score 100.0% = killed 10 / (total 10")


def test_a_mutant_that_changes_nothing_is_not_counted():
    from types import SimpleNamespace

    diff = "--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    result = SimpleNamespace(worker_outcome="normal", test_outcome="survived", output="",
                             diff=diff)
    assert mutation._outcome(result) == "survived"
    # cosmic-ray's ExceptionReplacer on a dotted name yields a run with no change at all
    for empty in ("", None, "--- a/m.py\n+++ b/m.py\n"):
        result = SimpleNamespace(worker_outcome="exception", test_outcome=None, output="",
                                 diff=empty)
        assert mutation._outcome(result) == "no-op"
