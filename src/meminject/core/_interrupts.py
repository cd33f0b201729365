"""Ctrl-C and SIGTERM, handled one way everywhere: a clean stop, never a half-done cleanup.

``install()`` makes the first SIGINT or SIGTERM raise :class:`KeyboardInterrupt` and note it
in :data:`INTERRUPTED`; later ones are only noted, so they cannot cut the cleanup short. Python can lose that exception when the signal lands inside a finalizer
or a C callback ("Exception ignored in ..."), so loops also call :func:`check`, which raises
again while the note is set. :func:`held` defers both signals while cleanup runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

__all__ = ["INTERRUPTED", "install", "check", "held", "interrupted_exit", "ignore_interrupts_until_ready"]

INTERRUPTED_LINE = "meminject: interrupted; finished trials are kept, rerun the same command to resume"

INTERRUPTED = threading.Event()  # set by the first SIGINT/SIGTERM of this process
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal handler signature
    if INTERRUPTED.is_set():
        # A second signal (the terminal's Ctrl-C and the coordinator's forward, or SIGTERM after
        # SIGINT) must not cut the cleanup the first one started; check() re-raises in loops.
        return
    INTERRUPTED.set()
    raise KeyboardInterrupt()


def install() -> None:
    """SIGINT and SIGTERM stop the process like Ctrl-C (a scheduler's SIGTERM included)."""
    for signum in _SIGNALS:
        signal.signal(signum, _on_signal)


def check() -> None:
    """Raise KeyboardInterrupt if this process was interrupted (also when the first raise was lost)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt()


_depth = 0  # held() blocks open in the main thread: only the outermost swaps the handlers


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back until the block ends, then raise KeyboardInterrupt if one came:
    cleanup must not be cut in half. (A thread's signal mask would not do: the kernel hands a
    process signal to any thread that does not block it, and Python then runs its handler in
    the main thread anyway; so the handlers themselves are swapped for one that only notes it.)

    Like the handlers of :func:`install`, a block raises only for the *first* signal: one that
    comes while the process is already stopping (the coordinator's SIGTERM after the terminal's
    Ctrl-C) is only noted, so it cannot cut short the cleanup that follows the block. A block
    inside another raises nothing itself: the outermost raises when it ends."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be swapped in the main thread, where all cleanup runs
        return
    if _depth:  # inside another block: that one holds, and raises
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    caught: list[int] = []

    def note(signum: int, frame: Any) -> None:  # noqa: ARG001
        if not INTERRUPTED.is_set():  # the first signal; later ones (a stop under way) are only noted
            caught.append(signum)
        INTERRUPTED.set()

    previous = {s: signal.signal(s, note) for s in _SIGNALS}
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            raise KeyboardInterrupt()


def interrupted_exit() -> int:
    """After Ctrl-C/SIGTERM: ignore further signals (the cleanup is done, the exit must not be
    cut), print the one line, and return status 130. A worker spawned by ``meminject sweep``
    stays quiet: its coordinator prints the line for the whole sweep."""
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if not os.environ.get("MEMINJECT_COORDINATOR_PID"):
        print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
    return 130


def ignore_interrupts_until_ready() -> None:
    """For a child process (``preexec_fn``): start with SIGINT ignored, so that a Ctrl-C during
    Python's own start-up (before meminject installs its handler) prints no traceback; the
    child's :func:`install` takes SIGINT over, and its coordinator stops it with SIGTERM,
    which ends a child that is still starting silently."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
