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
    for v in violations(&VALIDATOR, &SCHEMA, doc, &secret, &hint) {
        let path = KeyPath::from_pointer(&v.pointer, doc);
        if v.unknown_key {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_compiles_and_rejects_unknown_top_level_keys() {
        let doc = serde_json::json!({"sever": {}});
        assert!(!VALIDATOR.is_valid(&doc));
        assert!(VALIDATOR.is_valid(&serde_json::json!({})));
    }
}
