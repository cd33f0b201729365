"""MLflow tracking: SQLite store and artifact root inside ``mlruns/`` by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .paths import mlruns_dir

__all__ = ["tracking_uri", "redact", "log_eval_run"]


def redact(url: str | None) -> str | None:
    """Hide the password in ``scheme://user:password@host`` URLs (logs, params, saved configs)."""
    if url is None:
        return None
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", str(url))


def tracking_uri(cfg: Any) -> str:
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    return f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def _artifact_root() -> str:
    return (mlruns_dir() / "artifacts").as_uri()


def _experiment_id(client: Any, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    kwargs = {} if uri.startswith("http") else {"artifact_location": _artifact_root()}
    try:
        return client.create_experiment(name, **kwargs)
    except Exception:  # noqa: BLE001 - another worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def log_eval_run(cfg: Any, result: Any, summary: dict, out_dir: Path) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, str(cfg.tracking.experiment), uri)
    run = client.create_run(experiment_id, run_name=f"eval {summary['model']} L{cfg.injection.layer} τ{cfg.injection.tweak}", tags={"meminject.command": "eval"})
    run_id = run.info.run_id
    try:
        params = {"model": summary["model"], "weights": summary["weights"], "dataset": summary["dataset"], "dataset_hash": summary["dataset_hash"], "hook": summary["hook"]}
        params.update({f"injection.{k}": v for k, v in cfg.injection.items()})
        params.update({f"memory.{k}": v for k, v in cfg.memory.items()})
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        for key, value in summary.items():
            if isinstance(value, (int, float)):
                client.log_metric(run_id, key, float(value))
        for name in ("per_prompt.csv", "config.yaml", "summary.json"):
            client.log_artifact(run_id, str(out_dir / name))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    del mlflow
    return run_id
