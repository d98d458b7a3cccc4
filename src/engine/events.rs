//! What happens to a request (`Event`: tokens, then one `Finished` or `Error`) and the channel
//! that carries one request's events from the engine thread to its caller, with a
//! blocking face (`recv`, `recv_timeout`, `try_recv`: a thread of the caller's waits on a
//! condition variable) and an async face (`poll_next`: a task's waker is woken by the next send),
//! so a tokio program needs no thread per stream and no polling.
//!
//! Every stream ends with one final event: `Finished` or `Error` sent by the engine, or, when the
//! engine's last sender goes away without one (the engine thread panicked or was torn down),
//! `Error(Error::EngineStopped)` made up here. After the final event the receiver says `None`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::output::FinishReason;
use crate::backend::sampler::TokenLogprobs;
use crate::Error;

/// How a finished request went.
#[derive(Debug, Clone, Serialize)]
pub struct Finished {
    /// Why generation stopped.
    pub reason: FinishReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// The generated ids.
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

/// One thing that happened to a request. Every stream ends with exactly one `Finished` or
/// `Error` (also when the engine stops or its thread dies: `Error(Error::EngineStopped)`).
#[derive(Debug)]
pub enum Event {
    /// One generated token and the text it released (may be empty; see `output::Accepted`).
    /// `logprobs` when the request asked for them (`GenerateOptions::logprobs`).
    Token {
        /// The token id.
        id: u32,
        /// The text this token completes (UTF-8 held back until whole; stop strings cut).
        text: String,
        /// A special token (end of sequence, chat markers).
        special: bool,
        /// Its log-probability and the top alternatives, when asked for.
        logprobs: Option<TokenLogprobs>,
    },
    /// The prompt's ids and log-probabilities (the first is None), before the first token,
    /// when the request asked for them (`GenerateOptions::prompt_logprobs`).
    Prompt {
        /// The prompt's token ids.
        ids: Vec<u32>,
        /// Per prompt token, its log-probability given the tokens before it.
        logprobs: Vec<Option<TokenLogprobs>>,
    },
    /// The request is done; no more events.
    Finished(Finished),
    /// This request failed alone (unknown adapter, adapter load error, the engine stopped,
    /// ...); no more events.
    Error(Error),
}

impl Event {
    /// Whether this is the stream's last event (`Finished` or `Error`).
    pub fn is_final(&self) -> bool {
        matches!(self, Event::Finished(_) | Event::Error(_))
    }
}

/// What `RequestHandle::recv_timeout` got.
#[derive(Debug)]
pub enum Recv {
    /// The next event.
    Event(Event),
    /// Nothing within the time given.
    Timeout,
    /// The stream has ended (its final event was already taken).
    Closed,
}

struct State {
    queue: VecDeque<Event>,
    /// Live `EventSender`s; 0 = nothing more will be sent.
    senders: usize,
    /// The final event (`Finished` or `Error`) has been queued (sent or made up).
    ended: bool,
    /// The task waiting in `poll_next`, woken by the next send or the last sender's drop.
    waker: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a queue that is still whole: go on with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new channel: the engine's sender and the caller's receiver.
pub(crate) fn channel() -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared { state: Mutex::new(State { queue: VecDeque::new(), senders: 1, ended: false, waker: None }), ready: Condvar::new() });
    (EventSender { shared: shared.clone() }, EventReceiver { shared })
}

/// The engine's end. Sending never blocks; a send after the final event is dropped.
pub(crate) struct EventSender {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues `ev`; false when the receiver is gone (the caller dropped the handle) or the
    /// stream already ended.
    pub(crate) fn send(&self, ev: Event) -> bool {
        let (receiver_alive, waker) = {
            let mut s = self.shared.lock();
            if s.ended {
                return false;
            }
            // The receiver holds the one reference that is not a sender's.
            let receiver_alive = Arc::strong_count(&self.shared) > s.senders;
            s.ended = matches!(ev, Event::Finished(_) | Event::Error(_));
            s.queue.push_back(ev);
            (receiver_alive, s.waker.take())
        };
        self.shared.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        receiver_alive
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        EventSender { shared: self.shared.clone() }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.lock();
            s.senders -= 1;
            if s.senders > 0 {
                return;
            }
            if !s.ended {
                s.ended = true;
                s.queue.push_back(Event::Error(Error::EngineStopped("the engine stopped before the request finished".into())));
            }
            s.waker.take()
        };
        self.shared.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender").finish_non_exhaustive()
    }
}

