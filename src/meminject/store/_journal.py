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
for a person to look at: :func:`corrupt_record` names its line and byte offset, and
:func:`drop_record` removes that one line on request (``meminject repair drop_line=N``),
after a backup.

A last record that is whole but for its final newline (the write stopped one byte short) is
completed, not cut: a record that parses is never thrown away.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import BinaryIO

from optuna.storages.journal import JournalFileSymlinkLock

__all__ = ["repair_torn_journal", "corrupt_record", "damage_line", "drop_record", "JournalDamage"]

_WINDOW = 1 << 16  # bytes read from the end at first; records are far smaller than this


def _is_record(line: bytes) -> bool:
    """A complete record: newline-terminated, and the line parses as a JSON object with
    Optuna's two keys of every record (an integer ``op_code``, a ``worker_id``)."""
    if not line.endswith(b"\n"):
        return False
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False
    return isinstance(record, dict) and type(record.get("op_code")) is int and isinstance(record.get("worker_id"), str)


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


def _tail(path: Path) -> tuple[int, int, bool]:
    """(offset past the last complete record, file size, whether what follows it is one whole
    record that lacks only its final newline)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        keep = _end_of_last_record(f, size)
        if keep == size or size - keep > 64 * _WINDOW:
            return keep, size, False
        f.seek(keep)
        return keep, size, _is_record(f.read(size - keep) + b"\n")


def _backup(path: Path, size: int, kind: str = "torn") -> Path:
    """Copy the journal's first ``size`` bytes to ``<name>.<kind>-<UTC time>[-n].bak`` beside it.

    Exclusive creation, so a backup is never overwritten; fsynced before the journal is cut,
    so a crash in between leaves both. A failed copy (a disk still full) is removed, and the
    error raised: the journal is then left as it was.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        backup = path.with_name(f"{path.name}.{kind}-{stamp}{'' if n == 0 else f'-{n}'}.bak")
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
        keep, size, _ = _tail(path)
    except FileNotFoundError:
        return None
    if keep == size:  # the common case, decided without the lock
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        # Judged again under the lock: what looked torn may have been an append in progress,
        # or another worker may have repaired it already.
        keep, size, whole = _tail(path)
        if keep == size:
            return None
        if whole:  # only the newline is missing: complete the record, cut nothing
            with open(path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            return (
                f"repaired the study journal {path}: its last record lacked only its final newline "
                "(an interrupted write); the newline was added and nothing was cut"
            )
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


class JournalDamage(ValueError):
    """A journal with a record that does not parse before its end (see :func:`corrupt_record`)."""


def corrupt_record(path: str | Path) -> tuple[int, int, str] | None:
    """The first line of a journal that is not a record, before its last line: (line number
    from 1, byte offset of the line's start, why), or None when every such line parses.

    The last line is the torn tail :func:`repair_torn_journal` handles; a bad line before it
    (a flipped byte, a fused append) makes Optuna refuse the whole file, every study in it.
    """
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.endswith(b"\n") and not _is_record(line):
                try:
                    json.loads(line)
                    why = "not an Optuna record (no op_code and worker_id)"
                except ValueError as exc:
                    why = str(exc).splitlines()[0]
                return number, offset, why
            offset += len(line)
    return None


def damage_line(path: str | Path) -> str | None:
    """One line naming a corrupt record of the journal and the way out, or None."""
    found = corrupt_record(path)
    if found is None:
        return None
    number, offset, why = found
    return (
        f"study journal {path} is corrupt at line {number} (byte offset {offset}: {why}), so no study in it can be "
        f"read; restore it from a backup, or drop that one record with `meminject repair storage={path} "
        f"drop_line={number}` (the file is backed up first; the trials that record touched may be lost and re-run)"
    )


def drop_record(path: str | Path, line: int) -> str:
    """Remove line ``line`` (from 1) of a journal, a record that does not parse, after backing
    the file up as ``<name>.dropped-<time>.bak``; under Optuna's append lock. Returns the line
    to print. Raises :class:`JournalDamage` for a line that is missing or a valid record (a
    record that parses is never dropped)."""
    path = Path(path)
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.splitlines(keepends=True)
        if not 1 <= line <= len(lines):
            raise JournalDamage(f"{path} has {len(lines)} lines; there is no line {line}")
        if _is_record(lines[line - 1]):
            found = corrupt_record(path)
            hint = f"line {found[0]} is the corrupt one" if found else "no line of it is corrupt"
            raise JournalDamage(f"line {line} of {path} is a valid record and is kept ({hint})")
        backup = _backup(path, len(data), "dropped")
        offset = sum(map(len, lines[: line - 1]))
        kept = data[:offset] + data[offset + len(lines[line - 1]) :]
        temporary = path.with_name(path.name + ".dropping")
        with open(temporary, "wb") as f:
            f.write(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    finally:
        lock.release()
    return (
        f"dropped line {line} ({len(lines[line - 1])} bytes at byte offset {offset}) of the study journal {path}; "
        f"the file as it was is saved as {backup}"
    )
