#!/usr/bin/env bash
# lorafleet CPU backend vs HF transformers (PyTorch CPU), same machine, same run,
# same thread count, same token ids. Prints a markdown table for bench/RESULTS.md
# plus the exact commands used.
#
# usage: bench/cpu_vs_hf.sh [MODEL_DIR]
#   MODEL_DIR      HF-layout dir (config.json, model.safetensors f32, tokenizer.json);
#                  default models/smollm2-135m-instruct
#                  (make it with: target/release/lorafleet fetch-model smollm2-135m-instruct)
# env:
#   HF_PY          python of the HF venv (default /root/.cache/lorafleet/hf-venv/bin/python)
#   LORAFLEET_BIN  default target/release/lorafleet (cargo build --release)
#   THREADS        default 2 (RAYON_NUM_THREADS + --threads for lorafleet,
#                  torch.set_num_threads + OMP/MKL_NUM_THREADS for torch)
#   REPEATS        default 5 (each side: 1 warm-up, then the median of REPEATS)
#   DECODE_TOKENS  default 128
#   OUT_DIR        default bench/out/cpu_vs_hf-<timestamp> (raw JSON, summary.md)
#
# The HF venv is NOT created by this script. To create it:
#   python3 -m venv /root/.cache/lorafleet/hf-venv
#   /root/.cache/lorafleet/hf-venv/bin/pip install torch==2.15.0 transformers==5.23.0 safetensors
#   # (default PyPI torch wheel: pulls CUDA libs, runs on CPU; fp32 GEMMs go to MKL
#   #  sgemm. Exact set used: bench/hf_peer_venv_freeze.txt, python 3.11.7.)
#
# Close everything else first (cargo builds especially): with 2 cores any other
# load distorts both sides. The script prints the load average before starting.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MODEL="${1:-${MODEL:-models/smollm2-135m-instruct}}"
HF_PY="${HF_PY:-/root/.cache/lorafleet/hf-venv/bin/python}"
LF="${LORAFLEET_BIN:-target/release/lorafleet}"
THREADS="${THREADS:-2}"
REPEATS="${REPEATS:-5}"
DECODE_TOKENS="${DECODE_TOKENS:-128}"
OUT_DIR="${OUT_DIR:-bench/out/cpu_vs_hf-$(date -u +%Y%m%dT%H%M%SZ)}"
DECODE_IDS="504,3575,282,4649,314"            # "The capital of France is"
PREFILL_CSV="bench/prefill_ids_512.csv"      # same ids as bench/prefill_ids_512.json

die() { echo "error: $*" >&2; exit 1; }
[[ -f "$MODEL/config.json" && -f "$MODEL/tokenizer.json" ]] \
  || die "model dir '$MODEL' needs config.json, model.safetensors, tokenizer.json (try: $LF fetch-model smollm2-135m-instruct)"
[[ -x "$LF" ]] || die "lorafleet binary '$LF' not found: run 'cargo build --release' or set LORAFLEET_BIN"
if [[ ! -x "$HF_PY" ]]; then
  cat >&2 <<EOF
error: HF venv python '$HF_PY' not found. Create it (not done automatically):
  python3 -m venv /root/.cache/lorafleet/hf-venv
  /root/.cache/lorafleet/hf-venv/bin/pip install torch transformers safetensors
or point HF_PY at an existing python with torch + transformers.
EOF
  exit 1
fi
"$HF_PY" -c 'import torch, transformers' 2>/dev/null || die "$HF_PY cannot import torch + transformers"
[[ -f "$PREFILL_CSV" ]] || die "missing $PREFILL_CSV"
PREFILL_IDS="$(tr -d '[:space:]' < "$PREFILL_CSV")"

mkdir -p "$OUT_DIR"
echo "== $(date -u +%FT%TZ)  $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg)  (should be ~0 before a benchmark)"
echo "== out: $OUT_DIR"

LF_DECODE_CMD=(env RAYON_NUM_THREADS="$THREADS" "$LF" generate --model "$MODEL" --threads "$THREADS"
  --prompt-ids "$DECODE_IDS" --max-new-tokens "$DECODE_TOKENS" --temperature 0 --ignore-eos --json)
LF_PREFILL_CMD=(env RAYON_NUM_THREADS="$THREADS" "$LF" generate --model "$MODEL" --threads "$THREADS"
  --prompt-ids "$PREFILL_IDS" --max-new-tokens 1 --temperature 0 --ignore-eos --json)
HF_CMD=(env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" "$HF_PY" bench/hf_cpu_peer.py
  --model "$MODEL" --threads "$THREADS" --decode-tokens "$DECODE_TOKENS" --prefill-tokens 512
  --prefill-ids-file bench/prefill_ids_512.json --repeats "$REPEATS" --json "$OUT_DIR/hf.json")

# 1) lorafleet: 1 warm-up + REPEATS runs of each (one process per run; the
#    engine's own timers exclude model load).
for kind in decode prefill; do
  for i in $(seq 0 "$REPEATS"); do
    if [[ $kind == decode ]]; then cmd=("${LF_DECODE_CMD[@]}"); else cmd=("${LF_PREFILL_CMD[@]}"); fi
    f="$OUT_DIR/lf_${kind}_$i.json"
    "${cmd[@]}" > "$f" 2> "$OUT_DIR/lf_${kind}_$i.stderr" \
      || { cat "$OUT_DIR/lf_${kind}_$i.stderr" >&2; die "lorafleet $kind run $i failed"; }
    [[ $i == 0 ]] && echo "lorafleet $kind: warm-up done" || echo "lorafleet $kind run $i: $(grep -oE "\"${kind}_tokens_per_s\": *[0-9.eE+-]+" "$f" | head -1)"
  done
