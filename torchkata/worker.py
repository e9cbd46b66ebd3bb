"""Running pytest in a forked child of a warm process: the one way torchkata does it.

A learner's wait is mostly imports (torch, torchvision, scikit-learn, hypothesis, pytest).
A process that has imported them once can fork a child per run: the child starts with
everything imported and nothing run, runs pytest, and exits, so nothing of one run
(modules of the learner's code, torch's settings, hypothesis's state) reaches the next.
The warm process runs no tensor code, so no thread pool is copied into its children.

Two users: the self-check (``torchkata.selfcheck``) forks one child per mutant, and the
resident worker below serves ``kata run`` and ``kata watch``: a background process that
listens on a Unix socket, forks one child per request, and exits after a while idle, or
when the harness's own code changed. Where ``os.fork`` or Unix sockets are missing
(Windows), callers run pytest in a plain subprocess instead.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import hashlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAN_FORK = hasattr(os, "fork") and hasattr(socket, "AF_UNIX")
ENV_WORKER = "TORCHKATA_WORKER"  # "off": no resident worker
ENV_IDLE = "TORCHKATA_WORKER_IDLE"
IDLE_SECONDS = 20 * 60
# torch._dynamo: the first optimizer a test creates imports it (about 2 s), so it is paid
# here, once, rather than in every run that trains
BASE_MODULES = ("pytest", "torch", "torch._dynamo", "torch.optim", "torchvision", "hypothesis",
                "sklearn.metrics", "numpy", "PIL.Image", "torchkata.checks", "torchkata.plugin",
                "torchkata.events")


# --- what to import before forking ---------------------------------------------------------


def modules_of(exercise_dir: Path) -> list[str]:
    """Top-level imports of an exercise's files that are not its own modules."""
    own = {p.stem for p in exercise_dir.glob("*.py")}
    names: set[str] = set()
    for path in exercise_dir.glob("*.py"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a broken starter: the child reports it properly
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in own)


def preload(names) -> None:
    """Import ``names`` (and pytest's plugins) here, once; failures are the child's to report."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001,S112 - a child will report it properly
            continue
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="pytest11"):
            with contextlib.suppress(Exception):
                importlib.import_module(ep.value.split(":")[0])
    except Exception:  # noqa: BLE001,S110 - only a speed-up
        pass
    # Everything imported so far lives as long as the process. Frozen, the garbage collector
    # skips it: pytest's gc.collect() calls at the end of each child's run take 0.1 s
    # instead of 0.5 s, and the children do not copy these pages by touching them.
    gc.collect()
    gc.freeze()


# --- one forked child ------------------------------------------------------------------------


def fork_pytest(args: list[str], out: Path, cwd: str | None = None,
                env: dict[str, str] | None = None, threads: int | None = None) -> int:
    """Fork a child that runs ``pytest.main(args)`` with its output in ``out``; its pid.

    The child leads a process group of its own, so that one kill ends it and whatever it
    started (scripts, distributed ranks).
    """
    pid = os.fork()
    if pid != 0:
        return pid
    code = 70
    try:  # the child: run pytest, then leave at once without the parent's cleanup
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if cwd:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
            sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
        if threads:
            os.environ["TORCHKATA_THREADS"] = str(threads)
        import pytest

        sys.argv = ["pytest", *args]
        code = int(pytest.main(args))
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return 0  # pragma: no cover - never reached


def wait(pid: int, deadline: float | None) -> int:
    """Wait for the child ``pid``; kill its group at ``deadline``; its exit code (124: killed)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() > deadline:
            kill_group(pid)
            os.waitpid(pid, 0)
            return 124
        time.sleep(0.02)


def kill_group(pid: int) -> None:
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        with contextlib.suppress(OSError):
            kill()


# --- the resident worker ---------------------------------------------------------------------


def fingerprint(root: Path) -> str:
    """Changes when the harness's code, the interpreter or the project's settings change."""
    h = hashlib.sha256(sys.executable.encode())
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("*.py")) + [root / "pyproject.toml"]:
        with contextlib.suppress(OSError):
            st = path.stat()
            h.update(f"{path}:{st.st_mtime_ns}:{st.st_size}".encode())
    return h.hexdigest()[:16]


