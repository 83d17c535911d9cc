//! Where a client request goes, decided once for both eras: the route among the binding's
//! upstreams (one, all, or the one offering a name), then the [`Path`] the exchange takes by
//! the client's era and the era the upstream's conversation speaks.

use std::sync::Arc;

use serde_json::{Value, json};

use super::fanout::{self, Stateless};
use super::names::{self, Route, UpstreamIdx};
use super::path::Path;
use crate::config::model::FencingToken;
use crate::mcp::binding::Binding;
use crate::mcp::bridge::modern_to_legacy::{self, Bridge};
use crate::mcp::bridge::request_state::State;
use crate::mcp::bridge::{legacy_to_modern, listen};
use crate::mcp::relay::{Reply, legacy};
use crate::mcp::session::Live;
use crate::mcp::upstream::Conversations;
use crate::mcp::wire::jsonrpc::{self, Message, RpcError, code};
use crate::mcp::wire::version::Era;
use crate::mcp::wire::{headers, meta};

/// Who is asking, and where its upstream conversations come from.
pub enum Client<'a> {
    /// A legacy client, within its session.
    Session(&'a Arc<Live>),
    /// A 2026-07-28 client, served statelessly; with its `Mcp-Param-*` headers for upstreams
    /// that speak the revision.
    Stateless {
        bridge: &'a Arc<Bridge>,
        extra: Vec<(String, String)>,
    },
}

/// Answers one client request (already admitted and allowed).
pub async fn dispatch(b: &Arc<Binding>, client: Client<'_>, mut msg: Message) -> Reply {
    let id = jsonrpc::member(&msg, "id").cloned().unwrap_or(Value::Null);
    let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
    // A retry answering an input-required result carries mcpg's requestState.
    let mut state = None;
    if let Client::Stateless { bridge, .. } = &client {
        match stateless_only(b, bridge, &method, &id, &msg).await {
            Ok(s) => state = s,
            Err(Some(r)) => return r,
            Err(None) => return listen::listen(b, id, msg).await,
        }
    }
    let up = match target(b, &client, &method, &id, &mut msg).await {
        Ok(up) => up,
        Err(r) => return r,
    };
    match client {
        Client::Session(live) => {
            let (conn, era) = match live.conn_and_era(up).await {
                Ok(c) => c,
                Err(e) => return Reply::Json(e.to_message(id)),
            };
            // The last check before the request is handed to the upstream (the conversation
            // may have taken a reconnect to get): the session is still provably owned here.
            let token = match live.fence() {
                Ok(t) => t,
                Err(e) => return Reply::Json(e.to_message(id)),
            };
            let extra = fencing_token(b.upstreams[up].fencing(), token, &mut msg);
            let call = legacy::Call {
                b: b.clone(),
                live: live.clone(),
                up,
                id,
                method,
                extra,
            };
            match Path::of(Era::Legacy, era) {
                Path::Stamp => legacy_to_modern::forward(call, conn, msg).await,
                _ => call.run(conn, msg).await,
            }
        }
        Client::Stateless { bridge, extra } => {
            let ask = modern_to_legacy::Ask {
                up,
                id,
                method,
                state,
                extra,
            };
            modern_to_legacy::request(b, bridge, ask, msg).await
        }
    }
}

/// Tells the upstream the fencing token a session's request is sent under, as configured:
/// in `_meta`, or as a header (returned, for the transport).
pub(super) fn fencing_token(
    how: FencingToken,
    token: u64,
    msg: &mut Message,
) -> Vec<(String, String)> {
    match how {
        FencingToken::Off => Vec::new(),
        FencingToken::Meta => {
            let params = jsonrpc::params_mut(msg);
            let m = params
                .entry("_meta")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(m) = m.as_object_mut() {
                m.insert(meta::FENCING_TOKEN.into(), json!(token));
            }
            Vec::new()
        }
        FencingToken::Header => vec![(headers::FENCING_TOKEN.to_owned(), token.to_string())],
    }
}

