"""kata: the learner's runner. Progress, concise test runs, a watch mode, hints, resets.

``kata`` (or ``python -m torchkata``) works in any copy of the repository: it walks up from
the current directory to the folder that holds ``exercises/`` and ``reference/``. Progress
and backups live in ``.kata/`` there (ignored by git). It never imports torch itself: each
run is ``python -m pytest exercises/NN_topic`` in a subprocess, whose JUnit XML gives the
outcome, while this module, loaded into that pytest as a plugin (``-p torchkata.cli``),
streams each failure as it happens so that the first one shows at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from torchkata import paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATE_DIR = ".kata"
STATE_FILE = "state.json"
MANIFEST = "exercises/MANIFEST.sha256"
ENV_EVENTS = "TORCHKATA_KATA_EVENTS"
MAX_MESSAGE_LINES = 15
STATUSES = ("failing", "edited", "done")


class KataError(Exception):
    """A problem to tell the learner in one message (exit status 2), not a crash."""


# --- the repository and its exercises -----------------------------------------------------


def find_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` holding exercises/ and reference/."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "exercises").is_dir() and (folder / "reference").is_dir():
            return folder
    return paths.repo_root()


@dataclass
class Exercise:
    name: str  # "01_mlp"
    folder: Path
    reference: Path
    title: str = ""
    hints: list[str] = field(default_factory=list)

    @property
    def number(self) -> int:
        return int(self.name[:2])

    @property
    def short(self) -> str:
        return self.name[:2]


def read_meta(folder: Path) -> dict:
    """exercise.toml, or {} when it is missing or broken (an exercise being written)."""
    try:
        meta = tomllib.loads((folder / "exercise.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def exercises(root: Path) -> list[Exercise]:
    """Every exercise folder of ``root``, in curriculum order (found anew on each call)."""
    found = []
    for name in paths.exercise_names(root):
        meta = read_meta(root / "exercises" / name)
        hints = meta.get("hints", [])
        found.append(Exercise(
            name=name,
            folder=root / "exercises" / name,
            reference=root / "reference" / name,
            title=str(meta.get("title", "")),
            hints=[str(h) for h in hints] if isinstance(hints, list) else [],
        ))
    if not found:
        raise KataError(f"no exercises found in {root / 'exercises'}")
    return found


def pick(all_exercises: list[Exercise], spec: str) -> Exercise:
    """The exercise named by ``spec``: ``1``, ``01``, ``01_mlp``, ``mlp`` or its folder path."""
    name = Path(spec.strip()).name
    for ex in all_exercises:
        if name in (ex.name, ex.name[3:]) or (name.isdigit() and int(name) == ex.number):
            return ex
    choices = ", ".join(ex.name for ex in all_exercises)
    raise KataError(f"no exercise {spec!r}; choose one of: {choices}")


# --- progress state: .kata/state.json ---------------------------------------------------


def state_path(root: Path) -> Path:
    return root / STATE_DIR / STATE_FILE


def fresh_state() -> dict:
    return {"version": 1, "exercises": {}}


def load_state(root: Path) -> dict:
    """The learner's progress; a missing or corrupt file gives a fresh state, never a crash."""
    path = state_path(root)
    if not path.exists():
        return fresh_state()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("exercises"), dict):
            raise ValueError("not a kata state")
    except (OSError, ValueError, UnicodeDecodeError):
        kept = path.with_name(f"{STATE_FILE}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            path.replace(kept)
            note = f" (the old file is kept as {kept.relative_to(root)})"
        except OSError:
            note = ""
        print(f"kata: {path.relative_to(root)} was unreadable; starting a fresh one{note}.",
              file=sys.stderr)
        return fresh_state()
    state = fresh_state()
    for name, entry in raw["exercises"].items():
        if isinstance(name, str) and isinstance(entry, dict):
            state["exercises"][name] = clean_entry(entry)
    return state


def clean_entry(entry: dict) -> dict:
    """Keep only the well-formed fields of one exercise's record."""
    clean: dict = {}
    if entry.get("status") in STATUSES:
        clean["status"] = entry["status"]
    for key in ("passed", "total", "hints_seen"):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            clean[key] = value
    failing = entry.get("failing")
    if isinstance(failing, list) and all(isinstance(t, str) for t in failing):
        clean["failing"] = failing
    if isinstance(entry.get("last_run"), str):
        clean["last_run"] = entry["last_run"]
    return clean


def save_state(root: Path, state: dict) -> None:
    folder = root / STATE_DIR
    folder.mkdir(exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():  # keeps progress out of git even in a copy without .gitignore
        ignore.write_text("*\n", encoding="utf-8")
    tmp = folder / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(state_path(root))


def entry_of(state: dict, ex: Exercise) -> dict:
    return state["exercises"].setdefault(ex.name, {})


def status_of(state: dict, ex: Exercise) -> str:
    return state["exercises"].get(ex.name, {}).get("status", "not started")


def current(all_exercises: list[Exercise], state: dict) -> Exercise | None:
    """The first exercise, in curriculum order, that is not done."""
    for ex in all_exercises:
        if status_of(state, ex) != "done":
            return ex
    return None


def next_after(all_exercises: list[Exercise], state: dict, ex: Exercise) -> Exercise | None:
    """The next exercise that is not done: after ``ex`` first, then from the start."""
    later = [e for e in all_exercises if e.name > ex.name]
    earlier = [e for e in all_exercises if e.name < ex.name]
    for e in later + earlier:
        if status_of(state, e) != "done":
            return e
    return None


# --- output -----------------------------------------------------------------------------


class Style:
    """ANSI colour only when stdout is a terminal and NO_COLOR is not set."""

    CODES = {"red": 31, "green": 32, "yellow": 33, "bold": 1, "dim": 2}

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = (sys.stdout.isatty() and not os.environ.get("NO_COLOR")
                       and os.environ.get("TERM") != "dumb")
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(str(self.CODES[s]) for s in styles)
        return f"\033[{codes}m{text}\033[0m"


def say(text: str = "") -> None:
    print(text, flush=True)


def wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, width=92, initial_indent=indent, subsequent_indent=indent)


def rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --- the manifest of shipped test files ---------------------------------------------------


def suite_files(root: Path) -> list[str]:
    """Test files of every exercise, relative to exercises/: test_*.py and conftest.py."""
    found = []
    base = root / "exercises"
    if (base / "conftest.py").is_file():
        found.append("conftest.py")
    for name in paths.exercise_names(root):
        folder = base / name
        files = [*folder.glob("test_*.py"), *folder.glob("conftest.py")]
        found += [f"{name}/{p.name}" for p in files if p.is_file()]
    return sorted(found)


def file_hash(path: Path) -> str:
    """sha256 of the file with line endings normalised (a Windows checkout is not an edit)."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def compute_manifest(root: Path) -> dict[str, str]:
    return {f: file_hash(root / "exercises" / f) for f in suite_files(root)}


def format_manifest(manifest: dict[str, str]) -> str:
    """``sha256sum`` format, so ``cd exercises && sha256sum -c MANIFEST.sha256`` works too."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(manifest.items()))


def read_manifest(root: Path) -> dict[str, str] | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    manifest = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            manifest[name.lstrip("*")] = digest
    return manifest


def suite_problems(root: Path, manifest: dict[str, str],
                       names: list[str] | None = None) -> dict[str, str]:
    """``exercises/``-relative test file -> what is wrong with it (edited, missing, unknown)."""
    actual = compute_manifest(root)
    wanted = set(manifest) | set(actual)
    if names is not None:
        wanted = {f for f in wanted if f.split("/", 1)[0] in names}
    problems = {}
    for f in sorted(wanted):
        if f not in actual:
            problems[f] = "missing"
        elif f not in manifest:
            problems[f] = "not in the manifest"
        elif actual[f] != manifest[f]:
            problems[f] = "edited"
    return problems


# --- running a suite ----------------------------------------------------------------------


@dataclass
class RunResult:
    returncode: int
    failed: set[str]
    passed: set[str]
    events: list[dict]
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.passed) and not self.failed


