//! `tokenizer.json` (HF `tokenizers` format) and `tokenizer_config.json` from the GGUF
//! tokenizer metadata (`tokenizer.ggml.*`).
//!
//! Only byte-level BPE (`tokenizer.ggml.model` = "gpt2") is built: the vocabulary is the token
//! list (id = position), the merges are the "a b" strings in rank order, and the pre-tokenizer is
//! chosen from `tokenizer.ggml.pre` (llama.cpp's name for the HF pre-tokenizer). Control tokens
//! (token_type 3) become special added tokens, so `<|im_start|>` in a prompt is one token.

use serde_json::{json, Map, Value};

use super::reader::GgufFile;
use super::GgufError;

/// llama.cpp token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The pre-tokenizer splits of GPT-2 style models, verbatim from the HF tokenizer.json files.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values understood here.
const SUPPORTED_PRE: &str = "smollm, gpt2, default, qwen2, llama-bpe";

/// The special tokens both files need: (id, text) for bos/eos/pad/unk where the GGUF names them.
struct Specials {
    bos: Option<(u64, String)>,
    eos: Option<(u64, String)>,
    pad: Option<(u64, String)>,
    unk: Option<(u64, String)>,
}

fn tok_err(g: &GgufFile, msg: String) -> GgufError {
    GgufError::Tokenizer { path: g.path().to_path_buf(), msg }
}

fn specials(g: &GgufFile, tokens: &[&str]) -> Result<Specials, GgufError> {
    let get = |key: &str| -> Result<Option<(u64, String)>, GgufError> {
        let Some(id) = g.get_u64(key)? else { return Ok(None) };
        let text = tokens.get(id as usize).ok_or_else(|| tok_err(g, format!("{key} = {id} is outside the vocabulary of {} tokens", tokens.len())))?;
        Ok(Some((id, text.to_string())))
    };
    Ok(Specials {
        bos: get("tokenizer.ggml.bos_token_id")?,
        eos: get("tokenizer.ggml.eos_token_id")?,
        pad: get("tokenizer.ggml.padding_token_id")?,
        unk: get("tokenizer.ggml.unknown_token_id")?,
    })
}

/// Token list and types, checked for the "gpt2" model.
fn tokens_and_types(g: &GgufFile) -> Result<(Vec<&str>, Vec<i64>), GgufError> {
    let model = g.req_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(tok_err(g, format!("tokenizer model `{model}` is not supported (supported: gpt2, i.e. byte-level BPE)")));
    }
    let tokens = g.req_str_array("tokenizer.ggml.tokens")?;
    let types = g.get_i64_array("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(tok_err(g, format!("{} tokens but {} token types", tokens.len(), types.len())));
    }
    Ok((tokens, types))
}

/// The HF `added_tokens` entry of one token.
fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": use_regex,
    })
}

fn split_regex(pattern: &str) -> Value {
    json!({ "type": "Split", "pattern": { "Regex": pattern }, "behavior": "Isolated", "invert": false })
}

/// (normalizer, pre_tokenizer, ignore_merges) for a `tokenizer.ggml.pre` name.
fn pre_tokenizer(g: &GgufFile, pre: &str) -> Result<(Value, Value, bool), GgufError> {
    Ok(match pre {
        // SmolLM2: every digit is its own pre-token, then GPT-2's byte-level split.
        "smollm" => (
            Value::Null,
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Digits", "individual_digits": true },
                    byte_level(false, true, true),
                ]
            }),
            false,
        ),
        "gpt2" | "default" => (Value::Null, byte_level(false, true, true), false),
        "qwen2" => {
            (json!({ "type": "NFC" }), json!({ "type": "Sequence", "pretokenizers": [split_regex(QWEN2_REGEX), byte_level(false, false, false)] }), false)
        }
        "llama-bpe" => (Value::Null, json!({ "type": "Sequence", "pretokenizers": [split_regex(LLAMA3_REGEX), byte_level(false, true, false)] }), true),
        other => return Err(tok_err(g, format!("pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported (supported: {SUPPORTED_PRE})"))),
    })
}

