//! A legacy client in front of a legacy upstream: the request goes out as the client sent it
//! (names unprefixed), and what comes back is relayed by the one exchange loop with this
//! path's [`Shape`]: notifications renamed, server requests turned into requests to the
//! client, cancellation by `notifications/cancelled`. A client that goes away does not
//! cancel: what remains goes to its GET stream.

use std::sync::Arc;

use serde_json::Value;

use super::Reply;
use super::cancel::InflightGuard;
use super::exchange::{self, Relay, Sent, Shape, Step};
use crate::mcp::binding::Binding;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::session::Live;
use crate::mcp::upstream::{Connection, Exchange};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, code};

/// A legacy session's request to one upstream.
pub struct Call {
    pub b: Arc<Binding>,
    pub live: Arc<Live>,
    pub up: UpstreamIdx,
    pub id: Value,
    pub method: String,
    /// Transport headers for the upstream (the fencing token, when it takes it as a header).
    pub extra: Vec<(String, String)>,
}

impl Call {
    pub fn name(&self) -> &str {
        &self.b.upstreams[self.up].name
    }

    /// Sends the request on `conn` and relays what comes back. Its id must not be in flight
    /// in the session already (the specification forbids reusing one; the two would be
    /// indistinguishable to a cancellation).
    pub async fn run(self, conn: Connection, msg: Message) -> Reply {
        let inflight = &self.live.services.inflight;
        let Some((guard, cancelled)) = inflight.register(&self.live.id, &self.id) else {
            return Reply::Json(jsonrpc::error(
                self.id.clone(),
                code::INVALID_REQUEST,
                format!(
                    "a request with id {} is already in flight in this session; ids must be unique",
                    self.id
                ),
                None,
            ));
        };
        let deadline = tokio::time::Instant::now() + self.b.upstreams[self.up].timeout;
        let relay = match Relay::start(&conn, msg, &self.extra, deadline, Some(cancelled)).await {
            Ok(r) => r,
            Err(e) => {
                // The pinned endpoint of a pool refused the connection: the conversation is
                // closed, so the session's next request re-initialises on another endpoint.
                if matches!(e, Sent::NotReached(_)) && self.b.upstreams[self.up].members.len() > 1 {
                    conn.close().await;
                }
                return e.reply(self.id.clone(), self.name());
            }
        };
        let id = self.id.clone();
        let shape = Legacy {
            call: self,
            _running: guard,
        };
        exchange::reply(relay, shape, id).await
    }
}

/// The legacy path's shape; registered among the requests running here while it relays.
struct Legacy {
    call: Call,
    _running: InflightGuard,
}

impl Shape for Legacy {
    fn upstream(&self) -> &str {
        self.call.name()
    }

    async fn step(&self, _ex: &Exchange, mut m: Message) -> Step {
        let Call { b, live, up, .. } = &self.call;
        match jsonrpc::kind(&m) {
            Kind::Response => Step::Final(m),
            Kind::Notification => {
                b.naming.notification_out(*up, &mut m);
                Step::Relay(m)
            }
            Kind::Request => match live
                .services
                .server_requests
                .to_client_request(&live.id, self.upstream(), m)
                .await
            {
                Ok(m) => Step::Relay(m),
                Err(e) => {
                    tracing::warn!(session = %live.id, error = %e, "cannot relay a server request");
                    Step::Skip
                }
            },
            Kind::Invalid => Step::Skip,
        }
    }

    async fn finish(&self, _ex: Exchange, id: Value, m: Message) -> Message {
        let Call { b, up, method, .. } = &self.call;
        exchange::response_out(b, method, *up, id, m)
    }

    fn gone(&self) -> exchange::Gone {
        exchange::Gone::CarryOn
    }

    async fn undelivered(&self, m: Message) {
        let live = &self.call.live;
        live.services
            .delivery
            .deliver(&live.id, &live.events, &m)
            .await;
    }
}
