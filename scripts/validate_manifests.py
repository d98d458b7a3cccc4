#!/usr/bin/env python3
"""Validate deploy/kubernetes/ offline: every object against its schema, and the objects against
each other and against the lorafleet binary they run.

    validate_manifests.py [DIR] [--lorafleet BIN] [--self-test]

1. Schemas. Kubernetes' own kinds (Namespace, Deployment, Service, Job, PVC) against the
   Kubernetes OpenAPI schemas of KUBE_VERSION that the `kubernetes-validate` package (PyPI)
   carries, in its strict mode (an unknown field is an error). The inference extension's kinds
   (InferencePool, InferenceObjective, InferenceModelRewrite) and the Gateway API's (Gateway,
   HTTPRoute) against deploy/kubernetes/schemas/*.json: no registry package carries those CRDs,
   so we keep schemas of the fields our manifests use (types, required fields, enums, ranges,
   patterns as the published API reference gives them; unknown fields are errors).
2. Cross-checks a cluster would not make, but that break a deployment all the same: the
   Service and the InferencePool select the Deployment's pods; the pool's target port, the
   Service's target port, the probes' port and `serve --port` are the same port; the probes ask
   `/health`; the grace period covers the preStop wait plus `--shutdown-timeout`; the objectives,
   rewrites and routes name the pool that exists; and (with --lorafleet) every flag in the
   container's args is one `lorafleet serve --help` knows.
3. --run MODELS: runs the container's own args with this machine's binary, `/models/` read as
   MODELS (laid out as the volume: MODELS/<model>/, MODELS/adapters/<name>/), on the CPU and a
   free port: /health answers 200, /metrics reports `max_lora` as the args set it (the
   base counts in --max-active-adapters, not in max_lora), an adapter of
   the folder answers a completion, and SIGTERM ends it with exit 0 within the drain.
4. --self-test plants one bug of each kind in a copy of the manifests and fails unless each is
   caught (so a check that cannot fail shows up here).

Needs PyYAML, jsonschema and kubernetes-validate (CI: pinned in .ci/run). Exit 1 on any finding.
"""
import argparse
import copy
import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import jsonschema
import yaml

KUBE_VERSION = "1.31.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.join(HERE, "..", "deploy", "kubernetes")


