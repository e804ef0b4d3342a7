"""Find the files a scanner writes into a folder: watchdog events, or polling for network shares.

SMB and NFS mounts deliver no file events, so ``mode="polling"`` lists the folder every
``poll_interval`` seconds instead. In event mode a slower rescan runs as well, because events can be
missed (a watch set up after a file landed, an overflowing inotify queue). A file is offered again
whenever its size or modification time changes, so a file that was still being written, or one
replaced under the same name, is seen anew; unchanged files are offered once.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from pathlib import Path

log = logging.getLogger(__name__)

RESCAN_INTERVAL_S = 1.0  # safety-net listing in event mode


class FolderWatcher:
    """Offer paths in ``folder`` whose names match ``regex``; :meth:`get` waits with a timeout."""

    def __init__(self, folder: str | Path, regex: re.Pattern[str], mode: str = "events", poll_interval: float = 0.1) -> None:
        self.folder = Path(folder)
        self.regex = regex
        self.mode = mode
        self.poll_interval = poll_interval
        self._queue: queue.Queue[Path] = queue.Queue()
        self._seen: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer = None
        self._thread: threading.Thread | None = None

    def start(self) -> FolderWatcher:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"scanner.watch_dir: folder does not exist: {self.folder}")
        if self.mode == "events":
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            watcher = self

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event) -> None:  # noqa: ANN001 - watchdog's event type
                    if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
                        return
                    path = getattr(event, "dest_path", "") or event.src_path
                    watcher._offer(Path(os.fsdecode(path)))

            self._observer = Observer()
            self._observer.schedule(_Handler(), str(self.folder), recursive=False)
            self._observer.start()
        interval = self.poll_interval if self.mode == "polling" else RESCAN_INTERVAL_S
        self._thread = threading.Thread(target=self._poll, args=(interval,), name="rtdecode-poll", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def get(self, timeout: float) -> Path | None:
        """Next offered path, or None when nothing arrived within ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def reoffer(self, path: Path) -> None:
        """Forget a path so that it is offered again at the next look (used to retry a partial file)."""
        with self._lock:
            self._seen.pop(path.name, None)

    def _poll(self, interval: float) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(interval)

    def scan(self) -> None:
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            log.warning("cannot list %s: %s", self.folder, exc)
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file():
                self._offer(Path(entry.path))

    def _offer(self, path: Path) -> None:
        if not self.regex.fullmatch(path.name):
            return
        try:
            st = path.stat()
        except OSError:
            return  # gone again (moved aside, or a temporary name)
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._seen.get(path.name) == stamp:
                return
            self._seen[path.name] = stamp
        self._queue.put(path)
