#!/usr/bin/env python3
"""PyTorch + peft peer for lorafleet's LoRA fine-tune on rotten-tomatoes (issue 7).

    /root/.cache/lorafleet/hf-venv/bin/python bench/hf_train_peer.py \
        --model models/smollm2-135m-instruct --data data/rotten-tomatoes \
        --out bench/out/hf_train_peer --epochs 1 --threads 2 --seed 0

Venv: the HF peer venv (bench/HF_PEER.md) plus `pip install peft==0.21.2` (which brings
accelerate 1.15.0 and psutil 7.2.2); versions in bench/hf_peer_venv_freeze.txt.
The data comes from `lorafleet fetch-data rotten-tomatoes` (train.jsonl, test.jsonl).

The recipe (the issue's, and what lorafleet-train is compared with):
  - model: the HF-layout dir, float32, attn_implementation="sdpa", CPU,
    torch.set_num_threads(--threads) (2), interop threads 1.
  - LoRA: r 8, alpha 16, dropout 0, no bias, on all seven linear projections
    (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj), peft's default init
    (A Kaiming-uniform, B zero).
  - data: each example's prompt and completion are tokenized separately (no special
    tokens added: the chat markers are in the text) and concatenated; the loss is on the
    completion tokens only ("positive<|im_end|>" -> 2 tokens); right-padded micro-batches.
  - loss of a step: the sum of token cross-entropies over the completion tokens of the
    effective batch / their number (so gradient accumulation gives the same step as one
    big batch).
  - effective batch 16 (--micro-batch x accumulation), AdamW (betas 0.9/0.999, eps 1e-8,
    weight decay 0), lr 2e-4, cosine schedule with 3% linear warmup
    (transformers.get_cosine_schedule_with_warmup, warmup = ceil(0.03 * steps)),
    gradient clipping at norm 1.0, shuffled each epoch with random.Random(seed + epoch).
  - --no-shuffle: file order instead (both trainers then see the same batches).
  - steps = ceil(len(train) / 16) * --epochs, or --max-steps (which, as in HF Trainer,
    also sets the schedule's length).

Timed: training wall time (time.perf_counter) from the first step to the last, excluding
model load, tokenization and evaluation; tokens/s = non-pad tokens (prompt + completion)
trained on / that time.

Then it saves the adapter (PEFT format) to OUT/adapter and evaluates as `lorafleet eval` does:
greedy, up to 3 new tokens, stopping at <|im_end|>, on the first --eval-limit test examples
(default all 1000), in left-padded batches of --eval-batch; score = prefix accuracy (the output,
leading whitespace removed and lowercased, starts with the label and is not followed by a letter
or digit). --eval-only skips training (the base model's accuracy).

Outputs: OUT/init_adapter/ (the adapter before the first update), OUT/loss.jsonl (one line per step: step, loss, lr, tokens, seconds, tokens_per_s),
OUT/eval.jsonl (id, output, label, score), OUT/summary.json.
"""
import argparse
import json
import math
import os
import platform
import random
import sys
import time

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_avg():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def read_jsonl(path, limit=None):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            for k in ("prompt", "completion", "label"):
                if k not in rec:
                    sys.exit(f"{path}:{n}: no field {k!r}")
            out.append(rec)
            if limit is not None and len(out) >= limit:
                break
    return out


def normalize_label(s):
    return s.strip().strip(".").strip().lower()


def prefix_accuracy(output, target):
    """lorafleet's prefix_accuracy (src/eval/metrics.rs)."""
    o = output.lstrip().lower()
    t = normalize_label(target)
    if not o.startswith(t):
        return 0.0
    return 0.0 if o[len(t):][:1].isalnum() else 1.0


def tokenize_pair(tok, prompt, completion):
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    return p, c


