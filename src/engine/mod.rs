//! Generation on top of the model: sampling, stop conditions, batched generation and scoring.
//! (The continuous-batching engine thread and the scheduler come with the engine issue.)

pub mod generate;
pub mod sampler;
pub mod score;
pub mod stop;

pub use generate::{FinishReason, GenerateOptions, GenerationOutput, Generator, SeqRequest};
pub use sampler::{Sampler, SamplingParams};
pub use score::{score, score_with_adapter, ScoreOutput};
