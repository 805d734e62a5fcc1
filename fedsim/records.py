"""A run's records: append-only JSONL rows, each written whole or not at all, and tables
replaced atomically, so a crash or a full disk never leaves half a record behind.

A row is one `os.write` of the whole line to a file opened for appending (concurrent
writers never interleave); a write cut short is undone. A read skips a last line that
a crash left cut short (written by an older version, or by another tool) with one
warning; a broken line anywhere else is an error. A write that fails for lack of space
raises `DiskFull`, whose message names the file and the space left, so that the run
stops there in one line.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger("fedsim")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_warned: set[tuple[str, int]] = set()


class DiskFull(RuntimeError):
    """A write failed for lack of space; the message names the file and the free space."""


class RecordsError(ValueError):
    """A record file broken in the middle (not just cut short at its end)."""


def disk_full(err: BaseException, path) -> Optional[DiskFull]:
    """`err` as a DiskFull naming the file (or `path`), when it is a failure for lack of
    space: ENOSPC or EDQUOT, or torch's writer failing (it gives no errno) while less than
    1 MiB is left where it wrote."""
    if isinstance(err, DiskFull):  # a Ray task's error is also an instance of its cause
        cause = getattr(err, "cause", None)
        return cause if isinstance(cause, DiskFull) else err
    where = Path(getattr(err, "filename", None) or path or ".")
    try:
        free = shutil.disk_usage(where if where.is_dir() else where.parent).free
    except OSError:
        free = None
    no_space = isinstance(err, OSError) and err.errno in _NO_SPACE
    torch_writer = (isinstance(err, RuntimeError) and "inline_container" in str(err)
                    and free is not None and free < 2**20)
    if not (no_space or torch_writer):
        return None
    return DiskFull(f"no space left on device writing {where}: "
                    + (f"{free} bytes free" if free is not None else "free space unknown"))


def append_row(path: Path, row: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        written = os.write(fd, line)
        if written != len(line):  # the disk filled up mid-line: take the part back
            if os.fstat(fd).st_size == start + written:  # (unless another writer came)
                os.ftruncate(fd, start)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    except OSError as err:
        raise (disk_full(err, path) or err) from None
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().decode(errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            if i == last and i == len(lines) - 1:  # no newline after it: cut short
                if (str(path), i) not in _warned:
                    _warned.add((str(path), i))
                    log.warning("%s: line %d was cut short (a write that never finished): "
                                "skipped", path, i + 1)
                continue
            raise RecordsError(f"{path}: line {i + 1} is not a JSON row ({err}); only a "
                               "last line cut short is skipped") from None
        rows.append(row)
    return rows


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` whole: a reader sees the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        full = disk_full(err, path)
        if full is not None:
            raise full from None
        raise


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    import csv

    rows = list(rows)
    if not rows:
        return
    keys = sorted({k for r in rows for k in r})
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, text.getvalue().encode())


class RunLogHandler(logging.FileHandler):
    """RUN_DIR/run.log. A write that fails (a full disk, say) is reported once on stderr
    and ends logging to the file, instead of a `--- Logging error ---` block per line."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        reason = disk_full(err, self.baseFilename) or f"{self.baseFilename}: {err!r}"
        print(f"{reason}; run.log gets no further lines", file=sys.stderr,
              flush=True)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last lines could not be written either
            pass
