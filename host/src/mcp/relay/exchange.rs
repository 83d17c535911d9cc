//! The one exchange loop every era path runs: a request sent under the gateway's deadline, then
//! what the upstream sends back for it (progress, log messages, server requests, the response)
//! read under that deadline and the client's cancellation, each message shaped by the path's
//! [`Shape`], answered as plain JSON when the response comes first, else as an SSE stream.

use std::future::Future;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Reply;
use crate::mcp::binding::Binding;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::upstream::pool::Attempt;
use crate::mcp::upstream::{Connection, Exchange, UpstreamError};
use crate::mcp::wire::jsonrpc::{self, Message, code};

/// What a path does with one message the upstream sent for the request.
pub enum Step {
    /// Relay it to the client (already shaped) before the response.
    Relay(Message),
    /// Drop it (filtered, or answered on the client's behalf).
    Skip,
    /// It ends the exchange: the client's reply is made from it by [`Shape::finish`].
    Final(Message),
}

/// What the client's stream going away means for the exchange.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The exchange stops (dropping it cancels it upstream where the path asked for that).
    Stop,
    /// The exchange carries on; what it relays goes to [`Shape::undelivered`].
    CarryOn,
}

/// How one era path shapes what an upstream sends for a request. The loop itself is the
/// same for all: [`Relay::next`] and [`reply`].
pub trait Shape: Send + Sync {
    /// The upstream's name, for the errors that end an unfinished exchange.
    fn upstream(&self) -> &str;

    /// What to do with a message the upstream sent for the request.
    fn step(&self, ex: &Exchange, m: Message) -> impl Future<Output = Step> + Send;

    /// The message that ends the client's reply, made from the [`Step::Final`] message.
    fn finish(&self, ex: Exchange, id: Value, m: Message) -> impl Future<Output = Message> + Send;

    /// What the client's stream going away means.
    fn gone(&self) -> Gone {
        Gone::Stop
    }

    /// A message the client's stream could not take, under [`Gone::CarryOn`].
    fn undelivered(&self, m: Message) -> impl Future<Output = ()> + Send {
        let _ = m;
        async {}
    }
}

/// How an exchange ended without a message to relay.
pub enum End {
    /// The final message ([`Step::Final`]).
    Final(Message),
    /// The gateway's deadline passed.
    TimedOut,
    /// The upstream closed the connection (or the exchange's stream) after the request was
    /// sent and before answering: it may or may not have run.
    Closed,
    /// The client cancelled the request (`notifications/cancelled`).
    Cancelled,
}

/// An upstream exchange being read under a deadline and, optionally, the client's
/// cancellation.
pub struct Relay {
    ex: Exchange,
    deadline: Instant,
    cancelled: Option<oneshot::Receiver<String>>,
    /// Whether the upstream is told (`notifications/cancelled`) when the deadline passes or
    /// the client cancels; otherwise dropping the exchange is what tells it, if anything.
    tell: bool,
}

impl Relay {
    /// Sends `msg` (with the client's forwarded `extra` headers) on `conn` under `deadline`,
    /// which covers sending too: a JSON answer arrives while the request is sent. With
    /// `cancelled`, the client's cancellation ends the exchange from the moment it is sent
    /// (an upstream that answers with JSON is still sending when it comes), and the upstream
    /// is told when it ends early.
    pub async fn start(
        conn: &Connection,
        msg: Message,
        extra: &[(String, String)],
        deadline: Instant,
        mut cancelled: Option<oneshot::Receiver<String>>,
    ) -> Result<Self, Sent> {
        let sending = tokio::time::timeout_at(deadline, conn.request_with(msg, extra));
        tokio::pin!(sending);
        let sent = tokio::select! {
            sent = &mut sending => sent,
            r = wait(&mut cancelled) => match r {
                // Dropping the request being sent tells the upstream (`Connection::request_with`).
                Ok(_) => return Err(Sent::Cancelled),
                Err(_) => {
                    cancelled = None;
                    sending.await
                }
            },
        };
        match sent {
            Ok(Ok(ex)) => Ok(Self {
                ex,
                deadline,
                tell: cancelled.is_some(),
                cancelled,
            }),
            Ok(Err(e)) if e.not_reached() => Err(Sent::NotReached(e.to_rpc())),
            Ok(Err(e)) => Err(Sent::Failed(e.to_rpc())),
            Err(_) => Err(Sent::TimedOut),
        }
    }

    /// An exchange already under way (a parked one, resumed).
    pub fn new(ex: Exchange, deadline: Instant) -> Self {
        Self {
            ex,
            deadline,
            cancelled: None,
            tell: false,
        }
    }

    /// Dropping the exchange before its response tells the upstream to stop: a modern client
    /// cancels by closing its stream.
    pub fn cancel_on_drop(&mut self) {
        self.ex.cancel_on_drop();
    }

