//! `${env.NAME}` substitution in string values, done on the YAML tree before validation.
//!
//! Syntax: `${env.NAME}` (the variable must be set), `${env.NAME:-default}` (the default when the
//! variable is unset or empty, as in a POSIX shell), and `$${` for a literal `${`. Keys are never
//! interpolated. A scalar that received a variable's value is marked secret and never printed back.

use super::diagnostics::{Diagnostic, KeyPath};
use super::yaml::{Node, NodeKind};

/// Looks an environment variable up. The loader takes this as a parameter so that validation
/// stays pure and tests do not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Substitutes every scalar value below `node`, collecting one error per bad reference.
pub fn interpolate(
    node: &mut Node,
    env: EnvLookup<'_>,
    path: &mut KeyPath,
    errors: &mut Vec<Diagnostic>,
) {
    let pos = node.pos;
    match &mut node.kind {
        NodeKind::Scalar { text, from_env, .. } => {
            if !text.contains('$') {
                return;
            }
            match substitute(text, env) {
                Ok((out, used)) => {
                    *text = out;
                    *from_env = used;
                }
                Err(messages) => {
                    for m in messages {
                        errors.push(Diagnostic::error(pos, path.clone(), m));
                    }
                }
            }
        }
        NodeKind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push_index(i);
                interpolate(item, env, path, errors);
                path.pop();
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let key = match &k.kind {
                    NodeKind::Scalar { text, .. } => text.clone(),
                    _ => String::from("?"),
                };
                path.push_key(&key);
                interpolate(v, env, path, errors);
                path.pop();
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Returns the substituted text and the names of the variables whose values went into it.
fn substitute(text: &str, env: EnvLookup<'_>) -> Result<(String, Vec<String>), Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut used = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            errors.push(
                "unterminated `${` in value; write `${env.NAME}`, or `$${` for a literal `${`"
                    .into(),
            );
            break;
        };
        let body = &body_start[..end];
        rest = &body_start[end + 1..];
        let Some(reference) = body.strip_prefix("env.") else {
            errors.push(format!(
                "unsupported substitution `${{{body}}}`: only `${{env.NAME}}` and `${{env.NAME:-default}}` are understood (write `$${{` for a literal `${{`)"
            ));
            continue;
        };
        let (name, default) = match reference.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        if !valid_name(name) {
            errors.push(format!(
                "`${{env.{name}}}`: `{name}` is not a valid environment variable name"
            ));
            continue;
        }
        match (env(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => {
                out.push_str(&v);
                used.push(name.to_owned());
            }
            (None, Some(d)) => out.push_str(d),
            (None, None) => errors.push(format!(
                "environment variable `{name}` is not set; set it, or give a default with `${{env.{name}:-default}}`"
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    out.push_str(rest);
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("redis.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let (s, used) = substitute("redis://${env.HOST}:${env.PORT:-6379}/$${x} $5", &env).unwrap();
        assert_eq!(s, "redis://redis.local:6379/${x} $5");
        assert_eq!(used, vec!["HOST"]);
        let (s, used) = substitute("${env.EMPTY:-fallback}", &env).unwrap();
        assert_eq!((s.as_str(), used.len()), ("fallback", 0));
    }

    #[test]
    fn reports_every_bad_reference() {
        let errs = substitute("${env.A} ${env.B} ${other} ${env.1x}", &env).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("`A` is not set"));
        assert!(errs[2].contains("unsupported substitution"));
        assert!(errs[3].contains("not a valid environment variable name"));
    }
}
