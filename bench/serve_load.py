#!/usr/bin/env python3
"""Closed-loop load on an OpenAI-style streaming completions endpoint, for lorafleet serve and
llama-server alike (standard library only).

  serve_load.py --url http://127.0.0.1:PORT --engine lorafleet|llama --users 8 --adapters 8
                --duration 60 --output-tokens 64 --prompts PROMPTS.json --out RESULT.json

Each of `users` threads sends requests back to back for `duration` seconds (requests still in
flight at the end are waited for and counted): prompt i of PROMPTS.json (a list of strings) for
its request number, adapter (user + request) % adapters, `output_tokens` tokens forced
(`ignore_eos`, greedy). The adapter is named the way each engine takes it: lorafleet by
`model: adapter-I`, llama-server by `lora: [{"id": I, "scale": 1}]` (its adapters loaded with
--lora-init-without-apply, so a request without the field runs the base). --adapters 0: base only.

Per request: time to the first streamed token (TTFT), total time, tokens received (streamed
chunks with text). Prints and writes: requests, errors, throughput (output tokens / wall time),
TTFT avg/p90, ms per output token after the first (avg/p90), total avg/p90.

  serve_load.py --url ... --engine ... --greedy N --adapters K --prompts P --out OUT.json
      instead: for each adapter (and the base), the greedy N-token completion of the first
      prompt, non-streamed, written to OUT.json (the caller compares the two engines').
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def request_body(engine, prompt, adapter, n, stream, loaded):
    """loaded: adapters the llama-server holds (its ids 0 .. loaded - 1)."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0.0, "ignore_eos": True, "stream": stream}
    if engine == "lorafleet":
        body["model"] = f"adapter-{adapter}" if adapter is not None else "base"
    else:
        body["model"] = "base"
        if adapter is not None:
            body["lora"] = [{"id": adapter, "scale": 1.0}]
        elif loaded:
            # The base on a server holding adapters: every adapter at scale 0, said explicitly
            # (llama-server 11434 with --lora-init-without-apply answers `"lora": []` with
            # neither the base's output nor its speed).
            body["lora"] = [{"id": i, "scale": 0.0} for i in range(loaded)]
        body["n_predict"] = n
        body["cache_prompt"] = False
    return body


def post(url, body, stream, timeout=600):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    return conn, resp


def one_request(url, engine, prompt, adapter, n, loaded):
    t0 = time.perf_counter()
    conn, resp = post(url, request_body(engine, prompt, adapter, n, True, loaded), True)
    first, tokens = None, 0
    try:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"])[:300])
            for choice in chunk.get("choices", []):
                if choice.get("text"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
    finally:
        conn.close()
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "total": end - t0, "tokens": tokens}


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.9 * len(xs)))] if xs else float("nan")


def load(a, prompts):
    results, errors, lock = [], [], threading.Lock()
    stop = time.perf_counter() + a.duration

    def user(u):
        i = 0
        while time.perf_counter() < stop:
            k = u + a.users * i
            adapter = (u + i) % a.adapters if a.adapters > 0 else None
            try:
                r = one_request(a.url, a.engine, prompts[k % len(prompts)], adapter, a.output_tokens, a.adapters)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(e))
            i += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(a.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r["tokens"] for r in results)
    per_tok = [(r["total"] - r["ttft"]) / (r["tokens"] - 1) * 1e3 for r in results if r["tokens"] > 1]
    out = {
        "engine": a.engine, "users": a.users, "adapters": a.adapters, "requests": len(results), "errors": len(errors),
        "first_error": errors[0] if errors else None, "wall_s": wall, "output_tokens": toks,
        "throughput_tok_s": toks / wall if wall > 0 else 0.0,
        "short_outputs": sum(1 for r in results if r["tokens"] != a.output_tokens),
        "ttft_ms": {"avg": statistics.mean(r["ttft"] for r in results) * 1e3 if results else None, "p90": p90([r["ttft"] for r in results]) * 1e3},
        "ms_per_token": {"avg": statistics.mean(per_tok) if per_tok else None, "p90": p90(per_tok)},
        "total_ms": {"avg": statistics.mean(r["total"] for r in results) * 1e3 if results else None, "p90": p90([r["total"] for r in results]) * 1e3},
    }
    return out


def greedy(a, prompts):
    out = {}
    for adapter in [None] + list(range(a.adapters)):
        conn, resp = post(a.url, request_body(a.engine, prompts[0], adapter, a.greedy, False, a.adapters), False)
        body = json.loads(resp.read())
        conn.close()
        out["base" if adapter is None else f"adapter-{adapter}"] = body["choices"][0]["text"]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--engine", choices=["lorafleet", "llama"], required=True)
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--prompts", required=True)
    p.add_argument("--greedy", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    prompts = json.load(open(a.prompts))
    res = greedy(a, prompts) if a.greedy else load(a, prompts)
    json.dump(res, open(a.out, "w"), indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