def build_pytest_command(ex: Exercise, root: Path, junit: Path, device: str | None,
                         target: str | None, verbose: bool) -> list[str]:
    """``python -m pytest exercises/NN_topic ...``, run with the repository as cwd."""
    cmd = [sys.executable, "-m", "pytest", rel(root, ex.folder), "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if device:
        cmd.append(f"--device={device}")
    if target:
        cmd.append(f"--target={target}")
    cmd += ["-v"] if verbose else ["-p", "torchkata.cli", "-q", "--no-header"]
    return cmd


def run_suite(root: Path, ex: Exercise, device: str | None = None, target: str | None = None,
              verbose: bool = False, on_event=None) -> RunResult:
    """Run the exercise's suite in a subprocess; call ``on_event`` for each failure at once."""
    from torchkata.selfcheck import outcomes

    with tempfile.TemporaryDirectory(prefix="kata-") as tmp:
        junit, events, out = Path(tmp) / "junit.xml", Path(tmp) / "events.jsonl", Path(tmp) / "out"
        cmd = build_pytest_command(ex, root, junit, device, target, verbose)
        env = {**os.environ, ENV_EVENTS: str(events)}
        seen: list[dict] = []
        with out.open("w") as sink:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=None if verbose else sink,
                                    stderr=None if verbose else subprocess.STDOUT)
            try:
                offset = 0
                while True:
                    returncode = proc.poll()
                    offset = _read_events(events, offset, seen, on_event)
                    if returncode is not None:
                        break
                    time.sleep(0.05)
            except BaseException:
                _stop(proc)
                raise
        failed, passed = outcomes(junit)
        return RunResult(returncode, failed, passed, seen, out.read_text(errors="replace"))