fn answer(id: &Value, r: Result<Value, RpcError>) -> Reply {
    Reply::Json(match r {
        Ok(r) => jsonrpc::result(id.clone(), r),
        Err(e) => e.to_message(id.clone()),
    })
}

/// What only a 2026-07-28 client asks: methods the revision removed, `server/discover`,
/// `subscriptions/listen` (`Err(None)`: the caller serves it); otherwise the `requestState`
/// of a retry.
async fn stateless_only(
    b: &Binding,
    bridge: &Bridge,
    method: &str,
    id: &Value,
    msg: &Message,
) -> Result<Option<State>, Option<Reply>> {
    if modern_to_legacy::REMOVED.contains(&method) {
        return Err(Some(Reply::Json(modern_to_legacy::removed_error(
            id.clone(),
            method,
        ))));
    }
    match method {
        "server/discover" => return Err(Some(answer(id, Ok(fanout::discover(b).await)))),
        "subscriptions/listen" => return Err(None),
        _ => {}
    }
    modern_to_legacy::state_of(bridge, msg)
        .await
        .map_err(|e| Some(answer(id, Err(e))))
}

/// The one upstream a request goes to (names unprefixed in place), or the answer when it
/// concerns all of them (merged lists, broadcasts) or none.
async fn target(
    b: &Arc<Binding>,
    client: &Client<'_>,
    method: &str,
    id: &Value,
    msg: &mut Message,
) -> Result<UpstreamIdx, Reply> {
    let conv: &dyn Conversations = match client {
        Client::Session(live) => live.as_ref(),
        Client::Stateless { .. } => &Stateless(b),
    };
    let route = b.naming.route(msg).map_err(|e| answer(id, Err(e)))?;
    let up = match (route, client) {
        (Route::Local, Client::Session(_)) => return Err(answer(id, Ok(json!({})))),
        (Route::All, _) if names::list_key(method).is_some() => {
            let mut page = fanout::merged_list(b, conv, method, msg).await;
            if let (Ok(r), Client::Stateless { .. }) = (&mut page, client) {
                meta::complete(r);
                meta::cache_hints(r);
            }
            return Err(answer(id, page));
        }
        (Route::All, Client::Session(live)) => {
            return Err(Reply::Json(
                broadcast(b, live, id.clone(), msg.clone()).await,
            ));
        }
        (Route::Local | Route::All, Client::Stateless { .. }) => {
            return Err(Reply::Json(modern_to_legacy::removed_error(
                id.clone(),
                method,
            )));
        }
        (Route::One(up), _) => up,
        (Route::Search { list, name }, _) => match fanout::search(b, conv, list, &name).await {
            Some(up) => up,
            None => {
                let e = RpcError::invalid_params(format!("no upstream offers `{name}`"));
                return Err(answer(id, Err(e)));
            }
        },
    };
    if b.fail_closed()
        && let Err(e) = fanout::all_up(b, conv).await
    {
        return Err(answer(id, Err(e)));
    }
    Ok(up)
}

/// A request every upstream gets (`logging/setLevel`); answered once all have.
async fn broadcast(b: &Binding, live: &Live, id: Value, msg: Message) -> Message {
    let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
    let params = msg.get("params").cloned();
    for up in b.indices() {
        if method == "logging/setLevel" && live.is_modern(up).await {
            // 2026-07-28 has no setLevel: the level is stamped on the session's requests.
            *live.log_level.lock().expect("lock") =
                params.as_ref().and_then(|p| p.get("level")).cloned();
            live.mark_dirty();
            continue;
        }
        let r = match live.conn(up).await {
            Ok(conn) => {
                tokio::time::timeout(b.upstreams[up].timeout, conn.call(&method, params.clone()))
                    .await
                    .unwrap_or_else(|_| Err(RpcError::new(code::REQUEST_TIMEOUT, "timed out")))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r
            && (b.fail_closed() || b.upstreams.len() == 1)
        {
            return e.to_message(id);
        }
    }
    jsonrpc::result(id, json!({}))
}
