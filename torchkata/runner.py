"""Running one exercise's suite for ``kata``: in the warm worker when it can, else cold.

``run_suite`` asks the resident worker (``torchkata.worker``) to fork a child that runs
``pytest exercises/NN_topic``; where there is no worker (Windows, ``TORCHKATA_WORKER=off``)
it starts ``python -m pytest`` in a subprocess. Either way the pytest side streams events
(``torchkata.events``): the runner hands each one to ``on_event`` as it arrives, so the first
failure shows at once, and builds its counts from them. The run has an overall limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from torchkata import worker
from torchkata.events import ENV_EVENTS

LIMIT_SECONDS = 600  # a whole run; each test also has its own budget (torchkata.plugin)


@dataclass
class RunResult:
    returncode: int
    outcomes: dict[str, str] = field(default_factory=dict)  # nodeid -> outcome
    events: list[dict] = field(default_factory=list)
    output: str = ""
    warm: bool = False
    timed_out: bool = False
    last_started: str = ""

    def having(self, outcome: str) -> list[str]:
        return [t for t, o in self.outcomes.items() if o == outcome]

    @property
    def passed(self) -> list[str]:
        return self.having("passed")

    @property
    def failed(self) -> list[str]:
        return self.having("failed")

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.passed) and not self.failed


def pytest_args(folder: str, device: str | None, target: str | None, verbose: bool,
                extra: list[str] = ()) -> list[str]:
    """Arguments of ``pytest exercises/NN_topic ...``, run with the repository as cwd."""
    # the warm worker imported pytest's plugins before pytest could rewrite their asserts
    args = [folder, "-p", "no:cacheprovider", "-p", "torchkata.events",
            "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    if device:
        args.append(f"--device={device}")
    if target:
        args.append(f"--target={target}")
    args += ["-v"] if verbose else ["-q", "--no-header", "-rN"]
    return args + list(extra)


def run_suite(root: Path, folder: Path, device: str | None = None, target: str | None = None,
              verbose: bool = False, on_event=None, extra: list[str] = (),
              limit: float = LIMIT_SECONDS, use_worker: bool | None = None,
              on_warmup=None) -> RunResult:
    """Run the suite of the exercise in ``folder``; call ``on_event`` for each event."""
    rel = os.path.relpath(folder, root)
    args = pytest_args(rel, device, target, verbose, extra)
    if use_worker is None:
        use_worker = worker.Client.enabled()
    with tempfile.TemporaryDirectory(prefix="kata-") as tmp:
        events, out = Path(tmp) / "events.jsonl", Path(tmp) / "out"
        env = {**os.environ, ENV_EVENTS: str(events)}
        run, warm = None, False
        if use_worker:
            client = worker.Client(root)
            if not client.ping() and on_warmup:
                on_warmup()
            if client.start():
                run = client.submit(args, out, env, worker.modules_of(folder), limit + 30)
                warm = run is not None
        proc = None
        if run is None:
            proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=root, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out.open("w"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
        result = RunResult(returncode=0, warm=warm)
        deadline = time.monotonic() + limit
        offset, shown = 0, 0
        try:
            while True:
                code = run.poll() if run is not None else proc.poll()
                offset = _read_events(events, offset, result, on_event)
                if verbose:
                    shown = _echo(out, shown)
                if code is not None:
                    break
                if time.monotonic() > deadline:
                    _kill(run, proc)
                    result.timed_out = True
                    code = 124
                    break
                time.sleep(0.02)
        except BaseException:
            _kill(run, proc)
            raise
        offset = _read_events(events, offset, result, on_event)
        if verbose:
            _echo(out, shown)
        result.returncode = code
        result.output = out.read_text(errors="replace") if out.exists() else ""
        return result


def _kill(run, proc) -> None:
    if run is not None:
        run.kill()
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            proc.kill()
        proc.wait()


def _echo(out: Path, shown: int) -> int:
    try:
        with out.open("rb") as f:
            f.seek(shown)
            chunk = f.read()
    except FileNotFoundError:
        return shown
    sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()
    return shown + len(chunk)


def _read_events(path: Path, offset: int, result: RunResult, on_event) -> int:
    """Read the complete JSON lines the pytest side appended since ``offset``."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        result.events.append(event)
        if event.get("event") == "start":
            result.last_started = event.get("test", "")
        elif event.get("event") == "result":
            test = event.get("test", "")
            if result.outcomes.get(test) != "failed":
                result.outcomes[test] = event.get("outcome", "failed")
        if on_event:
            on_event(event)
    return offset + end


def effective_target(target: str | None) -> str:
    return target or os.environ.get("TORCHKATA_TARGET") or "student"
