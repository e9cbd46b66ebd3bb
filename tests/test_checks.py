"""torchkata.checks.run_as_main: a script run as the interpreter runs it, or under another name."""

from __future__ import annotations

import sys

import pytest

from torchkata.checks import run_as_main

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
