"""Two `lorafleet serve` replicas on loopback with different adapters resident, and a test-side
endpoint picker that follows the inference gateway's LoRA-affinity scoring from the scraped
metrics alone: for each replica, 1.0 when the request's adapter is active there, 0.8 when the
replica has a free adapter slot, 0.6 when the adapter is waiting there, else 0; the highest wins.

"Active" is what the gateway reads from `vllm:lora_requests_info` (running adapters) and, with
lorafleet, also `lorafleet_adapter_resident_bytes{tier="device"}` (resident between requests,
which vLLM does not report). The test shows both: with running adapters alone an idle fleet gives
every replica 0.8 for every adapter (no affinity); with residency each adapter's requests go to
the replica that holds it, and no replica loads the other's adapter.

usage: test_replica_picker.py URL_1 ADAPTER_1 URL_2 ADAPTER_2
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

REPLICAS = [(sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])]
failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def scrape(url):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def generate(url, adapter):
    body = {"inputs": "Name a color.", "parameters": {"adapter_id": adapter, "max_new_tokens": 2}}
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.status


def view(families, with_residency):
    """What the picker knows of one replica: active and waiting adapters, and max_lora."""
    info = max(families["vllm:lora_requests_info"].samples, key=lambda s: s.value)
    split = lambda s: {a for a in s.split(",") if a}
    active = split(info.labels["running_lora_adapters"])
    if with_residency:
        active |= {s.labels["adapter"] for s in families["lorafleet_adapter_resident_bytes"].samples if s.labels["tier"] == "device"}
    return active, split(info.labels["waiting_lora_adapters"]), int(info.labels["max_lora"]), split(info.labels["running_lora_adapters"])


def score(adapter, v):
    active, waiting, max_lora, running = v
    if adapter in active:
        return 1.0
    if len(running) < max_lora:
        return 0.8
    if adapter in waiting:
        return 0.6
    return 0.0


def pick(adapter, with_residency):
    scores = [score(adapter, view(scrape(url), with_residency)) for url, _ in REPLICAS]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return best, scores


def counter(families, name):
    return families[name].samples[0].value if name in families else None


# Warm-up: each replica serves its own adapter once (it stays resident afterwards).
for url, adapter in REPLICAS:
    check(generate(url, adapter) == 200, f"{url}: warm-up request on {adapter}")

# Running adapters alone (vLLM's report): between requests every replica looks the same.
for _, adapter in REPLICAS:
    _, scores = pick(adapter, with_residency=False)
    check(scores == [0.8, 0.8], f"without residency, {adapter} scores {scores} (no affinity)")

# With lorafleet's residency: every request goes to the replica holding its adapter.
for round_ in range(3):
    for i, (_, adapter) in enumerate(REPLICAS):
        chosen, scores = pick(adapter, with_residency=True)
        check(chosen == i and scores[i] == 1.0, f"round {round_}: {adapter} -> replica {chosen} (scores {scores})")
        check(generate(REPLICAS[chosen][0], adapter) == 200, f"round {round_}: {adapter} served")

# Neither replica ever loaded the other's adapter: one disk load each, its own adapter only.
for url, adapter in REPLICAS:
    f = scrape(url)
    loads = counter(f, "lorafleet_adapter_disk_loads")
    resident = sorted({s.labels["adapter"] for s in f["lorafleet_adapter_resident_bytes"].samples})
    check(loads == 1 and resident == [adapter], f"{url}: {loads} disk load(s), resident {resident}")

print(f"replica picker: {len(failures)} failed")
sys.exit(1 if failures else 0)
