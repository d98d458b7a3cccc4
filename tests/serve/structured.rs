//! Structured output on the real SmolLM2-135M-Instruct (CPU), through the library: JSON-schema
//! outputs that parse and validate for every golden prompt on the base and both golden adapters,
//! mixed in one batch with unconstrained requests that keep their golden tokens; choices,
//! regexes and Lark grammars; bad constraints refused before anything is queued; max tokens and
//! stop strings inside a constrained output. (The official clients' side, with Python's
//! `jsonschema`, is tests/clients/test_structured.py.)

use serde_json::{json, Value};

use crate::common::*;
use lorafleet::prelude::*;

/// The schema the tests hold outputs to: every keyword `validate` below checks, each bounded
/// so a greedy small model has to close the object.
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 24},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "label": {"enum": ["positive", "negative", "neutral"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
            "sure": {"type": "boolean"}
        },
        "required": ["answer", "score", "label"],
        "additionalProperties": false
    })
}

/// A JSON-schema check of the keywords `schema()` uses (Python's `jsonschema` checks the same
/// outputs in the clients test).
fn validate(v: &Value, s: &Value, at: &str) -> Result<(), String> {
    if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    let ok = match s.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => v.is_object(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("array") => v.is_array(),
        Some(t) => return Err(format!("{at}: the test's validator has no type {t}")),
    };
    if !ok {
        return Err(format!("{at}: {v} is not of type {}", s["type"]));
    }
    if let (Some(n), Some(x)) = (s.get("maxLength").and_then(Value::as_u64), v.as_str()) {
        if x.chars().count() as u64 > n {
            return Err(format!("{at}: {x:?} is longer than {n}"));
        }
    }
    if let Some(x) = v.as_f64() {
        if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| x < m) || s.get("maximum").and_then(Value::as_f64).is_some_and(|m| x > m) {
            return Err(format!("{at}: {x} is out of range"));
        }
    }
    if let Some(a) = v.as_array() {
        if s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| a.len() as u64 > m) {
            return Err(format!("{at}: {} items", a.len()));
        }
        for (i, x) in a.iter().enumerate() {
            validate(x, &s["items"], &format!("{at}[{i}]"))?;
        }
    }
    if let Some(o) = v.as_object() {
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap_or_default()) {
                return Err(format!("{at}: missing {r}"));
            }
        }
        for (k, x) in o {
            match s.get("properties").and_then(|p| p.get(k)) {
                Some(ps) => validate(x, ps, &format!("{at}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => return Err(format!("{at}: unexpected {k}")),
                None => {}
            }
        }
    }
    Ok(())
}

fn builder() -> EngineBuilder {
    Engine::builder(model_dir()).device(DeviceChoice::Cpu).adapter_dir(golden_dir().join("adapters")).kv_cache_bytes(64 << 20)
}

fn constrained(prompt: Vec<u32>, adapter: Option<&str>, c: Constraint, n: usize) -> GenerateRequest {
    let r = GenerateRequest::prompt(prompt).with_options(GenerateOptions { constraint: Some(c), ..greedy(n) });
    match adapter {
        Some(a) => r.with_adapter(a),
        None => r,
    }
}

#[test]
fn json_schema_outputs_validate_for_every_golden_prompt_and_adapter_and_unconstrained_neighbours_keep_their_goldens() {
    let engine = builder().build().expect("build");
    let prompts = golden_prompts();
    let adapters = [None, Some("a_r8_all"), Some("b_r16_qv_rslora")];
    // One batch: for every prompt and adapter a constrained request and an unconstrained one.
    let mut requests = Vec::new();
    for p in &prompts {
        for (k, a) in adapters.iter().enumerate() {
            requests.push(constrained(p.ids.clone(), *a, Constraint::JsonSchema(schema()), 160));
            let plain = GenerateRequest::prompt(p.ids.clone()).with_options(greedy(p.greedy[k].len()));
            requests.push(match a {
                Some(a) => plain.with_adapter(*a),
                None => plain,
            });
        }
    }
    let results = engine.generate(requests);
    for (i, r) in results.into_iter().enumerate() {
        let (p, k) = (i / 6, (i / 2) % 3);
        let what = format!("prompt {p} on {:?}", adapters[k]);
        let f = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        if i % 2 == 0 {
            assert_eq!(f.reason, FinishReason::GrammarComplete, "{what}: {:?}", f.text);
            let v: Value = serde_json::from_str(&f.text).unwrap_or_else(|e| panic!("{what}: {:?} does not parse: {e}", f.text));
            validate(&v, &schema(), "$").unwrap_or_else(|e| panic!("{what}: {:?}: {e}", f.text));
        } else {
            let g = &prompts[p];
            assert_greedy_matches(&f.token_ids, &g.greedy[k], &g.gaps[k], &format!("{what}, unconstrained beside constrained ones"));
        }
    }
}

