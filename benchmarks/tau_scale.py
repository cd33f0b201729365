"""How an absolute τ relates to the layer's residual norm: the relative τ it amounts to.

Run by hand (not a test), e.g.::

    HF_HUB_OFFLINE=1 python benchmarks/tau_scale.py --models smollm2-135m,gemma3-270m --sites "gemma3-270m:7:15,gemma3-270m:9:15"

An absolute injection adds τ·v; a relative one adds τ_rel·N_L·v/|v|, with N_L the layer's typical
residual norm (the clean pass's median over prompts and positions, what ``injection.scale=relative``
uses). So an absolute τ amounts to τ_rel = τ·|v| / N_L, prompt by prompt. For each model and
encoding the table shows, at each listed layer, N_L, the median memory norm |v| over the
dataset's correct memories, and the relative τ of absolute τ = 1 and of each ``--sites`` τ.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--data", default="handwritten")
    parser.add_argument("--data-dir", default=os.environ.get("MEMINJECT_DATA_DIR", "../shared/data"))
    parser.add_argument("--encoding", default="unembed")
    parser.add_argument("--sites", default="", help="MODEL:LAYER:TAU,... raw-τ optima to convert")
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    args = parser.parse_args()

    from meminject.config import layer_at_depth, load_run_config
    from meminject.data import load_dataset
    from meminject.engine import Evaluator, InjectionSpec, load_model

    sites = [s.split(":") for s in args.sites.split(",") if s]
    print(f"{'model':<14} {'layer':>5} {'N_L':>10} {'|v|':>8} {'rel τ of τ=1':>13}  raw-τ sites as relative τ")
    for name in args.models.split(","):
        run = load_run_config(
            [f"model={name}", "model.weights=raw", "model.device=cpu", f"data={args.data}", f"data.dir={args.data_dir}"]
        )
        model = load_model(run.model)
        evaluator = Evaluator.from_config(model, load_dataset(run.data), run)
        norms = evaluator.residual_norms
        layers = sorted(
            {layer_at_depth(float(d), model.n_layers) for d in args.depths.split(",")}
            | {int(layer) for m, layer, _ in sites if m == name}
        )
        for layer in layers:
            _, vectors = evaluator.encoded_memories(
                InjectionSpec(layer=layer, tweak=1.0, encoding=args.encoding), run.memory
            )
            v = float(np.median(vectors.norm(dim=-1).cpu().numpy()))
            converted = [
                f"τ{float(t):g} → {float(t) * v / float(norms[layer]):.4g}"
                for m, lay, t in sites
                if m == name and int(lay) == layer
            ]
            print(
                f"{name:<14} {layer:>5} {float(norms[layer]):>10.1f} {v:>8.3f} {v / float(norms[layer]):>13.4g}  {' '.join(converted)}"
            )


if __name__ == "__main__":
    main()
