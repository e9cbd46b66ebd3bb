"""The learner's runner, `kata`, driven as a subprocess in a temporary copy of the repository.

The copy holds exercises/, reference/ and pyproject.toml, plus two tiny torch-free exercises:
98_fake (one planted bug) and 99_broken (a starter that does not import). Only one test runs
a real suite (01_mlp); the others run the fakes with pytest's plugin autoloading off
(`PYTEST_DISABLE_PLUGIN_AUTOLOAD`), so that a run costs a Python start, not a torch import.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from torchkata import cli, paths, runner, worker

ROOT = paths.repo_root()
IGNORE = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".hypothesis", "*.pt", "*.png")

FAKE = {
    "exercises/98_fake/calc.py": "def double(x):\n    return x + x + 1\n",
    "reference/98_fake/calc.py": "def double(x):\n    return x + x\n",
    "reference/98_fake/bugs.toml": '''
        [[bug]]
        id = "off-by-one"
        file = "calc.py"
        fixed = "return x + x\\n"
        planted = "return x + x + 1\\n"
        lesson = "doubling adds nothing else"
        caught_by = ["test_calc.py::test_double_is_exact"]
        ''',
    "exercises/98_fake/exercise.toml": '''
        title = "A fake exercise"
        order = 98
        files = ["calc.py"]
        hints = ["first hint", "second hint", "third hint"]
        ''',
    "exercises/98_fake/test_calc.py": '''
        from torchkata import under_test

        calc = under_test("calc")


        def test_double_is_exact():
            assert calc.double(2) == 4, "double(2) should be 4"


        def test_double_keeps_its_name():
            assert calc.double.__name__ == "double"
        ''',
    "exercises/99_broken/broken.py": "def value(:\n    return 1\n",
    "reference/99_broken/broken.py": "def value():\n    return 1\n",
    "exercises/99_broken/exercise.toml": 'title = "Broken"\norder = 99\nfiles = ["broken.py"]\n'
                                         'hints = ["a", "b", "c"]\n',
    "exercises/99_broken/test_broken.py": '''
        from torchkata import under_test

        broken = under_test("broken")


        def test_value_is_one():
            assert broken.value() == 1


        def test_value_is_an_int():
            assert isinstance(broken.value(), int)
        ''',
}


def make_copy(dest: Path) -> Path:
    for name in ("exercises", "reference"):
        shutil.copytree(ROOT / name, dest / name, ignore=IGNORE)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for name, text in FAKE.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    # the copy's own manifest, so that these tests do not depend on the shipped one
    (dest / cli.MANIFEST).write_text(cli.format_manifest(cli.compute_manifest(dest)))
    return dest


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_copy(tmp_path / "repo")


def kata_env(fast: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHKATA_TARGET", "TORCHKATA_DEVICE", "PYTEST_ADDOPTS")}
    env.update(NO_COLOR="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1",
               TORCHKATA_WORKER="off")  # test_warm_worker_* starts one on purpose
    if fast:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def kata(root: Path, *args: str, fast: bool = True, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "torchkata", *args], cwd=root,
                          env=kata_env(fast), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def state(root: Path) -> dict:
    return json.loads((root / ".kata" / "state.json").read_text())


# --- static and in-process ---------------------------------------------------------------


def test_shipped_manifest_matches_the_test_files():
    shipped = cli.read_manifest(ROOT)
    actual = cli.compute_manifest(ROOT)
    regenerate = "if the change is intended, regenerate it with: python -m torchkata manifest"
    assert shipped is not None, f"{cli.MANIFEST} is missing; {regenerate}"
    changed = sorted(f for f in set(shipped) | set(actual) if shipped.get(f) != actual.get(f))
    assert not changed, (f"{cli.MANIFEST} does not match the test files {changed}; "
                         f"{regenerate}")


def test_exercise_numbers_parse_in_every_spelling():
    exercises = cli.exercises(ROOT)
    for spec in ("1", "01", "01_mlp", "mlp", "exercises/01_mlp/"):
        assert cli.pick(exercises, spec).name == "01_mlp"
    with pytest.raises(cli.KataError, match="choose one of: .*01_mlp"):
        cli.pick(exercises, "77")


def test_root_is_found_from_a_subfolder(repo):
    assert cli.find_root(repo / "exercises" / "98_fake") == repo.resolve()


def test_device_and_target_pass_through_to_pytest():
    cmd = runner.pytest_args("exercises/01_mlp", "cuda", "reference", False, ["-k", "shape"])
    assert "--device=cuda" in cmd and "--target=reference" in cmd
    assert cmd[-2:] == ["-k", "shape"]
    plain = runner.pytest_args("exercises/01_mlp", None, None, False)
    assert not any(a.startswith(("--device", "--target")) for a in plain)
    args = cli.build_parser().parse_args(["run", "1", "-k", "shape", "--runslow"])
    assert cli.pytest_extra(args) == ["-k", "shape", "--runslow"]


# --- list, run ---------------------------------------------------------------------------


def test_list_shows_the_curriculum_without_importing_torch(repo):
    result = kata(repo)
    assert result.returncode == 0, result.stderr
    names = paths.exercise_names(repo)
    assert f"0 of {len(names)} exercises done" in result.stdout
    assert re.search(rf"> {names[0]} .*not started", result.stdout)
    assert "[----" in result.stdout and "kata run" in result.stdout
    probe = "import sys, torchkata.cli as c; c.main(['list']); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=repo, env=kata_env(),
                          capture_output=True).returncode == 0, "kata list imported torch"


def test_run_real_exercise_reports_failures_and_progress(repo):
    """The one run of a real suite: concise failures, a hint pointer, progress recorded."""
    result = kata(repo, "run", "01", fast=False, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^FAIL test_\w+\n     \S", out, re.M), out
    assert "kata hint 01" in out and "kata run 01 -v" in out
    assert "Traceback" not in out and "=====" not in out, "pytest's own output leaked"
    entry = state(repo)["exercises"]["01_mlp"]
    assert entry["status"] == "failing" and 0 < entry["total"] and entry["failing"]
    listing = kata(repo, "list").stdout
    assert re.search(rf"01_mlp .*failing: {entry['passed']} of {entry['total']} tests pass",
                     listing), listing


def test_run_shows_the_message_then_marks_done_once_fixed(repo):
    result = kata(repo, "run", "98_fake")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL test_double_is_exact" in result.stdout
    assert "double(2) should be 4" in result.stdout
    assert "1 passed, 1 failed" in result.stdout and "kata hint 98" in result.stdout
    shutil.copy2(repo / "reference/98_fake/calc.py", repo / "exercises/98_fake/calc.py")
    result = kata(repo, "run", "98")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "98_fake passes: 2 passed" in result.stdout and "Next: 99_broken" in result.stdout
    assert state(repo)["exercises"]["98_fake"]["status"] == "done"
    assert re.search(r"98_fake .*done", kata(repo, "list").stdout)
    solution = kata(repo, "solution", "98")  # done: no confirmation needed
    assert solution.returncode == 0 and "identical to the reference" in solution.stdout


def test_a_starter_that_does_not_import_gives_one_clear_message(repo):
    result = kata(repo, "run", "99")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"exercises/99_broken/broken\.py:1: SyntaxError", out), out
    assert out.count("SyntaxError") == 1, "the same failure is shown once"
    assert "same failure as test_value_is_one" in out
    assert "0 passed, 2 failed" in out and "Traceback" not in out


def test_edited_tests_do_not_count_as_done(repo):
    test_file = repo / "exercises/98_fake/test_calc.py"
    assert kata(repo, "manifest").returncode == 0
    test_file.write_text(test_file.read_text().replace("== 4", "== 5"))
    result = kata(repo, "run", "98")
    assert result.returncode == 0
    assert "differ from the shipped ones" in result.stdout
    assert state(repo)["exercises"]["98_fake"]["status"] == "edited"


# --- hint, reset, solution, verify, state ----------------------------------------------------


def test_hints_come_one_at_a_time(repo):
    shown = [kata(repo, "hint", "98").stdout for _ in range(4)]
    assert "Hint 1 of 3 for 98_fake" in shown[0] and "first hint" in shown[0]
    assert "Hint 2 of 3" in shown[1] and "second hint" in shown[1]
    assert "first hint" not in shown[1]
    assert "Hint 3 of 3" in shown[2] and "third hint" in shown[2]
    assert "All 3 hints" in shown[3] and "kata solution 98" in shown[3]
    assert state(repo)["exercises"]["98_fake"]["hints_seen"] == 3


def test_reset_restores_the_starter_and_keeps_a_backup(repo):
    mine = repo / "exercises/01_mlp/mlp.py"
    starter = mine.read_text()
    mine.write_text(starter + "# my own work\n")
    result = kata(repo, "reset", "1")
    assert result.returncode == 0, result.stderr
    saved = re.search(r"Saved your version of 01_mlp to (\S+)", result.stdout)
    assert saved, result.stdout
    backup = repo / saved.group(1)
    assert (backup / "mlp.py").read_text().endswith("# my own work\n")
    assert {p.name for p in backup.iterdir()} >= {"mlp.py", "train.py", "metrics.py"}
    assert mine.read_text() == starter
    again = kata(repo, "reset", "01_mlp")
    assert again.returncode == 0 and "already holds the starter" in again.stdout


def test_solution_asks_first_and_refuses_without_a_terminal(repo):
    refused = kata(repo, "solution", "01")
    assert refused.returncode == 1
    assert "--yes" in refused.stdout and "+++" not in refused.stdout
    shown = kata(repo, "solution", "01", "--yes")
    assert shown.returncode == 0, shown.stderr
    assert "--- exercises/01_mlp/mlp.py" in shown.stdout
    assert "+++ reference/01_mlp/mlp.py" in shown.stdout


def test_verify_reports_edited_test_files(repo):
    assert kata(repo, "manifest").returncode == 0
    ok = kata(repo, "verify", "01")
    assert ok.returncode == 0 and "ok:" in ok.stdout
    test_file = repo / "exercises/01_mlp/test_mlp.py"
    test_file.write_text(test_file.read_text() + "\n# loosened\n")
    (repo / "exercises/99_broken/test_broken.py").unlink()
    result = kata(repo, "verify")
    assert result.returncode == 1
    assert re.search(r"edited: exercises/01_mlp/test_mlp\.py", result.stdout), result.stdout
    assert re.search(r"missing: exercises/99_broken/test_broken\.py", result.stdout)


@pytest.mark.parametrize("garbage", ["{not json", '["a list"]',
                                     '{"exercises": {"98_fake": {"status": 7, "passed": "x"}}}'])
def test_a_corrupt_state_file_is_rebuilt(repo, garbage):
    (repo / ".kata").mkdir()
    (repo / ".kata/state.json").write_text(garbage)
    result = kata(repo, "list")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"98_fake .*not started", result.stdout)
    assert kata(repo, "hint", "98").returncode == 0
    assert state(repo)["exercises"]["98_fake"]["hints_seen"] == 1


# --- watch -------------------------------------------------------------------------------


class Session:
    """A `kata watch` subprocess whose output is read line by line, with deadlines."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "torchkata", "watch", *args],
                                     cwd=root, env=kata_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.seen)}")

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.mark.parametrize("mode", ["polling", "events"])
def test_watch_reruns_on_save_moves_on_and_quits_on_signal(repo, mode):
    # With events, the poll interval is far longer than the test waits: only a file event
    # can wake the watcher in time.
    args = ["--poll", "--interval", "0.2"] if mode == "polling" else ["--interval", "120"]
    session = Session(repo, "98", *args)
    try:
        session.wait_for(r"^FAIL test_double_is_exact")
        watching = session.wait_for(r"-- watching exercises/98_fake")
        if mode == "events" and "file events" not in watching:
            pytest.skip(f"no file events on this file system: {watching.strip()}")
        time.sleep(0.3)
        shutil.copy2(repo / "reference/98_fake/calc.py", repo / "exercises/98_fake/calc.py")
        session.wait_for(r"calc\.py changed", timeout=20)
        session.wait_for(r"98_fake passes")
        session.wait_for(r"Moving on to 99_broken")
        session.wait_for(r"SyntaxError")
        session.wait_for(r"-- watching exercises/99_broken")
        code = session.stop(signal.SIGINT if mode == "polling" else signal.SIGTERM)
    finally:
        if session.proc.poll() is None:
            session.proc.kill()
    rest = "".join(session.seen) + "".join(iter_queue(session.lines))
    assert code == 0, rest
    assert "kata watch stopped." in rest and "Traceback" not in rest
    assert state(repo)["exercises"]["98_fake"]["status"] == "done"


