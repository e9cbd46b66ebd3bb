"""Assertions that several exercises share, each failing with a message a beginner can act on.

A message says what was expected, what was seen, and why it matters; it never prints the
fix. Functions take the objects under test and, where they run a model, a ``device``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def fail(message: str) -> None:
    """Fail the current test with ``message`` and no traceback of the harness."""
    import pytest

    __tracebackhide__ = True
    pytest.fail(message, pytrace=False)


def assert_finite(tensor: torch.Tensor, what: str) -> None:
    """Every entry of ``tensor`` is a finite number (no NaN, no inf).

    Comparisons with NaN are always False, so a check such as ``(a - b).abs() < tol`` passes
    silently on NaN: call this first on anything the learner's code returns.
    """
    __tracebackhide__ = True
    if not isinstance(tensor, torch.Tensor):
        fail(f"{what} should be a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kinds = []
            if bool(torch.isnan(tensor.detach()).any()):
                kinds.append("NaN")
            if bool(torch.isinf(tensor.detach()).any()):
                kinds.append("inf")
            fail(
                f"{what} holds {' and '.join(kinds)} in {bad} of {tensor.numel()} entries. "
                f"Expected finite numbers: every later step (a loss, an argmax, a comparison) "
                f"is meaningless on NaN or inf. Look for a log or division of zero, an exp "
                f"that overflows, or values read before they were written."
            )


def assert_grads_flow(model: nn.Module, loss: torch.Tensor, what: str = "the model") -> None:
    """After ``loss.backward()`` every trainable parameter has a finite, non-zero gradient."""
    __tracebackhide__ = True
    for p in model.parameters():
        p.grad = None
    loss.backward()
    missing, non_finite, zero = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            non_finite.append(name)
        elif p.grad.abs().sum() == 0:
            zero.append(name)
    if missing:
        fail(
            f"No gradient reached {', '.join(missing)} of {what}. Expected every trainable "
            f"parameter to take part in the forward pass that produced the loss; a parameter "
            f"without a gradient never learns."
        )
    if non_finite:
        fail(
            f"The gradients of {', '.join(non_finite)} of {what} hold inf or NaN. Expected "
            f"finite gradients: look for a log of zero, a division by zero or an overflow."
        )
    if zero:
        fail(
            f"The gradients of {', '.join(zero)} of {what} are exactly zero. Expected them to "
            f"depend on the loss: something between these parameters and the loss blocks it."
        )


def assert_close_to_oracle(
    actual: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    why: str = "",
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """``actual`` equals the oracle's ``expected`` (compared in float64) within tolerances."""
    __tracebackhide__ = True
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    if actual.shape != expected.shape:
        fail(
            f"{what}: expected a result of shape {tuple(expected.shape)}, got "
            f"{tuple(actual.shape)}. {why}".strip()
        )
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    surprise = ~torch.isfinite(a) & torch.isfinite(e)
    if bool(surprise.any()):
        fail(
            f"{what}: {int(surprise.sum())} of {a.numel()} entries are NaN or inf where the "
            f"oracle's are finite numbers. Expected finite values: look for an overflow, a log "
            f"or division of zero. {why}".strip()
        )
    if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
        diff = (a - e).abs()
        worst = int(diff.nan_to_num(float("inf")).argmax())
        fail(
            f"{what}: differs from the oracle by up to {diff.max().item():.3g} "
            f"(at flat index {worst}: got {a.flatten()[worst].item():.6g}, expected "
            f"{e.flatten()[worst].item():.6g}). {why}".strip()
        )



def assert_can_overfit(
    losses: list[float], below: float, what: str = "the training step"
) -> None:
    """A model that can learn at all drives the loss on one fixed batch close to zero."""
    __tracebackhide__ = True
    if not all(torch.isfinite(torch.tensor(losses))):
        fail(f"{what}: the loss became inf or NaN while fitting one small batch.")
    if min(losses) < -1e-6:
        fail(
            f"{what}: the loss went negative ({min(losses):.3f}) while fitting one batch. "
            f"Losses such as cross-entropy are never below zero: whatever is being minimised "
            f"is not the loss between predictions and labels."
        )
    if losses[-1] >= below:
        fail(
            f"{what}: after {len(losses)} steps on one fixed batch the loss is "
            f"{losses[-1]:.3f} (it started at {losses[0]:.3f}). Expected it below {below}: a "
            f"working model and loss can memorise a handful of examples; if it cannot, the "
            f"outputs, the loss or the update are wrong, not the amount of training."
        )


