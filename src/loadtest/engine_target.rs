//! The load test in process: requests go straight to `Engine::submit`, timings are taken on
//! the user thread as the token events arrive (the same points an HTTP client would see,
//! without the network).

use std::time::Instant;

use super::{LoadRequest, LoadTarget, RequestTiming};
use crate::engine::{Engine, Event, GenerateOptions, GenerateRequest, Prompt, SamplingParams};
use crate::{Error, Result};

/// The load test run in process, against an `Engine`.
pub struct EngineTarget<'a> {
    /// The engine.
    pub engine: &'a Engine,
}

impl LoadTarget for EngineTarget<'_> {
    fn run(&self, req: &LoadRequest) -> Result<RequestTiming> {
        let options = GenerateOptions {
            max_new_tokens: req.max_new_tokens,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            ignore_eos: true,
            logprobs: None,
            prompt_logprobs: false,
            constraint: None,
        };
        let t0 = Instant::now();
        let h = self.engine.submit(GenerateRequest::new(Prompt::Ids(req.prompt_ids.clone()), req.adapter.clone(), options))?;
        let mut timing = RequestTiming::default();
        loop {
            match h.recv() {
                Some(Event::Token { .. }) => {
                    if timing.output_tokens == 0 {
                        timing.ttft = t0.elapsed();
                    }
                    timing.output_tokens += 1;
                }
                Some(Event::Prompt { .. }) => {}
                Some(Event::Finished(_)) => break,
                Some(Event::Error(e)) => return Err(e),
                None => return Err(Error::InvalidArgument("the engine stopped during the request".into())),
            }
        }
        timing.total = t0.elapsed();
        Ok(timing)
    }
}
