//! What every endpoint shares: the app state, JSON error responses, the bridge from an engine
//! handle (crossbeam, blocking) to an async stream, SSE framing, and the one-line request log.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::engine::{Engine, Event, FinishReason, Finished, GenerateRequest, RequestHandle, TokenLogprobs};
use crate::Error;

/// What every route shares: the engine, the model's id, the in-flight count and its limit.
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The base model's id: the model directory's name.
    pub model_id: String,
    next_id: AtomicU64,
    /// Generation requests admitted and not yet ended (running or waiting in the engine).
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Past this many in flight, a request gets 503 with Retry-After (`--max-queued-requests`
    /// plus the engine's running slots).
    max_in_flight: usize,
}

/// The routes' state.
pub type App = Arc<AppState>;

impl AppState {
    /// State with no limit on requests in flight.
    pub fn new(engine: Arc<Engine>, model_id: String) -> App {
        Self::with_limit(engine, model_id, usize::MAX)
    }

    /// With at most `max_in_flight` generation requests admitted at once.
    pub fn with_limit(engine: Arc<Engine>, model_id: String, max_in_flight: usize) -> App {
        Arc::new(AppState { engine, model_id, next_id: AtomicU64::new(1), in_flight: Arc::default(), max_in_flight })
    }

    /// Generation requests admitted and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Admits one more request, or refuses with 503 when `max_in_flight` are in flight.
    fn admit(&self) -> Result<InFlight, ApiError> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.in_flight.clone());
        if n >= self.max_in_flight {
            return Err(Error::QueueFull { in_flight: n, limit: self.max_in_flight }.into());
        }
        Ok(guard)
    }

    /// A response id unique in this server's life.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The adapter a `model` / `adapter_id` field names: None for the base (its id, "base", or
    /// empty), else the adapter id.
    pub fn adapter_for(&self, name: Option<&str>) -> Option<String> {
        match name.map(str::trim) {
            None | Some("") | Some("base") => None,
            Some(n) if n == self.model_id => None,
            Some(n) => Some(n.to_string()),
        }
    }
}

/// A 4xx/5xx answer: `{"error": message, "error_type": kind}` (LoRAX / TGI) by default, or
/// OpenAI's `{"error": {"message", "type", "param", "code"}}` on the `/v1/` routes (`respond`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), param: None }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation", message)
    }

    /// A 422 about one field: the message names it.
    pub fn field(param: &str, message: impl std::fmt::Display) -> Self {
        ApiError { param: Some(param.to_string()), ..Self::validation(format!("{param}: {message}")) }
    }

    /// The response in OpenAI's error shape (`openai`) or LoRAX's.
    pub fn respond(self, openai: bool) -> Response {
        if !openai {
            return self.into_response();
        }
        let ty = match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 | 503 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        let body = json!({ "error": { "message": self.message, "type": ty, "param": self.param, "code": self.kind } });
        self.with_headers((self.status, axum::Json(body)).into_response())
    }

    fn with_headers(&self, mut r: Response) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A seed for a sampling request that gives none: different for every request (time, a
/// process-wide counter and the pid through splitmix64), so two requests in the same instant
/// never share one.
pub fn rand_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut x = t ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ ((std::process::id() as u64) << 40);
    // Below 2^53: exact in the JSON numbers clients parse as doubles.
    crate::rng::splitmix64_next(&mut x) >> 11
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, kind) = match &e {
            Error::UnknownAdapter(_) => (StatusCode::NOT_FOUND, "unknown_adapter"),
            Error::Adapter { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "adapter"),
            Error::PromptTooLong { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "prompt_too_long"),
            Error::NonFiniteLogits { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "non_finite_logits"),
            Error::ShuttingDown(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Error::EngineStopped(_) => (StatusCode::SERVICE_UNAVAILABLE, "engine_stopped"),
            Error::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            // The client cancelled: nobody reads this answer (logged as 499).
            Error::Cancelled => (StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "cancelled"),
            Error::EmptyPrompt
            | Error::BadRequest(_)
            | Error::InvalidRequest { .. }
            | Error::Tokenize(_)
            | Error::ChatTemplate(_)
            | Error::InvalidArgument(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, kind, crate::cli_flags::with_flag_names(&e.to_string()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.message, "error_type": self.kind });
        self.with_headers((self.status, axum::Json(body)).into_response())
    }
}

/// One admitted request; the count drops when the request ends (its event bridge finishes).
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Parses a JSON body into `T`: 400 `invalid_json` when it is not JSON, 422 `validation` when
/// the fields do not fit.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| ApiError::validation(format!("bad request body: {e}")))
}

