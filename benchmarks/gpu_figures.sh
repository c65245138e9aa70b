#!/usr/bin/env bash
# Issue 15's GPU figures in one go, about 8 minutes on one H100 or H200, from the repository root with the package
# installed or on PYTHONPATH (`PYTHON=...` names the interpreter, python3 by default): MFU of a ~1B model with 4
# heads in bf16 (beside NTP), FSDP vs DDP step time on one GPU at that shape, and self-speculative vs greedy
# tokens/s on a ~1B 4-head model trained for a few hundred steps on the generated task (identical output expected).
# Everything each benchmark prints goes to OUTDIR too, with its JSON.
#     benchmarks/gpu_figures.sh OUTDIR
set -euo pipefail
py=${PYTHON:-python3}  # the interpreter that holds a CUDA build of torch
out=${1:?usage: benchmarks/gpu_figures.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
shape=(--hidden 2048 --layers 16 --vocab 32000)  # 1.04B parameters with 4 heads
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/card.txt"
timeout 200 "$py" benchmarks/bench_mfu.py "${shape[@]}" --json "$out/mfu.json" 2>&1 | tee "$out/mfu.txt"
timeout 150 "$py" benchmarks/bench_fsdp.py --procs 1 --device cuda "${shape[@]}" --attn-heads 16 --mlp 5632 \
    --batch 4 --seq 2048 --steps 5 --rounds 2 --json "$out/fsdp.json" 2>&1 | tee "$out/fsdp.txt"
timeout 240 "$py" benchmarks/bench_speculative.py --device cuda --heads transformer --train-steps 300 \
    --prompts 30 --set model.tiny.hidden_size=2048 --set model.tiny.num_layers=16 \
    --set model.tiny.num_attention_heads=16 --set model.tiny.intermediate_size=5632 \
    --set train.mixed_precision=bf16 --set optim.lr=3.0e-4 --json "$out/speculative.json" 2>&1 \
    | tee "$out/speculative.txt"
