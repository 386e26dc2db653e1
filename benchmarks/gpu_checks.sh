#!/usr/bin/env bash
# Every GPU check in one go, for a lent GPU machine (see benchmarks/RESULTS.md):
#   bash benchmarks/gpu_checks.sh OUTDIR
# 0. set-up on a bare machine with no network: clibd's missing dependencies from wheels in .whl/, and
#    onnxruntime-gpu from .ortB/ plus the CUDA provider library unpacked beforehand to $ORT_PROVIDER
#    (benchmarks/gpu_bundle.sh packs them; the provider alone is near the 64 MiB a call may carry);
# 1. training throughput, peak memory and MFU of the paper-sized model in bf16 at batch 256 and 512, with
#    AdamW's default kernels, fused AdamW, and fused + compiled blocks (benchmarks/train_throughput.py);
# 2. photos at GPU speed: `clibd classify` of 1,000 photos on the CUDA provider against the image
#    encoder alone, the decode pool alone, and fp16 against fp32 (benchmarks/classify_gpu.py);
# 3. the real trainer on CUDA through torchrun with NCCL: compiled blocks, then accumulation (batch 8 × 2).
# Every step writes under OUTDIR as it goes, so a step stopped by its timeout loses only itself.
set -uo pipefail
OUT=${1:?usage: gpu_checks.sh OUTDIR}
mkdir -p "$OUT"
SITE=${SITE:-/tmp/site}
ORT_PROVIDER=${ORT_PROVIDER:-/tmp/ortA/libonnxruntime_providers_cuda.so}
mkdir -p "$SITE"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
if [ -f .ortB/ort_rest.tar.xz ]; then
    tar -xJf .ortB/ort_rest.tar.xz -C "$SITE"
    [ -f "$ORT_PROVIDER" ] && cp "$ORT_PROVIDER" "$SITE/onnxruntime/capi/libonnxruntime_providers_cuda.so"
fi
# The repository's training/ and export/ folders are the packages clibd_training and clibd_export once installed.
ln -sfn "$PWD/training" "$SITE/clibd_training"
ln -sfn "$PWD/export" "$SITE/clibd_export"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, transformers, onnxruntime as ort; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__, 'onnxruntime', ort.__version__, ort.get_available_providers())" 2>&1 | tee -a "$OUT/gpu.txt"

echo "== 1. training throughput"
timeout 230 python3 benchmarks/train_throughput.py --device cuda --batch-sizes 256,512 --steps 10 \
    --variants eager,fused,compiled --json "$OUT/train_throughput.json" --no-write 2>&1 | grep -v Warning | tail -12

echo "== 2. photos at GPU speed"
timeout 280 python3 benchmarks/classify_gpu.py --device cuda --photos 1000 --out /tmp/cg 2>&1 | grep -v Warning | tail -30
cp /tmp/cg/classify_gpu.json "$OUT/" 2>/dev/null

echo "== 3. the trainer on CUDA"
SIM=$(mktemp -d)/sim RUN=$(mktemp -d)/run
python3 -m clibd_cli.app simulate -o "$SIM" --species 40 --image-size 64 --workers 8 2>&1 | tail -1
for setting in "compile=true" "grad_accum=2"; do
    start=$(date +%s)
    timeout 50 python3 -m clibd_cli.app train --config tiny-cpu --data "$SIM" --output "$RUN-${setting%%=*}" \
        --nproc-per-node 1 --set precision=auto --set batch_size=8 --set epochs=3 --set "$setting" 2>&1 \
        | grep -v '^\s*$' | tail -3
    echo "tiny-cpu on GPU with $setting: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
    cp "$RUN-${setting%%=*}/metrics.jsonl" "$OUT/tiny_${setting%%=*}_metrics.jsonl" 2>/dev/null
done
