"""Honest best-site selection: sites are picked on the train part and judged on held-out prompts.

For each of the top-k sites of a study (by train gain), on the held-out prompts:

* held-out mean gain with a 95% bootstrap interval over prompts, the fraction improved, and a
  sign-flip test that it is above 0;
* the **specific gain**: the gain minus that of another prompt's memory (``shuffled``) at the
  same site, paired per prompt (run in the same stacked forward, ``metric.specific``), with its
  interval and test: what the *right* memory adds over injecting any entity;
* the **control gap**: held-out gain of the correct memory minus that of each control memory
  (``pos``, ``random``, ``random_vector``, their norm-matched twins) injected at the same site,
  paired per prompt, with a bootstrap interval and a sign-flip test.

Every p-value of the table (each site's gain, specific gain and control gaps) is Holm-corrected
together. Each site gets one **verdict** a user cannot misread: ``holds`` only when its held-out
gain is above 0, its held-out specific gain is above 0, and it beats every control, each after
the correction; otherwise the first reason it fails. Nothing is hidden: failing sites stay in
the table with their reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..config import with_values
from ..core._errors import ConfigError
from ..engine._memories import MEMORY_TYPES
from ..core._progress import progress_bar, stage
from ..tracking._schema import site_config, site_label
from ._stats import bootstrap_mean_ci, holm, paired_sign_flip_p
from ..runner._trial import TrialRunner

__all__ = ["CONTROL_TYPES", "heldout_report", "with_verdicts", "format_heldout"]

CONTROL_TYPES = tuple(t for t in MEMORY_TYPES if t != "correct")  # every memory type but the answer's


def check_controls(controls: Sequence[str]) -> None:
    unknown = [c for c in controls if c not in CONTROL_TYPES]
    if unknown:
        raise ConfigError(f"controls={','.join(unknown)}: choose from {', '.join(CONTROL_TYPES)}")


def heldout_report(
    base_overrides: Sequence[str],
    sites: pd.DataFrame,
    *,
    controls: Sequence[str] = ("pos", "random_vector"),
    n_boot: int = 2000,
    seed: int = 0,
    runner: Any = None,
    axes: Sequence[str] = (),
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Evaluate ranked ``sites`` (from :func:`meminject.selection.ranked_sites`) on the held-out part."""

    check_controls(controls)
    runner = runner or TrialRunner()
    base = [o for o in base_overrides if not o.startswith("data.part=")]
    records = []
    # one step per evaluation (a site, then each control at it), on stderr: minutes otherwise silent
    stage(
        f"held-out check: {len(sites)} sites, each with {len(controls)} controls ({', '.join(controls) or 'none'}), "
        f"on the held-out prompts ({len(sites) * (1 + len(controls))} evaluations) …"
    )
    bar = progress_bar(len(sites) * (1 + len(controls)), "held-out check", "eval")
    with bar:
        for _, site in sites.iterrows():
            records.append(_judge_site(runner, base, site, controls, axes, n_boot, seed, bar))
    report = pd.DataFrame(records)
    return with_verdicts(report, controls, alpha=alpha)


def _judge_site(
    runner: Any,
    base: list[str],
    site: pd.Series,
    controls: Sequence[str],
    axes: Sequence[str],
    n_boot: int,
    seed: int,
    bar: Any,
) -> dict[str, Any]:
    """One site on the held-out prompts: its gain with an interval, and its gap to each control."""
    label = site_label(site.to_dict())
    bar.set_postfix_str(label, refresh=False)
    cfg = site_config(base, site.to_dict(), with_model="model" in axes, extra=["data.part=heldout"])
    if cfg.data.split is None:
        raise ConfigError("this study has no train/held-out split (data.split); rerun the sweep with data.split=0.7")
    if not bar.disable:  # batches of each pass, beside the site (the clean pass alone takes a while)
        runner.evaluator(cfg).progress = lambda stage, done, total: bar.set_postfix_str(
            f"{label} [{stage} batch {done}/{total}]"
        )
    # the correct memory and, in the same stacked forward, the shuffled one (same evaluator)
    _, _, correct = runner.run(dataclasses.replace(cfg, metric=dataclasses.replace(cfg.metric, specific=True)))
    bar.update()
    gains = correct.per_prompt["gain"].to_numpy()
    low, high = bootstrap_mean_ci(gains, n_boot=n_boot, seed=seed)
    record = {
        **{k: site[k] for k in site.index if k not in ("mean_prob_before", "mean_prob_after", "shuffled_gain")},
        "train_gain": site["mean_gain"],
        "heldout_gain": float(gains.mean()),
        "heldout_ci_low": low,
        "heldout_ci_high": high,
        "heldout_gain_p": paired_sign_flip_p(gains, seed=seed + 5),
        "heldout_frac_improved": float((gains > 0).mean()),
        "heldout_includes_zero": bool(low <= 0.0 <= high),
        "heldout_prompts": len(gains),
        "train_specific_gain": site.get("specific_gain", np.nan),  # measured when the sweep ran metric.specific
        **_specific_record(correct.per_prompt, n_boot, seed),
    }
    record.pop("specific_gain", None)
    damage = correct.per_prompt["damage"].to_numpy() if "damage" in correct.per_prompt else np.array([np.nan])
    if np.isfinite(damage).all():  # metric.damage=kl: the held-out damage, with its interval
        d_low, d_high = bootstrap_mean_ci(damage, n_boot=n_boot, seed=seed + 3)
        record.update(
            {
                "train_damage": site.get("mean_damage"),
                "heldout_damage": float(damage.mean()),
                "heldout_damage_ci_low": d_low,
                "heldout_damage_ci_high": d_high,
            }
        )
    record.pop("mean_gain", None)
    record.pop("mean_damage", None)
    for control in controls:
        _, _, result = runner.run(with_values(cfg, {"memory.type": control}))
        control_gains = result.per_prompt["gain"].to_numpy()
        difference = gains - control_gains  # paired: same prompts, same site
        c_low, c_high = bootstrap_mean_ci(difference, n_boot=n_boot, seed=seed + 1)
        record[f"gap_{control}"] = float(difference.mean())
        record[f"gap_{control}_ci_low"] = c_low
        record[f"gap_{control}_ci_high"] = c_high
        record[f"gap_{control}_p"] = paired_sign_flip_p(difference, seed=seed + 2)
        bar.update()
    return record


