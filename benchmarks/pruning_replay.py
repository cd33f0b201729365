"""Replay the pruner over an exhaustive grid: which tests keep the top sites, at what compute.

Run by hand (not a test)::

    HF_HUB_OFFLINE=1 MEMINJECT_DATA_DIR=../shared/data python benchmarks/pruning_replay.py                  # handwritten, ~6 min
    HF_HUB_OFFLINE=1 MEMINJECT_DATA_DIR=../shared/data python benchmarks/pruning_replay.py --data 2wikimultihop --limit 200   # ~15 min
    ... --cache grid.npz     # keep the exhaustive grid: later replays are instant
    ... --dtype bfloat16 --cache bf16.npz --reference grid.npz   # the pruned grid in bf16, judged after best's float32 re-check

SmolLM2 (raw weights), the train part, correct memory, unembed: every layer × τ 1..15 is
evaluated once on every prompt (per-prompt gains and each point's time). Then, for each seed,
a pruned grid is replayed exactly as a sweep runs it (``pruned_grid_order``, the evaluator's
seeded chunks, ``prune_keep`` = 5, 8 queued points asked at a time and judged after each
chunk against the k-th best complete point, with ``PairedPruner.worse`` itself) for each test.
Printed per test: the share of the exhaustive grid's compute it spends (each point's time ×
the share of the prompts it saw: chunks at the floor, as stacked trials run), whether it keeps
the top-1 site, and how many of the top 5 it keeps, over the seeds. No timing target: the real
wall-clock comparison is benchmarks/time_to_best.py.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def exhaustive(
    data: str, limit: int | None, layers: list[int], dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, float]]]:
    """(gains: points × prompts, seconds per point, the points as (layer, τ))."""
    from meminject.cli._main import _quiet_libraries
    from meminject.config import load_run_config
    from meminject.data._dataset import load_dataset
    from meminject.engine._evaluation import Evaluator, InjectionSpec
    from meminject.engine._models import load_model

    _quiet_libraries()
    overrides = [
        "model=smollm2-135m",
        "model.device=cpu",
        "model.weights=raw",
        "memory.encoding=unembed",
        "metric.damage=none",
        "data.part=train",
        f"data={data}",
        f"model.dtype={dtype}",
    ]
    cfg = load_run_config(overrides + ([f"data.limit={limit}"] if limit else []))
    evaluator = Evaluator.from_config(load_model(cfg.model), load_dataset(cfg.data), cfg)
    evaluator.clean
    points = [(layer, float(tau)) for layer in layers for tau in range(1, 16)]
    gains, seconds = np.zeros((len(points), len(evaluator.rows))), np.zeros(len(points))
    for i, (layer, tau) in enumerate(points):
        started = time.perf_counter()
        gains[i] = evaluator.evaluate(InjectionSpec(layer=layer, tweak=tau), cfg.memory).per_prompt["gain"].to_numpy()
        seconds[i] = time.perf_counter() - started
    return gains, seconds, points


def replay(
    gains: np.ndarray,
    seconds: np.ndarray,
    points: list,
    pruner,
    seed: int,
    chunks: int = 8,
    keep: int = 5,
    stack: int = 8,
) -> tuple[float, set[int]]:
    """One pruned grid: (share of the exhaustive compute, the complete points)."""
    from meminject.search._study import pruned_grid_order

    n_prompts = gains.shape[1]
    parts = np.array_split(
        np.random.default_rng([seed, 1]).permutation(n_prompts), chunks
    )  # as Evaluator(chunks, chunk_seed=seed)
    index = {point: i for i, point in enumerate(points)}
    order = [
        index[(p["injection.layer"], p["injection.tweak"])]
        for p in pruned_grid_order([{"injection.layer": layer, "injection.tweak": t} for layer, t in points], seed)
    ]
    groups = [order[k : k + stack] for k in range(0, len(order), stack)]  # a worker asks `stack` queued points at once
    complete: dict[int, float] = {}
    spent = 0.0
    for group in groups:
        active, seen = list(group), np.array([], dtype=int)
        for c, part in enumerate(parts):
            seen = np.concatenate([seen, part])
            spent += sum(seconds[i] * len(part) / n_prompts for i in active)
            if c == chunks - 1 or len(complete) < keep:
                continue
            reference = sorted(complete, key=lambda j: -complete[j])[keep - 1]
            if len(seen) >= pruner.min_prompts:
                active = [i for i in active if not pruner.worse(gains[i, seen], gains[reference, seen], n_prompts)]
            if not active:
                break
        complete.update({i: float(gains[i].mean()) for i in active})
    return spent / seconds.sum(), set(complete)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="handwritten")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--layers", default="all", help="all, or comma-separated layers")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument(
        "--cache", default=None, help="an .npz file: the exhaustive grid is read from it, or computed and written there"
    )
    parser.add_argument(
        "--prune-p", type=float, default=None, help="the pruner's p threshold (default: PairedPruner's)"
    )
    parser.add_argument("--margin", type=float, default=None)
    parser.add_argument("--min-prompts", type=int, default=None)
    parser.add_argument("--dtype", default="float32", help="the grid's precision (bfloat16: the pruned grid in bf16)")
    parser.add_argument(
        "--reference",
        default=None,
        help="a float32 grid's .npz (--cache of a float32 run): the top sites are "
        "float32's, and each replay's 10 best complete points are re-ranked by their float32 values, as `meminject best` does",
    )
    args = parser.parse_args()
    from meminject.engine._models import model_shape
    from meminject.config import load_run_config
    from meminject.search._pruning import PairedPruner

    n_layers = model_shape(load_run_config(["model=smollm2-135m"]).model)["n_layers"] if args.layers == "all" else None
    layers = list(range(n_layers)) if n_layers else [int(x) for x in args.layers.split(",")]
    if args.cache and os.path.exists(args.cache):
        saved = np.load(args.cache)
        gains, seconds, points = (
            saved["gains"],
            saved["seconds"],
            [(int(layer), float(t)) for layer, t in saved["points"]],
        )
    else:
        gains, seconds, points = exhaustive(args.data, args.limit, layers, args.dtype)
        if args.cache:
            np.savez(args.cache, gains=gains, seconds=seconds, points=np.array(points))
    means = gains.mean(axis=1)  # what the sweep ranks by
    truth = np.load(args.reference)["gains"].mean(axis=1) if args.reference else means  # what decides
    top5 = list(np.argsort(-truth)[:5])
    print(
        f"{args.data}: {gains.shape[1]} train prompts, {len(points)} points in {seconds.sum():.0f} s ({args.dtype}); top 5{' (float32)' if args.reference else ''} "
        + ", ".join(f"L{points[i][0]} τ{points[i][1]:g} {truth[i]:+.4f}" for i in top5)
    )
    carried = np.sort(gains[top5[0]])[::-1][:5].sum() / gains[top5[0]].sum()
    print(f"the top site's 5 best prompts carry {100 * carried:.0f}% of its summed gain")
    print("| test | compute share (mean, max over seeds) | top-1 kept | top-5 kept per seed |\n|---|---|---|---|")
    for test in ("mean", "wilcoxon"):
        settings = {"p_threshold": args.prune_p, "margin": args.margin, "min_prompts": args.min_prompts}
        pruner = PairedPruner(test=test, **{k: v for k, v in settings.items() if v is not None})
        shares, top1, kept = [], 0, []
        for seed in range(args.seeds):
            share, complete = replay(gains, seconds, points, pruner, seed)
            shares.append(share)
            ranked = sorted(complete, key=lambda i: -means[i])
            if args.reference:  # `best`: the sweep's top 10, re-ranked in float32
                ranked = sorted(ranked[:10], key=lambda i: -truth[i])
            top1 += ranked[0] == top5[0]
            kept.append(len(set(ranked[:5]) & set(top5)))
        print(
            f"| {test} | {100 * np.mean(shares):.0f}%, {100 * max(shares):.0f}% | {top1}/{args.seeds} | {kept} (mean {np.mean(kept):.1f}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