def socket_path(root: Path) -> Path:
    """A short path (Unix sockets allow about 100 characters) unique to root and user."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"torchkata-{uid}-{key}.sock"


def serve(root: Path) -> None:
    """The worker's loop: one request at a time, one forked child per request."""
    path = socket_path(root)
    mine = fingerprint(root)
    preload(BASE_MODULES)
    idle = float(os.environ.get(ENV_IDLE, IDLE_SECONDS))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(idle)
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return  # idle for too long
            with conn:
                conn.settimeout(None)
                request = _read_message(conn)
                if request is None:
                    continue
                if request.get("op") == "stop":
                    _send(conn, {"stopped": True})
                    return
                if request.get("fingerprint") != mine:
                    _send(conn, {"stale": True})
                    return
                if request.get("op") == "ping":
                    _send(conn, {"pid": os.getpid()})
                    continue
                preload(request.get("preload", []))
                child = fork_pytest(request["args"], Path(request["out"]), request["cwd"],
                                    request["env"])
                _send(conn, {"pid": child})
                limit = request.get("limit")
                code = wait(child, time.monotonic() + limit if limit else None)
                with contextlib.suppress(OSError):
                    _send(conn, {"returncode": code})
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _read_message(conn: socket.socket, buffer: bytearray | None = None) -> dict | None:
    data = bytearray() if buffer is None else buffer
    while b"\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    line, _, rest = bytes(data).partition(b"\n")
    if buffer is not None:
        buffer[:] = rest
    try:
        return json.loads(line)
    except ValueError:
        return None


class Client:
    """``kata``'s side: start the worker if needed, and ask it for runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = socket_path(root)

    @staticmethod
    def enabled() -> bool:
        return CAN_FORK and os.environ.get(ENV_WORKER, "").lower() not in ("off", "0", "no")

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
            return sock
        except OSError:
            sock.close()
            return None

    def ping(self) -> bool:
        """Whether a worker of the current harness code is listening (and warm)."""
        sock = self._connect()
        if sock is None:
            return False
        try:
            with sock:
                _send(sock, {"op": "ping", "fingerprint": fingerprint(self.root)})
                reply = _read_message(sock)
        except OSError:  # a worker on its way out
            return False
        if reply and reply.get("stale"):
            time.sleep(0.1)  # it is exiting; a fresh one will be started
            return False
        return bool(reply and "pid" in reply)

    def start(self, timeout: float = 180) -> bool:
        """Start a worker in the background unless one is listening; True once it answers."""
        if self.ping():
            return True
        log = self.root / ".kata" / "worker.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("ab") as sink:
            subprocess.Popen([sys.executable, "-m", "torchkata.worker", "serve", str(self.root)],
                             cwd=self.root, stdin=subprocess.DEVNULL, stdout=sink,
                             stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if self.ping():
                return True
        return False

    def stop(self) -> bool:
        sock = self._connect()
        if sock is None:
            return False
        try:
            with sock:
                _send(sock, {"op": "stop"})
                _read_message(sock)
        except OSError:
            return False
        deadline = time.monotonic() + 5
        while self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def submit(self, args: list[str], out: Path, env: dict[str, str], preload_names: list[str],
               limit: float | None) -> Run | None:
        """Ask for one pytest run; None when no current worker answers."""
        sock = self._connect()
        if sock is None:
            return None
        _send(sock, {"args": args, "out": str(out), "cwd": str(self.root), "env": env,
                     "preload": preload_names, "limit": limit,
                     "fingerprint": fingerprint(self.root)})
        buffer = bytearray()
        reply = _read_message(sock, buffer)
        if not reply or "pid" not in reply:
            sock.close()
            return None
        return Run(sock, reply["pid"], buffer)


class Run:
    """A run in progress in the worker's child ``pid``."""

    def __init__(self, sock: socket.socket, pid: int, buffer: bytearray) -> None:
        self.sock, self.pid, self.buffer = sock, pid, buffer
        self.sock.setblocking(False)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                chunk = self.sock.recv(65536)
                self.buffer += chunk
                if not chunk and b"\n" not in self.buffer:
                    self.returncode = 70  # the worker went away
            except BlockingIOError:
                pass
            if b"\n" in self.buffer:
                line = bytes(self.buffer).split(b"\n", 1)[0]
                try:
                    self.returncode = int(json.loads(line).get("returncode", 70))
                except ValueError:
                    self.returncode = 70
                self.sock.close()
        return self.returncode

    def kill(self) -> None:
        kill_group(self.pid)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "serve":
        serve(Path(argv[1]))
        return 0
    print("usage: python -m torchkata.worker serve ROOT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
