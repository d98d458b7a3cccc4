"""Structured output through the official clients from PyPI against a running `lorafleet serve`
(started by tests/serve/clients.rs, which writes the expectations: the golden prompts and the
golden greedy text of each on the base and both golden adapters).

    python test_structured.py BASE_URL EXPECT_JSON

For every golden prompt on the base and both adapters: openai's `response_format`
(`json_schema`, on /v1/completions through `extra_body` and on chat through the typed argument)
and lorax-client's `response_format` (`{"type": "json_object", "schema": ...}`) give JSON that
`jsonschema` validates, sent all at once with unconstrained requests whose text stays the golden
text. Then vLLM's guided_choice / guided_regex, and bad schemas refused with a 422 before
anything runs. Prints one line per check and `structured: N passed, 0 failed`.
"""

import concurrent.futures
import json
import sys

import jsonschema
import lorax
import lorax.errors
import openai

BASE, EXPECT = sys.argv[1], json.load(open(sys.argv[2]))
SCHEMA = EXPECT["schema"]
MODELS = ["base", "a_r8_all", "b_r16_qv_rslora"]
passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        print(f"FAILED {name}: {detail}")
        print(f"structured: {passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok {name}")


def valid(text):
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError) as e:
        print(f"  invalid: {text!r}: {e}")
        return False


oc = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", timeout=300)
lc = lorax.Client(BASE, timeout=300)
json_schema_format = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA}}


def openai_constrained(prompt, model):
    r = oc.completions.create(model=model, prompt=prompt, max_tokens=160, temperature=0, extra_body={"response_format": json_schema_format})
    return r.choices[0].text, r.choices[0].finish_reason


def lorax_constrained(prompt, model):
    adapter = None if model == "base" else model
    r = lc.generate(prompt, adapter_id=adapter, max_new_tokens=160, response_format={"type": "json_object", "schema": SCHEMA}, details=True)
    return r.generated_text, r.details.finish_reason.value


def openai_plain(prompt, model, n):
    r = oc.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    return r.choices[0].text, r.choices[0].finish_reason


# Everything at once: constrained requests of both clients and unconstrained ones share batches.
jobs = []
with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
    for i, p in enumerate(EXPECT["prompts"]):
        for m in MODELS:
            jobs.append((f"prompt {i} on {m}: openai response_format json_schema", "json", pool.submit(openai_constrained, p["text"], m)))
            jobs.append((f"prompt {i} on {m}: lorax response_format json_object + schema", "json", pool.submit(lorax_constrained, p["text"], m)))
            jobs.append((f"prompt {i} on {m}: unconstrained beside them = golden text", p["greedy"][m], pool.submit(openai_plain, p["text"], m, p["n"])))
    for name, want, fut in jobs:
        text, reason = fut.result()
        if want == "json":
            check(name, valid(text) and reason in ("stop", "eos_token"), f"{text!r} ({reason})")
        else:
            check(name, text == want, f"{text!r} != {want!r}")

# The chat API's typed response_format.
r = oc.chat.completions.create(
    model="a_r8_all",
    messages=[{"role": "user", "content": "Classify this review and explain briefly: 'a gorgeous, witty, seductive movie.'"}],
    response_format=json_schema_format,
    max_tokens=160,
    temperature=0,
)
check("openai chat response_format json_schema", valid(r.choices[0].message.content), r.choices[0].message.content)
r = oc.chat.completions.create(model="base", messages=[{"role": "user", "content": "Describe Paris."}], response_format={"type": "json_object"}, max_tokens=96, temperature=0)
check("openai chat response_format json_object", isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content)

# vLLM's guided fields, through extra_body.
r = oc.completions.create(model="b_r16_qv_rslora", prompt=EXPECT["prompts"][1]["text"], max_tokens=8, temperature=0, extra_body={"guided_choice": ["positive", "negative"]})
check("vLLM guided_choice", r.choices[0].text in ("positive", "negative"), r.choices[0].text)
r = oc.completions.create(model="base", prompt="The year the Eiffel Tower was finished:", max_tokens=8, temperature=0, extra_body={"guided_regex": "[12][0-9]{3}"})
check("vLLM guided_regex", len(r.choices[0].text) == 4 and r.choices[0].text.isdigit(), r.choices[0].text)

# Bad schemas: a 422 naming the problem, from both clients.
bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}
try:
    oc.completions.create(model="base", prompt="hi", max_tokens=4, extra_body={"response_format": bad})
    check("openai: a schema that does not compile is refused", False, "no error")
except openai.UnprocessableEntityError as e:
    check("openai: a schema that does not compile is a 422", "does not compile" in str(e), str(e))
try:
    lc.generate("hi", max_new_tokens=4, response_format={"type": "json_object", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}})
    check("lorax: a schema that does not compile is refused", False, "no error")
except lorax.errors.ValidationError as e:
    check("lorax: a schema that does not compile is a 422", "does not compile" in str(e), str(e))

print(f"structured: {passed} passed, 0 failed")