def iter_queue(q: queue.Queue):
    while True:
        try:
            yield q.get(timeout=1)
        except queue.Empty:
            return


# --- the warm worker, progress marks, integrity ----------------------------------------------


@pytest.mark.skipif(not worker.CAN_FORK, reason="the warm worker needs os.fork")
def test_warm_worker_runs_each_suite_in_a_fresh_child(repo):
    env = {**kata_env(), "TORCHKATA_WORKER": "on", "TORCHKATA_WORKER_IDLE": "60"}
    client = worker.Client(repo)
    try:
        first = subprocess.run([sys.executable, "-m", "torchkata", "run", "98"], cwd=repo,
                               env=env, capture_output=True, text=True, timeout=240)
        assert "starting the warm worker" in first.stdout, first.stdout + first.stderr
        assert "FAIL test_double_is_exact" in first.stdout and "(warm worker)" in first.stdout
        assert client.ping(), "the worker should stay up for the next run"
        # the learner's fix must be seen: nothing of the first run is kept in the worker
        shutil.copy2(repo / "reference/98_fake/calc.py", repo / "exercises/98_fake/calc.py")
        second = subprocess.run([sys.executable, "-m", "torchkata", "run", "98"], cwd=repo,
                                env=env, capture_output=True, text=True, timeout=120)
        assert "starting the warm worker" not in second.stdout, second.stdout
        assert "98_fake passes: 2 passed" in second.stdout, second.stdout + second.stderr
    finally:
        client.stop()
    assert not client.ping()