def _read_events(path: Path, offset: int, seen: list[dict], on_event) -> int:
    """Read the complete JSON lines the pytest plugin appended since ``offset``."""
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
        seen.append(event)
        if on_event:
            on_event(event)
    return offset + end


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def effective_target(target: str | None) -> str:
    return target or os.environ.get("TORCHKATA_TARGET") or "student"


def record(root: Path, ex: Exercise, result: RunResult, tests_intact: bool) -> str:
    """Store the outcome of a run of the learner's code; return the new status."""
    state = load_state(root)
    entry = entry_of(state, ex)
    if result.ok:
        status = "done" if tests_intact else "edited"
    else:
        status = "failing"
    entry.update(status=status, passed=len(result.passed),
                 total=len(result.passed) + len(result.failed), failing=sorted(result.failed),
                 last_run=time.strftime("%Y-%m-%dT%H:%M:%S"))
    save_state(root, state)
    return status


class FailurePrinter:
    """Prints each failing property and its message as it arrives; a repeated message once."""

    def __init__(self, style: Style) -> None:
        self.style = style
        self.messages: dict[str, str] = {}

    def __call__(self, event: dict) -> None:
        name, message = event.get("name", "?"), event.get("message", "").rstrip()
        label = self.style("FAIL", "red", "bold")
        if message in self.messages:
            say(f"{label} {self.style(name, 'bold')}: same failure as {self.messages[message]}")
            return
        self.messages[message] = name
        say(f"{label} {self.style(name, 'bold')}")
        lines = message.splitlines() or ["(no message)"]
        for line in lines[:MAX_MESSAGE_LINES]:
            say(f"     {line}")
        if len(lines) > MAX_MESSAGE_LINES:
            more = len(lines) - MAX_MESSAGE_LINES
            say(self.style(f"     ... {more} more lines: add -v for pytest's full output", "dim"))


