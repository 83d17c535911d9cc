//! A legacy client in front of a legacy upstream: the request goes out as the client sent it
//! (names unprefixed), and what comes back is relayed by the one exchange loop with this
//! path's [`Shape`]: notifications renamed, server requests turned into requests to the
//! client, cancellation by `notifications/cancelled`. A client that goes away does not
//! cancel: what remains goes to its GET stream.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;

use super::Reply;
use super::cancel::InflightGuard;
use super::exchange::{self, Relay, Sent, Shape, Step};
use crate::mcp::binding::Binding;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::session::Live;
use crate::mcp::upstream::pool::{Attempt, InFlight};
use crate::mcp::upstream::{Connection, Exchange};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, code};
use crate::mcp::wire::version::Era;

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
    /// indistinguishable to a cancellation). On a pool, a request that never left mcpg
    /// because the session's endpoint refused it is sent once more, on the endpoint the
    /// session re-initialises on (within the retry budget).
    pub async fn run(self, conn: Connection, msg: Message) -> Reply {
        let Some((guard, cancelled)) = self.register() else {
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
        let pool = &self.b.upstreams[self.up];
        let again = (pool.members.len() > 1).then(|| {
            // The retry budget is a share of all the pool's requests, sessions' included.
            pool.first_attempt();
            msg.clone()
        });
        let sent = match (self.send(&conn, msg, cancelled).await, again) {
            (Err(Sent::NotReached(e)), Some(msg)) => {
                // The pinned endpoint refused the connection: the conversation is closed,
                // so the session re-initialises on another endpoint.
                conn.close().await;
                drop(guard);
                self.send_again(msg, e).await
            }
            (r, _) => r.map(|(relay, in_flight)| (relay, in_flight, guard)),
        };
        let (relay, in_flight, guard) = match sent {
            Ok(s) => s,
            Err(e) => return e.reply(self.id.clone(), self.name()),
        };
        let id = self.id.clone();
        let shape = Legacy {
            call: self,
            _running: guard,
            _in_flight: in_flight,
        };
        exchange::reply(relay, shape, id).await
    }

    fn register(&self) -> Option<(InflightGuard, oneshot::Receiver<String>)> {
        self.live
            .services
            .inflight
            .register(&self.live.id, &self.id)
    }

    /// Sends the request on the session's conversation `conn` with its endpoint, counted
    /// there (and fed to the pool's outlier detection).
    async fn send(
        &self,
        conn: &Connection,
        msg: Message,
        cancelled: oneshot::Receiver<String>,
    ) -> Result<(Relay, InFlight), Sent> {
        let pool = &self.b.upstreams[self.up];
        let i = self.live.endpoint_index(self.up);
        let in_flight = pool.start(i);
        let deadline = tokio::time::Instant::now() + pool.timeout;
        let r = Relay::start(conn, msg, &self.extra, deadline, Some(cancelled)).await;
        let attempt = match &r {
            Ok(_) => Some(Attempt::Sent),
            Err(e) => e.attempt(),
        };
        if let Some(a) = attempt {
            pool.attempt(i, a);
        }
        r.map(|relay| (relay, in_flight))
    }

    /// The second try of a request its endpoint refused: on the conversation the session
    /// re-establishes (another endpoint, from its recorded handshake), if the retry budget
    /// allows and that conversation speaks the same era; else the first error.
    async fn send_again(
        &self,
        msg: Message,
        first: jsonrpc::RpcError,
    ) -> Result<(Relay, InFlight, InflightGuard), Sent> {
        let pool = &self.b.upstreams[self.up];
        if !pool.may_retry() {
            return Err(Sent::NotReached(first));
        }
        let (conn, era) = match self.live.conn_and_era(self.up).await {
            Ok((c, Era::Legacy)) => (c, Era::Legacy),
            _ => return Err(Sent::NotReached(first)),
        };
        self.live.fence().map_err(Sent::Failed)?;
        let Some((guard, cancelled)) = self.register() else {
            return Err(Sent::NotReached(first));
        };
        tracing::info!(session = %self.live.id, upstream = %pool.name, ?era, error = %first.message, "request not sent; sending it on the session's new endpoint");
        let (relay, in_flight) = self.send(&conn, msg, cancelled).await?;
        Ok((relay, in_flight, guard))
    }
}

/// The legacy path's shape; registered among the requests running here while it relays.
struct Legacy {
    call: Call,
    _running: InflightGuard,
    /// Counts the request in flight on its endpoint while the exchange lasts.
    _in_flight: InFlight,
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
