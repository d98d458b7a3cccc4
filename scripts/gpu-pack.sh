#!/usr/bin/env bash
# Packs .gpu/ (what ../shared/scripts/gpu-bundle.sh builds: ~220 MiB, since every test and bench
# binary embeds the same CUDA fatbins) into .gpu.tar.xz (~13 MiB: xz -9's 64 MiB dictionary
# stores the shared bytes once), under the device tool's 64 MiB carry limit. Then:
#   run(carry: [".gpu.tar.xz"], command: "tar xJf .gpu.tar.xz && bash .gpu/run.sh [FILTER]")
# or one binary: "tar xJf .gpu.tar.xz && LORAFLEET_REQUIRE_GPU=1 .gpu/bin/cuda_attention_train-*".
# Usage, from the project root: NVCC=... ../shared/scripts/gpu-bundle.sh && scripts/gpu-pack.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
[[ -x .gpu/run.sh ]] || { echo "gpu-pack: no .gpu/ (run NVCC=... ../shared/scripts/gpu-bundle.sh first)" >&2; exit 2; }
tar cf - .gpu | xz -9e -T1 > .gpu.tar.xz.tmp
mv .gpu.tar.xz.tmp .gpu.tar.xz
size=$(( $(stat -c %s .gpu.tar.xz) / 1048576 ))
echo "gpu-pack: .gpu.tar.xz ${size} MiB ($(wc -l < .gpu/list) executables)"
(( size < 60 )) || { echo "gpu-pack: over 60 MiB: filter .gpu/list and bundle fewer binaries" >&2; exit 1; }
