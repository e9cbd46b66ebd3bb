"""Mutation testing of the reference solutions: how much of each suite is a specification.

The self-check proves that the planted bugs are caught; this measures the bugs nobody
planted. cosmic-ray mutates a temporary copy ``TMP/NN_topic/`` of ``reference/NN_topic/*.py``,
one mutant at a time, and runs the exercise's suite against it with ``--target TMP``
(reference/ and exercises/ are never touched). Each run goes to torchkata's resident warm
worker, so a mutant costs about a second plus its tests instead of a cold start of torch.

    python -m torchkata.mutation run [NN_topic ...]      # all exercises when none is named
    python -m torchkata.mutation run --survivors NN_topic   # only the last run's survivors
    python -m torchkata.mutation run-suite NN_topic TARGET [--limit SECONDS] [--impact MAP]

``run-suite`` is cosmic-ray's test command: one ``pytest -x`` of the exercise against TARGET,
exiting with pytest's code (124 with a line "TIMEOUT" when it ran past the limit). With an
impact map (recorded by the unmutated run: see torchkata.impact) it runs only the tests that
call the function the mutant changed; a mutant that no test calls survives without a run.

Score: killed / (total - equivalent), timeouts counted as killed. A survivor that cannot
change behaviour is listed in ``reference/NN_topic/equivalent_mutants.toml``::

    [[equivalent]]
    file = "distances.py"
    line = 27                 # the mutant's first line in the reference file
    operator = "core/ReplaceComparisonOperator_Lt_LtE"
    occurrence = 0            # cosmic-ray's index of this operator's sites in the file
    reason = "one line: why no input can tell the difference"

An entry counts only while file, line, operator and occurrence all match a surviving mutant;
the others are printed as stale, so an edit to the reference cannot silently hide a mutant.

Each run records its outcome in ``.kata/mutation/NN_topic.json``. After new tests, ``run
--survivors`` runs only the mutants that survived the recorded run (seconds, not minutes)
and adds those now killed to its score; it refuses when the reference's code changed since,
as its mutants are then other mutants (a new test cannot revive a killed mutant, so the
recorded kills stand).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from torchkata import catalog, impact, paths, worker
from torchkata.catalog import tomllib

EQUIVALENT_FILE = "equivalent_mutants.toml"
TIMEOUT_MARK = "TIMEOUT: the suite ran past"  # a line of ours, not a test's word
PYTEST_FLAGS = ["-x", "-q", "-p", "no:cacheprovider", "--tb=line", "--no-header",
                "-W", "ignore::pytest.PytestAssertRewriteWarning",
                "--budget-scale=3"]  # a mutant may be slow; its own hang is the plugin's to end


# --- one suite run (cosmic-ray's test command) ----------------------------------------------


def run_suite(name: str, target: Path, limit: float, impact_map: Path | None = None,
              record: Path | None = None) -> int:
    """Run exercise ``name``'s suite against ``target`` once; pytest's exit code (124: limit)."""
    root = paths.repo_root()
    target = target.resolve()
    code = target / name if (target / name).is_dir() else target
    # a mutant may have the same size and mtime second as the last one: never reuse its .pyc
    shutil.rmtree(code / "__pycache__", ignore_errors=True)
    suite = root / "exercises" / name
    tests = [str(suite)]
    if impact_map is not None:
        chosen = _selected(root / "reference" / name, code, impact.read(impact_map))
        if chosen == []:
            print("survived: no test calls the changed code")
            return 0
        if chosen is not None:
            tests = [str(suite / t) for t in chosen]
    args = [*tests, f"--target={target}", *PYTEST_FLAGS]
    if record is not None:
        args.append(f"--record-impact={record}")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="torchkata-mutant-") as tmp:
        out = Path(tmp) / "pytest.out"
        rc = _in_worker(root, args, out, env, worker.modules_of(code), limit)
        if rc is None:  # no worker here (Windows, TORCHKATA_WORKER=off, or it would not start)
            rc = _in_subprocess(root, args, out, env, limit)
        text = out.read_text(errors="replace") if out.exists() else ""
    print("\n".join(text.strip().splitlines()[-30:]))
    if rc == 124:
        print(f"{TIMEOUT_MARK} {limit:.0f} s")
    return rc


def _selected(reference: Path, copy: Path, tests: dict[str, list[str]]) -> list[str] | None:
    """The tests that can see how ``copy`` differs from ``reference`` (None: all of them)."""
    chosen: set[str] = set()
    for f in catalog.code_files(reference):
        old = (reference / f).read_text(encoding="utf-8")
        new = (copy / f).read_text(encoding="utf-8")
        if old != new:
            found = impact.select(tests, f, old, new)
            if found is None:
                return None
            chosen.update(found)
    return sorted(chosen)


def _in_worker(root: Path, args: list[str], out: Path, env: dict[str, str],
               preload: list[str], limit: float) -> int | None:
    if not worker.Client.enabled():
        return None
    client = worker.Client(root)
    for _ in range(2):  # a stale worker (the harness changed) exits on the first request
        if not client.start():
            return None
        run = client.submit(args, out, env, [*worker.BASE_MODULES, *preload], limit)
        if run is not None:
            break
    else:
        return None
    try:
        while (rc := run.poll()) is None:
            time.sleep(0.02)
    except BaseException:
        run.kill()
        raise
    return rc


def _in_subprocess(root: Path, args: list[str], out: Path, env: dict[str, str],
                   limit: float) -> int:
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=root, env=env,
                                stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return 124
        finally:
            if proc.poll() is None:
                worker.kill_group(proc.pid)
                proc.wait()


# --- a whole exercise -------------------------------------------------------------------------


@dataclass
class Mutant:
    file: str
    line: int
    operator: str
    occurrence: int
    function: str  # the definition that holds the mutant
    outcome: str  # killed, timeout, survived, equivalent, error
    diff: str

    def key(self) -> tuple[str, int, str, int]:
        return self.file, self.line, self.operator, self.occurrence

    def change(self) -> str:
        """The mutated line, as 'old -> new'."""
        old = [ln[1:].strip() for ln in self.diff.splitlines()
               if ln.startswith("-") and not ln.startswith("---")]
        new = [ln[1:].strip() for ln in self.diff.splitlines()
               if ln.startswith("+") and not ln.startswith("+++")]
        return f"{' / '.join(old)}  ->  {' / '.join(new)}"


def load_equivalent(folder: Path) -> dict[tuple[str, int, str, int], str]:
    path = folder / EQUIVALENT_FILE
    if not path.exists():
        return {}
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("equivalent", [])
    return {(e["file"], int(e["line"]), e["operator"], int(e["occurrence"])): e["reason"]
            for e in entries}


def record_path(root: Path, name: str) -> Path:
    return root / ".kata" / "mutation" / f"{name}.json"


def code_hash(reference: Path) -> str:
    digest = hashlib.sha256()
    for f in catalog.code_files(reference):
        digest.update(f.encode() + b"\0" + (reference / f).read_bytes() + b"\0")
    return digest.hexdigest()


def save_record(root: Path, r: dict) -> None:
    path = record_path(root, r["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"reference": code_hash(root / "reference" / r["name"]), "total": r["total"],
            "counts": r["counts"], "date": time.strftime("%Y-%m-%d %H:%M"),
            "survivors": [list(m.key()) for m in r["survivors"]],
            "equivalent": [list(k) for k in r["matched"]]}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def rerun_survivors(name: str, root: Path, select: bool = True) -> dict:
    """Run only the recorded run's survivors; the score of the recorded run plus this one."""
    path = record_path(root, name)
    if not path.exists():
        raise SystemExit(f"{name}: no recorded run in {path}; run it whole first")
    old = json.loads(path.read_text(encoding="utf-8"))
    if old["reference"] != code_hash(root / "reference" / name):
        raise SystemExit(f"{name}: the reference changed since the run of {old['date']}, so its "
                         "mutants are not the recorded ones; run it whole")
    wanted = {tuple(k) for k in old["survivors"]} | {tuple(k) for k in old["equivalent"]}
    r = mutate_exercise(name, root, select, only=wanted)
    for k in ("killed", "timeout"):
        r["counts"][k] += old["counts"][k]
    r["total"] = old["total"] - r["counts"].get("no-op", 0)
    print(f"{name}: reran the {len(wanted)} survivors and equivalents of the run of "
          f"{old['date']}; the {old['total'] - len(wanted)} it killed count as killed")
    return r


