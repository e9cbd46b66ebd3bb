"""How long a learner waits: cold suite, import floor, warm run, save to first failure.

For each exercise (median of --repeat runs, measured the same way every time):

* floor: ``python -c "import pytest, hypothesis, <what the exercise imports>"``, the part of
  any cold run that no test can avoid;
* cold: ``python -m pytest exercises/NN --target reference`` from scratch;
* warm: the same suite run by kata's warm worker (``torchkata.worker``), already started;
* save->fail: ``kata watch NN`` on the learner's starter: from rewriting one of its files to
  the first FAIL line printed.

It runs in a temporary copy of exercises/ and reference/, so no progress or worker of the
repository is touched. ``--load 4`` starts four busy CPU-bound processes for the whole
measurement (the "busy machine" case), each in a session of its own as separate programs
are: Linux's autogroup scheduler shares the CPU between sessions first, so busy processes in
this benchmark's own session would compete with the cold runs and not with the warm worker
(which runs in a session of its own) and favour it. With a load, it first times a control,
a fixed CPU-bound job of about a second in a fresh interpreter, before and after starting
the busy processes: its ratio is what the scheduler gives any one-thread program on this
machine under that load, the yardstick for the suites' own ratios. This is a benchmark, not
a test: it asserts nothing.

    python benchmarks/feedback.py                 # every exercise
    python benchmarks/feedback.py --exercise 01   # one
    python benchmarks/feedback.py --load 4        # beside four busy processes
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from torchkata import paths, runner, worker  # noqa: E402


def _busy(parent: int) -> None:
    if hasattr(os, "setsid"):
        os.setsid()  # a program of its own (see the docstring)
    while os.getppid() == parent:  # never outlive the benchmark, even a killed one
        for _ in range(1_000_000):
            pass


CONTROL = "sum(i * i for i in range(12_000_000))"  # pure Python, one thread, no imports


def control(repeat: int) -> float:
    """Median seconds of the control job (see the docstring) in a fresh interpreter."""
    return statistics.median(timed([sys.executable, "-S", "-c", CONTROL], ROOT, dict(os.environ))
                             for _ in range(repeat))


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHKATA_")}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", TORCHKATA_WORKER_IDLE="300")
    return env


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def floor(root: Path, name: str, env: dict[str, str]) -> float:
    folder = root / "exercises" / name
    modules = ["pytest", "hypothesis", *worker.modules_of(folder)]
    modules = [m for m in modules if not m.startswith("torchkata")] + ["torchkata.checks"]
    if any("optim" in p.read_text() for p in folder.glob("*.py")):
        modules.append("torch._dynamo")  # torch imports it when the first optimizer is made
    code = "\n".join(f"try:\n    import {m}\nexcept Exception:\n    pass" for m in modules)
    return timed([sys.executable, "-c", code], root, env)


def cold(root: Path, name: str, env: dict[str, str]) -> float:
    return timed([sys.executable, "-m", "pytest", f"exercises/{name}", "--target=reference",
                  "-q", "-p", "no:cacheprovider"], root, env)


def warm(root: Path, name: str) -> float:
    start = time.perf_counter()
    runner.run_suite(root, root / "exercises" / name, target="reference", use_worker=True)
    return time.perf_counter() - start


def save_to_first_failure(root: Path, name: str, env: dict[str, str], repeat: int) -> list[float]:
    """Start ``kata watch``, then rewrite a file ``repeat`` times; seconds to each FAIL line."""
    proc = subprocess.Popen([sys.executable, "-m", "torchkata", "watch", name], cwd=root,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    threading.Thread(target=lambda: [lines.put((time.perf_counter(), line))
                                     for line in proc.stdout], daemon=True).start()

    def until(prefix: str, timeout: float = 600) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                when, line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith(prefix):
                return when
        raise RuntimeError(f"kata watch {name}: no line starting {prefix!r}")

    results = []
    try:
        until("-- watching")
        file = sorted(p for p in (root / "exercises" / name).glob("*.py")
                      if not p.name.startswith("test_"))[0]
        for _ in range(repeat):
            time.sleep(1.0)
            saved = time.perf_counter()
            file.write_text(file.read_text())  # a save: new mtime, same code
            results.append(until("FAIL") - saved)
            until("-- watching")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exercise", action="append", help="NN or NN_topic (repeatable)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--load", type=int, default=0, help="busy processes beside it")
    args = parser.parse_args()
    if args.repeat < 1 or args.load < 0:
        parser.error("--repeat must be at least 1 and --load at least 0")
    names = paths.exercise_names(ROOT)
    if args.exercise:
        wanted = {e.zfill(2)[:2] for e in args.exercise}
        names = [n for n in names if n[:2] in wanted]
        if not names:
            parser.error(f"no exercise {args.exercise}")
    busy = [multiprocessing.Process(target=_busy, args=(os.getpid(),), daemon=True)
            for _ in range(args.load)]
    quiet = control(args.repeat) if busy else 0.0
    for p in busy:
        p.start()
    if busy:
        time.sleep(1.0)  # let the busy processes spread over the cores
        loaded = control(args.repeat)
        print(f"control (a one-thread CPU-bound job): {quiet:.2f} s alone, {loaded:.2f} s "
              f"beside the busy processes: load factor {loaded / quiet:.1f}x")
    tmp = Path(tempfile.mkdtemp(prefix="kata-feedback-"))
    try:
        root = tmp / "repo"
        for folder in ("exercises", "reference"):
            shutil.copytree(ROOT / folder, root / folder,
                            ignore=shutil.ignore_patterns("__pycache__", "runs", "*.pt"))
        shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
        env = env_for(root)
        os.environ.update(TORCHKATA_WORKER_IDLE="300")
        client = worker.Client(root)
        client.start()
        print(f"load: {args.load} busy processes, each in its own session; median of "
              f"{args.repeat}; cpu count "
              f"{os.cpu_count()}; {time.strftime('%Y-%m-%d %H:%M')}")
        print("| exercise | floor (s) | cold (s) | cold - floor (s) | warm run (s) "
              "| save -> first failure (s) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            f = statistics.median(floor(root, name, env) for _ in range(args.repeat))
            c = statistics.median(cold(root, name, env) for _ in range(args.repeat))
            warm(root, name)  # the worker imports what this exercise needs, once
            w = statistics.median(warm(root, name) for _ in range(args.repeat))
            s = statistics.median(save_to_first_failure(root, name, env, args.repeat))
            print(f"| {name} | {f:.1f} | {c:.1f} | {c - f:.1f} | {w:.1f} | {s:.2f} |",
                  flush=True)
        client.stop()
    finally:
        for p in busy:
            p.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