def load(dir_):
    """[(file name, object)] for every YAML document under dir_ (schemas/ excluded)."""
    docs = []
    for path in sorted(glob.glob(os.path.join(dir_, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((os.path.basename(path), doc))
    return docs


def crd_schemas(dir_):
    """{(apiVersion, kind): schema} from dir_/schemas/KIND-GROUP-VERSION.json."""
    out = {}
    for path in glob.glob(os.path.join(dir_, "schemas", "*.json")):
        with open(path) as f:
            s = json.load(f)
        out[(s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"])] = s
    return out


def where(err):
    return "/".join(str(p) for p in err.absolute_path) or "(top)"


def schema_errors(doc, schemas):
    """Schema findings for one object, as strings."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in schemas:
        v = jsonschema.Draft202012Validator(schemas[key])
        return [f"{where(e)}: {e.message}" for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where(e)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [e.message + " (neither a Kubernetes kind nor one with a schema in schemas/)"]
    return []


def flags_of(args):
    """{flag: value or None} from `--flag=value` / `--flag value` / `--flag` args."""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[a] = args[i + 1]
                i += 1
            else:
                out[a] = None
        i += 1
    return out


def serve_flags(binary):
    """The flags `lorafleet serve --help` lists."""
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", text, re.M))


def seconds(s):
    return float(s)


def cross_errors(docs, known_flags=None):
    """Findings across objects (list of strings)."""
    errs = []
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)

    def name(d):
        return d.get("metadata", {}).get("name")

    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        return [f"expected one Deployment, found {len(deployments)}"]
    dep = deployments[0]
    pod = dep["spec"]["template"]
    labels = pod.get("metadata", {}).get("labels", {})
    containers = [c for c in pod["spec"]["containers"] if c.get("args", [""])[0] == "serve"]
    if len(containers) != 1:
        return ["the Deployment needs exactly one container whose args start with `serve`"]
    c = containers[0]
    flags = flags_of(c["args"][1:])
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    def port_of(p):
        return ports.get(p) if isinstance(p, str) else p

    serve_port = int(flags.get("--port") or 0)
    if serve_port not in ports.values():
        errs.append(f"serve --port={serve_port} is not a containerPort of the container ({sorted(ports.values())})")
    if flags.get("--host") != "0.0.0.0":
        errs.append("serve needs --host=0.0.0.0 in a pod (the default listens on loopback only)")
    if "--model" not in flags:
        errs.append("serve has no --model")
    if known_flags is not None:
        for f in flags:
            if f not in known_flags:
                errs.append(f"`lorafleet serve` has no flag {f}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if p is None:
            errs.append(f"the container has no {probe}")
            continue
        get = p.get("httpGet", {})
        if get.get("path") != "/health":
            errs.append(f"{probe} asks {get.get('path')!r}, not /health")
        if port_of(get.get("port")) != serve_port:
            errs.append(f"{probe} port {get.get('port')!r} is not the serving port {serve_port}")
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    drain = seconds(flags.get("--shutdown-timeout") or 0)
    if "--shutdown-timeout" not in flags:
        errs.append("serve has no --shutdown-timeout: the drain would not be bounded by the grace period")
    elif grace < pre_stop + drain:
        errs.append(f"terminationGracePeriodSeconds {grace} < preStop sleep {pre_stop} + --shutdown-timeout {drain:g}: the pod is killed mid-drain")
    sel = dep["spec"]["selector"].get("matchLabels", {})
    if any(labels.get(k) != v for k, v in sel.items()):
        errs.append("the Deployment's selector does not match its own pod labels")

    for svc in by_kind.get("Service", []):
        s_sel = svc["spec"].get("selector", {})
        if not s_sel or any(labels.get(k) != v for k, v in s_sel.items()):
            errs.append(f"Service {name(svc)} selects {s_sel}, not the lorafleet pods ({labels})")
        for p in svc["spec"].get("ports", []):
            if port_of(p.get("targetPort", p["port"])) != serve_port:
                errs.append(f"Service {name(svc)} targets port {p.get('targetPort')!r}, not the serving port {serve_port}")

    pools = by_kind.get("InferencePool", [])
    pool_names = {name(p) for p in pools}
    if not pools:
        errs.append("no InferencePool")
    for pool in pools:
        m = pool["spec"].get("selector", {}).get("matchLabels", {})
        if any(labels.get(k) != v for k, v in m.items()):
            errs.append(f"InferencePool {name(pool)} selects {m}, not the lorafleet pods ({labels})")
        tp = [t.get("number") for t in pool["spec"].get("targetPorts", [])]
        if tp != [serve_port]:
            errs.append(f"InferencePool {name(pool)} targets ports {tp}, not the serving port {serve_port}")

    for kind in ("InferenceObjective", "InferenceModelRewrite"):
        for d in by_kind.get(kind, []):
            ref = d["spec"].get("poolRef", {})
            if ref.get("name") not in pool_names:
                errs.append(f"{kind} {name(d)} names pool {ref.get('name')!r}; the pools are {sorted(pool_names)}")
    for d in by_kind.get("InferenceModelRewrite", []):
        for rule in d["spec"].get("rules", []):
            for t in rule.get("targets", []):
                t = {"modelRewrite": "", **t}
                # lorafleet serves an adapter under its folder name (no separators, no `..`).
                if "/" in t["modelRewrite"] or ".." in t["modelRewrite"]:
                    errs.append(f"InferenceModelRewrite {name(d)}: {t['modelRewrite']!r} is not an adapter folder name")
            weights = [t.get("weight") for t in rule.get("targets", [])]
            if any(w is None for w in weights) and any(w is not None for w in weights):
                errs.append(f"InferenceModelRewrite {name(d)}: weights must be set on every target or on none")

    gateways = {name(g) for g in by_kind.get("Gateway", [])}
    for r in by_kind.get("HTTPRoute", []):
        for p in r["spec"].get("parentRefs", []):
            if p.get("name") not in gateways:
                errs.append(f"HTTPRoute {name(r)} attaches to Gateway {p.get('name')!r}; the gateways are {sorted(gateways)}")
        for rule in r["spec"].get("rules", []):
            for b in rule.get("backendRefs", []):
                if b.get("kind") != "InferencePool" or b.get("group") != "inference.networking.k8s.io":
                    errs.append(f"HTTPRoute {name(r)} routes to {b.get('group')}/{b.get('kind')}, not to the InferencePool")
                elif b.get("name") not in pool_names:
                    errs.append(f"HTTPRoute {name(r)} routes to pool {b.get('name')!r}; the pools are {sorted(pool_names)}")
    namespaces = {d.get("metadata", {}).get("namespace") for _, d in docs if d.get("kind") != "Namespace"}
    if len(namespaces) != 1:
        errs.append(f"the objects span namespaces {sorted(map(str, namespaces))}: the pool selects pods in its own only")
    return errs


def findings(docs, schemas, known_flags):
    out = []
    for file, d in docs:
        for e in schema_errors(d, schemas):
            out.append(f"{file}: {d.get('kind')} {d.get('metadata', {}).get('name')}: {e}")
    return out + cross_errors(docs, known_flags)


def find(docs, kind):
    return next(d for _, d in docs if d.get("kind") == kind)


def container(docs):
    return find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def planted(known_flags):
    """(what, how to plant it in a copy of the docs, a phrase the finding must contain)."""
    bugs = [
        ("a pool without targetPorts", lambda ds: find(ds, "InferencePool")["spec"].pop("targetPorts"), "'targetPorts' is a required property"),
        ("a containerPort as a string", lambda ds: container(ds)["ports"][0].__setitem__("containerPort", "8000"), "is not of type 'integer'"),
        ("a misspelt field (strict)", lambda ds: find(ds, "Deployment")["spec"].__setitem__("replica", 2), "replica"),
        ("a misspelt CRD field", lambda ds: find(ds, "InferencePool")["spec"].__setitem__("targetPort", [{"number": 8000}]), "Additional properties"),
        ("a failureMode out of its enum", lambda ds: find(ds, "InferencePool")["spec"]["extensionRef"].__setitem__("failureMode", "Open"), "is not one of"),
        ("serve on another port", lambda ds: container(ds)["args"].__setitem__(container(ds)["args"].index("--port=8000"), "--port=8001"), "serve --port=8001"),
        ("a grace period shorter than the drain", lambda ds: find(ds, "Deployment")["spec"]["template"]["spec"].__setitem__("terminationGracePeriodSeconds", 20), "killed mid-drain"),
        ("a pool selecting other pods", lambda ds: find(ds, "InferencePool")["spec"]["selector"]["matchLabels"].__setitem__("app.kubernetes.io/name", "vllm"), "not the lorafleet pods"),
        ("a route to a pool that does not exist", lambda ds: find(ds, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0].__setitem__("name", "lorafleet-pool"), "routes to pool"),
        ("an objective naming another pool", lambda ds: find(ds, "InferenceObjective")["spec"]["poolRef"].__setitem__("name", "vllm"), "names pool"),
        ("a readiness probe on another path", lambda ds: container(ds)["readinessProbe"]["httpGet"].__setitem__("path", "/healthz"), "not /health"),
    ]
    if known_flags is not None:
        bugs.append(("a flag serve does not have", lambda ds: container(ds)["args"].append("--max-lora=8"), "no flag --max-lora"))
    return bugs


def run_container(docs, binary, models):
    """Runs the Deployment's serve args here (see the module doc); returns findings."""
    c = container(docs)
    args = []
    for a in c["args"]:
        a = a.replace("/models/", models.rstrip("/") + "/")
        if a.startswith("--device="):
            a = "--device=cpu"
        if a.startswith("--port="):
            a = "--port=0"
        args.append(a)
    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    flags = flags_of(args[1:])
    p = subprocess.Popen([binary] + args, stderr=subprocess.PIPE, text=True, env=env)
    errs, addr, t0 = [], None, time.time()
    try:
        for line in p.stderr:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                addr = m.group(1)
                break
            if time.time() - t0 > 300:
                break
        if addr is None:
            return [f"`lorafleet {' '.join(args)}` did not start listening (exit {p.poll()})"]
        health = json.load(urllib.request.urlopen(addr + "/health", timeout=30))
        if health.get("status") != "ok":
            errs.append(f"/health said {health}")
        metrics = urllib.request.urlopen(addr + "/metrics", timeout=30).read().decode()
        # --max-active-adapters counts the base as one; max_lora counts adapters only.
        want = f'max_lora="{int(flags.get("--max-active-adapters") or 0) - 1}"'
        if want not in metrics:
            errs.append(f"/metrics has no vllm:lora_requests_info with {want}")
        adapters = sorted(os.listdir(os.path.join(flags["--adapter-dir"])))
        body = json.dumps({"model": adapters[0], "prompt": "Hello", "max_tokens": 3}).encode()
        req = urllib.request.Request(addr + "/v1/completions", body, {"Content-Type": "application/json"})
        out = json.load(urllib.request.urlopen(req, timeout=120))
        if out.get("model") != adapters[0] or not out.get("choices"):
            errs.append(f"a completion on adapter {adapters[0]} answered {out}")
        drain = seconds(flags.get("--shutdown-timeout") or 0)
        t1 = time.time()
        p.terminate()
        rc = p.wait(timeout=drain + 10)
        if rc != 0:
            errs.append(f"SIGTERM: exit {rc}, not 0")
        print(f"  ran `lorafleet {' '.join(args)}`: /health ok, {want} in /metrics, adapter {adapters[0]} answered {out['choices'][0]['text']!r}, SIGTERM -> exit {rc} in {time.time() - t1:.1f} s")
    except Exception as e:  # noqa: BLE001 - any failure of the run is a finding
        errs.append(f"running the container's args: {e}")
    finally:
        if p.poll() is None:
            p.kill()
    return errs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    ap.add_argument("--lorafleet", help="the lorafleet binary: check the container's flags against `serve --help`")
    ap.add_argument("--run", metavar="MODELS", help="run the container's args here with /models/ read as MODELS (needs --lorafleet)")
    ap.add_argument("--self-test", action="store_true", help="also plant one bug of each kind and require each caught")
    a = ap.parse_args()
    docs = load(a.dir)
    schemas = crd_schemas(a.dir)
    known = serve_flags(a.lorafleet) if a.lorafleet else None
    found = findings(docs, schemas, known)
    kinds = sorted({d["kind"] for _, d in docs})
    for f in found:
        print(f"  finding: {f}")
    print(f"{len(docs)} objects ({', '.join(kinds)}) in {os.path.normpath(a.dir)}: {len(found)} findings"
          f" (Kubernetes {KUBE_VERSION} strict; {len(schemas)} CRD schemas; flags {'checked against ' + a.lorafleet if known else 'not checked'})")
    ok = not found
    if a.run:
        if not a.lorafleet:
            ap.error("--run needs --lorafleet")
        run = run_container(docs, a.lorafleet, a.run)
        for f in run:
            print(f"  finding: {f}")
        ok &= not run
    if a.self_test:
        for what, plant, phrase in planted(known):
            ds = copy.deepcopy(docs)
            plant(ds)
            got = findings(ds, schemas, known)
            caught = any(phrase in g for g in got)
            print(f"  planted {what}: {'caught' if caught else 'NOT CAUGHT'}" + (f" ({next(g for g in got if phrase in g)})" if caught else f" (findings: {got})"))
            ok &= caught
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
