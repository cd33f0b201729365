"""MLflow tracking: SQLite store and artifact root inside ``mlruns/`` by default.

Every store call goes through :class:`~meminject._store_retry.RetryingClient`: transient
errors (a locked SQLite file, a busy server) are retried for ``tracking.retry_s`` seconds, then
reported in one line. Credentials in URLs are hidden by :mod:`meminject.redaction`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._retry import DEFAULT_RETRY_S, RetryingClient, creation_lock, open_client, quiet_run_links, retrying, sqlite_path
from ..core._errors import first_line as _first_line  # kept under its old name
from ..config._compose import flat_config
from ..core._errors import ConfigError, TrackingError
from ..core._paths import mlruns_dir
from ..core._redaction import redact, redacted_config, redacted_container
from ..core._secrets import TRACKING_ENV, remember, unmask
from ._probe import probe_database
from ._schema import TAG_COMMAND, TAG_FAILURE, TAG_ROLE, TAG_STUDY, TAG_TRIAL_NUMBER

if TYPE_CHECKING:
    from ..config._schema import RunConfig

__all__ = [
    "tracking_uri",
    "redact",
    "redacted_config",
    "log_eval_run",
    "retry_seconds",
    "Tracker",
    "TrackingError",
    "EXPERIMENT_KIND",
    "experiment_name",
    "studies_prefix",
]

# MLflow 3 opens an experiment on its GenAI overview unless it is marked as model development.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


# Importing this module is enough: cli.py's `inspect` makes its own MlflowClient.
quiet_run_links()


def tracking_uri(run: RunConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store in this folder's
    ``mlruns/``. A redacted ``tracking.uri`` (as a study stores it) takes its password from
    this process or ``$MLFLOW_TRACKING_URI`` (:func:`~meminject.core._secrets.unmask`)."""
    if run.tracking.uri:
        uri = unmask(run.tracking.uri, TRACKING_ENV, "tracking.uri")
        remember(uri)  # this process's in-process worker reads the redacted copy its study keeps
        return uri
    return (
        os.environ.get(TRACKING_ENV) or f"sqlite:///{mlruns_dir(create=False) / 'mlflow.db'}"
    )  # created by the Tracker, when a run is written


def experiment_name(run: RunConfig, *, study: str | None = None, command: str | None = None) -> str:
    """The MLflow experiment of a study's runs (``<tracking.experiment>/sweep/<study>``: one
    ranked table per study, never two datasets' gains side by side) or of one command's runs
    (``<tracking.experiment>/eval``, ``/inspect``)."""
    if study:
        return f"{studies_prefix(run)}{study}"
    if not command:
        raise ValueError("experiment_name needs a study or a command")
    return f"{run.tracking.experiment}/{command}"


def studies_prefix(run: RunConfig) -> str:
    """What every study's experiment name starts with (``meminject/sweep/``)."""
    return f"{run.tracking.experiment}/sweep/"


def retry_seconds(run: RunConfig) -> float:
    """``tracking.retry_s``: how long transient store errors are retried (checked when built)."""
    return run.tracking.retry_s


def _artifact_root(uri: str | None = None) -> str:
    """Artifacts live next to a SQLite store (``mlruns/artifacts`` for the default one)."""
    path = sqlite_path(uri) if uri else None
    if path is not None:
        return (path.resolve().parent / "artifacts").as_uri()
    return (mlruns_dir() / "artifacts").as_uri()


