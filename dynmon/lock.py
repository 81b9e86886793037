"""One writer per run folder: an exclusive ``flock`` on ``<run_dir>/.dynmon.lock``.

The lock belongs to an open file, so the OS drops it when the holder closes it or dies (SIGKILL
included): a stale lock file never blocks a resume. The file keeps the holder's pid and host,
read back only to name the holder in the error a second writer gets. On a platform without
``fcntl`` (Windows) or a file system that refuses ``flock`` the folder is used unlocked, with
one warning.
"""

from __future__ import annotations

import errno
import os
import socket
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".dynmon.lock"


class RunFolderBusy(RuntimeError):
    """Another live process (or another Monitor in this one) writes this run folder."""


class RunFolderLock:
    """Hold ``<run_dir>/.dynmon.lock`` exclusively from construction until ``release()``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(
                f"dynmon: no fcntl on this platform: {run_dir} is not locked against a second "
                "writer",
                RuntimeWarning,
                3,
            )
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = holder(run_dir)
                todo = (
                    "close() the Monitor of this process that writes it (a notebook cell run "
                    "again keeps the old one open), or use `with dynmon.Monitor(...)`"
                    if who.startswith(f"pid {os.getpid()} ")
                    else "stop that process first"
                )
                raise RunFolderBusy(
                    f"{Path(run_dir)} is being written by another dynmon writer ({who}); two "
                    f"runs in one folder would mix their rows. Choose another run_dir/--out, or "
                    f"{todo}"
                ) from None
            warnings.warn(  # e.g. ENOLCK on some network file systems
                f"dynmon: cannot lock {self.path} ({exc}); the folder is used unlocked",
                RuntimeWarning,
                3,
            )
            return
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode())

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def release(self) -> None:
        """Let the next writer in (the file stays: it marks the folder as dynmon's)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:  # a sink never closed still frees the folder when collected
        try:
            self.release()
        except Exception:  # noqa: S110 - interpreter shutdown: the OS frees it anyway
            pass


def holder(run_dir: str | Path) -> str:
    """Who holds the lock, as its file says (``pid N host H``), for error messages."""
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


def is_locked(run_dir: str | Path) -> bool:
    """Whether a live writer holds ``run_dir``'s lock right now (False when there is no lock)."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
