#!/usr/bin/env bash
# Every GPU check in one go, for a lent GPU machine (see benchmarks/RESULTS.md):
#   bash benchmarks/gpu_checks.sh OUTDIR
# 1. training throughput, peak memory and MFU of the paper-sized model in bf16 at batch 64, 256 and the
#    paper's 500 per GPU (benchmarks/train_throughput.py);
# 2. the real trainer on CUDA: `clibd train` through torchrun with NCCL and bf16 autocast on synthetic data,
#    then a DNA-pretraining run of the same engine.
set -uo pipefail
OUT=${1:?usage: gpu_checks.sh OUTDIR}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, transformers; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
# One process per batch size, so an out-of-memory at the paper's 500 per GPU loses only that row;
# each JSON holds samples/s, peak memory, FLOPs per step (counted by torch) and MFU.
for batch in 64 256 500; do
    timeout 200 python3 benchmarks/train_throughput.py --device cuda --batch-sizes "$batch" --steps 10 \
        --json "$OUT/train_throughput_b$batch.json" --no-write 2>&1 | tail -4
done
SIM=$(mktemp -d)/sim RUN=$(mktemp -d)/run
python3 -m clibd_cli.app simulate -o "$SIM" --species 40 --image-size 64 --workers 8 2>&1 | tail -1
start=$(date +%s)
# batch 8 x grad_accum 2: the same contrastive batch of 16, through the feature-caching accumulation in bf16
timeout 240 python3 -m clibd_cli.app train --config tiny-cpu --data "$SIM" --output "$RUN" --nproc-per-node 1 \
    --set precision=auto --set batch_size=8 --set grad_accum=2 2>&1 | grep -v '^\s*$' | tail -5
echo "tiny-cpu on GPU: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
cp "$RUN/metrics.jsonl" "$OUT/tiny_gpu_metrics.jsonl" 2>/dev/null
timeout 120 python3 -m clibd_cli.app train --config tiny-cpu --stage dna-pretrain --data "$SIM" --output "$RUN-dna" \
    --nproc-per-node 1 --set epochs=3 2>&1 | grep -v '^\s*$' | tail -3
cp "$RUN-dna/metrics.jsonl" "$OUT/dna_pretrain_gpu_metrics.jsonl" 2>/dev/null
ls "$RUN-dna/dna_encoder" | tee -a "$OUT/gpu.txt"