def _experiment_id(client: Any, name: str, uri: str, retry_s: float | None = None) -> str:
    """The experiment's id, created on first use; under the SQLite store's creation lock so
    that workers starting together neither race on it nor on a fresh database's tables."""
    if not isinstance(client, RetryingClient):  # cli.py's inspect passes a plain MlflowClient
        client = RetryingClient(client, uri, DEFAULT_RETRY_S if retry_s is None else retry_s)
    with creation_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        kwargs = {} if uri.startswith("http") else {"artifact_location": _artifact_root(uri)}
        try:
            return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]), **kwargs)
        except TrackingError:
            raise  # the store stayed unavailable: asking again would wait as long once more
        except Exception:  # noqa: BLE001 - another worker (or an mlflow server's client) created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def log_eval_run(
    cfg: RunConfig,
    result: Any,  # noqa: ARG001 - callers pass the result
    summary: dict,
    out_dir: Path,
    started_ms: int | None = None,
    ended_ms: int | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """``meminject eval``'s run: the same flat, redacted config a sweep's trial run logs, with
    the hook it touched, the summary as metrics, and the tables as artifacts."""
    tracker = Tracker(tracking_uri(cfg), experiment_name(cfg, command="eval"), retry_seconds(cfg))
    params = {
        **flat_config(redacted_container(cfg)),
        "model": summary["model"],
        "weights": summary["weights"],
        "dataset": summary["dataset"],
        "dataset_hash": summary["dataset_hash"],
        "n_prompts": summary.get("n_prompts", "-"),
        "hook": summary["hook"],
        "memory.word_source": summary.get("word_source", "-"),
    }
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    artifacts = {name: out_dir / name for name in ("per_prompt.csv", "config.yaml", "summary.json")}
    name = f"eval {summary['model']} L{cfg.injection.layer} τ{cfg.injection.tweak:g}"
    tags = {TAG_COMMAND: "eval", **(tags or {})}  # meminject apply: command apply, and the injection it applied
    return tracker.record_run(name, tags, params, metrics, artifacts, started_ms, ended_ms)