/// The caller's end (inside `RequestHandle`).
pub(crate) struct EventReceiver {
    shared: Arc<Shared>,
}

impl EventReceiver {
    /// The next event, waiting for it; None after the final event.
    pub(crate) fn recv(&self) -> Option<Event> {
        let mut s = self.shared.lock();
        loop {
            if let Some(ev) = s.queue.pop_front() {
                return Some(ev);
            }
            if s.ended {
                return None;
            }
            s = self.shared.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next event if one waits now; `Err(true)` when the stream has ended, `Err(false)`
    /// when it is only empty for now.
    pub(crate) fn try_recv(&self) -> Result<Event, bool> {
        let mut s = self.shared.lock();
        s.queue.pop_front().ok_or(s.ended)
    }

    /// `recv`, waiting at most `timeout`: `Err(true)` ended, `Err(false)` timed out.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<Event, bool> {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        loop {
            if let Some(ev) = s.queue.pop_front() {
                return Ok(ev);
            }
            if s.ended {
                return Err(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(false);
            }
            s = self.shared.ready.wait_timeout(s, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The async face: ready with the next event, or with None after the final one; else the
    /// task's waker is kept and woken by the next send.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut s = self.shared.lock();
        if let Some(ev) = s.queue.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether the final event has been taken (nothing more will come).
    pub(crate) fn is_terminated(&self) -> bool {
        let s = self.shared.lock();
        s.ended && s.queue.is_empty()
    }
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u32) -> Event {
        Event::Token { id, text: String::new(), special: false, logprobs: None }
    }

    fn finished() -> Event {
        Event::Finished(Finished {
            reason: FinishReason::Length,
            prompt_tokens: 1,
            generated_tokens: 1,
            token_ids: vec![7],
            text: String::new(),
            ttft: Duration::ZERO,
            total: Duration::ZERO,
            queue_time: Duration::ZERO,
            preemptions: 0,
        })
    }

    #[test]
    fn events_arrive_in_order_and_end_after_the_final_one() {
        let (tx, rx) = channel();
        assert!(tx.send(token(1)));
        assert!(tx.send(token(2)));
        assert!(tx.send(finished()));
        // A send after the final event is refused and never seen.
        assert!(!tx.send(token(3)));
        let ids: Vec<u32> = std::iter::from_fn(|| rx.recv())
            .map(|e| match e {
                Event::Token { id, .. } => id,
                Event::Finished(f) => 100 + f.token_ids[0],
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 107]);
        assert!(rx.is_terminated());
    }

    #[test]
    fn the_last_sender_gone_without_a_final_event_ends_the_stream_with_engine_stopped() {
        let (tx, rx) = channel();
        let tx2 = tx.clone();
        tx.send(token(1));
        drop(tx);
        // One sender is still alive: the stream is only empty for now.
        assert!(matches!(rx.try_recv(), Ok(Event::Token { id: 1, .. })));
        assert!(matches!(rx.try_recv(), Err(false)));
        drop(tx2);
        assert!(matches!(rx.recv(), Some(Event::Error(Error::EngineStopped(_)))));
        assert!(rx.recv().is_none());
        assert!(matches!(rx.recv_timeout(Duration::from_millis(1)), Err(true)));
    }

    #[test]
    fn recv_timeout_waits_and_a_send_from_another_thread_wakes_it() {
        let (tx, rx) = channel();
        assert!(matches!(rx.recv_timeout(Duration::from_millis(5)), Err(false)));
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(token(9));
        });
        assert!(matches!(rx.recv_timeout(Duration::from_secs(10)), Ok(Event::Token { id: 9, .. })));
        t.join().unwrap();
        // The sender dropped after its token: the made-up final event, then the end.
        assert!(matches!(rx.recv(), Some(Event::Error(Error::EngineStopped(_)))));
    }

    #[test]
    fn poll_next_keeps_the_waker_and_a_send_wakes_it() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = channel();
        assert!(rx.poll_next(&mut cx).is_pending());
        assert!(!flag.0.load(std::sync::atomic::Ordering::SeqCst));
        tx.send(token(4));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(matches!(rx.poll_next(&mut cx), Poll::Ready(Some(Event::Token { id: 4, .. }))));
        tx.send(finished());
        assert!(matches!(rx.poll_next(&mut cx), Poll::Ready(Some(Event::Finished(_)))));
        assert!(matches!(rx.poll_next(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn send_reports_a_dropped_receiver() {
        let (tx, rx) = channel();
        assert!(tx.send(token(1)));
        drop(rx);
        assert!(!tx.send(token(2)));
    }
}