def run_and_report(root: Path, ex: Exercise, style: Style, device: str | None = None,
                   target: str | None = None, verbose: bool = False) -> RunResult:
    """One run with its concise report and, for the learner's code, the progress update."""
    student = effective_target(target) == "student"
    title = f": {ex.title}" if ex.title else ""
    say(style(f"== {ex.name}{title}", "bold"))
    shown = "" if student else f" (target: {effective_target(target)})"
    say(style(f"   running pytest {rel(root, ex.folder)}{shown} ...", "dim"))
    result = run_suite(root, ex, device, target, verbose,
                       on_event=None if verbose else FailurePrinter(style))
    problems = {}
    manifest = read_manifest(root)
    if manifest is not None:
        problems = {f: p for f, p in suite_problems(root, manifest, [ex.name]).items()
                    if p != "not in the manifest"}
    if student and result.returncode in (0, 1):
        record(root, ex, result, tests_intact=not problems)
    summarise(root, ex, result, style, problems, verbose)
    return result


def summarise(root: Path, ex: Exercise, result: RunResult, style: Style,
              problems: dict[str, str], verbose: bool) -> None:
    total = len(result.passed) + len(result.failed)
    if result.returncode not in (0, 1):
        if not verbose and not result.events:
            say("\n".join(result.output.strip().splitlines()[-30:]))
        more = "" if verbose else f" Full output: kata run {ex.short} -v"
        say(style(f"pytest exited {result.returncode}: the tests of {ex.name} did not run "
                  f"through.", "red") + more)
        return
    if problems:
        files = ", ".join(f"exercises/{f} ({p})" for f, p in problems.items())
        say(style(f"Warning: test files differ from the shipped ones: {files}. "
                  f"A pass does not count until they are restored (kata verify).", "yellow"))
    if result.ok:
        say(style(f"ok {ex.name} passes: {total} of {total} tests.", "green", "bold"))
        return
    say(style(f"{ex.name}: {len(result.passed)} of {total} tests pass.", "bold")
        + f" Fix the first failure first. Stuck? kata hint {ex.short}"
        + ("" if verbose else f"   Full output: kata run {ex.short} -v"))


# --- commands -----------------------------------------------------------------------------


def cmd_list(args, root: Path, style: Style) -> int:
    all_exercises = exercises(root)
    state = load_state(root)
    done = sum(status_of(state, ex) == "done" for ex in all_exercises)
    total = len(all_exercises)
    width = 40
    filled = round(width * done / total)
    say(style(f"torchkata: {done} of {total} exercises done", "bold"))
    say(f"[{'#' * filled}{'-' * (width - filled)}] {100 * done // total}%")
    say()
    now = current(all_exercises, state)
    name_width = max(len(ex.name) for ex in all_exercises)
    title_width = min(44, max(len(ex.title) for ex in all_exercises))
    for ex in all_exercises:
        marker = ">" if now is not None and ex.name == now.name else " "
        title = ex.title
        if len(title) > title_width:
            title = title[: title_width - 1].rstrip(" ,:;") + "…"
        line = f" {marker} {ex.name:<{name_width}}  {title:<{title_width}}  "
        say((style(line, "bold") if marker == ">" else line) + describe(state, ex, style))
    say()
    if now is None:
        say(style("Every exercise passes. Well done!", "green", "bold"))
    else:
        say(f"Next: kata run {now.short}   (kata watch re-runs it on every save; "
            f"kata hint {now.short} if stuck)")
    return 0


def describe(state: dict, ex: Exercise, style: Style) -> str:
    entry = state["exercises"].get(ex.name, {})
    status = entry.get("status", "not started")
    if status == "done":
        return style("done", "green")
    if status == "edited":
        return style("passes, but with edited tests (kata verify)", "yellow")
    if status == "failing":
        passed, total = entry.get("passed", 0), entry.get("total", 0)
        counts = f": {passed} of {total} tests pass" if total else ""
        return style(f"failing{counts}", "red")
    return style("not started", "dim")


