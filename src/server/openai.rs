//! OpenAI-compatible endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (streamed
//! as SSE chunks ending with `data: [DONE]`, or not), `GET /v1/models`, and vLLM's
//! `POST /v1/load_lora_adapter` / `POST /v1/unload_lora_adapter`. The `model` field names an
//! adapter, or the base (its directory name, "base", or empty). As in OpenAI, the temperature
//! defaults to 1; `temperature: 0` is greedy; a sampling request without a `seed` gets a fresh
//! random one. Errors come in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.
//!
//! Supported beyond the basics: `n` choices (seeds `seed + i` when a seed is given),
//! `logprobs` (completions: an int; chat: `logprobs` + `top_logprobs`), `echo` (completions),
//! `presence_penalty` / `frequency_penalty` (and vLLM's `repetition_penalty`),
//! `stream_options.include_usage` (usage in its own last chunk), chat content as text parts.
//! Structured output (`server::structured`): `response_format` `json_object` / `json_schema`,
//! vLLM's `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`.
//! Refused with a 400-class error naming the field: `logit_bias`, `suffix`, `best_of` > `n`,
//! tools and functions.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::common::{
    collect, json_response, openai_finish_reason, parse_body, rand_seed, sse_data, sse_response, start, unix_time, ApiError, App, Collected, RequestLog,
};
use crate::engine::{Event, GenerateOptions, GenerateRequest, Penalties, Prompt, SamplingParams, TokenLogprobs};
use crate::tokenizer::ChatMessage;

/// OpenAI's default `max_tokens` for completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;
/// The most choices one request may ask for.
pub const MAX_CHOICES: usize = 16;

/// A string or a list of strings (`stop`, `prompt`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both endpoints share.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Not OpenAI's, but vLLM's and LoRAX's extension.
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// vLLM's extension (HF's rule).
    repetition_penalty: Option<f32>,
    #[serde(default)]
    ignore_eos: bool,
    /// Informational (OpenAI's end-user id); logged nowhere, changes nothing.
    #[allow(dead_code)]
    user: Option<String>,
    logit_bias: Option<Map<String, Value>>,
    response_format: Option<Value>,
    #[serde(flatten)]
    guided: super::structured::Guided,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: OneOrMany,
    #[serde(default)]
    echo: bool,
    /// The number of alternatives to report with each token's log-probability.
    logprobs: Option<usize>,
    suffix: Option<String>,
    best_of: Option<usize>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    #[serde(flatten)]
    common: Common,
}

impl Common {
    /// Refuses what lorafleet does not do, naming the field.
    fn check_supported(&self) -> Result<usize, ApiError> {
        if self.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(ApiError::field("logit_bias", "is not supported"));
        }
        for (name, v) in [("tools", &self.tools), ("tool_choice", &self.tool_choice), ("functions", &self.functions)] {
            if v.as_ref().is_some_and(|v| !v.is_null() && v.as_str() != Some("none")) {
                return Err(ApiError::field(name, "tool calling is not supported"));
            }
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_CHOICES {
            return Err(ApiError::field("n", format!("must be in 1..={MAX_CHOICES}, got {n}")));
        }
        Ok(n)
    }

    /// Choice `i`'s sampling: `seed + i` with a seed, a fresh random seed without.
    fn sampling(&self, i: usize) -> Result<SamplingParams, ApiError> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.map_or_else(rand_seed, |s| s.wrapping_add(i as u64)),
            penalties: Penalties {
                repetition: self.repetition_penalty.unwrap_or(1.0),
                presence: self.presence_penalty.unwrap_or(0.0),
                frequency: self.frequency_penalty.unwrap_or(0.0),
            },
        };
        p.validate()?;
        Ok(p)
    }

    /// The engine requests (one per choice) for `prompt`; `default_max` when no max_tokens is
    /// given (None = up to the context).
    fn requests(&self, app: &App, prompt: String, default_max: Option<usize>, report: Report, log: &mut RequestLog) -> Result<Vec<GenerateRequest>, ApiError> {
        let n = self.check_supported()?;
        let adapter = app.adapter_for(self.model.as_deref());
        log.adapter = adapter.clone();
        let max_new_tokens = match self.max_completion_tokens.or(self.max_tokens).or(default_max) {
            Some(n) => n,
            None => {
                // Up to the end of the context (or of the KV cache).
                let e = &app.engine;
                let limit = e.config().max_position_embeddings.min(e.kv_capacity_tokens());
                let n = e.encode(&Prompt::Text(prompt.clone()))?.len();
                limit.saturating_sub(n).max(1)
            }
        };
        let constraint = super::structured::constraint(self.response_format.as_ref(), &self.guided)?;
        let stop = self.stop.as_ref().map(|s| match s {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        });
        (0..n)
            .map(|i| {
                let options = GenerateOptions {
                    max_new_tokens,
                    sampling: self.sampling(i)?,
                    stop: stop.clone().unwrap_or_default(),
                    ignore_eos: self.ignore_eos,
                    logprobs: report.logprobs,
                    prompt_logprobs: report.echo && report.logprobs.is_some(),
                    constraint: constraint.clone(),
                };
                Ok(GenerateRequest::new(Prompt::Text(prompt.clone()), adapter.clone(), options))
            })
            .collect()
    }

    fn model_name(&self, app: &App) -> String {
        self.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| app.model_id.clone())
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// What the answer reports besides the text.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    /// Log-probabilities with this many alternatives per token.
    logprobs: Option<usize>,
    /// Completions' `echo`: the prompt is part of the text (and of the logprobs).
    echo: bool,
}

