#!/usr/bin/env python3
"""Runs the examples (examples/*.rs, built with `cargo build --release --examples`) on SmolLM2
and checks what they print:

- embed: every golden prompt on the base and both golden adapters gives the golden greedy tokens
  (compared up to the first near-tie, as tests/common does), and the request cancelled by its
  id ended with Cancelled after a first token;
- axum_app --once: the completion served inside the user's axum app has the text `embed` printed
  for the same prompt and adapter;
- train_and_serve: the loss fell below a tenth of its start, and the adapter served from memory
  answers with the completion it learned.

usage: scripts/check_examples.py MODEL_DIR [TARGET_DIR]
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests/golden/smollm2"


def run(cmd):
    print("+", " ".join(str(c) if len(str(c)) < 60 else repr(str(c)[:57] + "...") for c in cmd), flush=True)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stderr}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def greedy_prefix(gaps, n):
    """Tokens compared: up to the first step whose golden top-2 gap is under 1e-3."""
    return next((i for i, g in enumerate(gaps) if g < 1e-3), n)


def main():
    model = Path(sys.argv[1])
    bin_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "target/release/examples"
    golden = json.loads((GOLDEN / "golden.json").read_text())
    prompts = golden["prompts"]
    failures = []

    lines = run([bin_dir / "embed", model, GOLDEN / "adapters", *[p["text"] for p in prompts]])
    answers = {(l["prompt"], l["adapter"]): l for l in lines if "prompt" in l}
    for i, p in enumerate(prompts):
        for key, adapter in [("base", None), ("a_r8_all", "a_r8_all"), ("b_r16_qv_rslora", "b_r16_qv_rslora")]:
            want, gaps = p[f"{key}_greedy24"], p[f"{key}_greedy24_gap"]
            got = answers.get((i, adapter), {}).get("token_ids")
            n = greedy_prefix(gaps, len(want))
            if got is None or got[:n] != want[:n]:
                failures.append(f"embed: prompt {i} on {key}: got {got}, want {want} (first {n} compared)")
    cancel = next((l["cancel"] for l in lines if "cancel" in l), None)
    if cancel != {"first_event_was_token": True, "live_under_id": 1, "ended": "cancelled"}:
        failures.append(f"embed: the cancelled request: {cancel}")
    print(f"embed: {len(answers)} answers checked against the goldens")

    served = run([bin_dir / "axum_app", model, GOLDEN / "adapters", "--once", prompts[0]["text"]])
    want_text = answers.get((0, served[0]["adapter"]), {}).get("text")
    if served[0]["text"] != want_text:
        failures.append(f"axum_app: {served[0]} but embed printed {want_text!r}")
    print(f"axum_app: {served[0]}")

    trained = run([bin_dir / "train_and_serve", model])[0]
    if not trained["loss_after"] < trained["loss_before"] / 10:
        failures.append(f"train_and_serve: the loss did not fall: {trained}")
    if trained["learned"] != trained["completion"]:
        failures.append(f"train_and_serve: the adapter served from memory answers {trained['learned']!r}, not {trained['completion']!r}")
    print(f"train_and_serve: {trained}")

    if failures:
        sys.exit("\n".join(failures))
    print("examples: all checks passed")


if __name__ == "__main__":
    main()
