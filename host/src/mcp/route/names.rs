//! How several upstreams become one server's namespace: prefixing of tool and prompt names,
//! resource URIs and task ids with the upstream's name, the reverse on the way in, merged
//! list cursors, and which upstream a request goes to. Pure functions over JSON.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::mcp::wire::jsonrpc::{self, Message, RpcError};

/// The key holding the items of each list method's result.
pub fn list_key(method: &str) -> Option<&'static str> {
    Some(match method {
        "tools/list" => "tools",
        "prompts/list" => "prompts",
        "resources/list" => "resources",
        "resources/templates/list" => "resourceTemplates",
        "tasks/list" => "tasks",
        _ => return None,
    })
}

/// An upstream's position among its binding's upstreams (what records and tokens that may
/// outlive a configuration keep is the upstream's name instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamIdx(pub usize);

impl UpstreamIdx {
    /// Every index of a list of `n` upstreams, in order.
    pub fn all(n: usize) -> impl Iterator<Item = UpstreamIdx> {
        (0..n).map(UpstreamIdx)
    }

    /// The next upstream's index.
    pub fn next(self) -> Self {
        UpstreamIdx(self.0 + 1)
    }
}

impl<T> std::ops::Index<UpstreamIdx> for Vec<T> {
    type Output = T;

    fn index(&self, i: UpstreamIdx) -> &T {
        &self[i.0]
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Answered by the gateway itself.
    Local,
    /// One upstream (its index in the binding).
    One(UpstreamIdx),
    /// Every upstream, results merged (lists) or acknowledged (broadcasts).
    All,
    /// Names are not prefixed and there are several upstreams: the one that lists this name
    /// (`kind` is a list method).
    Search { list: &'static str, name: String },
}

/// A binding's naming scheme.
#[derive(Debug, Clone)]
pub struct Naming {
    pub prefix: bool,
    pub sep: String,
    pub upstreams: Vec<String>,
}

impl Naming {
    fn name_out(&self, up: UpstreamIdx, name: &str) -> String {
        format!("{}{}{}", self.upstreams[up], self.sep, name)
    }

    /// The upstream a prefixed name belongs to and the name without its prefix. The longest
    /// matching upstream name wins, so `a` and `a__b` can coexist.
    pub fn name_in(&self, name: &str) -> Option<(UpstreamIdx, String)> {
        self.strip(name, &self.sep)
    }

    fn uri_out(&self, up: UpstreamIdx, uri: &str) -> String {
        format!("{}+{}", self.upstreams[up], uri)
    }

    /// [`Naming::name_in`] for URIs (`<upstream>+<uri>`).
    pub fn uri_in(&self, uri: &str) -> Option<(UpstreamIdx, String)> {
        self.strip(uri, "+")
    }

    /// `<upstream><sep><rest>` → the upstream's index and `rest`, longest upstream name first.
    fn strip(&self, value: &str, sep: &str) -> Option<(UpstreamIdx, String)> {
        self.upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                value
                    .strip_prefix(u.as_str())
                    .and_then(|rest| rest.strip_prefix(sep))
                    .map(|rest| (i, u.len(), rest.to_owned()))
            })
            .max_by_key(|(_, len, _)| *len)
            .map(|(i, _, rest)| (UpstreamIdx(i), rest))
    }

    /// Decides where a client request goes and strips the prefixes it carries, in place.
    pub fn route(&self, m: &mut Message) -> Result<Route, RpcError> {
        let method = jsonrpc::method(m).unwrap_or_default().to_owned();
        match method.as_str() {
            "ping" => return Ok(Route::Local),
            "logging/setLevel" => return Ok(Route::All),
            _ if list_key(&method).is_some() => {
                return Ok(if self.upstreams.len() == 1 && !self.prefix {
                    Route::One(UpstreamIdx(0))
                } else {
                    Route::All
                });
            }
            _ => {}
        }
        if !self.prefix {
            return self.route_unprefixed(&method, m);
        }
        let known = matches!(
            method.as_str(),
            "tools/call"
                | "prompts/get"
                | "resources/read"
                | "resources/subscribe"
                | "resources/unsubscribe"
                | "tasks/get"
                | "tasks/result"
                | "tasks/cancel"
                | "tasks/update"
                | "completion/complete"
        );
        if known {
            self.route_prefixed(&method, jsonrpc::params_mut(m))
                .map(Route::One)
        } else {
            Ok(Route::One(self.route_unknown(m)))
        }
    }

