//! LoRAX / TGI-compatible endpoints: `POST /generate` and `POST /generate_stream` (SSE).
//! Body `{"inputs": "...", "parameters": {"adapter_id", "max_new_tokens", "do_sample",
//! "temperature", "top_p", "top_k", "seed", "stop", "details", "ignore_eos_token"}}`; greedy
//! unless `do_sample`. Answer `{"generated_text": ...}` (+ `details` when asked); the stream
//! sends one `data: {"index", "token": {"id", "text", "logprob", "special"}, "generated_text",
//! "details"}` frame per token, the last one carrying the whole text.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{collect, json_response, parse_body, sse_data, sse_response, start, tgi_finish_reason, ApiError, App, RequestLog};
use crate::engine::{Event, Finished, GenerateOptions, GenerateRequest, Prompt, SamplingParams};

/// Default `max_new_tokens` when a request gives none.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;

#[derive(Debug, Deserialize)]
struct GenerateBody {
    inputs: String,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Debug, Default, Deserialize)]
struct Parameters {
    adapter_id: Option<String>,
    max_new_tokens: Option<usize>,
    #[serde(default)]
    do_sample: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    details: bool,
    #[serde(default)]
    ignore_eos_token: bool,
}

impl Parameters {
    fn sampling(&self) -> Result<SamplingParams, ApiError> {
        if !self.do_sample {
            return Ok(SamplingParams::greedy());
        }
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(rand_seed),
        };
        p.validate()?;
        Ok(p)
    }
}

/// A seed for sampling requests that give none.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64) << 32
}

fn request(app: &App, body: &Bytes, log: &mut RequestLog) -> Result<(GenerateRequest, Parameters, SamplingParams), ApiError> {
    let b: GenerateBody = parse_body(body)?;
    let adapter = app.adapter_for(b.parameters.adapter_id.as_deref());
    log.adapter = adapter.clone();
    let sampling = b.parameters.sampling()?;
    let options = GenerateOptions {
        max_new_tokens: b.parameters.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
        sampling: sampling.clone(),
        stop: b.parameters.stop.clone(),
        ignore_eos: b.parameters.ignore_eos_token,
    };
    Ok((GenerateRequest::new(Prompt::Text(b.inputs), adapter, options), b.parameters, sampling))
}

fn details(f: &Finished, sampling: &SamplingParams, tokens: Option<Vec<Value>>) -> Value {
    let mut d = json!({
        "finish_reason": tgi_finish_reason(f.reason),
        "generated_tokens": f.generated_tokens,
        "input_length": f.prompt_tokens,
        "seed": if sampling.is_greedy() { Value::Null } else { json!(sampling.seed) },
    });
    if let Some(t) = tokens {
        d["prefill"] = json!([]);
        d["tokens"] = Value::Array(t);
    }
    d
}

fn token_json(id: u32, text: &str, special: bool) -> Value {
    json!({ "id": id, "text": text, "logprob": Value::Null, "special": special })
}

pub async fn generate(State(app): State<App>, body: Bytes) -> Response {
    let mut log = RequestLog::new("POST", "/generate");
    let r = async {
        let (req, params, sampling) = request(&app, &body, &mut log)?;
        let (tokens, f) = collect(&app, req).await?;
        log.finished(&f);
        log.ok();
        let mut out = json!({ "generated_text": f.text });
        if params.details {
            let toks = tokens.iter().map(|(id, text, special)| token_json(*id, text, *special)).collect();
            out["details"] = details(&f, &sampling, Some(toks));
        }
        Ok::<_, ApiError>(json_response(out))
    }
    .await;
    r.unwrap_or_else(|e| {
        log.error(&e);
        e.into_response()
    })
}

struct StreamState {
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    next: Option<Event>,
    /// The last token's frame, held until we know whether it is the final one.
    held: Option<Value>,
    index: usize,
    details: bool,
    sampling: SamplingParams,
    done: bool,
    log: RequestLog,
}

pub async fn generate_stream(State(app): State<App>, body: Bytes) -> Response {
    let mut log = RequestLog::new("POST", "/generate_stream");
    let started = async {
        let (req, params, sampling) = request(&app, &body, &mut log)?;
        let (first, rx, prompt_tokens) = start(&app, req).await?;
        Ok::<_, ApiError>((first, rx, prompt_tokens, params, sampling))
    }
    .await;
    let (first, rx, prompt_tokens, params, sampling) = match started {
        Ok(x) => x,
        Err(e) => {
            log.error(&e);
            return e.into_response();
        }
    };
    log.prompt_tokens = prompt_tokens;
    // Until the stream ends normally (its end sets the outcome), a dropped stream means the
    // client went away: logged 200 (the headers went out) and cancelled.
    log.status = 200;
    let st = StreamState { rx, next: Some(first), held: None, index: 0, details: params.details, sampling, done: false, log };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let ev = match st.next.take() {
                Some(ev) => Some(ev),
                None => st.rx.recv().await,
            };
            match ev {
                Some(Event::Token { id, text, special }) => {
                    st.index += 1;
                    st.log.generated_tokens += 1;
                    let frame = json!({ "index": st.index, "token": token_json(id, &text, special), "generated_text": Value::Null, "details": Value::Null });
                    if let Some(prev) = st.held.replace(frame) {
                        return Some((sse_data(&prev), st));
                    }
                }
                Some(Event::Finished(f)) => {
                    st.log.finished(&f);
                    st.log.outcome = "ok";
                    st.done = true;
                    let mut frame = st.held.take().unwrap_or_else(|| json!({ "index": st.index, "token": Value::Null }));
                    frame["generated_text"] = json!(f.text);
                    if st.details {
                        frame["details"] = details(&f, &st.sampling, None);
                    }
                    return Some((sse_data(&frame), st));
                }
                Some(Event::Error(e)) => {
                    let e = ApiError::from(e);
                    st.log.outcome = e.kind;
                    st.done = true;
                    return Some((sse_data(&json!({ "error": e.message, "error_type": e.kind })), st));
                }
                None => return None,
            }
        }
    });
    sse_response(stream)
}
