"""The dynamic half of the self-check: the suites catch what they claim to catch.

Proofs 2-4 of DESIGN.md, each on a temporary copy of the reference (never in place): the
reference passes its suite (each exercise in a process of its own; the
`exercises(target='reference')` step of `nox -s check` runs them all in one); each planted
bug alone fails the tests it names; each alternative fix passes the whole suite; each wrong
fix fails (the tests it names, or the suite). "The whole suite" is every test that calls
the changed code (torchkata.impact): the others cannot see the change.

All runs go to one worker process (see torchkata.selfcheck), started the first time a test
asks for results; it runs the mutants of every exercise the session tests.
"""

from __future__ import annotations

import pytest

from torchkata import catalog, paths
from torchkata.selfcheck import Job, run_jobs

# the first test of an exercise runs all its mutants at once (see results_for)
pytestmark = [pytest.mark.mutants, pytest.mark.timeout(1800)]

ROOT = paths.repo_root()
_results: dict[str, dict[str, object]] = {}
REFERENCE_RUN = "reference"  # the case name of the unmutated run that records the impact map


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


def _jobs(name, base):
    """The runs that prove exercise ``name``'s catalog, by case name.

    First the unmutated reference, recording which functions each test calls; an
    alternative fix, and a wrong fix that names no tests, then runs only the tests that
    call the function it changes (torchkata.impact). A planted bug, and a wrong fix that
    names its tests, runs exactly the tests it names.
    """
    cat = CATALOGS[name]
    ref = ROOT / "reference" / name
    exercise = str(ROOT / "exercises" / name)
    impact_map = str(base / "impact.json")
    jobs = {REFERENCE_RUN: Job(exercise, str(ref), record=impact_map)}
    for b in cat.bugs:
        folder = catalog.write_mutant(ref, base / b.id / name, b.file, b.fixed, b.planted)
        jobs[b.id] = Job(exercise, str(folder), list(b.caught_by))
    for v in cat.variants:
        folder = catalog.write_mutant(ref, base / v.name / name, v.file, v.fixed, v.text)
        if v.caught_by:
            jobs[v.name] = Job(exercise, str(folder), list(v.caught_by))
            continue
        old = (ref / v.file).read_text(encoding="utf-8")
        jobs[v.name] = Job(exercise, str(folder), stop_at_first_failure=v.kind == "wrong_fix",
                           impact=impact_map, change=(v.file, old, old.replace(v.fixed, v.text)))
    return jobs


def results_for(name, session, tmp_path_factory, device):
    """Run every mutant of every exercise this session tests, in one worker, once; cache the
    runs by exercise and case name."""
    if name not in _results:
        names = sorted({item.callspec.params["name"] for item in session.items
                        if hasattr(item, "callspec") and "name" in item.callspec.params} | {name})
        base = tmp_path_factory.mktemp("mutants")
        cases, jobs = [], []
        for n in names:
            for case, job in _jobs(n, base / n).items():
                cases.append((n, case))
                jobs.append(job)
        for (n, case), run in zip(cases, run_jobs(jobs, device=device)):
            _results.setdefault(n, {})[case] = run
    return _results[name]


@pytest.fixture
def results(request, tmp_path_factory, pytestconfig):
    return lambda name: results_for(name, request.session, tmp_path_factory,
                                    pytestconfig.getoption("--device"))


@pytest.mark.parametrize("name", list(CATALOGS))
def test_the_reference_passes_its_suite(name, results):
    run = results(name)[REFERENCE_RUN]
    assert run.returncode == 0 and not run.failed, (
        f"{name}: the reference fails {sorted(run.failed)}.\n{run.summary()}")


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
        assert run.returncode != 0, (
            f"{name}: wrong fix {case} passes every test that calls the code it changes.\n"
            f"{run.summary()}")
