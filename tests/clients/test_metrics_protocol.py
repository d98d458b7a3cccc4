"""The Kubernetes inference gateway's model-server protocol (gateway-api-inference-extension
proposal 003, llm-d-router docs/model-server-protocol.md) read from a running `lorafleet serve`
the way its endpoint picker reads it: the OpenMetrics text parsed by prometheus_client's parser
(from PyPI), every protocol metric of the right type, values that match the server's state at
that moment, and `vllm:lora_requests_info` taken as the router takes it (the series with the
highest value, labels split on commas).

The server runs with `--max-running 2`. Two long requests on adapter A are sent and waited for
until both run; then three on adapter B, which must wait (no running slot). At that moment the
protocol must say: 2 running, 3 waiting, running adapters "A", waiting adapters "B", a KV usage in
(0, 1] equal to lorafleet's own block counts, the cache config's block size and block count.

usage: test_metrics_protocol.py BASE_URL
"""

import json
import sys
import threading
import time
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

BASE = sys.argv[1]
A, B = "a_r8_all", "b_r16_qv_rslora"
failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def scrape():
    with urllib.request.urlopen(BASE + "/metrics", timeout=30) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return content_type, families


def value(families, name):
    samples = families[name].samples
    return samples[0].value if samples else None


def generate(adapter):
    body = {"inputs": "Write a long story about a lighthouse keeper.", "parameters": {"adapter_id": adapter, "max_new_tokens": 600, "ignore_eos_token": True}}
    req = urllib.request.Request(BASE + "/generate", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=600).read()
    except Exception:  # the server is stopped under them at the end: nothing to check
        pass


def start(adapter):
    t = threading.Thread(target=generate, args=(adapter,), daemon=True)
    t.start()
    return t


def wait_for(what, cond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, f = scrape()
        if cond(f):
            return f
        time.sleep(0.02)
    check(False, f"timed out waiting for {what}")
    return None


# The idle server first: nothing running or waiting, no adapter listed.
content_type, f = scrape()
check(content_type.startswith("application/openmetrics-text"), f"content type {content_type!r}")
for name in ["vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:cache_config_info", "vllm:lora_requests_info"]:
    check(name in f and f[name].type == "gauge", f"{name} is a gauge (found {f[name].type if name in f else 'nothing'})")
check(value(f, "vllm:num_requests_waiting") == 0 and value(f, "vllm:num_requests_running") == 0, "idle: 0 waiting, 0 running")

for _ in range(2):
    start(A)
f = wait_for("both A requests running", lambda f: value(f, "vllm:num_requests_running") == 2)
for _ in range(3):
    start(B)
f = wait_for("the three B requests waiting", lambda f: value(f, "vllm:num_requests_waiting") == 3)

if f is not None:
    running, waiting = value(f, "vllm:num_requests_running"), value(f, "vllm:num_requests_waiting")
    check(running == 2 and waiting == 3, f"2 running and 3 waiting (found {running}, {waiting})")
    check(value(f, "lorafleet_running_sequences") == running and value(f, "lorafleet_queue_length") == waiting, "the vLLM gauges agree with lorafleet's own")

    usage = value(f, "vllm:kv_cache_usage_perc")
    used, total = value(f, "lorafleet_kv_blocks_used"), value(f, "lorafleet_kv_blocks_total")
    check(0 < usage <= 1, f"KV usage {usage} in (0, 1]")
    check(abs(usage - used / total) < 1e-9, f"KV usage {usage} = {used} / {total} blocks")

    config = f["vllm:cache_config_info"].samples
    check(len(config) == 1 and config[0].labels == {"block_size": "16", "num_gpu_blocks": str(int(total))}, f"cache config {config}")

    # As the router reads it: the series with the highest value (the latest update), labels
    # split on commas.
    info = max(f["vllm:lora_requests_info"].samples, key=lambda s: s.value)
    split = lambda s: [a for a in s.split(",") if a]
    check(split(info.labels["running_lora_adapters"]) == [A], f"running adapters {info.labels['running_lora_adapters']!r}")
    check(split(info.labels["waiting_lora_adapters"]) == [B], f"waiting adapters {info.labels['waiting_lora_adapters']!r}")
    check(info.labels["max_lora"] == "1", f"max_lora {info.labels['max_lora']!r} (--max-active-adapters 2: the base and one adapter)")
    check(abs(info.value - time.time()) < 60, f"lora_requests_info's value {info.value} is the last update's Unix time")

    # The residency lorafleet adds for the gateway: A on the device and pinned by its running
    # requests.
    resident = {(s.labels["adapter"], s.labels["tier"]): s.labels["pinned"] for s in f["lorafleet_adapter_resident_bytes"].samples}
    check(resident.get((A, "device")) == "true", f"{A} resident on the device and pinned ({resident})")

print(f"model-server protocol: {len(failures)} failed")
sys.exit(1 if failures else 0)
