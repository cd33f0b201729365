"""``meminject inspect``: the paper's head projector for one prompt, as a table, a heatmap and a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core._errors import ConfigError
from ._eval import default_output_dir

__all__ = ["cmd_inspect"]


def cmd_inspect(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..config import load_run_config
    from ..engine._evaluation import InjectionSpec
    from ..engine._memories import encode_memories, memory_texts
    from ..engine._models import load_model
    from ._inspect import format_table, heatmap, project_attention_outputs, side_by_side

    cfg = load_run_config(args.overrides)
    prompt, answer, memory = args.prompt, args.answer, args.memory
    if args.row is not None:
        from ..data._dataset import load_dataset

        frame = load_dataset(cfg.data).frame
        match = frame[frame.row == args.row]
        if match.empty:
            raise ConfigError(f"--row {args.row} is not in {cfg.data.name} (rows {int(frame.row.min())}..{int(frame.row.max())})")
        row = match.iloc[0]
        prompt = prompt or row.obscure_sentence
        answer = answer if answer is not None else row.answer
        memory = memory or row.explicit_entity
    if not prompt:
        raise ConfigError("inspect needs --prompt TEXT or --row N")
    if args.top < 1:
        raise ConfigError(f"--top {args.top} must be >= 1")
    if answer is not None and not answer.startswith(" "):
        answer = " " + answer  # the paper's answers follow a space
    model = load_model(cfg.model)
    before = project_attention_outputs(model, prompt, heads=args.heads, all_positions=args.all_positions, top_k=args.top, answer=answer)
    table, title = before.table, f"{model.name}: {prompt!r}"
    if args.inject:
        spec = InjectionSpec.from_config(cfg)
        spec.validate(model)
        if not memory:
            raise ConfigError("--inject needs --memory TEXT (or --row N for the row's explicit entity)")
        texts = memory_texts(pd.DataFrame({"explicit_entity": [memory], "row": [args.row or 0]}), cfg.memory)
        vector = encode_memories(model, texts, [args.row or 0], spec.encoding, spec.layer, max_batch_tokens=cfg.perf.max_batch_tokens)[0].to(model.device)
        after = project_attention_outputs(model, prompt, heads=args.heads, all_positions=args.all_positions, top_k=args.top, answer=answer,
                                          injection=(spec.layer, spec.tweak, vector, spec.positions))
        table = side_by_side(before.table, after.table)
        title += f" + {texts[0]!r} at L{spec.layer} τ={spec.tweak:g}"
    out_dir = Path(args.out) if args.out else default_output_dir("inspect", model.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "projection.csv", index=False)
    figure = heatmap(after.table if args.inject else before.table, out_dir / "heads.png", title, answer=answer)
    print(title)
    print(format_table(table, answer is not None))
    print(f"table: {out_dir / 'projection.csv'} · figure: {figure}")
    if cfg.tracking.enabled:
        from mlflow.tracking import MlflowClient

        from ..config import flat_config
        from ..tracking._tracker import _experiment_id, redacted_container, tracking_uri

        client = MlflowClient(tracking_uri=tracking_uri(cfg))
        run = client.create_run(_experiment_id(client, str(cfg.tracking.experiment), tracking_uri(cfg)), run_name=f"inspect {model.name}", tags={"meminject.command": "inspect"})
        status = "FAILED"
        try:
            # the same flat, redacted config as eval and trial runs, and the hooks it read
            params = {**flat_config(redacted_container(cfg)), "prompt": prompt[:500], "hook": "blocks.*.hook_attn_out" + (" + blocks.*.attn.hook_result" if args.heads else "")}
            for key, value in params.items():
                client.log_param(run.info.run_id, key, str(value))
            for path in (out_dir / "projection.csv", figure):
                client.log_artifact(run.info.run_id, str(path))
            status = "FINISHED"
        finally:  # the run is always closed
            client.set_terminated(run.info.run_id, status)
        print(f"MLflow run {run.info.run_id}")
    return 0