/// The two endpoints differ only in how a choice looks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }
    fn id(self, n: u64) -> String {
        match self {
            Kind::Completion => format!("cmpl-{n}"),
            Kind::Chat => format!("chatcmpl-{n}"),
        }
    }
    /// A streamed choice carrying `text`.
    fn delta(self, index: usize, text: &str, logprobs: Value, finish: Option<&str>) -> Value {
        match self {
            Kind::Completion => json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish }),
            Kind::Chat => {
                let delta = if text.is_empty() && finish.is_some() { json!({}) } else { json!({ "content": text }) };
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
        }
    }
}

/// Log-probabilities in each endpoint's shape, for a run of tokens (`(id, logprobs)`), the
/// completion's text offset starting at `offset`.
fn logprobs_json(app: &App, kind: Kind, toks: &[(u32, Option<&TokenLogprobs>)], offset: &mut usize) -> Value {
    let tok = app.engine.tokenizer();
    match kind {
        Kind::Completion => {
            let (mut tokens, mut lps, mut tops, mut offs) = (vec![], vec![], vec![], vec![]);
            for &(id, lp) in toks {
                let text = tok.token_text(id);
                offs.push(*offset);
                *offset += text.chars().count();
                tokens.push(text);
                lps.push(lp.map(|l| l.logprob));
                tops.push(lp.map(|l| l.top.iter().map(|&(t, p)| (tok.token_text(t), json!(p))).collect::<Map<String, Value>>()));
            }
            json!({ "tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs })
        }
        Kind::Chat => {
            let entry = |id: u32, p: f32| {
                let text = tok.token_text(id);
                json!({ "token": text, "logprob": p, "bytes": text.as_bytes() })
            };
            let content: Vec<Value> = toks
                .iter()
                .filter_map(|&(id, lp)| lp.map(|l| (id, l)))
                .map(|(id, l)| {
                    let mut e = entry(id, l.logprob);
                    e["top_logprobs"] = l.top.iter().map(|&(t, p)| entry(t, p)).collect();
                    e
                })
                .collect();
            json!({ "content": content })
        }
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens })
}

/// A prepared request: one engine request per choice, and how to answer.
struct Prepared {
    reqs: Vec<GenerateRequest>,
    stream: bool,
    include_usage: bool,
    model: String,
    report: Report,
    /// The prompt text (completions' `echo`).
    prompt: String,
}

pub async fn completions(State(app): State<App>, body: Bytes) -> Response {
    let mut log = RequestLog::new("POST", "/v1/completions");
    let prepared = (|| {
        let b: CompletionBody = parse_body(&body)?;
        if b.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::field("suffix", "insertion is not supported"));
        }
        if b.best_of.is_some_and(|k| k > b.common.n.unwrap_or(1)) {
            return Err(ApiError::field("best_of", "only best_of = n is supported"));
        }
        let mut prompts = b.prompt.into_vec();
        if prompts.len() != 1 {
            return Err(ApiError::field("prompt", "give exactly one prompt"));
        }
        let prompt = prompts.remove(0);
        let report = Report { logprobs: b.logprobs, echo: b.echo };
        let reqs = b.common.requests(&app, prompt.clone(), Some(COMPLETIONS_DEFAULT_MAX_TOKENS), report, &mut log)?;
        Ok(Prepared { reqs, stream: b.common.stream, include_usage: b.common.include_usage(), model: b.common.model_name(&app), report, prompt })
    })();
    run(app, prepared, Kind::Completion, log).await
}

