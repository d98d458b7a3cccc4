//! `lorafleet eval`: greedy generation for every example, scored with a task metric.
//!
//! Examples run in batches through the batched generator (one ragged prefill for the batch,
//! then a decode step per token), so a 1000-example classification set costs about
//! 1000 / batch prefills of short prompts plus a few decode steps each.

pub mod metrics;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::progress::Bar;
use serde::Serialize;

pub use metrics::Metric;

use crate::backend::Backend;
use crate::constrain::Constraint;
use crate::data::Example;
use crate::engine::{GenerateOptions, Generator, SamplingParams, SeqRequest};
use crate::{Error, Result};

/// How `evaluate` runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The metric.
    pub metric: Metric,
    /// Generation stops at EOS or after this many tokens.
    pub max_new_tokens: usize,
    /// Prompts per generator call.
    pub batch_size: usize,
    /// The LoRA adapter to evaluate (None: the base model).
    pub adapter: Option<String>,
    /// Hold every output to the set's labels (its distinct targets, at most
    /// `MAX_CONSTRAINED_LABELS`): structured output's choice list, for classification tasks.
    pub constrain_labels: bool,
}

/// The most distinct labels `EvalOptions::constrain_labels` takes (more is not a label set).
pub const MAX_CONSTRAINED_LABELS: usize = 256;

/// One scored example (a line of `--out`).
#[derive(Debug, Clone, Serialize)]
pub struct ExampleResult {
    /// The example's index.
    pub id: usize,
    /// Line of the data file.
    pub line: usize,
    /// The generated text.
    pub output: String,
    /// The label.
    pub label: String,
    /// Its score under the metric.
    pub score: f64,
    /// Set when the example could not run (e.g. its prompt is longer than the context); it
    /// scores 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An eval's totals.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    /// The metric's name.
    pub metric: &'static str,
    /// Examples scored.
    pub examples: usize,
    /// Mean score over all examples (failed ones count 0).
    pub score: f64,
    /// Examples whose generation failed (scored 0).
    pub failed: usize,
    /// Prompt tokens in all.
    pub prompt_tokens: usize,
    /// Generated tokens in all.
    pub generated_tokens: usize,
    /// Wall time.
    pub seconds: f64,
}

/// The target text without a trailing end-of-sequence marker (a `{"completion": "x<|im_end|>"}`
/// target is compared as "x": generation stops at the EOS token and does not return it).
fn target_text<'a>(ex: &'a Example, eos: Option<&str>) -> &'a str {
    match eos {
        Some(e) if !e.is_empty() => ex.target.strip_suffix(e).unwrap_or(&ex.target),
        _ => &ex.target,
    }
}

