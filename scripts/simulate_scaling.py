#!/usr/bin/env python3
"""Adapter affinity across replicas: a discrete-event simulation for docs/SCALING.md.

    simulate_scaling.py [--requests N] [--seed S] [--quick]    the simulation
    simulate_scaling.py --tables                               adapter sizes, tensor-parallel bytes

R replicas serve N adapters; requests arrive as a Poisson stream, each for one adapter drawn
from a Zipf(s) popularity (or uniformly), and a picker sends each to one replica. Every replica
is a lorafleet: at most B sequences running, at most max_lora distinct adapters in the running
batch (a request whose adapter would exceed it waits), a device tier of C_dev adapters and a host
tier of C_host (both LRU; an adapter held by a running sequence is never evicted), the disk (the
shared volume) behind them, and a prefix cache of P task templates (KV blocks are keyed by the
adapter and the tokens: a template's blocks are reused only by the same adapter on the same
replica). A request pays its adapter's load before its first token: nothing on a device hit, an
upload from host, or a disk read + upload (one loader thread per replica: disk reads queue).

Pickers (what each sees is the replica's state at that moment; the real picker scrapes /metrics
every ~50 ms, so this is an optimistic picker):
  least-loaded   fewest running + waiting (no adapter affinity: the picker without a LoRA scorer).
  protocol       the gateway's LoRA affinity from vLLM's lora_requests_info only: a replica where
                 the adapter is running or waiting scores 1.0, one with a free adapter slot 0.8,
                 others 0.6; highest score, then least loaded, among replicas whose queue is
                 under the limit (else all).
  residency      `protocol` plus lorafleet's residency gauges (lorafleet_adapter_resident_bytes):
                 resident on the device 0.9, in host memory 0.85, between "running" and "free slot".
  hash           each adapter always to one replica (consistent hashing): the affinity bound,
                 blind to load.

The constants are assumptions, printed with the results; none is a GPU measurement. Change them
with the flags to see how the conclusions move.
"""
import argparse
import bisect
import collections
import heapq
import random

# Times in seconds.
ASSUME = dict(
    replicas=8,
    max_running=64,  # B: sequences per replica (serve's default --max-running)
    max_lora=31,  # distinct adapters in a running batch (default --max-active-adapters 32 - base)
    dev_adapters=64,  # C_dev: adapters resident in device memory (e.g. 6 GB / 84 MB at rank 16)
    host_adapters=64,  # C_host: --max-host-adapters (serve's default; 10.7 GB of f32 at rank 16, 7B)
    prefix_templates=200,  # P: task templates whose KV blocks stay cached per replica
    service_s=2.0,  # mean time a sequence runs (prefill + decode), exponential
    prefill_s=0.15,  # part of it a template's prefix-cache hit saves
    disk_load_s=0.20,  # read + parse of one adapter from the shared volume
    upload_s=0.005,  # host -> device copy of one adapter
    load=0.7,  # offered load: arrival rate / (replicas * max_running / service_s)
    queue_limit=8,  # the picker's "queue under the limit" filter
)


class LRU:
    def __init__(self, cap):
        self.cap, self.d = cap, collections.OrderedDict()

    def hit(self, k):
        if k in self.d:
            self.d.move_to_end(k)
            return True
        return False

    def put(self, k, pinned=()):
        self.d[k] = True
        self.d.move_to_end(k)
        while len(self.d) > self.cap:
            victim = next((v for v in self.d if v not in pinned), None)
            if victim is None:
                break
            del self.d[victim]


class Replica:
    def __init__(self, a):
        self.a = a
        self.running = collections.Counter()  # adapter -> running sequences
        self.n_running = 0
        self.loader_free = 0.0  # when the replica's adapter loader thread is next idle
        self.queue = collections.deque()  # (arrival time, adapter)
        self.active = collections.Counter()  # adapter -> running + waiting (lora_requests_info)
        self.dev, self.host, self.prefix = LRU(a["dev_adapters"]), LRU(a["host_adapters"]), LRU(a["prefix_templates"])

    def load(self):
        return self.n_running + len(self.queue)


def zipf_sampler(n, s, rng):
    if s == 0:
        return lambda: rng.randrange(n)
    w = [1.0 / (i + 1) ** s for i in range(n)]
    cum, t = [], 0.0
    for x in w:
        t += x
        cum.append(t)
    # A random permutation so adapter ids carry no hint of popularity (hashing stays fair).
    perm = list(range(n))
    rng.shuffle(perm)
    return lambda: perm[min(bisect.bisect_left(cum, rng.random() * t), n - 1)]


def pick(policy, reps, adapter, rng):
    if policy == "hash":
        return reps[hash((adapter, 0x9E3779B9)) % len(reps)]
    cands = [r for r in reps if len(r.queue) < r.a["queue_limit"]] or reps
    if policy == "least-loaded":
        m = min(r.load() for r in cands)
        return rng.choice([r for r in cands if r.load() == m])

    def score(r):
        if adapter in r.active:
            return 1.0
        if policy == "residency":
            if adapter in r.dev.d:
                return 0.9
            if adapter in r.host.d:
                return 0.85
        return 0.8 if len(r.active) < r.a["max_lora"] else 0.6

    best = max((score(r), -r.load()) for r in cands)
    return rng.choice([r for r in cands if (score(r), -r.load()) == best])