/// Roles a chat message may have: what chat templates are written for (a role they do not know
/// would be copied into the prompt as text, or dropped, and the model answer something else).
const CHAT_ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Each message's role is one of `CHAT_ROLES` and its content is not null or absent (OpenAI
/// allows that only on an assistant message that made tool calls): a 422 naming
/// `messages[i].role` or `messages[i].content`. A body that is not JSON, or whose `messages` is
/// not an array of objects, is left to `parse_body`'s own message.
fn check_messages(body: &Bytes) -> Result<(), ApiError> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return Ok(()) };
    let Some(msgs) = v.get("messages").and_then(Value::as_array) else { return Ok(()) };
    for (i, m) in msgs.iter().enumerate() {
        let Some(m) = m.as_object() else { continue };
        let role = match m.get("role") {
            Some(Value::String(r)) if CHAT_ROLES.contains(&r.as_str()) => r.as_str(),
            Some(Value::String(r)) => {
                return Err(ApiError::field(&format!("messages[{i}].role"), format!("{r:?} is not a role this server takes ({})", CHAT_ROLES.join(", "))))
            }
            Some(other) => return Err(ApiError::field(&format!("messages[{i}].role"), format!("{other} is not a string"))),
            None => return Err(ApiError::field(&format!("messages[{i}].role"), "is missing")),
        };
        if matches!(m.get("content"), None | Some(Value::Null)) && role != "assistant" {
            return Err(ApiError::field(
                &format!("messages[{i}].content"),
                format!("is {}; a {role} message needs content", if m.contains_key("content") { "null" } else { "missing" }),
            ));
        }
    }
    Ok(())
}

pub async fn chat_completions(State(app): State<App>, body: Bytes) -> Response {
    let mut log = RequestLog::new("POST", "/v1/chat/completions");
    let prepared = (|| {
        check_messages(&body)?;
        let b: ChatBody = parse_body(&body)?;
        if b.messages.is_empty() {
            return Err(ApiError::field("messages", "is empty"));
        }
        if b.top_logprobs.is_some() && !b.logprobs {
            return Err(ApiError::field("top_logprobs", "needs logprobs: true"));
        }
        let prompt = app.engine.tokenizer().apply_chat_template(&b.messages, true)?;
        let report = Report { logprobs: b.logprobs.then(|| b.top_logprobs.unwrap_or(0)), echo: false };
        let reqs = b.common.requests(&app, prompt.clone(), None, report, &mut log)?;
        Ok(Prepared { reqs, stream: b.common.stream, include_usage: b.common.include_usage(), model: b.common.model_name(&app), report, prompt })
    })();
    run(app, prepared, Kind::Chat, log).await
}

/// One finished choice of a non-streamed answer.
fn choice(app: &App, kind: Kind, index: usize, c: &Collected, p: &Prepared) -> Value {
    let f = &c.finished;
    let mut offset = 0;
    let mut logprobs = Value::Null;
    if p.report.logprobs.is_some() {
        let mut toks: Vec<(u32, Option<&TokenLogprobs>)> = Vec::new();
        if let Some((ids, lps)) = c.prompt.as_ref().filter(|_| p.report.echo) {
            toks.extend(ids.iter().copied().zip(lps.iter().map(Option::as_ref)));
        }
        toks.extend(c.tokens.iter().map(|t| (t.id, t.logprobs.as_ref())));
        logprobs = logprobs_json(app, kind, &toks, &mut offset);
    }
    match kind {
        Kind::Completion => {
            let text = if p.report.echo { format!("{}{}", p.prompt, f.text) } else { f.text.clone() };
            json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": openai_finish_reason(f.reason) })
        }
        Kind::Chat => json!({
            "index": index,
            "message": { "role": "assistant", "content": f.text },
            "logprobs": logprobs,
            "finish_reason": openai_finish_reason(f.reason),
        }),
    }
}

