//! The JSON Schema of [`AppConfig`], derived from the Rust types, and validation of a document
//! against it with every violation turned into a positioned [`Diagnostic`].

use std::sync::LazyLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::diagnostics::{Diagnostic, KeyPath};
use super::model::AppConfig;
use super::yaml::SourceMap;

/// The JSON Schema of the whole configuration file, as committed to
/// `schemas/app-config.schema.json`.
pub fn app_config_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<AppConfig>().to_value()
}

static SCHEMA: LazyLock<Value> = LazyLock::new(app_config_schema);
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    jsonschema::validator_for(&SCHEMA).expect("the generated config schema is a valid JSON Schema")
});

/// What the schema found wrong with a document.
#[derive(Debug, Default)]
pub struct Report {
    /// One diagnostic per violation.
    pub diagnostics: Vec<Diagnostic>,
    /// JSON pointers of keys the schema does not allow. Removing them leaves the rest usable.
    pub unknown_keys: Vec<String>,
    /// JSON pointers of values that violate the schema: their sections are not trusted.
    pub invalid: Vec<String>,
}

/// Validates `doc` against the schema.
pub fn validate(doc: &Value, map: &SourceMap) -> Report {
    let mut report = Report::default();
    for err in VALIDATOR.iter_errors(doc) {
        push_error(&err, doc, map, &mut report);
    }
    report
}

fn push_error(err: &ValidationError<'_>, doc: &Value, map: &SourceMap, report: &mut Report) {
    let pointer = err.instance_path().as_str();
    let path = KeyPath::from_pointer(pointer, doc);
    let value_pos = map.value_pos(pointer);
    let secret = map.is_secret(pointer);
    if let ValidationErrorKind::AdditionalProperties { unexpected } = err.kind() {
        let allowed = allowed_keys(err.schema_path().as_str());
        for key in unexpected {
            let child = format!("{pointer}/{}", super::yaml::escape_pointer(key));
            report.diagnostics.push(Diagnostic::error(
                map.key_pos(&child),
                path.clone().key(key),
                unknown_key_message(key, &allowed),
            ));
            report.unknown_keys.push(child);
        }
        return;
    }
    report.invalid.push(pointer.to_owned());
    let diagnostic = match err.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            Diagnostic::error(value_pos, path.key(name), "required key is missing")
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // `Option<T>` fields are `anyOf [T, null]`; report why the value fails `T` rather
            // than "not valid under any of the schemas".
            let branches: Vec<_> = context
                .iter()
                .filter(|errs| !(errs.len() == 1 && expects_only_null(&errs[0])))
                .collect();
            if let [only] = branches.as_slice() {
                for e in only.iter() {
                    push_error(e, doc, map, report);
                }
                return;
            }
            Diagnostic::error(value_pos, path, masked(err, secret))
        }
        kind => {
            let message = hint(pointer, err.instance(), kind).unwrap_or_else(|| {
                describe(kind, err.instance(), secret).unwrap_or_else(|| masked(err, secret))
            });
            Diagnostic::error(value_pos, path, message)
        }
    };
    report.diagnostics.push(diagnostic);
}

fn expects_only_null(err: &ValidationError<'_>) -> bool {
    matches!(err.kind(), ValidationErrorKind::Type { kind: TypeKind::Single(t) } if t.to_string() == "null")
}

fn masked(err: &ValidationError<'_>, secret: bool) -> String {
    if secret {
        err.masked_with("the value from the environment")
            .to_string()
    } else {
        err.to_string()
    }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn type_word(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "integer" => "an integer".into(),
        "boolean" => "a boolean".into(),
        "null" => "null".into(),
        other => format!("a {other}"),
    }
}

/// Messages a person reads, for the violations our schema can produce.
fn describe(kind: &ValidationErrorKind, instance: &Value, secret: bool) -> Option<String> {
    Some(match kind {
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_word(&t.to_string()),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| type_word(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            let mut m = format!("expected {expected}, found {}", json_type_name(instance));
            if expected == "a boolean"
                && let Some(word) = instance.as_str()
                && matches!(
                    word.to_ascii_lowercase().as_str(),
                    "yes" | "no" | "on" | "off" | "y" | "n"
                )
            {
                m.push_str(&format!(
                    " (YAML 1.2 reads `{word}` as text: write `true` or `false`)"
                ));
            }
            m
        }
        ValidationErrorKind::Enum { options } => {
            let opts = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            if secret {
                format!("must be one of {opts}")
            } else {
                format!("{instance} is not one of {opts}")
            }
        }
        ValidationErrorKind::Minimum { limit } => format!("must be at least {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("must be at most {limit}"),
        ValidationErrorKind::MinLength { limit: 1 } => "must not be empty".into(),
        ValidationErrorKind::MinItems { limit: 1 } => "must list at least one entry".into(),
        ValidationErrorKind::Pattern { pattern } => {
            if secret {
                format!("the value from the environment does not match `{pattern}`")
            } else {
                format!("{instance} does not match `{pattern}`")
            }
        }
        _ => return None,
    })
}

/// Advice for mistakes the seed documentation calls out.
fn hint(pointer: &str, instance: &Value, kind: &ValidationErrorKind) -> Option<String> {
    if !matches!(kind, ValidationErrorKind::Enum { .. }) {
        return None;
    }
    let value = instance.as_str()?;
    let parts: Vec<&str> = pointer.split('/').collect();
    let [_, "mcp", "configurations", _, which, "kind"] = parts.as_slice() else {
        return None;
    };
    match (*which, value) {
        ("store" | "bus", "redis" | "nats" | "consul" | "etcd") => Some(format!(
            "`{value}` is not a per-capability {which} kind; set `cluster.kind: {value}` and leave this capability inherited (`kind: cluster`, or omit it)"
        )),
        ("bus", "file") => Some(
            "`file` is a store kind, not a bus kind; a bus is `cluster` (the default) or `memory`"
                .into(),
        ),
        _ => None,
    }
}

/// The property names the schema allows at the object whose `additionalProperties` failed.
fn allowed_keys(schema_path: &str) -> Vec<String> {
    let parent = schema_path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    SCHEMA
        .pointer(parent)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

fn unknown_key_message(key: &str, allowed: &[String]) -> String {
    let mut msg = String::from("unknown key");
    if let Some(best) = allowed
        .iter()
        .map(|a| (edit_distance(key, a), a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min()
    {
        msg.push_str(&format!("; did you mean `{}`?", best.1));
    }
    if !allowed.is_empty() {
        msg.push_str(&format!(" (allowed here: {})", allowed.join(", ")));
    }
    msg
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_closest_key() {
        let allowed = vec!["listen".to_string(), "admin_listen".to_string()];
        assert_eq!(
            unknown_key_message("lisen", &allowed),
            "unknown key; did you mean `listen`? (allowed here: listen, admin_listen)"
        );
        assert_eq!(
            unknown_key_message("zzzzzz", &allowed),
            "unknown key (allowed here: listen, admin_listen)"
        );
    }

    #[test]
    fn the_schema_compiles_and_rejects_unknown_top_level_keys() {
        let doc = serde_json::json!({"sever": {}});
        assert!(!VALIDATOR.is_valid(&doc));
        assert!(VALIDATOR.is_valid(&serde_json::json!({})));
    }
}
