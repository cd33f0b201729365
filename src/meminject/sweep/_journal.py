"""Repair of an Optuna journal file whose last record was torn by an interrupted write.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends one JSON record per
line, under a lock file, with a single ``write``. When that write is cut short (the worker is
SIGKILLed in a large write, the machine loses power, the disk fills up) the file ends in part
of a record with no newline. Optuna's reader skips such a tail, so the study still opens; but
the next append lands right after the fragment, the two fuse into one line that is not JSON,
and from the record after that on every reader fails with ``JSONDecodeError``: the study can
no longer be opened at all.

:func:`repair_torn_journal` cuts the file back to the end of its last complete record before
anything is appended, keeping a copy of the file as it was. Only the tail is handled: with
one writer at a time (the lock) and appends only, a torn record can only be the last one, and
a file already broken in the middle (fused by an append before this repair existed) is left
for a person to look at.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import BinaryIO

from optuna.storages.journal import JournalFileSymlinkLock

__all__ = ["repair_torn_journal"]

_WINDOW = 1 << 16  # bytes read from the end at first; records are far smaller than this


def _is_record(line: bytes) -> bool:
    """A complete record: newline-terminated, and the line parses as a JSON object."""
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False


def _end_of_last_record(f: BinaryIO, size: int) -> int:
    """Offset just past the last complete record among the first ``size`` bytes (0: none).

    Reads backwards from the end, widening the window only while the line being judged may
    begin before it, so a healthy journal of any size costs one small read.
    """
    window = _WINDOW
    while True:
        start = max(0, size - window)
        f.seek(start)
        data = f.read(size - start)
        end = data.rfind(b"\n") + 1  # past the last newline in the window; 0 when there is none
        while end > 0:
            begin = data.rfind(b"\n", 0, end - 1) + 1
            if begin == 0 and start > 0:
                break  # this line may begin before the window: widen it
            if _is_record(data[begin:end]):
                return start + end
            end = begin  # a newline-terminated line that is not JSON: a fused fragment
        if start == 0:
            return 0
        window *= 4


def _tail(path: Path) -> tuple[int, int]:
    """(offset past the last complete record, file size)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return _end_of_last_record(f, size), size


def _backup(path: Path, size: int) -> Path:
    """Copy the journal's first ``size`` bytes to ``<name>.torn-<UTC time>[-n].bak`` beside it.

    Exclusive creation, so a backup is never overwritten; fsynced before the journal is cut,
    so a crash in between leaves both. A failed copy (a disk still full) is removed, and the
    error raised: the journal is then left as it was.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        backup = path.with_name(f"{path.name}.torn-{stamp}{'' if n == 0 else f'-{n}'}.bak")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free backup name for {path}")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            remaining = size
            while remaining:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        backup.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # the backup's name, too, must outlive a crash
    return backup


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible everywhere (Windows); the data itself is synced
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def repair_torn_journal(path: str | Path) -> str | None:
    """Cut a torn last record off an Optuna journal file; say what was done, or None.

    Call it before opening the journal with Optuna. A file that is missing, empty, or ends
    with a complete record (newline-terminated JSON) is not touched, and None is returned.
    Otherwise the file is copied beside itself (``<name>.torn-<time>.bak``), truncated to the
    end of its last complete record, and one line for the user is returned. A complete record
    is never cut. Raises OSError when the backup cannot be written (a disk still full); the
    journal is then unchanged.

    Runs under the lock file Optuna's journal backend takes for every append (the symlink
    and open locks share ``<path>.lock``), so no append can land while the tail is judged and
    cut, and of several workers opening the study at once only the first repairs. If a
    writer died holding the lock, Optuna's lock frees it after its grace period (30 s).
    """
    path = Path(path)
    try:
        keep, size = _tail(path)
    except FileNotFoundError:
        return None
    if keep == size:  # the common case, decided without the lock
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        # Judged again under the lock: what looked torn may have been an append in progress,
        # or another worker may have repaired it already.
        keep, size = _tail(path)
        if keep == size:
            return None
        backup = _backup(path, size)
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    return (
        f"repaired the study journal {path}: cut {size - keep} bytes of a record torn by an "
        f"interrupted write (a crash, a kill or a full disk), kept {keep} bytes of complete "
        f"records; the file as it was is saved as {backup}"
    )
