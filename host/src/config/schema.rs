//! The JSON Schema of [`AppConfig`], derived from the Rust types, and validation of a document
//! against it with every violation turned into a positioned [`Diagnostic`].

use std::sync::LazyLock;

use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use mcpg_plugin_api::schema_check::violations;
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
    /// JSON pointers of values that violate the schema: later phases do not trust them.
    pub invalid: Vec<String>,
}

/// Validates `doc` against the schema.
pub fn validate(doc: &Value, map: &SourceMap) -> Report {
    let mut report = Report::default();
    let secret = |p: &str| map.is_secret(p);
    let hint = |p: &str, instance: &Value, kind: &ValidationErrorKind| {
        hint(p, instance, kind, map.is_secret(p))
    };
    for mut v in violations(&VALIDATOR, &SCHEMA, doc, &secret, &hint) {
        let path = KeyPath::from_pointer(&v.pointer, doc);
        if v.unknown_key {
            if let Some(below) = belongs_below(&v.pointer) {
                v.message =
                    v.message
                        .replacen("unknown key", &format!("unknown key here: {below}"), 1);
            }
            report
                .diagnostics
                .push(Diagnostic::error(map.key_pos(&v.pointer), path, v.message));
            report.unknown_keys.push(v.pointer);
        } else {
            // A missing key is reported where its object is.
            report.diagnostics.push(Diagnostic::error(
                map.value_pos(&v.instance_pointer),
                path,
                v.message,
            ));
            report.invalid.push(v.instance_pointer);
        }
    }
    report
}

/// Where an unknown key belongs when it is a key of one of its siblings' blocks: `mode` at an
/// upstream belongs in `stdio` (`stdio.mode`). Looks one level down, as the mistake is a key
/// written at its parent's indentation.
fn belongs_below(pointer: &str) -> Option<String> {
    let (parent, key) = pointer.rsplit_once('/')?;
    let key = key.replace("~1", "/").replace("~0", "~");
    let node = schema_at(&SCHEMA, parent)?;
    let homes: Vec<String> = node
        .get("properties")?
        .as_object()?
        .iter()
        .filter(|(_, child)| {
            object_schema(&SCHEMA, child)
                .and_then(|c| c.get("properties"))
                .and_then(Value::as_object)
                .is_some_and(|props| props.contains_key(&key))
        })
        .map(|(name, _)| format!("`{name}.{key}`"))
        .collect();
    match homes.as_slice() {
        [] => None,
        [one] => Some(format!("`{key}` belongs one level down, at {one}")),
        many => Some(format!(
            "`{key}` belongs one level down, at {}",
            many.join(" or ")
        )),
    }
}

/// The object schema a value at instance `pointer` is checked against, following `$ref`s,
/// optional (`anyOf [T, null]`) values, list items and map values.
fn schema_at<'s>(root: &'s Value, pointer: &str) -> Option<&'s Value> {
    let mut node = object_schema(root, root)?;
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let next = if let Some(child) = node.get("properties").and_then(|p| p.get(&seg)) {
            child
        } else if let Some(items) = node.get("items") {
            items
        } else {
            node.get("additionalProperties").filter(|a| a.is_object())?
        };
        node = object_schema(root, next)?;
    }
    Some(node)
}

/// `node` with `$ref` resolved and the non-null branch of an `anyOf`/`oneOf` taken.
fn object_schema<'s>(root: &'s Value, mut node: &'s Value) -> Option<&'s Value> {
    for _ in 0..16 {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            node = root.pointer(r.strip_prefix('#')?)?;
        } else if let Some(branches) = node
            .get("anyOf")
            .or_else(|| node.get("oneOf"))
            .and_then(Value::as_array)
        {
            node = branches
                .iter()
                .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))?;
        } else {
            return Some(node);
        }
    }
    None
}

/// Human wording for the schema's patterns: what the value must look like, not the regex.
fn pattern_hint(pointer: &str, instance: &Value, secret: bool) -> Option<String> {
    let value = instance.as_str()?;
    let key = pointer.rsplit('/').next()?;
    let parent = pointer.rsplit('/').nth(1).unwrap_or_default();
    Some(match key {
        "path" => {
            if secret || value.is_empty() {
                "must start with `/`, for example `/mcp`".to_owned()
            } else {
                format!("must start with `/`: write `/{value}`")
            }
        }
        "kind" => {
            let lower = value.to_ascii_lowercase();
            let mut m = "must be a lowercase name of letters, digits and `_`, such as `redis`".to_owned();
            if !secret && lower != value && lower.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                m.push_str(&format!("; did you mean `{lower}`?"));
            }
            m
        }
        "separator" => "may contain only letters, digits, `_`, `.` and `-`".to_owned(),
        "id" => "must be a dotted lowercase id of letters, digits, `_` and `-`, such as `dev.mcpg.cluster.redis`".to_owned(),
        "name" if parent.chars().all(|c| c.is_ascii_digit()) && pointer.contains("/tokens/") => {
            "must start with a letter or digit and contain only letters, digits, `_`, `.`, `@` and `-`".to_owned()
        }
        "name" if pointer.contains("/rate_limits/") => {
            "must start with a letter or digit and contain only letters, digits, `_`, `.` and `-`, such as `per-caller`".to_owned()
        }
        "name" => "must start with a letter or digit and contain only letters, digits, `_` and `-`, such as `main`".to_owned(),
        "rate" | "quota" => "must be `N/<period>` with a period of `s`, `min`, `h` or `day`, optionally counted: `60/min`, `10/30s`, `10000/day`".to_owned(),
        _ => return None,
    })
}

/// Advice for mistakes the seed documentation calls out, and human wording for patterns.
fn hint(
    pointer: &str,
    instance: &Value,
    kind: &ValidationErrorKind,
    secret: bool,
) -> Option<String> {
    if matches!(kind, ValidationErrorKind::Pattern { .. }) {
        return pattern_hint(pointer, instance, secret);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_compiles_and_rejects_unknown_top_level_keys() {
        let doc = serde_json::json!({"sever": {}});
        assert!(!VALIDATOR.is_valid(&doc));
        assert!(VALIDATOR.is_valid(&serde_json::json!({})));
    }

    #[test]
    fn keys_written_one_level_too_high_are_pointed_down() {
        assert_eq!(
            belongs_below("/bindings/0/upstreams/3/mode").as_deref(),
            Some("`mode` belongs one level down, at `stdio.mode`")
        );
        assert_eq!(belongs_below("/bindings/0/upstreams/3/nonsense"), None);
        assert!(
            belongs_below("/server/cert_file").is_some_and(
                |m| m.contains("`tls.cert_file`") && m.contains("`admin_tls.cert_file`")
            )
        );
    }

    #[test]
    fn every_pattern_in_the_schema_has_human_wording() {
        // A new pattern in the model needs its sentence in `pattern_hint`.
        fn patterns(v: &Value, path: &str, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, child) in m {
                        if k == "pattern" {
                            out.push(path.to_owned());
                        }
                        patterns(child, &format!("{path}/{k}"), out);
                    }
                }
                Value::Array(a) => a.iter().for_each(|c| patterns(c, path, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        patterns(&SCHEMA, "", &mut found);
        assert!(found.len() >= 5, "{found:?}");
        for p in found {
            let key = p.rsplit('/').next().unwrap();
            assert!(
                pattern_hint(&format!("/x/0/{key}"), &Value::String("?".into()), false).is_some(),
                "no wording for the pattern at {p}"
            );
        }
    }
}