def simulate(policy, n_adapters, zipf_s, n_requests, a, seed):
    rng = random.Random(seed)
    draw = zipf_sampler(n_adapters, zipf_s, rng)
    reps = [Replica(a) for _ in range(a["replicas"])]
    rate = a["load"] * a["replicas"] * a["max_running"] / a["service_s"]
    events, t, seq = [], 0.0, 0
    for _ in range(n_requests):
        t += rng.expovariate(rate)
        heapq.heappush(events, (t, seq, "arrive", draw(), None))
        seq += 1
    tiers, waits, loads, prefix_hits, served = collections.Counter(), [], [], 0, collections.Counter()

    def try_start(r, now):
        nonlocal seq, prefix_hits
        i = 0
        while r.n_running < a["max_running"] and i < len(r.queue):
            arrived, ad = r.queue[i]
            if ad not in r.running and len(r.running) >= a["max_lora"]:
                i += 1  # its adapter would exceed max_lora: the next one may fit
                continue
            del r.queue[i]
            if r.dev.hit(ad):
                tier, load_s = "device", 0.0
            elif r.host.hit(ad):
                tier, load_s = "host", a["upload_s"]
            else:
                # One loader thread per replica: disk loads queue behind each other.
                r.loader_free = max(now, r.loader_free) + a["disk_load_s"]
                tier, load_s = "disk", r.loader_free - now + a["upload_s"]
                r.host.put(ad)
            r.dev.put(ad, pinned=r.running)
            hit = r.prefix.hit(ad)
            if not hit:
                r.prefix.put(ad)
            prefix_hits += hit
            tiers[tier] += 1
            loads.append(load_s)
            waits.append(now - arrived)
            r.running[ad] += 1
            r.n_running += 1
            dur = load_s + rng.expovariate(1.0 / a["service_s"]) - (a["prefill_s"] if hit else 0.0)
            heapq.heappush(events, (now + max(dur, 0.01), seq, "finish", ad, r))
            seq += 1

    while events:
        now, _, kind, ad, r = heapq.heappop(events)
        if kind == "arrive":
            r = pick(policy, reps, ad, rng)
            served[id(r)] += 1
            r.queue.append((now, ad))
            r.active[ad] += 1
        else:
            r.running[ad] -= 1
            if r.running[ad] == 0:
                del r.running[ad]
            r.n_running -= 1
            r.active[ad] -= 1
            if r.active[ad] == 0:
                del r.active[ad]
        try_start(r, now)
    n = sum(tiers.values())
    waits.sort()
    loads.sort()
    per = [served[id(r)] for r in reps]
    return dict(
        device=tiers["device"] / n, host=tiers["host"] / n, disk=tiers["disk"] / n,
        prefix=prefix_hits / n, load_mean_ms=1e3 * sum(loads) / n, load_p99_ms=1e3 * loads[int(0.99 * (n - 1))],
        wait_mean_ms=1e3 * sum(waits) / n, wait_p99_ms=1e3 * waits[int(0.99 * (n - 1))],
        imbalance=max(per) / (sum(per) / len(per)), disk_loads_per_s=tiers["disk"] / now,
        # The loader threads' busy fraction: near 1, disk reads bound the throughput.
        loader_busy=tiers["disk"] * a["disk_load_s"] / (now * len(reps)),
        # Waits that grow with the run's length: the offered load is past what the replicas
        # (their slots, max_lora or loaders) can serve; the other columns then describe a queue.
        overloaded=waits[int(0.99 * (n - 1))] > 20 * a["service_s"],
    )


# Base shapes: (hidden, intermediate, kv heads x head dim, layers, parameters).
BASES = {
    "Mistral-7B / Llama-3-8B": (4096, 14336, 1024, 32, 7.5e9),
    "Llama-3-70B": (8192, 28672, 1024, 80, 70.6e9),
    "Llama-3.1-405B": (16384, 53248, 1024, 126, 405.9e9),
}


def lora_params(h, i, kv, layers, r, projections="all"):
    """LoRA parameters of one adapter: A (r x in) + B (out x r) per projection per layer."""
    shapes = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, i), "up": (h, i), "down": (i, h)}
    use = shapes if projections == "all" else {k: shapes[k] for k in projections}
    return layers * r * sum(a + b for a, b in use.values())


