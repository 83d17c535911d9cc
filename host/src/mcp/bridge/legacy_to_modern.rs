//! Legacy sessions in front of upstreams that speak only 2026-07-28: each request of the
//! session is stamped with the per-request `_meta` the client's `initialize` implies; an
//! input-required result is turned into server requests to the client (on the request's
//! SSE stream) and retried with the answers; `logging/setLevel` becomes the stamped log level;
//! `resources/subscribe` becomes a `subscriptions/listen` whose notifications reach the
//! session's GET stream.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::mcp::relay::Reply;
use crate::mcp::relay::exchange::{Call, response_out};
use crate::mcp::session::Live;
use crate::mcp::upstream::Connection;
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError, code};

/// How many input-required rounds one request may take before mcpg gives up.
const MAX_ROUNDS: usize = 16;

/// Adds the session's per-request `_meta` to a request.
fn stamp(msg: &mut Message, live: &Live) {
    live.stamp(jsonrpc::params_mut(msg));
}

/// A legacy session's request to an upstream that speaks only 2026-07-28.
pub async fn forward(call: Call, conn: Connection, mut msg: Message) -> Reply {
    if call.method == "resources/subscribe" || call.method == "resources/unsubscribe" {
        let r = subscription(&call.live, call.up, &call.method, &msg).await;
        return Reply::Json(match r {
            Ok(r) => jsonrpc::result(call.id, r),
            Err(e) => e.to_message(call.id),
        });
    }
    stamp(&mut msg, &call.live);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(call, conn, msg, tx));
    Reply::Stream(rx)
}

/// Runs the request's rounds: each input-required result is asked of the client as server
/// requests on the request's stream, and the request sent again with the answers.
async fn run(call: Call, conn: Connection, mut msg: Message, tx: mpsc::Sender<Message>) {
    let Call {
        b,
        live,
        up,
        id,
        method,
    } = call;
    let name = b.upstreams[up].name.clone();
    let deadline = tokio::time::Instant::now() + b.upstreams[up].timeout;
    let fail = |code: i64, message: String| jsonrpc::error(id.clone(), code, message, None);
    for _ in 0..MAX_ROUNDS {
        let mut ex = match conn.request(msg.clone()).await {
            Ok(ex) => ex,
            Err(e) => {
                let _ = tx.send(e.to_rpc().to_message(id.clone())).await;
                return;
            }
        };
        let response = loop {
            let m = tokio::select! {
                m = ex.next() => m,
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = tx.send(fail(code::REQUEST_TIMEOUT, format!("upstream `{name}` did not answer in time"))).await;
                    return;
                }
            };
            match m {
                None => {
                    let _ = tx
                        .send(fail(
                            code::CONNECTION_CLOSED,
                            format!("upstream `{name}` closed the connection before answering"),
                        ))
                        .await;
                    return;
                }
                Some(mut m) if jsonrpc::kind(&m) == Kind::Notification => {
                    b.naming.notification_out(up, &mut m);
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
                Some(m) if jsonrpc::kind(&m) == Kind::Response => break m,
                Some(_) => {}
            }
        };
        let result = response.get("result").cloned().unwrap_or(Value::Null);
        if result["resultType"] != "input_required" {
            let _ = tx.send(response_out(&b, &method, up, id, response)).await;
            return;
        }
        // Ask the client each input request as a server request, on this stream.
        let mut waits = Vec::new();
        let forget = |waits: &[(String, String, oneshot::Receiver<Message>)]| {
            let mut w = live.waiters.lock().expect("lock");
            for (_, gid, _) in waits {
                w.remove(gid);
            }
        };
        for (key, req) in result["inputRequests"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            let gid = format!("mcpg-{}", uuid::Uuid::new_v4().simple());
            let (wtx, wrx) = oneshot::channel();
            live.waiters.lock().expect("lock").insert(gid.clone(), wtx);
            let request = jsonrpc::request(
                json!(gid),
                req["method"].as_str().unwrap_or_default(),
                req.get("params").cloned(),
            );
            waits.push((key, gid, wrx));
            if tx.send(request).await.is_err() {
                forget(&waits);
                return;
            }
        }
        let mut answers = Map::new();
        let asked: Vec<String> = waits.iter().map(|(_, gid, _)| gid.clone()).collect();
        for (key, _, wrx) in waits {
            match tokio::time::timeout_at(deadline, wrx).await {
                Ok(Ok(answer)) => {
                    if let Some(r) = answer.get("result") {
                        answers.insert(key, r.clone());
                    }
                }
                _ => {
                    {
                        let mut w = live.waiters.lock().expect("lock");
                        for gid in &asked {
                            w.remove(gid);
                        }
                    }
                    let _ = tx
                        .send(fail(
                            code::REQUEST_TIMEOUT,
                            "the client did not answer the upstream's request in time".into(),
                        ))
                        .await;
                    return;
                }
            }
        }
        let p = jsonrpc::params_mut(&mut msg);
        p.insert("inputResponses".into(), Value::Object(answers));
        match result.get("requestState") {
            Some(s) => p.insert("requestState".into(), s.clone()),
            None => p.remove("requestState"),
        };
    }
    let _ = tx
        .send(fail(
            code::INTERNAL_ERROR,
            format!("upstream `{name}` asked for input more than {MAX_ROUNDS} times"),
        ))
        .await;
}

/// `resources/subscribe` / `unsubscribe` of a legacy session on an upstream that speaks
/// only 2026-07-28: the session's listen on that upstream is restarted with the new set of
/// URIs, and its notifications go to the session's GET stream.
async fn subscription(
    live: &Arc<Live>,
    up: usize,
    method: &str,
    msg: &Message,
) -> Result<Value, RpcError> {
    let uri = jsonrpc::params(msg)
        .and_then(|p| p.get("uri"))
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("`params.uri` is required"))?
        .to_owned();
    let conn = live.conn(up).await?;
    let uris = {
        let mut listens = live.listens.lock().expect("lock");
        let entry = listens.entry(up).or_insert_with(|| (Vec::new(), None));
        if method == "resources/subscribe" {
            if !entry.0.contains(&uri) {
                entry.0.push(uri);
            }
        } else {
            entry.0.retain(|u| *u != uri);
        }
        if let Some(h) = entry.1.take() {
            h.abort();
        }
        entry.0.clone()
    };
    live.mark_dirty();
    if uris.is_empty() {
        return Ok(json!({}));
    }
    live.watch(up, &conn, uris).await
}