#[test]
fn choices_regexes_and_lark_grammars_hold_their_outputs() {
    let engine = builder().build().expect("build");
    let chat = |q: &str| Prompt::Chat(vec![ChatMessage::user(q)]);
    let run = |prompt: Prompt, c: Constraint, n: usize| {
        let r = GenerateRequest::prompt(prompt).with_options(GenerateOptions { constraint: Some(c), ..greedy(n) });
        engine.submit(r).expect("submit").wait().expect("finished")
    };
    let labels = vec!["positive".to_string(), "negative".to_string()];
    let f = run(chat("Is this review positive or negative? 'I loved every minute of it.'"), Constraint::Choice(labels.clone()), 8);
    assert!(labels.contains(&f.text), "{:?}", f.text);
    assert_eq!(f.reason, FinishReason::GrammarComplete);
    let f = run(chat("What is 17 times 3? Answer with the number."), Constraint::Regex("[0-9]{1,4}".into()), 8);
    assert!(!f.text.is_empty() && f.text.len() <= 4 && f.text.chars().all(|c| c.is_ascii_digit()), "{:?}", f.text);
    let grammar = "start: \"The answer is \" NUM \".\"\nNUM: /[0-9]+/\n";
    let f = run(chat("What is 2 + 2?"), Constraint::Lark(grammar.into()), 16);
    let num = f.text.strip_prefix("The answer is ").and_then(|t| t.strip_suffix('.')).unwrap_or_else(|| panic!("{:?}", f.text));
    assert!(!num.is_empty() && num.chars().all(|c| c.is_ascii_digit()), "{:?}", f.text);
    let f = run(chat("Describe a cat."), Constraint::JsonObject, 64);
    assert!(serde_json::from_str::<Value>(&f.text).is_ok_and(|v| v.is_object()), "{:?}", f.text);
}

#[test]
fn bad_constraints_fail_before_anything_is_queued() {
    let engine = builder().build().expect("build");
    for (c, needle) in [
        (Constraint::JsonSchema(json!({"type": "object", "properties": {"a": {"type": "nope"}}})), "JSON schema does not compile"),
        (Constraint::Regex("[a-".into()), "regex does not compile"),
        (Constraint::Lark("start: missing\n".into()), "Lark grammar does not compile"),
        (Constraint::Choice(vec![]), "choice list is empty"),
    ] {
        match engine.submit(constrained(vec![1, 2, 3], None, c.clone(), 8)) {
            Err(Error::InvalidRequest { field: "constraint", msg }) => assert!(msg.contains(needle), "{c:?}: {msg}"),
            Err(e) => panic!("{c:?}: {e}"),
            Ok(_) => panic!("{c:?} was accepted"),
        }
        assert_eq!(engine.requests_in_flight(), 0);
    }
}

#[test]
fn max_tokens_and_stop_strings_end_a_constrained_output_where_they_fall() {
    let engine = builder().build().expect("build");
    let prompt = Prompt::Chat(vec![ChatMessage::user("Describe a person as JSON with a name and an age.")]);
    let person = json!({
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"], "additionalProperties": false
    });
    let opts = |n: usize, stop: Vec<String>| GenerateOptions { constraint: Some(Constraint::JsonSchema(person.clone())), stop, ..greedy(n) };
    let full = engine.submit(GenerateRequest::prompt(prompt.clone()).with_options(opts(64, vec![]))).unwrap().wait().unwrap();
    assert_eq!(full.reason, FinishReason::GrammarComplete);
    assert!(full.text.contains("\"age\""), "{:?}", full.text);
    // The token budget runs out first: the output so far, cut, and `length`.
    let cut = engine.submit(GenerateRequest::prompt(prompt.clone()).with_options(opts(4, vec![]))).unwrap().wait().unwrap();
    assert_eq!((cut.reason, cut.generated_tokens), (FinishReason::Length, 4));
    assert!(full.text.starts_with(&cut.text) && cut.text.len() < full.text.len(), "{:?} vs {:?}", cut.text, full.text);
    // A stop string inside the object ends it before the string, as for free text.
    let stopped = engine.submit(GenerateRequest::prompt(prompt).with_options(opts(64, vec!["\"age\"".into()]))).unwrap().wait().unwrap();
    assert_eq!(stopped.reason, FinishReason::Stop);
    assert_eq!(stopped.text, full.text[..full.text.find("\"age\"").unwrap()]);
}
