#!/usr/bin/env python3
"""DEV-ONLY helper: SmolLM2-135M-Instruct GGUF (llama arch) -> HF-layout dir.

Not lorafleet's converter (that lives in the Rust crate). This exists so the
HF peer benchmark (bench/hf_cpu_peer.py) can be developed/run without
network access to the HF hub. It writes:

  config.json            LlamaForCausalLM, tie_word_embeddings=true
  model.safetensors      every tensor dequantized to f32 (gguf.quants.dequantize)
  tokenizer.json         byte-level BPE rebuilt from the GGUF vocab/merges
  tokenizer_config.json  minimal
  generation_config.json

q/k rows are un-permuted (llama.cpp's convert permutes them for its RoPE
layout: w.reshape(n_head, 2, d//n_head//2, *rest).swapaxes(1, 2)).

Usage: python bench/dev_gguf_to_hf.py GGUF OUTDIR [--check GOLDEN_DIR]
  --check compares argmax/logits with /work/shared/golden/smollm2 style
  goldens (golden.json + golden.safetensors) using transformers.
"""
import argparse
import json
import os
import sys

import numpy as np


def unpermute(w, n_head):
    # inverse of llama.cpp's permute():
    #   w.reshape(n_head, 2, d//n_head//2, *rest).swapaxes(1, 2).reshape(shape)
    shape = w.shape
    return (
        w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def field(r, key):
    f = r.fields[key]
    return f.contents()


def convert(gguf_path, out):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    r = GGUFReader(gguf_path)
    n_head = int(field(r, "llama.attention.head_count"))
    n_kv = int(field(r, "llama.attention.head_count_kv"))
    hidden = int(field(r, "llama.embedding_length"))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(field(r, "llama.feed_forward_length")),
        "num_hidden_layers": int(field(r, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "rms_norm_eps": 1e-5,
        "rope_theta": float(field(r, "llama.rope.freq_base")),
        "rope_scaling": None,
        "vocab_size": int(field(r, "llama.vocab_size")),
        "max_position_embeddings": int(field(r, "llama.context_length")),
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(field(r, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(field(r, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(field(r, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
    }
    # transformers 5.x also reads rope_parameters; keep both spellings.
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}

    names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    tensors = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF shape is (ne0, ne1, ...) = reversed numpy shape.
        w = w.reshape([int(x) for x in reversed(t.shape)])
        base, _, suffix = t.name.rpartition(".")
        assert suffix == "weight", t.name
        parts = base.split(".")
        if parts[0] == "blk":
            layer, kind = int(parts[1]), parts[2]
            if kind == "attn_q":
                w = unpermute(w, n_head)
            elif kind == "attn_k":
                w = unpermute(w, n_kv)
            hf = f"model.layers.{layer}.{names[kind]}.weight"
        elif base == "output":
            raise SystemExit("unexpected untied output.weight")
        else:
            hf = names[base] + ".weight"
        tensors[hf] = np.ascontiguousarray(w)

    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                   "pad_token_id": cfg["pad_token_id"]}, f, indent=2)
    write_tokenizer(r, out)
    print(f"wrote {len(tensors)} tensors to {out}")


def write_tokenizer(r, out):
    """Byte-level BPE like SmolLM2's tokenizer.json (Digits + ByteLevel pre-tok)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, AddedToken

    tokens = field(r, "tokenizer.ggml.tokens")
    merges = field(r, "tokenizer.ggml.merges")
    ttype = field(r, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    # control tokens (token_type 3) are special/added tokens
    specials = [AddedToken(tokens[i], special=True, normalized=False)
                for i in range(len(tokens)) if int(ttype[i]) == 3]
    tok.add_special_tokens(specials)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tokens[int(field(r, "tokenizer.ggml.bos_token_id"))],
            "eos_token": tokens[int(field(r, "tokenizer.ggml.eos_token_id"))],
            "pad_token": tokens[int(field(r, "tokenizer.ggml.padding_token_id"))],
            "unk_token": tokens[int(field(r, "tokenizer.ggml.unknown_token_id"))],
            "add_bos_token": False,
            "model_max_length": 8192,
        }, f, indent=2)


def check(out, golden_dir):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from tokenizers import Tokenizer

    g = json.load(open(os.path.join(golden_dir, "golden.json")))
    gt = load_file(os.path.join(golden_dir, "golden.safetensors"))
    tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ok = True
    for i, p in enumerate(g["prompts"]):
        ids = p["ids"]
        tok_ok = tok.encode(p["text"], add_special_tokens=False).ids == ids
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0]
        am = logits.argmax(-1).tolist()
        ref = gt[f"base.p{i}.last_logits"].float().reshape(-1)
        last = logits[-1].float()
        rel = (torch.linalg.vector_norm(last - ref) / torch.linalg.vector_norm(ref)).item()
        am_ok = am == p["base_argmax"]
        ok &= am_ok and tok_ok and rel < 1e-4
        print(f"prompt {i}: tokenizer_match={tok_ok} argmax_match={am_ok} "
              f"last_logits_rel_l2={rel:.3e} max_abs={(last - ref).abs().max().item():.3e}")
    print("CHECK", "OK" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--check", metavar="GOLDEN_DIR")
    ap.add_argument("--check-only", action="store_true")
    a = ap.parse_args()
    if not a.check_only:
        convert(a.gguf, a.out)
    if a.check:
        sys.exit(0 if check(a.out, a.check) else 1)
