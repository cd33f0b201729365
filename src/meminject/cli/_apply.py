"""``meminject apply`` and ``meminject generate``: an exported injection on new prompts.

``apply injection=DIR data=...`` evaluates the export on any dataset exactly as ``eval`` does
(its per-prompt CSV, summary and MLflow run), at the exported site, τ and, for a relative scale,
the exported residual norm. ``generate injection=DIR prompt=... memory=...`` (or ``prompts=CSV``)
prints the continuation without and with the injection, the top-k next tokens before and after
and P(answer) when given, through plain transformers (:class:`meminject.engine.Injection`).
A model whose weights are not the exported checkpoint's is refused, naming both, unless
``allow_model_mismatch=true`` (then the mismatch is recorded with the results).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..core._errors import ConfigError, DataError, ModelError

__all__ = ["cmd_apply", "cmd_generate", "APPLY_SETTINGS", "GENERATE_SETTINGS", "apply_epilog"]

APPLY_SETTINGS = {
    "injection": "the export folder (meminject export's out=)",
    "allow_model_mismatch": "true: apply it to a model whose weights differ from the exported one (recorded; default false)",
}
GENERATE_SETTINGS = {
    **APPLY_SETTINGS,
    "prompt": "the prompt to continue",
    "memory": "the memory text to inject",
    "answer": "optional: the answer whose P(first token) is shown before and after",
    "prompts": "or a CSV of prompts (columns prompt, memory, optional answer)",
    "max_new_tokens": "tokens generated (default 20)",
    "sample": "true: sample instead of greedy (default false)",
    "seed": "the sampling seed (default 0)",
    "temperature": "sampling temperature (default 1.0)",
    "top_k": "next tokens listed before and after (default 5)",
    "out": "the output file, .json or .csv (default outputs/generate/<time>.json)",
}


def _settings(args: Sequence[str], allowed: dict[str, str], command: str, rest_allowed: bool) -> tuple[dict, list]:
    from ..search._keys import parse_settings

    settings, rest = parse_settings(args, allowed, command, rest_allowed=rest_allowed)
    if "injection" not in settings:
        raise ConfigError(f"{command} needs injection=DIR (an export folder: meminject export study=NAME)")
    return settings, rest


def _flag(settings: dict, key: str) -> bool:
    from ..search._keys import as_bool

    return as_bool(settings.get(key, "false"), key)


def _mismatch(record: Any, model_cfg: Any, allow: bool) -> str | None:
    """None when the config's model is the exported checkpoint; else refused (or, allowed, the line)."""
    import dataclasses

    from ..engine._injection_file import weights_fingerprint
    from ..engine._plain import plain_model

    hf, _ = plain_model(dataclasses.replace(model_cfg, weights="raw", dtype="float32"))
    found = weights_fingerprint(hf)
    if found == record.model.fingerprint:
        return None
    line = (
        f"model {model_cfg.name} (weights {found[:19]}…) is not {record.model.name} (weights {record.model.fingerprint[:19]}…), "
        "the model this injection was exported from"
    )
    if not allow:
        raise ModelError(line + "; allow_model_mismatch=true applies it anyway (recorded)")
    print(f"note: {line}; applied anyway (allow_model_mismatch=true)")
    return line


def cmd_apply(args: Sequence[str]) -> int:
    from ..config import load_run_config
    from ..engine._injection_file import read_record
    from ._eval import run_eval

    settings, rest = _settings(args, APPLY_SETTINGS, "apply", rest_allowed=True)
    record = read_record(settings["injection"])
    point = {
        "injection.depth": "null",
        "injection.layer": record.layer,
        "injection.hook": record.hook,
        "injection.site": record.site,
        "injection.tweak": repr(record.tau),
        "injection.scale": record.scale,
        "injection.positions": record.positions,
        "memory.type": record.memory_type,
        "memory.encoding": record.encoding,
    }
    if record.head is not None:
        point["injection.head"] = record.head
    cfg = load_run_config([*record.model.overrides, *(f"{k}={v}" for k, v in point.items()), *rest])
    if cfg.model.name != record.model.name:
        print(f"note: model={cfg.model.name} overrides the exported {record.model.name}")
    mismatch = _mismatch(record, cfg.model, _flag(settings, "allow_model_mismatch"))
    extra = {
        "injection": str(Path(settings["injection"]).resolve()),
        "injection_study": record.study.get("name"),
        "injection_trial": record.study.get("trial"),
        "injection_fingerprint": record.model.fingerprint,
        "model_mismatch": mismatch or "-",
    }
    tags = {"meminject.command": "apply", "meminject.injection": extra["injection"]}
    if mismatch:
        tags["meminject.model_mismatch"] = mismatch[:5000]
    norms = {record.layer: record.residual_norm} if record.residual_norm is not None else None
    return run_eval(cfg, fixed_norms=norms, extra=extra, tags=tags)