done

# 2) the HF transformers peer (its own warm-up + median of REPEATS).
"${HF_CMD[@]}" 2>&1 | grep -v '^Loading weights' | tee "$OUT_DIR/hf.log"

# 3) summary
{
  echo "# lorafleet (release) \$ ${LF_DECODE_CMD[*]}"
  echo "# lorafleet prefill   \$ ${LF_PREFILL_CMD[*]/$PREFILL_IDS/\"\$(cat $PREFILL_CSV)\"}"
  echo "# transformers        \$ ${HF_CMD[*]}"
} > "$OUT_DIR/commands.txt"

"$HF_PY" - "$OUT_DIR" "$REPEATS" "$THREADS" "$MODEL" "$DECODE_TOKENS" <<'PY'
import glob, json, os, platform, statistics, subprocess, sys
out, repeats, threads, model, n_new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])

def lf_runs(kind):
    rs = []
    for i in range(1, repeats + 1):
        txt = open(f"{out}/lf_{kind}_{i}.json").read()
        objs = [json.loads(l) for l in txt.splitlines() if l.strip().startswith("{")]
        assert objs, f"no JSON in lf_{kind}_{i}.json"
        rs.append(objs[-1])
    return rs

dec, pre = lf_runs("decode"), lf_runs("prefill")
hf = json.load(open(f"{out}/hf.json"))
lf_dec_runs = [r["decode_tokens_per_s"] for r in dec]
lf_pre_runs = [r["prefill_tokens_per_s"] for r in pre]
hf_dec_runs = hf["decode_tokens_per_s_runs"]
hf_pre_runs = [hf["prefill_tokens"] / t for t in hf["prefill_s_runs"]]
lf_dec, lf_pre = statistics.median(lf_dec_runs), statistics.median(lf_pre_runs)
n_tok = len(dec[0]["token_ids"])
assert n_tok == n_new, f"lorafleet produced {n_tok} tokens, expected {n_new}"
assert len(pre[0]["prompt_ids"]) == hf["prefill_tokens"] and pre[0]["prompt_ids"] == hf["prefill_ids"], "prefill ids differ"

# greedy agreement over all new tokens: both sides run plain greedy that neither
# stops at nor masks EOS (lorafleet --ignore-eos; the HF peer's manual loop).
lf_ids, hf_ids = dec[0]["token_ids"], hf["generated_ids"]
stop = min(len(lf_ids), len(hf_ids))
agree = next((i for i in range(stop) if lf_ids[i] != hf_ids[i]), stop)

try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    rev = "?"
rows = [
    (f"decode, batch 1, {n_new} new tokens (tok/s)", lf_dec, hf["decode_tokens_per_s"]),
    (f"prefill, {hf['prefill_tokens']} tokens (tok/s)", lf_pre, hf["prefill_tokens_per_s"]),
]
md = []
md.append(f"CPU: {hf['cpu_model']}, {hf['nproc']} cores; {threads} threads each; fp32; model `{model}`; "
          f"lorafleet {rev}; transformers {hf['transformers_version']} + torch {hf['torch_version']} "
          f"({hf['attn_implementation']}, {hf['torch_parallel_backend']}, MKL={hf['mkl_available']}, "
          f"{hf['cpu_capability']}); median of {repeats} after 1 warm-up.")
md.append("")
md.append("| metric | lorafleet CPU | HF transformers | lorafleet / HF |")
md.append("|---|---:|---:|---:|")
for name, a, b in rows:
    md.append(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
md.append("")
md.append("Best of the runs (tok/s), lorafleet vs HF: "
          f"decode {max(lf_dec_runs):.2f} vs {max(hf_dec_runs):.2f}, "
          f"prefill {max(lf_pre_runs):.2f} vs {max(hf_pre_runs):.2f}.")
noisy = [name for name, runs in (("lorafleet decode", lf_dec_runs), ("lorafleet prefill", lf_pre_runs),
                                 ("HF decode", hf_dec_runs), ("HF prefill", hf_pre_runs))
         if max(runs) / min(runs) > 1.15]
if noisy:
    md.append(f"WARNING: max/min over runs > 1.15 for {', '.join(noisy)}: the machine was not quiet; rerun.")
md.append(f"Greedy ids: identical for the first {agree} of {stop} new tokens. "
          f"HF model.generate() decode cross-check: {hf.get('generate_decode_tokens_per_s')} tok/s. "
          f"Load avg before/after HF run: {hf['load_avg_1m_before']}/{hf['load_avg_1m_after']}.")
text = "\n".join(md)
print("\n" + text)
open(f"{out}/summary.md", "w").write(text + "\n")
json.dump({"lorafleet_decode_tokens_per_s": lf_dec, "lorafleet_prefill_tokens_per_s": lf_pre,
           "lorafleet_decode_runs": lf_dec_runs, "lorafleet_prefill_runs": lf_pre_runs,
           "hf_decode_runs": hf_dec_runs, "hf_prefill_runs": hf_pre_runs, "noisy": noisy,
           "hf_decode_tokens_per_s": hf["decode_tokens_per_s"], "hf_prefill_tokens_per_s": hf["prefill_tokens_per_s"],
           "greedy_agree_tokens": agree, "greedy_compared_tokens": stop},
          open(f"{out}/summary.json", "w"), indent=1)
PY
echo
echo "Commands (also in $OUT_DIR/commands.txt):"
cat "$OUT_DIR/commands.txt"
