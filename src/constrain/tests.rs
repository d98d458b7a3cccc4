//! The constraint machinery on a tiny byte-level tokenizer written here (the real model's
//! tokenizer is exercised in tests/serve/structured.rs): masks, completion, dead ends, errors.

use super::*;

/// A byte-level BPE tokenizer whose vocabulary is `<eos>` (id 0, special) and the given
/// single characters (ids 1..), written to a scratch folder.
fn tiny_tokenizer(chars: &str) -> (Arc<TextTokenizer>, Vec<char>) {
    let chars: Vec<char> = chars.chars().collect();
    let mut vocab = serde_json::Map::new();
    vocab.insert("<eos>".into(), 0.into());
    for (i, c) in chars.iter().enumerate() {
        // Byte-level BPE writes a space as 'Ġ'.
        let key = if *c == ' ' { 'Ġ'.to_string() } else { c.to_string() };
        vocab.insert(key, (i + 1).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lorafleet-constrain-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
    let t = TextTokenizer::from_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (Arc::new(t), chars)
}

fn id(chars: &[char], c: char) -> u32 {
    chars.iter().position(|&x| x == c).unwrap() as u32 + 1
}

fn allowed(s: &SeqConstraint) -> Vec<u32> {
    let m = s.mask().unwrap();
    (0..m.len() as u32).filter(|&t| m.allows(t)).collect()
}

#[test]
fn a_choice_allows_only_its_strings_then_completes() {
    let (tok, chars) = tiny_tokenizer("abcdxyz ");
    // A vocabulary wider than the tokenizer (padding rows): those ids are never allowed.
    let c = ConstraintCompiler::new(tok, chars.len() + 1 + 5, &[0]).unwrap();
    let mut s = c.compile(&Constraint::Choice(vec!["ab".into(), "ax".into(), "zz".into()])).unwrap();
    assert_eq!(allowed(&s), vec![id(&chars, 'a'), id(&chars, 'z')]);
    assert_eq!(s.commit(id(&chars, 'a')), &ConstraintState::Open);
    assert_eq!(allowed(&s), vec![id(&chars, 'b'), id(&chars, 'x')]);
    // "ax" is a whole choice and nothing can follow it.
    let st = s.commit(id(&chars, 'x')).clone();
    assert!(st == ConstraintState::Complete || allowed(&s) == vec![0], "after a whole choice: {st:?}");
    if st == ConstraintState::Open {
        assert_eq!(s.commit(0), &ConstraintState::Complete, "the end-of-sequence token completes it");
    }
    assert!(s.mask().is_none());
}

#[test]
fn a_regex_allows_the_end_where_it_may_end_and_every_eos_id_with_it() {
    let (tok, _) = tiny_tokenizer("ab");
    // Two end-of-sequence ids: 0 (the tokenizer's) and 3 (a padding id the model also treats as
    // an end, as a chat model's <|im_end|> beside <|endoftext|>).
    let c = ConstraintCompiler::new(tok, 4, &[0, 3]).unwrap();
    let mut s = c.compile(&Constraint::Regex("a+b?".into())).unwrap();
    assert_eq!(allowed(&s), vec![1], "must start with a");
    s.commit(1);
    assert_eq!(allowed(&s), vec![0, 1, 2, 3], "a, b, or the end (both end ids)");
    s.commit(2);
    let st = s.state().clone();
    assert!(st == ConstraintState::Complete || allowed(&s) == vec![0, 3], "{st:?}");
}

#[test]
fn a_token_outside_the_mask_is_a_dead_end_and_a_grammar_nothing_can_start_is_refused() {
    let (tok, chars) = tiny_tokenizer("ab");
    assert_eq!(chars.len(), 2);
    let c = ConstraintCompiler::new(tok, chars.len() + 1, &[0]).unwrap();
    let mut s = c.compile(&Constraint::Regex("ab".into())).unwrap();
    assert!(matches!(s.commit(2), ConstraintState::DeadEnd(_)), "b cannot start 'ab'");
    assert!(s.mask().is_none());
    // No token of this vocabulary can write a 'c'.
    let e = c.compile(&Constraint::Regex("c".into())).unwrap_err();
    assert!(matches!(&e, Error::InvalidRequest { field: "constraint", msg } if msg.contains("admits no output")), "{e}");
}

#[test]
fn bad_constraints_are_invalid_requests_naming_the_problem() {
    let (tok, chars) = tiny_tokenizer("ab{}\":, 0123456789");
    let c = ConstraintCompiler::new(tok, chars.len() + 1, &[0]).unwrap();
    for (bad, needle) in [
        (Constraint::JsonSchema(serde_json::json!({"type": "no-such-type"})), "JSON schema does not compile"),
        (Constraint::JsonSchema(serde_json::json!("object")), "must be an object"),
        (Constraint::Regex("(ab".into()), "regex does not compile"),
        (Constraint::Choice(vec![]), "choice list is empty"),
        (Constraint::Lark("start: undefined_rule\n".into()), "Lark grammar does not compile"),
    ] {
        match c.compile(&bad) {
            Err(Error::InvalidRequest { field: "constraint", msg }) => assert!(msg.contains(needle), "{bad:?}: {msg}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // A JSON object: '{' (possibly after whitespace) first.
    let s = c.compile(&Constraint::JsonObject).unwrap();
    let first = allowed(&s);
    assert!(first.contains(&id(&chars, '{')) && !first.contains(&id(&chars, 'a')) && !first.contains(&0), "{first:?}");
}

#[test]
fn a_model_without_an_end_token_or_with_a_narrower_vocabulary_is_refused() {
    let (tok, chars) = tiny_tokenizer("ab");
    assert!(ConstraintCompiler::new(tok.clone(), chars.len() + 1, &[]).is_err());
    assert!(ConstraintCompiler::new(tok, 1, &[0]).is_err());
}
