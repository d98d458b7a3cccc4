//! What a client hands the engine (`GenerateRequest`) and what it gets back: a `RequestHandle`
//! streaming `Event`s, read blocking (`recv`, `wait`) or as a `futures_core::Stream` (async), and
//! cancelling the request when dropped.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::events::EventReceiver;
pub use super::events::{Event, Finished, Recv};
use super::output::GenerateOptions;
use crate::tokenizer::ChatMessage;
use crate::{Error, Result};

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Encoded with the model's tokenizer (no special tokens added).
    Text(String),
    /// Token ids, fed as they are.
    Ids(Vec<u32>),
    /// Chat messages: the model's chat template (from its `tokenizer_config.json`) is applied
    /// with the assistant's turn opened, then the text is encoded.
    Chat(Vec<ChatMessage>),
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::Text(text.to_string())
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Self {
        Prompt::Text(text)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::Ids(ids)
    }
}

impl From<Vec<ChatMessage>> for Prompt {
    fn from(messages: Vec<ChatMessage>) -> Self {
        Prompt::Chat(messages)
    }
}

/// One generation request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// Adapter id (a folder under the adapter dir, a name given by `load_adapter` /
    /// `add_adapter`, or a path to one where paths are allowed); None or "" = the base.
    pub adapter: Option<String>,
    /// max_new_tokens, sampling (with its seed), stop strings, ignore_eos.
    pub options: GenerateOptions,
    /// The caller's own id for the request, for `Engine::cancel_request` (vLLM's
    /// `abort(request_id)`); ids need not be unique (a cancel reaches every live request with it).
    pub request_id: Option<String>,
}

impl GenerateRequest {
    /// A request with every field given.
    pub fn new(prompt: Prompt, adapter: Option<String>, options: GenerateOptions) -> Self {
        GenerateRequest { prompt, adapter, options, request_id: None }
    }

    /// A request for `prompt` on the base model with default options (greedy, at most 64 new
    /// tokens, stopping at the end-of-sequence token).
    ///
    /// ```
    /// use lorafleet::prelude::*;
    ///
    /// let r = GenerateRequest::prompt(vec![ChatMessage::user("Hi!")]).with_adapter("support-bot").max_new_tokens(32).with_request_id("ticket-9");
    /// assert_eq!(r.adapter.as_deref(), Some("support-bot"));
    /// assert_eq!(r.options.max_new_tokens, 32);
    /// assert!(r.options.sampling.is_greedy());
    /// assert!(matches!(r.prompt, Prompt::Chat(ref m) if m[0].role == "user"));
    /// assert_eq!(GenerateRequest::prompt("text").prompt, Prompt::Text("text".into()));
    /// assert_eq!(GenerateRequest::prompt(vec![1u32, 2, 3]).prompt, Prompt::Ids(vec![1, 2, 3]));
    /// ```
    pub fn prompt(prompt: impl Into<Prompt>) -> Self {
        GenerateRequest::new(prompt.into(), None, GenerateOptions::default())
    }

    /// The same request on adapter `id`.
    pub fn with_adapter(mut self, id: impl Into<String>) -> Self {
        self.adapter = Some(id.into());
        self
    }

    /// The same request with `options`.
    pub fn with_options(mut self, options: GenerateOptions) -> Self {
        self.options = options;
        self
    }

    /// The same request with at most `n` new tokens.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.options.max_new_tokens = n;
        self
    }

    /// The same request under the caller's id (`Engine::cancel_request`).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// The caller's side of one request: its events, read blocking (`recv`, `recv_timeout`,
/// `wait`) or as a `futures_core::Stream` in async code (no thread, no polling: the engine wakes
/// the task). Dropping it cancels the request: the engine frees its KV blocks at its next step.
#[derive(Debug)]
pub struct RequestHandle {
    pub(crate) id: u64,
    pub(crate) prompt_tokens: usize,
    pub(crate) events: EventReceiver,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// The engine's id for the request (unique per engine).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Tokens of the prompt as the engine feeds them.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next event, waiting for it; None after the final one.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv()
    }

    /// The next event if one is waiting now (`Err(Recv::Timeout)`: not yet; `Err(Recv::Closed)`:
    /// the stream has ended).
    pub fn try_recv(&self) -> std::result::Result<Event, Recv> {
        self.events.try_recv().map_err(|ended| if ended { Recv::Closed } else { Recv::Timeout })
    }

    /// Like `recv`, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Recv {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Recv::Event(e),
            Err(false) => Recv::Timeout,
            Err(true) => Recv::Closed,
        }
    }

    /// Asks the engine to stop this request: its stream ends with `Error(Error::Cancelled)`
    /// at the engine's next step.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the end of the request and returns how it finished.
    pub fn wait(self) -> Result<Finished> {
        loop {
            match self.events.recv() {
                Some(Event::Token { .. } | Event::Prompt { .. }) => {}
                Some(Event::Finished(f)) => return Ok(f),
                Some(Event::Error(e)) => return Err(e),
                None => return Err(Error::EngineStopped("the request's stream ended without a final event".into())),
            }
        }
    }

    /// `wait` for async code: the events as a stream, to the final one.
    pub async fn finished(mut self) -> Result<Finished> {
        use std::future::poll_fn;
        loop {
            match poll_fn(|cx| Pin::new(&mut self).poll_next_event(cx)).await {
                Some(Event::Token { .. } | Event::Prompt { .. }) => {}
                Some(Event::Finished(f)) => return Ok(f),
                Some(Event::Error(e)) => return Err(e),
                None => return Err(Error::EngineStopped("the request's stream ended without a final event".into())),
            }
        }
    }

    fn poll_next_event(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_next(cx)
    }
}

/// The events as an async stream (`futures::StreamExt::next`, tokio-stream, ...): ends after
/// the final event.
impl futures_core::Stream for RequestHandle {
    type Item = Event;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_next_event(cx)
    }
}

impl futures_core::FusedStream for RequestHandle {
    fn is_terminated(&self) -> bool {
        self.events.is_terminated()
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
