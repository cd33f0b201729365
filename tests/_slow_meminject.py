"""``python -m _slow_meminject ARGS``: ``python -m meminject ARGS`` with slow trials (tests only).

A trial of the tiny model takes ~0.1 s; the tests that interrupt, SIGKILL or outlive a worker
mid-sweep need a window to do it in. Here each batch of a worker's trials waits
``$MEMINJECT_TEST_TRIAL_DELAY_S`` seconds just before it is computed (its trials asked, their
MLflow runs started, their heartbeats beating), and the worker processes a sweep spawns run
through this module too. With ``$MEMINJECT_TEST_WRITER_DELAY_S`` the writer process of
``tracking.writer=process`` (spawned by multiprocessing, which imports this module as
``__mp_main__``) waits that long before each run it writes, so records stay pending. Nothing of it is in meminject itself. ``conftest.run_cli`` and
``start_cli`` with ``trial_delay_s=`` run it (tests/ on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

DELAY_ENV = "MEMINJECT_TEST_TRIAL_DELAY_S"
WRITER_DELAY_ENV = "MEMINJECT_TEST_WRITER_DELAY_S"
MODULE = "_slow_meminject"


class _Subprocess:
    """``subprocess`` for meminject.runner._spawn: its ``python -m meminject worker`` runs this module."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(cmd, *args, **kwargs):  # noqa: N802 - subprocess's name
        if list(cmd[1:3]) == ["-m", "meminject"]:
            cmd = [cmd[0], "-m", MODULE, *cmd[3:]]
        return subprocess.Popen(cmd, *args, **kwargs)


def install(delay_s: float) -> None:
    from meminject.runner import _spawn, _trial, _worker

    class SlowTrialRunner(_trial.TrialRunner):
        """The worker's runner (held-out checks and re-checks build their own, not slowed)."""

        def run_many(self, *args, **kwargs):
            time.sleep(delay_s)
            return super().run_many(*args, **kwargs)

    _worker.TrialRunner = SlowTrialRunner
    _spawn.subprocess = _Subprocess()


def install_writer_delay(delay_s: float) -> None:
    from meminject.runner import _writer

    write = _writer.write_record

    def slow_write(tracker, record):
        time.sleep(delay_s)
        return write(tracker, record)

    _writer.write_record = slow_write


if __name__ == "__mp_main__" and os.environ.get(WRITER_DELAY_ENV):  # the writer process
    install_writer_delay(float(os.environ[WRITER_DELAY_ENV]))

if __name__ == "__main__":
    install(float(os.environ[DELAY_ENV]))
    from meminject.cli import main

    sys.exit(main())