def test_a_run_ended_under_a_test_says_so_and_is_not_a_pass(repo):
    # pytest-timeout's backstop ends the process (exit 1) under a stuck test
    (repo / "exercises/98_fake/calc.py").write_text(
        "import time\n\n\ndef double(x):\n    time.sleep(60)\n")
    env = {**kata_env(), "PYTEST_ADDOPTS": "-p pytest_timeout --timeout=3"}
    result = subprocess.run([sys.executable, "-m", "torchkata", "run", "98"], cwd=repo, env=env,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "while test_double_is_exact was running" in out and "did not run through" in out, out
    assert "Timeout" in out, "the backstop's own lines are shown"
    assert "Fix the first failure first" not in out, "there is no failure to fix"
    assert state(repo)["exercises"]["98_fake"]["status"] != "done"


def test_a_selection_runs_only_matching_tests_and_is_not_recorded(repo):
    result = kata(repo, "run", "98", "-k", "keeps_its_name")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "FAIL" not in result.stdout
    assert "98_fake" not in json.loads((repo / ".kata/state.json").read_text()
                                       if (repo / ".kata/state.json").exists()
                                       else '{"exercises": {}}')["exercises"]


def test_a_done_exercise_broken_later_is_marked_done_before(repo):
    shutil.copy2(repo / "reference/98_fake/calc.py", repo / "exercises/98_fake/calc.py")
    assert kata(repo, "run", "98").returncode == 0
    (repo / "exercises/98_fake/calc.py").write_text("def double(x):\n    return 0\n")
    assert kata(repo, "run", "98").returncode == 1
    listing = kata(repo, "list").stdout
    assert re.search(r"98_fake .*done before; failing on the last run", listing), listing
    assert "> 98_fake" not in listing, "an exercise done once is not the current one again"


def test_a_tampering_conftest_is_caught_by_verify_and_voids_a_pass(repo):
    (repo / "conftest.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_makereport(item, call):
            report = yield
            report.outcome = "passed"
            return report
        '''))
    result = kata(repo, "run", "98")
    assert "differ from the shipped ones" in result.stdout and "conftest.py" in result.stdout
    assert state(repo)["exercises"]["98_fake"]["status"] != "done"
    verify = kata(repo, "verify")
    assert verify.returncode == 1 and "conftest.py" in verify.stdout, verify.stdout
    (repo / "conftest.py").unlink()
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text()
                                         + "\n# edited\n")
    edited = kata(repo, "verify")
    assert edited.returncode == 1 and "pyproject.toml" in edited.stdout, edited.stdout


def test_reset_handles_a_file_that_is_not_utf8(repo):
    (repo / "exercises/98_fake/calc.py").write_bytes(b"def double(x):\n    return x\xff\n")
    result = kata(repo, "reset", "98")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert (repo / "exercises/98_fake/calc.py").read_text() == FAKE["exercises/98_fake/calc.py"]
