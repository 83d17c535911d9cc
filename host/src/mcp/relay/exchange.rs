//! The exchange loop of a legacy client in front of a legacy upstream: the request is sent,
//! and what the upstream sends back for it (progress, log messages, server requests, the
//! response) is relayed under the gateway's deadline and the client's cancellation, as plain
//! JSON when the response comes first, else as an SSE stream. A client that goes away does not
//! cancel: what remains goes to its GET stream.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::Reply;
use crate::mcp::binding::Binding;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::session::Live;
use crate::mcp::upstream::{Connection, Exchange};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, code};

/// A legacy session's request to one upstream of its own era.
pub struct Call {
    pub b: Arc<Binding>,
    pub live: Arc<Live>,
    pub up: UpstreamIdx,
    pub id: Value,
    pub method: String,
}

impl Call {
    fn name(&self) -> &str {
        &self.b.upstreams[self.up].name
    }

    /// Sends the request on `conn` and relays what comes back.
    pub async fn run(self, conn: Connection, msg: Message) -> Reply {
        // The deadline covers sending too: a JSON answer arrives while the request is sent.
        let deadline = tokio::time::Instant::now() + self.b.upstreams[self.up].timeout;
        let mut ex = match tokio::time::timeout_at(deadline, conn.request(msg)).await {
            Ok(Ok(ex)) => ex,
            Ok(Err(e)) => return Reply::Json(e.to_rpc().to_message(self.id)),
            Err(_) => return Reply::Json(timeout_error(self.id.clone(), self.name())),
        };
        let (guard, mut cancelled) = self
            .live
            .services
            .inflight
            .register(&self.live.id, &self.id);
        // Answer with plain JSON when the response is the first thing back; switch to a
        // stream as soon as anything else arrives first.
        let first = tokio::select! {
            m = ex.next() => m,
            _ = tokio::time::sleep_until(deadline) => {
                ex.cancel("request timed out at the gateway").await;
                return Reply::Json(timeout_error(self.id.clone(), self.name()));
            }
            r = &mut cancelled => {
                ex.cancel(r.as_deref().unwrap_or("cancelled by the client")).await;
                // A cancelled request gets no response: an SSE stream that ends at once.
                return Reply::Stream(mpsc::channel(1).1);
            }
        };
        let Some(first) = first else {
            return Reply::Json(closed_error(self.id.clone(), self.name()));
        };
        if jsonrpc::kind(&first) == Kind::Response {
            return Reply::Json(response_out(&self.b, &self.method, self.up, self.id, first));
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let _guard = guard;
            let relay = Relay {
                ex,
                deadline,
                cancelled,
                tx,
            };
            self.pump(relay, first).await;
        });
        Reply::Stream(rx)
    }

    /// Relays an exchange to the client's response stream until its response. If the client
    /// goes away, what remains is delivered to its GET stream instead (a dropped legacy
    /// stream is not a cancellation).
    async fn pump(self, mut r: Relay, first: Message) {
        let (b, live, up) = (&self.b, &self.live, self.up);
        let mut next = Some(first);
        loop {
            let m = match next.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = r.ex.next() => match m {
                        Some(m) => m,
                        None => closed_error(self.id.clone(), self.name()),
                    },
                    _ = tokio::time::sleep_until(r.deadline) => {
                        r.ex.cancel("request timed out at the gateway").await;
                        timeout_error(self.id.clone(), self.name())
                    }
                    reason = &mut r.cancelled => {
                        r.ex.cancel(reason.as_deref().unwrap_or("cancelled by the client")).await;
                        return;
                    }
                },
            };
            let (out, done) = match jsonrpc::kind(&m) {
                Kind::Response => (response_out(b, &self.method, up, self.id.clone(), m), true),
                Kind::Notification => {
                    let mut m = m;
                    b.naming.notification_out(up, &mut m);
                    (m, false)
                }
                Kind::Request => match live
                    .services
                    .server_requests
                    .to_client_request(&live.id, self.name(), m)
                    .await
                {
                    Ok(m) => (m, false),
                    Err(e) => {
                        tracing::warn!(session = %live.id, error = %e, "cannot relay a server request");
                        continue;
                    }
                },
                Kind::Invalid => continue,
            };
            if let Err(unsent) = r.tx.send(out).await {
                live.services
                    .delivery
                    .deliver(&live.id, &live.events, &unsent.0)
                    .await;
            }
            if done {
                return;
            }
        }
    }
}

/// An exchange being relayed to a client's stream.
struct Relay {
    ex: Exchange,
    deadline: tokio::time::Instant,
    cancelled: oneshot::Receiver<String>,
    tx: mpsc::Sender<Message>,
}

/// An upstream's response as the client sees it: under the client's id, names prefixed.
pub fn response_out(
    b: &Binding,
    method: &str,
    up: UpstreamIdx,
    id: Value,
    mut m: Message,
) -> Message {
    m.insert("id".into(), id);
    if let Some(r) = m.get_mut("result") {
        b.naming.result_out(method, up, r);
    }
    m
}

pub fn timeout_error(id: Value, upstream: &str) -> Message {
    jsonrpc::error(
        id,
        code::REQUEST_TIMEOUT,
        format!("upstream `{upstream}` did not answer in time"),
        None,
    )
}

pub fn closed_error(id: Value, upstream: &str) -> Message {
    jsonrpc::error(
        id,
        code::CONNECTION_CLOSED,
        format!("upstream `{upstream}` closed the connection before answering"),
        None,
    )
}
