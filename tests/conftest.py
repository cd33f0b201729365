"""Shared fixtures: offline, composed from the real configs, models loaded once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _variable in ("MLFLOW_TRACKING_URI", "MEMINJECT_STORAGE"):  # a developer's own stores stay out of the tests
    os.environ.pop(_variable, None)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEMINJECT_TEST_DATA", ROOT.parent / "shared" / "data")).resolve()
os.environ.setdefault("MEMINJECT_DATA_DIR", str(SHARED_DATA))
torch.set_grad_enabled(False)
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N processes share the cores, one thread each
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the processes a test starts


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "handwritten_obscure_explicit_data.csv").exists():
        pytest.skip(f"the paper's data is not at {SHARED_DATA}")
    return SHARED_DATA


def compose(*overrides: str):
    """The typed run config of the real ``conf/`` with these overrides (composed once per process)."""
    from meminject.config import load_run_config

    return load_run_config(list(overrides))


@pytest.fixture(scope="session")
def tiny_cfg():
    return compose("model=tiny", "model.device=cpu", "tracking.enabled=false")


@pytest.fixture(scope="session")
def tiny(tiny_cfg):
    from meminject.engine._models import load_model

    return load_model(tiny_cfg.model)


@pytest.fixture(scope="session")
def tiny_paper():
    from meminject.engine._models import load_model

    return load_model(compose("model=tiny", "model.device=cpu", "model.weights=paper").model)


@pytest.fixture(scope="session")
def demo(tiny_cfg):
    from meminject.data._dataset import load_dataset

    return load_dataset(tiny_cfg.data)


@pytest.fixture(scope="session")
def smol():
    from meminject.engine._models import load_model

    return load_model(compose("model=smollm2-135m", "model.device=cpu", "model.weights=raw").model)


@pytest.fixture()
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


# ---------------------------------------------------------------- shared helpers (import from conftest)

TINY = ["model=tiny", "model.device=cpu", "data.limit=6"]


def env(**extra: str) -> dict[str, str]:
    """The environment of a meminject subprocess: offline, unbuffered, one thread each."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def _cli(args: tuple, base_env: dict[str, str] | None, trial_delay_s: float) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``meminject ARGS`` in a child process; with
    ``trial_delay_s`` through tests/_slow_meminject.py, whose trials (and workers') wait that long."""
    child_env = dict(env() if base_env is None else base_env)
    if not trial_delay_s:
        return [sys.executable, "-m", "meminject", *map(str, args)], child_env
    from _slow_meminject import DELAY_ENV, MODULE

    child_env[DELAY_ENV] = str(trial_delay_s)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), child_env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", MODULE, *map(str, args)], child_env


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = False,
    trial_delay_s: float = 0,
) -> subprocess.CompletedProcess:
    """``python -m meminject ARGS`` in ``cwd`` to its end, stdout and stderr captured apart (text).
    ``env``: the whole environment (default :func:`env`); ``check``: assert it exited 0, showing
    the end of its output otherwise; ``trial_delay_s``: slow trials (tests/_slow_meminject.py)."""
    cmd, child_env = _cli(args, env, trial_delay_s)
    proc = subprocess.run(cmd, cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    return proc


def start_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    trial_delay_s: float = 0,
    stderr=subprocess.STDOUT,
    **popen_kwargs,
) -> subprocess.Popen:
    """``python -m meminject ARGS`` started in ``cwd``: stdout piped (text), stderr into it unless
    ``stderr=subprocess.PIPE``; ``env`` and ``trial_delay_s`` as for :func:`run_cli`; other
    keywords go to ``Popen`` (``start_new_session``, ``preexec_fn``)."""
    cmd, child_env = _cli(args, env, trial_delay_s)
    return subprocess.Popen(
        cmd, cwd=cwd, env=child_env, stdout=subprocess.PIPE, stderr=stderr, text=True, **popen_kwargs
    )


def without_stages(lines: list[str]) -> list[str]:
    """Output lines less the stage lines of the steps that ran (``loading model … …``, ``clean pass: … …``)."""
    return [line for line in lines if not (line.endswith(" …") and not line.startswith("meminject:"))]


def sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        *TINY,
        f"storage={tmp_path / 'optuna.journal'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]


def load(tmp_path: Path, name: str):
    import optuna

    from meminject.store._storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / "optuna.journal")))


def meminject_experiments(client, study: str | None = None) -> list[str]:
    """Ids of meminject's experiments in a store (``meminject/sweep/<study>`` per study,
    ``meminject/eval``, ``meminject/inspect``); ``study``: only that study's."""
    wanted = (
        (lambda name: name == f"meminject/sweep/{study}") if study else (lambda name: name.startswith("meminject/"))
    )
    return [e.experiment_id for e in client.search_experiments() if wanted(e.name)]


def mlflow_runs(tmp_path_or_uri, role: str | None = None, study: str | None = None):
    """Every run of meminject's experiments (``role``: only 'sweep' or 'trial' runs; ``study``: one study's)."""
    from mlflow.tracking import MlflowClient

    uri = (
        str(tmp_path_or_uri)
        if str(tmp_path_or_uri).startswith(("sqlite:", "http:", "postgresql"))
        else f"sqlite:///{Path(tmp_path_or_uri) / 'mlflow.db'}"
    )
    client = MlflowClient(tracking_uri=uri)
    experiments = meminject_experiments(client, study)
    assert experiments, f"no meminject experiment in {uri}"
    runs = client.search_runs(experiments, max_results=10_000)
    return [r for r in runs if role is None or r.data.tags.get("meminject.role") == role]


def complete_points(study) -> Counter:
    from optuna.trial import TrialState

    return Counter(json.dumps(t.params, sort_keys=True) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def make_evaluator(model, dataset, **overrides):
    """An Evaluator with the conf/ defaults (conf/perf/default.yaml, top_k, metric), overridden."""
    from meminject.engine._evaluation import Evaluator

    cfg = compose("model=tiny", "model.device=cpu")
    perf = cfg.perf
    defaults = {
        "max_batch_tokens": int(perf.max_batch_tokens),
        "padding_side": str(perf.padding_side),
        "top_k": int(cfg.top_k),
        "prefix_cache_bytes": int(float(perf.prefix_cache_mb) * 2**20),
        "trials_per_forward": 1 if str(perf.trials_per_forward) == "auto" else int(perf.trials_per_forward),
        "max_padding": float(perf.max_padding),
        "answer_metric": str(cfg.metric.answer),
    }
    return Evaluator(model, dataset, **{**defaults, **overrides})
