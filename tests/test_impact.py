"""Test-impact selection (torchkata.impact): what a change can reach, and what a run records."""

from __future__ import annotations

import json
import textwrap

from torchkata import impact

CODE = textwrap.dedent('''\
    import functools

    SCALE = 2


    @functools.lru_cache
    def double(x,
               factor=SCALE):
        y = x * factor
        return y


    class Model:
        size = 3

        def forward(self, x):
            shift = lambda v: v + 1
            return shift(x)
''')
TESTS = {"test_m.py::test_double": ["m.py:6"], "test_m.py::test_forward": ["m.py:16", "m.py:17"],
         "test_m.py::test_script": [impact.EVERYTHING], "test_m.py::test_nothing": []}


def selected(old: str, new: str):
    return impact.select(TESTS, "m.py", CODE, CODE.replace(old, new, 1))


def test_a_change_inside_a_body_selects_the_callers_and_the_process_starters():
    assert selected("y = x * factor", "y = x + factor") == [
        "test_m.py::test_double", "test_m.py::test_script"]
    assert selected("return shift(x)", "return shift(-x)") == [
        "test_m.py::test_forward", "test_m.py::test_script"]
    assert selected("v + 1", "v - 1") == ["test_m.py::test_forward", "test_m.py::test_script"]


def test_an_inserted_line_inside_a_body_counts_for_that_body():
    assert selected("    return y\n", "    print(y)\n    return y\n") == [
        "test_m.py::test_double", "test_m.py::test_script"]


def test_a_change_outside_every_body_selects_every_test():
    for old, new in [("SCALE = 2", "SCALE = 3"), ("factor=SCALE", "factor=1"),
                     ("size = 3", "size = 4"), ("@functools.lru_cache", "@functools.cache"),
                     ("def forward(self, x)", "def forward(self, x, y=0)")]:
        assert selected(old, new) is None, old


def test_a_change_across_two_functions_selects_every_test():
    new = CODE.replace("return y", "return -y").replace("return shift(x)", "return x")
    assert impact.select(TESTS, "m.py", CODE, new) == [
        "test_m.py::test_double", "test_m.py::test_forward", "test_m.py::test_script"]
    assert impact.select(TESTS, "m.py", CODE, CODE.replace("SCALE = 2\n", "")) is None


RECORDED = {
    "exercises/01_demo/lib.py": '''\
        def used(): return 1
        def by_fixture(): return 2
        def by_copy(): return 3
        def never(): return 4
        def built(): return object()
    ''',
    "exercises/01_demo/test_demo.py": '''
        import shutil, subprocess, sys
        import pytest
        from torchkata import under_test
        from torchkata.checks import shared, run_script

        lib = under_test("lib")

        @pytest.fixture(scope="module")
        def prepared():
            return lib.by_fixture()

        def test_calls_used():
            assert lib.used() == 1

        def test_first_user_of_the_fixture(prepared):
            assert prepared == 2

        def test_second_user_of_the_fixture(prepared):
            assert prepared == 2

        def test_first_user_of_a_shared_object():
            assert shared(lib.built) is not None

        def test_second_user_of_a_shared_object():
            assert shared(lib.built) is not None

        def test_starts_a_process():
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        def test_runs_a_copy(tmp_path):
            shutil.copy(lib.resolve().__file__, tmp_path / "lib.py")
            (tmp_path / "script.py").write_text(
                "from lib import by_copy\\ndef main(argv):\\n    by_copy()\\n")
            assert run_script(tmp_path / "script.py", [], tmp_path).returncode == 0
    ''',
}


def test_a_recording_run_credits_fixtures_shared_objects_copies_and_processes(pytester):
    pytester.makeini("[pytest]\naddopts = --import-mode=importlib -p no:cacheprovider\n")
    for name, text in RECORDED.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    out = pytester.path / "impact.json"
    pytester.runpytest("exercises/01_demo", f"--record-impact={out}").assert_outcomes(passed=7)
    calls = json.loads(out.read_text())["tests"]
    key = {name: f"lib.py:{line}" for line, name in enumerate(
        ["used", "by_fixture", "by_copy", "never", "built"], start=1)}
    assert key["used"] in calls["test_demo.py::test_calls_used"]
    for test in ("test_first_user_of_the_fixture", "test_second_user_of_the_fixture"):
        assert key["by_fixture"] in calls[f"test_demo.py::{test}"], test
    for test in ("test_first_user_of_a_shared_object", "test_second_user_of_a_shared_object"):
        assert key["built"] in calls[f"test_demo.py::{test}"], test
    assert calls["test_demo.py::test_starts_a_process"] == [impact.EVERYTHING]
    assert key["by_copy"] in calls["test_demo.py::test_runs_a_copy"]
    assert not any(key["never"] in c for c in calls.values())
    assert key["used"] not in calls["test_demo.py::test_first_user_of_the_fixture"]
