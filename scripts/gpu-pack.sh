#!/usr/bin/env bash
# Packs .gpu/ (what ../shared/scripts/gpu-bundle.sh builds: ~220 MiB, since every test and bench
# binary embeds the same CUDA fatbins) into .gpu.tar.xz (~13 MiB: xz -9's 64 MiB dictionary
# stores the shared bytes once), under the device tool's 64 MiB carry limit. Then:
#   run(carry: [".gpu.tar.xz"], command: "tar xJf .gpu.tar.xz && bash .gpu/check.sh")
# (check.sh: the CUDA parity tests under LORAFLEET_REQUIRE_GPU=1, then the GPU benches; run.sh
# from gpu-bundle.sh runs every binary, also those that need the model files, which stay here.)
# or one file's tests: "tar xJf .gpu.tar.xz && LORAFLEET_REQUIRE_GPU=1 .gpu/bin/cuda-* cuda_attention_train::".
# Usage, from the project root: NVCC=... ../shared/scripts/gpu-bundle.sh && scripts/gpu-pack.sh
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
[[ -x .gpu/run.sh ]] || { echo "gpu-pack: no .gpu/ (run NVCC=... ../shared/scripts/gpu-bundle.sh first)" >&2; exit 2; }
# A focused runner beside run.sh (which runs every binary, including those that need model
# files): the CUDA parity tests, then the GPU benches, each output under $OUT when set.
cat > .gpu/check.sh <<'CHECK'
#!/usr/bin/env bash
# The GPU checks that need no model files, in one call (device time is scarce):
#   bash .gpu/check.sh            every CUDA test binary (cuda, cuda_emu, cuda_step_counts) with LORAFLEET_REQUIRE_GPU=1, then the benches
#   bash .gpu/check.sh tests      the tests only
# Each binary's output also goes to $OUT/<name>.log when OUT is set.
cd "$(dirname "$0")/.."
export LORAFLEET_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
fail=0
keep() { [[ -n ${OUT:-} ]] && cp "$1" "$OUT/"; }
for t in .gpu/bin/cuda-* .gpu/bin/cuda_*; do
  n=$(basename "$t" | sed 's/-[0-9a-f]*$//')
  echo "== $n"
  "$t" > "/tmp/$n.log" 2>&1
  rc=$?
  keep "/tmp/$n.log"
  grep -E "^test |test result|rel L2|SKIP" "/tmp/$n.log"
  [[ $rc == 0 ]] || { fail=1; grep -A12 "panicked" "/tmp/$n.log" | head -n 60; }
done
if [[ ${1:-all} != tests ]]; then
  for b in .gpu/bin/train_gpu-* .gpu/bin/nf4_gpu-* .gpu/bin/linear_gpu-* .gpu/bin/lora-* .gpu/bin/attention-*; do
    [[ -x $b ]] || continue
    n=bench_$(basename "$b" | sed 's/-[0-9a-f]*$//')
    echo "== $n"
    # Short criterion runs: the summaries each bench prints are the figures to keep.
    "$b" --bench --warm-up-time 1 --measurement-time 2 > "/tmp/$n.log" 2>&1 || fail=1
    keep "/tmp/$n.log"
    tail -n 40 "/tmp/$n.log"
  done
  # The CUDA backend end to end: 7B-shape decode vs its floor, the LoRA Land load test.
  echo "== bench/gpu_bench.sh"
  OUT=${OUT:-/tmp/gpu_bench} bash bench/gpu_bench.sh || fail=1
fi
exit $fail
CHECK
chmod +x .gpu/check.sh
# bench/gpu_bench.sh needs a tokenizer (the weights are random): SmolLM2's, 2 MiB.
tokdir=${LORAFLEET_MODEL_DIR:-models/smollm2-135m-instruct}
[[ -f $tokdir/tokenizer.json ]] || { echo "gpu-pack: no $tokdir/tokenizer.json (lorafleet fetch-model smollm2-135m-instruct)" >&2; exit 2; }
mkdir -p .gpu/tokenizer
cp "$tokdir/tokenizer.json" .gpu/tokenizer/
[[ -f $tokdir/tokenizer_config.json ]] && cp "$tokdir/tokenizer_config.json" .gpu/tokenizer/
tar cf - .gpu | xz -9e -T1 > .gpu.tar.xz.tmp
mv .gpu.tar.xz.tmp .gpu.tar.xz
size=$(( $(stat -c %s .gpu.tar.xz) / 1048576 ))
echo "gpu-pack: .gpu.tar.xz ${size} MiB ($(wc -l < .gpu/list) executables)"
(( size < 60 )) || { echo "gpu-pack: over 60 MiB: filter .gpu/list and bundle fewer binaries" >&2; exit 1; }
