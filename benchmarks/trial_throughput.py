"""Trial throughput: how close a meminject trial is to the compute floor.

Run by hand (not a test), e.g.::

    HF_HUB_OFFLINE=1 MEMINJECT_DATA_DIR=../shared/data python benchmarks/trial_throughput.py
    python benchmarks/trial_throughput.py --layers 5,15,25 --grid --wiki   # + the paper_grid slice and 2Wiki

On SmolLM2 with the 106 handwritten prompts, unembed encoding, τ = 4, for each layer:

  (a) upstream-style loop: one prompt at a time, three full forwards per prompt per trial
      (before, explicit, injected), full-sequence unembedding
  (b) plain batched trial: one padded batch, full forwards (before, explicit, injected), no caching
  (c) meminject's trial: clean pass cached, prefix reuse (layers L..N only), last-position unembedding
  (d) the floor: one batched forward of layers L..N on the same length-bucketed batches,
      last-position unembedding, no hooks

and the largest per-prompt probability difference between (a), (b) and (c). Every figure
is measured in this run; ratios are of totals over the layers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from statistics import median

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def timed(fn, repeat: int = 1):
    """Median wall seconds of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return median(times), result


def upstream_trial(model, frame, vectors, layer: int, tweak: float) -> np.ndarray:
    """(a) The notebook's loop: per prompt, three full forwards with full-sequence logits."""
    bridge = model.bridge
    after = np.zeros(len(frame))
    for i, row in enumerate(frame.itertuples()):
        tokens = bridge.to_tokens(row.obscure_sentence)
        answer = bridge.to_tokens(row.answer, prepend_bos=False)[0][0]
        torch.softmax(bridge(tokens)[0, -1], dim=-1)[answer].item()  # before
        torch.softmax(bridge(bridge.to_tokens(row.explicit_sentence))[0, -1], dim=-1)[answer].item()  # explicit
        vector = vectors[i]

        def add(attn_out, hook, vector=vector):  # noqa: ARG001
            return attn_out + tweak * vector

        logits = bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", add)])
        after[i] = torch.softmax(logits[0, -1], dim=-1)[answer].item()
    return after


def plain_batched_trial(model, evaluator, vectors, layer: int, tweak: float) -> np.ndarray:
    """(b) One right-padded batch of every prompt; full forwards and full logits; nothing cached."""
    from meminject.engine._injection import inject, position_mask
    from meminject.engine._runner import make_batches

    bridge = model.bridge
    answer = evaluator.answer_token
    after = np.zeros(len(evaluator.rows))
    for tokens_list in (evaluator.obscure_tokens, evaluator.explicit_tokens):  # clean passes, recomputed per trial
        (batch,) = make_batches(
            tokens_list, pad_id=model.pad_id, device=model.device, max_batch_tokens=10**9, sort_by_length=False
        )
        logits = bridge(batch.tokens, attention_mask=batch.attention_mask)
        rows = torch.arange(len(tokens_list))
        torch.softmax(logits[rows, batch.last_index].float(), dim=-1)[rows, answer]
    (batch,) = make_batches(
        evaluator.obscure_tokens, pad_id=model.pad_id, device=model.device, max_batch_tokens=10**9, sort_by_length=False
    )
    mask = position_mask(batch.attention_mask, batch.last_index, "all")
    logits = bridge.run_with_hooks(
        batch.tokens,
        attention_mask=batch.attention_mask,
        fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda a, hook: inject(a, vectors, tweak, mask))],
    )
    rows = torch.arange(len(evaluator.rows))
    after[:] = torch.softmax(logits[rows, batch.last_index].float(), dim=-1)[rows, answer].double().cpu().numpy()
    return after


def floor_pass(evaluator, layer: int) -> None:
    """(d) Layers L..N on the bucketed batches, last-position unembedding, no hooks."""
    for position in range(len(evaluator.obscure_batches)):
        evaluator.prefix.last_logits(position, layer, [])