    /// The next message to relay, or how the exchange ended.
    pub async fn next<S: Shape>(&mut self, shape: &S) -> Result<Message, End> {
        loop {
            let cancelled = wait(&mut self.cancelled);
            let m = tokio::select! {
                m = self.ex.next() => m,
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.stop("request timed out at the gateway").await;
                    return Err(End::TimedOut);
                }
                reason = cancelled => match reason {
                    Ok(reason) => {
                        self.stop(&reason).await;
                        return Err(End::Cancelled);
                    }
                    // Nobody can cancel it any more.
                    Err(_) => {
                        self.cancelled = None;
                        continue;
                    }
                },
            };
            let Some(m) = m else {
                return Err(End::Closed);
            };
            match shape.step(&self.ex, m).await {
                Step::Relay(m) => return Ok(m),
                Step::Skip => {}
                Step::Final(m) => return Err(End::Final(m)),
            }
        }
    }

    async fn stop(&self, reason: &str) {
        if self.tell {
            self.ex.cancel(reason).await;
        }
    }

    /// The error that ends an exchange which stopped without a response (`None` for a
    /// cancelled one: it gets no response).
    fn unfinished(end: End, id: Value, upstream: &str) -> Option<Message> {
        match end {
            End::TimedOut => Some(timeout_error(id, upstream)),
            End::Closed => Some(closed_error(id, upstream)),
            End::Cancelled | End::Final(_) => None,
        }
    }

    /// Relays to `tx` until the exchange ends, starting with `first`.
    async fn stream<S: Shape>(mut self, shape: S, id: Value, first: Message, tx: Tx) {
        let mut next = Ok(first);
        loop {
            let m = match next {
                Ok(m) => m,
                Err(End::Final(m)) => {
                    let out = shape.finish(self.ex, id, m).await;
                    if let Err(unsent) = tx.send(out).await {
                        shape.undelivered(unsent.0).await;
                    }
                    return;
                }
                Err(end) => {
                    if let Some(out) = Self::unfinished(end, id, shape.upstream())
                        && let Err(unsent) = tx.send(out).await
                    {
                        shape.undelivered(unsent.0).await;
                    }
                    return;
                }
            };
            if let Err(unsent) = tx.send(m).await {
                match shape.gone() {
                    Gone::Stop => return,
                    Gone::CarryOn => shape.undelivered(unsent.0).await,
                }
            }
            next = match shape.gone() {
                Gone::CarryOn => self.next(&shape).await,
                Gone::Stop => tokio::select! {
                    n = self.next(&shape) => n,
                    // The client closed its stream: dropping the exchange cancels it.
                    _ = tx.closed() => return,
                },
            };
        }
    }
}

type Tx = mpsc::Sender<Message>;

/// The client's cancellation, if it can still come (never, without one).
async fn wait(
    cancelled: &mut Option<oneshot::Receiver<String>>,
) -> Result<String, oneshot::error::RecvError> {
    match cancelled.as_mut() {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Why a request was not sent, or not all of it.
pub enum Sent {
    Failed(jsonrpc::RpcError),
    /// It never left mcpg (connection refused or already closed): safe to send elsewhere.
    NotReached(jsonrpc::RpcError),
    TimedOut,
    /// The client cancelled it while it was being sent.
    Cancelled,
}

impl Sent {
    /// What this says about the endpoint it was sent to (nothing for a cancellation).
    pub fn attempt(&self) -> Option<Attempt> {
        match self {
            Sent::Failed(_) => Some(Attempt::Failed),
            Sent::NotReached(_) => Some(Attempt::NotReached),
            Sent::TimedOut => Some(Attempt::TimedOut),
            Sent::Cancelled => None,
        }
    }

    /// The client's reply to a request that could not be sent to `upstream` (a cancelled
    /// request gets no response: an SSE stream that ends at once).
    pub fn reply(self, id: Value, upstream: &str) -> Reply {
        match self {
            Sent::Failed(e) | Sent::NotReached(e) => Reply::Json(e.to_message(id)),
            Sent::TimedOut => Reply::Json(timeout_error(id, upstream)),
            Sent::Cancelled => Reply::Stream(mpsc::channel(1).1),
        }
    }

    /// The message ending a round of a request that could not be sent to `upstream`.
    pub fn to_message(self, id: Value, upstream: &str) -> Message {
        match self {
            Sent::Failed(e) | Sent::NotReached(e) => e.to_message(id),
            Sent::TimedOut => timeout_error(id, upstream),
            Sent::Cancelled => closed_error(id, upstream),
        }
    }
}

/// The client's reply to an exchange: plain JSON when the response is the first thing back,
/// a stream as soon as anything else arrives first (relayed by a task of its own).
pub async fn reply<S: Shape + 'static>(mut relay: Relay, shape: S, id: Value) -> Reply {
    match relay.next(&shape).await {
        Ok(first) => {
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(relay.stream(shape, id, first, tx));
            Reply::Stream(rx)
        }
        Err(End::Final(m)) => Reply::Json(shape.finish(relay.ex, id, m).await),
        // A cancelled request gets no response: an SSE stream that ends at once.
        Err(End::Cancelled) => Reply::Stream(mpsc::channel(1).1),
        Err(end) => match Relay::unfinished(end, id, shape.upstream()) {
            Some(m) => Reply::Json(m),
            None => Reply::Stream(mpsc::channel(1).1),
        },
    }
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

/// The answer to a request whose exchange ended without a response after it was sent: the
/// outcome is unknown, and the client is told so (a request that never left mcpg gets its
/// own error, which says so).
pub fn closed_error(id: Value, upstream: &str) -> Message {
    jsonrpc::error(
        id,
        code::CONNECTION_CLOSED,
        UpstreamError::Lost(upstream.to_owned()).to_string(),
        None,
    )
}
