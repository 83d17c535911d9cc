//! Delivery to a legacy session's GET stream, wherever the stream is held: each message is
//! numbered with the session's next event id, kept in the session's event log (bounded by
//! count and age) for `Last-Event-ID` resumption, and published on the `delivery` bus, which
//! the replica holding the stream reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::capabilities::Capability;
use crate::mcp::wire::jsonrpc::{Message, RpcError, code};

/// The `delivery` capability and the bounds of each session's event log.
pub struct Delivery {
    cap: Capability,
    max_events: u64,
    max_age: Duration,
}

impl Delivery {
    pub fn new(cap: Capability, max_events: u64, max_age: Duration) -> Self {
        Self {
            cap,
            max_events,
            max_age,
        }
    }

    /// Sends a message to the client's GET stream, wherever it is held: numbered with the
    /// session's next event id, kept in the session's event log (bounded by count and age) for
    /// `Last-Event-ID` resumption, and published on the `delivery` bus.
    pub async fn deliver(&self, sid: &str, seq: &AtomicU64, m: &Message) {
        let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = serde_json::to_vec(&json!({"seq": n, "message": m})).expect("serialisable");
        let delivery = &self.cap;
        let logged = delivery
            .store
            .put(&log_key(sid, n), payload.clone(), Some(self.max_age))
            .await;
        if let Err(e) = logged {
            tracing::warn!(session = %sid, error = %e, "cannot keep a message for resumption");
        }
        if n > self.max_events {
            let _ = delivery
                .store
                .delete(&log_key(sid, n - self.max_events), None)
                .await;
        }
        if let Err(e) = delivery.bus.publish(&format!("s.{sid}"), payload).await {
            tracing::warn!(session = %sid, error = %e, "cannot deliver a message to the client");
        }
    }

    /// The messages for one session's GET stream, with their event ids: those after
    /// `last_event_id` still in the log first (a resumption), then new ones as they come.
    /// With them, the stream's starting position: the event id a client that reconnects
    /// before any message came should resume from (the newest message in the log when the
    /// stream is not a resumption), so that what was delivered in between is replayed.
    pub async fn stream(
        &self,
        sid: &str,
        last_event_id: Option<u64>,
    ) -> Result<(u64, futures::stream::BoxStream<'static, (u64, Message)>), RpcError> {
        let delivery = &self.cap;
        let err = |e: mcpg_plugin_api::coordinator::CoordError| {
            RpcError::new(code::INTERNAL_ERROR, e.to_string())
        };
        // Subscribe before reading the log, so nothing falls between the two.
        let live = delivery
            .bus
            .subscribe(&format!("s.{sid}"))
            .await
            .map_err(err)?;
        let logged = delivery
            .store
            .list(&format!("log/{sid}/"))
            .await
            .map_err(err)?;
        // Numbered by key (`log_key`): the messages are parsed only to be replayed.
        let numbered = logged.iter().filter_map(|e| Some((logged_seq(&e.key)?, e)));
        let Some(last) = last_event_id else {
            // Not a resumption: only what comes next; a message that came between the
            // subscription and the listing is given live (its id may be below the head).
            let head = numbered.map(|(n, _)| n).max().unwrap_or(0);
            return Ok((head, live_after(live, 0)));
        };
        let mut replay: Vec<(u64, Message)> = numbered
            .filter(|(n, _)| *n > last)
            .filter_map(|(_, e)| parse_event(&e.value))
            .collect();
        replay.sort_by_key(|(n, _)| *n);
        let floor = replay.last().map_or(last, |(n, _)| *n);
        Ok((
            floor,
            futures::stream::iter(replay)
                .chain(live_after(live, floor))
                .boxed(),
        ))
    }
}

/// The bus's messages for a stream numbered above `floor` (those at or below it were replayed).
fn live_after(
    live: futures::stream::BoxStream<'static, mcpg_plugin_api::coordinator::Message>,
    floor: u64,
) -> futures::stream::BoxStream<'static, (u64, Message)> {
    live.filter_map(move |m| async move { parse_event(&m.payload).filter(|(n, _)| *n > floor) })
        .boxed()
}

fn log_key(sid: &str, n: u64) -> String {
    format!("log/{sid}/{n:016x}")
}

/// The number a [`log_key`] ends with.
fn logged_seq(key: &str) -> Option<u64> {
    u64::from_str_radix(key.rsplit('/').next()?, 16).ok()
}

fn parse_event(bytes: &[u8]) -> Option<(u64, Message)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let n = v.get("seq")?.as_u64()?;
    match v.get("message")? {
        Value::Object(m) => Some((n, m.clone())),
        _ => None,
    }
}