def matmul_gflops(device) -> float:
    a, b = torch.randn(2048, 576, device=device), torch.randn(576, 1536, device=device)
    seconds, _ = timed(lambda: [a @ b for _ in range(20)], repeat=3)
    return 20 * 2 * 2048 * 576 * 1536 / seconds / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--weights", default="raw")
    parser.add_argument("--data", default="handwritten")
    parser.add_argument("--layers", default="5,15,25")
    parser.add_argument("--tweak", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3, help="timings of (b), (c), (d) are medians of this many runs")
    parser.add_argument("--skip-upstream", action="store_true", help="skip (a), the slow per-prompt loop")
    parser.add_argument("--skip-batched", action="store_true", help="skip (b), the plain batched trial (slow on Gemma)")
    parser.add_argument(
        "--grid", action="store_true", help="also run the paper_grid unembed slice (all layers × τ 1..15)"
    )
    parser.add_argument("--wiki", action="store_true", help="also time one trial on the 1,000 2WikiMultiHop prompts")
    parser.add_argument("--device", default="auto", help="model.device: auto | cpu | cuda")
    parser.add_argument("--dtype", default="float32", help="model.dtype: float32 | bfloat16 | float16 (CUDA)")
    parser.add_argument(
        "--no-damage-column",
        action="store_true",
        help="skip (c) with metric.damage=none (a second evaluator, one more clean pass)",
    )
    args = parser.parse_args()

    from meminject.cli._main import _quiet_libraries
    from meminject.config import load_run_config
    from meminject.data._dataset import load_dataset
    from meminject.engine._evaluation import Evaluator, InjectionSpec
    from meminject.engine._memories import encode_memories
    from meminject.engine._models import load_model

    _quiet_libraries()
    torch.set_grad_enabled(False)
    model_args = [
        f"model={args.model}",
        f"model.weights={args.weights}",
        f"model.device={args.device}",
        f"model.dtype={args.dtype}",
    ]
    cfg = load_run_config([*model_args, f"data={args.data}", "memory.encoding=unembed"])
    model = load_model(cfg.model)
    dataset = load_dataset(cfg.data)
    device = model.device
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{model.name} ({model.weights}, {args.dtype}) · {dataset.name}: {len(dataset)} prompts · {name} · torch {torch.__version__}"
    )
    print(f"matmul throughput (2048×576 @ 576×1536, fp32): {matmul_gflops(device):.0f} GFLOP/s")

    evaluator = Evaluator.from_config(model, dataset, cfg)
    seconds_clean, _ = timed(lambda: evaluator.clean)
    undamaged = None
    if not args.no_damage_column:  # the same trial without the KL damage (metric.damage=none)
        undamaged = Evaluator.from_config(
            model,
            dataset,
            load_run_config([*model_args, f"data={args.data}", "memory.encoding=unembed", "metric.damage=none"]),
        )
        undamaged.clean
        undamaged.evaluate(InjectionSpec(layer=0, tweak=0.0, positions="last"), cfg.memory)
    n_real = sum(len(t) for t in evaluator.obscure_tokens)
    print(
        f"clean pass (before + explicit, fills the prefix cache): {seconds_clean:.2f} s · {len(evaluator.obscure_batches)} batches, "
        f"{n_real} real tokens, padding {evaluator.padded_fraction:.1%} (perf.max_batch_tokens={evaluator.max_batch_tokens})"
    )
    seconds_kv, _ = timed(lambda: evaluator.evaluate(InjectionSpec(layer=0, tweak=0.0, positions="last"), cfg.memory))
    print(f"keys/values for positions=last (once, lazily; one more clean pass + one trial): {seconds_kv:.2f} s")
    print(evaluator.prefix.describe())
    vectors = encode_memories(model, list(dataset.frame["explicit_entity"]), evaluator.rows, "unembed", 0).to(device)
    memory_cfg = cfg.memory

    layers = [int(x) for x in args.layers.split(",")]
    totals = {"a": 0.0, "b": 0.0, "c": 0.0, "c_last": 0.0, "d": 0.0, "c_nodmg": 0.0, "c_last_nodmg": 0.0}
    diffs = {"a-c": float("nan"), "b-c": float("nan"), "a-b": float("nan")}  # nan: that loop was skipped
    print(
        f"\n{'layer':>5} {'(a) upstream':>13} {'(b) batched':>12} {'(c) meminject':>14} {'(c) last':>9} {'(d) floor':>10}   a/c    c/d"
    )
    for layer in layers:
        tweaks = iter(args.tweak + 1e-9 * k for k in range(1000))  # distinct τ: no result-cache hits
        seconds_c, result = timed(
            lambda: evaluator.evaluate(InjectionSpec(layer=layer, tweak=next(tweaks)), memory_cfg), args.repeat
        )
        seconds_c_last, _ = timed(
            lambda: evaluator.evaluate(InjectionSpec(layer=layer, tweak=next(tweaks), positions="last"), memory_cfg),
            args.repeat,
        )
        fast = result.per_prompt.answer_prob_after.to_numpy()
        if undamaged is not None:
            seconds, _ = timed(
                lambda: undamaged.evaluate(InjectionSpec(layer=layer, tweak=next(tweaks)), memory_cfg), args.repeat
            )
            totals["c_nodmg"] += seconds
            totals["c_last_nodmg"] += timed(
                lambda: undamaged.evaluate(
                    InjectionSpec(layer=layer, tweak=next(tweaks), positions="last"), memory_cfg
                ),
                args.repeat,
            )[0]
        seconds_d, _ = timed(lambda: floor_pass(evaluator, layer), args.repeat)
        if args.skip_batched:
            seconds_b, plain = float("nan"), np.full_like(fast, np.nan)
        else:
            seconds_b, plain = timed(
                lambda: plain_batched_trial(model, evaluator, vectors, layer, args.tweak), args.repeat
            )
            diffs["b-c"] = np.nanmax([diffs["b-c"], float(np.abs(plain - fast).max())])
        if args.skip_upstream:
            seconds_a = float("nan")
        else:
            seconds_a, upstream = timed(lambda: upstream_trial(model, dataset.frame, vectors, layer, args.tweak))
            diffs["a-c"] = np.nanmax([diffs["a-c"], float(np.abs(upstream - fast).max())])
            diffs["a-b"] = np.nanmax([diffs["a-b"], float(np.abs(upstream - plain).max())])
        for key, value in zip("abd", (seconds_a, seconds_b, seconds_d)):
            totals[key] += value
        totals["c"] += seconds_c
        totals["c_last"] += seconds_c_last
        print(
            f"{layer:>5} {seconds_a:>12.3f}s {seconds_b:>11.3f}s {seconds_c:>13.3f}s {seconds_c_last:>8.3f}s {seconds_d:>9.3f}s {seconds_a / seconds_c:>6.1f} {seconds_c / seconds_d:>6.2f}"
        )
    print(
        f"{'total':>5} {totals['a']:>12.3f}s {totals['b']:>11.3f}s {totals['c']:>13.3f}s {totals['c_last']:>8.3f}s {totals['d']:>9.3f}s"
    )
    print("\nratios over the layers measured:")
    print(f"  (a)/(c) upstream loop / meminject trial     {totals['a'] / totals['c']:8.1f}×   (target ≥ 25×)")
    print(f"  (b)/(c) plain batched / meminject trial     {totals['b'] / totals['c']:8.1f}×")
    print(f"  (c)/(d) meminject trial / floor             {totals['c'] / totals['d']:8.2f}×   (target ≤ 1.5×)")
    print(f"  (d)/(c last) floor / positions=last trial   {totals['d'] / totals['c_last']:8.2f}×   (target ≥ 6×)")
    if undamaged is not None:
        print(
            f"  damage (metric.damage=kl) share of a trial   {totals['c'] / totals['c_nodmg'] - 1:8.1%}   (target ≤ 3%)  "
            f"[(c) without damage {totals['c_nodmg']:.3f} s]"
        )
        print(
            f"  damage share of a positions=last trial       {totals['c_last'] / totals['c_last_nodmg'] - 1:8.1%}   "
            f"[(c last) without damage {totals['c_last_nodmg']:.3f} s; floor / it {totals['d'] / totals['c_last_nodmg']:.2f}×]"
        )
        print(f"  (c)/(d) without damage                      {totals['c_nodmg'] / totals['d']:8.2f}×")
    print(
        f"max |ΔP(answer)| per prompt: (a)-(c) {diffs['a-c']:.2e} · (b)-(c) {diffs['b-c']:.2e} · (a)-(b) {diffs['a-b']:.2e}"
    )

    if args.grid:
        from meminject.engine._prefix import PrefixCache  # noqa: F401 - the grid uses the same evaluator

        points = [
            (InjectionSpec(layer=layer, tweak=float(tweak)), memory_cfg)
            for layer in range(model.n_layers)
            for tweak in range(1, 16)
        ]
        seconds_grid, results = timed(lambda: evaluator.evaluate_many(points))
        best = max(zip(points, results), key=lambda pr: pr[1].summary["mean_gain"])
        print(
            f"\npaper_grid unembed slice: {len(points)} trials in {seconds_grid:.1f} s ({seconds_grid / len(points):.2f} s/trial; target < 600 s); "
            f"best layer {best[0][0].layer} τ={best[0][0].tweak:g} mean gain {best[1].summary['mean_gain']:+.4f}"
        )

    if args.wiki:
        wiki_cfg = load_run_config([*model_args, "data=2wikimultihop", "memory.encoding=unembed"])
        wiki = load_dataset(wiki_cfg.data)
        wiki_eval = Evaluator.from_config(model, wiki, wiki_cfg)
        seconds_wclean, _ = timed(lambda: wiki_eval.clean)
        seconds_w, result = timed(lambda: wiki_eval.evaluate(InjectionSpec(layer=15, tweak=args.tweak), memory_cfg))
        print(
            f"\n2wikimultihop: {len(wiki)} prompts · clean pass {seconds_wclean:.1f} s · one trial at layer 15 {seconds_w:.2f} s · "
            f"padding {wiki_eval.padded_fraction:.1%} · {wiki_eval.prefix.describe()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
