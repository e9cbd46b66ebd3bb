"""torchkata.checks: scripts run as the interpreter runs them or under another name; --help."""

from __future__ import annotations

import sys

import pytest

from torchkata.checks import (
    assert_help_opens_with_summary,
    assert_not_started_under_another_name,
    run_as_main,
)

SCRIPT = '''\
import sys
import helper


def main():
    print("main ran with", sys.argv[1:], helper.VALUE)


if __name__ GUARD "__main__":
    main()
'''


@pytest.fixture
def script(tmp_path):
    def write(guard: str):
        (tmp_path / "helper.py").write_text("VALUE = 42\n")
        path = tmp_path / "tool.py"
        path.write_text(SCRIPT.replace("GUARD", guard))
        return path
    return write


def test_a_guarded_script_runs_main_as_the_program_and_not_under_another_name(script, capsys):
    path = script("==")
    assert run_as_main(path, ["--x"]) == "returned"
    assert capsys.readouterr().out == "main ran with ['--x'] 42\n"
    assert run_as_main(path, ["--x"], run_name="<run_path>") == "returned"
    assert capsys.readouterr().out == ""


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # the "is" guard: that is the point
@pytest.mark.parametrize("guard", ["is", "<=", "!="])
def test_a_wrong_guard_is_seen(script, capsys, guard):
    path = script(guard)
    ran_as_main = run_as_main(path, []) == "returned" and "main ran" in capsys.readouterr().out
    run_under_other = (run_as_main(path, [], run_name="<run_path>") == "returned"
                       and "main ran" in capsys.readouterr().out)
    assert not ran_as_main or run_under_other


def test_the_process_is_left_as_it_was(script, capsys):
    argv, path_before = list(sys.argv), list(sys.path)
    had_helper = "helper" in sys.modules
    run_as_main(script("=="), ["--y"])
    assert sys.argv == argv and sys.path == path_before
    assert ("helper" in sys.modules) == had_helper


TOOL = '''\
"""Count the lines of a file.

Reads the file named on the command line and prints its number of lines.
"""
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("path")
    parser.parse_args(argv)


if __name__ GUARD "__main__":
    main()
'''


def _tool(tmp_path, description: str = "__doc__.splitlines()[0]", guard: str = "=="):
    import importlib.util

    path = tmp_path / "count.py"
    path.write_text(TOOL.replace("DESCRIPTION", description).replace("GUARD", guard))
    if guard != "==":
        return path, None  # importing it would start main() with pytest's own argv
    spec = importlib.util.spec_from_file_location("count", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def test_help_that_opens_with_the_summary_passes(tmp_path):
    assert_help_opens_with_summary(_tool(tmp_path)[1], "count.py")


@pytest.mark.parametrize("description", ["__doc__.splitlines()[-1]", "None", "'Counts.'",
                                         "__doc__.splitlines()[1]"])
def test_help_without_the_summary_fails_and_quotes_it(tmp_path, description):
    with pytest.raises(pytest.fail.Exception, match="Count the lines of a file."):
        assert_help_opens_with_summary(_tool(tmp_path, description)[1], "count.py")


def test_help_that_does_not_exit_0_fails(tmp_path):
    _, module = _tool(tmp_path)
    module.main = lambda argv=None: None  # prints nothing, returns
    with pytest.raises(pytest.fail.Exception, match="exit with status 0"):
        assert_help_opens_with_summary(module, "count.py")


def test_a_guarded_script_does_not_start_under_another_name(tmp_path, capsys):
    assert_not_started_under_another_name(_tool(tmp_path)[0], "count.py")
    assert capsys.readouterr() == ("", "")


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@pytest.mark.parametrize("guard", ["<=", "!=", "is not"])
def test_a_script_that_starts_under_another_name_fails(tmp_path, guard):
    with pytest.raises(pytest.fail.Exception, match="'<run_path>'"):
        assert_not_started_under_another_name(_tool(tmp_path, guard=guard)[0], "count.py")
