"""``meminject best``: a study's ranked sites (float32-rechecked after a lower-precision sweep,
τ edges marked) and, with a train/held-out split, the top sites judged on held-out prompts
against the controls; its tables and figures go on the study's MLflow parent run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from optuna.trial import TrialState

from ..config import load_run_config
from ..core._errors import ConfigError
from ..core._paths import outputs_dir
from ..tracking._tracker import Tracker
from ..views._cross_model import (
    depth_curve,
    depth_figure,
    format_per_model,
    heldout_gains,
    per_model_top,
    several_models,
)
from ..views._figures import pareto_figure
from ..search._adaptive import searched_params
from ..search._edges import edge_notes, with_edges
from ..views._specific_figure import specific_curve, specific_figure
from ..selection._heldout import check_controls, format_heldout, heldout_report
from ..selection._recheck import float32_recheck
from ..runner._parent import parent_tracker
from ..selection._plausible import check_values
from ..selection._results import distinct_sites, ranked_sites
from ..views._tables import format_table
from ..search._settings import SweepSpec
from ..search._keys import BEST_SETTINGS, as_bool, as_positive_int, parse_settings
from ..store._storage import load_study
from ..search._study import ATTR_PARENT, stored_spec
from ..runner._trial import TrialRunner
from ..tracking._schema import TAG_HOLDS, TAG_VERDICTS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["cmd_best", "run_best"]


def cmd_best(args: Sequence[str]) -> int:
    """Ranked sites of a study; with a train/held-out split, the top sites judged on held-out prompts."""
    run_best(args)
    return 0


def run_best(args: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``meminject best``'s work (printed and written as the command does); returns its table
    and the held-out report (None when there was no held-out check)."""
    settings, top, distinct, heldout, controls, n_boot = _best_settings(args)
    study = load_study(settings.get("study"), settings.get("storage"))
    name = study.study_name
    spec = stored_spec(study)
    check_values(study)  # a corrupt value would rank first
    ranked = ranked_sites(study)
    multi = spec is not None and spec.multi and not ranked.empty
    table, unit = _shown_sites(ranked, spec, multi, distinct)
    base = load_run_config(spec.overrides) if spec else None
    lower = base is not None and base.model.dtype != "float32"
    rechecked = lower and not multi and not table.empty  # a lower-precision sweep ranks; float32 decides its top sites
    if rechecked:
        table = float32_recheck(spec, table, base.model.dtype, top)
    if spec is not None:  # a top τ at the end of its searched range is marked, and said below
        table = with_edges(table, searched_params(spec))
    path = outputs_dir("best") / f"{name}{'-pareto' if multi else '-distinct' if distinct else ''}.csv"
    table.to_csv(path, index=False)
    print(
        f"study {name}: {len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))} complete trials, {len(table)} {unit}"
    )
    if rechecked:
        print(
            f"note: the sweep ran in {base.model.dtype}; its top {min(top, len(table))} sites were re-evaluated in float32 on the same prompts and are ranked by that (column {base.model.dtype}: the sweep's value; sweep_rank: its rank)"
        )
    print(format_table(table.head(top)))
    for line in edge_notes(table.head(top), searched_params(spec)) if spec is not None else []:
        print(line)
    if several_models(table):  # a model axis: each model's own ranking too, and its own held-out check
        print(f"\nwithin each model (top {top}):\n{format_per_model(table, top)}")
    print(f"table: {path}")
    parent = study.user_attrs.get(ATTR_PARENT)
    tracker = parent_tracker(base, parent, name) if base is not None and parent else None
    if tracker is not None:
        tracker.log_file(parent, path)
    has_split = base is not None and base.data.split is not None and base.data.part == "train"
    if heldout == "true" and not has_split:
        raise ConfigError(
            f"study {name!r} was not run on a train part (data.split, data.part=train); held-out evaluation is impossible"
        )
    if table.empty or heldout == "false" or not has_split:
        return table, None
    runner = TrialRunner()  # one clean pass per model for the held-out check and the depth figure
    report, report_path = _heldout_check(name, spec, base, per_model_top(table, top), controls, n_boot, multi, runner)
    figure = pareto_figure(ranked, report, outputs_dir("figures", name) / "pareto_front.png", spec) if multi else None
    if figure is not None:
        print(f"figure: {figure}")
    if tracker is not None and parent:
        _log_heldout(tracker, parent, report, report_path, figure)
    specific = _specific_figure(name, ranked, report)
    if specific is not None and tracker is not None and parent:
        tracker.log_file(parent, specific, "figures")
    depth = _depth_figure(name, spec, ranked, report, runner, settings.get("depth_figure", "auto"))
    if depth is not None and tracker is not None and parent:
        tracker.log_file(parent, depth, "figures")
    return table, report


def _specific_figure(name: str, ranked: pd.DataFrame, report: pd.DataFrame | None) -> Path | None:
    """Correct against shuffled gain by layer, when the study measured the specific gain."""
    curve = specific_curve(ranked)
    if curve.empty:
        return None
    title = f"{name}\ncorrect vs another prompt's memory, by layer (best τ for the specific gain on the train part)"
    path = specific_figure(curve, report, outputs_dir("figures", name) / "specific_by_layer.png", title)
    print(f"figure: {path}")
    return path


