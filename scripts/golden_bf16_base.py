#!/usr/bin/env python3
"""Reference for `lorafleet-train gradients --base-dtype bf16`: PyTorch autograd on the golden
`train` pair (tests/golden/smollm2/golden.json) with adapter a_r8_all, on SmolLM2-135M-Instruct
whose seven decoder linear weights per layer are rounded to bf16 (torch's round-to-nearest-even)
and back to f32, everything else (embeddings, norms, lm_head, the math) f32: exactly what
lorafleet's bf16 base computes.

Writes tests/golden/smollm2/bf16base_train.safetensors: `loss` (one f32), `grad.<PEFT key>` for
every LoRA parameter of layers 0, 15 and 29 (the whole set would be 10 MB), and `grad_norm` (the
global L2 norm over all 420 LoRA gradients), the f32-base loss for reference (`loss_f32`), and
`bf16base.p0.last_logits`: the logits of the last position of golden prompt 0 on the bf16 base
without adapter (the check of serving with `--base-dtype bf16`).

Run with the HF peer's venv (bench/HF_PEER.md), from the repository root:
  /root/.cache/lorafleet/hf-venv/bin/python scripts/golden_bf16_base.py
"""
import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models/smollm2-135m-instruct"
GOLDEN = ROOT / "tests/golden/smollm2"
KEEP_LAYERS = (0, 15, 29)
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load(round_bf16: bool):
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    if round_bf16:
        with torch.no_grad():
            for name, mod in model.named_modules():
                if name.split(".")[-1] in LINEAR and name.startswith("model.layers."):
                    mod.weight.copy_(mod.weight.to(torch.bfloat16).to(torch.float32))
    return model


def last_logits(prompt_ids):
    """Logits of the last prompt position on the bf16-rounded base, no adapter."""
    model = load(True)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].float().contiguous()


def run(round_bf16: bool):
    model = load(round_bf16)
    model = PeftModel.from_pretrained(model, GOLDEN / "adapters/a_r8_all", is_trainable=True)
    model.eval()  # no dropout
    train = json.loads((GOLDEN / "golden.json").read_text())["train"]
    ids = torch.tensor([train["prompt_ids"] + train["completion_ids"]])
    labels = torch.tensor([[-100] * len(train["prompt_ids"]) + train["completion_ids"]])
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name.replace(".default", "")] = p.grad.detach().clone()
    return out.loss.detach(), grads


def main():
    loss_f32, _ = run(False)
    loss, grads = run(True)
    assert len(grads) == 420, len(grads)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).float()
    tensors = {"loss": loss.reshape(1).float(), "loss_f32": loss_f32.reshape(1).float(), "grad_norm": norm.reshape(1)}
    prompts = json.loads((GOLDEN / "golden.json").read_text())["prompts"]
    tensors["bf16base.p0.last_logits"] = last_logits(prompts[0]["ids"])
    for k, g in grads.items():
        layer = int(k.split("layers.")[1].split(".")[0])
        if layer in KEEP_LAYERS:
            tensors["grad." + k] = g.float().contiguous()
    out = GOLDEN / "bf16base_train.safetensors"
    save_file(tensors, str(out), metadata={"produced_by": "scripts/golden_bf16_base.py", "torch": torch.__version__})
    print(f"loss bf16 base {loss.item():.7f} (f32 base {loss_f32.item():.7f}); grad norm {norm.item():.6e}; "
          f"{len(tensors) - 4} grads kept; wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
