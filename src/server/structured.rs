//! Structured output in the peers' request shapes, read into one `Constraint`: OpenAI's
//! `response_format` (`json_object`, `json_schema`), LoRAX's (`{"type": "json_object",
//! "schema": ...}`, as lorax-client sends it), and vLLM's `guided_json`, `guided_regex`,
//! `guided_choice`, `guided_grammar` (Lark). At most one per request; a malformed one is a 422
//! naming its field, and one that does not compile is refused by the engine before anything is
//! queued.

use serde::Deserialize;
use serde_json::Value;

use super::common::ApiError;
use crate::constrain::Constraint;

/// vLLM's guided-decoding fields (completions and chat).
#[derive(Debug, Default, Deserialize)]
pub struct Guided {
    guided_json: Option<Value>,
    guided_regex: Option<String>,
    guided_choice: Option<Vec<String>>,
    guided_grammar: Option<String>,
}

/// The request's constraint from `response_format` (OpenAI or LoRAX shape) and vLLM's guided
/// fields; None when it asks for plain text.
pub fn constraint(response_format: Option<&Value>, guided: &Guided) -> Result<Option<Constraint>, ApiError> {
    let mut found: Vec<(&'static str, Constraint)> = Vec::new();
    if let Some(rf) = response_format.filter(|v| !v.is_null()) {
        if let Some(c) = from_response_format(rf)? {
            found.push(("response_format", c));
        }
    }
    if let Some(j) = guided.guided_json.as_ref().filter(|v| !v.is_null()) {
        // vLLM takes the schema as an object or as its JSON text.
        let schema = match j {
            Value::String(s) => serde_json::from_str(s).map_err(|e| ApiError::field("guided_json", format!("is not JSON: {e}")))?,
            v => v.clone(),
        };
        found.push(("guided_json", Constraint::JsonSchema(schema)));
    }
    if let Some(r) = &guided.guided_regex {
        found.push(("guided_regex", Constraint::Regex(r.clone())));
    }
    if let Some(c) = &guided.guided_choice {
        if c.is_empty() {
            return Err(ApiError::field("guided_choice", "must list at least one choice"));
        }
        found.push(("guided_choice", Constraint::Choice(c.clone())));
    }
    if let Some(g) = &guided.guided_grammar {
        found.push(("guided_grammar", Constraint::Lark(g.clone())));
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, c)| c)),
        _ => {
            let names: Vec<&str> = found.iter().map(|(n, _)| *n).collect();
            Err(ApiError::field(names[1], format!("only one structured-output field per request; this one has {}", names.join(", "))))
        }
    }
}

/// `{"type": "text"}`: none; `{"type": "json_object"}`: any JSON object, or (LoRAX) the
/// object's `schema`; `{"type": "json_schema", "json_schema": {"schema": ...}}` (OpenAI).
fn from_response_format(rf: &Value) -> Result<Option<Constraint>, ApiError> {
    let field = |m: &str| ApiError::field("response_format", m.to_string());
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => match rf.get("schema").filter(|s| !s.is_null()) {
            Some(s) => Ok(Some(Constraint::JsonSchema(s.clone()))),
            None => Ok(Some(Constraint::JsonObject)),
        },
        Some("json_schema") => {
            let js = rf.get("json_schema").ok_or_else(|| field("type json_schema needs a `json_schema` object"))?;
            let schema = js.get("schema").filter(|s| !s.is_null()).ok_or_else(|| field("`json_schema` needs a `schema`"))?;
            Ok(Some(Constraint::JsonSchema(schema.clone())))
        }
        Some(other) => Err(field(&format!("type {other:?} is not one of text, json_object, json_schema"))),
        None => Err(field("needs a `type` (text, json_object or json_schema)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guided(v: Value) -> Guided {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_shape_reads_to_its_constraint() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        let none = Guided::default();
        assert_eq!(constraint(Some(&json!({"type": "text"})), &none).unwrap(), None);
        assert_eq!(constraint(None, &none).unwrap(), None);
        assert_eq!(constraint(Some(&json!({"type": "json_object"})), &none).unwrap(), Some(Constraint::JsonObject));
        assert_eq!(constraint(Some(&json!({"type": "json_object", "schema": schema})), &none).unwrap(), Some(Constraint::JsonSchema(schema.clone())));
        let openai = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}});
        assert_eq!(constraint(Some(&openai), &none).unwrap(), Some(Constraint::JsonSchema(schema.clone())));
        assert_eq!(constraint(None, &guided(json!({"guided_json": schema}))).unwrap(), Some(Constraint::JsonSchema(schema.clone())));
        assert_eq!(constraint(None, &guided(json!({"guided_json": schema.to_string()}))).unwrap(), Some(Constraint::JsonSchema(schema)));
        assert_eq!(constraint(None, &guided(json!({"guided_regex": "a+"}))).unwrap(), Some(Constraint::Regex("a+".into())));
        assert_eq!(constraint(None, &guided(json!({"guided_choice": ["x", "y"]}))).unwrap(), Some(Constraint::Choice(vec!["x".into(), "y".into()])));
        assert_eq!(constraint(None, &guided(json!({"guided_grammar": "start: \"a\""}))).unwrap(), Some(Constraint::Lark("start: \"a\"".into())));
    }

    #[test]
    fn malformed_or_several_are_refused_naming_the_field() {
        let none = Guided::default();
        for (rf, needle) in [
            (json!({"type": "xml"}), "not one of"),
            (json!({}), "needs a `type`"),
            (json!({"type": "json_schema"}), "needs a `json_schema`"),
            (json!({"type": "json_schema", "json_schema": {"name": "x"}}), "needs a `schema`"),
        ] {
            let e = constraint(Some(&rf), &none).unwrap_err();
            assert!(e.message.contains("response_format") && e.message.contains(needle), "{rf}: {}", e.message);
        }
        let e = constraint(None, &guided(json!({"guided_json": "{not json"}))).unwrap_err();
        assert!(e.message.contains("guided_json"), "{}", e.message);
        let e = constraint(None, &guided(json!({"guided_choice": []}))).unwrap_err();
        assert!(e.message.contains("guided_choice"), "{}", e.message);
        let e = constraint(Some(&json!({"type": "json_object"})), &guided(json!({"guided_regex": "a"}))).unwrap_err();
        assert!(e.message.contains("only one structured-output field"), "{}", e.message);
    }
}
