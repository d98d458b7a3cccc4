#!/usr/bin/env python3
"""Peers of bench/nf4_gpu.rs on the same GPU: bitsandbytes' own 4-bit GEMV (`bnb.matmul_4bit`
with one activation row, which bitsandbytes routes to its `gemv_4bit` inference kernel) and
torch's cuBLAS bf16 matmul, at batch 1 on the same W [n, k] shapes, plus the device-to-device copy
bandwidth, timed the same way: back-to-back calls rotating over enough weight copies (>= 256 MB)
that no call finds its weight in L2, CUDA events around 50 calls, median of 7.

Needs torch with CUDA and bitsandbytes (the 0.50.2 manylinux wheel:
`pip install --no-deps bitsandbytes-0.50.2-*.whl`). Run on the GPU machine, in the same session as
`cargo bench --bench nf4_gpu` (or the bundled bench binary) so the numbers compare:
    python3 bench/nf4_peer_gpu.py
Bytes counted as in nf4_gpu.rs: bitsandbytes NF4 = packed codes + its double-quantized absmax
(u8 per block + f32 per 256 blocks), cuBLAS = 2 n k; plus x and y.
"""

import statistics
import sys

import torch

SHAPES = [(4096, 14336), (14336, 4096), (4096, 4096), (576, 1536)]
ROTATE_BYTES = 256 << 20
COPY_BYTES = 1 << 30


def per_call(fn, iters=50, runs=7):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(times)


def rotating(make, bytes_each):
    count = max(2, -(-ROTATE_BYTES // bytes_each))
    return [make(i) for i in range(count)]


def main():
    if not torch.cuda.is_available():
        print("SKIP nf4_peer_gpu: no CUDA device visible to torch")
        return 0
    dev = torch.device("cuda")
    print(f"nf4_peer_gpu on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    secs = per_call(lambda: dst.copy_(src))
    copy_gbs = 2 * COPY_BYTES / secs / 1e9
    print(f"  d2d copy: {copy_gbs:.0f} GB/s (read + write, 1 GiB)")
    del src, dst

    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        print(f"  bitsandbytes {bnb.__version__}")
    except Exception as e:  # noqa: BLE001 - report and carry on with cuBLAS
        print(f"  SKIP bitsandbytes: {e}")
        bnb = None

    torch.manual_seed(0)
    for n, k in SHAPES:
        x = torch.randn(1, k, dtype=torch.bfloat16, device=dev)
        dense = rotating(lambda i: torch.randn(n, k, dtype=torch.bfloat16, device=dev) * 0.02, 2 * n * k)
        it = iter(range(1 << 62))
        secs = per_call(lambda: torch.nn.functional.linear(x, dense[next(it) % len(dense)]))
        b = 2 * n * k + 2 * (k + n)
        line = f"  cublas bf16 gemv m1 {n}x{k}: {secs * 1e6:8.2f} us {b / secs / 1e9:6.0f} GB/s"
        print(f"{line} {100 * b / secs / 1e9 / copy_gbs:5.1f}% of copy")
        if bnb is not None:
            quant = []
            for w in dense:
                q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
                quant.append((q, state))
            del dense
            q0, s0 = quant[0]
            nb = (n * k) // 64
            b = q0.numel() + nb + 4 * (-(-nb // 256)) + 2 * (k + n)
            it = iter(range(1 << 62))

            def run():
                q, state = quant[next(it) % len(quant)]
                return bnb.matmul_4bit(x, q.t(), quant_state=state)

            secs = per_call(run)
            line = f"  bnb nf4 gemv m1 {n}x{k}:     {secs * 1e6:8.2f} us {b / secs / 1e9:6.0f} GB/s"
            print(f"{line} {100 * b / secs / 1e9 / copy_gbs:5.1f}% of copy")
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
