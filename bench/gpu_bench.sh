#!/usr/bin/env bash
# The CUDA backend's figures in one call (device time is scarce): the device, its copy
# bandwidth, batch-1 decode ms/token of a full-size shape with an NF4 and a bf16 base beside the
# floor (weight bytes per token / copy bandwidth), then the LoRA Land load test (1, 5, 10, 20,
# 50 users) on the base alone and over 25 rank-8 adapters. Random weights (--random-weights),
# so no checkpoint travels. Writes $OUT/gpu_bench.json and each command's log; prints the
# table last.
#
# On the GPU machine, from the unpacked bundle (scripts/gpu-pack.sh puts the binary and a
# tokenizer in .gpu/):   OUT=$OUT bash bench/gpu_bench.sh
# Here, on the emulator, with a tiny shape (tests/serve/gpu_bench_script.rs runs exactly this):
#   LORAFLEET=target/debug/lorafleet TOKENIZER=models/smollm2-135m-instruct SHAPE=tests/golden/tiny_shape.json \
#   LORAFLEET_CUDA_EMU=1 USERS=1,2 DURATION=1 INPUT=4-8 OUTPUT=2-4 NEW_TOKENS=4 REPS=1 COPY_BYTES=4M \
#   KV_BYTES=64M ADAPTER_MEMORY=64M bash bench/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LF=${LORAFLEET:-.gpu/bin/lorafleet}
TOK=${TOKENIZER:-.gpu/tokenizer}
SHAPE=${SHAPE:-mistral-7b}
DEVICE=${DEVICE:-cuda}
USERS=${USERS:-1,5,10,20,50}
DURATION=${DURATION:-20}
ADAPTERS=${ADAPTERS:-25}
RANK=${RANK:-8}
INPUT=${INPUT:-30-500}
OUTPUT=${OUTPUT:-1-120}
NEW_TOKENS=${NEW_TOKENS:-64}
REPS=${REPS:-5}
COPY_BYTES=${COPY_BYTES:-1G}
KV_BYTES=${KV_BYTES:-40G}
ADAPTER_MEMORY=${ADAPTER_MEMORY:-8G}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
[[ -x $LF ]] || { echo "gpu_bench: no lorafleet binary at $LF (set LORAFLEET)" >&2; exit 2; }
[[ -f $TOK/tokenizer.json ]] || { echo "gpu_bench: no tokenizer.json in $TOK (set TOKENIZER)" >&2; exit 2; }
fail=0
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>/dev/null \
  || echo "no nvidia-smi (not a GPU machine)" > "$OUT/nvidia-smi.csv"
cat "$OUT/nvidia-smi.csv"
common=(--model "$TOK" --random-weights "$SHAPE" --device "$DEVICE")
: > "$OUT/decode.jsonl"
for fmt in nf4 bf16; do
  case $fmt in nf4) flags=(--quantize nf4) ;; bf16) flags=(--base-dtype bf16) ;; esac
  echo "== decode-bench $SHAPE $fmt"
  if "$LF" decode-bench "${common[@]}" "${flags[@]}" --new-tokens "$NEW_TOKENS" --reps "$REPS" \
      --copy-bytes "$COPY_BYTES" --kv-cache-bytes "$KV_BYTES" --json > "$OUT/decode_$fmt.json" 2> "$OUT/decode_$fmt.log"; then
    cat "$OUT/decode_$fmt.json" >> "$OUT/decode.jsonl"
  else
    fail=1; tail -n 20 "$OUT/decode_$fmt.log"
  fi
done
for k in 0 "$ADAPTERS"; do
  echo "== load test: $SHAPE nf4, $k adapters, users $USERS, ${DURATION} s each"
  extra=(--adapters "$k")
  (( k > 0 )) && extra+=(--synthetic-adapters "$k" --rank "$RANK")
  if "$LF" bench "${common[@]}" --quantize nf4 --concurrency "$USERS" --duration "$DURATION" \
      --input-tokens "$INPUT" --output-tokens "$OUTPUT" --kv-cache-bytes "$KV_BYTES" \
      --adapter-memory "$ADAPTER_MEMORY" "${extra[@]}" --json > "$OUT/loadtest_$k.txt" 2> "$OUT/loadtest_$k.log"; then
    tail -n 1 "$OUT/loadtest_$k.txt" > "$OUT/loadtest_$k.json"
  else
    fail=1; tail -n 20 "$OUT/loadtest_$k.log"
  fi
done
python3 - "$OUT" "$SHAPE" "$ADAPTERS" "$RANK" <<'PY' || fail=1
import json, os, sys
out, shape, k, rank = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None
decode = [json.loads(l) for l in open(os.path.join(out, "decode.jsonl")) if l.strip()]
base, lora = load("loadtest_0.json") or [], load(f"loadtest_{k}.json") or []
json.dump({"shape": shape, "nvidia_smi": open(os.path.join(out, "nvidia-smi.csv")).read(), "decode": decode,
           "load_test": {"base": base, f"{k}_adapters_rank_{rank}": lora}}, open(os.path.join(out, "gpu_bench.json"), "w"), indent=1)
print()
if decode:
    print(f"device: {decode[0]['device']}; copy bandwidth {decode[0]['copy_gb_s']:.1f} GB/s (read + write)")
print(f"| {shape} batch-1 decode | ms/token | floor ms | GB/token | floor / measured |")
print("|---|---:|---:|---:|---:|")
for d in decode:
    print(f"| {d['format']} | {d['times']['median_ms']:.3f} | {d['floor_ms']:.3f} | {d['weight_bytes_per_token']/1e9:.2f} | {100*d['fraction_of_floor']:.0f}% |")
print()
print(f"| users | base tok/s | {k} x rank-{rank} tok/s | ratio | base p90 TTFT ms | adapters p90 TTFT ms | errors |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for b in base:
    l = next((p for p in lora if p["concurrency"] == b["concurrency"]), None)
    lt = l["throughput_tok_s"] if l else float("nan")
    ratio = lt / b["throughput_tok_s"] if l and b["throughput_tok_s"] else float("nan")
    print(f"| {b['concurrency']} | {b['throughput_tok_s']:.1f} | {lt:.1f} | {ratio:.2f} | {b['time_to_first_token']['p90_ms']:.0f} | "
          f"{l['time_to_first_token']['p90_ms'] if l else float('nan'):.0f} | {b['errors'] + (l['errors'] if l else 0)} |")
if not decode or not base or not lora:
    print("gpu_bench: some runs failed (see the logs in " + out + ")"); sys.exit(1)
PY
exit $fail
