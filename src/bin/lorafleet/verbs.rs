//! The verbs that run the model once: `generate`, `score`, `eval`, `fetch-data`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use lorafleet::backend::device::{open_backend, OpenedBackend};
use lorafleet::backend::Backend;
use lorafleet::engine::{GenerateOptions, Generator, SamplingParams, SeqRequest};
use lorafleet::lora::{AdapterCache, CacheOptions, LoadedAdapter};
use lorafleet::tokenizer::ChatMessage;
use lorafleet::{Error, Result, TextTokenizer};

use super::args::*;
use super::runtime::{check_model_args, load, Loaded};

pub(crate) fn fetch_data(a: FetchDataArgs) -> Result<()> {
    use lorafleet::data::rotten_tomatoes as rt;
    if a.name != rt::NAME {
        return Err(Error::InvalidArgument(format!("unknown data set `{}`; known: {}", a.name, rt::NAME)));
    }
    let report = rt::fetch_rotten_tomatoes(&a.out.unwrap_or_else(rt::default_data_dir), a.force)?;
    println!("{}", report.dir.display());
    Ok(())
}

pub(crate) fn eval(a: EvalArgs) -> Result<()> {
    use lorafleet::eval::{EvalOptions, EvalSet, Metric};
    let metric = a.metric.as_deref().map(str::parse::<Metric>).transpose()?;
    let set = EvalSet::load(a.task.as_deref(), a.data.as_deref(), a.prompt_template.as_deref(), &a.target_col, metric, a.limit)?;
    let opts = EvalOptions {
        metric: set.metric,
        max_new_tokens: a.max_new_tokens,
        batch_size: a.batch_size,
        adapter: a.adapter.clone(),
        constrain_labels: a.constrain_labels,
    };
    on_device!(&a.model, |l| eval_on(&a, &set, &opts, l))
}

pub(crate) fn eval_on<B: Backend>(a: &EvalArgs, set: &lorafleet::eval::EvalSet, opts: &lorafleet::eval::EvalOptions, l: Loaded<B>) -> Result<()> {
    use lorafleet::eval::evaluate_to_file;
    let lora = AdapterArgs { adapter: opts.adapter.clone(), adapter_dir: a.adapter_dir.clone(), max_lora_rank: 128 };
    let adapter = load_adapters(&l, &lora, std::slice::from_ref(&lora.adapter))?.pop().transpose()?.flatten();
    let g = Generator::new(&l.model, &*l.be, &l.tok).with_adapter(adapter.as_deref());
    let bar = lorafleet::progress::bar(std::io::stderr().is_terminal(), set.examples.len() as u64, "eval");
    eprintln!("eval: {} examples of {}, metric {}, up to {} new tokens", set.examples.len(), set.name, set.metric, a.max_new_tokens);
    let s = evaluate_to_file(&g, &set.examples, opts, &bar, a.out.as_deref())?;
    println!(
        "{}: {:.4} on {} examples ({} failed) in {:.1} s ({:.1} prompt tok/s)",
        s.metric,
        s.score,
        s.examples,
        s.failed,
        s.seconds,
        s.prompt_tokens as f64 / s.seconds.max(1e-9)
    );
    if let Some(p) = &a.out {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

pub(crate) fn prompt_text(tok: &TextTokenizer, text: &str, chat: bool) -> Result<String> {
    if chat {
        tok.apply_chat_template(&[ChatMessage { role: "user".into(), content: text.to_string() }], true)
    } else {
        Ok(text.to_string())
    }
}

/// One prompt of a prompts file: its text and, optionally, its adapter.
pub(crate) fn read_prompts_file(path: &Path) -> Result<Vec<(String, Option<String>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::BadRequest(format!("{}:{}: not JSON: {e}", path.display(), n + 1)))?;
        let p =
            v.get("prompt").and_then(|p| p.as_str()).ok_or_else(|| Error::BadRequest(format!("{}:{}: no string field \"prompt\"", path.display(), n + 1)))?;
        let adapter = match v.get("adapter") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Error::BadRequest(format!("{}:{}: \"adapter\" must be a string", path.display(), n + 1))),
        };
        out.push((p.to_string(), adapter));
    }
    Ok(out)
}

