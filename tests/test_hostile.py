"""Learner code is hostile input: broken copies of 01_mlp, each run by pytest in a subprocess
beside an untouched 02_autograd, must end in a clear verdict within a short time, and leave
02 unaffected.

Each case is a copy of the reference of 01 with one hostile change, run as
``pytest exercises/01_mlp exercises/02_autograd --target COPY`` (COPY holds both folders).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from torchkata import paths

ROOT = paths.repo_root()
FORWARD = "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
# a few tests of each exercise, to keep every case short
SELECT = "forward or not_linear or sigmoid or mse"


def hostile_copy(tmp_path: Path, forward_body: str = "", top: str = "") -> Path:
    """reference/01_mlp with code put at the top of mlp.py or first in forward, and 02."""
    target = tmp_path / "target"
    for name in ("01_mlp", "02_autograd"):
        shutil.copytree(ROOT / "reference" / name, target / name,
                        ignore=shutil.ignore_patterns("__pycache__", "bugs.toml"))
    mlp = target / "01_mlp" / "mlp.py"
    text = mlp.read_text()
    assert text.count(FORWARD) == 1, "mlp.py's forward changed: update this test's anchor"
    if forward_body:
        text = text.replace(FORWARD, FORWARD + forward_body)
    mlp.write_text(top + text)
    return target


def run_pytest(target: Path, *extra: str, timeout: float = 150):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHKATA_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "exercises/01_mlp", "exercises/02_autograd",
         f"--target={target}", "-p", "no:cacheprovider", "-q", "-rs", "-k", SELECT, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def assert_02_unaffected(out: str) -> None:
    assert "FAILED exercises/02_autograd" not in out, out[-3000:]
    assert "ERROR exercises/02_autograd" not in out, out[-3000:]


def test_an_endless_loop_ends_at_once_and_names_the_line(tmp_path):
    target = hostile_copy(tmp_path, forward_body="        while True:\n            pass\n")
    proc, seconds = run_pytest(target, "--budget-scale=0.2")  # cheap tests: 3 s each
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "did not return within 3 s" in out, out[-3000:]
    assert "01_mlp/mlp.py:" in out and "while True" in out, out[-3000:]
    assert "not checked: forward (mlp.py) did not return in 3 s" in out, out[-3000:]
    assert out.count("did not return within") == 1, "only the first test waits its budget"
    assert_02_unaffected(out)
    assert seconds < 60, f"took {seconds:.0f} s"


def test_a_loop_that_switched_its_budget_off_is_ended_by_the_backstop(tmp_path):
    target = hostile_copy(tmp_path, forward_body="        import signal\n"
                                                 "        signal.setitimer(signal.ITIMER_REAL, 0)\n"
                                                 "        while True:\n            pass\n")
    proc, seconds = run_pytest(target, "--timeout=5")  # pytest-timeout's, on torchkata's thread
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and " passed" not in out, out[-3000:]
    assert "Timeout" in out and "mlp.py" in out and "while True" in out, out[-3000:]
    assert seconds < 60, f"took {seconds:.0f} s"


def test_a_default_device_set_at_import_is_reported_and_undone(tmp_path):
    target = hostile_copy(tmp_path, top='import torch\ntorch.set_default_device("meta")\n')
    proc, _ = run_pytest(target)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "importing it changes torch's process-wide default device (cpu -> meta)" in out, \
        out[-3000:]
    assert_02_unaffected(out)


def test_os_exit_at_import_is_a_failure_not_a_silent_end(tmp_path):
    target = hostile_copy(tmp_path, top="import os\nos._exit(3)\n")
    proc, _ = run_pytest(target)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "os._exit(3) was called while importing mlp.py" in out, out[-3000:]
    assert " passed" in out.splitlines()[-1], out[-3000:]
    assert_02_unaffected(out)


def test_a_print_flood_is_capped(tmp_path):
    target = hostile_copy(tmp_path, forward_body='        print("spam " * 200)\n'
                                                '        x = x * float("nan")\n')
    proc, _ = run_pytest(target)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert len(out) < 200_000, f"{len(out)} characters of output"
    assert "characters of output cut by torchkata" in out
    assert_02_unaffected(out)


def test_nan_outputs_do_not_pass(tmp_path):
    target = hostile_copy(tmp_path, forward_body='        return x.flatten(1)[:, :10] * '
                                                 'float("nan")\n')
    proc, _ = run_pytest(target)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    passed_01 = [line for line in out.splitlines()
                 if line.startswith("PASSED exercises/01_mlp")]
    assert not passed_01, passed_01
    assert "NaN" in out, out[-3000:]
    assert_02_unaffected(out)


@pytest.mark.parametrize("profile", ["thorough", "random"])
def test_hypothesis_profiles_load_from_the_command_line(profile):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "exercises/00_tensors", "--target=reference",
         "-p", "no:cacheprovider", "-q", f"--hypothesis-profile={profile}",
         "--hypothesis-seed=7", "-k", "distances"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "is not registered" not in out, out[-2000:]
    assert proc.returncode == 0, out[-3000:]
