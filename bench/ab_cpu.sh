#!/usr/bin/env bash
# A/B of two lorafleet builds on the CPU, pairs alternated (A B A B): the load test in process
# and over HTTP (8 users, 8 synthetic adapters), and generate at batch 1 and 8.
# Usage: BASE=path/to/old/lorafleet NEW=target/release/lorafleet bench/ab_cpu.sh OUTDIR [ROUNDS]
# (MODEL=models/smollm2-135m-instruct by default.)
set -u
out=$1; rounds=${2:-2}
mkdir -p $out
M=${MODEL:-models/smollm2-135m-instruct}
declare -A BIN=([base]=${BASE:?set BASE to the old binary} [new]=${NEW:-target/release/lorafleet})
inproc() { $1 bench --model $M --threads 2 --device cpu --concurrency 8 --duration 20 --input-tokens 64 --output-tokens 64 --synthetic-adapters 8 --adapters 8 --rank 8 --seed 7 2>&1 | tail -n 4; }
http() {
  local log=$out/serve-$2-$3.log
  $1 serve --model $M --threads 2 --device cpu --synthetic-adapters 8 --port 0 > $log 2>&1 &
  local pid=$!
  for i in $(seq 1 120); do grep -q "listening on" $log && break; sleep 0.5; done
  local url=$(grep -o "http://[0-9.:]*" $log | head -1)
  $1 bench --model $M --url $url --concurrency 8 --duration 20 --input-tokens 64 --output-tokens 64 --adapters 8 --seed 7 2>&1 | tail -n 4
  kill -TERM $pid; wait $pid 2>/dev/null
}
gen() { $1 generate --model $M --threads 2 --device cpu --prompt "Write a story about a fleet of ships." --max-new-tokens 64 --ignore-eos 2>&1 >/dev/null | grep -o "decode [0-9.]* tok/s"; }
gen8() { local args=(); for i in 1 2 3 4 5 6 7 8; do args+=(--prompt "Story number $i about a fleet of ships."); done; $1 generate --model $M --threads 2 --device cpu "${args[@]}" --max-new-tokens 64 --ignore-eos 2>&1 >/dev/null | grep -o "decode [0-9.]* tok/s"; }
for r in $(seq 1 $rounds); do
  for v in base new; do echo "== round $r $v inproc"; inproc ${BIN[$v]}; done
  for v in base new; do echo "== round $r $v http"; http ${BIN[$v]} $v $r; done
  for v in base new; do echo "== round $r $v generate-1: $(gen ${BIN[$v]})"; echo "== round $r $v generate-8: $(gen8 ${BIN[$v]})"; done
done