def chosen(root: Path, spec: str | None, state: dict | None = None) -> Exercise | None:
    all_exercises = exercises(root)
    if spec:
        return pick(all_exercises, spec)
    return current(all_exercises, state if state is not None else load_state(root))


def cmd_run(args, root: Path, style: Style) -> int:
    ex = chosen(root, args.exercise)
    if ex is None:
        say(style("Every exercise passes. `kata run N` runs one again.", "green"))
        return 0
    result = run_and_report(root, ex, style, args.device, args.target, args.verbose)
    if result.ok and is_done(root, ex, args.target):
        say_next(root, ex, style)
    return 0 if result.ok else result.returncode or 1


def is_done(root: Path, ex: Exercise, target: str | None) -> bool:
    """Whether the learner's code of ``ex`` passed its shipped tests on its last run."""
    return effective_target(target) == "student" and status_of(load_state(root), ex) == "done"


def say_next(root: Path, ex: Exercise, style: Style) -> None:
    nxt = next_after(exercises(root), load_state(root), ex)
    if nxt is None:
        say(style("Every exercise passes. Well done!", "green", "bold"))
    else:
        title = f" ({nxt.title})" if nxt.title else ""
        say(f"Next: {nxt.name}{title}: read exercises/{nxt.name}/README.md, "
            f"then kata run {nxt.short}")


def cmd_hint(args, root: Path, style: Style) -> int:
    state = load_state(root)
    ex = chosen(root, args.exercise, state)
    if ex is None:
        say("Every exercise passes: no hints needed. `kata hint N` shows one exercise's hints.")
        return 0
    hints = ex.hints
    if not hints:
        say(f"{ex.name} has no hints; its README.md explains what to look for.")
        return 0
    entry = entry_of(state, ex)
    seen = min(entry.get("hints_seen", 0), len(hints))
    if seen == len(hints):
        say(style(f"All {len(hints)} hints for {ex.name}:", "bold"))
        for i, hint in enumerate(hints, 1):
            say(wrap(f"{i}. {hint}"))
        say(f"That is every hint. Reread exercises/{ex.name}/README.md, or compare with the "
            f"reference: kata solution {ex.short}")
        return 0
    say(style(f"Hint {seen + 1} of {len(hints)} for {ex.name}:", "bold"))
    say(wrap(hints[seen]))
    entry["hints_seen"] = seen + 1
    save_state(root, state)
    if seen + 1 < len(hints):
        say(style(f"(kata hint {ex.short} again for the next one)", "dim"))
    return 0


def starter_texts(ex: Exercise) -> dict[str, str]:
    """The starter, rebuilt from the reference and its bug catalog (no git needed)."""
    from torchkata import catalog

    bugs = ex.reference / "bugs.toml"
    if not bugs.is_file():
        raise KataError(f"cannot rebuild the starter of {ex.name}: reference/{ex.name}/bugs.toml "
                        f"is missing")
    try:
        return catalog.starter_texts(ex.reference, catalog.load(bugs))
    except (OSError, ValueError) as exc:
        raise KataError(f"cannot rebuild the starter of {ex.name}: {exc}") from None


def backup(root: Path, ex: Exercise, files: list[str]) -> Path:
    """Copy the learner's code files to .kata/backups/NN_topic/<time>/; return that folder."""
    base = root / STATE_DIR / "backups" / ex.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = base / stamp, 1
    while dest.exists():
        dest, n = base / f"{stamp}-{n}", n + 1
    dest.mkdir(parents=True)
    for name in files:
        (dest / name).write_bytes((ex.folder / name).read_bytes())
    return dest


