#!/usr/bin/env bash
# One command for a CUDA machine: a few DPO and PPO steps of a GPT-2-medium-size model (from scratch,
# 8k BPE tokenizer) in bf16 through alignlab's own trainers; prints tokens/s, peak memory
# (torch.cuda.max_memory_allocated) and MFU (the formula and the peak FLOP/s source are in
# benchmarks/gpu_check.py). No data or Hub access is needed.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run          # the same code paths on CPU, tiny, float32
#   bash benchmarks/gpu_check.sh --peak-tflops 989  # a card not in the table
#
#   bash benchmarks/gpu_check.sh --lora           # the policy with LoRA adapters, π_ref its adapters off (needs peft)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
if [[ " $* " != *" --dry-run "* ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec python benchmarks/gpu_check.py "$@"
