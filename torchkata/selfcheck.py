"""Running exercise suites against copies of their code, for the bug-catalog proofs.

Every run happens in a process of its own, so nothing a mutant does (a crash, a changed
global, a module it imported) reaches the next run. Starting Python, torch and
scikit-learn afresh for each of hundreds of mutants would cost most of the self-check's
time, so one worker process imports what the exercises' tests import, once, and then forks
a child per run (where ``os.fork`` exists; elsewhere each run is a plain subprocess). The
worker runs no tensor code before forking, so no thread pool is copied into the children.

A job may record which functions each test calls (``record``: a run against the
reference) or run only the tests that can see its change (``impact`` and ``change``: see
torchkata.impact); such a job starts after the recording it reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from torchkata import impact, worker


@dataclass
class Job:
    """One run of (part of) the suite of ``exercise`` (its folder) against ``target``."""

    exercise: str
    target: str
    tests: list[str] = field(default_factory=list)  # "test_x.py::test_y"; empty: the suite
    stop_at_first_failure: bool = False
    record: str | None = None  # write the impact map of this run here
    impact: str | None = None  # select tests with this map (written by an earlier job) ...
    change: tuple[str, str, str] | None = None  # ... for this change: (file, old, new)


@dataclass
class SuiteRun:
    returncode: int
    failed: set[str]  # "test_file.py::test_name" of every test that failed or errored
    passed: set[str]
    output: str
    seconds: float = 0.0  # wall time of the run

    def summary(self) -> str:
        tail = "\n".join(self.output.strip().splitlines()[-25:])
        return f"pytest exited {self.returncode}\n{tail}"


def pytest_args(job: Job, device: str, junit: Path) -> list[str]:
    exercise_dir = Path(job.exercise)
    tests = sorted({str(exercise_dir / t) for t in job.tests}) or [str(exercise_dir)]
    args = [*tests, f"--target={job.target}", f"--device={device}", "-p", "no:cacheprovider",
            "-q", "--tb=line", "--no-header", f"--junitxml={junit}", "-o", "junit_family=xunit2",
            "--budget-scale=3"]  # mutants run side by side, and a mutant may be slow
    if job.stop_at_first_failure:
        args.append("-x")
    if job.record:
        args.append(f"--record-impact={job.record}")
    return args


def run_jobs(jobs: list[Job], device: str = "cpu", timeout: float = 300) -> list[SuiteRun]:
    """Run ``jobs`` in a fresh worker process; one SuiteRun per job."""
    exercises = sorted({Path(j.exercise) for j in jobs})
    root = exercises[0].parent.parent
    with tempfile.TemporaryDirectory(prefix="torchkata-selfcheck-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({
            "device": device, "timeout": timeout,
            "preload": list(dict.fromkeys(m for e in exercises for m in preload_modules(e))),
            "jobs": [vars(j) for j in jobs], "tmp": tmp,
        }))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("TORCHKATA_TARGET", None)
        proc = subprocess.run([sys.executable, "-m", "torchkata.selfcheck", str(spec)], cwd=root,
                              env=env, capture_output=True, text=True,
                              timeout=timeout * len(jobs) + 300)
        results = Path(tmp) / "results.json"
        if proc.returncode != 0 or not results.exists():
            raise RuntimeError(f"self-check worker failed:\n{proc.stdout}\n{proc.stderr}")
        return [SuiteRun(r["returncode"], set(r["failed"]), set(r["passed"]), r["output"],
                         r["seconds"])
                for r in json.loads(results.read_text())]


def preload_modules(exercise_dir: Path) -> list[str]:
    """What the worker imports before forking: the usual set and the exercise's imports."""
    return [*worker.BASE_MODULES, *worker.modules_of(exercise_dir)]


def outcomes(junit: Path) -> tuple[set[str], set[str]]:
    failed: set[str] = set()
    passed: set[str] = set()
    if not junit.exists() or junit.stat().st_size == 0:
        return failed, passed
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "").split("[", 1)[0]
        test_id = f"{module}.py::{name}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(test_id)
        elif case.find("skipped") is None:
            passed.add(test_id)
    return failed, passed - failed


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    worker.preload(spec["preload"])
    tmp = Path(spec["tmp"])
    jobs = [Job(**raw) for raw in spec["jobs"]]
    recorders = {j.record: i for i, j in enumerate(jobs) if j.record}
    cores = os.cpu_count() or 1
    parallel = max(1, min(len(jobs), int(os.environ.get("TORCHKATA_JOBS", cores))))
    threads = max(1, cores // parallel)
    codes: dict[int, int] = {}
    seconds: dict[int, float] = {}
    notes: dict[int, str] = {}
    running: dict[int, tuple[int, float]] = {}  # pid -> (job index, deadline)
    pending = list(range(len(jobs)))

    def ready(i: int) -> bool:
        after = recorders.get(jobs[i].impact) if jobs[i].impact else None
        return after is None or after in codes

    while pending or running:
        while len(running) < parallel and (i := next(filter(ready, pending), None)) is not None:
            pending.remove(i)
            job = jobs[i]
            if job.impact and job.change:
                chosen = _selected(job)
                if chosen == []:  # no test calls the changed code: nothing can fail
                    codes[i], seconds[i] = 0, 0.0
                    notes[i] = "no test of the suite calls the changed code"
                    continue
                if chosen is not None:
                    job.tests = chosen
            args = pytest_args(job, spec["device"], tmp / f"{i}.xml")
            pid = worker.fork_pytest(args, tmp / f"{i}.out", threads=threads)
            running[pid] = (i, time.monotonic() + spec["timeout"])
            seconds[i] = time.monotonic()
        for pid, (i, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[i] = os.waitstatus_to_exitcode(status)
                seconds[i] = time.monotonic() - seconds[i]
                del running[pid]
            elif time.monotonic() > deadline:
                worker.kill_group(pid)
                os.waitpid(pid, 0)
                with (tmp / f"{i}.out").open("a") as f:
                    f.write(f"\nkilled after {spec['timeout']:.0f} s\n")
                codes[i] = 124
                seconds[i] = time.monotonic() - seconds[i]
                del running[pid]
        time.sleep(0.02)
    results = []
    for i, job in enumerate(jobs):
        failed, passed = outcomes(tmp / f"{i}.xml")
        out = tmp / f"{i}.out"
        text = out.read_text(errors="replace") if out.exists() else notes.get(i, "")
        if job.impact and job.tests:
            text = f"selected by impact: {' '.join(job.tests)}\n{text}"
        results.append({"returncode": codes[i], "failed": sorted(failed), "passed": sorted(passed),
                        "output": text, "seconds": seconds[i]})
    (tmp / "results.json").write_text(json.dumps(results))


def _selected(job: Job) -> list[str] | None:
    """The tests of ``job``'s suite that can see its change (None: all of them)."""
    assert job.impact and job.change
    path = Path(job.impact)
    if not path.exists():  # the recording run failed: run everything
        return None
    file, old, new = job.change
    return impact.select(impact.read(path), file, old, new)


if __name__ == "__main__":
    _worker(sys.argv[1])
