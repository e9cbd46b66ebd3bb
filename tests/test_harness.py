"""Unit tests of the harness: targets, isolated loading, broken starters, devices, globals.

Each test builds a miniature repository (exercises/ and reference/) with pytester and runs
pytest on it in-process, the way a learner's `pytest exercises/...` would.
"""

from __future__ import annotations

import textwrap
import time

import pytest

INI = """
[pytest]
addopts = --import-mode=importlib -p no:cacheprovider
"""

TEST_DEMO = '''
import sys
from torchkata import under_test

main = under_test("main")

def test_value_is_fixed():
    assert main.value() == "fixed"

def test_sibling_modules_do_not_leak():
    main.value()
    assert "helper" not in sys.modules and "main" not in sys.modules
'''


def write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def mini(pytester):
    """exercises/01_demo (buggy), reference/01_demo (fixed), exercises/02_other (fixed)."""
    pytester.makeini(INI)
    main = "from helper import VALUE\n\ndef value():\n    return VALUE\n"
    write(pytester.path, {
        "exercises/01_demo/helper.py": 'VALUE = "buggy"\n',
        "exercises/01_demo/main.py": main,
        "exercises/01_demo/test_demo.py": TEST_DEMO,
        "reference/01_demo/helper.py": 'VALUE = "fixed"\n',
        "reference/01_demo/main.py": main,
        "exercises/02_other/helper.py": 'VALUE = "fixed"\n',
        "exercises/02_other/main.py": main,
        "exercises/02_other/test_other.py": TEST_DEMO,
    })
    return pytester


def test_student_is_the_default_target(mini):
    result = mini.runpytest("exercises/01_demo")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*target=student*"])


def test_reference_target_loads_the_reference(mini):
    result = mini.runpytest("exercises/01_demo", "--target=reference")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*target=reference*"])


def test_path_target_loads_a_copy(mini):
    main = (mini.path / "reference/01_demo/main.py").read_text()
    write(mini.path, {"copy/01_demo/helper.py": 'VALUE = "fixed"\n', "copy/01_demo/main.py": main})
    assert mini.runpytest("exercises/01_demo", "--target=copy").ret == 0
    assert mini.runpytest("exercises/01_demo", "--target=copy/01_demo").ret == 0


def test_target_from_environment(mini, monkeypatch):
    monkeypatch.setenv("TORCHKATA_TARGET", "reference")
    mini.runpytest("exercises/01_demo").assert_outcomes(passed=2)


def test_exercises_with_same_module_names_are_isolated(mini):
    """Both exercises have helper.py and main.py; each test sees its own folder's."""
    mini.runpytest("exercises").assert_outcomes(passed=3, failed=1)
    result = mini.runpytest("exercises", "--target=reference", "-k", "not other")
    result.assert_outcomes(passed=2)


def test_broken_starter_fails_each_test_briefly_and_others_still_run(mini):
    write(mini.path, {"exercises/01_demo/helper.py": 'VALUE = "buggy"\nprint(undefined_name)\n'})
    result = mini.runpytest("exercises")
    result.assert_outcomes(passed=2, failed=2)  # 02_other still runs and passes
    result.stdout.fnmatch_lines(["*exercises/01_demo/helper.py:2: NameError*undefined_name*"])
    assert "Traceback" not in result.stdout.str()
    assert "During handling" not in result.stdout.str()
    assert "error" not in result.stdout.lines[-1]  # no collection error


def test_syntax_error_names_file_and_line(mini):
    write(mini.path, {"exercises/01_demo/main.py": "def value(:\n    return 1\n"})
    result = mini.runpytest("exercises/01_demo")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*exercises/01_demo/main.py:1: SyntaxError*"])


def test_missing_name_is_reported_as_such(mini):
    write(mini.path, {"exercises/01_demo/main.py": "def other():\n    return 1\n"})
    result = mini.runpytest("exercises/01_demo", "-k", "value_is_fixed")
    result.stdout.fnmatch_lines(["*main.py has no `value`*"])


def test_device_cuda_without_cuda_fails_loudly(mini):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = mini.runpytest("exercises/01_demo", "--device=cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--device cuda*torch.cuda.is_available() is False*"])


def test_device_fixture_and_gpu_marker(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_dev='''
        import pytest

        def test_cpu(device):
            assert device.type == "cpu"

        @pytest.mark.gpu
        def test_needs_gpu(device):
            assert device.type == "cuda"
    ''')
    result = pytester.runpytest("--device=cpu")
    result.assert_outcomes(passed=1, skipped=1)


def test_each_test_starts_seeded_and_leaves_globals_restored(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_globals='''
        import torch

        first = []

        def test_changes_globals():
            first.append(torch.rand(3))
            torch.set_default_dtype(torch.float64)
            torch.set_grad_enabled(False)
            torch.manual_seed(123)

        def test_sees_a_clean_slate():
            assert torch.get_default_dtype() == torch.float32
            assert torch.is_grad_enabled()
            assert torch.equal(torch.rand(3), first[0])  # seeded the same way again
    ''')
    pytester.runpytest().assert_outcomes(passed=2)


