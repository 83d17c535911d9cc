//! Requests that concern every upstream of a binding: the `initialize` result and
//! `server/discover` merged across upstreams, one page of a list merged across upstreams,
//! finding which upstream offers a name, and checking that all of them are up.

use serde_json::{Map, Value, json};

use crate::mcp::binding::Binding;
use crate::mcp::route::names::{self, MergedCursor, UpstreamIdx};
use crate::mcp::upstream::{Connection, Conversations};
use crate::mcp::wire::jsonrpc::{self, Message, RpcError, code};
use crate::mcp::wire::{meta, version};

/// The shared conversations that serve 2026-07-28 clients: each upstream's own stateless
/// conversation, or the legacy session bridging it.
pub struct Stateless<'a>(pub &'a Binding);

#[async_trait::async_trait]
impl Conversations for Stateless<'_> {
    async fn conn(&self, up: UpstreamIdx) -> Result<Connection, RpcError> {
        Ok(self.0.upstreams[up].modern().await?.conn)
    }

    async fn prepare(&self, up: UpstreamIdx, params: &mut Map<String, Value>) {
        match self.0.upstreams[up].modern().await {
            Ok(h) if h.native => meta::stamp_gateway(params),
            // A bridging legacy session: see `meta::strip_request_fields`.
            Ok(_) => meta::strip_params_fields(params),
            Err(_) => {}
        }
    }
}

/// The `initialize` result the client sees: the upstream's own when it is the only one
/// and unprefixed; otherwise the union of the upstreams' capabilities under the
/// binding's name. The protocol version is the oldest any side agreed to.
pub fn merge_initialize(b: &Binding, negotiated: &str, answers: &[(UpstreamIdx, Value)]) -> Value {
    let mut agreed = negotiated.to_owned();
    for (_, a) in answers {
        if let Some(v) = a["protocolVersion"].as_str()
            && version::is_legacy(v)
        {
            agreed = version::older(&agreed, v).to_owned();
        }
    }
    let mut result = if b.single_passthrough() && answers.len() == 1 {
        answers[0].1.clone()
    } else {
        let mut caps = Map::new();
        let mut instructions = Vec::new();
        for (i, a) in answers {
            if let Some(c) = a["capabilities"].as_object() {
                merge_capabilities(&mut caps, c);
            }
            if let Some(s) = a["instructions"].as_str() {
                instructions.push(format!("{}: {s}", b.upstreams[*i].name));
            }
        }
        let mut r = json!({
            "capabilities": caps,
            "serverInfo": {"name": b.name, "version": env!("CARGO_PKG_VERSION")},
        });
        if !instructions.is_empty() {
            r["instructions"] = json!(instructions.join("\n\n"));
        }
        r
    };
    result["protocolVersion"] = json!(agreed);
    declare_lists_change(&mut result);
    note_unavailable(b, answers.iter().map(|(i, _)| *i), &mut result);
    result
}

/// mcpg itself may change a session's tools, prompts and resources: a config reload moves the
/// session to the binding's new upstreams and sends it the three `list_changed`
/// notifications (docs/reload.md). So each of those capabilities the client sees declares
/// `listChanged`, whatever the upstream said.
fn declare_lists_change(result: &mut Value) {
    let Some(caps) = result["capabilities"].as_object_mut() else {
        return;
    };
    for kind in ["tools", "prompts", "resources"] {
        if let Some(Value::Object(c)) = caps.get_mut(kind) {
            c.insert("listChanged".into(), Value::Bool(true));
        }
    }
}

