"""``meminject export``: one ranked site of a study as a self-describing injection folder.

``export study=NAME [rank=1 | site=LABEL] [out=DIR]`` picks a site of ``meminject best``'s table
(the best τ of each site), rebuilds its trial's config, re-runs it on the study's own prompts
(the per-prompt P(answer) go beside the record as ``train_per_prompt.csv``, and give the train
gain's interval and, for ``scale=relative``, the residual norm that v was rescaled to) and writes
``injection.json`` (:mod:`meminject.engine._injection_file`). The held-out gains, specific gain,
verdict and control gaps come from ``best``'s held-out table when it has judged the site. The
file is logged as an artifact of the study's MLflow parent run, and that run and the trial's own
are tagged with the export. Without ``study``/``rank``/``site`` it lists what can be exported.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..config._point import relative_depth
from ..core._errors import ConfigError
from ..core._paths import outputs_dir
from ..engine._injection_file import InjectionRecord, ModelRecord, meminject_version, weights_fingerprint
from ..engine._plain import plain_model
from ..tracking._schema import COLUMNS, TAG_TRIAL_NUMBER, site_label
from ._stats import bootstrap_mean_ci
from ..search._study import ATTR_PARENT, stored_spec
from ..runner._parent import parent_tracker
from ..runner._trial import TrialRunner, trial_config

__all__ = ["export_site", "TAG_EXPORT"]

TAG_EXPORT = "meminject.export"  # on the parent run (one per rank: meminject.export.rank<N>) and the trial's run


def _pick(table: pd.DataFrame, settings: dict[str, str]) -> pd.Series:
    if "site" in settings:
        wanted = settings["site"].strip()
        labels = [site_label(row) for row in table.to_dict("records")]
        if wanted not in labels:
            raise ConfigError(f"site={wanted!r} is not a site of this study; its sites: {'; '.join(labels[:10])}")
        return table.iloc[labels.index(wanted)]
    try:
        rank = int(settings.get("rank", 1))
    except ValueError as exc:
        raise ConfigError(f"rank={settings['rank']!r} must be a whole number (1 = the best site)") from exc
    if not 1 <= rank <= len(table):
        raise ConfigError(f"rank={rank}: the study has {len(table)} sites (rank 1..{len(table)})")
    return table.iloc[rank - 1]


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _heldout_row(study_name: str, row: pd.Series) -> pd.Series | None:
    """``best``'s held-out record of this site, if it judged it."""
    path = outputs_dir("best") / f"{study_name}-heldout.csv"
    if not path.is_file():
        return None
    report = pd.read_csv(path)
    keys = [k for k in COLUMNS if k in report.columns and k in row.index]
    for _, judged in report.iterrows():
        if all(str(judged[k]) == str(row[k]) or _number(judged[k]) == _number(row[k]) is not None for k in keys):
            return judged
    return None


