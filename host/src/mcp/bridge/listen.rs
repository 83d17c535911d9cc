//! `subscriptions/listen` for 2026-07-28 clients: one client subscription fanned out to every
//! upstream it concerns (a listen of their own on upstreams that speak 2026-07-28; the
//! bridging session's notifications, with `resources/subscribe` for the URIs, on legacy ones),
//! acknowledged with what the upstreams together honor, and merged into one stream.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::mcp::binding::Binding;
use crate::mcp::relay::Reply;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::upstream::{Connection, ModernHandle};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError};
use crate::mcp::wire::meta;

/// The notification a `subscriptions/listen` filter field asks for, for the boolean fields.
const LIST_FILTERS: &[(&str, &str, &str)] = &[
    (
        "toolsListChanged",
        "notifications/tools/list_changed",
        "tools",
    ),
    (
        "promptsListChanged",
        "notifications/prompts/list_changed",
        "prompts",
    ),
    (
        "resourcesListChanged",
        "notifications/resources/list_changed",
        "resources",
    ),
];

type Source = futures::stream::BoxStream<'static, Message>;

/// `subscriptions/listen`: one client subscription fanned out to every upstream it
/// concerns (a listen of their own on upstreams that speak 2026-07-28; the bridging
/// session's notifications, with `resources/subscribe` for the URIs, on legacy ones),
/// acknowledged with what the upstreams together honor, and merged into one stream whose
/// notifications carry the client's subscription id.
pub async fn listen(b: &Arc<Binding>, id: Value, msg: Message) -> Reply {
    let Some(filter) = jsonrpc::params(&msg)
        .and_then(|p| p.get("notifications"))
        .and_then(Value::as_object)
        .cloned()
    else {
        return Reply::Json(
            RpcError::invalid_params("`params.notifications` (a filter object) is required")
                .to_message(id),
        );
    };
    let client_meta = jsonrpc::params(&msg).and_then(|p| p.get("_meta")).cloned();
    let mut honored = Map::new();
    let mut sources: Vec<Source> = Vec::new();
    for up in b.indices() {
        let sub = sub_filter(b, &filter, up);
        if sub.is_empty() {
            continue;
        }
        let handle = match b.upstreams[up].modern().await {
            Ok(h) => h,
            Err(e) if !b.fail_closed() => {
                tracing::warn!(binding = %b.name, upstream = %b.upstreams[up].name, error = %e, "subscriptions/listen: upstream left out");
                continue;
            }
            Err(e) => return Reply::Json(e.to_message(id)),
        };
        let source = if handle.native {
            match native_source(b, up, &handle.conn, sub, client_meta.as_ref()).await {
                Ok(Some((h, source))) => {
                    merge_honored(b, &mut honored, up, &h);
                    source
                }
                Ok(None) => continue,
                Err(e) => return Reply::Json(e.to_message(id)),
            }
        } else {
            let (h, source) = bridged_source(&handle, &sub, b.upstreams[up].timeout).await;
            merge_honored(b, &mut honored, up, &h);
            source
        };
        // Which upstream each source belongs to, for prefixing.
        let me = b.clone();
        sources.push(
            source
                .map(move |mut m| {
                    me.naming.notification_out(up, &mut m);
                    m
                })
                .boxed(),
        );
    }
    let ack = jsonrpc::notification(
        "notifications/subscriptions/acknowledged",
        Some(json!({"_meta": {meta::SUBSCRIPTION_ID: id}, "notifications": honored})),
    );
    Reply::Stream(merged(ack, id, sources))
}

