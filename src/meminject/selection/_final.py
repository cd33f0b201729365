"""The end of a sweep: the ranked sites, control gaps and figures, written and put on the
study's MLflow parent run (with its description and best-trial metrics)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..core._errors import first_line
from ..core._paths import outputs_dir
from ..runner._parent import best_csv
from ..search._models import model_sizes
from ..search._study import ATTR_PARENT, stored_spec
from ..tracking._schema import TAG_BEST_PARAMS, site_label
from ..tracking._tracker import Tracker, redact
from ._results import control_gaps, n_layers_of, ranked_sites

__all__ = ["finalize", "study_figures"]

log = logging.getLogger("meminject")


def finalize(study: optuna.Study, tracker: Tracker | None, interrupted: bool = False) -> Path:
    """Write the ranked sites (and control gaps, figures); put them on the parent run.
    ``interrupted``: after Ctrl-C, whose one line is all the user sees (no figure notes)."""
    table = ranked_sites(study)
    path = best_csv(study.study_name)
    table.to_csv(path, index=False)
    gaps = control_gaps(table)
    gaps_path = outputs_dir("best") / f"{study.study_name}-control-gaps.csv"
    if gaps is not None:
        gaps.to_csv(gaps_path, index=False)
    figures = []
    level = log.level
    try:
        if interrupted:
            log.setLevel(max(level, logging.WARNING))
        figures = study_figures(study, table)
    except Exception as exc:  # noqa: BLE001 - a figure must never cost the results
        log.warning("note: sweep figures skipped (%s)", first_line(exc))
    finally:
        log.setLevel(level)
    parent = study.user_attrs.get(ATTR_PARENT)
    if tracker is not None and parent:
        try:
            _log_results(study, tracker, parent, path, gaps_path if gaps is not None else None, figures)
        except Exception as exc:  # noqa: BLE001 - the tables are on disk; the next run logs them again
            log.warning(
                "note: the results are in %s, but logging them on the MLflow parent run failed (%s)",
                path,
                redact(first_line(exc)),
            )
    return path


def study_figures(study: optuna.Study, table: Any = None, folder: Path | None = None) -> list[Path]:
    """The sweep's figures (heatmap, scatter, Optuna's views) into ``folder`` (default
    ``outputs/figures/<study>``), on every layer of the model and named after its objective."""
    from ..views._figures import sweep_figures

    table = ranked_sites(study) if table is None else table
    folder = outputs_dir("figures", study.study_name) if folder is None else Path(folder)
    spec = stored_spec(study)
    models = table["model"].astype(str).unique() if spec is not None and "model" in table.columns else []
    layers_of = {m: n_layers_of(spec, m) or 0 for m in models} if len(models) > 1 else None  # a model axis
    figures = sweep_figures(study, table, folder, n_layers=_n_layers(study), target=_target(study), layers_of=layers_of)
    if spec is not None and spec.sampler == "adaptive":  # which cells each round visited, at what fidelity
        from ..views._phases import phase_figure, phase_frame

        title = f"{study.study_name}: where the adaptive search looked ({_target(study)})"
        path = phase_figure(
            phase_frame(study.get_trials(deepcopy=False)),
            folder / "adaptive_phases.png",
            title,
            maximize=spec.direction == "maximize",
        )
        figures += [path] if path is not None else []
    return figures


def _n_layers(study: optuna.Study) -> int:
    """The model's layer count from the stored spec (configs only, no weights): the figures'
    layer axis shows every layer, explored or not. 0 when unknown (then: the layers seen)."""
    from ..config import load_run_config

    spec = stored_spec(study)
    try:
        return int(model_sizes(spec, load_run_config(spec.overrides))["n_layers"]) if spec else 0
    except Exception:  # noqa: BLE001 - e.g. a local model config gone since the sweep
        return 0


def _target(study: optuna.Study) -> str:
    """The objective as figures and descriptions name it: sweeps run on the train part."""
    spec = stored_spec(study)
    objective = spec.objective if spec else "mean_gain"
    return f"train {objective.replace('_', ' ')}"


def _description(study: optuna.Study, table: Any) -> str:
    """The parent run's description (``mlflow.note.content``): study, objective, best site."""
    spec = stored_spec(study)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    lines = [
        f"**Study** `{study.study_name}`"
        + (
            f": sweep `{spec.name}`, {spec.sampler} sampler, {n_complete} of {spec.n_trials or 'all'} trials complete."
            if spec
            else "."
        )
    ]
    if spec:
        objective = " and ".join(f"{d} `{o}`" for o, d in zip(spec.all_objectives(), spec.all_directions())) + (
            f" subject to `{spec.constraint}`" if spec.constraint else ""
        )
        lines.append(
            f"**Objective**: {objective} (on the train part of the prompts); searched: "
            + ", ".join(f"`{k}={v}`" for k, v in spec.params.items())
            + "."
        )
    if not table.empty:
        best = table.iloc[0]
        lines.append(
            f"**Best site**: {site_label(best.to_dict())}, {_target(study)} {float(best['mean_gain']):+.4f} (trial {int(best['best_trial'])}). "
            "Ranked sites: the `ranked_sites.json` table artifact; figures under `figures/`. `meminject best` judges the top sites on held-out prompts."
        )
    return "\n\n".join(lines)


def _log_results(
    study: optuna.Study, tracker: Tracker, parent: str, path: Path, gaps_path: Path | None, figures: list[Path]
) -> None:
    import pandas as pd

    table = pd.read_csv(path) if path.stat().st_size > 1 else pd.DataFrame()
    tracker.describe(parent, _description(study, table))
    if not table.empty:
        # rendered as a table in the MLflow UI, whose table reads a dotted name as a nested field: short names
        tracker.log_table(parent, table.rename(columns=lambda c: c.split(".")[-1]), "ranked_sites.json")
    tracker.log_file(parent, path)
    if gaps_path is not None:
        tracker.log_file(parent, gaps_path)
    for figure in figures:
        tracker.log_file(parent, figure, "figures")
    if len(study.directions) > 1:
        tracker.log_metrics(
            parent,
            {
                "n_pareto": len(study.best_trials),
                "n_complete": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
            },
        )
        return
    with contextlib.suppress(ValueError):  # no complete trial yet
        best = study.best_trial
        tracker.log_metrics(
            parent,
            {
                "best_value": best.value,
                "best_mean_gain": best.user_attrs.get("mean_gain", best.value),
                "best_trial": best.number,
                "n_complete": len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
            },
        )
        tracker.client.set_tag(parent, TAG_BEST_PARAMS, json.dumps(best.params, default=str))