def tables(a):
    """The adapter-size and tensor-parallel tables of docs/SCALING.md (arithmetic, no simulation)."""
    h, i, kv, layers, _ = BASES["Mistral-7B / Llama-3-8B"]
    print("Adapter sizes (Mistral-7B / Llama-3-8B shapes; bf16, 2 bytes a value):\n")
    print("| rank | projections | parameters | bytes | 1k adapters | 100k adapters | host tier of 256 |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r, proj in ((8, ("q", "v")), (8, "all"), (16, "all"), (64, "all")):
        n = lora_params(h, i, kv, layers, r, proj)
        b = 2 * n
        print(f"| {r} | {'q, v' if proj != 'all' else 'all 7'} | {n / 1e6:.1f} M | {b / 1e6:.0f} MB | {b * 1e3 / 1e9:.0f} GB | {b * 1e5 / 1e12:.1f} TB | {b * 256 / 1e9:.1f} GB |")
    print()
    print("Tensor parallelism over NVLink (bf16 activations; two all-reduces of `hidden` values per layer")
    print("per token; a ring all-reduce sends 2(p-1)/p of the payload per GPU; NVLink 4 at 450 GB/s per")
    print("direction, HBM3 at 3.35 TB/s, NF4 weights at ~0.53 bytes a parameter; on paper):\n")
    print("| base | p | NF4 weights per GPU | weight floor per step | all-reduce bytes per token per layer (per GPU) | per token, all layers | comm at batch 1 / 64 (bandwidth) | all-reduces per token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (h, i, kv, layers, params) in BASES.items():
        for p in (2, 4, 8):
            w = params * 0.53 / p
            floor_ms = w / 3.35e12 * 1e3
            payload = 2 * h * 2  # two all-reduces of h bf16 values
            per_gpu = payload * 2 * (p - 1) / p
            tok = per_gpu * layers
            t1 = tok / 450e9 * 1e3
            if w > 75e9:
                continue  # does not fit an 80 GB GPU with room for KV
            print(f"| {name} | {p} | {w / 1e9:.1f} GB | {floor_ms:.2f} ms | {per_gpu / 1024:.0f} KiB | {tok / 2**20:.2f} MiB | {t1 * 1e3:.0f} us / {64 * t1:.2f} ms | {2 * layers} |")
    print()
    print("A rank-16 adapter on all 7 projections, bf16, per GPU under tensor parallelism (A whole and")
    print("B split in column-parallel linears, A split and B whole in row-parallel ones):\n")
    print("| base | whole adapter | p = 2 | p = 4 | p = 8 |")
    print("|---|---:|---:|---:|---:|")
    for name, (h, i, kv, layers, _) in BASES.items():
        whole = 2 * lora_params(h, i, kv, layers, 16)
        print(f"| {name} | {whole / 1e6:.0f} MB | " + " | ".join(f"{tp_adapter_bytes(h, i, kv, layers, 16, p) / 1e6:.0f} MB" for p in (2, 4, 8)) + " |")


def tp_adapter_bytes(h, i, kv, layers, r, p):
    """bf16 bytes of one all-7-projection rank-r adapter on each GPU under tensor parallelism p:
    column-parallel q, k, v, gate, up keep A whole [r, in] and 1/p of B [out/p, r];
    row-parallel o, down keep 1/p of A [r, in/p] and B whole [out, r]."""
    col = {"q": (h, h), "k": (h, kv), "v": (h, kv), "gate": (h, i), "up": (h, i)}
    row = {"o": (h, h), "down": (i, h)}
    per_layer = sum(r * a + r * b / p for a, b in col.values()) + sum(r * a / p + r * b for a, b in row.values())
    return 2 * layers * per_layer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="20k requests (a smoke run)")
    ap.add_argument("--tables", action="store_true", help="print the adapter-size and tensor-parallel tables only")
    for k, v in ASSUME.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args()
    a = {k: getattr(args, k) for k in ASSUME}
    if args.tables:
        tables(a)
        return
    n_req = 20_000 if args.quick else args.requests
    print("assumptions: " + ", ".join(f"{k}={v}" for k, v in a.items()) + f"; {n_req} requests, seed {args.seed}")
    print()
    print("| adapters | popularity | picker | device hit | host hit | disk | prefix hit | load ms mean / p99 | queue wait ms mean / p99 | busiest / mean replica | disk loads/s | loader busy |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n_adapters in (1_000, 100_000):
        for s, pop in ((1.0, "Zipf 1.0"), (0.0, "uniform")):
            for policy in ("least-loaded", "protocol", "residency", "hash"):
                r = simulate(policy, n_adapters, s, n_req, a, args.seed)
                print(f"| {n_adapters:,} | {pop} | {policy} | {r['device']:.1%} | {r['host']:.1%} | {r['disk']:.1%} | {r['prefix']:.1%} | "
                      f"{r['load_mean_ms']:.1f} / {r['load_p99_ms']:.0f} | "
                      + (f"overloaded ({r['wait_p99_ms'] / 1e3:.0f} s p99) | " if r["overloaded"] else f"{r['wait_mean_ms']:.0f} / {r['wait_p99_ms']:.0f} | ")
                      + f"{r['imbalance']:.2f} | {r['disk_loads_per_s']:.1f} | {r['loader_busy']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
