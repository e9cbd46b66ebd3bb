"""How long a learner waits: cold suite, import floor, warm run, save to first failure.

For each exercise (median of --repeat runs, measured the same way every time):

* floor: ``python -c "import pytest, hypothesis, <what the exercise imports>"``, the part of
  any cold run that no test can avoid;
* cold: ``python -m pytest exercises/NN --target reference`` from scratch;
* warm: the same suite run by kata's warm worker (``torchkata.worker``), already started;
* save->fail: ``kata watch NN`` on the learner's starter: from rewriting one of its files to
  the first FAIL line printed.

It runs in a temporary copy of exercises/ and reference/, so no progress or worker of the
repository is touched.

``--load 4`` measures the "busy machine" case as pairs: four busy CPU-bound processes are
started once, each in a session of its own as separate programs are (Linux's autogroup
scheduler shares the CPU between sessions first, so busy processes in this benchmark's own
session would compete with the cold runs and not with the warm worker, which runs in a
session of its own, and favour it), and then paused (SIGSTOP) for each idle measurement and
resumed (SIGCONT) for its loaded twin right after. A ratio of two figures taken seconds apart
is not moved by the machine's drift from hour to hour, which on a shared virtual machine is as
large as the effect measured. Beside each exercise's pair it times two controls the same way,
each a fresh interpreter with one thread: a pure-Python job (the scheduler's share of a CPU
for any program) and ``import torch`` plus a fixed convolution loop (what a one-thread torch
program gets, the yardstick for a suite). This is a benchmark, not a test: it asserts
nothing.

    python benchmarks/feedback.py                 # every exercise
    python benchmarks/feedback.py --exercise 01   # one
    python benchmarks/feedback.py --load 4        # idle and loaded pairs, with their ratios
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import shutil
import signal
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


CONTROLS = {  # one thread each, in a fresh interpreter (see the docstring)
    "python": [sys.executable, "-S", "-c", "sum(i * i for i in range(12_000_000))"],
    "torch": [sys.executable, "-c", "import torch\ntorch.set_num_threads(1)\n"
              "conv, x = torch.nn.Conv2d(16, 16, 3, padding=1), torch.randn(32, 16, 32, 32)\n"
              "for _ in range(100):\n    conv(x).sum().backward()"],
}


class Load:
    """``n`` busy processes that run only while ``on`` (paused with SIGSTOP otherwise)."""

    def __init__(self, n: int) -> None:
        self.procs = [multiprocessing.Process(target=_busy, args=(os.getpid(),), daemon=True)
                      for _ in range(n)]
        for p in self.procs:
            p.start()
        time.sleep(1.0)  # each has called setsid before the first pause
        self.set(False)

    def set(self, on: bool) -> None:
        for p in self.procs:
            os.kill(p.pid, signal.SIGCONT if on else signal.SIGSTOP)
        if on:
            time.sleep(0.5)  # let them spread over the cores

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            os.kill(p.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM once resumed


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


def stamp(load: int, repeat: int) -> str:
    where = (f"load: {load} busy processes, each in its own session" if load
             else "idle (no busy processes started)")
    return (f"{where}; median of {repeat}; cpu count {os.cpu_count()}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def idle(root: Path, names: list[str], env: dict[str, str], repeat: int) -> None:
    print(stamp(0, repeat))
    print("| exercise | floor (s) | cold (s) | cold - floor (s) | warm run (s) "
          "| save -> first failure (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        f = statistics.median(floor(root, name, env) for _ in range(repeat))
        c = statistics.median(cold(root, name, env) for _ in range(repeat))
        warm(root, name)  # the worker imports what this exercise needs, once
        w = statistics.median(warm(root, name) for _ in range(repeat))
        s = statistics.median(save_to_first_failure(root, name, env, repeat))
        print(f"| {name} | {f:.1f} | {c:.1f} | {c - f:.1f} | {w:.1f} | {s:.2f} |", flush=True)


def paired(root: Path, names: list[str], env: dict[str, str], repeat: int, load: Load) -> None:
    """Each figure idle and loaded, the two taken back to back; their ratio loaded / idle."""
    print(stamp(len(load.procs), repeat) + "; each cell: idle -> loaded (ratio)")
    print("| exercise | python control | torch control | cold suite | warm run "
          "| save -> first failure, loaded |")
    print("|---|---:|---:|---:|---:|---:|")
    measures = {
        "python": lambda name: timed(CONTROLS["python"], ROOT, dict(os.environ)),
        "torch": lambda name: timed(CONTROLS["torch"], ROOT, dict(os.environ)),
        "cold": lambda name: cold(root, name, env),
        "warm": lambda name: warm(root, name),
    }
    for name in names:
        warm(root, name)  # the worker imports what this exercise needs, once
        runs: dict[tuple[str, bool], list[float]] = {}
        for _ in range(repeat):
            for key, measure in measures.items():
                for on in (False, True):
                    load.set(on)
                    runs.setdefault((key, on), []).append(measure(name))
        load.set(True)
        s = statistics.median(save_to_first_failure(root, name, env, repeat))
        load.set(False)
        cells = []
        for key in measures:
            a, b = (statistics.median(runs[key, on]) for on in (False, True))
            cells.append(f"{a:.1f} -> {b:.1f} ({b / a:.1f}x)")
        print(f"| {name} | {' | '.join(cells)} | {s:.2f} |", flush=True)


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
    if args.load and not hasattr(signal, "SIGSTOP"):
        parser.error("--load pauses its busy processes with SIGSTOP, which needs a POSIX system")
    load = Load(args.load) if args.load else None
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
        if load:
            paired(root, names, env, args.repeat, load)
        else:
            idle(root, names, env, args.repeat)
        client.stop()
    finally:
        if load:
            load.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