/// Loads the adapters `ids` name (each once), through the adapter cache; a bad `--adapter-dir`
/// fails the command before anything runs.
#[allow(clippy::type_complexity)]
pub(crate) fn load_adapters<B: Backend>(l: &Loaded<B>, a: &AdapterArgs, ids: &[Option<String>]) -> Result<Vec<Result<Option<Arc<LoadedAdapter<B>>>>>> {
    let opts = CacheOptions {
        adapter_dir: a.adapter_dir.clone(),
        max_host_adapters: 0,
        device_budget_bytes: usize::MAX,
        max_rank: a.max_lora_rank,
        allow_paths: true,
        synthetic: None,
    };
    opts.check().map_err(|e| Error::InvalidArgument(format!("--adapter-dir: {e}")))?;
    let mut cache = AdapterCache::new(l.be.clone(), l.model.config.clone(), opts);
    Ok(ids.iter().map(|id| id.as_deref().map(|id| cache.get_blocking(id)).transpose()).collect())
}

pub(crate) fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',').map(|t| t.trim().parse::<u32>().map_err(|e| Error::InvalidArgument(format!("--prompt-ids: {t:?}: {e}")))).collect()
}

pub(crate) fn generate(a: GenerateArgs) -> Result<()> {
    on_device!(&a.model, |l| generate_on(&a, l))
}

pub(crate) fn generate_on<B: Backend>(a: &GenerateArgs, l: Loaded<B>) -> Result<()> {
    let mut texts: Vec<Option<String>> = a.prompt.iter().cloned().map(Some).collect();
    let mut adapter_ids: Vec<Option<String>> = vec![a.lora.adapter.clone(); texts.len()];
    if let Some(f) = &a.prompts_file {
        for (t, ad) in read_prompts_file(f)? {
            texts.push(Some(t));
            adapter_ids.push(ad.or_else(|| a.lora.adapter.clone()));
        }
    }
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for t in texts.iter().flatten() {
        prompts.push(l.tok.encode(&prompt_text(&l.tok, t, a.chat)?)?);
    }
    if let Some(ids) = &a.prompt_ids {
        prompts.push(parse_ids(ids)?);
        texts.push(None);
        adapter_ids.push(a.lora.adapter.clone());
    }
    if prompts.is_empty() {
        return Err(Error::InvalidArgument("no prompt: give --prompt, --prompts-file or --prompt-ids".into()));
    }
    let options = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed, penalties: Default::default() },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        logprobs: None,
        prompt_logprobs: false,
        constraint: constraint_of(a)?,
    };
    // A prompt whose adapter cannot be loaded fails alone; the others run as one batch.
    let adapters = load_adapters(&l, &a.lora, &adapter_ids)?;
    let runnable: Vec<usize> = (0..prompts.len()).filter(|&i| adapters[i].is_ok()).collect();
    let reqs: Vec<SeqRequest> = runnable.iter().map(|&i| SeqRequest { prompt_ids: prompts[i].clone(), options: options.clone() }).collect();
    let run_adapters: Vec<Option<&LoadedAdapter<B>>> = runnable.iter().map(|&i| adapters[i].as_ref().ok().and_then(|a| a.as_deref())).collect();
    let g = Generator::new(&l.model, &*l.be, &l.tok).with_kv_cache_bytes(a.kv_cache_bytes);
    let stream = !a.json && prompts.len() == 1;
    let mut stdout = std::io::stdout().lock();
    let mut ran = if reqs.is_empty() {
        Vec::new()
    } else {
        g.generate_with_adapters(&reqs, &run_adapters, |_, delta| {
            if stream {
                let _ = write!(stdout, "{delta}");
                let _ = stdout.flush();
            }
        })?
    }
    .into_iter();
    let outs: Vec<Result<lorafleet::engine::GenerationOutput>> = adapters
        .into_iter()
        .map(|ad| match ad {
            Err(e) => Err(e),
            Ok(_) => ran.next().unwrap_or_else(|| Err(Error::InvalidArgument("missing output".into()))),
        })
        .collect();
    if stream {
        let _ = writeln!(stdout);
    }
    let mut failed = 0;
    for (i, o) in outs.iter().enumerate() {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                failed += 1;
                if a.json {
                    let _ = writeln!(stdout, "{}", serde_json::json!({ "error": e.to_string() }));
                }
                eprintln!("error: prompt {i}: {e}");
                continue;
            }
        };
        if a.json {
            let mut v = serde_json::to_value(o).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            if let (Some(obj), Some(Some(t))) = (v.as_object_mut(), texts.get(i)) {
                obj.insert("prompt".into(), serde_json::Value::String(t.clone()));
            }
            let _ = writeln!(stdout, "{v}");
        } else if !stream {
            let _ = writeln!(stdout, "=== prompt {i}\n{}", o.text);
        }
    }
    if !a.json {
        if let Some(Ok(o)) = outs.first() {
            eprintln!(
                "[{}: prefill {:.1} ms ({:.1} tok/s), decode {:.1} tok/s per sequence, {} sequences]",
                l.be.name(),
                o.prefill_ms,
                o.prefill_tokens_per_s,
                o.decode_tokens_per_s,
                outs.len()
            );
        }
    }
    if failed > 0 {
        return Err(Error::BadRequest(format!("{failed} of {} prompts failed", outs.len())));
    }
    Ok(())
}