def _depth_figure(name: str, spec: SweepSpec, ranked: pd.DataFrame, report: pd.DataFrame, runner, setting: str):
    """The cross-model figure (gain against relative depth, held-out too), when the study searched
    where the memory goes (a layer or depth axis) over at least 2 layers; ``depth_figure=false`` skips it."""
    searched = {"injection.layer", "injection.depth"} & set(spec.params)
    curve = depth_curve(ranked)
    wanted = setting == "true" or (setting == "auto" and searched and curve.groupby("model").size().max() >= 2)
    if curve.empty or not wanted:
        return None
    print(f"\nheld-out gain of the best τ at each of {len(curve)} layers (the depth figure):", file=sys.stderr)
    # in float32, as the held-out check: a bfloat16 line put best's judged sites (crosses) off it
    precise = [o for o in spec.overrides if not o.startswith("model.dtype=")] + ["model.dtype=float32"]
    curve["heldout_gain"] = heldout_gains(precise, curve, list(spec.params), runner)
    curve.to_csv(outputs_dir("best") / f"{name}-depth.csv", index=False)
    models = ", ".join(str(m) for m in curve["model"].unique())
    title = f"{name}\nmean gain by relative depth: {models} (best τ per layer on the train part)"
    path = depth_figure(curve, report, outputs_dir("figures", name) / "gain_by_depth.png", title)
    print(f"figure: {path}")
    return path


def _best_settings(args: Sequence[str]) -> tuple[dict[str, str], int, bool, str, list[str], int]:
    """best's keys, each checked before any work: (settings, top, distinct, heldout, controls, bootstrap)."""
    settings, _ = parse_settings(args, BEST_SETTINGS, "best")
    top = as_positive_int(settings.get("top", 10), "top")
    distinct = as_bool(settings.get("distinct", "true"), "distinct")
    heldout = settings.get("heldout", "auto").lower()
    if heldout not in ("auto", "true", "false"):
        raise ConfigError(f"heldout={heldout!r}: use true, false or auto")
    controls = [c for c in settings.get("controls", "pos,pos_matched,random_vector").split(",") if c]
    check_controls(controls)  # refused before any work
    n_boot = as_positive_int(settings.get("bootstrap", 2000), "bootstrap")
    return settings, top, distinct, heldout, controls, n_boot


def _shown_sites(ranked: pd.DataFrame, spec: SweepSpec | None, multi: bool, distinct: bool) -> tuple[pd.DataFrame, str]:
    """The sites best shows, and what it calls them."""
    if multi:  # every Pareto-optimal site: each τ of a site is its own trade-off
        table = ranked[ranked["pareto"]].reset_index(drop=True)
        table["rank"] = range(1, len(table) + 1)
        return (
            table,
            f"Pareto-optimal sites ({', '.join(f'{d} {o}' for o, d in zip(spec.all_objectives(), spec.all_directions()))})",
        )
    if distinct:
        return distinct_sites(ranked), "sites (best τ of each)"
    return ranked, "distinct sites"


def _heldout_check(
    name: str, spec: SweepSpec, base, sites: pd.DataFrame, controls: list[str], n_boot: int, multi: bool, runner=None
) -> tuple[pd.DataFrame, Path]:
    """Judge the top sites on the held-out prompts (in float32); write and print the report."""
    overrides = list(spec.overrides)
    if base.model.dtype != "float32":  # the verdicts are float32's too
        print(f"note: the sweep ran in {base.model.dtype}; the held-out check re-evaluates its sites in float32")
        overrides.append("model.dtype=float32")
    report = heldout_report(
        overrides, sites, controls=controls, n_boot=n_boot, seed=spec.seed, axes=list(spec.params), runner=runner
    )
    report_path = outputs_dir("best") / f"{name}-heldout.csv"
    report.to_csv(report_path, index=False)
    print(
        f"\nheld-out check of the top {len(report)} sites ({int(report['heldout_prompts'].iloc[0])} held-out prompts; 95% bootstrap intervals):"
    )
    print(format_heldout(report, controls, with_damage=multi))
    print(f"held-out table: {report_path}")
    return report, report_path


def _log_heldout(tracker: Tracker, parent: str, report: pd.DataFrame, report_path: Path, figure: Path | None) -> None:
    """The held-out report, its figure and one verdict per site on the MLflow parent run."""
    tracker.log_file(parent, report_path)
    if figure is not None:
        tracker.log_file(parent, figure, "figures")
    verdicts = [
        f"{int(r['rank'])}: {r['model'] + ' ' if several_models(report) else ''}L{r['injection.layer']} τ={float(r['injection.tweak']):.3g} {r['memory.encoding']}/{r['memory.type']}: {r['verdict']}"
        for _, r in report.iterrows()
    ]
    tracker.client.set_tag(parent, TAG_VERDICTS, "\n".join(verdicts)[:5000])
    tracker.client.set_tag(parent, TAG_HOLDS, str(int((report["verdict"] == "holds").sum())))
