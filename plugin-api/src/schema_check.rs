//! Checking a JSON document against a JSON Schema with messages a person reads: every
//! violation, each at a JSON pointer, "did you mean" for unknown keys. The host checks its
//! config with this, and plugins check theirs with [`check`].

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::export::PluginDiagnostic;

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where to report it: the offending value, the unknown key, or (for a missing key) the
    /// pointer the key would have.
    pub pointer: String,
    /// The value that failed (for a missing key, the object that lacks it).
    pub instance_pointer: String,
    pub unknown_key: bool,
    pub message: String,
}

/// Extra advice for particular violations: `(pointer, instance, kind) -> message`.
pub type Hint<'a> = &'a dyn Fn(&str, &Value, &ValidationErrorKind) -> Option<String>;

/// Every violation of `doc` against `validator` (compiled from `schema`). Values for which
/// `secret(pointer)` holds are never quoted in messages.
pub fn violations(
    validator: &Validator,
    schema: &Value,
    doc: &Value,
    secret: &dyn Fn(&str) -> bool,
    hint: Hint<'_>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for err in validator.iter_errors(doc) {
        push(&err, schema, secret, hint, &mut out);
    }
    out
}

/// A plugin's validation in one call: every schema violation of `config` as an error.
pub fn check(schema: &Value, config: &Value) -> Vec<PluginDiagnostic> {
    check_with_secrets(schema, config, &[])
}

/// [`check`] for a config with secret keys: a value at one of `secrets` (JSON pointers such as
/// `/url` or `/auth/password`; everything under them too) is never quoted in a message. No
/// `jsonschema` types are involved, so a plugin needs no dependency on its exact version.
pub fn check_with_secrets(
    schema: &Value,
    config: &Value,
    secrets: &[&str],
) -> Vec<PluginDiagnostic> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![PluginDiagnostic::error(
                "",
                format!("the plugin's own schema is invalid: {e}"),
            )];
        }
    };
    let secret = |p: &str| {
        secrets
            .iter()
            .any(|s| p == *s || p.strip_prefix(s).is_some_and(|r| r.starts_with('/')))
    };
    violations(&validator, schema, config, &secret, &|_, _, _| None)
        .into_iter()
        .map(|v| PluginDiagnostic::error(v.pointer, v.message))
        .collect()
}

/// The error for a URL at `key` whose scheme is not one of `schemes` (the seed's "any other
/// scheme is rejected"), if the value is a string. The URL itself is never quoted.
pub fn url_scheme(config: &Value, key: &str, schemes: &[&str]) -> Option<PluginDiagnostic> {
    let url = config.get(key)?.as_str()?;
    let wanted = schemes
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(" or ");
    let message = match url.split_once("://") {
        Some((scheme, rest)) if schemes.contains(&scheme) && !rest.is_empty() => return None,
        Some((scheme, _)) if !schemes.contains(&scheme) => {
            format!("scheme `{scheme}` is not supported: use {wanted}")
        }
        _ => format!("must be a {wanted} URL"),
    };
    Some(PluginDiagnostic::error(format!("/{key}"), message))
}

