"""The official clients from PyPI against a running `lorafleet serve` (started by
tests/serve/clients.rs, which also computes the expectations from the golden adapter and the
in-process `score`).

    python test_clients.py BASE_URL EXPECT_JSON

EXPECT_JSON: {"prompt", "adapter", "greedy_text", "greedy_logprobs", "prompt_tokens"}.
Prints one line per check and `N passed, 0 failed`; exits 1 on the first failure.
"""

import json
import math
import sys

import lorax
import lorax.errors
import openai

BASE, EXPECT = sys.argv[1], json.load(open(sys.argv[2]))
PROMPT, ADAPTER = EXPECT["prompt"], EXPECT["adapter"]
WANT_TEXT, WANT_LP = EXPECT["greedy_text"], EXPECT["greedy_logprobs"]
N = len(WANT_LP)
passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        print(f"FAILED {name}: {detail}")
        print(f"{passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"ok {name}")


def close_lp(got, want=WANT_LP):
    return len(got) == len(want) and all(g is not None and abs(g - w) < 1e-4 for g, w in zip(got, want))


def raises(fn, *types):
    try:
        fn()
    except types as e:
        return e
    except Exception as e:  # the wrong kind
        return AssertionError(f"{type(e).__name__}: {e}")
    return AssertionError("no error")


# --- lorax-client -------------------------------------------------------------------------
lc = lorax.Client(BASE, timeout=120)
r = lc.generate(PROMPT, adapter_id=ADAPTER, max_new_tokens=N, details=True, decoder_input_details=True, return_k_alternatives=2)
check("lorax generate: golden greedy text", r.generated_text == WANT_TEXT, repr(r.generated_text))
d = r.details
check("lorax details: prompt_tokens / generated_tokens / finish_reason",
      d.prompt_tokens == EXPECT["prompt_tokens"] and d.generated_tokens == N and d.finish_reason.value == "length", str(d)[:300])
check("lorax details: token logprobs = log-softmax of score's logits (1e-4)", close_lp([t.logprob for t in d.tokens]), [t.logprob for t in d.tokens])
check("lorax details: 2 alternatives per token, the greedy one first",
      all(len(t.alternative_tokens) == 2 and t.alternative_tokens[0].id == t.id for t in d.tokens))
check("lorax details: prefill covers the prompt, first logprob None",
      len(d.prefill) == EXPECT["prompt_tokens"] and d.prefill[0].logprob is None and all(p.logprob <= 0 for p in d.prefill[1:]))

stream = list(lc.generate_stream(PROMPT, adapter_id=ADAPTER, max_new_tokens=N, details=True))
check("lorax generate_stream: one frame per token, text joins to the golden",
      len(stream) == N and "".join(s.token.text for s in stream) == WANT_TEXT)
check("lorax generate_stream: numeric logprobs, the last frame has the text and details",
      close_lp([s.token.logprob for s in stream]) and stream[-1].generated_text == WANT_TEXT
      and stream[-1].details.prompt_tokens == EXPECT["prompt_tokens"])

r = lc.generate(PROMPT, adapter_id=ADAPTER, max_new_tokens=4, do_sample=True, temperature=0.8, seed=7, details=True)
r2 = lc.generate(PROMPT, adapter_id=ADAPTER, max_new_tokens=4, do_sample=True, temperature=0.8, seed=7)
check("lorax sampling: a seed reproduces, details.seed echoes it", r.generated_text == r2.generated_text and r.details.seed == 7)
r = lc.generate(PROMPT, adapter_id=ADAPTER, max_new_tokens=4, return_full_text=True, repetition_penalty=1.2)
check("lorax return_full_text + repetition_penalty", r.generated_text.startswith(PROMPT) and len(r.generated_text) > len(PROMPT))

e = raises(lambda: lc.generate("Hi", adapter_id="no-such-adapter", max_new_tokens=2), lorax.errors.NotFoundError)
check("lorax: unknown adapter -> NotFoundError", isinstance(e, lorax.errors.NotFoundError), e)
e = raises(lambda: lc.generate("Hi", max_new_tokens=2, typical_p=0.5), lorax.errors.ValidationError)
check("lorax: typical_p refused naming the field", isinstance(e, lorax.errors.ValidationError) and "typical_p" in str(e), e)

# --- openai -------------------------------------------------------------------------------
oc = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0, timeout=120)
ids = [m.id for m in oc.models.list().data]
check("openai models.list: the base and the adapter", ADAPTER in ids and len(ids) >= 2, ids)