/// Names, in a result's `_meta`, the binding's upstreams that did not answer (with the cause
/// the last attempt to reach each found), so a client learns at once what is missing.
fn note_unavailable(b: &Binding, answered: impl Iterator<Item = UpstreamIdx>, r: &mut Value) {
    let answered: Vec<UpstreamIdx> = answered.collect();
    let missing: Vec<Value> = b
        .indices()
        .filter(|i| !answered.contains(i))
        .map(|i| {
            let u = &b.upstreams[i];
            json!({"name": u.name, "error": u.unavailable().message})
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    if !r["_meta"].is_object() {
        r["_meta"] = json!({});
    }
    r["_meta"][meta::UNAVAILABLE_UPSTREAMS] = json!(missing);
}

/// Every upstream is reachable (for `fail_closed`).
pub async fn all_up(b: &Binding, conv: &dyn Conversations) -> Result<(), RpcError> {
    for i in b.indices() {
        conv.conn(i).await?;
    }
    Ok(())
}

/// One page of a list merged across upstreams: the page continues an upstream that has
/// more, else moves on to the next upstream, so every item is seen exactly once.
pub async fn merged_list(
    b: &Binding,
    conv: &dyn Conversations,
    method: &str,
    msg: &Message,
) -> Result<Value, RpcError> {
    let key = names::list_key(method).expect("a list method");
    let params = jsonrpc::params(msg).cloned().unwrap_or_default();
    let mut pos = match params.get("cursor").and_then(Value::as_str) {
        Some(c) => MergedCursor::decode(c)?,
        None => MergedCursor {
            upstream: UpstreamIdx(0),
            cursor: None,
        },
    };
    let mut items = Vec::new();
    let mut extra = Map::new();
    while pos.upstream.0 < b.upstreams.len() {
        let up = pos.upstream;
        let mut p = params.clone();
        match &pos.cursor {
            Some(c) => p.insert("cursor".into(), json!(c)),
            None => p.remove("cursor"),
        };
        conv.prepare(up, &mut p).await;
        let page = match conv.conn(up).await {
            Ok(conn) => tokio::time::timeout(
                b.upstreams[up].timeout,
                conn.call(method, Some(Value::Object(p))),
            )
            .await
            .unwrap_or_else(|_| Err(RpcError::new(code::REQUEST_TIMEOUT, "list timed out"))),
            Err(e) => Err(e),
        };
        let mut page = match page {
            Ok(p) => p,
            // An upstream without this capability simply has nothing to list.
            Err(e) if e.code == code::METHOD_NOT_FOUND => Value::Null,
            Err(e) if !b.fail_closed() => {
                tracing::warn!(binding = %b.name, upstream = %b.upstreams[up].name, error = %e, "{method}: upstream left out");
                Value::Null
            }
            Err(e) => {
                return Err(RpcError::new(
                    e.code,
                    format!("upstream `{}`: {}", b.upstreams[up].name, e.message),
                ));
            }
        };
        b.naming.result_out(method, up, &mut page);
        if let Some(obj) = page.as_object_mut() {
            if let Some(Value::Array(a)) = obj.remove(key) {
                items.extend(a);
            }
            let next = obj.remove("nextCursor");
            merge_page_fields(&mut extra, std::mem::take(obj));
            if let Some(Value::String(c)) = next {
                let cur = MergedCursor {
                    upstream: up,
                    cursor: Some(c),
                };
                return Ok(list_result(key, items, extra, Some(cur.encode())));
            }
        }
        pos = MergedCursor {
            upstream: up.next(),
            cursor: None,
        };
    }
    Ok(list_result(key, items, extra, None))
}

/// The first upstream whose list has `name` (for unprefixed bindings of several).
pub async fn search(
    b: &Binding,
    conv: &dyn Conversations,
    list: &str,
    name: &str,
) -> Option<UpstreamIdx> {
    let key = names::list_key(list)?;
    let field = if key == "resources" { "uri" } else { "name" };
    for up in b.indices() {
        let Ok(conn) = conv.conn(up).await else {
            continue;
        };
        let mut cursor: Option<String> = None;
        loop {
            let mut params = Map::new();
            if let Some(c) = &cursor {
                params.insert("cursor".into(), json!(c));
            }
            conv.prepare(up, &mut params).await;
            let call = conn.call(list, Some(Value::Object(params)));
            let Ok(Ok(page)) = tokio::time::timeout(b.upstreams[up].timeout, call).await else {
                break;
            };
            if page[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i[field] == name))
            {
                return Some(up);
            }
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
    }
    None
}

/// `server/discover` for the binding: the upstreams' capabilities (their own discovery
/// result, or the `initialize` result of the session bridging a legacy upstream).
pub async fn discover(b: &Binding) -> Value {
    let mut answers = Vec::new();
    for (i, u) in b.indices().zip(&b.upstreams) {
        match u.modern().await {
            Ok(h) => answers.push((i, (*h.info).clone())),
            Err(e) => {
                tracing::warn!(binding = %b.name, upstream = %u.name, error = %e, "server/discover: upstream left out");
            }
        }
    }
    let mut caps = Map::new();
    let mut instructions = Vec::new();
    let mut server_info = json!({"name": b.name, "version": env!("CARGO_PKG_VERSION")});
    for (i, a) in &answers {
        if let Some(c) = a["capabilities"].as_object() {
            let mut c = c.clone();
            // The legacy tasks capability has no place in 2026-07-28.
            c.remove("tasks");
            merge_capabilities(&mut caps, &c);
        }
        if let Some(s) = a["instructions"].as_str() {
            instructions.push(if b.single_passthrough() {
                s.to_owned()
            } else {
                format!("{}: {s}", b.upstreams[*i].name)
            });
        }
        if b.single_passthrough() {
            let info = a["_meta"][meta::SERVER_INFO].clone();
            let info = if info.is_null() {
                a["serverInfo"].clone()
            } else {
                info
            };
            if !info.is_null() {
                server_info = info;
            }
        }
    }
    let mut r = json!({
        "resultType": "complete",
        "supportedVersions": version::all(),
        "capabilities": caps,
        "_meta": {meta::SERVER_INFO: server_info},
        "ttlMs": 0,
        "cacheScope": "private",
    });
    if !instructions.is_empty() {
        r["instructions"] = json!(instructions.join("\n\n"));
    }
    note_unavailable(b, answers.iter().map(|(i, _)| *i), &mut r);
    r
}

/// Keeps the first page's unknown fields; of the 2026-07-28 caching hints keeps the most
/// cautious (the shortest `ttlMs`, `private` over `public`).
fn merge_page_fields(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (k.as_str(), into.get(&k)) {
            ("ttlMs", Some(old)) => {
                if v.as_f64() < old.as_f64() {
                    into.insert(k, v);
                }
            }
            ("cacheScope", Some(_)) => {
                if v == "private" {
                    into.insert(k, v);
                }
            }
            _ => {
                into.entry(k).or_insert(v);
            }
        }
    }
}

fn list_result(
    key: &str,
    items: Vec<Value>,
    extra: Map<String, Value>,
    next: Option<String>,
) -> Value {
    let mut r = extra;
    r.insert(key.into(), Value::Array(items));
    if let Some(n) = next {
        r.insert("nextCursor".into(), json!(n));
    }
    Value::Object(r)
}

/// Union of two capability objects: present in either, nested flags true in either.
pub(crate) fn merge_capabilities(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_capabilities(a, b),
            (Some(Value::Bool(a)), Value::Bool(b)) => *a = *a || *b,
            (None, v) => {
                into.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}
