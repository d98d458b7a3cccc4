#!/usr/bin/env bash
# Rotten-tomatoes LoRA fine-tune, lorafleet-train beside PyTorch + peft (issue 7), one run after
# the other on this machine, each with 2 threads:
#   for base in f32 nf4: train (r 8, alpha 16, all seven projections, lr 2e-4, effective batch
#   16, cosine with 3% warm-up, 1 epoch over the first $N training examples), then evaluate the
#   adapter on the 1000 test examples (greedy, up to 3 new tokens, prefix accuracy).
#
#   bench/rt_finetune.sh [N] [OUT] [which]    which: all | lorafleet | peer   (default all)
#
# Needs: target/release/{lorafleet,lorafleet-train} (cargo build --release), the model in
# models/smollm2-135m-instruct, data/rotten-tomatoes (lorafleet fetch-data rotten-tomatoes), and
# the peer venv (bench/HF_PEER.md, plus peft 0.21.2 and bitsandbytes 0.50.2).
# Each run's wall and CPU time come from /usr/bin/time; the trainers' own training-only times
# are in OUT/*/loss.jsonl and OUT/hf_*/summary.json.
set -euo pipefail
N=${1:-1600}
OUT=${2:-bench/out/rt_finetune}
WHICH=${3:-all}
MODEL=models/smollm2-135m-instruct
PY=${HF_PY:-/root/.cache/lorafleet/hf-venv/bin/python}
DATA=$OUT/data
mkdir -p "$DATA"
head -n "$N" data/rotten-tomatoes/train.jsonl > "$DATA/train.jsonl"
cp data/rotten-tomatoes/test.jsonl "$DATA/test.jsonl"
T="/usr/bin/time -f wall=%e,user=%U,sys=%S,maxrss_kb=%M"

log() { echo "[$(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)] $*" | tee -a "$OUT/runs.log"; }

for base in f32 nf4; do
  q=(); [ "$base" = nf4 ] && q=(--quantize nf4)
  if [ "$WHICH" = all ] || [ "$WHICH" = lorafleet ]; then
    d=$OUT/lorafleet_$base
    rm -rf "$d"; mkdir -p "$d"
    log "lorafleet-train $base: start"
    $T -o "$d/train.time" target/release/lorafleet-train train --model $MODEL "${q[@]}" \
      --data "$DATA/train.jsonl" --out "$d" --rank 8 --alpha 16 --target-modules all-linear \
      --lr 2e-4 --schedule cosine --warmup-ratio 0.03 --epochs 1 --micro-batch 4 --grad-accum 4 \
      --max-grad-norm 1 --no-progress > "$d/train.log" 2>&1
    log "lorafleet-train $base: $(tail -1 "$d/train.log") $(cat "$d/train.time")"
    $T -o "$d/eval.time" target/release/lorafleet eval --model $MODEL "${q[@]}" --threads 2 \
      --adapter-dir "$d" --adapter adapter --data "$DATA/test.jsonl" --max-new-tokens 3 \
      --batch-size 16 --out "$d/eval.jsonl" > "$d/eval.log" 2>&1
    log "lorafleet eval $base: $(grep -i accuracy "$d/eval.log" | tail -1) $(cat "$d/eval.time")"
  fi
  if [ "$WHICH" = all ] || [ "$WHICH" = peer ]; then
    d=$OUT/hf_$base
    rm -rf "$d"; mkdir -p "$d"
    log "peer $base: start"
    $T -o "$d/run.time" $PY bench/hf_train_peer.py --model $MODEL --data "$DATA" --out "$d" \
      --epochs 1 --micro-batch 16 --threads 2 --seed 0 "${q[@]}" > "$d/run.log" 2>&1
    log "peer $base: $(grep -E '"(train_seconds|tokens_per_s|accuracy|eval_seconds)"' "$d/summary.json" | tr -d '\n ') $(cat "$d/run.time")"
  fi
done
log "done"