pub(crate) fn score(a: ScoreArgs) -> Result<()> {
    on_device!(&a.model, |l| score_on(&a, l))
}

pub(crate) fn score_on<B: Backend>(a: &ScoreArgs, l: Loaded<B>) -> Result<()> {
    let ids = l.tok.encode(&prompt_text(&l.tok, &a.prompt, a.chat)?)?;
    let adapter = load_adapters(&l, &a.lora, std::slice::from_ref(&a.lora.adapter))?.pop().transpose()?.flatten();
    let s = lorafleet::engine::score_with_adapter(&l.model, &*l.be, &ids, adapter.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string(&s).map_err(|e| Error::InvalidArgument(e.to_string()))?);
    } else {
        println!("tokens: {}", ids.len());
        match s.perplexity {
            Some(p) => println!("perplexity: {p:.4}"),
            None => println!("perplexity: n/a (one token)"),
        }
        println!("next-token top 5:");
        for (id, logit) in s.top_logits.iter().take(5) {
            let text = l.tok.decode(&[*id], false)?;
            println!("  {id:>6} {logit:>9.4}  {text:?}");
        }
    }
    Ok(())
}

/// `generate`'s structured-output flags as one constraint (at most one of them).
fn constraint_of(a: &GenerateArgs) -> Result<Option<lorafleet::constrain::Constraint>> {
    use lorafleet::constrain::Constraint;
    let read = |flag: &str, p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| Error::InvalidArgument(format!("{flag} {}: {e}", p.display())));
    let mut found: Vec<(&str, Constraint)> = Vec::new();
    if let Some(p) = &a.json_schema {
        let v =
            serde_json::from_str(&read("--json-schema", p)?).map_err(|e| Error::InvalidArgument(format!("--json-schema {}: not JSON: {e}", p.display())))?;
        found.push(("--json-schema", Constraint::JsonSchema(v)));
    }
    if let Some(r) = &a.regex {
        found.push(("--regex", Constraint::Regex(r.clone())));
    }
    if !a.choice.is_empty() {
        found.push(("--choice", Constraint::Choice(a.choice.clone())));
    }
    if let Some(p) = &a.grammar {
        found.push(("--grammar", Constraint::Lark(read("--grammar", p)?)));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
        return Err(Error::InvalidArgument(format!("give one of {} (structured output takes one constraint)", names.join(", "))));
    }
    Ok(found.pop().map(|(_, c)| c))
}