def make_micro_batch(torch, items, pad_id):
    """items: [(prompt_ids, completion_ids)] -> right-padded input_ids, attention_mask, labels."""
    width = max(len(p) + len(c) for p, c in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(items):
        seq = p + c
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(c)
    return ids, mask, labels


def train(args, torch, model, tok, out_dir):
    from transformers import get_cosine_schedule_with_warmup

    train_path = os.path.join(args.data, "train.jsonl")
    examples = read_jsonl(train_path)
    pairs = [tokenize_pair(tok, e["prompt"], e["completion"]) for e in examples]
    eff = args.batch_size
    if eff % args.micro_batch:
        sys.exit(f"--batch-size {eff} is not a multiple of --micro-batch {args.micro_batch}")
    steps_per_epoch = math.ceil(len(pairs) / eff)
    total_steps = args.max_steps if args.max_steps else steps_per_epoch * args.epochs
    warmup = math.ceil(args.warmup_ratio * total_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total_steps)
    n_trainable = sum(p.numel() for p in params)
    print(f"train: {len(pairs)} examples, {total_steps} steps of {eff} "
          f"(micro-batch {args.micro_batch}), warmup {warmup}, {n_trainable} trainable parameters", flush=True)

    # The example order: epoch after epoch, each shuffled with its own seed.
    def order():
        epoch = 0
        while True:
            idx = list(range(len(pairs)))
            if not args.no_shuffle:
                random.Random(args.seed + epoch).shuffle(idx)
            yield from idx
            epoch += 1

    stream = order()
    log = open(os.path.join(out_dir, "loss.jsonl"), "w")
    model.train()
    tokens_total = 0
    t_start = time.perf_counter()
    step_times = []
    for step in range(1, total_steps + 1):
        t0 = time.perf_counter()
        batch = [pairs[next(stream)] for _ in range(eff)]
        n_completion = sum(len(c) for _, c in batch)
        step_tokens = sum(len(p) + len(c) for p, c in batch)
        loss_sum = 0.0
        for m in range(0, eff, args.micro_batch):
            ids, mask, labels = make_micro_batch(torch, batch[m : m + args.micro_batch], tok.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask).logits
            # Position t predicts token t + 1.
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1, :].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            (loss / n_completion).backward()
            loss_sum += loss.item()
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        step_times.append(dt)
        tokens_total += step_tokens
        elapsed = time.perf_counter() - t_start
        rec = {"step": step, "loss": loss_sum / n_completion, "lr": lr, "tokens": step_tokens,
               "seconds": dt, "tokens_per_s": step_tokens / dt}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        eta = elapsed / step * (total_steps - step)
        print(f"step {step}/{total_steps} loss {rec['loss']:.4f} lr {lr:.2e} "
              f"{rec['tokens_per_s']:.0f} tok/s {dt:.2f} s/step eta {eta / 60:.1f} min", flush=True)
    train_seconds = time.perf_counter() - t_start
    log.close()
    model.save_pretrained(os.path.join(out_dir, "adapter"))
    return {
        "train_examples": len(pairs),
        "steps": total_steps,
        "warmup_steps": warmup,
        "trainable_parameters": n_trainable,
        "train_seconds": train_seconds,
        "train_tokens": tokens_total,
        "tokens_per_s": tokens_total / train_seconds if train_seconds > 0 else None,
        "step_seconds_mean": sum(step_times) / len(step_times),
        "step_seconds_median": sorted(step_times)[len(step_times) // 2],
        "final_loss": rec["loss"],
    }


def evaluate(args, torch, model, tok, out_dir):
    test = read_jsonl(os.path.join(args.data, "test.jsonl"), args.eval_limit)
    model.eval()
    eos = tok.eos_token_id
    tok.padding_side = "left"
    t0 = time.perf_counter()
    total = 0.0
    with open(os.path.join(out_dir, "eval.jsonl"), "w") as f, torch.inference_mode():
        for start in range(0, len(test), args.eval_batch):
            chunk = test[start : start + args.eval_batch]
            enc = tok([e["prompt"] for e in chunk], add_special_tokens=False, return_tensors="pt", padding=True)
            gen = model.generate(**enc, do_sample=False, max_new_tokens=args.max_new_tokens,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id)
            for i, e in enumerate(chunk):
                new = gen[i, enc["input_ids"].shape[1]:].tolist()
                if eos in new:
                    new = new[: new.index(eos)]
                output = tok.decode(new, skip_special_tokens=False)
                score = prefix_accuracy(output, e["label"])
                total += score
                f.write(json.dumps({"id": start + i, "output": output, "label": e["label"], "score": score}) + "\n")
            print(f"eval {start + len(chunk)}/{len(test)} accuracy {total / (start + len(chunk)):.4f}", flush=True)
    return {"eval_examples": len(test), "accuracy": total / len(test), "eval_seconds": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF-layout model dir")
    ap.add_argument("--data", required=True, help="dir with train.jsonl and test.jsonl (lorafleet fetch-data)")
    ap.add_argument("--out", required=True, help="output dir")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=0, help="steps to run (and the schedule's length); 0 = epochs")
    ap.add_argument("--batch-size", type=int, default=16, help="effective batch (examples per optimizer step)")
    ap.add_argument("--micro-batch", type=int, default=16, help="examples per forward/backward")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-shuffle", action="store_true", help="every epoch in file order (no seeded shuffle)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test examples")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=3)
    ap.add_argument("--eval-only", action="store_true", help="no training: evaluate the base model")
    ap.add_argument("--no-eval", action="store_true", help="train only")
    ap.add_argument("--quantize", choices=["nf4"], default=None,
                    help="QLoRA: load the base's linear layers as bitsandbytes NF4 (double quantization, "
                         "64-element blocks, f32 compute), as lorafleet-train --quantize nf4")
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    load_before = load_avg()
    tok = AutoTokenizer.from_pretrained(args.model)
    quant = None
    if args.quantize == "nf4":
        # The QLoRA base: every nn.Linear of the decoder (not the embedding / lm_head) in
        # bitsandbytes 4-bit NF4 with the nested (double) quantization of the absmax, computing
        # in f32. prepare_model_for_kbit_training is not called: it would turn on gradient
        # checkpointing, which lorafleet-train does not do by default either.
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa",
                                                 quantization_config=quant, device_map="cpu" if quant else None)
    summary = {
        "model": args.model, "threads": args.threads, "seed": args.seed, "lr": args.lr,
        "batch_size": args.batch_size, "shuffle": not args.no_shuffle, "micro_batch": args.micro_batch, "rank": args.rank, "alpha": args.alpha,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(), "load_avg_before": load_before,
        "quantize": args.quantize,
    }
    if quant is not None:
        import bitsandbytes

        summary["bitsandbytes"] = bitsandbytes.__version__
    if not args.eval_only:
        import peft
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, bias="none",
                         target_modules=PROJECTIONS, task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
        # The initial adapter (peft's init under torch.manual_seed(--seed)), so that another
        # trainer can start from exactly these weights (lorafleet-train --init-adapter).
        model.save_pretrained(os.path.join(args.out, "init_adapter"))
        summary["peft"] = peft.__version__
        summary.update(train(args, torch, model, tok, args.out))
    if not args.no_eval:
        summary.update(evaluate(args, torch, model, tok, args.out))
    summary["load_avg_after"] = load_avg()
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
