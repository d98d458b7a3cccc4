#!/usr/bin/env bash
# Rotten-tomatoes LoRA fine-tune, lorafleet-train beside PyTorch + peft (issue 7), one run after
# the other on this machine, each with 2 threads:
#   for each base (f32, nf4): train (r 8, alpha 16, all seven projections, lr 2e-4, effective
#   batch 16 in one micro-batch, cosine with 3% warm-up, 1 epoch over the first $N training
#   examples), then evaluate the adapter on the 1000 test examples (greedy, up to 3 new tokens,
#   prefix accuracy).
#
#   [SEED=S] bench/rt_finetune.sh [N] [OUT] [which] [bases]
#     which: matched (default) | lorafleet | peer | ablation | lorafleet-matched
#     bases: "f32 nf4" (default), or any of f32, nf4, bf16 (bf16: lorafleet only)
#
#   matched:   the peer first (file order, no shuffle; it saves its initial adapter), then
#              lorafleet-train from that same initial adapter (--init-adapter) in the same file
#              order: both trainers see the same batches from the same weights, so the
#              accuracies differ only by arithmetic. Dirs hf_<base>, lorafleet_<base>.
#   lorafleet, peer: each with its own seeded init and shuffle (dirs *_<base>_own).
#   lorafleet-matched: lorafleet-train alone, as in matched, from the initial adapter of an earlier
#              matched run of the peer (hf_<base>, else hf_f32: the peer's init does not depend
#              on the base), e.g. the bf16 base, which the peer does not run here.
#   ablation:  lorafleet f32 as in matched but with plain packed batches (no shared prefix),
#              training only: what the shared-prefix layout is worth.
#
# lorafleet-train's default batching, shared-prefix, computes the prompt prefix common to a
# micro-batch once (the same loss and gradients as packing every example whole).
#
# Needs: target/release/{lorafleet,lorafleet-train} (cargo build --release), the model in
# models/smollm2-135m-instruct, data/rotten-tomatoes (lorafleet fetch-data rotten-tomatoes), and
# the peer venv (bench/HF_PEER.md, plus peft 0.21.2 and bitsandbytes 0.50.2).
# Wall and CPU time of each process come from /usr/bin/time; the trainers' own training-only
# times are in OUT/*/loss.jsonl and OUT/hf_*/summary.json.
set -euo pipefail
N=${1:-1600}
OUT=${2:-bench/out/rt_finetune}
WHICH=${3:-matched}
BASES=${4:-f32 nf4}
# The peer's seed (its LoRA init; matched runs start lorafleet from it). Not 0: dirs get _seed$SEED.
SEED=${SEED:-0}
SFX=""; [ "$SEED" != 0 ] && SFX="_seed$SEED"
MODEL=models/smollm2-135m-instruct
PY=${HF_PY:-/root/.cache/lorafleet/hf-venv/bin/python}
DATA=$OUT/data
mkdir -p "$DATA"
head -n "$N" data/rotten-tomatoes/train.jsonl > "$DATA/train.jsonl"
cp data/rotten-tomatoes/test.jsonl "$DATA/test.jsonl"
T="/usr/bin/time -f wall=%e,user=%U,sys=%S,maxrss_kb=%M"

log() { echo "[$(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)] $*" | tee -a "$OUT/runs.log"; }

# lorafleet DIR BASE [extra lorafleet-train flags...]: train, then evaluate (unless NO_EVAL=1).
lorafleet() {
  local d=$1 base=$2; shift 2
  local q=(); [ "$base" = nf4 ] && q=(--quantize nf4); [ "$base" = bf16 ] && q=(--base-dtype bf16)
  rm -rf "$d"; mkdir -p "$d"
  log "lorafleet-train $d: start"
  $T -o "$d/train.time" target/release/lorafleet-train train --model $MODEL "${q[@]}" \
    --data "$DATA/train.jsonl" --out "$d" --rank 8 --alpha 16 --target-modules all-linear \
    --lr 2e-4 --schedule cosine --warmup-ratio 0.03 --epochs 1 --micro-batch 16 --grad-accum 1 \
    --max-grad-norm 1 --no-progress "$@" > "$d/train.log" 2>&1
  log "lorafleet-train $d: $(tail -1 "$d/train.log") $(cat "$d/train.time")"
  [ "${NO_EVAL:-0}" = 1 ] && return 0
  $T -o "$d/eval.time" target/release/lorafleet eval --model $MODEL "${q[@]}" --threads 2 \
    --adapter-dir "$d" --adapter adapter --data "$DATA/test.jsonl" --max-new-tokens 3 \
    --batch-size 16 --out "$d/eval.jsonl" > "$d/eval.log" 2>&1
  log "lorafleet eval $d: $(grep -i accuracy "$d/eval.log" | tail -1) $(cat "$d/eval.time")"
}

# peer DIR BASE [extra hf_train_peer.py flags...]: train, then evaluate.
peer() {
  local d=$1 base=$2; shift 2
  local q=(); [ "$base" = nf4 ] && q=(--quantize nf4)
  rm -rf "$d"; mkdir -p "$d"
  log "peer $d: start"
  $T -o "$d/run.time" $PY bench/hf_train_peer.py --model $MODEL --data "$DATA" --out "$d" \
    --epochs 1 --micro-batch 16 --threads 2 --seed "$SEED" "${q[@]}" "$@" > "$d/run.log" 2>&1
  log "peer $d: $(grep -E '"(train_seconds|tokens_per_s|accuracy|eval_seconds)"' "$d/summary.json" | tr -d '\n ') $(cat "$d/run.time")"
}

for base in $BASES; do
  case $WHICH in
    matched)
      peer "$OUT/hf_$base$SFX" "$base" --no-shuffle
      lorafleet "$OUT/lorafleet_$base$SFX" "$base" --no-shuffle --init-adapter "$OUT/hf_$base$SFX/init_adapter"
      ;;
    lorafleet) lorafleet "$OUT/lorafleet_${base}_own" "$base" ;;
    peer) peer "$OUT/hf_${base}_own" "$base" ;;
    lorafleet-matched)
      init="$OUT/hf_$base/init_adapter"; [ -d "$init" ] || init="$OUT/hf_f32/init_adapter"
      lorafleet "$OUT/lorafleet_$base" "$base" --no-shuffle --init-adapter "$init"
      ;;
    ablation)
      NO_EVAL=1 lorafleet "$OUT/lorafleet_${base}_packed" "$base" --batching packed --no-shuffle \
        --init-adapter "$OUT/hf_$base/init_adapter"
      ;;
    *) echo "unknown: $WHICH" >&2; exit 2 ;;
  esac
done
log "done $WHICH"
