"""kata: the learner's runner. Progress, concise test runs, a watch mode, hints, resets.

``kata`` (or ``python -m torchkata``) works in any copy of the repository: it walks up from
the current directory to the folder that holds ``exercises/`` and ``reference/``. Progress
and backups live in ``.kata/`` there (ignored by git). It never imports torch itself: each
run is ``pytest exercises/NN_topic`` in a child of the warm worker, or in a subprocess where
there is none (see ``torchkata.runner`` and ``torchkata.worker``).
This module holds the command line: its parser, its output and one function per command.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

from torchkata.manifest import (
    MANIFEST,
    compute_manifest,
    display,
    format_manifest,
    read_manifest,
    suite_files,
    suite_problems,
)
from torchkata.progress import (
    STATE_DIR,
    Exercise,
    KataError,
    current,
    entry_of,
    exercises,
    find_root,
    finished,
    load_state,
    next_after,
    pick,
    record,
    rel,
    save_state,
    status_of,
)
from torchkata.runner import LIMIT_SECONDS, RunResult, effective_target, run_suite
from torchkata.watch import Watcher
from torchkata.worker import Client

MAX_MESSAGE_LINES = 15

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


class EventPrinter:
    """Prints each failing property as it arrives (a repeated message once), one line for
    each test not checked, and, on a terminal, a live line naming the test that runs."""

    def __init__(self, style: Style, live: bool | None = None) -> None:
        self.style = style
        self.messages: dict[str, str] = {}
        self.live = sys.stdout.isatty() if live is None else live
        self.status = ""

    def __call__(self, event: dict) -> None:
        if event.get("event") == "start":
            self._status(f"   running {event.get('test', '').split('::')[-1]} ...")
            return
        outcome = event.get("outcome")
        if outcome == "failed":
            self.done()
            self._failure(event)
        elif outcome == "not checked":
            self.done()
            say(self.style(f"  -  {event.get('name', '?')}: {event.get('message', '')}", "dim"))

    def _status(self, text: str) -> None:
        if self.live:
            text = text[:100]
            pad = " " * max(0, len(self.status) - len(text))
            sys.stdout.write("\r" + self.style(text, "dim") + pad)
            sys.stdout.flush()
            self.status = text

    def done(self) -> None:
        """Clear the live line."""
        if self.live and self.status:
            sys.stdout.write("\r" + " " * len(self.status) + "\r")
            sys.stdout.flush()
            self.status = ""

    def _failure(self, event: dict) -> None:
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


def pytest_extra(args) -> list[str]:
    """The pytest options ``kata run`` and ``kata watch`` pass through."""
    extra = []
    if getattr(args, "k", None):
        extra += ["-k", args.k]
    if getattr(args, "runslow", False):
        extra.append("--runslow")
    if getattr(args, "threads", None):
        extra.append(f"--threads={args.threads}")
    return extra


def run_and_report(root: Path, ex: Exercise, style: Style, device: str | None = None,
                   target: str | None = None, verbose: bool = False, extra: list[str] = (),
                   limit: float = LIMIT_SECONDS) -> RunResult:
    """One run with its concise report and, for the learner's code, the progress update.

    A run with a ``-k`` selection is reported but not recorded: it is not the whole suite.
    """
    student = effective_target(target) == "student"
    title = f": {ex.title}" if ex.title else ""
    say(style(f"== {ex.name}{title}", "bold"))
    shown = "" if student else f" (target: {effective_target(target)})"
    say(style(f"   running pytest {rel(root, ex.folder)}{shown} ...", "dim"))
    printer = EventPrinter(style)

    def warming() -> None:
        say(style("   starting the warm worker: it imports torch once, so that later runs "
                  "start at once ...", "dim"))

    try:
        result = run_suite(root, ex.folder, device, target, verbose,
                           on_event=None if verbose else printer, extra=list(extra),
                           limit=limit, on_warmup=warming)
    finally:
        printer.done()
    problems = {}
    manifest = read_manifest(root)
    if manifest is not None:
        problems = {f: p for f, p in suite_problems(root, manifest, [ex.name]).items()
                    if p != "not in the manifest" or f.endswith("conftest.py")}
    if student and result.returncode in (0, 1) and "-k" not in extra:
        unchecked = result.having("not checked")
        passed = len(result.passed)
        record(root, ex, result.ok and not unchecked, passed,
               passed + len(result.failed) + len(unchecked), result.failed + unchecked,
               tests_intact=not problems)
    summarise(root, ex, result, style, problems, verbose, limit)
    return result


def summarise(root: Path, ex: Exercise, result: RunResult, style: Style,
              problems: dict[str, str], verbose: bool, limit: float = LIMIT_SECONDS) -> None:
    if result.timed_out:
        running = result.last_started.split("::")[-1] or "the suite"
        say(style(f"kata stopped the run after {limit:g} s: {running} was still running. "
                  f"Each test has its own time budget, so something outside a test hung "
                  f"(collection, or code run at import).", "red"))
        return
    # a test that started and never reported: the process ended under it (pytest-timeout's
    # backstop exits 1, like an ordinary failing run)
    cut_off = bool(result.last_started) and result.last_started not in result.outcomes
    if result.returncode not in (0, 1) or (result.returncode and cut_off):
        if not verbose and (not result.events or cut_off):
            say("\n".join(result.output.strip().splitlines()[-30:]))
        where = ""
        if cut_off:
            where = f" while {result.last_started.split('::')[-1]} was running"
        more = "" if verbose else f" Full output: kata run {ex.short} -v"
        say(style(f"pytest exited {result.returncode}{where}: the tests of {ex.name} did not "
                  f"run through.", "red") + more)
        return
    if problems:
        files = ", ".join(f"{display(f)} ({p})" for f, p in problems.items())
        say(style(f"Warning: files that decide what the tests conclude differ from the "
                  f"shipped ones: {files}. A pass does not count until they are restored "
                  f"(kata verify).", "yellow"))
    unchecked, skipped = result.having("not checked"), result.having("skipped")
    counts = [f"{len(result.passed)} passed"]
    if result.failed:
        counts.append(f"{len(result.failed)} failed")
    if unchecked:
        counts.append(f"{len(unchecked)} not checked")
    if skipped:
        counts.append(f"{len(skipped)} skipped")
    reasons = {e.get("message", "") for e in result.events if e.get("outcome") == "skipped"}
    for reason in sorted(reasons):
        if reason.startswith("slow"):
            say(style(f"   skipped slow tests: `kata run {ex.short} --runslow` runs them too",
                      "dim"))
        elif reason:
            say(style(f"   skipped: {reason}", "dim"))
    warm = " (warm worker)" if result.warm else ""
    if result.ok and not unchecked:
        say(style(f"ok {ex.name} passes: {', '.join(counts)}.", "green", "bold")
            + style(warm, "dim"))
        return
    say(style(f"{ex.name}: {', '.join(counts)}.", "bold")
        + f" Fix the first failure first. Stuck? kata hint {ex.short}"
        + ("" if verbose else f"   Full output: kata run {ex.short} -v") + style(warm, "dim"))


# --- commands -----------------------------------------------------------------------------


def cmd_list(args, root: Path, style: Style) -> int:
    all_exercises = exercises(root)
    state = load_state(root)
    done = sum(finished(state, ex) for ex in all_exercises)
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
        if entry.get("done_once"):
            return style(f"done before; failing on the last run{counts}", "yellow")
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
    result = run_and_report(root, ex, style, args.device, args.target, args.verbose,
                            pytest_extra(args), args.limit)
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
                     or (ex.folder / name).read_bytes() != starter[name].encode("utf-8"))
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
    return path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)


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
        say(style(f"{problem:>20}: {display(f)}", "red"))
    say("A green run means what it says only with the shipped tests. Restore these files "
        "(git checkout -- <file>, or take them from a fresh copy of the repository).")
    if any(p == "not in the manifest" for p in problems.values()):
        say(style("Maintainers: after changing tests on purpose, regenerate the manifest with "
                  "`python -m torchkata manifest`.", "dim"))
    return 1


def cmd_worker(args, root: Path, style: Style) -> int:
    client = Client(root)
    if not Client.enabled():
        say("The warm worker is off here (no os.fork, or TORCHKATA_WORKER=off): each run "
            "starts a fresh pytest.")
        return 0
    if args.action == "stop":
        say("kata: the warm worker stopped." if client.stop() else "kata: no worker was running.")
    elif args.action == "start":
        started = client.start()
        say("kata: the warm worker is ready." if started else "kata: the worker did not start; "
            f"see {rel(root, root / STATE_DIR / 'worker.log')}")
        return 0 if started else 1
    else:
        say("kata: the warm worker is running." if client.ping() else
            "kata: no warm worker is running; `kata run` starts one.")
    return 0


def cmd_manifest(args, root: Path, style: Style) -> int:
    manifest = compute_manifest(root)
    (root / MANIFEST).write_text(format_manifest(manifest), encoding="utf-8")
    say(f"wrote {MANIFEST} ({len(manifest)} test files)")
    return 0


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
    if Client.enabled() and not Client(root).ping():
        say(style("starting the warm worker: it imports torch once, so that every run after "
                  "a save starts at once ...", "dim"))
        Client(root).start()
    try:
        while True:
            watcher.watch(ex.folder)
            result = run_and_report(root, ex, style, args.device, args.target,
                                    extra=pytest_extra(args), limit=args.limit)
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


# --- the command line ---------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


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
        p.add_argument("-k", metavar="EXPR",
                       help="only the tests that match EXPR (pytest -k); such a run does not "
                            "count as the exercise's verdict")
        p.add_argument("--runslow", action="store_true", help="also run tests marked slow")
        p.add_argument("--threads", type=positive_int, metavar="N",
                       help="torch's intra-op threads for the tests (default: 1)")
        p.add_argument("--limit", type=positive_int, default=LIMIT_SECONDS, metavar="SECONDS",
                       help=f"stop a run after this long (default: {LIMIT_SECONDS})")

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
    command("verify", "check that the test files, the harness and pytest's settings are the "
                      "shipped ones")
    worker = command("worker", "the warm worker that runs the tests (started by run and watch)",
                     exercise="none")
    worker.add_argument("action", nargs="?", choices=("status", "start", "stop"),
                        default="status")
    command("manifest", "(maintainers) rewrite exercises/MANIFEST.sha256 from the test files",
            exercise="none")
    return parser


COMMANDS = {
    "list": cmd_list, "run": cmd_run, "watch": cmd_watch, "hint": cmd_hint,
    "reset": cmd_reset, "solution": cmd_solution, "verify": cmd_verify,
    "manifest": cmd_manifest, "worker": cmd_worker,
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
