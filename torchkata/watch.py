"""Watch mode's file watcher: wakes on a save of a .py file in one folder.

watchdog is imported only when the first folder is watched, and polling covers file
systems whose events never come.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


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