def mutate_exercise(name: str, root: Path, select: bool = True,
                    only: set[tuple] | None = None) -> dict:
    """Run cosmic-ray over exercise ``name``; counts, survivors and stale entries.

    With ``only``, every other mutant is skipped (cosmic-ray's SKIPPED, as its filters do).
    """
    from cosmic_ray.work_db import WorkDB, use_db  # the dev dependency, needed here only
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    reference = root / "reference" / name
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="torchkata-mutation-") as tmp:
        target = Path(tmp) / "target"
        copy = target / name
        copy.mkdir(parents=True)
        files = catalog.code_files(reference)
        for f in files:
            shutil.copy2(reference / f, copy / f)

        t0 = time.monotonic()
        impact_map = Path(tmp) / "impact.json"
        if run_suite(name, target, limit=600, record=impact_map) != 0:
            raise SystemExit(f"{name}: the suite fails on the unmutated reference copy")
        baseline = time.monotonic() - t0
        # 3x the unmutated run, and never under 2 min: tests that wait on other processes (12's
        # ranks, 40 s) must reach their own timeouts and fail with a message, not hit this one
        limit = max(3 * baseline + 30, 120)
        command = " ".join(shlex.quote(a) for a in [
            sys.executable, "-m", "torchkata.mutation", "run-suite", name, str(target),
            "--limit", f"{limit:.0f}", *(["--impact", str(impact_map)] if select else [])])
        config = Path(tmp) / "cosmic-ray.toml"
        config.write_text(
            "[cosmic-ray]\n"  # JSON strings and lists are TOML strings and arrays
            f"module-path = {json.dumps([str(copy / f) for f in files])}\n"
            f"timeout = {limit + 60:.0f}\n"  # run-suite's own limit ends a hang first
            "excluded-modules = []\n"
            f"test-command = {json.dumps(command)}\n"
            "[cosmic-ray.distributor]\nname = \"local\"\n", encoding="utf-8")
        session = Path(tmp) / "session.sqlite"
        cr = [sys.executable, "-m", "cosmic_ray.cli"]
        subprocess.run([*cr, "init", str(config), str(session)], check=True, cwd=tmp)
        with use_db(str(session), WorkDB.Mode.open) as db:
            count = db.num_work_items
            if only is not None:
                skip = [item.job_id for item in db.work_items
                        if _key(item.mutations[0]) not in only]
                db.set_multiple_results(skip, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
                count -= len(skip)
        print(f"{name}: {count} mutants; the suite took {baseline:.1f} s on the reference",
              flush=True)
        skipped = 0 if only is None else len(skip)
        _exec_with_progress([*cr, "exec", str(config), str(session)], tmp, session, count,
                            skipped)
        mutants = []
        with use_db(str(session), WorkDB.Mode.open) as db:
            for item, result in db.completed_work_items:
                if result.worker_outcome == WorkerOutcome.SKIPPED:
                    continue
                spec = item.mutations[0]
                mutants.append(Mutant(*_key(spec), spec.definition_name or "",
                                      _outcome(result), result.diff or ""))

    equivalent = load_equivalent(reference)
    for m in mutants:
        if m.outcome == "survived" and m.key() in equivalent:
            m.outcome = "equivalent"
    matched = {m.key() for m in mutants if m.outcome == "equivalent"}
    counts = {k: sum(m.outcome == k for m in mutants)
              for k in ("killed", "timeout", "survived", "equivalent", "error", "no-op")}
    return {"name": name, "total": len(mutants) - counts["no-op"], "ran": len(mutants),
            "counts": counts,
            "seconds": time.monotonic() - started, "baseline": baseline,
            "survivors": [m for m in mutants if m.outcome in ("survived", "error")],
            "matched": sorted(matched), "stale": sorted(set(equivalent) - matched)}


def _key(spec) -> tuple[str, int, str, int]:
    return (Path(spec.module_path).name, spec.start_pos[0], spec.operator_name,
            spec.occurrence)


def _exec_with_progress(command: list[str], cwd: str, session: Path, count: int,
                        skipped: int = 0) -> None:
    """Run ``cosmic-ray exec``, printing how many mutants are done about once a minute."""
    from cosmic_ray.work_db import WorkDB, use_db

    proc = subprocess.Popen(command, cwd=cwd)
    started = next_report = time.monotonic()
    try:
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() > next_report + 60:
                next_report = time.monotonic()
                with use_db(str(session), WorkDB.Mode.open) as db:
                    done = db.num_results - skipped
                print(f"  {done}/{count} mutants in {time.monotonic() - started:.0f} s",
                      flush=True)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"cosmic-ray exec failed with exit code {proc.returncode}")