/// Generates greedily for each example and scores it. `on_result` sees every result in example
/// order (to stream them to a file); `progress` advances per example and shows the running score.
pub fn evaluate<B: Backend>(
    gen: &Generator<'_, B>,
    examples: &[Example],
    opts: &EvalOptions,
    progress: &Bar,
    mut on_result: impl FnMut(&ExampleResult) -> Result<()>,
) -> Result<EvalSummary> {
    if opts.adapter.as_deref() != gen.adapter.map(|a| a.id.as_str()) {
        // The generator runs the adapter; the option only names it. They must agree, or the
        // report would name one model and score another.
        return Err(Error::InvalidArgument(format!("eval: options name adapter {:?} but the generator runs {:?}", opts.adapter, gen.adapter.map(|a| &a.id))));
    }
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument("--batch-size must be at least 1".into()));
    }
    if opts.max_new_tokens == 0 {
        return Err(Error::InvalidArgument("--max-new-tokens must be at least 1".into()));
    }
    let t0 = Instant::now();
    let tok = gen.tokenizer;
    let eos = tok.eos_token().map(str::to_string);
    let constraint = match opts.constrain_labels {
        true => {
            let mut labels: Vec<String> = examples.iter().map(|ex| target_text(ex, eos.as_deref()).to_string()).collect();
            labels.sort();
            labels.dedup();
            if labels.len() > MAX_CONSTRAINED_LABELS {
                return Err(Error::InvalidArgument(format!(
                    "option `constrain_labels`: the set has {} distinct labels; a label set (a classification task) has at most {MAX_CONSTRAINED_LABELS}",
                    labels.len()
                )));
            }
            Some(Constraint::Choice(labels))
        }
        false => None,
    };
    let options = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: false,
        logprobs: None,
        prompt_logprobs: false,
        constraint,
    };
    let (mut total, mut failed, mut prompt_tokens, mut generated_tokens) = (0.0f64, 0usize, 0usize, 0usize);
    let mut done = 0usize;
    for chunk in examples.chunks(opts.batch_size) {
        // Tokenize and validate each prompt; one that cannot run fails alone.
        let mut results: Vec<Option<ExampleResult>> = vec![None; chunk.len()];
        let mut reqs: Vec<SeqRequest> = Vec::new();
        let mut req_of: Vec<usize> = Vec::new();
        for (k, ex) in chunk.iter().enumerate() {
            let label = target_text(ex, eos.as_deref()).to_string();
            let prepared = tok.encode(&ex.prompt).and_then(|ids| {
                let r = SeqRequest { prompt_ids: ids, options: options.clone() };
                gen.validate(&r).map(|()| r)
            });
            match prepared {
                Ok(r) => {
                    prompt_tokens += r.prompt_ids.len();
                    reqs.push(r);
                    req_of.push(k);
                }
                Err(e) => results[k] = Some(ExampleResult { id: ex.id, line: ex.line, output: String::new(), label, score: 0.0, error: Some(e.to_string()) }),
            }
        }
        let outs = if reqs.is_empty() { vec![] } else { gen.generate(&reqs, |_, _| {})? };
        for (k, out) in req_of.into_iter().zip(outs) {
            let ex = &chunk[k];
            let label = target_text(ex, eos.as_deref()).to_string();
            results[k] = Some(match out {
                Ok(o) => {
                    generated_tokens += o.token_ids.len();
                    let score = opts.metric.score(&o.text, &label);
                    ExampleResult { id: ex.id, line: ex.line, output: o.text, label, score, error: None }
                }
                Err(e) => ExampleResult { id: ex.id, line: ex.line, output: String::new(), label, score: 0.0, error: Some(e.to_string()) },
            });
        }
        for r in results.into_iter().flatten() {
            total += r.score;
            failed += usize::from(r.error.is_some());
            done += 1;
            on_result(&r)?;
        }
        progress.set_position(done as u64);
        progress.set_message(format!("{} {:.4}", opts.metric, total / done as f64));
    }
    progress.finish_and_clear();
    Ok(EvalSummary {
        metric: opts.metric.name(),
        examples: examples.len(),
        score: if examples.is_empty() { 0.0 } else { total / examples.len() as f64 },
        failed,
        prompt_tokens,
        generated_tokens,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// `evaluate`, writing each result as a JSON line to `out` when given.
pub fn evaluate_to_file<B: Backend>(
    gen: &Generator<'_, B>,
    examples: &[Example],
    opts: &EvalOptions,
    progress: &Bar,
    out: Option<&Path>,
) -> Result<EvalSummary> {
    let mut writer = match out {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            Some((p, std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| Error::io(p, e))?)))
        }
        None => None,
    };
    let summary = evaluate(gen, examples, opts, progress, |r| {
        if let Some((p, w)) = writer.as_mut() {
            let line = serde_json::to_string(r).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            writeln!(w, "{line}").map_err(|e| Error::io(*p, e))?;
        }
        Ok(())
    })?;
    if let Some((p, mut w)) = writer {
        w.flush().map_err(|e| Error::io(p, e))?;
    }
    Ok(summary)
}

/// What to evaluate: examples and the metric, from a harness task folder or a data file.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// The task's name or the data file's path.
    pub name: String,
    /// The examples.
    pub examples: Vec<Example>,
    /// Their metric.
    pub metric: Metric,
}

impl EvalSet {
    /// From `task` (its metadata names data, template, target and metric) or `data` (JSONL or
    /// CSV; `template` and `target_col` as in `data::load_examples`, metric default
    /// `prefix_accuracy`). `metric` overrides the task's. At most `limit` examples, from the start.
    pub fn load(
        task: Option<&Path>,
        data: Option<&Path>,
        template: Option<&str>,
        target_col: &str,
        metric: Option<Metric>,
        limit: Option<usize>,
    ) -> Result<EvalSet> {
        let mut set = match (task, data) {
            (Some(dir), None) => {
                if template.is_some() {
                    return Err(Error::InvalidArgument("--prompt-template goes with --data; a task has its own".into()));
                }
                let t = crate::data::load_task(dir)?;
                let metric = match metric {
                    Some(m) => m,
                    None => t
                        .meta
                        .metric_name
                        .parse()
                        .map_err(|e| Error::InvalidArgument(format!("{}: metric_name: {e} (override with --metric)", dir.display())))?,
                };
                EvalSet { name: t.meta.name, examples: t.examples, metric }
            }
            (None, Some(file)) => EvalSet {
                name: file.display().to_string(),
                examples: crate::data::load_examples(file, template, target_col)?,
                metric: metric.unwrap_or(Metric::PrefixAccuracy),
            },
            _ => return Err(Error::InvalidArgument("give exactly one of --task DIR and --data FILE".into())),
        };
        if let Some(n) = limit {
            set.examples.truncate(n);
        }
        Ok(set)
    }
}
