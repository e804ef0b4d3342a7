"""The writers' folders: one writer each, storage failures as one line, free space watched.

A session folder (``rtdecode run``) and a decoder's ``--out`` (``rtdecode decode``) each have one writer:
:class:`FolderLock` takes ``fcntl.flock`` on ``.rtdecode.lock`` inside the folder for the life of the
process. The kernel drops the lock when the process ends however it ends (SIGKILL too), so a restart
takes it at once and no stale lock file needs clearing. A second writer is refused in one line that
names the folder and the holder's pid.

A write that fails (disk full, quota, file-size limit, read-only file system, a file where a folder
should be) becomes one :class:`StorageError` naming the folder, the file and the reason; the process
stops there, and everything stored before it stays as it is (every append is committed row by row).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from rtdecode.base.errors import RtdecodeError

LOCK_NAME = ".rtdecode.lock"
# A run takes 2.1 times its raw volumes with its BIDS copy and derivatives (measured on a simulated
# 100 x 100 x 52 run); 2.5 leaves room for betas (docs/session-folder.md).
RUN_FACTOR = 2.5

_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file reached the largest size allowed (file system or ulimit -f)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EEXIST: "a file stands where a folder is needed",
    errno.EIO: "the disk reported an input/output error",
}
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})  # the storage, not the file


class StorageError(RtdecodeError):
    """Writing a session folder or a decoder's --out failed; the message is the one line to show."""


class FolderInUse(RtdecodeError):
    """Another process holds the folder's writer lock."""


def is_storage(exc: OSError, folder: str | Path) -> bool:
    """Whether ``exc`` is the storage failing (full, read-only, ...) or a file of ``folder`` that cannot be written."""
    if exc.errno in FULL:
        return True
    try:
        return bool(exc.filename) and Path(os.fsdecode(exc.filename)).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, ValueError, TypeError):
        return False


def storage_error(exc: OSError, folder: str | Path, who: str) -> StorageError:
    """One line for a failed write: the file (or folder), why, that ``who`` stopped, and what to do."""
    code = errno.errorcode.get(exc.errno or 0, "OSError")
    why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
    what = f"cannot write {os.fsdecode(exc.filename)}" if exc.filename else f"a write in {folder} failed"
    kept = f"Everything stored in {folder} before this is kept" if exc.filename else "Everything stored before is kept"
    return StorageError(f"storage: {what}: {why} ({code}: {exc.strerror or exc}); {who} stopped. {kept}: free "
                        "space or fix the folder, then start it again and it resumes where it stopped")


class FolderLock:
    """An exclusive writer lock on ``folder``, held until :meth:`release` or the process ends."""

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock (creating the folder); :class:`FolderInUse` when another process holds it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        except OSError as exc:
            raise storage_error(exc, self.folder, self.command) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUse(f"{self.folder} is in use by another writer ({self.holder()}); one folder has one "
                              f"writer, so this {self.command} did not start. Stop that process first, or use "
                              "another folder") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}, {self.command}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise storage_error(exc, self.folder, self.command) from None
        self._fd = fd
        return self

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (pid, command, since when)."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text[:200] if text.startswith("pid ") else "pid not yet written"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the next writer in (the lock file stays: removing it would race with a new holder)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer can still use on the file system of ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def run_needs(min_free_gb: float, volume_bytes: int | None, volumes_per_run: int) -> int:
    """Bytes a run needs: ``min_free_gb``, or RUN_FACTOR times a run's raw volumes once a volume's size is known."""
    floor = int(min_free_gb * 1e9)
    return max(floor, int(RUN_FACTOR * volume_bytes * volumes_per_run)) if volume_bytes else floor


def space_warning(folder: str | Path, need: int, what: str) -> str | None:
    """One line when ``folder``'s file system has less than ``need`` bytes free, else None."""
    free = free_bytes(folder)
    if free >= need:
        return None
    return (f"storage: {_gb(free)} free on the disk of {folder}; {what} needs about {_gb(need)}: free space "
            "before the run fills it (a full disk stops the scanner side; what is stored is kept)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def unique_path(folder: Path, name: str) -> Path:
    """``folder/<time to the microsecond>_name`` that does not exist yet (``-2``, ``-3`` ... on a clash)."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    target = folder / f"{stamp}_{name}"
    n = 1
    while target.exists() or target.is_symlink():
        n += 1
        target = folder / f"{stamp}-{n}_{name}"
    return target


class SpaceWatch:
    """The free space on a session folder's disk, looked at when watching starts and every ``every`` stored
    volumes (0: at start only); each shortfall is said once per run."""

    def __init__(self, folder: str | Path, min_free_gb: float, every: int, volumes_per_run: int) -> None:
        self.folder = Path(folder)
        self.min_free_gb = min_free_gb
        self.every = every
        self.volumes_per_run = volumes_per_run
        self._warned: set[int | None] = set()

    def at_start(self) -> str | None:
        """A shortfall before the next run, sized by the last stored volume when the session has one."""
        runs = sorted((self.folder / "func").glob("*_bold"))
        last = next(runs[-1].glob("vol-*.nii"), None) if runs else None
        return self._check(None, last)

    def after_volume(self, run: int, index: int, stored: Path) -> str | None:
        """A shortfall for run ``run``, looked at when volume ``index`` (stored as ``stored``) is the every-th."""
        if not self.every or (index + 1) % self.every:
            return None
        return self._check(run, stored)

    def _check(self, run: int | None, volume: Path | None) -> str | None:
        if run in self._warned:
            return None
        try:
            size = volume.stat().st_size if volume is not None else None
        except OSError:
            size = None
        need = run_needs(self.min_free_gb, size, self.volumes_per_run)
        basis = f"session.min_free_gb = {self.min_free_gb:g}" if need == int(self.min_free_gb * 1e9) else \
            f"{self.volumes_per_run} volumes of {_gb(size or 0)}, x{RUN_FACTOR:g} with its BIDS copy and derivatives"
        line = space_warning(self.folder, need, f"{'a run' if run is None else f'run {run}'} ({basis})")
        if line is not None:
            self._warned.add(run)
        return line