/// A JSON answer.
pub fn json_response(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

/// One line per request on stderr, written when the request is over (dropped), whatever way it
/// ended: method, path, status, adapter, prompt and generated tokens, TTFT, total time.
pub struct RequestLog {
    pub method: &'static str,
    pub path: &'static str,
    pub status: u16,
    pub adapter: Option<String>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub ttft: Option<Duration>,
    /// "ok", an error kind, or "cancelled" (the client went away mid-stream).
    pub outcome: &'static str,
    start: Instant,
}

impl RequestLog {
    /// Until the handler marks it done (`ok`) or failed (`error`), a request whose handler is
    /// dropped (the client disconnected before the answer) is logged `status=499 cancelled`.
    pub fn new(method: &'static str, path: &'static str) -> Self {
        RequestLog { method, path, status: 499, adapter: None, prompt_tokens: 0, generated_tokens: 0, ttft: None, outcome: "cancelled", start: Instant::now() }
    }

    /// The answer is complete (or, for a stream, its headers are sent: the stream's end sets the
    /// outcome again).
    pub fn ok(&mut self) {
        self.status = 200;
        self.outcome = "ok";
    }

    pub fn error(&mut self, e: &ApiError) {
        self.status = e.status.as_u16();
        self.outcome = e.kind;
    }

    pub fn finished(&mut self, f: &Finished) {
        self.prompt_tokens = f.prompt_tokens;
        self.generated_tokens = f.generated_tokens;
        self.ttft = Some(f.ttft);
    }
}

/// Whether request logs are JSON lines (`serve --log-format json`): a client-given adapter id is
/// then written raw (the JSON encoder escapes it) instead of through `log_field`.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Which way the request log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME  INFO method=POST path=/generate status=200 ...`, one line per request.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, and each field under its name.
    Json,
}

/// Installs the `tracing` subscriber that writes request logs to stderr (once per process; a
/// program that embeds the server and installed its own keeps it).
pub fn init_request_log(format: LogFormat) {
    JSON_LOGS.store(format == LogFormat::Json, Ordering::Relaxed);
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A client-given string as a log field: raw in JSON logs (the encoder escapes it), through
/// `log_field` in text logs.
fn client_text(s: &str) -> String {
    if JSON_LOGS.load(Ordering::Relaxed) {
        s.to_string()
    } else {
        log_field(s)
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let adapter = self.adapter.as_deref().map_or_else(|| "-".to_string(), client_text);
        let ttft_ms = self.ttft.map(|t| t.as_secs_f64() * 1e3);
        tracing::info!(
            target: "lorafleet::request",
            method = %self.method,
            path = %self.path,
            status = self.status,
            outcome = %self.outcome,
            adapter = %adapter,
            prompt_tokens = self.prompt_tokens,
            generated_tokens = self.generated_tokens,
            ttft_ms,
            total_ms = self.start.elapsed().as_secs_f64() * 1e3,
        );
    }
}

/// A client-given string as one log field: as is when it is plain (printable ASCII, no space,
/// quote or backslash), else JSON-quoted, so a newline or a forged `key=value` cannot start a
/// log line or a field of its own.
pub fn log_field(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".into())
    }
}

/// Largest request body accepted (bytes); past it, a JSON 413.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// A request body must arrive within this (a client that sends fewer bytes than its
/// Content-Length gets a 408 instead of holding a connection and a task forever); set once at
/// start-up by `serve --body-timeout`.
static BODY_TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30_000);

pub fn set_body_timeout(d: Duration) {
    BODY_TIMEOUT_MS.store(d.as_millis().clamp(1, u64::MAX as u128) as u64, Ordering::Relaxed);
}

fn body_timeout() -> Duration {
    Duration::from_millis(BODY_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Middleware: reads the whole body under `MAX_BODY_BYTES` and the body timeout, then hands the
/// request on with the body in memory. Errors are the API's JSON errors (413, 408, 400).
pub async fn read_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let openai = parts.uri.path().starts_with("/v1/");
    // A request refused here never reaches a handler's RequestLog: it is logged here.
    let refuse = |e: ApiError| {
        log_refused(&parts.method, parts.uri.path(), &e);
        e.respond(openai)
    };
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let too_big = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the request body is over {MAX_BODY_BYTES} bytes"));
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return refuse(too_big());
    }
    let timeout = body_timeout();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => {
            refuse(ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", format!("the request body did not arrive within {:.1} s", timeout.as_secs_f64())))
        }
        // Without a declared length, the limit is the likely reason; a broken body otherwise.
        Ok(Err(_)) if declared.is_none() => refuse(too_big()),
        Ok(Err(e)) => refuse(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("the request body could not be read: {e}"))),
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, Body::from(bytes))).await,
    }
}

/// The request-log line of a request refused before any handler (body too large or too slow,
/// no such route or method): the fields a handler's `RequestLog` writes, as far as they are known.
pub fn log_refused(method: &axum::http::Method, path: &str, e: &ApiError) {
    tracing::info!(target: "lorafleet::request", method = %method, path = %client_text(path), status = e.status.as_u16(), outcome = %e.kind);
}

/// The answer to a path no route serves: a JSON 404, logged.
pub async fn no_route(req: axum::extract::Request) -> Response {
    let e = ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {}", client_text(req.uri().path())));
    log_refused(req.method(), req.uri().path(), &e);
    e.respond(req.uri().path().starts_with("/v1/"))
}

