//! OpenAI-compatible endpoints: `POST /v1/completions`, `POST /v1/chat/completions` (streamed
//! as SSE chunks ending with `data: [DONE]`, or not) and `GET /v1/models`. The `model` field
//! names an adapter, or the base (its directory name, "base", or empty). As in OpenAI, the
//! temperature defaults to 1; `temperature: 0` is greedy.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{collect, json_response, openai_finish_reason, parse_body, sse_data, sse_response, start, unix_time, ApiError, App, RequestLog};
use crate::engine::{Event, GenerateOptions, GenerateRequest, Prompt, SamplingParams};
use crate::tokenizer::ChatMessage;

/// OpenAI's default `max_tokens` for completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

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
    n: Option<usize>,
    #[serde(default)]
    ignore_eos: bool,
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    common: Common,
}

impl Common {
    fn sampling(&self) -> Result<SamplingParams, ApiError> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(|| unix_time() ^ 0x5DEE_CE66),
        };
        p.validate()?;
        Ok(p)
    }

    /// The engine request for `prompt`; `default_max` when no max_tokens is given (None = up to
    /// the context).
    fn request(&self, app: &App, prompt: String, default_max: Option<usize>, log: &mut RequestLog) -> Result<GenerateRequest, ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::validation("only n = 1 is supported"));
        }
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
        let options = GenerateOptions {
            max_new_tokens,
            sampling: self.sampling()?,
            stop: self.stop.as_ref().map(|s| match s {
                OneOrMany::One(s) => vec![s.clone()],
                OneOrMany::Many(v) => v.clone(),
            }).unwrap_or_default(),
            ignore_eos: self.ignore_eos,
        };
        Ok(GenerateRequest::new(Prompt::Text(prompt), adapter, options))
    }

    fn model_name(&self, app: &App) -> String {
        self.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| app.model_id.clone())
    }
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
    fn delta(self, text: &str, finish: Option<&str>) -> Value {
        match self {
            Kind::Completion => json!({ "index": 0, "text": text, "logprobs": Value::Null, "finish_reason": finish }),
            Kind::Chat => {
                let delta = if text.is_empty() && finish.is_some() { json!({}) } else { json!({ "content": text }) };
                json!({ "index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish })
            }
        }
    }
}

pub async fn completions(State(app): State<App>, body: Bytes) -> Response {
    let mut log = RequestLog::new("POST", "/v1/completions");
    let prepared = (|| {
        let b: CompletionBody = parse_body(&body)?;
        let mut prompts = b.prompt.into_vec();
        if prompts.len() != 1 {
            return Err(ApiError::validation("give exactly one prompt"));
        }
        let prompt = prompts.remove(0);
        let req = b.common.request(&app, prompt, Some(COMPLETIONS_DEFAULT_MAX_TOKENS), &mut log)?;
        Ok((req, b.common.stream, b.common.model_name(&app)))
    })();
    run(app, prepared, Kind::Completion, log).await
}

pub async fn chat_completions(State(app): State<App>, body: Bytes) -> Response {
    let mut log = RequestLog::new("POST", "/v1/chat/completions");
    let prepared = (|| {
        let b: ChatBody = parse_body(&body)?;
        if b.messages.is_empty() {
            return Err(ApiError::validation("messages is empty"));
        }
        let prompt = app.engine.tokenizer().apply_chat_template(&b.messages, true)?;
        let req = b.common.request(&app, prompt, None, &mut log)?;
        Ok((req, b.common.stream, b.common.model_name(&app)))
    })();
    run(app, prepared, Kind::Chat, log).await
}

async fn run(app: App, prepared: Result<(GenerateRequest, bool, String), ApiError>, kind: Kind, mut log: RequestLog) -> Response {
    let (req, stream, model) = match prepared {
        Ok(x) => x,
        Err(e) => {
            log.error(&e);
            return e.into_response();
        }
    };
    let id = kind.id(app.next_id());
    let created = unix_time();
    if !stream {
        return match collect(&app, req).await {
            Ok((_, f)) => {
                log.finished(&f);
                log.ok();
                let choice = match kind {
                    Kind::Completion => json!({ "index": 0, "text": f.text, "logprobs": Value::Null, "finish_reason": openai_finish_reason(f.reason) }),
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": f.text },
                        "logprobs": Value::Null,
                        "finish_reason": openai_finish_reason(f.reason),
                    }),
                };
                json_response(json!({
                    "id": id,
                    "object": kind.object(false),
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": { "prompt_tokens": f.prompt_tokens, "completion_tokens": f.generated_tokens, "total_tokens": f.prompt_tokens + f.generated_tokens },
                }))
            }
            Err(e) => {
                log.error(&e);
                e.into_response()
            }
        };
    }
    let (first, rx, prompt_tokens) = match start(&app, req).await {
        Ok(x) => x,
        Err(e) => {
            log.error(&e);
            return e.into_response();
        }
    };
    log.prompt_tokens = prompt_tokens;
    // The headers go out now; the stream's end sets the outcome (cancelled until then).
    log.status = 200;
    let chunk = move |choice: Value| json!({ "id": id, "object": kind.object(true), "created": created, "model": model, "choices": [choice] });
    // The chat stream opens with the assistant's role.
    let opening = (kind == Kind::Chat).then(|| sse_data(&chunk(json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": Value::Null, "finish_reason": Value::Null }))));
    struct St<F> {
        rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
        next: Option<Event>,
        opening: Option<String>,
        chunk: F,
        /// 0 = streaming, 1 = final chunk sent (send [DONE] next), 2 = over.
        phase: u8,
        log: RequestLog,
    }
    let st = St { rx, next: Some(first), opening, chunk, phase: 0, log };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        if let Some(o) = st.opening.take() {
            return Some((o, st));
        }
        match st.phase {
            1 => {
                st.phase = 2;
                return Some(("data: [DONE]\n\n".to_string(), st));
            }
            2 => return None,
            _ => {}
        }
        loop {
            let ev = match st.next.take() {
                Some(ev) => Some(ev),
                None => st.rx.recv().await,
            };
            match ev {
                Some(Event::Token { text, .. }) => {
                    st.log.generated_tokens += 1;
                    if !text.is_empty() {
                        let frame = sse_data(&(st.chunk)(kind.delta(&text, None)));
                        return Some((frame, st));
                    }
                }
                Some(Event::Finished(f)) => {
                    st.log.finished(&f);
                    st.log.outcome = "ok";
                    st.phase = 1;
                    let mut c = (st.chunk)(kind.delta("", Some(openai_finish_reason(f.reason))));
                    c["usage"] = json!({ "prompt_tokens": f.prompt_tokens, "completion_tokens": f.generated_tokens, "total_tokens": f.prompt_tokens + f.generated_tokens });
                    return Some((sse_data(&c), st));
                }
                Some(Event::Error(e)) => {
                    let e = ApiError::from(e);
                    st.log.outcome = e.kind;
                    st.phase = 1;
                    return Some((sse_data(&json!({ "error": e.message, "error_type": e.kind })), st));
                }
                None => return None,
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