/// An upstream that speaks 2026-07-28 listens itself: its acknowledgement says what it
/// honors, and its notifications follow. `None` when it did not acknowledge (left out).
async fn native_source(
    b: &Binding,
    up: UpstreamIdx,
    conn: &Connection,
    sub: Map<String, Value>,
    client_meta: Option<&Value>,
) -> Result<Option<(Map<String, Value>, Source)>, RpcError> {
    let mut params = json!({"notifications": sub});
    if let Some(m) = client_meta {
        params["_meta"] = m.clone();
    }
    let req = jsonrpc::request(json!(0), "subscriptions/listen", Some(params));
    let mut ex = conn.request(req).await.map_err(|e| e.to_rpc())?;
    ex.cancel_on_drop();
    ex.set_unattributable();
    // The first message is the upstream's acknowledgement.
    let honored = match tokio::time::timeout(Duration::from_secs(10), ex.next()).await {
        Ok(Some(ack))
            if jsonrpc::method(&ack) == Some("notifications/subscriptions/acknowledged") =>
        {
            ack["params"]["notifications"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        }
        other => {
            let shown = format!("{other:?}");
            tracing::warn!(binding = %b.name, upstream = %b.upstreams[up].name, answer = %shown, "subscriptions/listen: no acknowledgement; upstream left out");
            return Ok(None);
        }
    };
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = ex.next() => m,
                // The merged stream is gone (the client left): dropping the exchange ends
                // the upstream listen.
                _ = tx.closed() => break,
            };
            match m {
                Some(m) if jsonrpc::kind(&m) == Kind::Notification => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    let source = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed();
    Ok(Some((honored, source)))
}

/// A legacy upstream, through the session bridging it: the list-changed notifications its
/// capabilities offer and the resources it lets the session subscribe to (the bridging session
/// is shared by every modern client, so it stays subscribed; mcpg filters what each client
/// asked for).
async fn bridged_source(
    handle: &ModernHandle,
    sub: &Map<String, Value>,
    timeout: Duration,
) -> (Map<String, Value>, Source) {
    let caps = &handle.info["capabilities"];
    let mut h = Map::new();
    for (field, _, cap) in LIST_FILTERS {
        if sub.get(*field) == Some(&json!(true)) && caps[*cap]["listChanged"] == true {
            h.insert((*field).into(), json!(true));
        }
    }
    let mut uris = Vec::new();
    if caps["resources"]["subscribe"] == true
        && let Some(list) = sub.get("resourceSubscriptions").and_then(Value::as_array)
    {
        for uri in list.iter().filter_map(Value::as_str) {
            let call = handle
                .conn
                .call("resources/subscribe", Some(json!({"uri": uri})));
            if tokio::time::timeout(timeout, call)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                uris.push(uri.to_owned());
            }
        }
        h.insert("resourceSubscriptions".into(), json!(uris));
    }
    let wanted: Vec<String> = LIST_FILTERS
        .iter()
        .filter(|(f, _, _)| h.get(*f) == Some(&json!(true)))
        .map(|(_, method, _)| (*method).to_owned())
        .collect();
    let rx = handle.conn.unsolicited();
    let stream = rx.into_stream().filter_map(move |m| {
        let keep = match &m {
            Ok(m) => match jsonrpc::method(m) {
                Some("notifications/resources/updated") => m["params"]["uri"]
                    .as_str()
                    .is_some_and(|u| uris.iter().any(|s| u.starts_with(s.as_str()))),
                Some(x) => wanted.iter().any(|w| w == x),
                None => false,
            },
            Err(_) => false,
        };
        futures::future::ready(if keep { m.ok() } else { None })
    });
    (h, stream.boxed())
}

/// One stream for the client: the acknowledgement, then every source's notifications with the
/// client's subscription id. The client closing its stream drops the sources, which ends the
/// upstream listens.
fn merged(ack: Message, id: Value, sources: Vec<Source>) -> mpsc::Receiver<Message> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if tx.send(ack).await.is_err() {
            return;
        }
        let mut all = futures::stream::select_all(sources);
        loop {
            let m = tokio::select! {
                m = all.next() => m,
                _ = tx.closed() => return,
            };
            let Some(mut m) = m else { return };
            let params = jsonrpc::params_mut(&mut m);
            let meta = params
                .entry("_meta")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(meta::SUBSCRIPTION_ID.into(), id.clone());
            }
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The part of a client's filter that concerns upstream `up` (names unprefixed).
fn sub_filter(b: &Binding, filter: &Map<String, Value>, up: UpstreamIdx) -> Map<String, Value> {
    let mut sub = Map::new();
    for (field, _, _) in LIST_FILTERS {
        if filter.get(*field) == Some(&json!(true)) {
            sub.insert((*field).into(), json!(true));
        }
    }
    let pick = |key: &str, by_uri: bool| -> Vec<Value> {
        filter
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|v| {
                if !b.naming.prefix {
                    return Some(v.to_owned());
                }
                let r = if by_uri {
                    b.naming.uri_in(v)
                } else {
                    b.naming.name_in(v)
                };
                r.filter(|(u, _)| *u == up).map(|(_, rest)| rest)
            })
            .map(Value::String)
            .collect()
    };
    let uris = pick("resourceSubscriptions", true);
    if !uris.is_empty() {
        sub.insert("resourceSubscriptions".into(), Value::Array(uris));
    }
    let tasks = pick("taskIds", false);
    if !tasks.is_empty() {
        sub.insert("taskIds".into(), Value::Array(tasks));
    }
    sub
}

/// Adds what one upstream honored to the acknowledgement (names prefixed back).
fn merge_honored(
    b: &Binding,
    into: &mut Map<String, Value>,
    up: UpstreamIdx,
    h: &Map<String, Value>,
) {
    for (k, v) in h {
        match v {
            Value::Bool(true) => {
                into.insert(k.clone(), json!(true));
            }
            Value::Array(items) => {
                let list = into
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(list) = list.as_array_mut() {
                    for i in items.iter().filter_map(Value::as_str) {
                        let name = match (b.naming.prefix, k.as_str()) {
                            (false, _) => i.to_owned(),
                            (true, "resourceSubscriptions") => {
                                format!("{}+{i}", b.upstreams[up].name)
                            }
                            (true, _) => {
                                format!("{}{}{i}", b.upstreams[up].name, b.naming.sep)
                            }
                        };
                        list.push(json!(name));
                    }
                }
            }
            _ => {}
        }
    }
}