/// The answer to a method a route does not take: a JSON 405, logged.
pub async fn no_method(req: axum::extract::Request) -> Response {
    let e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{} does not take {}", client_text(req.uri().path()), req.method()));
    log_refused(req.method(), req.uri().path(), &e);
    e.respond(req.uri().path().starts_with("/v1/"))
}

/// Middleware: every route but /health needs `Authorization: Bearer KEY` when the server has a key
/// (`--api-key` or LORAFLEET_API_KEY); a missing or wrong key gets a JSON 401.
pub async fn check_api_key(key: Arc<str>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    // Compared in time independent of where the strings differ.
    let ok = given.is_some_and(|g| g.len() == key.len() && g.bytes().zip(key.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0);
    if ok {
        next.run(req).await
    } else {
        let openai = req.uri().path().starts_with("/v1/");
        tracing::warn!(target: "lorafleet::request", method = %req.method(), path = %client_text(req.uri().path()), status = 401, outcome = "unauthorized");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid API key is needed: `Authorization: Bearer KEY`").respond(openai)
    }
}

/// Forwards a handle's events (its async stream: the engine wakes the task, nothing polls)
/// into a channel the route reads. When the route drops its end (the client disconnected),
/// the task drops the handle, which cancels the request.
pub fn bridge(handle: RequestHandle, admitted: InFlight) -> UnboundedReceiver<Event> {
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        let _admitted = admitted;
        let mut handle = handle;
        loop {
            let ev = tokio::select! {
                ev = futures_util::StreamExt::next(&mut handle) => ev,
                () = tx.closed() => return,
            };
            let Some(ev) = ev else { return };
            let last = ev.is_final();
            if tx.send(ev).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Submits a request and waits for its first event, so that errors found by the engine (an
/// unknown adapter) become an HTTP error before any streaming starts. Returns the event stream
/// with that first event, and the prompt length.
pub async fn start(app: &App, req: GenerateRequest) -> Result<(Event, UnboundedReceiver<Event>, usize), ApiError> {
    let admitted = app.admit()?;
    let handle = app.engine.submit(req)?;
    let prompt_tokens = handle.prompt_tokens();
    let mut rx = bridge(handle, admitted);
    match rx.recv().await {
        Some(Event::Error(e)) => Err(e.into()),
        Some(ev) => Ok((ev, rx, prompt_tokens)),
        None => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the engine stopped")),
    }
}

/// One generated token as an endpoint reports it.
#[derive(Debug)]
pub struct TokenOut {
    pub id: u32,
    /// The text this token released into the output (may be empty; `Accepted::text`).
    pub text: String,
    pub special: bool,
    pub logprobs: Option<TokenLogprobs>,
}

/// A request run to its end.
#[derive(Debug)]
pub struct Collected {
    /// The prompt's ids and log-probabilities, when asked for (`GenerateOptions::prompt_logprobs`).
    pub prompt: Option<(Vec<u32>, Vec<Option<TokenLogprobs>>)>,
    pub tokens: Vec<TokenOut>,
    pub finished: Finished,
}

/// Runs a request to its end.
pub async fn collect(app: &App, req: GenerateRequest) -> Result<Collected, ApiError> {
    let (first, mut rx, _) = start(app, req).await?;
    let mut tokens = Vec::new();
    let mut prompt = None;
    let mut ev = Some(first);
    loop {
        match ev.take() {
            Some(Event::Token { id, text, special, logprobs }) => tokens.push(TokenOut { id, text, special, logprobs }),
            Some(Event::Prompt { ids, logprobs }) => prompt = Some((ids, logprobs)),
            Some(Event::Finished(finished)) => return Ok(Collected { prompt, tokens, finished }),
            Some(Event::Error(e)) => return Err(e.into()),
            None => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the engine stopped")),
        }
        ev = rx.recv().await;
    }
}

/// A `text/event-stream` response whose events come from `stream` (each item one full
/// `data: ...\n\n` frame).
pub fn sse_response(stream: impl futures_util::Stream<Item = String> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let body = Body::from_stream(stream.map(|s| Ok::<_, Infallible>(Bytes::from(s))));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// One SSE frame.
pub fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// TGI / LoRAX names of finish reasons.
pub fn tgi_finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        // LoRAX's client accepts these three only: a constrained output that completed, or
        // that no token could continue, ended as if the model had ended it.
        FinishReason::Eos | FinishReason::GrammarComplete | FinishReason::GrammarDeadEnd => "eos_token",
        FinishReason::Stop => "stop_sequence",
    }
}

/// OpenAI names of finish reasons.
pub fn openai_finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::Stop | FinishReason::GrammarComplete => "stop",
        // Its own reason: the output is cut where no token could continue it.
        FinishReason::GrammarDeadEnd => "grammar_dead_end",
    }
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
