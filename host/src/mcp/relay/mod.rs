//! Relaying upstream exchanges to clients: what the gateway answers a client message with
//! ([`Reply`]), and the requests running here that a cancellation can stop ([`Inflight`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::mcp::binding::Context;
use crate::mcp::wire::jsonrpc::Message;

/// What the gateway answers a client message with.
pub enum Reply {
    /// One JSON-RPC response.
    Json(Message),
    /// Messages about the request, ending with its response (an SSE stream).
    Stream(mpsc::Receiver<Message>),
    /// A notification or response was taken (202).
    Accepted,
}

/// Requests running on this replica, by session and request id, so a cancellation arriving
/// on the `cancellation` bus can stop them.
#[derive(Default)]
pub struct Inflight {
    running: Mutex<HashMap<(String, String), oneshot::Sender<String>>>,
}

impl Inflight {
    pub(crate) fn register(
        ctx: &Arc<Context>,
        sid: &str,
        id: &Value,
    ) -> (InflightGuard, oneshot::Receiver<String>) {
        let (tx, rx) = oneshot::channel();
        let key = (sid.to_owned(), id.to_string());
        ctx.inflight
            .running
            .lock()
            .expect("lock")
            .insert(key.clone(), tx);
        (
            InflightGuard {
                ctx: ctx.clone(),
                key,
            },
            rx,
        )
    }

    /// Stops the request if it runs here.
    pub fn cancel(&self, sid: &str, id: &Value, reason: &str) -> bool {
        let tx = self
            .running
            .lock()
            .expect("lock")
            .remove(&(sid.to_owned(), id.to_string()));
        tx.is_some_and(|tx| tx.send(reason.to_owned()).is_ok())
    }
}

pub(crate) struct InflightGuard {
    ctx: Arc<Context>,
    key: (String, String),
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.ctx
            .inflight
            .running
            .lock()
            .expect("lock")
            .remove(&self.key);
    }
}