def cmd_reset(args, root: Path, style: Style) -> int:
    from torchkata import catalog

    ex = pick(exercises(root), args.exercise)
    starter = starter_texts(ex)
    mine = catalog.code_files(ex.folder)
    changed = sorted(name for name in starter if name not in mine
                     or (ex.folder / name).read_text(encoding="utf-8") != starter[name])
    state = load_state(root)
    entry = entry_of(state, ex)
    for key in ("status", "passed", "total", "failing", "last_run"):
        entry.pop(key, None)
    if not changed:
        save_state(root, state)
        say(f"{ex.name} already holds the starter code; nothing to reset.")
        return 0
    saved = backup(root, ex, mine)
    for name in changed:
        (ex.folder / name).write_text(starter[name], encoding="utf-8")
    save_state(root, state)
    say(f"Saved your version of {ex.name} to {rel(root, saved)}")
    say(f"Restored the starter: {', '.join(f'exercises/{ex.name}/{n}' for n in changed)}")
    return 0


def cmd_solution(args, root: Path, style: Style) -> int:
    from torchkata import catalog

    state = load_state(root)
    ex = pick(exercises(root), args.exercise)
    if not ex.reference.is_dir():
        raise KataError(f"reference/{ex.name} is missing: no solution to show")
    if status_of(state, ex) != "done" and not args.yes:
        if not sys.stdin.isatty():
            say(f"kata solution {ex.short} shows the reference solution of {ex.name}, which is "
                f"not done yet. Run it in a terminal to confirm, or pass --yes.")
            return 1
        try:
            answer = input(f"{ex.name} is not done yet. Show the reference solution anyway? "
                           f"[y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            say(f"Not shown. `kata hint {ex.short}` gives a nudge instead.")
            return 0
    import difflib

    names = sorted(set(catalog.code_files(ex.folder)) | set(catalog.code_files(ex.reference)))
    different = False
    for name in names:
        mine = _lines(ex.folder / name)
        theirs = _lines(ex.reference / name)
        for line in difflib.unified_diff(mine, theirs, f"exercises/{ex.name}/{name}",
                                         f"reference/{ex.name}/{name}"):
            different = True
            line = line.rstrip("\n")
            colour = ("red",) if line.startswith("-") else ("green",) if line.startswith("+") \
                else ("dim",) if line.startswith("@@") else ()
            say(style(line, *colour))
    if different:
        say(style("(- lines: your code; + lines: the reference)", "dim"))
    else:
        say(f"Your code in exercises/{ex.name} is identical to the reference.")
    return 0


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def cmd_verify(args, root: Path, style: Style) -> int:
    manifest = read_manifest(root)
    if manifest is None:
        raise KataError(f"{MANIFEST} is missing: there is nothing to compare the tests with")
    all_exercises = exercises(root)
    names = [pick(all_exercises, args.exercise).name] if args.exercise else None
    problems = suite_problems(root, manifest, names)
    checked = [f for f in set(manifest) | set(suite_files(root))
               if names is None or f.split("/", 1)[0] in names]
    if not problems:
        say(style(f"ok: all {len(checked)} test files are the shipped ones.", "green"))
        return 0
    for f, problem in problems.items():
        say(style(f"{problem:>20}: exercises/{f}", "red"))
    say("A green run means what it says only with the shipped tests. Restore these files "
        "(git checkout -- <file>, or take them from a fresh copy of the repository).")
    if any(p == "not in the manifest" for p in problems.values()):
        say(style("Maintainers: after changing tests on purpose, regenerate the manifest with "
                  "`python -m torchkata manifest`.", "dim"))
    return 1


def cmd_manifest(args, root: Path, style: Style) -> int:
    manifest = compute_manifest(root)
    (root / MANIFEST).write_text(format_manifest(manifest), encoding="utf-8")
    say(f"wrote {MANIFEST} ({len(manifest)} test files)")
    return 0


# --- watch mode ---------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every .py file directly in ``folder``."""
    result = {}
    for path in folder.glob("*.py"):
        try:
            st = path.stat()
        except OSError:
            continue
        result[path.name] = (st.st_mtime_ns, st.st_size)
    return result


class Watcher:
    """Waits for a save in one folder: woken by watchdog's file events when they arrive,
    and checking (mtime, size) every ``interval`` seconds in any case, for file systems
    (network drives, some containers) whose events never come."""

    WATCHED = {"modified", "created", "moved", "deleted", "closed"}

    def __init__(self, interval: float, use_events: bool) -> None:
        self.interval = interval
        self.wake = threading.Event()
        self.folder: Path | None = None
        self.before: dict = {}
        self.observer = None
        self.use_events = use_events
        self.events_note = "polling only (--poll)" if not use_events else ""

    def watch(self, folder: Path) -> None:
        """Watch ``folder`` from now on; what it holds now is the state to compare with."""
        if folder != self.folder and self.use_events:
            self._observe(folder)
        self.folder = folder
        self.before = snapshot(folder)

    def _observe(self, folder: Path) -> None:
        try:
            if self.observer is None:
                from watchdog.observers import Observer

                self.observer = Observer()
                self.observer.daemon = True
                self.observer.start()
            self.observer.unschedule_all()
            self.observer.schedule(_Handler(self), str(folder), recursive=False)
            self.events_note = "file events"
        except Exception as exc:  # noqa: BLE001 - no inotify, watch limit, no watchdog...
            self.close()
            self.use_events = False
            self.events_note = f"polling every {self.interval:g} s (no file events: {exc})"

    def changed(self) -> list[str]:
        """Block until a .py file in the folder changes; return the changed file names."""
        while True:
            self.wake.wait(self.interval)
            self.wake.clear()
            now = snapshot(self.folder)
            if now != self.before:
                time.sleep(0.1)  # let the editor finish writing
                now = snapshot(self.folder)
                names = {n for n in set(now) | set(self.before) if now.get(n) != self.before.get(n)}
                self.before = now
                return sorted(names)

    def close(self) -> None:
        if self.observer is not None:
            try:
                self.observer.stop()
                self.observer.join(2)
            except Exception:  # noqa: BLE001,S110 - closing on the way out
                pass
            self.observer = None


class _Handler:
    """A watchdog event handler that only wakes the waiting loop (duck-typed dispatch)."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def dispatch(self, event) -> None:
        names = (str(getattr(event, "src_path", "")), str(getattr(event, "dest_path", "")))
        if event.event_type in Watcher.WATCHED and any(n.endswith(".py") for n in names):
            self.watcher.wake.set()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_watch(args, root: Path, style: Style) -> int:
    ex = chosen(root, args.exercise)
    if ex is None:
        say(style("Every exercise passes. Well done!", "green", "bold"))
        return 0
    # Ctrl-C and kill end the loop through KeyboardInterrupt, even where the shell that
    # started kata ignores SIGINT (a background job).
    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_interrupt))}
    watcher = Watcher(args.interval, use_events=not args.poll)
    try:
        while True:
            watcher.watch(ex.folder)
            result = run_and_report(root, ex, style, args.device, args.target)
            if result.ok and is_done(root, ex, args.target):
                nxt = next_after(exercises(root), load_state(root), ex)
                if nxt is None:
                    say(style("Every exercise passes. Well done!", "green", "bold"))
                    return 0
                say(style(f"Moving on to {nxt.name}: read exercises/{nxt.name}/README.md",
                          "bold"))
                say()
                ex = nxt
                continue
            say(style(f"-- watching exercises/{ex.name} ({watcher.events_note}); save a file "
                      f"to run again, Ctrl-C to quit", "dim"))
            names = watcher.changed()
            say()
            say(style(f"{', '.join(names)} changed", "dim"))
    except KeyboardInterrupt:
        say()
        say("kata watch stopped.")
        return 0
    finally:
        watcher.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the pytest side: streaming failures to the runner ---------------------------------------


def _emit(event: dict) -> None:
    path = os.environ.get(ENV_EVENTS)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def _failure_message(report) -> str:
    """The learner-facing message: the test's own text, or the error and where it happened."""
    crash = getattr(report.longrepr, "reprcrash", None)
    chain = getattr(report.longrepr, "chain", None)
    style = getattr(chain[-1][0], "style", None) if chain else None
    if crash is None:
        return report.longreprtext
    if style == "value":  # pytest.fail(..., pytrace=False): the message is the whole story
        message = crash.message
        return message[len("Failed: "):] if message.startswith("Failed: ") else message
    message = "\n".join(line for line in crash.message.splitlines()
                        if not line.lstrip().startswith("+"))  # pytest's "+  where ..." lines
    where = crash.path
    try:
        where = str(Path(crash.path).resolve().relative_to(Path.cwd()))
    except ValueError:
        pass
    return f"{message}\n  at {where}:{crash.lineno}"


def pytest_runtest_logreport(report) -> None:
    if report.failed:
        name = report.nodeid.split("::")[-1].split("[", 1)[0]
        when = "" if report.when == "call" else f" (error in {report.when})"
        _emit({"test": report.nodeid, "name": name + when, "message": _failure_message(report)})


def pytest_collectreport(report) -> None:
    if report.failed:
        lines = report.longreprtext.splitlines()
        errors = [line[4:] for line in lines if line.startswith("E   ")]
        message = "\n".join(errors[-MAX_MESSAGE_LINES:]) if errors else report.longreprtext
        name = Path(report.nodeid.split("::")[0]).name or report.nodeid
        _emit({"test": report.nodeid, "name": f"{name} (does not load)", "message": message})


# --- the command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kata",
        description="torchkata's runner: fix the code of each exercise until its tests pass.",
        epilog="N is an exercise: 1, 01 or 01_mlp. Without N: the current exercise (the "
               "first that is not done).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, exercise: str = "optional") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if exercise == "optional":
            p.add_argument("exercise", nargs="?", metavar="N",
                           help="the exercise (default: the current one)")
        elif exercise == "required":
            p.add_argument("exercise", metavar="N", help="the exercise")
        return p

    def passthrough(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=("cpu", "cuda", "auto"),
                       help="where models run (pytest --device)")
        p.add_argument("--target", help="code under test: student (default), reference or "
                                        "a PATH (pytest --target); only student runs count")

    command("list", "the curriculum and your progress (the default)", exercise="none")
    run = command("run", "run one exercise's tests with a concise report")
    run.add_argument("-v", "--verbose", action="store_true", help="pytest's full output")
    passthrough(run)
    watch = command("watch", "re-run the current exercise on every save; move on when it passes")
    watch.add_argument("--poll", action="store_true",
                       help="do not use file events, only check for changes every --interval")
    watch.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                       help="how often to check for saves (default: 1)")
    passthrough(watch)
    command("hint", "the next hint you have not seen yet")
    command("reset", "restore the starter code (yours is saved in .kata/backups first)", "required")
    solution = command("solution", "the diff between your code and the reference", "required")
    solution.add_argument("--yes", action="store_true",
                          help="do not ask for confirmation (for scripts)")
    command("verify", "check that the test files are the shipped ones")
    command("manifest", "(maintainers) rewrite exercises/MANIFEST.sha256 from the test files",
            exercise="none")
    return parser


COMMANDS = {
    "list": cmd_list, "run": cmd_run, "watch": cmd_watch, "hint": cmd_hint,
    "reset": cmd_reset, "solution": cmd_solution, "verify": cmd_verify,
    "manifest": cmd_manifest,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "list"
    style = Style()
    try:
        root = find_root()
        return COMMANDS[command](args, root, style)
    except KataError as exc:
        print(f"kata: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kata list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