/// The errors for strings the plugin's boot would refuse: the string at the JSON `pointer`
/// (or each string of the array there, at `pointer/<index>`) is given to `parse`, which must be
/// exactly the parser boot uses on it, so that `mcpg-config-check` refuses what boot refuses,
/// at the key's position. The message is the parser's (`what` in front): give a parser whose
/// errors do not quote secrets. Values that are not strings are the schema's business.
pub fn parsed_by<T, E: std::fmt::Display>(
    config: &Value,
    pointer: &str,
    what: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Vec<PluginDiagnostic> {
    let one = |at: String, v: &Value| {
        let e = parse(v.as_str()?).err()?;
        Some(PluginDiagnostic::error(at, format!("{what}: {e}")))
    };
    match config.pointer(pointer) {
        Some(Value::Array(items)) => (items.iter().enumerate())
            .filter_map(|(i, v)| one(format!("{pointer}/{i}"), v))
            .collect(),
        Some(v) => one(pointer.to_owned(), v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The errors for the URL at `key`: its scheme ([`url_scheme`]), then, if that is right, boot's
/// own parser ([`parsed_by`], under "invalid URL"). The URL itself is never quoted.
pub fn url_key<T, E: std::fmt::Display>(
    config: &Value,
    key: &str,
    schemes: &[&str],
    parse: impl Fn(&str) -> Result<T, E>,
) -> Vec<PluginDiagnostic> {
    match url_scheme(config, key, schemes) {
        Some(d) => vec![d],
        None => parsed_by(config, &format!("/{key}"), "invalid URL", parse),
    }
}

/// The warning for a percentage the backend clamps to 1..=99 (the seed's "clamped, not
/// rejected" keys), if the value at `key` lies outside.
pub fn clamped_percent(config: &Value, key: &str) -> Option<PluginDiagnostic> {
    let p = config.get(key)?.as_i64()?;
    (!(1..=99).contains(&p)).then(|| {
        PluginDiagnostic::warning(
            format!("/{key}"),
            format!("{p} is outside 1..=99 and is clamped to {}", p.clamp(1, 99)),
        )
    })
}

fn push(
    err: &ValidationError<'_>,
    schema: &Value,
    secret: &dyn Fn(&str) -> bool,
    hint: Hint<'_>,
    out: &mut Vec<Violation>,
) {
    let pointer = err.instance_path().as_str().to_owned();
    match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_keys(schema, err.schema_path().as_str());
            for key in unexpected {
                out.push(Violation {
                    pointer: format!("{pointer}/{}", escape(key)),
                    instance_pointer: format!("{pointer}/{}", escape(key)),
                    unknown_key: true,
                    message: unknown_key_message(key, &allowed),
                });
            }
        }
        ValidationErrorKind::Required { property } => out.push(Violation {
            pointer: format!(
                "{pointer}/{}",
                escape(property.as_str().unwrap_or_default())
            ),
            instance_pointer: pointer,
            unknown_key: false,
            message: "required key is missing".into(),
        }),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // `Option<T>` is `anyOf [T, null]`: say why the value fails `T`, not "not valid
            // under any of the schemas".
            let branches: Vec<_> = context
                .iter()
                .filter(|errs| !(errs.len() == 1 && expects_only_null(&errs[0])))
                .collect();
            if let [only] = branches.as_slice() {
                for e in only.iter() {
                    push(e, schema, secret, hint, out);
                }
            } else {
                out.push(invalid(err, pointer, secret, hint));
            }
        }
        _ => out.push(invalid(err, pointer, secret, hint)),
    }
}

fn invalid(
    err: &ValidationError<'_>,
    pointer: String,
    secret: &dyn Fn(&str) -> bool,
    hint: Hint<'_>,
) -> Violation {
    let is_secret = secret(&pointer);
    let message = hint(&pointer, err.instance(), err.kind())
        .or_else(|| describe(err.kind(), err.instance(), is_secret))
        .unwrap_or_else(|| {
            if is_secret {
                err.masked_with("the value from the environment")
                    .to_string()
            } else {
                err.to_string()
            }
        });
    Violation {
        instance_pointer: pointer.clone(),
        pointer,
        unknown_key: false,
        message,
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn expects_only_null(err: &ValidationError<'_>) -> bool {
    matches!(err.kind(), ValidationErrorKind::Type { kind: TypeKind::Single(t) } if t.to_string() == "null")
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

/// Messages a person reads, for the common violations.
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

/// The property names the schema allows at the object whose `additionalProperties` failed.
fn allowed_keys(schema: &Value, schema_path: &str) -> Vec<String> {
    let parent = schema_path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    schema
        .pointer(parent)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

/// "unknown key", with the closest allowed key as a suggestion and the allowed keys listed.
pub fn unknown_key_message(key: &str, allowed: &[String]) -> String {
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
    fn parsed_by_reports_what_the_boot_parser_refuses_at_its_key() {
        let port = |s: &str| s.parse::<u16>().map(drop);
        let config = serde_json::json!({"one": "99999", "many": ["1", "x", 2], "ok": "80"});
        let d = parsed_by(&config, "/one", "invalid port", port);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].pointer, "/one");
        assert!(
            d[0].message.starts_with("invalid port: "),
            "{}",
            d[0].message
        );
        let d = parsed_by(&config, "/many", "invalid port", port);
        let at: Vec<_> = d.iter().map(|d| d.pointer.as_str()).collect();
        assert_eq!(at, ["/many/1"]);
        assert!(parsed_by(&config, "/ok", "invalid port", port).is_empty());
        assert!(parsed_by(&config, "/absent", "invalid port", port).is_empty());
        let url = |u: &str| u.rsplit_once(':').map(|(_, p)| port(p)).unwrap_or(Ok(()));
        let config = serde_json::json!({"a": "x://h:99999", "b": "y://h:1", "c": "x://h:1"});
        let d = url_key(&config, "a", &["x"], url);
        assert_eq!((d.len(), d[0].pointer.as_str()), (1, "/a"));
        assert!(
            d[0].message.starts_with("invalid URL: "),
            "{}",
            d[0].message
        );
        assert!(
            !url_key(&config, "b", &["x"], url)[0]
                .message
                .contains("invalid URL")
        );
        assert!(url_key(&config, "c", &["x"], url).is_empty());
    }

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
    fn url_schemes() {
        let c =
            serde_json::json!({"a": "http://u:pw@h", "b": "pg://h", "c": "nourl", "d": "pg://"});
        let msg = |k| url_scheme(&c, k, &["pg", "pgs"]).map(|d| d.message);
        assert_eq!(
            msg("a").as_deref(),
            Some("scheme `http` is not supported: use pg:// or pgs://")
        );
        assert_eq!(msg("b"), None);
        assert_eq!(msg("c").as_deref(), Some("must be a pg:// or pgs:// URL"));
        assert_eq!(msg("d").as_deref(), Some("must be a pg:// or pgs:// URL"));
        assert_eq!(msg("missing"), None);
    }

    #[test]
    fn secret_values_are_never_quoted() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "pattern": "^postgres://"},
                "auth": {"type": "object", "properties": {"password": {"type": "string", "minLength": 40}}},
                "name": {"type": "string", "pattern": "^x"}
            }
        });
        let config = serde_json::json!({
            "url": "mysql://u:hunter2@db", "auth": {"password": "s3cret-pw"}, "name": "visible-name"
        });
        let text: Vec<String> = check_with_secrets(&schema, &config, &["/url", "/auth"])
            .into_iter()
            .map(|d| format!("{}: {}", d.pointer, d.message))
            .collect();
        assert_eq!(text.len(), 3, "{text:?}");
        let all = text.join("\n");
        assert!(
            !all.contains("hunter2") && !all.contains("s3cret-pw"),
            "{all}"
        );
        assert!(all.contains("visible-name"), "{all}");
        // Without the secrets, the same values are quoted: the masking is what hid them.
        let plain = format!("{:?}", check(&schema, &config));
        assert!(
            plain.contains("hunter2") && plain.contains("s3cret-pw"),
            "{plain}"
        );
    }

    #[test]
    fn check_reports_every_violation_at_its_pointer() {
        let schema = serde_json::json!({
            "type": "object", "additionalProperties": false, "required": ["url"],
            "properties": {"url": {"type": "string"}, "ttl_ms": {"type": "integer", "minimum": 1}}
        });
        let diags = check(&schema, &serde_json::json!({"ttl_ms": 0, "pool_size": 4}));
        let mut got: Vec<(String, String)> =
            diags.into_iter().map(|d| (d.pointer, d.message)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "/pool_size".into(),
                    "unknown key (allowed here: url, ttl_ms)".into()
                ),
                ("/ttl_ms".into(), "must be at least 1".into()),
                ("/url".into(), "required key is missing".into()),
            ]
        );
    }
}
