"""One writer per run folder: RUN_DIR/run.lock, held while a run writes the folder.

The lock is an `flock` on that file, which also records who holds it (pid, host, start
time). The operating system lets go of an flock when its process ends, however it ends
(`kill -9` included), so a lock file that nobody holds is a stale one, left by a process
that died: it is taken over, and the dead process is named in a warning. A folder whose
lock is held is refused in one line that names the holder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from fedsim.config import ConfigError
from fedsim.run_folder import LOCK_NAME  # noqa: F401 - re-exported

log = logging.getLogger("fedsim")


class RunFolderBusy(ConfigError):
    """Another live process writes this run folder."""


def _record(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def describe(record: dict) -> str:
    """'pid 123 on host, since 12:00:01' for a lock's record."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"])) \
        if isinstance(record.get("started"), (int, float)) else "?"
    return f"pid {record.get('pid', '?')} on {record.get('host', '?')}, since {since}"


class RunLock:
    """The held lock of one run folder; `release()` when the run ends (or the process
    ending releases it)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise ConfigError(f"{run_dir}: cannot write there ({err.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _record(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"{run_dir} is being written by another run ({describe(holder)}): wait "
                    "for it to end or stop it, or pick another folder") from None
            try:  # a holder that released it in between unlinked the file we opened
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _record(fd)
        if stale:
            log.warning("%s: the lock of a run that is no longer running (%s) was taken "
                        "over", run_dir, describe(stale))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.time()}).encode(), 0)
        self.fd: Optional[int] = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def holder(run_dir: Path) -> Optional[dict]:
    """The record of the live process that holds the folder's lock, or None (no lock, or
    a stale one)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _record(fd)
    finally:
        os.close(fd)  # closing also drops the shared lock taken just to look
    return None
