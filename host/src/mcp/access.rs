//! A binding's access control applied to MCP messages: the name a request touches (refused
//! when the caller may not use it) and list results filtered to what the caller may see.
//! Who the caller is and what the rules say are `crate::auth`'s; who owns a task is
//! `mcp::tasks`'.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::{Authenticator, Identity, Kind, Policy};
use crate::config::model::BindingConfig;
use crate::config::parsed::Parsed;
use crate::mcp::relay::Reply;
use crate::mcp::wire::jsonrpc::{self, Message, code};

/// The caller of a request: `None` on a binding without `auth`.
pub type Caller = Option<Arc<Identity>>;

/// The caller's identity key, what sessions and tasks are bound to.
pub fn identity_key(who: &Caller) -> Option<&str> {
    who.as_deref().map(|i| i.key.as_str())
}

/// A binding's authentication and access rules.
#[derive(Default)]
pub struct Access {
    pub auth: Option<Authenticator>,
    pub policy: Option<Arc<Policy>>,
    /// The configured `auth.resource`, parsed by the loader.
    pub resource: Option<url::Url>,
}

impl Access {
    pub fn new(cfg: &BindingConfig, parsed: &Parsed) -> anyhow::Result<Self> {
        let auth = match &cfg.auth {
            Some(a) => Some(Authenticator::new(
                a,
                &cfg.name,
                parsed.jwks_url(&cfg.name),
            )?),
            None => None,
        };
        let policy = match &cfg.access {
            Some(p) => Some(Arc::new(
                Policy::new(p, parsed.access(&cfg.name)).map_err(anyhow::Error::msg)?,
            )),
            None => None,
        };
        Ok(Self {
            auth,
            policy,
            resource: parsed.resource(&cfg.name).cloned(),
        })
    }

    /// The refusal of a request the caller may not make, if it is one.
    pub fn refuse(&self, who: &Caller, msg: &Message) -> Option<(Kind, String, Message)> {
        let policy = self.policy.as_ref()?;
        let (kind, name) = target(msg)?;
        if policy.allows(who.as_deref(), kind, &name) {
            return None;
        }
        let id = jsonrpc::member(msg, "id").cloned().unwrap_or(Value::Null);
        let err = jsonrpc::error(
            id,
            code::INVALID_PARAMS,
            format!("{} `{name}` is not available to this caller", kind.as_str()),
            Some(json!({"reason": "access_denied"})),
        );
        Some((kind, name, err))
    }

    /// `reply` with list results narrowed to what the caller may see.
    pub fn filter(&self, who: &Caller, method: &str, reply: Reply) -> Reply {
        let Some(policy) = &self.policy else {
            return reply;
        };
        let Some((key, field, kind)) = listed(method) else {
            return reply;
        };
        match reply {
            Reply::Json(mut m) => {
                narrow(policy, who, &mut m, key, field, kind);
                Reply::Json(m)
            }
            Reply::Stream(mut rx) => {
                // The response ends the stream; what comes before it (progress, logs) passes.
                let (tx, out) = mpsc::channel(16);
                let who = who.clone();
                let policy = Arc::clone(policy);
                tokio::spawn(async move {
                    while let Some(mut m) = rx.recv().await {
                        narrow(&policy, &who, &mut m, key, field, kind);
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                Reply::Stream(out)
            }
            other => other,
        }
    }
}

/// The name a request touches.
pub fn target(msg: &Message) -> Option<(Kind, String)> {
    let p = jsonrpc::params(msg)?;
    let s = |v: &Value| v.as_str().map(str::to_owned);
    match jsonrpc::method(msg)? {
        "tools/call" => Some((Kind::Tool, s(jsonrpc::member(p, "name")?)?)),
        "prompts/get" => Some((Kind::Prompt, s(jsonrpc::member(p, "name")?)?)),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Some((Kind::Resource, s(jsonrpc::member(p, "uri")?)?))
        }
        "completion/complete" => {
            let r = p.get("ref")?;
            match r.get("type")?.as_str()? {
                "ref/prompt" => Some((Kind::Prompt, s(r.get("name")?)?)),
                "ref/resource" => Some((Kind::Resource, s(r.get("uri")?)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The list a method returns: result key, the field naming each item, its kind.
fn listed(method: &str) -> Option<(&'static str, &'static str, Kind)> {
    match method {
        "tools/list" => Some(("tools", "name", Kind::Tool)),
        "prompts/list" => Some(("prompts", "name", Kind::Prompt)),
        "resources/list" => Some(("resources", "uri", Kind::Resource)),
        "resources/templates/list" => Some(("resourceTemplates", "uriTemplate", Kind::Resource)),
        _ => None,
    }
}

fn narrow(policy: &Policy, who: &Caller, m: &mut Message, key: &str, field: &str, kind: Kind) {
    let Some(Value::Array(items)) = m.get_mut("result").and_then(|r| r.get_mut(key)) else {
        return;
    };
    items.retain(|item| {
        item.get(field)
            .and_then(Value::as_str)
            .is_some_and(|name| policy.allows(who.as_deref(), kind, name))
    });
}