    /// Without prefixes: the only upstream, or the one whose list offers the name.
    fn route_unprefixed(&self, method: &str, m: &Message) -> Result<Route, RpcError> {
        if self.upstreams.len() == 1 {
            return Ok(Route::One(UpstreamIdx(0)));
        }
        let p = jsonrpc::params(m);
        let s = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
        Ok(match method {
            "tools/call" => search("tools/list", s("name"))?,
            "prompts/get" => search("prompts/list", s("name"))?,
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                search("resources/list", s("uri"))?
            }
            _ => Route::One(UpstreamIdx(0)),
        })
    }

    /// A method mcpg does not know: routed by a prefixed `name` or `uri` if it carries one,
    /// else to the first upstream, touching nothing else (its params pass unchanged).
    fn route_unknown(&self, m: &mut Message) -> UpstreamIdx {
        let p = jsonrpc::params(m);
        let s = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
        let by_name = s("name").and_then(|n| self.name_in(n));
        let by_uri = s("uri").and_then(|u| self.uri_in(u));
        match (by_name, by_uri) {
            (Some((up, rest)), _) => {
                jsonrpc::params_mut(m).insert("name".into(), json!(rest));
                up
            }
            (None, Some((up, rest))) => {
                jsonrpc::params_mut(m).insert("uri".into(), json!(rest));
                up
            }
            _ => UpstreamIdx(0),
        }
    }

    /// A known method on a prefixed binding: the upstream its name, URI or task id names, the
    /// prefix stripped; an unprefixed name is refused.
    fn route_prefixed(
        &self,
        method: &str,
        params: &mut Map<String, Value>,
    ) -> Result<UpstreamIdx, RpcError> {
        let by_name = |n: &str| self.name_in(n);
        let by_uri = |u: &str| self.uri_in(u);
        match method {
            "tools/call" => self.strip_field(params, "name", "tool", &by_name),
            "prompts/get" => self.strip_field(params, "name", "prompt", &by_name),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.strip_field(params, "uri", "resource", &by_uri)
            }
            "tasks/get" | "tasks/result" | "tasks/cancel" | "tasks/update" => {
                self.strip_field(params, "taskId", "task", &by_name)
            }
            "completion/complete" => {
                let r = params
                    .get_mut("ref")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| RpcError::invalid_params("`params.ref` is required"))?;
                if r.contains_key("uri") {
                    self.strip_field(r, "uri", "resource", &by_uri)
                } else {
                    self.strip_field(r, "name", "prompt", &by_name)
                }
            }
            _ => unreachable!("unknown methods are routed by route_unknown"),
        }
    }

    /// The upstream `params[key]` names (by `resolve`), with the prefix stripped in place.
    fn strip_field(
        &self,
        params: &mut Map<String, Value>,
        key: &str,
        what: &str,
        resolve: &dyn Fn(&str) -> Option<(UpstreamIdx, String)>,
    ) -> Result<UpstreamIdx, RpcError> {
        let v = params.get(key).and_then(Value::as_str).ok_or_else(|| {
            RpcError::invalid_params(format!("`params.{key}` (a string) is required"))
        })?;
        let (up, rest) = resolve(v).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "unknown {what} `{v}`: names on this endpoint are prefixed with their upstream ({})",
                self.upstreams.join(", ")
            ))
        })?;
        params.insert(key.into(), json!(rest));
        Ok(up)
    }

    /// Prefixes what an upstream's result names: list items, and resource links, embedded
    /// resources and tasks inside call results.
    pub fn result_out(&self, method: &str, up: UpstreamIdx, result: &mut Value) {
        if !self.prefix {
            return;
        }
        if let Some(key) = list_key(method)
            && let Some(items) = result.get_mut(key).and_then(Value::as_array_mut)
        {
            for item in items {
                self.item_out(key, up, item);
            }
        }
        if let Some(task) = result.get_mut("task") {
            self.field_name_out(up, task, "taskId");
        }
        self.related_task_out(up, result);
        if method == "tasks/get" || method == "tasks/cancel" || method == "tasks/update" {
            self.field_name_out(up, result, "taskId");
        }
        if let Some(content) = result.get_mut("content").and_then(Value::as_array_mut) {
            self.content_out(up, content);
        }
        if let Some(contents) = result.get_mut("contents").and_then(Value::as_array_mut) {
            for c in contents {
                self.field_uri_out(up, c, "uri");
            }
        }
        if let Some(messages) = result.get_mut("messages").and_then(Value::as_array_mut) {
            for msg in messages {
                if let Some(c) = msg.get_mut("content") {
                    match c {
                        Value::Array(items) => self.content_out(up, items),
                        one => self.content_out(up, std::slice::from_mut(one)),
                    }
                }
            }
        }
    }

    fn item_out(&self, key: &str, up: UpstreamIdx, item: &mut Value) {
        match key {
            "tools" | "prompts" => self.field_name_out(up, item, "name"),
            "resources" => self.field_uri_out(up, item, "uri"),
            "resourceTemplates" => self.field_uri_out(up, item, "uriTemplate"),
            "tasks" => self.field_name_out(up, item, "taskId"),
            _ => {}
        }
    }

    fn content_out(&self, up: UpstreamIdx, content: &mut [Value]) {
        for c in content {
            match c.get("type").and_then(Value::as_str) {
                Some("resource_link") => self.field_uri_out(up, c, "uri"),
                Some("resource") => {
                    if let Some(r) = c.get_mut("resource") {
                        self.field_uri_out(up, r, "uri");
                    }
                }
                _ => {}
            }
        }
    }

    fn field_name_out(&self, up: UpstreamIdx, v: &mut Value, key: &str) {
        if let Some(s) = v.get(key).and_then(Value::as_str) {
            let n = self.name_out(up, s);
            v[key] = json!(n);
        }
    }

    fn field_uri_out(&self, up: UpstreamIdx, v: &mut Value, key: &str) {
        if let Some(s) = v.get(key).and_then(Value::as_str) {
            let n = self.uri_out(up, s);
            v[key] = json!(n);
        }
    }

    /// `_meta["io.modelcontextprotocol/related-task"].taskId` (2025-11-25 tasks), prefixed.
    fn related_task_out(&self, up: UpstreamIdx, v: &mut Value) {
        if let Some(rt) = v
            .get_mut("_meta")
            .and_then(|m| m.get_mut("io.modelcontextprotocol/related-task"))
        {
            self.field_name_out(up, rt, "taskId");
        }
    }

    /// Prefixes what an upstream's notification names (resource updates, task status).
    pub fn notification_out(&self, up: UpstreamIdx, m: &mut Message) {
        if !self.prefix {
            return;
        }
        let method = jsonrpc::method(m).unwrap_or_default().to_owned();
        let Some(p) = m.get_mut("params") else {
            return;
        };
        self.related_task_out(up, p);
        match method.as_str() {
            "notifications/resources/updated" => self.field_uri_out(up, p, "uri"),
            "notifications/tasks/status" => self.field_name_out(up, p, "taskId"),
            _ => {}
        }
    }
}

