//! Generation on top of the model: sampling, stop conditions, batched generation, scoring, and
//! the continuous-batching engine (`Engine`: one thread, many requests, many adapters).

pub mod builder;
#[allow(clippy::module_inception)]
pub mod engine;
mod events;
pub mod generate;
pub mod output;
pub mod request;
pub use crate::backend::sampler;
pub mod scheduler;
pub mod score;
pub mod stats;
pub mod step;
pub mod stop;
mod worker;

pub use builder::EngineBuilder;
pub use engine::{CacheOptions, CacheStats, Engine, EngineOptions};
pub use generate::{GenerationOutput, Generator, SeqRequest};
pub use output::{FinishReason, GenerateOptions, SeqOutput};
pub use request::{Event, Finished, GenerateRequest, Prompt, Recv, RequestHandle};
pub use sampler::{Penalties, Sampler, SamplingParams, TokenLogprobs};
pub use score::{prompt_logprobs, score, score_with_adapter, ScoreOutput};
pub use stats::{EngineStats, Histogram};