_HELDOUT_KEYS = (
    "heldout_gain",
    "heldout_ci_low",
    "heldout_ci_high",
    "heldout_gain_p_holm",
    "heldout_prompts",
    "heldout_frac_improved",
    "heldout_specific_gain",
    "heldout_specific_ci_low",
    "heldout_specific_ci_high",
    "heldout_specific_p_holm",
    "heldout_shuffled_gain",
)
_GAP_FIELDS = (("gap", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high"), ("p", "_p"), ("p_holm", "_p_holm"))


def _judged_fields(judged: pd.Series | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The held-out gains (None each without a held-out check) and, per control, its gap."""
    gains = {k: (_number(judged[k]) if judged is not None and k in judged else None) for k in _HELDOUT_KEYS}
    if judged is None:
        return gains, {}
    names = [c[4:] for c in judged.index if c.startswith("gap_") and not c.endswith(("_low", "_high", "_p", "_holm"))]
    controls = {name: {k: _number(judged.get(f"gap_{name}{suffix}")) for k, suffix in _GAP_FIELDS} for name in names}
    return gains, controls


def export_site(study: Any, table: pd.DataFrame, settings: dict[str, str]) -> tuple[Path, InjectionRecord]:
    """Write the export of one site of ``table`` (``settings``: rank/site/out); returns (folder, record)."""
    spec = stored_spec(study)
    if spec is None:
        raise ConfigError(f"study {study.study_name!r} was not made by meminject sweep (it has no stored sweep spec)")
    row = _pick(table, settings)
    trial = study.trials[int(row["best_trial"])]
    cfg = trial_config(spec.overrides, trial.params)
    runner = TrialRunner()
    evaluator, spec_point, result = runner.run(
        dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, specific=True))
    )
    per_prompt = result.per_prompt
    gains = per_prompt["gain"].to_numpy()
    low, high = bootstrap_mean_ci(gains, seed=spec.seed)
    hf, _ = plain_model(dataclasses.replace(cfg.model, weights="raw", dtype="float32"))
    model_name = str(trial.params.get("model", cfg.model.name))
    model_overrides = [f"model={model_name}"] + [
        o for o in spec.overrides if o.startswith("model.") and not o.startswith("model.device=")
    ]
    judged = _heldout_row(study.study_name, row)
    record_gains = {
        "objective": spec.objective,
        "train_gain": float(trial.user_attrs.get("mean_gain", trial.values[0])),
        "train_ci_low": low,
        "train_ci_high": high,
        "train_prompts": int(len(gains)),
        "train_specific_gain": _number(trial.user_attrs.get("specific_gain")),
        "train_shuffled_gain": _number(trial.user_attrs.get("shuffled_gain")),
        "train_specific_gain_rerun": _number(result.summary.get("specific_gain")),
    }
    heldout, controls = _judged_fields(judged)
    record_gains.update(heldout)
    notes = []
    if judged is None:
        notes.append(
            "no held-out check of this site yet (meminject best on a study with data.split judges it): held-out fields are null"
        )
    if cfg.model.weights == "paper":
        notes.append(
            "TransformerLens-processed weights (model.weights=paper): meminject apply works; plain transformers (Injection.applied, generate) is refused"
        )
    inj = cfg.injection
    record = InjectionRecord(
        model=ModelRecord(
            name=cfg.model.name,
            architecture=str((getattr(hf.config, "architectures", None) or [type(hf).__name__])[0]),
            weights=cfg.model.weights,
            fingerprint=weights_fingerprint(hf),
            n_layers=int(hf.config.num_hidden_layers),
            d_model=int(hf.config.hidden_size),
            prepend_bos=bool(cfg.model.prepend_bos),
            bos_token_id=evaluator.model.bos_id,
            overrides=model_overrides,
        ),
        hook=inj.hook,
        hook_name=spec_point.hook_name,
        layer=int(inj.layer),
        depth=relative_depth(int(inj.layer), int(hf.config.num_hidden_layers)),
        head=None if inj.site == "layer" else int(inj.head),
        site=inj.site,
        positions=inj.positions,
        tau=float(inj.tweak),
        scale=inj.scale,
        residual_norm=float(evaluator.residual_norms[inj.layer]) if inj.scale == "relative" else None,
        encoding=cfg.memory.encoding,
        memory_type=cfg.memory.type,
        dtype=cfg.model.dtype,
        study={
            "name": study.study_name,
            "trial": int(trial.number),
            "rank": int(row["rank"]),
            "label": site_label(row.to_dict()),
            "sweep": spec.name,
            "dataset": cfg.data.name,
            "mlflow_parent_run": study.user_attrs.get(ATTR_PARENT),
        },
        gains=record_gains,
        verdict=None if judged is None else str(judged.get("verdict")),
        controls=controls,
        meminject_version=meminject_version(),
        notes=notes,
    )
    folder = Path(settings.get("out") or outputs_dir("export") / f"{study.study_name}-rank{int(row['rank'])}")
    from ..engine._injection_file import write_record

    path = write_record(folder, record)
    per_prompt.to_csv(folder / "train_per_prompt.csv", index=False)
    _log_export(cfg, study, record, folder, path)
    return folder, record


def _log_export(cfg: Any, study: Any, record: InjectionRecord, folder: Path, path: Path) -> None:
    """The export on the study's MLflow parent run (artifact + tag) and a tag on the trial's run."""
    parent = study.user_attrs.get(ATTR_PARENT)
    if not parent or not cfg.tracking.enabled:
        return
    tracker = parent_tracker(cfg, parent, study.study_name)
    if tracker is None:
        return
    rank = int(record.study["rank"])
    tracker.log_file(parent, path, f"exports/rank{rank}")
    tracker.client.set_tag(
        parent, f"{TAG_EXPORT}.rank{rank}", f"{record.label} (trial {record.study['trial']}) -> {folder}"
    )
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{TAG_TRIAL_NUMBER}` = '{record.study['trial']}' and tags.`meminject.role` = 'trial'",
        max_results=10,
    )
    for run in runs:
        tracker.client.set_tag(run.info.run_id, TAG_EXPORT, str(folder))
