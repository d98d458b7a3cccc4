#!/usr/bin/env python3
"""HF transformers CPU peer benchmark (the number lorafleet's CPU backend is compared to).

    python bench/hf_cpu_peer.py --model DIR --threads 2 --decode-tokens 128 \
        --prefill-tokens 512 --repeats 5 --json OUT.json

DIR is an HF-layout dir (config.json + model.safetensors [+ tokenizer files,
unused: we feed token ids directly]). Runs float32, model.eval(),
torch.inference_mode(), attn_implementation="sdpa", torch.set_num_threads(N).

What is timed (time.perf_counter, wall clock):

  decode  Batch 1. Prompt = ids of "The capital of France is"
          ([504, 3575, 282, 4649, 314]). A manual greedy loop with a
          DynamicCache: one prefill forward over the prompt (NOT timed for
          decode) yields new token #1; then decode-tokens - 1 single-token
          forwards with past_key_values (each: forward + argmax of the last
          logits) yield tokens #2..#N. No stopping at EOS and no EOS masking:
          the same semantics as `lorafleet generate --ignore-eos`, so the
          generated ids are directly comparable. decode_tokens_per_s =
          (N - 1) / sum(step times), i.e. per-step throughput of the
          incremental forward (lorafleet's definition too).
          Cross-check (reported as generate_decode_tokens_per_s): the same via
          model.generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)
          minus generate(max_new_tokens=1): (N - 1) / (t_N - t_1); generate
          masks EOS (min_new_tokens), so its ids match only up to the first EOS.
  prefill One forward over the fixed prefill ids (default 512 ids from
          bench/prefill_ids_512.json, written into the JSON) with a fresh
          DynamicCache, logits_to_keep=1 (only the last position goes through
          lm_head, as generate() does), plus the argmax.
          prefill_tokens_per_s = n_ids / time.

One warm-up run of each, then the median of --repeats runs.

The 1-minute load average is recorded before/after (load_avg_*): on a 2-core
box anything else running (cargo builds!) makes the numbers meaningless; a
warning is printed when it is above 0.5 before the run (it decays slowly:
~0.5 a minute after a previous benchmark ended is normal).
"""
import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DECODE_PROMPT_IDS = [504, 3575, 282, 4649, 314]  # "The capital of France is"
DEFAULT_PREFILL_IDS = os.path.join(HERE, "prefill_ids_512.json")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_prefill_ids(path, n):
    with open(path) as f:
        d = json.load(f)
    ids = d["ids"] if isinstance(d, dict) else d
    if len(ids) < n:
        # cycle the fixed list to reach n (deterministic)
        ids = (ids * (n // len(ids) + 1))
    return [int(x) for x in ids[:n]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=128, help="new tokens generated (first one comes from prefill)")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--prefill-ids-file", default=DEFAULT_PREFILL_IDS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-generate-check", action="store_true", help="skip the model.generate() cross-check")
    ap.add_argument("--json", dest="json_out")
    a = ap.parse_args()
    assert a.decode_tokens >= 2 and a.repeats >= 1

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)  # no inter-op parallelism in a single-stream forward
    except RuntimeError:
        pass

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    load_s = time.perf_counter() - t0
    gcfg = model.generation_config
    pad_id = gcfg.pad_token_id if gcfg.pad_token_id is not None else gcfg.eos_token_id

    prefill_ids = load_prefill_ids(a.prefill_ids_file, a.prefill_tokens)
    n_new = a.decode_tokens

    eos = gcfg.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))

    def pick(logits):
        # plain greedy; EOS is neither masked nor a stop (= lorafleet --ignore-eos)
        return logits[:, -1, :].argmax(-1, keepdim=True)

    def decode_run():
        """returns (generated ids, per-step decode times)"""
        cache = DynamicCache(config=model.config)
        inp = torch.tensor([DECODE_PROMPT_IDS])
        out = model(input_ids=inp, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = pick(out.logits)
        gen = [int(tok)]
        pos = len(DECODE_PROMPT_IDS)
        steps = []
        for _ in range(n_new - 1):
            t = time.perf_counter()
            out = model(input_ids=tok, past_key_values=out.past_key_values, use_cache=True,
                        cache_position=torch.tensor([pos]), logits_to_keep=1)
            tok = pick(out.logits)
            nxt = int(tok)  # forces completion (CPU is synchronous anyway)
            steps.append(time.perf_counter() - t)
            gen.append(nxt)
            pos += 1
        return gen, steps

    def prefill_run():
        cache = DynamicCache(config=model.config)
        inp = torch.tensor([prefill_ids])
        t = time.perf_counter()
        out = model(input_ids=inp, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = int(out.logits[:, -1, :].argmax(-1))
        dt = time.perf_counter() - t
        assert cache.get_seq_length() == len(prefill_ids)
        return dt, tok

    def generate_time(max_new):
        inp = torch.tensor([DECODE_PROMPT_IDS])
        t = time.perf_counter()
        out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False,
                             max_new_tokens=max_new, min_new_tokens=max_new,
                             pad_token_id=pad_id)
        dt = time.perf_counter() - t
        return dt, out[0, len(DECODE_PROMPT_IDS):].tolist()

    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"WARNING: 1-min load average is {load_before:.2f} before the run; "
              "anything else running on this machine distorts the numbers", file=sys.stderr)
    gc.collect()
    gc.disable()
    with torch.inference_mode():
        # warm-up
        gen, _ = decode_run()
        prefill_run()
        # measured
        dec_tps, dec_ms = [], []
        for _ in range(a.repeats):
            g2, steps = decode_run()
            assert g2 == gen, "greedy decode not deterministic"
            dec_tps.append(len(steps) / sum(steps))
            dec_ms.append(1000 * statistics.median(steps))
        pre_s, pre_tok = [], None
        for _ in range(a.repeats):
            dt, pre_tok = prefill_run()
            pre_s.append(dt)

        gen_tps = None
        gen_ids_match = None
        if not a.no_generate_check:
            generate_time(1)
            generate_time(n_new)  # warm-up
            g1 = [generate_time(1)[0] for _ in range(a.repeats)]
            gn = []
            for _ in range(a.repeats):
                dt, ids = generate_time(n_new)
                gn.append(dt)
            first_eos = next((i for i, t in enumerate(gen) if t in eos_ids), len(gen))
            gen_ids_match = ids[:first_eos] == gen[:first_eos]
            gen_tps = (n_new - 1) / (statistics.median(gn) - statistics.median(g1))
    gc.enable()
    load_after = os.getloadavg()[0]

    decode_tps = statistics.median(dec_tps)
    prefill_t = statistics.median(pre_s)
    prefill_tps = len(prefill_ids) / prefill_t

    res = {
        "engine": "hf-transformers",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "threads": a.threads,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_backend": next((l.split(":", 1)[1].strip() for l in torch.__config__.parallel_info().splitlines()
                                        if l.startswith("ATen parallel backend")), None),
        "mkl_available": torch.backends.mkl.is_available(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")},
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(load_after, 2),
        "model": os.path.abspath(a.model),
        "dtype": "float32",
        "attn_implementation": model.config._attn_implementation,
        "model_load_s": round(load_s, 3),
        "repeats": a.repeats,
        "warmup_runs": 1,
        "aggregate": "median",
        "decode_prompt_ids": DECODE_PROMPT_IDS,
        "decode_new_tokens": n_new,
        "decode_steps_timed": n_new - 1,
        "decode_method": "manual greedy loop (no EOS stop/mask), DynamicCache, batch 1; tok/s = (new_tokens-1)/sum(single-token forward+argmax times); prompt prefill excluded",
        "decode_tokens_per_s": round(decode_tps, 3),
        "decode_ms_per_token_median_step": round(statistics.median(dec_ms), 4),
        "decode_tokens_per_s_best": round(max(dec_tps), 3),
        "decode_tokens_per_s_runs": [round(x, 3) for x in dec_tps],
        "generate_decode_tokens_per_s": round(gen_tps, 3) if gen_tps else None,
        "generate_method": "(new_tokens-1)/(median t(generate max_new_tokens=N) - median t(generate max_new_tokens=1)), greedy, min_new_tokens=N",
        "generate_ids_match_manual_loop_to_first_eos": gen_ids_match,
        "eos_ids": eos_ids,
        "eos_masked": False,
        "generated_ids": gen,
        "prefill_tokens": len(prefill_ids),
        "prefill_method": "one forward over prefill_ids with a fresh DynamicCache, logits_to_keep=1, + argmax",
        "prefill_tokens_per_s": round(prefill_tps, 3),
        "prefill_ms": round(1000 * prefill_t, 3),
        "prefill_tokens_per_s_best": round(len(prefill_ids) / min(pre_s), 3),
        "prefill_s_runs": [round(x, 5) for x in pre_s],
        "prefill_next_token": pre_tok,
        "prefill_ids_file": os.path.relpath(a.prefill_ids_file, os.path.dirname(HERE)) if a.prefill_ids_file.startswith(os.path.dirname(HERE)) else a.prefill_ids_file,
        "prefill_ids": prefill_ids,
    }

    print(f"HF transformers {transformers.__version__} / torch {torch.__version__}, "
          f"{a.threads} threads, fp32, sdpa, {cpu_model()}")
    print(f"| metric | value |\n|---|---|")
    print(f"| decode tok/s (batch 1, {n_new} new, manual loop) | {decode_tps:.2f} ({res['decode_ms_per_token_median_step']:.2f} ms/tok) |")
    if gen_tps:
        print(f"| decode tok/s (model.generate diff) | {gen_tps:.2f} |")
    print(f"| prefill tok/s ({len(prefill_ids)} tokens) | {prefill_tps:.1f} ({1000 * prefill_t:.1f} ms) |")
    print(f"first generated ids: {gen[:16]}")
    if a.json_out:
        d = os.path.dirname(os.path.abspath(a.json_out))
        os.makedirs(d, exist_ok=True)
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.json_out}")


if __name__ == "__main__":
    sys.exit(main())
