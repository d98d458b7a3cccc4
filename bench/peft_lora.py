#!/usr/bin/env python3
"""Seeded random PEFT LoRA adapters, and the same adapters as llama.cpp GGUF LoRA files.

Standard library only (no numpy, torch or gguf-py), so the serving comparison needs nothing
installed:

  peft_lora.py make MODEL_DIR OUT_DIR --count 8 --rank 8 --seed 7
      OUT_DIR/adapter-I/{adapter_config.json, adapter_model.safetensors}: PEFT's layout, r = rank,
      lora_alpha = 2 * rank, on all seven projections of every layer (q, k, v, o, gate, up,
      down). A ~ U(-a, a) with a = 1/sqrt(in), B ~ U(-b, b) with b = 0.5/sqrt(rank): random
      adapters that change the model's greedy output (PEFT's init, B = 0, would not).

  peft_lora.py to-gguf MODEL_DIR ADAPTER_DIR OUT.gguf
      What llama.cpp's convert_lora_to_gguf.py writes for a Llama model (general.type
      "adapter", adapter.type "lora", adapter.lora.alpha; tensors blk.L.<name>.weight.lora_a
      [r, in] and .lora_b [out, r], f32), without its torch and transformers dependencies. As that
      converter (and convert_hf_to_gguf.py for the base), the rows of q_proj's and k_proj's B are
      permuted the way GGUF stores Llama's Q and K weights (rotary pairs interleaved). The
      serving comparison checks the conversion by equal greedy outputs of both engines.
"""

import argparse
import json
import os
import random
import struct
import sys

PROJ = {
    "q_proj": ("self_attn", "attn_q"),
    "k_proj": ("self_attn", "attn_k"),
    "v_proj": ("self_attn", "attn_v"),
    "o_proj": ("self_attn", "attn_output"),
    "gate_proj": ("mlp", "ffn_gate"),
    "up_proj": ("mlp", "ffn_up"),
    "down_proj": ("mlp", "ffn_down"),
}


def shapes(cfg):
    """(in, out) of each projection."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_safetensors(path, tensors):
    """tensors: {name: (shape, flat list of floats)} as F32."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        shape, vals = tensors[name]
        data = struct.pack(f"<{len(vals)}f", *vals)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] != "F32":
                raise SystemExit(f"{path}: {name} is {info['dtype']}, only F32 is read")
            a, b = info["data_offsets"]
            f.seek(base + a)
            out[name] = (info["shape"], list(struct.unpack(f"<{(b - a) // 4}f", f.read(b - a))))
        return out


def make(args):
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    sh = shapes(cfg)
    for idx in range(args.count):
        rng = random.Random(args.seed * 1000 + idx)
        tensors = {}
        for layer in range(cfg["num_hidden_layers"]):
            for proj, (block, _) in PROJ.items():
                din, dout = sh[proj]
                a, b = 1.0 / din ** 0.5, 0.5 / args.rank ** 0.5
                pre = f"base_model.model.model.layers.{layer}.{block}.{proj}"
                tensors[f"{pre}.lora_A.weight"] = ([args.rank, din], [rng.uniform(-a, a) for _ in range(args.rank * din)])
                tensors[f"{pre}.lora_B.weight"] = ([dout, args.rank], [rng.uniform(-b, b) for _ in range(dout * args.rank)])
        d = os.path.join(args.out, f"adapter-{idx}")
        os.makedirs(d, exist_ok=True)
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": args.rank, "lora_alpha": 2 * args.rank, "lora_dropout": 0.0,
                  "target_modules": list(PROJ), "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": os.path.abspath(args.model)}
        json.dump(config, open(os.path.join(d, "adapter_config.json"), "w"), indent=1)
        print(d)


def permute_rows(vals, rows, cols, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute on a [rows, cols] matrix: per head, the rows
    (2, half) become (half, 2)."""
    hd = rows // n_head
    half = hd // 2
    out = [0.0] * (rows * cols)
    for h in range(n_head):
        for j in range(2):
            for i in range(half):
                src = h * hd + j * half + i
                dst = h * hd + i * 2 + j
                out[dst * cols:(dst + 1) * cols] = vals[src * cols:(src + 1) * cols]
    return out


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def to_gguf(args):
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    acfg = json.load(open(os.path.join(args.adapter, "adapter_config.json")))
    tensors = read_safetensors(os.path.join(args.adapter, "adapter_model.safetensors"))
    rank, alpha = acfg["r"], float(acfg["lora_alpha"])
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = []  # (name, ne (ggml order), flat f32 values)
    for name, (shape, vals) in sorted(tensors.items()):
        parts = name.split(".")
        # base_model.model.model.layers.L.block.proj.lora_X.weight
        layer, proj, which = int(parts[4]), parts[6], parts[7]
        gname = f"blk.{layer}.{PROJ[proj][1]}.weight.{'lora_a' if which == 'lora_A' else 'lora_b'}"
        rows, cols = shape
        if which == "lora_B" and proj in ("q_proj", "k_proj"):
            vals = permute_rows(vals, rows, cols, n_head if proj == "q_proj" else n_kv)
        if which == "lora_A" and rows != rank or which == "lora_B" and cols != rank:
            raise SystemExit(f"{name}: shape {shape} does not have rank {rank}")
        out.append((gname, [cols, rows], vals))
    kv = [("general.architecture", 8, gguf_string("llama")), ("general.type", 8, gguf_string("adapter")),
          ("adapter.type", 8, gguf_string("lora")), ("adapter.lora.alpha", 6, struct.pack("<f", alpha))]
    align = 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(out), len(kv))
    for key, ty, val in kv:
        head += gguf_string(key) + struct.pack("<I", ty) + val
    off, infos = 0, b""
    for gname, ne, vals in out:
        infos += gguf_string(gname) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", 0, off)  # type F32, offset in the data section
        off += 4 * len(vals)
        off += -off % align
    head += infos
    head += b"\0" * (-len(head) % align)
    with open(args.out, "wb") as f:
        f.write(head)
        for _, _, vals in out:
            data = struct.pack(f"<{len(vals)}f", *vals)
            f.write(data)
            f.write(b"\0" * (-len(data) % align))
    print(args.out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("model")
    m.add_argument("out")
    m.add_argument("--count", type=int, default=8)
    m.add_argument("--rank", type=int, default=8)
    m.add_argument("--seed", type=int, default=7)
    g = sub.add_parser("to-gguf")
    g.add_argument("model")
    g.add_argument("adapter")
    g.add_argument("out")
    a = p.parse_args()
    make(a) if a.cmd == "make" else to_gguf(a)


if __name__ == "__main__":
    sys.exit(main())
