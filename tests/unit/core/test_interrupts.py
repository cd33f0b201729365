"""Ctrl-C and SIGTERM through ``meminject.core._interrupts``: a held cleanup is never cut short.

Each case runs in a child interpreter: the handlers and the interrupted flag are process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_PRELUDE = """
import os, signal, time
from meminject.core import _interrupts as interrupts
interrupts.install()

def signal_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary
"""


def _run(body: str) -> list[str]:
    code = _PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_a_signal_inside_a_held_block_is_raised_when_the_block_ends():
    out = _run(
        """
        try:
            with interrupts.held():
                signal_self(signal.SIGINT)
                print("block-finished")
            print("not-reached")
        except KeyboardInterrupt:
            print("raised-after")
        """
    )
    assert out == ["block-finished", "raised-after"]


def test_a_second_signal_during_the_cleanup_of_the_first_does_not_cut_the_cleanup_short():
    # The worker's case: the terminal's Ctrl-C stops it, and the coordinator's SIGTERM arrives
    # while it waits (held) for its writer; the cleanup after that wait must still run.
    out = _run(
        """
        try:
            signal_self(signal.SIGINT)
        except KeyboardInterrupt:
            with interrupts.held():
                signal_self(signal.SIGTERM)
                print("first-cleanup")
            print("second-cleanup")
        """
    )
    assert out == ["first-cleanup", "second-cleanup"]


def test_a_held_block_inside_another_raises_only_when_the_outer_one_ends():
    out = _run(
        """
        try:
            with interrupts.held():
                with interrupts.held():
                    signal_self(signal.SIGINT)
                    print("inner")
                print("outer-rest")
        except KeyboardInterrupt:
            print("raised-after")
        with interrupts.held():  # the handlers are back: a fresh block holds again, and no re-raise of the old signal
            print("after")
        """
    )
    assert out == ["inner", "outer-rest", "raised-after", "after"]