def probe_server(uri: str, timeout: float = 10.0) -> None:
    """An HTTP tracking server must answer ``/health`` now: refused before any trial starts,
    in one line, instead of MLflow's minutes of retries and a traceback."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answers (an auth proxy or an older server): MLflow's own calls will tell more
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(
            f"tracking server {redact(uri)} is unreachable ({reason}); start it (mlflow server --host 127.0.0.1 --port PORT ...) "
            "or set tracking.uri (tracking.enabled=false to run without MLflow)"
        ) from exc


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit, when meminject runs from a git checkout."""
    import subprocess

    from ..core._paths import project_root

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    """MLflow bookkeeping of one sweep: a parent run per study, a nested run per trial.

    Uses ``MlflowClient`` with explicit run ids (no global active run), so several worker
    processes can attach runs to one parent through ``mlflow.parentRunId``.
    """

    def __init__(self, uri: str, experiment: str, retry_s: float = DEFAULT_RETRY_S):
        from mlflow.exceptions import MlflowException

        probe_server(uri)
        probe_database(uri)  # a wrong password: one line now, not MLflow's ~100 s of retries
        store = sqlite_path(uri)
        if store is not None:  # ./mlruns (or the store's folder) exists once a run is written, not before
            store.parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.experiment = experiment
        self.retry_s = float(retry_s)
        # every call (also search.py's tracker.client.get_run/set_tag) retries transient errors
        self.client = open_client(uri, self.retry_s)
        self._artifact_uris: dict[str, str] = {}  # trial run id -> its artifact URI, until the run is finished
        try:
            self.experiment_id = _experiment_id(self.client, experiment, uri)
        except MlflowException as exc:
            raise ConfigError(
                f"tracking store {redact(uri)} refused the experiment {experiment!r}: {redact(_first_line(exc))}"
            ) from exc

    @classmethod
    def from_config(cls, cfg: RunConfig, *, study: str | None = None, command: str | None = None) -> "Tracker | None":
        """The tracker of a study's runs (``study=``) or of one command's (``command=``): each
        has its own experiment (:func:`experiment_name`); None with ``tracking.enabled=false``."""
        if not cfg.tracking.enabled:
            return None
        return cls(tracking_uri(cfg), experiment_name(cfg, study=study, command=command), retry_seconds(cfg))

    def check_reachable(self) -> None:
        """Fail before any trial when the tracking server cannot be reached."""
        self.client.search_runs([self.experiment_id], max_results=1)

    def start_parent(self, study_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=f"sweep {study_name}", tags={TAG_ROLE: "sweep", TAG_STUDY: study_name, **tags}
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def follow(self, parent_run_id: str | None) -> None:
        """Put the runs still to come beside the study's parent run: a study resumed from a store
        of an older meminject keeps its runs in the one experiment it began in."""
        if parent_run_id:
            self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def start_trial(
        self,
        parent_run_id: str,
        trial_number: int,
        study_name: str,
        tags: dict[str, str],
        site: str | None = None,
        started_ms: int | None = None,
    ) -> str:
        """A nested trial run, named by its ``site`` (:func:`site_label`) when known: the runs
        table then reads as the sites it holds, not as trial numbers. ``started_ms``: when the
        trial began (a run written after the trial, by the writer process)."""
        run = self.client.create_run(
            self.experiment_id,
            start_time=started_ms,
            run_name=site or f"trial {trial_number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                TAG_ROLE: "trial",
                TAG_STUDY: study_name,
                TAG_TRIAL_NUMBER: str(trial_number),
                **tags,
            },
        )
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def finish_trial(
        self,
        run_id: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        artifacts: dict[str, str | Path],
        terminate: bool = True,
    ) -> None:
        """Params and metrics in one batch, artifacts (texts, or files to copy) in one upload."""
        import tempfile
        import time as _time

        from mlflow.entities import Metric, Param

        now = int(_time.time() * 1000)
        finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        param_items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        self.client.log_batch(
            run_id, metrics=[Metric(k, v, now, 0) for k, v in finite.items()], params=param_items[:100]
        )
        if len(param_items) > 100:
            self.log_params(run_id, dict((p.key, p.value) for p in param_items[100:]))
        uri = self._artifact_uris.pop(run_id, None)
        if uri is None:
            with tempfile.TemporaryDirectory() as folder:
                _write_artifacts(Path(folder), artifacts)
                self.client.log_artifacts(run_id, folder)
        else:  # the run's artifact store, known since its creation: no get_run round trip per trial
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            repository = get_artifact_repository(uri, tracking_uri=self.uri)
            if isinstance(
                repository, LocalArtifactRepository
            ):  # a folder here (the default store): written in place, no copy
                Path(repository.artifact_dir).mkdir(parents=True, exist_ok=True)
                _write_artifacts(Path(repository.artifact_dir), artifacts)
            else:
                with tempfile.TemporaryDirectory() as folder:
                    _write_artifacts(Path(folder), artifacts)
                    retrying(lambda: repository.log_artifacts(folder), "log_artifacts", self.uri, self.retry_s)
        if terminate:
            self.client.set_terminated(run_id, "FINISHED")

    def record_run(
        self,
        name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        metrics: dict[str, Any],
        artifacts: dict[str, str | Path],
        started_ms: int | None = None,
        ended_ms: int | None = None,
    ) -> str:
        """A whole run of one command (``eval``, ``inspect``): created, filled as a trial's is,
        and closed; a failure part-way closes it FAILED. ``started_ms`` and ``ended_ms`` are when
        the work began and ended (the run's duration is then the work's, not the logging's)."""
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags, start_time=started_ms)
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        try:
            self.finish_trial(run.info.run_id, params, metrics, artifacts, terminate=False)
            self.client.set_terminated(run.info.run_id, "FINISHED", end_time=ended_ms)
        except BaseException:
            try:  # once, without retries: after a TrackingError they would wait as long again
                self.client.unwrapped.set_terminated(run.info.run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
        return run.info.run_id

    def fail(self, run_id: str, reason: str) -> None:
        self._artifact_uris.pop(run_id, None)
        try:
            self.client.set_tag(run_id, TAG_FAILURE, reason[:500])
            self.client.set_terminated(run_id, "FAILED")
        except Exception:  # noqa: BLE001 - best effort while failing
            pass

    def log_text(self, run_id: str, name: str, text: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_table(self, run_id: str, frame: Any, name: str) -> None:
        """A table artifact (``mlflow.log_table``): the MLflow UI renders it as a table."""
        shown = frame.astype(object).where(frame.notna(), None)  # JSON: no NaN, no numpy scalars
        self.client.log_table(
            run_id, data=shown.map(lambda v: v.item() if hasattr(v, "item") else v), artifact_file=name
        )

    def describe(self, run_id: str, text: str) -> None:
        """The run's description (shown on its page in the MLflow UI)."""
        self.client.set_tag(run_id, "mlflow.note.content", text[:5000])

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)


def _write_artifacts(folder: Path, artifacts: dict[str, str | Path]) -> None:
    import shutil

    for name, content in artifacts.items():
        if isinstance(content, Path):
            shutil.copyfile(content, folder / name)
        else:
            (folder / name).write_text(content)
