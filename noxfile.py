"""Maintainer sessions. `nox` alone runs `check`, the README's test command.

PyTorch is gigabytes, so every session shares one virtual environment, `.nox/torchkata`,
created on first use and reinstalled only when pyproject.toml changes. The sessions
themselves run with venv_backend="none" and call that environment's interpreter.
`nox --no-venv` uses the current environment instead (it must have `pip install -e .[dev]`).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = ["check"]
nox.options.error_on_external_run = False

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "torchkata"
STAMP = ENV / "torchkata-installed.sha256"
BIN = "Scripts" if sys.platform == "win32" else "bin"


def _python(session: nox.Session) -> str:
    """The shared environment's interpreter, created or updated when needed."""
    if "--no-venv" in sys.argv:
        return "python"
    python = ENV / BIN / "python"
    if not python.exists():
        session.log(f"creating the shared environment {ENV} (once; PyTorch is large)")
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
        session.run(str(python), "-m", "pip", "install", "-q", "--upgrade", "pip", external=True)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        session.run(str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]",
                    external=True)
        STAMP.write_text(wanted)
    return str(python)


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(_python(session), "-m", "pytest", *args, external=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff over the harness, the tests and the reference solutions."""
    session.run(_python(session), "-m", "ruff", "check", ".", external=True)


@nox.session(venv_backend="none")
def harness(session: nox.Session) -> None:
    """The harness's own unit tests and the static catalog checks (no mutants)."""
    _pytest(session, "tests", "-m", "not mutants", "-n", "auto", *session.posargs)


@nox.session(venv_backend="none")
@nox.parametrize("device", ["cpu", "cuda"])
@nox.parametrize("target", ["student", "reference"])
def exercises(session: nox.Session, target: str, device: str) -> None:
    """Run the exercise suites against the student's or the reference code."""
    paths = [a for a in session.posargs if not a.startswith("-")] or ["exercises"]
    flags = [a for a in session.posargs if a.startswith("-")]
    _pytest(session, *paths, f"--target={target}", f"--device={device}", *flags)


@nox.session(venv_backend="none")
def mutants(session: nox.Session) -> None:
    """The bug-catalog proofs: planted bugs caught, alternative fixes pass, wrong fixes fail."""
    _pytest(session, "tests/test_catalog.py", "tests/test_mutants.py", *session.posargs)


@nox.session(venv_backend="none")
def soak(session: nox.Session) -> None:
    """Run the reference suites N times (`nox -s soak -- N`, default 5) with fresh random
    hypothesis examples; report each failure with the seed that reproduces it.

    Only the property tests run (`-m "not trains"`): training tests are seeded, so a repeat
    would give the same result. Extra arguments after N go to pytest.
    """
    import random

    args = list(session.posargs)
    rounds = int(args.pop(0)) if args and args[0].isdigit() else 5
    python = _python(session)
    failed = []
    for i in range(1, rounds + 1):
        seed = random.randrange(2**32)
        cmd = [python, "-m", "pytest", "exercises", "--target=reference", "-q", "-p",
               "no:cacheprovider", "-m", "not trains", "--hypothesis-profile=random",
               f"--hypothesis-seed={seed}", *args]
        session.log(f"soak round {i} of {rounds}: --hypothesis-seed={seed}")
        try:
            session.run(*cmd, external=True)
        except CommandFailed:
            failed.append(" ".join(cmd[1:]))
    if failed:
        session.error("soak failures; reproduce each with:\n  python " + "\n  python ".join(failed))


@nox.session(venv_backend="none")
def check(session: nox.Session) -> None:
    """Everything CI runs: lint, harness tests, every reference suite, the full self-check."""
    python = _python(session)
    session.run(python, "-m", "ruff", "check", ".", external=True)
    # the harness tests mostly wait for Pythons they start: one pytest worker per core
    session.run(python, "-m", "pytest", "tests", "-m", "not mutants", "-n", "auto",
                external=True)
    session.run(python, "-m", "pytest", "exercises", "--target=reference", "--device=cpu",
                external=True)
    session.run(python, "-m", "pytest", "tests/test_mutants.py", external=True)


@nox.session(venv_backend="none")
def mutation(session: nox.Session) -> None:
    """Mutation testing: cosmic-ray's mutants of each reference against its suite.

    `nox -s mutation -- 01_mlp 02_autograd` (no names: every exercise) prints per exercise
    the mutants killed, survived, equivalent (reference/NN_topic/equivalent_mutants.toml) and
    timed out, and the score killed / (total - equivalent). Slow (minutes per exercise): not
    part of `check`.
    """
    session.run(_python(session), "-m", "torchkata.mutation", "run", *session.posargs,
                external=True)