c = oc.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=N, temperature=0, logprobs=2)
ch = c.choices[0]
check("openai completions: golden greedy text", ch.text == WANT_TEXT, repr(ch.text))
check("openai completions: logprobs = score's, 2 alternatives each",
      close_lp(ch.logprobs.token_logprobs) and all(len(t) == 2 for t in ch.logprobs.top_logprobs))
check("openai completions: usage", c.usage.prompt_tokens == EXPECT["prompt_tokens"] and c.usage.completion_tokens == N)

c = oc.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=N, temperature=0, echo=True)
check("openai completions: echo", c.choices[0].text == PROMPT + WANT_TEXT)

c = oc.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=6, temperature=0.9, n=2, seed=3)
check("openai completions: n=2 gives two choices", [x.index for x in c.choices] == [0, 1])

text = "".join(x.choices[0].text for x in oc.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=N, temperature=0, stream=True) if x.choices)
check("openai completions stream: golden greedy text", text == WANT_TEXT, repr(text))

msgs = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
cc = oc.chat.completions.create(model=ADAPTER, messages=msgs, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2, n=2)
check("openai chat: content parts, n=2", len(cc.choices) == 2 and all(x.message.content for x in cc.choices))
lp = cc.choices[0].logprobs.content
check("openai chat: logprobs with top_logprobs",
      len(lp) == cc.usage.completion_tokens // 2 and all(t.logprob <= 0 and len(t.top_logprobs) == 2 and math.isfinite(t.logprob) for t in lp))
plain = oc.chat.completions.create(model=ADAPTER, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=8, temperature=0)
check("openai chat: parts answer as the plain string", plain.choices[0].message.content == cc.choices[0].message.content)

chunks = list(oc.chat.completions.create(model=ADAPTER, messages=msgs, max_tokens=8, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
streamed = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
check("openai chat stream: same text, usage in its own last chunk",
      streamed == plain.choices[0].message.content and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8)

pen = oc.completions.create(model=ADAPTER, prompt="one one one one one one one one", max_tokens=8, temperature=0, frequency_penalty=2.0, presence_penalty=1.0)
base = oc.completions.create(model=ADAPTER, prompt="one one one one one one one one", max_tokens=8, temperature=0)
check("openai penalties change a repetitive greedy answer", pen.choices[0].text != base.choices[0].text)

e = raises(lambda: oc.completions.create(model="no-such-adapter", prompt="Hi", max_tokens=2), openai.NotFoundError)
check("openai: unknown model -> NotFoundError with OpenAI's error body",
      isinstance(e, openai.NotFoundError) and e.body.get("code") == "unknown_adapter" and "no-such-adapter" in e.body.get("message", ""), e)
e = raises(lambda: oc.completions.create(model=ADAPTER, prompt="Hi", max_tokens=2, n=100), openai.UnprocessableEntityError)
check("openai: n=100 -> 422 naming the param", isinstance(e, openai.UnprocessableEntityError) and e.body.get("param") == "n", e)
e = raises(lambda: oc.chat.completions.create(model=ADAPTER, messages=msgs, max_tokens=2, logit_bias={"1": 5}), openai.UnprocessableEntityError)
check("openai: logit_bias refused", isinstance(e, openai.UnprocessableEntityError) and e.body.get("param") == "logit_bias", e)

print(f"{passed} passed, 0 failed")