@torch.no_grad()
def accuracy_of(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 1000
) -> float:
    """Fraction of ``x`` that ``model`` (in eval mode) labels as ``y``."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch].to(device))
        correct += (logits.argmax(dim=1).cpu() == y[i : i + batch]).sum().item()
    model.train(was_training)
    return correct / len(x)


def assert_accuracy_at_least(accuracy: float, threshold: float, what: str, hint: str) -> None:
    """A measured accuracy clears a measured threshold; ``hint`` says where to look if not."""
    __tracebackhide__ = True
    if accuracy < threshold:
        fail(
            f"{what}: accuracy {accuracy:.1%}, expected at least {threshold:.0%} "
            f"(the reference solution reaches it on every seed we measured). {hint}"
        )




def call(fn: Callable, *args, what: str, why: str = "", **kwargs):
    """Call code under test; if it raises, fail with what was called, where, and a hint.

    The error's first line is kept (it often names the mismatched shapes), and so is the
    last line of the learner's code that ran, instead of a trace through torch's internals.
    """
    __tracebackhide__ = True
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any error of the learner's code is a finding
        message = f"{what} raised {type(exc).__name__}: {_first_line(exc)}"
        where = _learner_frame(exc)
        if where:
            message += f"\n  at {where}"
        known = explain_error(exc)
        if known:  # a device or memory error: the caller's hint is about something else
            why = known
    fail(f"{message}\n{why}".strip())


# Errors whose cause is never what a test's own hint describes (shapes, layer sizes...):
# each gets its own explanation instead.
_KNOWN_ERRORS = (
    (("Expected all tensors to be on the same device", "same device"),
     "The tensors of one operation live on different devices. Expected the code to put "
     "everything on the `device` it is given (model.to(device), x.to(device)) instead of a "
     "fixed device such as .cuda() or 'cpu'."),
    (("Torch not compiled with CUDA enabled", "no NVIDIA driver", "Found no NVIDIA",
      "CUDA driver", "cuda is not available"),
     "The code asks for a GPU that this run does not have. Expected it to use the `device` "
     "it is given instead of calling .cuda() or naming 'cuda' itself: the same code must "
     "run on a laptop without a GPU."),
    (("out of memory", "can't allocate memory", "DefaultCPUAllocator"),
     "The code asked for far more memory than this small test needs. Expected sizes in the "
     "thousands, not billions: look for a shape built from the wrong numbers (a product of "
     "sizes, a size squared) or a tensor that grows on every step."),
    (("meta tensor", "on the meta device", "device='meta'"),
     "A tensor lives on the 'meta' device, which holds shapes but no values. Expected real "
     "tensors: look for a torch.set_default_device or device='meta' in the code."),
)


def explain_error(exc: BaseException) -> str:
    """A short explanation for device and memory errors, or '' for any other error."""
    text = str(exc)
    if isinstance(exc, MemoryError):
        return _KNOWN_ERRORS[2][1]
    for needles, explanation in _KNOWN_ERRORS:
        if any(n.lower() in text.lower() for n in needles):
            return explanation
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


def _learner_frame(exc: BaseException) -> str:
    """``file:line: code`` of the last frame outside torch, pytest and this harness."""
    import traceback
    from pathlib import Path

    harness = Path(__file__).resolve().parent
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if "site-packages" in path.parts or path.parent == harness or "<" in frame.filename:
            continue
        if path.name.startswith("test_"):
            continue
        try:
            shown = path.relative_to(Path.cwd())
        except ValueError:
            shown = path
        found = f"{shown}:{frame.lineno}: {frame.line}"
    return found


def how_script_ended(main: Callable, argv: list[str]) -> str:
    """Run a script's ``main(argv)`` in this process, the way a bad command line would.

    Returns '' when it ended as a tool should on bad input (SystemExit with a non-zero
    status and at most a one-line message), else what it did instead, for a test's message.
    """
    try:
        main(shell_argv(argv))
    except SystemExit as exc:
        if exc.code in (0, None):
            return "exited with status 0, as if all went well"
        if isinstance(exc.code, str) and "\n" in exc.code.strip():
            return f"exited with a message of several lines: {exc.code[:300]!r}"
        return ""
    except Exception as exc:  # noqa: BLE001 - any other error is the finding
        return f"raised {type(exc).__name__}: {_first_line(exc)[:200]}"
    return "carried on and returned normally"


def network_attempts(monkeypatch) -> list:
    """Refuse every network connection for the rest of the test; the list records each try."""
    import socket

    attempts: list = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in the tests")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return attempts


def shell_argv(argv: list[str]) -> list[str]:
    """``argv`` as new str objects, as a shell hands them to ``sys.argv``. A literal in a test
    can be the very object that the same literal in the learner's code is, and so hide an
    ``is`` where ``==`` belongs."""
    return [a.encode().decode() for a in argv]


def run_as_main(path, argv: list[str], run_name: str | None = None) -> str:
    """``python PATH ARGV`` in this process, as the interpreter does it: the module is named
    ``'__main__'`` (a str made at run time, as the interpreter's is: never the same object as
    a literal), the script's folder comes first on ``sys.path``, and the modules beside it are
    imported afresh and forgotten afterwards. Returns how it ended: ``"returned"`` or
    ``"exited with status N"``. Output goes where it would: use capsys.

    ``run_name`` runs it under another module name instead, as a tool that executes a file
    without making it the program does (``runpy.run_path``'s own default is ``'<run_path>'``,
    which sorts before ``'__main__'``): then the guard must keep ``main()`` from running."""
    import runpy
    import sys
    from pathlib import Path

    path = Path(path)
    siblings = {p.stem for p in path.parent.glob("*.py")}
    saved = {name: sys.modules.pop(name) for name in siblings if name in sys.modules}
    argv_before, path_before = sys.argv, list(sys.path)
    sys.argv, sys.path[:0] = shell_argv([str(path), *argv]), [str(path.parent)]
    try:
        name = "".join(["__", "main__"]) if run_name is None else "".join(run_name)
        runpy.run_path(str(path), run_name=name)
    except SystemExit as exc:
        return f"exited with status {exc.code!r}"
    finally:
        sys.argv, sys.path[:] = argv_before, path_before
        for name in siblings:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return "returned"



def _printed(run: Callable[[], str]) -> tuple[str, str]:
    """``run()``'s result, and what it printed to stdout and stderr."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        ended = run()
    return ended, printed.getvalue()


