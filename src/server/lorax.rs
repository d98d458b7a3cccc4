//! LoRAX / TGI-compatible endpoints, as LoRAX's own client (`lorax-client`) uses them:
//! `POST /` (`{"inputs", "parameters", "stream"}`: a one-element list, or SSE when `stream`),
//! `POST /generate`, `POST /generate_stream` (SSE), `GET /info` and `POST /tokenize`.
//!
//! Parameters: `adapter_id`, `max_new_tokens`, `do_sample`, `temperature`, `top_p`, `top_k`,
//! `seed`, `stop` (at most `MAX_STOP_SEQUENCES`), `repetition_penalty`, `truncate`,
//! `return_full_text`, `ignore_eos_token`, `details`, `decoder_input_details` (the prompt's
//! log-probabilities under `details.prefill`), `return_k_alternatives`, `response_format`
//! (`{"type": "json_object", "schema": ...}`: structured output). As in TGI, a request
//! samples when `do_sample` is set or any of temperature / top-k / top-p changes the
//! distribution; otherwise it is greedy. What lorafleet does not do (`typical_p`, `best_of` > 1,
//! `watermark`, `merged_adapters`, adapters from another source than the
//! adapter dir) is refused with a 422 naming the field, never ignored; so is an unknown field.
//! Every token carries its log-probability (`log_softmax` of the raw logits).

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::common::{collect, json_response, parse_body, rand_seed, sse_data, sse_response, start, tgi_finish_reason, ApiError, App, RequestLog, TokenOut};
use crate::engine::{Event, Finished, GenerateOptions, GenerateRequest, Penalties, Prompt, SamplingParams, TokenLogprobs};

/// Default `max_new_tokens` when a request gives none.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;
/// The most stop sequences one request may give (TGI's default is 4).
pub const MAX_STOP_SEQUENCES: usize = 8;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    inputs: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    /// `POST /` only: stream the answer.
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Parameters {
    adapter_id: Option<String>,
    adapter_source: Option<String>,
    merged_adapters: Option<Value>,
    api_token: Option<String>,
    max_new_tokens: Option<usize>,
    #[serde(default)]
    do_sample: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    typical_p: Option<f32>,
    seed: Option<u64>,
    repetition_penalty: Option<f32>,
    truncate: Option<usize>,
    #[serde(default)]
    return_full_text: bool,
    #[serde(default)]
    stop: Vec<String>,
    best_of: Option<usize>,
    #[serde(default)]
    watermark: bool,
    #[serde(default)]
    details: bool,
    #[serde(default)]
    decoder_input_details: bool,
    return_k_alternatives: Option<usize>,
    response_format: Option<Value>,
    #[serde(default)]
    ignore_eos_token: bool,
}

impl Parameters {
    /// Refuses what lorafleet does not do, naming the field.
    fn check_supported(&self) -> Result<(), ApiError> {
        if self.typical_p.is_some() {
            return Err(ApiError::field("typical_p", "typical sampling is not supported; use top_p or top_k"));
        }
        if self.best_of.is_some_and(|n| n > 1) {
            return Err(ApiError::field("best_of", "only best_of = 1 is supported"));
        }
        if self.watermark {
            return Err(ApiError::field("watermark", "watermarking is not supported"));
        }
        if self.merged_adapters.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::field("merged_adapters", "adapter merging is not supported; name one adapter in adapter_id"));
        }
        if let Some(src) = self.adapter_source.as_deref().filter(|s| *s != "local") {
            return Err(ApiError::field("adapter_source", format!("{src:?}: adapters come only from the server's --adapter-dir (\"local\")")));
        }
        if self.api_token.is_some() {
            return Err(ApiError::field("api_token", "adapters come from the server's --adapter-dir; no token is used"));
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::field("stop", format!("at most {MAX_STOP_SEQUENCES} stop sequences, {} given", self.stop.len())));
        }
        if self.truncate == Some(0) {
            return Err(ApiError::field("truncate", "must be at least 1"));
        }
        Ok(())
    }

    fn sampling(&self) -> Result<SamplingParams, ApiError> {
        let penalties = Penalties { repetition: self.repetition_penalty.unwrap_or(1.0), ..Penalties::default() };
        // TGI's rule: any warper that changes the distribution turns sampling on.
        let warps = self.temperature.is_some_and(|t| t != 1.0) || self.top_k.is_some_and(|k| k > 0) || self.top_p.is_some_and(|p| p < 1.0);
        let p = if self.do_sample || warps {
            SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0),
                top_p: self.top_p.unwrap_or(1.0),
                seed: self.seed.unwrap_or_else(rand_seed),
                penalties,
            }
        } else {
            SamplingParams { penalties, ..SamplingParams::greedy() }
        };
        p.validate()?;
        Ok(p)
    }
}

