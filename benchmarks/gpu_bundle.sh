#!/usr/bin/env bash
# Pack what benchmarks/gpu_checks.sh needs on a bare, offline GPU machine (Python 3.12, torch, CUDA 13),
# into three ignored folders of the repository, each small enough for one call (64 MiB):
#   .whl/   clibd's dependencies that the machine lacks, as wheels (~13 MB)
#   .ortA/  onnxruntime-gpu's CUDA provider with only sm_90 code kept (benchmarks/prune_fatbin.py), xz (~52 MB)
#   .ortB/  the rest of onnxruntime-gpu (~18 MB)
# First call: carry .ortA and unpack it to /tmp/ortA; second call, at once (the machine stays warm ~30 s):
# carry .ortB and .whl and run gpu_checks.sh.
set -euo pipefail
ORT=${ORT:-1.31.1}
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.ortA/\n/.ortB/\n' >> .git/info/exclude
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
pip_get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d "$@"; }
mkdir -p .whl .ortA .ortB
pip_get .whl annotated-types biopython click pillow_heif platformdirs pydantic pydantic_core pyopal "typer>=0.29,<0.30" \
    typing-inspection typing_extensions shellingham
work=$(mktemp -d)
pip_get "$work" "onnxruntime-gpu==$ORT"
(cd "$work" && unzip -q onnxruntime_gpu-*.whl)
python3 benchmarks/prune_fatbin.py "$work/onnxruntime/capi/libonnxruntime_providers_cuda.so" 90
xz -6 -T0 -c "$work/onnxruntime/capi/libonnxruntime_providers_cuda.so.pruned" > .ortA/providers_cuda.so.xz
(cd "$work" && tar --exclude='libonnxruntime_providers_cuda.so*' --exclude='libonnxruntime_providers_tensorrt.so' \
    -cf - onnxruntime onnxruntime_gpu-*.dist-info) | xz -6 -T0 > .ortB/ort_rest.tar.xz
rm -rf "$work"
du -sh .whl .ortA .ortB