def assert_help_opens_with_summary(module, script: str) -> None:
    """``python SCRIPT --help`` (``module.main(["--help"])``) exits with status 0 and opens
    with the one-line summary that starts ``module``'s docstring, right after the usage."""
    __tracebackhide__ = True
    lines = (module.__doc__ or "").strip().splitlines()
    summary = " ".join(lines[0].split()) if lines else ""
    ended, out = _printed(lambda: how_script_ended(module.main, ["--help"]))
    if ended != "exited with status 0, as if all went well":
        fail(f"`python {script} --help` {ended or 'exited with an error'}; expected argparse "
             f"to print the help and exit with status 0.")
    paragraphs = [" ".join(block.split()) for block in out.split("\n\n")]  # usage, summary...
    if not summary or len(paragraphs) < 2 or not paragraphs[1].startswith(summary):
        fail(f"`python {script} --help` printed:\n{out.strip()[:600]}\nExpected the usage, "
             f"then the one-line summary that opens {script}'s docstring ({summary!r}), then "
             f"the options: the first thing a person who runs --help wants to know is what "
             f"the script does.")


def assert_not_started_under_another_name(path, script: str) -> None:
    """The file at ``path``, run under another module name (``'<run_path>'``, as
    ``runpy.run_path`` names it by default) with --help, only defines its functions."""
    __tracebackhide__ = True
    ended, shown = _printed(lambda: run_as_main(path, ["--help"], run_name="<run_path>"))
    if ended != "returned" or shown.strip():
        fail(f"{script} run under the module name '<run_path>' (as runpy.run_path does) with "
             f"--help {ended} and printed {shown.strip()[:200]!r}; expected it to return "
             f"without printing anything: with --help, a main() that ran prints the usage and "
             f"exits. A module that is not the program (imported, or run by a tool under its "
             f"own name) must not start its main(); only a module named exactly '__main__' is "
             f"the program, which is what the guard at the end of the file tests.")


_shared: dict = {}


def shared(make: Callable, *key):
    """One ``make(*key)`` per key, kept for the later tests of the run (building a model for
    every hypothesis example is slow). The impact recording run (torchkata.impact) starts
    every test with an empty cache, so that each test's use of ``make`` is seen."""
    if (make, *key) not in _shared:
        torch.manual_seed(0)
        _shared[(make, *key)] = make(*key)
    return _shared[(make, *key)]


def run_script(script, argv: list[str], cwd):
    """``python SCRIPT ARGV`` run from ``cwd`` in this process: ``main(argv)`` of the script,
    imported by the loader, with its output captured. A new Python would import torch (and
    MONAI) again, for seconds. Returns a ``subprocess.CompletedProcess``: the exit code is
    the SystemExit's, 1 for a crash (its traceback in ``stderr``), else 0."""
    import contextlib
    import io
    import os
    import subprocess
    import sys
    import traceback
    from pathlib import Path

    from torchkata.loader import StarterImportError, load

    script = Path(script)
    out, err, code = io.StringIO(), io.StringIO(), 0
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                load(script.parent, script.stem).main(shell_argv(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int) and exc.code is not None:
                    print(exc.code, file=sys.stderr)
            except StarterImportError as exc:
                code = 1
                print(f"Traceback (most recent call last):\nImportError: {exc}", file=sys.stderr)
            except Exception:  # noqa: BLE001 - a crash of the learner's script is the finding
                code = 1
                traceback.print_exc()
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([str(script), *argv], code, out.getvalue(),
                                       err.getvalue())
