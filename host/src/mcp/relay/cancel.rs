//! Cancellation: a client's `notifications/cancelled` is published on the `cancellation`
//! bus (by its session), and whichever replica runs the request stops it; the requests running
//! here are kept by session and request id ([`Inflight`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::capabilities::Capability;

/// Requests running on this replica, by session and request id, so a cancellation arriving
/// on the `cancellation` bus can stop them.
#[derive(Default)]
pub struct Inflight {
    running: Mutex<HashMap<(String, String), oneshot::Sender<String>>>,
}

impl Inflight {
    /// Registers a request about to run here; `None` when one with the same id already runs
    /// in the session.
    pub(crate) fn register(
        self: &Arc<Self>,
        sid: &str,
        id: &Value,
    ) -> Option<(InflightGuard, oneshot::Receiver<String>)> {
        let (tx, rx) = oneshot::channel();
        let key = (sid.to_owned(), id.to_string());
        match self.running.lock().expect("lock").entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => return None,
            std::collections::hash_map::Entry::Vacant(v) => v.insert(tx),
        };
        Some((
            InflightGuard {
                inflight: self.clone(),
                key,
            },
            rx,
        ))
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
    inflight: Arc<Inflight>,
    key: (String, String),
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.inflight
            .running
            .lock()
            .expect("lock")
            .remove(&self.key);
    }
}

/// Runs cancellations arriving on the `cancellation` bus against requests running here.
pub fn spawn_listener(inflight: Arc<Inflight>, cancellation: Capability) {
    tokio::spawn(async move {
        let mut s = match cancellation.bus.subscribe("s.*").await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to cancellations; notifications/cancelled will not stop requests");
                return;
            }
        };
        while let Some(m) = s.next().await {
            let sid = m.subject.trim_start_matches("s.");
            let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            let reason = v["reason"].as_str().unwrap_or("cancelled by the client");
            if inflight.cancel(sid, &v["requestId"], reason) {
                tracing::debug!(session = %sid, request = %v["requestId"], "request cancelled");
            }
        }
    });
}