/// A parsed request: what the engine runs and what the answer must show.
struct Parsed {
    req: GenerateRequest,
    inputs: String,
    params: Parameters,
    sampling: SamplingParams,
    stream: bool,
}

fn parse(app: &App, body: &Bytes, log: &mut RequestLog, streaming: bool) -> Result<Parsed, ApiError> {
    let b: GenerateBody = parse_body(body)?;
    let params = b.parameters.unwrap_or_default();
    params.check_supported()?;
    let adapter = app.adapter_for(params.adapter_id.as_deref());
    log.adapter = adapter.clone();
    let sampling = params.sampling()?;
    let stream = streaming || b.stream;
    let prompt = match params.truncate {
        // Keep the last `truncate` tokens of the prompt (TGI's truncation side).
        Some(n) => {
            let ids = app.engine.encode(&Prompt::Text(b.inputs.clone()))?;
            Prompt::Ids(ids[ids.len().saturating_sub(n)..].to_vec())
        }
        None => Prompt::Text(b.inputs.clone()),
    };
    // Log-probabilities for the tokens when they are shown: always in a stream (each frame
    // carries one), in `details` otherwise.
    let logprobs = (stream || params.details).then(|| params.return_k_alternatives.unwrap_or(0));
    let constraint = super::structured::constraint(params.response_format.as_ref(), &Default::default())?;
    let options = GenerateOptions {
        max_new_tokens: params.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS),
        sampling: sampling.clone(),
        stop: params.stop.clone(),
        ignore_eos: params.ignore_eos_token,
        logprobs,
        prompt_logprobs: params.details && params.decoder_input_details && !stream,
        constraint,
    };
    Ok(Parsed { req: GenerateRequest::new(prompt, adapter, options), inputs: b.inputs, params, sampling, stream })
}

fn details(f: &Finished, sampling: &SamplingParams) -> Value {
    json!({
        "finish_reason": tgi_finish_reason(f.reason),
        "prompt_tokens": f.prompt_tokens,
        "generated_tokens": f.generated_tokens,
        "input_length": f.prompt_tokens,
        "seed": if sampling.is_greedy() { Value::Null } else { json!(sampling.seed) },
    })
}

fn alternatives(app: &App, lp: &TokenLogprobs) -> Value {
    lp.top.iter().map(|&(id, logprob)| json!({ "id": id, "text": app.engine.tokenizer().token_text(id), "logprob": logprob })).collect()
}

fn token_json(app: &App, t: &TokenOut, k: Option<usize>) -> Value {
    let mut v = json!({ "id": t.id, "text": t.text, "logprob": t.logprobs.as_ref().map(|l| l.logprob), "special": t.special });
    if let (Some(_), Some(lp)) = (k, &t.logprobs) {
        v["alternative_tokens"] = alternatives(app, lp);
    }
    v
}

/// `POST /`: LoRAX's compat route (its client posts here): `/generate` answered as a
/// one-element list, or `/generate_stream` when the body says `"stream": true`.
pub async fn compat(State(app): State<App>, body: Bytes) -> Response {
    let streaming = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v.get("stream").and_then(Value::as_bool)).unwrap_or(false);
    if streaming {
        stream_response(app, body, "/").await
    } else {
        generate_response(app, body, "/", true).await
    }
}

pub async fn generate(State(app): State<App>, body: Bytes) -> Response {
    generate_response(app, body, "/generate", false).await
}

async fn generate_response(app: App, body: Bytes, path: &'static str, as_list: bool) -> Response {
    let mut log = RequestLog::new("POST", path);
    let r = async {
        let p = parse(&app, &body, &mut log, false)?;
        let c = collect(&app, p.req).await?;
        let f = &c.finished;
        log.finished(f);
        log.ok();
        let text = if p.params.return_full_text { format!("{}{}", p.inputs, f.text) } else { f.text.clone() };
        let mut out = json!({ "generated_text": text });
        if p.params.details {
            let mut d = details(f, &p.sampling);
            d["tokens"] = c.tokens.iter().map(|t| token_json(&app, t, p.params.return_k_alternatives)).collect();
            d["prefill"] = match &c.prompt {
                Some((ids, lps)) => ids
                    .iter()
                    .zip(lps)
                    .map(|(&id, lp)| json!({ "id": id, "text": app.engine.tokenizer().token_text(id), "logprob": lp.as_ref().map(|l| l.logprob) }))
                    .collect(),
                None => json!([]),
            };
            out["details"] = d;
        }
        Ok::<_, ApiError>(json_response(if as_list { json!([out]) } else { out }))
    }
    .await;
    r.unwrap_or_else(|e| {
        log.error(&e);
        e.into_response()
    })
}

