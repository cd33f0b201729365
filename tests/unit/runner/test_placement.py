"""workers=N on a machine with several GPUs: one worker per device, round robin, said in one
line; tested with a fake device count (no GPU needed)."""

from __future__ import annotations

import logging
import os

import pytest

from meminject.runner import _spawn
from meminject.runner._spawn import placement


def test_workers_go_round_robin_over_the_gpus_and_the_line_says_where():
    env, line = placement(4, 2, None)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["0", "1", "0", "1"]
    assert "worker 0 → GPU 0" in line and "worker 3 → GPU 1" in line and "some share one" in line


def test_an_existing_cuda_visible_devices_is_respected():
    env, line = placement(3, 2, "2,3")  # the parent sees physical devices 2 and 3 as cuda:0 and cuda:1
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["2", "3", "2"]
    env, line = placement(2, 2, "GPU-aaaa, GPU-bbbb")  # UUIDs work the same way
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["GPU-aaaa", "GPU-bbbb"]
    assert "share" not in line


def test_without_gpus_the_cpu_threads_are_shared_out():
    env, line = placement(2, 0, None)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert all(e["OMP_NUM_THREADS"] == e["MEMINJECT_THREADS"] == threads for e in env) and len(env) == 2
    assert "CUDA_VISIBLE_DEVICES" not in env[0] and "on the CPU" in line


def test_spawn_workers_starts_each_worker_on_its_device(monkeypatch, caplog):
    import torch

    started = []

    class FakeProcess:
        returncode = 0

        def __init__(self, cmd, env, **kwargs):
            started.append(env)

        def poll(self):
            return 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(_spawn.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(_spawn, "open_storage", lambda url: None)
    monkeypatch.setattr(_spawn.optuna, "load_study", lambda **kwargs: None)
    monkeypatch.setattr(_spawn, "_watch", lambda *args: None)
    with caplog.at_level(logging.INFO, logger="meminject"):
        _spawn.spawn_workers("s", "/tmp/none.journal", workers=3, total=6, progress=False)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in started] == ["0", "1", "2"]
    assert "workers on GPUs: worker 0 → GPU 0, worker 1 → GPU 1, worker 2 → GPU 2" in caplog.text


@pytest.mark.parametrize("workers", [1, 5])
def test_every_worker_gets_a_device(workers):
    env, _ = placement(workers, 4, "0,1,2,3")
    assert len(env) == workers and {e["CUDA_VISIBLE_DEVICES"] for e in env} <= {"0", "1", "2", "3"}


@pytest.mark.parametrize(
    "writer, cuda, kind",
    [
        ("auto", True, "process"),  # a GPU's trials take milliseconds: MLflow off their path
        ("auto", False, "inline"),  # on a CPU a writer process takes its CPU from the forward passes
        ("inline", True, "inline"),
        ("process", False, "process"),
    ],
)
def test_the_writer_follows_the_trials_device_unless_set(monkeypatch, writer, cuda, kind):
    import torch

    from meminject.config import load_run_config
    from meminject.runner._worker import writer_kind

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    base = load_run_config(["model=tiny", "model.device=auto", f"tracking.writer={writer}"])
    assert writer_kind(base) == kind
