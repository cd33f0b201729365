"""What the damage measure, prompt chunks and bfloat16 cost a trial (ratios from one run).

Run by hand (not a test)::

    HF_HUB_OFFLINE=1 MEMINJECT_DATA_DIR=../shared/data python benchmarks/trial_variants.py

SmolLM2 (raw weights), the 106 handwritten prompts, unembed, τ=4 at layers 5, 15 and 25; each
variant gets its own evaluator (clean pass excluded from the timing); a trial's time is the
median of --repeat runs at slightly different τ (no result-cache hits). Variants:

  baseline    metric.damage=none, one chunk (a trial before this round)
  damage      metric.damage=kl (the default): target <= 1.3× the baseline
  chunks=8    metric.damage=none, prompts in 8 seeded chunks (what a pruned trial that is not
              stopped costs, one trial per pass: a TPE sweep)
  chunks=8 ×8 the same, 8 same-layer trials stacked per pass (a pruned grid: its points come
              layer by layer); per trial
  bfloat16    metric.damage=none, model.dtype=bfloat16

For each one-trial-per-pass variant it also times the floor of the same forwards (layers L..N
on the same batches, no hooks: trial_throughput.py's floor): what a chunk costs beyond it is
meminject's; what the forwards cost beyond a single pass is the CPU's, for small batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "baseline": (["metric.damage=none"], 1),
    "damage": (["metric.damage=kl"], 1),
    "chunks=8": (["metric.damage=none"], 8),
    "chunks=8 ×8": (["metric.damage=none", "perf.trials_per_forward=8"], 8),
    "bfloat16": (["metric.damage=none", "model.dtype=bfloat16"], 1),
}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="5,15,25")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", default="handwritten")
    args = parser.parse_args()
    from meminject.cli._main import _quiet_libraries
    from meminject.config import load_run_config
    from meminject.data._dataset import load_dataset
    from meminject.engine._evaluation import Evaluator, InjectionSpec
    from meminject.engine._models import load_model

    _quiet_libraries()
    layers = [int(x) for x in args.layers.split(",")]
    totals = {}
    for name, (overrides, chunks) in VARIANTS.items():
        cfg = load_run_config(
            [
                "model=smollm2-135m",
                "model.device=cpu",
                "model.weights=raw",
                f"data={args.data}",
                "memory.encoding=unembed",
                *overrides,
            ]
        )
        evaluator = Evaluator.from_config(load_model(cfg.model), load_dataset(cfg.data), cfg, chunks=chunks)
        evaluator.clean
        per_layer = []
        for layer in layers:
            times = []
            stack = evaluator.trials_per_forward
            for k in range(args.repeat):
                started = time.perf_counter()
                evaluator.evaluate_many(
                    [(InjectionSpec(layer=layer, tweak=4.0 + 1e-6 * (k * stack + j)), cfg.memory) for j in range(stack)]
                )
                times.append((time.perf_counter() - started) / stack)
            per_layer.append(statistics.median(times))
        totals[name] = sum(per_layer)
        print(
            f"{name:10s} "
            + "  ".join(f"L{layer} {t:.3f}s" for layer, t in zip(layers, per_layer))
            + f"  total {totals[name]:.3f}s",
            flush=True,
        )
        if evaluator.trials_per_forward == 1 and evaluator.prefix is not None and "bfloat16" not in name:
            # the floor of these very forwards: layers L..N on the same batches, no hooks, no reads
            floor = sum(
                statistics.median(
                    _timed(
                        lambda: [
                            evaluator.prefix.last_logits(p, layer, []) for p in range(len(evaluator.obscure_batches))
                        ]
                    )
                    for _ in range(args.repeat)
                )
                for layer in layers
            )
            print(
                f"{'':10s} its {len(evaluator.obscure_batches)} forwards without hooks: {floor:.3f}s, so the trial is {totals[name] / floor:.2f}× their floor",
                flush=True,
            )
    base = totals["baseline"]
    for name, total in totals.items():
        print(f"{name:10s} {total / base:5.2f}× the baseline")


if __name__ == "__main__":
    main()
