"""The GPU path, measured in one go (under 4 minutes on one H100/H200): see gpu_check.sh.

1. the paper-grid unembed slice (every layer × τ 1..15 = 450 trials on SmolLM2) on all 1,000
   2WikiMultiHop prompts, stacked trials (perf.trials_per_forward), float32 and bfloat16:
   wall time, trials/s, peak GPU memory (goal: the float32 slice in under 60 s);
2. agreement with the CPU (float32) on a subset: per-prompt P(answer) after injection, for a few
   sites, CPU float32 vs CUDA float32 and CUDA bfloat16; and the ranking of the slice's sites
   between CUDA float32 and bfloat16 (Spearman, top-5 overlap).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def evaluator_for(device: str, dtype: str, data: list[str], per_forward: int):
    from meminject.config import load_run_config
    from meminject.data._dataset import load_dataset
    from meminject.engine._evaluation import Evaluator
    from meminject.engine._models import load_model

    cfg = load_run_config(
        [
            "model=smollm2-135m",
            "model.weights=raw",
            f"model.device={device}",
            f"model.dtype={dtype}",
            *data,
            "memory.encoding=unembed",
            f"perf.trials_per_forward={per_forward}",
            "perf.max_batch_tokens=65536",
        ]
    )
    return Evaluator.from_config(load_model(cfg.model), load_dataset(cfg.data), cfg), cfg


def grid(evaluator, cfg):
    from meminject.engine._evaluation import InjectionSpec

    return [
        (InjectionSpec(layer=layer, tweak=float(tau)), cfg.memory)
        for layer in range(evaluator.model.n_layers)
        for tau in range(1, 16)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-forward", type=int, default=16, help="perf.trials_per_forward on the GPU")
    parser.add_argument("--subset", type=int, default=40, help="prompts compared with the CPU")
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only to smoke-test this script")
    parser.add_argument(
        "--limit", type=int, default=None, help="2WikiMultiHop prompts of the grid (default: all 1,000)"
    )
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device visible: this script measures the GPU path (--device cpu only smoke-tests it)")
        return 2
    from scipy.stats import spearmanr

    from meminject.cli._main import _quiet_libraries
    from meminject.engine._evaluation import InjectionSpec

    _quiet_libraries()
    torch.set_grad_enabled(False)
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'} · torch {torch.__version__} · CUDA {torch.version.cuda}")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    wiki = ["data=2wikimultihop", *([f"data.limit={args.limit}"] if args.limit else [])]
    values = {}
    for dtype in ("float32", "bfloat16"):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        evaluator, cfg = evaluator_for(args.device, dtype, wiki, args.per_forward)
        started = time.perf_counter()
        evaluator.clean
        sync()
        clean_s = time.perf_counter() - started
        points = grid(evaluator, cfg)
        started = time.perf_counter()
        results = evaluator.evaluate_many(points)
        sync()
        grid_s = time.perf_counter() - started
        values[dtype] = np.array([r.summary["mean_gain"] for r in results])
        best = int(values[dtype].argmax())
        print(
            f"{dtype}: {len(evaluator.rows)} prompts · clean pass {clean_s:.1f} s · {len(points)} trials in {grid_s:.1f} s = {len(points) / grid_s:.1f} trials/s "
            f"(goal: < 60 s) · peak GPU memory {torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan'):.2f} GiB · best L{points[best][0].layer} τ={points[best][0].tweak:g} {values[dtype][best]:+.4f}",
            flush=True,
        )
    top = lambda v: set(np.argsort(-v)[:5])  # noqa: E731
    print(
        f"ranking float32 vs bfloat16 on {args.device}: Spearman {spearmanr(values['float32'], values['bfloat16']).statistic:.4f}, "
        f"top-5 overlap {len(top(values['float32']) & top(values['bfloat16']))}/5, max |Δ mean gain| {np.abs(values['float32'] - values['bfloat16']).max():.2e}"
    )
    subset = ["data=2wikimultihop", f"data.limit={args.subset}"]
    sites = [InjectionSpec(layer=layer, tweak=4.0) for layer in (3, 15, 27)]
    cpu, cfg = evaluator_for("cpu", "float32", subset, 1)
    reference = [
        r.per_prompt["answer_prob_after"].to_numpy() for r in cpu.evaluate_many([(s, cfg.memory) for s in sites])
    ]
    for dtype in ("float32", "bfloat16"):
        gpu, cfg = evaluator_for(args.device, dtype, subset, args.per_forward)
        got = [
            r.per_prompt["answer_prob_after"].to_numpy() for r in gpu.evaluate_many([(s, cfg.memory) for s in sites])
        ]
        print(
            f"CPU float32 vs {args.device} {dtype} on {args.subset} prompts × {len(sites)} sites: max |ΔP(answer)| {max(np.abs(a - b).max() for a, b in zip(reference, got)):.2e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