async fn run(app: App, prepared: Result<Prepared, ApiError>, kind: Kind, mut log: RequestLog) -> Response {
    let mut p = match prepared {
        Ok(x) => x,
        Err(e) => {
            log.error(&e);
            return e.respond(true);
        }
    };
    let id = kind.id(app.next_id());
    let created = unix_time();
    let reqs = std::mem::take(&mut p.reqs);
    if !p.stream {
        let all = futures_util::future::try_join_all(reqs.into_iter().map(|r| collect(&app, r))).await;
        return match all {
            Ok(cs) => {
                let prompt_tokens = cs.first().map_or(0, |c| c.finished.prompt_tokens);
                let completion_tokens: usize = cs.iter().map(|c| c.finished.generated_tokens).sum();
                if let Some(c) = cs.first() {
                    log.finished(&c.finished);
                }
                log.generated_tokens = completion_tokens;
                log.ok();
                let choices: Vec<Value> = cs.iter().enumerate().map(|(i, c)| choice(&app, kind, i, c, &p)).collect();
                json_response(json!({
                    "id": id,
                    "object": kind.object(false),
                    "created": created,
                    "model": p.model,
                    "choices": choices,
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
            }
            Err(e) => {
                log.error(&e);
                e.respond(true)
            }
        };
    }
    stream(app, p, reqs, kind, id, created, log).await
}

async fn stream(app: App, p: Prepared, reqs: Vec<GenerateRequest>, kind: Kind, id: String, created: u64, mut log: RequestLog) -> Response {
    // Start every choice first, so an error (unknown adapter, queue full) is an HTTP error.
    let n = reqs.len();
    let mut streams = Vec::with_capacity(n);
    let mut prompt_tokens = 0;
    for (i, r) in reqs.into_iter().enumerate() {
        match start(&app, r).await {
            Ok((first, rx, pt)) => {
                prompt_tokens = pt;
                let rest = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
                streams.push(futures_util::stream::once(async move { first }).chain(rest).map(move |e| (i, e)).boxed());
            }
            Err(e) => {
                log.error(&e);
                return e.respond(true);
            }
        }
    }
    log.prompt_tokens = prompt_tokens;
    // The headers go out now; the stream's end sets the outcome (cancelled until then).
    log.status = 200;
    let model = p.model.clone();
    let chunk = move |choices: Value| json!({ "id": id, "object": kind.object(true), "created": created, "model": model, "choices": choices });
    let mut opening: Vec<String> = Vec::new();
    for i in 0..n {
        if kind == Kind::Chat {
            // The chat stream opens with the assistant's role.
            opening.push(sse_data(&chunk(
                json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": Value::Null, "finish_reason": Value::Null }]),
            )));
        } else if p.report.echo && p.report.logprobs.is_none() {
            // Echo without logprobs: the prompt is the first text (with logprobs it comes with
            // the prompt's log-probabilities, `Event::Prompt`).
            opening.push(sse_data(&chunk(json!([kind.delta(i, &p.prompt, Value::Null, None)]))));
        }
    }
    opening.reverse();
    struct St<F> {
        app: App,
        events: futures_util::stream::SelectAll<futures_util::stream::BoxStream<'static, (usize, Event)>>,
        opening: Vec<String>,
        chunk: F,
        report: Report,
        prompt: String,
        /// Text offsets for completions' logprobs, per choice.
        offsets: Vec<usize>,
        running: usize,
        completion_tokens: usize,
        prompt_tokens: usize,
        include_usage: bool,
        /// 0 = streaming, 1 = choices over (usage, if asked, then [DONE]), 2 = [DONE] next, 3 = over.
        phase: u8,
        log: RequestLog,
    }
    let st = St {
        app,
        events: futures_util::stream::select_all(streams),
        opening,
        chunk,
        report: p.report,
        prompt: p.prompt,
        offsets: vec![0; n],
        running: n,
        completion_tokens: 0,
        prompt_tokens,
        include_usage: p.include_usage,
        phase: 0,
        log,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if let Some(o) = st.opening.pop() {
            return Some((o, st));
        }
        match st.phase {
            1 => {
                st.phase = 2;
                if st.include_usage {
                    let mut c = (st.chunk)(json!([]));
                    c["usage"] = usage(st.prompt_tokens, st.completion_tokens);
                    return Some((sse_data(&c), st));
                }
                st.phase = 3;
                return Some(("data: [DONE]\n\n".to_string(), st));
            }
            2 => {
                st.phase = 3;
                return Some(("data: [DONE]\n\n".to_string(), st));
            }
            3 => return None,
            _ => {}
        }
        loop {
            let Some((i, ev)) = st.events.next().await else {
                // Every choice's events ended without a Finished (the engine stopped).
                return None;
            };
            match ev {
                Event::Token { id, text, logprobs, .. } => {
                    st.log.generated_tokens += 1;
                    st.completion_tokens += 1;
                    let lp = match st.report.logprobs {
                        Some(_) => logprobs_json(&st.app, kind, &[(id, logprobs.as_ref())], &mut st.offsets[i]),
                        None => Value::Null,
                    };
                    // With logprobs every token is a chunk (its text may be empty: held back).
                    if !text.is_empty() || !lp.is_null() {
                        return Some((sse_data(&(st.chunk)(json!([kind.delta(i, &text, lp, None)]))), st));
                    }
                }
                Event::Prompt { ids, logprobs } => {
                    if st.report.echo && kind == Kind::Completion {
                        let toks: Vec<(u32, Option<&TokenLogprobs>)> = ids.iter().copied().zip(logprobs.iter().map(Option::as_ref)).collect();
                        let lp = logprobs_json(&st.app, kind, &toks, &mut st.offsets[i]);
                        return Some((sse_data(&(st.chunk)(json!([kind.delta(i, &st.prompt, lp, None)]))), st));
                    }
                }
                Event::Finished(f) => {
                    st.log.finished(&f);
                    st.log.generated_tokens = st.completion_tokens;
                    st.running -= 1;
                    if st.running == 0 {
                        st.log.outcome = "ok";
                        st.phase = 1;
                    }
                    return Some((sse_data(&(st.chunk)(json!([kind.delta(i, "", Value::Null, Some(openai_finish_reason(f.reason)))]))), st));
                }
                Event::Error(e) => {
                    let e = ApiError::from(e);
                    st.log.outcome = e.kind;
                    st.phase = 2;
                    let body = json!({ "error": { "message": e.message, "type": "server_error", "param": Value::Null, "code": e.kind } });
                    return Some((sse_data(&body), st));
                }
            }
        }
    });
    sse_response(stream)
}

pub async fn models(State(app): State<App>) -> Response {
    let created = unix_time();
    let mut data = vec![json!({ "id": app.model_id, "object": "model", "created": created, "owned_by": "lorafleet" })];
    let engine = app.engine.clone();
    let adapters = tokio::task::spawn_blocking(move || engine.available_adapters()).await.unwrap_or_default();
    for a in adapters {
        data.push(json!({ "id": a, "object": "model", "created": created, "owned_by": "lorafleet", "parent": app.model_id }));
    }
    json_response(json!({ "object": "list", "data": data }))
}

#[derive(Debug, Deserialize)]
struct LoadAdapterBody {
    lora_name: String,
    lora_path: String,
}

#[derive(Debug, Deserialize)]
struct UnloadAdapterBody {
    lora_name: String,
    #[allow(dead_code)]
    lora_int_id: Option<i64>,
}

/// vLLM's `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}`: serves the folder under
/// that name from now on (under `--adapter-dir` unless `--allow-adapter-paths`).
pub async fn load_lora_adapter(State(app): State<App>, body: Bytes) -> Response {
    adapter_admin::<LoadAdapterBody>(
        app,
        body,
        "/v1/load_lora_adapter",
        |b| &b.lora_name,
        "added",
        |e, b| e.load_adapter(&b.lora_name, std::path::Path::new(&b.lora_path)),
    )
    .await
}

/// vLLM's `POST /v1/unload_lora_adapter` `{"lora_name"}`: stops serving a name
/// `load_lora_adapter` gave (running requests finish with it).
pub async fn unload_lora_adapter(State(app): State<App>, body: Bytes) -> Response {
    adapter_admin::<UnloadAdapterBody>(app, body, "/v1/unload_lora_adapter", |b| &b.lora_name, "removed", |e, b| e.unload_adapter(&b.lora_name)).await
}

/// Parses a body, runs `act` on the engine off the async threads (it blocks the engine for a
/// load), and answers vLLM's plain-text success line or an OpenAI-shaped error.
async fn adapter_admin<B: serde::de::DeserializeOwned + Send + 'static>(
    app: App,
    body: Bytes,
    path: &'static str,
    name: fn(&B) -> &String,
    done: &'static str,
    act: fn(&crate::engine::Engine, &B) -> crate::Result<()>,
) -> Response {
    let mut log = RequestLog::new("POST", path);
    let r = async {
        let b: B = parse_body(&body)?;
        let n = name(&b).clone();
        log.adapter = Some(n.clone());
        let engine = app.engine.clone();
        tokio::task::spawn_blocking(move || act(&engine, &b))
            .await
            .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
        Ok::<_, ApiError>(format!("Success: LoRA adapter '{n}' {done} successfully."))
    }
    .await;
    match r {
        Ok(msg) => {
            log.ok();
            msg.into_response()
        }
        Err(e) => {
            log.error(&e);
            e.respond(true)
        }
    }
}