fn search(list: &'static str, name: Option<&str>) -> Result<Route, RpcError> {
    let name = name.ok_or_else(|| RpcError::invalid_params("the name or uri is required"))?;
    Ok(Route::Search {
        list,
        name: name.to_owned(),
    })
}

/// A position in a merged list: which upstream, and that upstream's own cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedCursor {
    pub upstream: UpstreamIdx,
    pub cursor: Option<String>,
}

impl MergedCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(json!({"u": self.upstream.0, "c": self.cursor}).to_string())
    }

    pub fn decode(s: &str) -> Result<Self, RpcError> {
        let bad = || RpcError::invalid_params("invalid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(Self {
            upstream: UpstreamIdx(v["u"].as_u64().ok_or_else(bad)? as usize),
            cursor: v["c"].as_str().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> Naming {
        Naming {
            prefix: true,
            sep: "__".into(),
            upstreams: vec!["a".into(), "a__b".into(), "time".into()],
        }
    }

    fn msg(v: Value) -> Message {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn longest_upstream_prefix_wins() {
        let n = naming();
        assert_eq!(n.name_in("a__b__x"), Some((UpstreamIdx(1), "x".into())));
        assert_eq!(n.name_in("a__x"), Some((UpstreamIdx(0), "x".into())));
        assert_eq!(n.name_in("nope__x"), None);
        assert_eq!(
            n.uri_in("time+file:///a"),
            Some((UpstreamIdx(2), "file:///a".into()))
        );
    }

    #[test]
    fn routing_strips_prefixes_and_keeps_everything_else() {
        let n = naming();
        let mut m = msg(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"time__now","arguments":{"z":1},"extra":true}}),
        );
        assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(2)));
        assert_eq!(
            Value::Object(m),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"now","arguments":{"z":1},"extra":true}})
        );
        let mut m = msg(
            json!({"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"a+x://y"}}}),
        );
        assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(0)));
        assert_eq!(m["params"]["ref"]["uri"], json!("x://y"));
        let mut m =
            msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}));
        assert!(n.route(&mut m).is_err());
        let mut m = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
        assert_eq!(n.route(&mut m).unwrap(), Route::All);
        // Unknown methods keep their params exactly, array params and absent params included.
        for original in [
            json!({"jsonrpc":"2.0","id":1,"method":"vendor/x","params":[1,2]}),
            json!({"jsonrpc":"2.0","id":1,"method":"vendor/x"}),
            json!({"jsonrpc":"2.0","id":1,"method":"vendor/x","params":{"name":"nobody__x"}}),
        ] {
            let mut m = msg(original.clone());
            assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(0)));
            assert_eq!(Value::Object(m), original);
        }
        let mut m =
            msg(json!({"jsonrpc":"2.0","id":1,"method":"vendor/x","params":{"uri":"time+x://y"}}));
        assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(2)));
        assert_eq!(m["params"]["uri"], json!("x://y"));
    }

    #[test]
    fn results_are_prefixed() {
        let n = naming();
        let mut r = json!({"tools":[{"name":"now","x":1}],"nextCursor":"c"});
        n.result_out("tools/list", UpstreamIdx(2), &mut r);
        assert_eq!(
            r,
            json!({"tools":[{"name":"time__now","x":1}],"nextCursor":"c"})
        );
        let mut r =
            json!({"content":[{"type":"resource_link","uri":"f://x"},{"type":"text","text":"t"}]});
        n.result_out("tools/call", UpstreamIdx(0), &mut r);
        assert_eq!(r["content"][0]["uri"], json!("a+f://x"));
    }

    #[test]
    fn cursors_round_trip() {
        let c = MergedCursor {
            upstream: UpstreamIdx(3),
            cursor: Some("abc".into()),
        };
        assert_eq!(MergedCursor::decode(&c.encode()).unwrap(), c);
        assert!(MergedCursor::decode("!!").is_err());
    }
}