/// Builds the HF `tokenizer.json` and checks that the `tokenizers` crate loads it.
pub fn build_tokenizer_json(g: &GgufFile) -> Result<Value, GgufError> {
    let (tokens, types) = tokens_and_types(g)?;
    let sp = specials(g, &tokens)?;
    let merges = g.req_str_array("tokenizer.ggml.merges")?;
    let pre = g.get_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let (normalizer, pre_tokenizer, ignore_merges) = pre_tokenizer(g, pre)?;

    // Vocabulary: token -> id. A repeated token keeps its first id (HF vocabularies are unique;
    // a later duplicate can only be reached as an added token).
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if !vocab.contains_key(tok) {
            vocab.insert(tok.to_string(), json!(id));
        }
        match ty {
            TOKEN_TYPE_CONTROL => added.push(added_token(id, tok, true)),
            TOKEN_TYPE_USER_DEFINED => added.push(added_token(id, tok, false)),
            _ => {}
        }
    }
    // Merges "a b" -> ["a", "b"]; byte-level tokens never contain a plain space.
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (a, b) = m.split_once(' ').ok_or_else(|| tok_err(g, format!("merge #{i} `{m}` is not of the form \"a b\"")))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<Vec<_>, GgufError>>()?;

    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let post_processor = match (&sp.bos, add_bos) {
        (Some((bos_id, bos)), true) => json!({
            "type": "TemplateProcessing",
            "single": [
                { "SpecialToken": { "id": bos, "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } }
            ],
            "pair": [
                { "SpecialToken": { "id": bos, "type_id": 0 } },
                { "Sequence": { "id": "A", "type_id": 0 } },
                { "SpecialToken": { "id": bos, "type_id": 1 } },
                { "Sequence": { "id": "B", "type_id": 1 } }
            ],
            "special_tokens": { bos.as_str(): { "id": bos, "ids": [bos_id], "tokens": [bos] } }
        }),
        // As in the HF files of these models: only fixes offsets, adds no token.
        _ => byte_level(true, false, true),
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": byte_level(true, true, true),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": sp.unk.as_ref().map(|u| u.1.clone()),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        }
    });

    // Self-check: the file must load in the crate the engine uses.
    let text = tokenizer.to_string();
    tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| tok_err(g, format!("built tokenizer.json does not load: {e}")))?;
    Ok(tokenizer)
}

/// Builds `tokenizer_config.json`: special tokens, chat template, no BOS added unless the GGUF
/// says so (`tokenizer.ggml.add_bos_token`).
pub fn build_tokenizer_config_json(g: &GgufFile) -> Result<Value, GgufError> {
    let (tokens, types) = tokens_and_types(g)?;
    let sp = specials(g, &tokens)?;
    let mut decoder = Map::new();
    for (id, (&tok, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            decoder.insert(
                id.to_string(),
                json!({
                    "content": tok,
                    "lstrip": false,
                    "normalized": false,
                    "rstrip": false,
                    "single_word": false,
                    "special": ty == TOKEN_TYPE_CONTROL,
                }),
            );
        }
    }
    let arch = g.req_str("general.architecture")?;
    let mut cfg = Map::new();
    cfg.insert("add_bos_token".into(), json!(g.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false)));
    cfg.insert("add_eos_token".into(), json!(g.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false)));
    cfg.insert("add_prefix_space".into(), json!(false));
    cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
    for (key, tok) in [("bos_token", &sp.bos), ("eos_token", &sp.eos), ("pad_token", &sp.pad), ("unk_token", &sp.unk)] {
        if let Some((_, text)) = tok {
            cfg.insert(key.into(), json!(text));
        }
    }
    if let Some(t) = g.get_str("tokenizer.chat_template")? {
        cfg.insert("chat_template".into(), json!(t));
    }
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    if let Some(n) = g.get_u64(&format!("{arch}.context_length"))? {
        cfg.insert("model_max_length".into(), json!(n));
    }
    // The fast tokenizer reads everything from tokenizer.json.
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Value::Object(cfg))
}
