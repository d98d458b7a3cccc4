//! What a client hands the engine (`GenerateRequest`) and what it gets back: a `RequestHandle`
//! streaming `Event`s over a crossbeam channel, which cancels the request when dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError};
use serde::Serialize;

use super::output::{FinishReason, GenerateOptions};
use crate::backend::sampler::TokenLogprobs;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Encoded with the model's tokenizer (no special tokens added).
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Adapter id (a folder under the adapter dir, or a path to one); None or "" = the base.
    pub adapter: Option<String>,
    /// max_new_tokens, sampling (with its seed), stop strings, ignore_eos.
    pub options: GenerateOptions,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, adapter: Option<String>, options: GenerateOptions) -> Self {
        GenerateRequest { prompt, adapter, options }
    }
}

/// How a finished request went.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub token_ids: Vec<u32>,
    /// The whole generated text (cut before a stop string).
    pub text: String,
    /// Submit to first token.
    pub ttft: Duration,
    /// Submit to the last token.
    pub total: Duration,
    /// Submit to admission (the first time the request got KV blocks).
    pub queue_time: Duration,
    /// Times the request was preempted and recomputed.
    pub preemptions: u32,
}

#[derive(Debug)]
pub enum Event {
    /// One generated token and the text it released (may be empty; see `output::Accepted`).
    /// `logprobs` when the request asked for them (`GenerateOptions::logprobs`).
    Token {
        id: u32,
        text: String,
        special: bool,
        logprobs: Option<TokenLogprobs>,
    },
    /// The prompt's ids and log-probabilities (the first is None), before the first token,
    /// when the request asked for them (`GenerateOptions::prompt_logprobs`).
    Prompt {
        ids: Vec<u32>,
        logprobs: Vec<Option<TokenLogprobs>>,
    },
    Finished(Finished),
    /// This request failed alone (unknown adapter, adapter load error, ...); no more events.
    Error(Error),
}

/// What `RequestHandle::recv_timeout` got.
#[derive(Debug)]
pub enum Recv {
    Event(Event),
    Timeout,
    /// The engine has nothing more to say.
    Closed,
}

/// The caller's side of one request. Dropping it cancels the request: the engine frees its
/// KV blocks at its next step.
#[derive(Debug)]
pub struct RequestHandle {
    pub(crate) id: u64,
    pub(crate) prompt_tokens: usize,
    pub(crate) events: Receiver<Event>,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// The next event; None once the engine has nothing more to say (after `Finished` or
    /// `Error`, or when the engine stopped).
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// Like `recv`, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Recv {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Recv::Event(e),
            Err(RecvTimeoutError::Timeout) => Recv::Timeout,
            Err(RecvTimeoutError::Disconnected) => Recv::Closed,
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Waits for the end of the request and returns how it finished.
    pub fn wait(self) -> Result<Finished> {
        loop {
            match self.events.recv() {
                Ok(Event::Token { .. } | Event::Prompt { .. }) => {}
                Ok(Event::Finished(f)) => return Ok(f),
                Ok(Event::Error(e)) => return Err(e),
                Err(_) if self.cancel.load(Ordering::Relaxed) => return Err(Error::Cancelled),
                Err(_) => return Err(Error::ShuttingDown("the engine stopped before the request finished".into())),
            }
        }
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}