# ---------------------------------------------------------------- generate


def _requests(settings: dict) -> list[dict[str, Any]]:
    if "prompts" in settings:
        import pandas as pd

        path = Path(settings["prompts"])
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"prompts={path}: not a readable CSV ({exc})") from exc
        missing = [c for c in ("prompt", "memory") if c not in frame.columns]
        if missing:
            raise DataError(
                f"prompts={path}: missing column(s) {', '.join(missing)} (columns prompt, memory, optional answer)"
            )
        return [
            {"prompt": r["prompt"], "memory": r["memory"], "answer": r.get("answer") or None}
            for r in frame.to_dict("records")
        ]
    missing = [k for k in ("prompt", "memory") if not settings.get(k)]
    if missing:
        raise ConfigError(f"generate needs {' and '.join(f'{k}=...' for k in missing)} (or prompts=CSV)")
    return [{"prompt": settings["prompt"], "memory": settings["memory"], "answer": settings.get("answer")}]


def _number(settings: dict, key: str, default: str, kind: type) -> Any:
    try:
        value = kind(settings.get(key, default))
    except ValueError as exc:
        raise ConfigError(f"{key}={settings[key]!r} must be a {kind.__name__}") from exc
    if value < 0 or (kind is int and key != "seed" and value < 1):
        raise ConfigError(f"{key}={value} must be positive")
    return value


def _show(out: dict[str, Any], width: int = 44) -> str:
    lines = [f"prompt: {out['prompt']!r}", f"memory: {out['memory']!r}"]
    lines.append(f"  {'continuation':<14}without: {out['continuation_before']!r}")
    lines.append(f"  {'':<14}with:    {out['continuation_after']!r}")
    lines.append(f"  {'':<14}{'without injection':<{width}}with injection")
    for i, (b, a) in enumerate(zip(out["top_before"], out["top_after"])):
        label = f"top-{len(out['top_before'])} next" if i == 0 else ""
        lines.append(f"  {label:<14}{f'{b[0]!r} {b[1]:.4f}':<{width}}{a[0]!r} {a[1]:.4f}")
    if out.get("answer") is not None:
        before_p, after_p = f"{out['answer_prob_before']:.4f}", f"{out['answer_prob_after']:.4f}"
        lines.append(f"  {'P(answer)':<14}{before_p:<{width}}{after_p}   ({out['answer']!r})")
    return "\n".join(lines)


def cmd_generate(args: Sequence[str]) -> int:
    from ..engine._exported import Injection

    settings, _ = _settings(args, GENERATE_SETTINGS, "generate", rest_allowed=False)
    injection = Injection.load(settings["injection"])
    requests = _requests(settings)
    options = {
        "max_new_tokens": _number(settings, "max_new_tokens", "20", int),
        "sample": _flag(settings, "sample"),
        "seed": _number(settings, "seed", "0", int),
        "temperature": _number(settings, "temperature", "1.0", float),
        "top_k": _number(settings, "top_k", "5", int),
    }
    model, tokenizer = injection.plain_model()
    allow = _flag(settings, "allow_model_mismatch")
    rec = injection.record
    print(
        f"{rec.label} · {'sampled, seed ' + str(options['seed']) if options['sample'] else 'greedy'} · {options['max_new_tokens']} new tokens"
    )
    results = []
    for request in requests:
        injection.check_model(model, allow_mismatch=allow)
        out = injection.generate(
            request["prompt"], request["memory"], answer=request["answer"], model=model, tokenizer=tokenizer, **options
        )
        print(_show(out))
        results.append(out)
    from ._eval import default_output_dir

    path = Path(settings.get("out") or default_output_dir("generate", rec.model.name).with_suffix(".json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        import pandas as pd

        flat = [
            {**r, "top_before": json.dumps(r["top_before"]), "top_after": json.dumps(r["top_after"])} for r in results
        ]
        pd.DataFrame(flat).to_csv(path, index=False)
    else:
        meta = {
            "injection": str(settings["injection"]),
            "settings": options,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        path.write_text(json.dumps({**meta, "results": results}, indent=2))
    print(f"written: {path}")
    return 0


def apply_epilog(command: str) -> str:
    """The keys of export, apply and generate."""
    from ._export import EXPORT_SETTINGS

    keys = {"export": EXPORT_SETTINGS, "apply": APPLY_SETTINGS, "generate": GENERATE_SETTINGS}[command]
    width = max(map(len, keys)) + 2
    lines = [f"{command} keys (key=value):"] + [f"  {k + '=':<{width}} {v}" for k, v in keys.items()]
    if command == "apply":
        lines.append("  any other key=value is a config override (data=NAME, data.path=FILE, data.limit=N, tracking.*)")
    return "\n".join(lines)