# The tested p-value columns of a site, before the control gaps': its gain, its specific gain.
_OWN_TESTS = ("heldout_gain_p", "heldout_specific_p")


def _specific_record(per_prompt: pd.DataFrame, n_boot: int, seed: int) -> dict[str, float]:
    """The held-out specific gain (gain − the shuffled memory's, per prompt): mean, interval, test."""
    specific = per_prompt["specific_gain"].to_numpy()
    low, high = bootstrap_mean_ci(specific, n_boot=n_boot, seed=seed + 4)
    return {
        "heldout_shuffled_gain": float(per_prompt["gain_shuffled"].mean()),
        "heldout_specific_gain": float(specific.mean()),
        "heldout_specific_ci_low": low,
        "heldout_specific_ci_high": high,
        "heldout_specific_p": paired_sign_flip_p(specific, seed=seed + 6),
    }


def with_verdicts(report: pd.DataFrame, controls: Sequence[str], *, alpha: float = 0.05) -> pd.DataFrame:
    """Holm-adjusted p-values over every reported site × test (its gain, its specific gain, each
    control gap), and one verdict per site: ``holds`` only when the held-out gain and the
    held-out specific gain are above 0 and the site beats every control, each after the
    correction; otherwise the first reason it fails."""
    report = report.copy()
    columns = [*_OWN_TESTS, *(f"gap_{c}_p" for c in controls)]
    if not report.empty:
        adjusted = holm(report[columns].to_numpy(dtype=float).ravel()).reshape(len(report), len(columns))
        for j, column in enumerate(columns):
            report[f"{column}_holm"] = adjusted[:, j]
    report["verdict"] = [_verdict(row, controls, alpha) for _, row in report.iterrows()]
    return report


def _verdict(row: pd.Series, controls: Sequence[str], alpha: float) -> str:
    if row["heldout_ci_low"] <= 0.0 <= row["heldout_ci_high"]:
        return "held-out interval includes 0"
    if row["heldout_ci_high"] < 0.0:
        return "hurts on held-out prompts"
    if row["heldout_gain_p_holm"] >= alpha:
        return f"held-out gain not clearly above 0 (Holm p={row['heldout_gain_p_holm']:.3f})"
    if row["heldout_specific_gain"] <= 0.0:
        return "no better than another prompt's memory (shuffled)"
    if row["heldout_specific_p_holm"] >= alpha:
        return f"not clearly better than another prompt's memory (specific gain Holm p={row['heldout_specific_p_holm']:.3f})"
    for control in controls:
        if row[f"gap_{control}"] <= 0.0:
            return f"no better than {control}"
        if row[f"gap_{control}_p_holm"] >= alpha:
            return f"not clearly better than {control} (Holm p={row[f'gap_{control}_p_holm']:.3f})"
    return "holds"


def format_heldout(report: pd.DataFrame, controls: Sequence[str], with_damage: bool = False) -> str:
    lines = []
    models = "model" in report.columns and report["model"].nunique() > 1  # a model axis: name each site's model
    for _, r in report.iterrows():
        head = r.get("injection.head")
        head = "" if head is None or head == "-" or (isinstance(head, float) and np.isnan(head)) else f" h{head}"
        site = f"L{r['injection.layer']}{head} τ={float(r['injection.tweak']):.3g} {r['memory.encoding']}/{r['memory.type']}"
        if models:
            site = f"{r['model']} {site} (depth {float(r.get('depth', float('nan'))):.2f})"
        text = f"  {int(r['rank']):>2} {site:<{56 if models else 34}} train {r['train_gain']:+.4f}  held-out {r['heldout_gain']:+.4f} [{r['heldout_ci_low']:+.4f}, {r['heldout_ci_high']:+.4f}] improved {r['heldout_frac_improved']:.0%}"
        text += f"  specific {r['heldout_specific_gain']:+.4f} [{r['heldout_specific_ci_low']:+.4f}, {r['heldout_specific_ci_high']:+.4f}] (shuffled {r['heldout_shuffled_gain']:+.4f})"
        if with_damage and "heldout_damage" in r:
            text += f"  damage train {r['train_damage']:.4f} held-out {r['heldout_damage']:.4f} [{r['heldout_damage_ci_low']:.4f}, {r['heldout_damage_ci_high']:.4f}]"
        for control in controls:
            text += f"  gap vs {control} {r[f'gap_{control}']:+.4f} (Holm p={r[f'gap_{control}_p_holm']:.3f})"
        text += f"  → {r['verdict']}" if r["verdict"] == "holds" else f"  ✗ {r['verdict']}"
        edge = r.get("tweak_edge")
        if isinstance(edge, str) and edge:  # see sweep._edges: the range stopped there
            text += f"  [τ at the {'upper' if edge == 'high' else 'lower'} edge of the search]"
        lines.append(text)
    return "\n".join(lines)
