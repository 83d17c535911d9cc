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
use crate::mcp::relay::exchange::{self, End, Relay, Shape, Step, response_out};
use crate::mcp::relay::legacy::Call;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::session::Live;
use crate::mcp::upstream::pool::Attempt;
use crate::mcp::upstream::{Connection, Exchange};
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
    // Named in the audit record here: the rounds run in a task of their own.
    call.b.upstreams[call.up].note_endpoint(call.live.endpoint_index(call.up));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(call, conn, msg, tx));
    Reply::Stream(rx)
}

/// What stops a round early: a message to end the client's stream with, or nothing (the
/// client is gone).
type Stop = Option<Message>;

/// Runs the request's rounds: each input-required result is asked of the client as server
/// requests on the request's stream, and the request sent again with the answers.
async fn run(call: Call, conn: Connection, mut msg: Message, tx: mpsc::Sender<Message>) {
    let deadline = tokio::time::Instant::now() + call.b.upstreams[call.up].timeout;
    let stop = async |stop: Stop| {
        if let Some(m) = stop {
            let _ = tx.send(m).await;
        }
    };
    for _ in 0..MAX_ROUNDS {
        let response = match round(&call, &conn, &msg, deadline, &tx).await {
            Ok(r) => r,
            Err(s) => return stop(s).await,
        };
        let result = response.get("result").cloned().unwrap_or(Value::Null);
        if result["resultType"] != "input_required" {
            let out = response_out(&call.b, &call.method, call.up, call.id, response);
            return stop(Some(out)).await;
        }
        let answers = match ask(&call, &result, deadline, &tx).await {
            Ok(a) => a,
            Err(s) => return stop(s).await,
        };
        let p = jsonrpc::params_mut(&mut msg);
        p.insert("inputResponses".into(), Value::Object(answers));
        match result.get("requestState") {
            Some(s) => p.insert("requestState".into(), s.clone()),
            None => p.remove("requestState"),
        };
    }
    let name = &call.b.upstreams[call.up].name;
    let message = format!("upstream `{name}` asked for input more than {MAX_ROUNDS} times");
    stop(Some(jsonrpc::error(
        call.id,
        code::INTERNAL_ERROR,
        message,
        None,
    )))
    .await
}

/// One round: the request sent, its notifications relayed to the client, its response.
async fn round(
    call: &Call,
    conn: &Connection,
    msg: &Message,
    deadline: tokio::time::Instant,
    tx: &mpsc::Sender<Message>,
) -> Result<Message, Stop> {
    let shape = Round(call);
    // Counted on the session's endpoint (and fed to outlier detection) while it runs.
    let pool = &call.b.upstreams[call.up];
    let i = call.live.endpoint_index(call.up);
    let _in_flight = pool.start(i);
    let started = Relay::start(conn, msg.clone(), &call.extra, deadline, None).await;
    if let Some(a) = started
        .as_ref()
        .map_or_else(|e| e.attempt(), |_| Some(Attempt::Sent))
    {
        pool.attempt(i, a);
    }
    let mut relay = started.map_err(|e| Some(e.to_message(call.id.clone(), call.name())))?;
    loop {
        match relay.next(&shape).await {
            Ok(m) => {
                if tx.send(m).await.is_err() {
                    return Err(None);
                }
            }
            Err(End::Final(m)) => return Ok(m),
            Err(End::TimedOut) => {
                return Err(Some(exchange::timeout_error(call.id.clone(), call.name())));
            }
            Err(End::Closed | End::Cancelled) => {
                return Err(Some(exchange::closed_error(call.id.clone(), call.name())));
            }
        }
    }
}

/// The shape of one round: notifications relayed (renamed), the response ends it; the
/// upstream speaks 2026-07-28, so it asks the client things only through input-required
/// results, never with requests.
struct Round<'a>(&'a Call);

impl Shape for Round<'_> {
    fn upstream(&self) -> &str {
        self.0.name()
    }

    async fn step(&self, _ex: &Exchange, mut m: Message) -> Step {
        match jsonrpc::kind(&m) {
            Kind::Notification => {
                self.0.b.naming.notification_out(self.0.up, &mut m);
                Step::Relay(m)
            }
            Kind::Response => Step::Final(m),
            Kind::Request | Kind::Invalid => Step::Skip,
        }
    }

    async fn finish(&self, _ex: Exchange, _id: Value, m: Message) -> Message {
        m
    }
}

/// Asks the client each input request of an input-required result as a server request on
/// the request's stream, and waits for the answers (by the request's deadline).
async fn ask(
    call: &Call,
    result: &Value,
    deadline: tokio::time::Instant,
    tx: &mpsc::Sender<Message>,
) -> Result<Map<String, Value>, Stop> {
    let live = &call.live;
    let forget = |gids: &[String]| {
        let mut w = live.waiters.lock().expect("lock");
        for gid in gids {
            w.remove(gid);
        }
    };
    let mut waits = Vec::new();
    let mut asked = Vec::new();
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
        waits.push((key, wrx));
        asked.push(gid);
        if tx.send(request).await.is_err() {
            forget(&asked);
            return Err(None);
        }
    }
    let mut answers = Map::new();
    for (key, wrx) in waits {
        match tokio::time::timeout_at(deadline, wrx).await {
            Ok(Ok(answer)) => {
                if let Some(r) = answer.get("result") {
                    answers.insert(key, r.clone());
                }
            }
            _ => {
                forget(&asked);
                return Err(Some(jsonrpc::error(
                    call.id.clone(),
                    code::REQUEST_TIMEOUT,
                    "the client did not answer the upstream's request in time",
                    None,
                )));
            }
        }
    }
    Ok(answers)
}

/// `resources/subscribe` / `unsubscribe` of a legacy session on an upstream that speaks
/// only 2026-07-28: the session's listen on that upstream is restarted with the new set of
/// URIs, and its notifications go to the session's GET stream.
async fn subscription(
    live: &Arc<Live>,
    up: UpstreamIdx,
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
