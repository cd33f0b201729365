"""``meminject inspect``: the paper's head projector for one prompt, as a table, a heatmap and a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..core._errors import ConfigError
from ..tracking._schema import TAG_COMMAND
from ._eval import default_output_dir

if TYPE_CHECKING:
    from ..config._schema import RunConfig
    from ..engine._models import LoadedModel
    from ..views._inspect import Projection

__all__ = ["cmd_inspect"]


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..engine._models import load_model, resolve_depth
    from ..views._inspect import format_table, heatmap, project_attention_outputs, side_by_side

    cfg = resolve_depth(load_run_config(args.overrides))
    prompt, answer, memory = _inspected_texts(args, cfg)
    model = load_model(cfg.model)
    before = project_attention_outputs(
        model, prompt, heads=args.heads, all_positions=args.all_positions, top_k=args.top, answer=answer
    )
    table, title = before.table, f"{model.name}: {prompt!r}"
    if args.inject:
        after, injected = _project_injected(args, cfg, model, prompt, answer, memory)
        table = side_by_side(before.table, after.table)
        title += injected
    out_dir = Path(args.out) if args.out else default_output_dir("inspect", model.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "projection.csv", index=False)
    figure = heatmap(after.table if args.inject else before.table, out_dir / "heads.png", title, answer=answer)
    print(title)
    print(format_table(table, answer is not None, rows=args.rows))
    if 0 < args.rows < len(table):
        best = "the answer's rank" if answer is not None else "the top token's logit"
        print(f"({args.rows} of {len(table)} rows, best by {best} first; --rows 0 prints all)")
    print(f"table: {out_dir / 'projection.csv'} · figure: {figure}")
    if cfg.tracking.enabled:
        _log_inspect_run(args, cfg, model, prompt, out_dir, figure)
    return 0


def _inspected_texts(args: argparse.Namespace, cfg: RunConfig) -> tuple[str, str | None, str | None]:
    """The prompt, answer and memory: given, or the dataset row's (``--row``); checked."""
    prompt, answer, memory = args.prompt, args.answer, args.memory
    if args.row is not None:
        from ..data._dataset import load_dataset

        frame = load_dataset(cfg.data).frame
        match = frame[frame.row == args.row]
        if match.empty:
            raise ConfigError(
                f"--row {args.row} is not in {cfg.data.name} (rows {int(frame.row.min())}..{int(frame.row.max())})"
            )
        row = match.iloc[0]
        prompt = prompt or row.obscure_sentence
        answer = answer if answer is not None else row.answer
        memory = memory or row.explicit_entity
    if not prompt:
        raise ConfigError("inspect needs --prompt TEXT or --row N")
    if args.top < 1:
        raise ConfigError(f"--top {args.top} must be >= 1")
    if args.rows < 0:
        raise ConfigError(f"--rows {args.rows} must be >= 0 (0: every row)")
    if answer is not None and not answer.startswith(" "):
        answer = " " + answer  # the paper's answers follow a space
    return prompt, answer, memory


def _project_injected(
    args: argparse.Namespace, cfg: RunConfig, model: LoadedModel, prompt: str, answer: str | None, memory: str | None
) -> tuple[Projection, str]:
    """The projection with the memory injected, and the title's note of what was injected."""
    import pandas as pd

    from ..engine._evaluation import InjectionSpec
    from ..engine._memories import encode_memories, memory_texts
    from ..views._inspect import project_attention_outputs

    spec = InjectionSpec.from_config(cfg)
    spec.validate(model)
    if not memory:
        raise ConfigError("--inject needs --memory TEXT (or --row N for the row's explicit entity)")
    texts = memory_texts(pd.DataFrame({"explicit_entity": [memory], "row": [args.row or 0]}), cfg.memory)
    vector = encode_memories(
        model, texts, [args.row or 0], spec.encoding, spec.layer, max_batch_tokens=cfg.perf.max_batch_tokens
    )[0].to(model.device)
    after = project_attention_outputs(
        model,
        prompt,
        heads=args.heads,
        all_positions=args.all_positions,
        top_k=args.top,
        answer=answer,
        injection=(spec.layer, spec.tweak, vector, spec.positions),
    )
    return after, f" + {texts[0]!r} at L{spec.layer} τ={spec.tweak:g}"


def _log_inspect_run(
    args: argparse.Namespace, cfg: RunConfig, model: LoadedModel, prompt: str, out_dir: Path, figure: Path
) -> None:
    """An MLflow run with the inspect command's config, table and figure (always closed),
    written by the Tracker as every other run is: the same flat, redacted config, and the
    hooks it read."""
    from ..config import flat_config
    from ..tracking import Tracker
    from ..tracking._tracker import redacted_container

    hooks = "blocks.*.hook_attn_out" + (" + blocks.*.attn.hook_result" if args.heads else "")
    params = {**flat_config(redacted_container(cfg)), "prompt": prompt[:500], "hook": hooks}
    artifacts = {"projection.csv": out_dir / "projection.csv", Path(figure).name: Path(figure)}
    run_id = Tracker.from_config(cfg, command="inspect").record_run(
        f"inspect {model.name}", {TAG_COMMAND: "inspect"}, params, {}, artifacts
    )
    print(f"MLflow run {run_id}")
