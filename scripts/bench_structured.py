#!/usr/bin/env python3
"""The cost of structured output: decode tokens/s of constrained vs unconstrained sequences,
side by side (A B A B), at batch 1 and batch 8, on the CPU.

    bench_structured.py [--bin target/release/lorafleet] [--model DIR] [--rounds 3]

Constrained: a JSON schema (an object holding an array of 12 strings of at most 12 characters: ~100-150 tokens of
output, a mask every token). Unconstrained: the same prompts, greedy, EOS ignored, 60 tokens (about as many as the
constrained outputs: a shorter run weighs its first, slower steps more).
Both through `lorafleet generate --json` (one process per run, one batch of 1 or 8 prompts);
the figure is the mean over sequences of `decode_tokens_per_s` (tokens after the first /
decode time), the median over rounds. Prints a markdown table for bench/RESULTS.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile

SCHEMA = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 12, "maxItems": 12}},
    "required": ["items"],
    "additionalProperties": False,
}
TOPICS = ["fruits", "cities", "animals", "colors", "rivers", "tools", "sports", "flowers"]


def run(binary, model, prompts, constrained, schema_path):
    args = [binary, "generate", "--model", model, "--chat", "--json"]
    for p in prompts:
        args += ["--prompt", p]
    if constrained:
        args += ["--json-schema", schema_path, "--max-new-tokens", "300"]
    else:
        args += ["--ignore-eos", "--max-new-tokens", "60"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    if constrained:
        for r in rows:
            assert r["finish_reason"] == "grammar_complete", r
            assert len(json.loads(r["text"])["items"]) == 12, r["text"]
    return statistics.mean(r["decode_tokens_per_s"] for r in rows), statistics.mean(len(r["token_ids"]) for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/lorafleet")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(SCHEMA, f)
        schema_path = f.name
    print("| batch | unconstrained decode tok/s | constrained decode tok/s | ratio | constrained tokens per sequence |")
    print("|---:|---:|---:|---:|---:|")
    for batch in (1, 8):
        prompts = [f"List 12 {t} as a JSON object with an array `items`." for t in TOPICS[:batch]]
        free, held, n_held = [], [], []
        for _ in range(a.rounds):  # A B A B
            free.append(run(a.bin, a.model, prompts, False, schema_path)[0])
            tps, n = run(a.bin, a.model, prompts, True, schema_path)
            held.append(tps)
            n_held.append(n)
        f_med, h_med = statistics.median(free), statistics.median(held)
        print(f"| {batch} | {f_med:.1f} | {h_med:.1f} | {h_med / f_med:.2f}x | {statistics.mean(n_held):.0f} |", flush=True)
    os.unlink(schema_path)


if __name__ == "__main__":
    main()
