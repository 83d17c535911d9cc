//! Generates the configuration reference (`docs/configuration.md`) from the JSON Schema, so the
//! docs, the schema and the Rust types cannot disagree.

use serde_json::{Map, Value};

/// Renders the reference page for `schema` (the output of [`super::app_config_schema`]).
pub fn configuration_markdown(schema: &Value) -> String {
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "<!-- Generated from the config types, like schemas/app-config.schema.json (drift test in \
         host/tests/schema_drift.rs). Do not edit by hand: edit the doc comments in \
         host/src/config/model.rs and run `MCPG_BLESS=1 cargo test -p mcpg --test schema_drift`. -->\n\n",
    );
    out.push_str(
        "An mcpg configuration is one YAML file. Unknown keys are errors everywhere except inside \
         `cluster` (whose keys belong to the coordinator plugin) and `plugins[].config`. Any string \
         value may use `${env.NAME}` or `${env.NAME:-default}`; `$${` writes a literal `${`. \
         Relative paths are resolved against the config file's directory.\n\n",
    );
    out.push_str("Check a file with `mcpg-config-check ./config.yaml`.\n");
    let root = schema;
    if let Some(props) = root.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            out.push_str(&format!("\n## `{name}`\n\n"));
            if let Some(d) = description(root, prop) {
                out.push_str(&d);
                out.push_str("\n\n");
            }
            let mut rows = Vec::new();
            walk(root, prop, name, &mut rows);
            if rows.is_empty() {
                continue;
            }
            out.push_str("| Key | Type | Default | Description |\n|---|---|---|---|\n");
            for r in rows {
                out.push_str(&r);
                out.push('\n');
            }
        }
    }
    out
}

/// Follows a `$ref` (and an `Option`'s `anyOf [T, null]`) to the schema that describes a value.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let pointer = r.trim_start_matches('#');
        return root
            .pointer(pointer)
            .map(|n| resolve(root, n))
            .unwrap_or(node);
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
        let non_null: Vec<_> = any
            .iter()
            .filter(|s| s.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = non_null.as_slice() {
            return resolve(root, only);
        }
    }
    node
}

fn description(root: &Value, node: &Value) -> Option<String> {
    node.get("description")
        .or_else(|| resolve(root, node).get("description"))
        .and_then(Value::as_str)
        .map(|s| s.replace('\n', " "))
}

fn type_name(root: &Value, node: &Value) -> String {
    let r = resolve(root, node);
    if let Some(values) = r.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| format!("`{}`", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(one_of) = r.get("oneOf").and_then(Value::as_array) {
        let consts: Vec<_> = one_of
            .iter()
            .filter_map(|v| v.get("const").and_then(Value::as_str))
            .map(|c| format!("`{c}`"))
            .collect();
        if consts.len() == one_of.len() {
            return consts.join(" \\| ");
        }
    }
    let t = match r.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" \\| "),
        _ => "any".into(),
    };
    match t.as_str() {
        "array" => match r.get("items") {
            Some(items) => format!("list of {}", type_name(root, items)),
            None => "list".into(),
        },
        "object" if r.get("properties").is_none() => match r.get("additionalProperties") {
            Some(Value::Object(v)) => {
                format!("map of {}", type_name(root, &Value::Object(v.clone())))
            }
            _ => "mapping".into(),
        },
        "object" => "mapping".into(),
        _ => t,
    }
}

fn constraints(root: &Value, node: &Value) -> String {
    let r = resolve(root, node);
    let mut parts = Vec::new();
    let num = |k: &str| r.get(k).filter(|v| v.is_number()).map(Value::to_string);
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => parts.push(format!("Range {lo}..={hi}.")),
        (Some(lo), None) if lo != "0" => parts.push(format!("At least {lo}.")),
        (None, Some(hi)) => parts.push(format!("At most {hi}.")),
        _ => {}
    }
    if let Some(p) = r.get("pattern").and_then(Value::as_str) {
        parts.push(format!("Pattern `{}`.", p.replace('|', "\\|")));
    }
    if r.get("minItems").and_then(Value::as_u64) == Some(1) {
        parts.push("At least one.".into());
    }
    if r.get("required")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        let req: Vec<_> = r["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| format!("`{s}`"))
            .collect();
        parts.push(format!("Requires {}.", req.join(", ")));
    }
    parts.join(" ")
}

fn default_of(node: &Value) -> String {
    match node.get("default") {
        None | Some(Value::Null) => "—".into(),
        Some(Value::Array(a)) if a.is_empty() => "`[]`".into(),
        Some(Value::Object(o)) if o.is_empty() => "`{}`".into(),
        Some(v @ (Value::Array(_) | Value::Object(_))) => {
            if v.to_string().len() > 60 {
                "see below".into()
            } else {
                format!("`{v}`")
            }
        }
        Some(v) => format!("`{v}`"),
    }
}

fn walk(root: &Value, node: &Value, path: &str, rows: &mut Vec<String>) {
    let r = resolve(root, node);
    let props: Option<&Map<String, Value>> = r.get("properties").and_then(Value::as_object);
    if let Some(props) = props {
        for (name, prop) in props {
            let child = format!("{path}.{name}");
            row(root, prop, &child, rows);
            walk(root, prop, &child, rows);
        }
        if r.get("additionalProperties") == Some(&Value::Bool(true)) {
            rows.push(format!(
                "| `{path}.*` | any | — | Any other key is passed through uninterpreted (see the description above). |"
            ));
        }
        return;
    }
    if r.get("type").and_then(Value::as_str) == Some("array")
        && let Some(items) = r.get("items")
        && resolve(root, items).get("properties").is_some()
    {
        walk(root, items, &format!("{path}[]"), rows);
    }
}

fn row(root: &Value, prop: &Value, path: &str, rows: &mut Vec<String>) {
    let desc = description(root, prop).unwrap_or_default();
    let extra = constraints(root, prop);
    let text = [desc, extra]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|");
    rows.push(format!(
        "| `{path}` | {} | {} | {text} |",
        type_name(root, prop),
        default_of(prop)
    ));
}