struct StreamState {
    app: App,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    next: Option<Event>,
    /// The last token's frame, held until we know whether it is the final one.
    held: Option<Value>,
    index: usize,
    params: Parameters,
    inputs: String,
    sampling: SamplingParams,
    done: bool,
    log: RequestLog,
}

pub async fn generate_stream(State(app): State<App>, body: Bytes) -> Response {
    stream_response(app, body, "/generate_stream").await
}

async fn stream_response(app: App, body: Bytes, path: &'static str) -> Response {
    let mut log = RequestLog::new("POST", path);
    let started = async {
        let p = parse(&app, &body, &mut log, true)?;
        debug_assert!(p.stream);
        let (first, rx, prompt_tokens) = start(&app, p.req).await?;
        Ok::<_, ApiError>((first, rx, prompt_tokens, p.params, p.inputs, p.sampling))
    }
    .await;
    let (first, rx, prompt_tokens, params, inputs, sampling) = match started {
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
    let st = StreamState { app, rx, next: Some(first), held: None, index: 0, params, inputs, sampling, done: false, log };
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
                Some(Event::Token { id, text, special, logprobs }) => {
                    st.index += 1;
                    st.log.generated_tokens += 1;
                    let t = TokenOut { id, text, special, logprobs };
                    let frame = json!({ "index": st.index, "token": token_json(&st.app, &t, st.params.return_k_alternatives), "generated_text": Value::Null, "details": Value::Null });
                    if let Some(prev) = st.held.replace(frame) {
                        return Some((sse_data(&prev), st));
                    }
                }
                Some(Event::Prompt { .. }) => {}
                Some(Event::Finished(f)) => {
                    st.log.finished(&f);
                    st.log.outcome = "ok";
                    st.done = true;
                    // Every request generates at least one token, so the held frame is there.
                    let mut frame = st.held.take().unwrap_or_else(|| json!({ "index": st.index, "token": Value::Null }));
                    frame["generated_text"] = json!(if st.params.return_full_text { format!("{}{}", st.inputs, f.text) } else { f.text.clone() });
                    if st.params.details {
                        frame["details"] = details(&f, &st.sampling);
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

/// `GET /info`: the served model and the server's limits, in TGI's / LoRAX's field names.
pub async fn info(State(app): State<App>) -> Response {
    let e = &app.engine;
    let limits = e.limits();
    let max_total = e.config().max_position_embeddings.min(e.kv_capacity_tokens());
    json_response(json!({
        "model_id": app.model_id,
        "model_sha": Value::Null,
        "model_device_type": e.backend_name(),
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": limits.max_running,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_length": max_total.saturating_sub(1),
        "max_total_tokens": max_total,
        "max_batch_total_tokens": limits.max_batch_tokens,
        "max_active_adapters": limits.max_active_adapters,
        "waiting_served_ratio": Value::Null,
        "validation_workers": 1,
        "adapter_source": "local",
        "version": env!("CARGO_PKG_VERSION"),
        "sha": Value::Null,
        "docker_label": Value::Null,
        "router": "lorafleet",
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeBody {
    inputs: String,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<Value>,
}

/// `POST /tokenize`: `[{"id", "text", "start", "stop"}]` (byte offsets into `inputs`).
pub async fn tokenize(State(app): State<App>, body: Bytes) -> Response {
    let r = (|| {
        let b: TokenizeBody = parse_body(&body)?;
        let toks = app.engine.tokenizer().encode_with_offsets(&b.inputs).map_err(ApiError::from)?;
        let v: Vec<Value> =
            toks.into_iter().map(|(id, r)| json!({ "id": id, "text": b.inputs.get(r.clone()).unwrap_or_default(), "start": r.start, "stop": r.end })).collect();
        Ok::<_, ApiError>(json_response(Value::Array(v)))
    })();
    r.unwrap_or_else(|e| e.into_response())
}