# --- order, dependencies, threads, settings ----------------------------------------------

TEST_DEPS = '''
import pytest
from torchkata import under_test

main = under_test("main")
ran = []

@pytest.mark.trains
def test_trains_last():
    assert {"cheap", "root"} <= set(ran), f"cheap tests run first, got {ran}"

@pytest.mark.requires("test_root_value_is_fixed")
def test_dependent_would_blame_the_wrong_thing():
    ran.append("dependent")
    assert False, "a misleading diagnosis"

def test_root_value_is_fixed():
    ran.append("root")
    assert main.value() == "fixed", "the root cause"

def test_cheap():
    ran.append("cheap")
'''


def test_a_dependent_of_a_failing_root_reports_the_dependency_not_its_diagnosis(mini):
    write(mini.path, {"exercises/01_demo/test_deps.py": TEST_DEPS})
    result = mini.runpytest("exercises/01_demo/test_deps.py", "-rs", "-v")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    out = result.stdout.str()
    assert "not checked: depends on test_root_value_is_fixed, which fails" in out
    assert "a misleading diagnosis" not in out
    order = [line.split("::")[1].split()[0] for line in result.stdout.lines
             if "test_deps.py::" in line and ("PASSED" in line or "FAILED" in line
                                              or "SKIPPED" in line)]
    assert order.index("test_root_value_is_fixed") < order.index(
        "test_dependent_would_blame_the_wrong_thing"), order
    assert order[-1] == "test_trains_last", order


def test_a_dependent_of_a_passing_root_runs(mini):
    write(mini.path, {"exercises/01_demo/test_deps.py": TEST_DEPS})
    result = mini.runpytest("exercises/01_demo/test_deps.py", "--target=reference")
    result.assert_outcomes(passed=3, failed=1)  # the dependent's own assertion speaks now
    assert "a misleading diagnosis" in result.stdout.str()


def test_requires_must_name_a_test_of_the_same_file(mini):
    write(mini.path, {"exercises/01_demo/test_typo.py": '''
        import pytest

        @pytest.mark.requires("test_does_not_exist")
        def test_x():
            pass
    '''})
    result = mini.runpytest("exercises/01_demo/test_typo.py")
    assert result.ret != 0
    assert "names 'test_does_not_exist', which is not a test" in result.stderr.str() + \
        result.stdout.str()


def test_the_timeout_backstop_runs_on_one_thread_and_still_ends_a_stuck_test(pytester):
    pytester.makepyfile(test_stuck="""
import threading
import time

import pytest


@pytest.mark.parametrize("n", range(5))
def test_threads(n):
    names = [t.name for t in threading.enumerate()]
    assert names.count("torchkata watchdog") == 1, names
    assert not [name for name in names if name.startswith("pytest_timeout")], names


def test_zz_stuck():
    time.sleep(60)
""")
    start = time.monotonic()
    result = pytester.runpytest_subprocess("--timeout=3", "-o", "timeout_method=thread",
                                           "-p", "no:cacheprovider", "-v")
    out = result.stdout.str() + result.stderr.str()
    assert " passed" not in out, "the run ended normally: the stuck test was not stopped"
    assert result.ret != 0 and "Timeout" in out and "test_zz_stuck" in out, out[-3000:]
    assert "time.sleep(60)" in out, "the backstop dumps the stuck stack"
    assert out.count("PASSED") == 5, out[-3000:]
    assert time.monotonic() - start < 45


def test_threads_option_sets_torchs_thread_count(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_threads='''
        import os
        import torch

        def test_threads():
            assert torch.get_num_threads() == 2
            assert os.environ["OMP_NUM_THREADS"] == "2"
    ''')
    pytester.runpytest("--threads=2").assert_outcomes(passed=1)


def test_every_process_wide_torch_setting_is_restored(pytester):
    pytester.makeini(INI)
    pytester.makepyfile(test_settings='''
        import os
        import warnings
        import torch

        def test_changes_everything():
            torch.set_default_device("meta")
            torch.set_anomaly_enabled(True)
            torch.set_float32_matmul_precision("medium")
            torch.use_deterministic_algorithms(True)
            torch.set_num_threads(1 + torch.get_num_threads())
            warnings.simplefilter("error")
            os.environ["KATA_LEAK"] = "1"

        def test_sees_the_defaults():
            assert torch.empty(1).device.type == "cpu"
            assert not torch.is_anomaly_enabled()
            assert torch.get_float32_matmul_precision() == "highest"
            assert not torch.are_deterministic_algorithms_enabled()
            assert "KATA_LEAK" not in os.environ
            warnings.warn("only a warning")
    ''')
    pytester.runpytest().assert_outcomes(passed=2)
