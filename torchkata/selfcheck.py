"""Running an exercise's suite against copies of its code, for the bug-catalog proofs.

Every run happens in a process of its own, so nothing a mutant does (a crash, a changed
global, a module it imported) reaches the next run. Starting Python, torch and
scikit-learn afresh for each of dozens of mutants would cost most of the self-check's time,
so one worker process imports what an exercise's tests import, once, and then forks a child
per run (where ``os.fork`` exists; elsewhere each run is a plain subprocess). The worker
runs no tensor code before forking, so no thread pool is copied into the children.
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

from torchkata import worker


@dataclass
class Job:
    """One run of (part of) an exercise's suite against ``target``."""

    target: str
    tests: list[str] = field(default_factory=list)  # "test_x.py::test_y"; empty: the suite
    stop_at_first_failure: bool = False


@dataclass
class SuiteRun:
    returncode: int
    failed: set[str]  # "test_file.py::test_name" of every test that failed or errored
    passed: set[str]
    output: str

    def summary(self) -> str:
        tail = "\n".join(self.output.strip().splitlines()[-25:])
        return f"pytest exited {self.returncode}\n{tail}"


def pytest_args(exercise_dir: Path, job: Job, device: str, junit: Path) -> list[str]:
    tests = sorted({str(exercise_dir / t) for t in job.tests}) or [str(exercise_dir)]
    args = [*tests, f"--target={job.target}", f"--device={device}", "-p", "no:cacheprovider",
            "-q", "--tb=line", "--no-header", f"--junitxml={junit}", "-o", "junit_family=xunit2",
            "--budget-scale=3"]  # mutants run side by side, and a mutant may be slow
    if job.stop_at_first_failure:
        args.append("-x")
    return args


def run_jobs(exercise_dir: Path, jobs: list[Job], device: str = "cpu",
             timeout: float = 300) -> list[SuiteRun]:
    """Run ``jobs`` for one exercise in a fresh worker process; one SuiteRun per job."""
    root = exercise_dir.parent.parent
    with tempfile.TemporaryDirectory(prefix="torchkata-selfcheck-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({
            "exercise": str(exercise_dir), "device": device, "timeout": timeout,
            "preload": preload_modules(exercise_dir),
            "jobs": [vars(j) for j in jobs], "tmp": tmp,
        }))
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("TORCHKATA_TARGET", None)
        proc = subprocess.run([sys.executable, "-m", "torchkata.selfcheck", str(spec)], cwd=root,
                              env=env, capture_output=True, text=True,
                              timeout=timeout * len(jobs) + 120)
        results = Path(tmp) / "results.json"
        if proc.returncode != 0 or not results.exists():
            raise RuntimeError(f"self-check worker failed:\n{proc.stdout}\n{proc.stderr}")
        return [SuiteRun(r["returncode"], set(r["failed"]), set(r["passed"]), r["output"])
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
    exercise_dir = Path(spec["exercise"])
    tmp = Path(spec["tmp"])
    jobs = [Job(**raw) for raw in spec["jobs"]]
    cores = os.cpu_count() or 1
    parallel = max(1, min(len(jobs), int(os.environ.get("TORCHKATA_JOBS", cores))))
    threads = max(1, cores // parallel)
    codes: dict[int, int] = {}
    running: dict[int, tuple[int, float]] = {}  # pid -> (job index, deadline)
    pending = list(range(len(jobs)))
    while pending or running:
        while pending and len(running) < parallel:
            i = pending.pop(0)
            args = pytest_args(exercise_dir, jobs[i], spec["device"], tmp / f"{i}.xml")
            pid = worker.fork_pytest(args, tmp / f"{i}.out", threads=threads)
            running[pid] = (i, time.monotonic() + spec["timeout"])
        for pid, (i, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[i] = os.waitstatus_to_exitcode(status)
                del running[pid]
            elif time.monotonic() > deadline:
                worker.kill_group(pid)
                os.waitpid(pid, 0)
                with (tmp / f"{i}.out").open("a") as f:
                    f.write(f"\nkilled after {spec['timeout']:.0f} s\n")
                codes[i] = 124
                del running[pid]
        time.sleep(0.05)
    results = []
    for i in range(len(jobs)):
        failed, passed = outcomes(tmp / f"{i}.xml")
        out = tmp / f"{i}.out"
        results.append({"returncode": codes[i], "failed": sorted(failed), "passed": sorted(passed),
                        "output": out.read_text(errors="replace") if out.exists() else ""})
    (tmp / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _worker(sys.argv[1])
