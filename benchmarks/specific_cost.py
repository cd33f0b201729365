"""What ``objective=specific_gain`` costs per trial, as a ratio to ``mean_gain``, in one run.

Run by hand (not a test), e.g.::

    HF_HUB_OFFLINE=1 python benchmarks/specific_cost.py --models tiny,smollm2-135m --data handwritten

A ``specific_gain`` trial runs its point and the same point with another prompt's memory
(``memory=shuffled``) as two copies of one stacked forward (``metric.specific``), so its
injected pass carries twice the rows; the clean pass is shared. For each model, on the same
evaluator (one clean pass), trials at the given layers alternate between the two objectives,
each at a fresh τ (no result is served from the cache), for ``--repeat`` rounds; the table
shows the mean milliseconds per trial of each arm and the ratio of their totals. Both arms run interleaved,
so a load beside the benchmark slows both alike.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--data", default="handwritten")
    parser.add_argument("--data-dir", default=os.environ.get("MEMINJECT_DATA_DIR", "../shared/data"))
    parser.add_argument("--depths", default="0.1,0.5,0.9", help="relative depths of the layers timed")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from meminject.config import load_run_config, layer_at_depth
    from meminject.data import load_dataset
    from meminject.engine import Evaluator, InjectionSpec, load_model

    print(f"{'model':<14} {'layers':<10} {'trials':>6} {'mean_gain ms':>13} {'specific_gain ms':>17} {'ratio':>6}")
    for name in args.models.split(","):
        data = [] if name == "tiny" else [f"data={args.data}", f"data.dir={args.data_dir}"]
        run = load_run_config([f"model={name}", "model.weights=raw", "model.device=cpu", *data])
        model = load_model(run.model)
        evaluator = Evaluator.from_config(model, load_dataset(run.data), run)
        evaluator.clean  # the clean pass, shared by both arms, not timed
        layers = sorted({layer_at_depth(float(d), model.n_layers) for d in args.depths.split(",")})
        times: dict[bool, list[float]] = {False: [], True: []}
        tweak = 1.0
        for _ in range(args.repeat):
            for layer in layers:
                for specific in (False, True):
                    tweak += 0.125  # a fresh point: nothing comes from the result cache
                    spec = InjectionSpec(layer=layer, tweak=tweak)
                    started = time.perf_counter()
                    evaluator.evaluate(spec, run.memory, specific=specific)
                    times[specific].append(time.perf_counter() - started)
        plain, paired = (sum(times[k]) / len(times[k]) * 1e3 for k in (False, True))
        print(
            f"{name:<14} {','.join(map(str, layers)):<10} {len(times[False]):>6} {plain:>13.1f} {paired:>17.1f} {paired / plain:>6.2f}"
        )


if __name__ == "__main__":
    main()