def _outcome(result) -> str:
    if not any(ln[:1] in "+-" and ln[:3] not in ("+++", "---")
               for ln in (result.diff or "").splitlines()):
        return "no-op"  # cosmic-ray changed nothing (e.g. ExceptionReplacer on a dotted name)
    if result.worker_outcome != "normal" or result.test_outcome == "incompetent":
        return "error"
    if result.test_outcome == "survived":
        return "survived"
    output = result.output or ""
    return "timeout" if output == "timeout" or TIMEOUT_MARK in output else "killed"


def report(r: dict) -> str:
    c = r["counts"]
    killed = c["killed"] + c["timeout"]
    scored = r["total"] - c["equivalent"]
    score = f"{killed / scored:.1%}" if scored else "n/a"
    per = r["seconds"] / max(r["ran"], 1)
    lines = [f"{r['name']}: score {score} = killed {killed} / (total {r['total']} - equivalent "
             f"{c['equivalent']}); survived {c['survived']}, timeouts {c['timeout']} (counted "
             f"as killed), errors {c['error']}; {r['seconds']:.0f} s for {r['ran']} mutants "
             f"({per:.1f} s each)"]
    if c.get("no-op"):
        lines[0] += f"; {c['no-op']} no-op (cosmic-ray changed nothing: not counted)"
    for m in r["survivors"]:
        lines.append(f"  {m.outcome}: {m.file}:{m.line} ({m.function}) {m.operator} "
                     f"#{m.occurrence}: {m.change()}")
    for file, line, op, occ in r["stale"]:
        lines.append(f"  stale {EQUIVALENT_FILE} entry (no surviving mutant): "
                     f"{file}:{line} {op} #{occ}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchkata.mutation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run-suite", help="one suite run against TARGET (the test command)")
    one.add_argument("exercise")
    one.add_argument("target", type=Path)
    one.add_argument("--limit", type=float, default=600.0)
    one.add_argument("--impact", type=Path, default=None,
                     help="run only the tests this impact map says call the changed code")
    many = sub.add_parser("run", help="mutation-test exercises (all when none is named)")
    many.add_argument("exercises", nargs="*")
    many.add_argument("--survivors", action="store_true",
                      help="run only the mutants that survived the recorded run (after new "
                           "tests)")
    many.add_argument("--no-select", action="store_true",
                      help="run the whole suite for every mutant (slow; a check of the "
                           "selection)")
    args = parser.parse_args(argv)
    root = paths.repo_root()
    known = paths.exercise_names(root)
    names = [args.exercise] if args.command == "run-suite" else (args.exercises or known)
    for name in names:
        if name not in known:
            parser.error(f"unknown exercise {name!r} (one of: {', '.join(known)})")
    if args.command == "run-suite":
        with contextlib.suppress(ValueError):  # ended by cosmic-ray: end the run with us
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return run_suite(args.exercise, args.target, args.limit, args.impact)
    results = []
    for name in names:
        run = rerun_survivors if args.survivors else mutate_exercise
        results.append(run(name, root, select=not args.no_select))
        save_record(root, results[-1])
        print(report(results[-1]), flush=True)
    if len(results) > 1:
        print("\nsummary:")
        for r in results:
            print(report(r).splitlines()[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
