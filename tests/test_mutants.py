"""The dynamic half of the self-check: the suites catch what they claim to catch.

Proofs 3 and 4 of DESIGN.md, each on a temporary copy of the reference (never in place):
each planted bug alone fails the tests it names; each alternative fix passes the whole
suite; each wrong fix fails (the tests it names, or the suite). Proof 2, the reference
passing every suite, is the `exercises(target='reference')` step of `nox -s check`.

All runs of one exercise go to one worker process (see torchkata.selfcheck), started the
first time a test of that exercise asks for its results.
"""

from __future__ import annotations

import pytest

from torchkata import catalog, paths
from torchkata.selfcheck import Job, run_jobs

# the first test of an exercise runs all its mutants at once (see results_for)
pytestmark = [pytest.mark.mutants, pytest.mark.timeout(1800)]

ROOT = paths.repo_root()
_results: dict[str, dict[str, object]] = {}


def _catalogs():
    return {n: catalog.load(ROOT / "reference" / n / "bugs.toml")
            for n in paths.exercise_names(ROOT)}


CATALOGS = _catalogs()


def _params(kind):
    out = []
    for name, cat in CATALOGS.items():
        if kind == "bug":
            out += [pytest.param(name, b.id, id=f"{name}:{b.id}") for b in cat.bugs]
        else:
            out += [pytest.param(name, v.name, id=f"{name}:{v.name}")
                    for v in cat.variants if v.kind == kind]
    return out


def results_for(name, tmp_path_factory, device):
    """Run every mutant of exercise ``name`` once; cache the runs by case name."""
    if name not in _results:
        cat = CATALOGS[name]
        ref = ROOT / "reference" / name
        base = tmp_path_factory.mktemp(f"mutants-{name}")
        cases, jobs = [], []
        for b in cat.bugs:
            folder = catalog.write_mutant(ref, base / b.id / name, b.file, b.fixed, b.planted)
            cases.append(b.id)
            jobs.append(Job(str(folder), list(b.caught_by)))
        for v in cat.variants:
            folder = catalog.write_mutant(ref, base / v.name / name, v.file, v.fixed, v.text)
            cases.append(v.name)
            if v.kind == "alt_fix":
                jobs.append(Job(str(folder)))
            else:
                jobs.append(Job(str(folder), list(v.caught_by),
                                stop_at_first_failure=not v.caught_by))
        runs = run_jobs(ROOT / "exercises" / name, jobs, device=device)
        _results[name] = dict(zip(cases, runs))
    return _results[name]


@pytest.fixture
def results(tmp_path_factory, pytestconfig):
    return lambda name: results_for(name, tmp_path_factory, pytestconfig.getoption("--device"))


@pytest.mark.parametrize(("name", "case"), _params("bug"))
def test_each_planted_bug_fails_the_tests_it_names(name, case, results):
    bug = CATALOGS[name].bug(case)
    run = results(name)[case]
    missed = [t for t in bug.caught_by if t not in run.failed]
    assert not missed, (
        f"{name}: bug {case!r} alone should fail {missed}, which passed.\n{run.summary()}"
    )


@pytest.mark.parametrize(("name", "case"), _params("alt_fix"))
def test_each_alternative_fix_passes(name, case, results):
    run = results(name)[case]
    assert run.returncode == 0 and not run.failed, (
        f"{name}: the correct repair {case} is rejected by {sorted(run.failed)}.\n"
        f"{run.summary()}"
    )


@pytest.mark.parametrize(("name", "case"), _params("wrong_fix"))
def test_each_wrong_fix_fails(name, case, results):
    fix = next(v for v in CATALOGS[name].variants if v.name == case)
    run = results(name)[case]
    if fix.caught_by:
        missed = [t for t in fix.caught_by if t not in run.failed]
        assert not missed, f"{name}: wrong fix {case} passes {missed}.\n{run.summary()}"
    else:
        assert run.returncode != 0, f"{name}: wrong fix {case} passes the whole suite."
