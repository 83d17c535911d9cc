//! Building blocks every backend needs the same way: lease and presence handles whose
//! background work stops when they are released or dropped, streams over channels, and the
//! peer-set diff that turns "who is live now" into join and leave events.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};

use crate::coordinator::{CoordResult, Lease, Peer, PeerEvent, Presence};

/// A stream over a channel's receiver.
pub fn receiver_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// The join and leave events between the peer set `known` and `now`; updates `known`.
pub fn peer_changes(
    known: &mut BTreeMap<String, String>,
    now: BTreeMap<String, String>,
) -> Vec<PeerEvent> {
    let mut events: Vec<PeerEvent> = now
        .iter()
        .filter(|(id, _)| !known.contains_key(*id))
        .map(|(id, meta)| {
            PeerEvent::Up(Peer {
                node_id: id.clone(),
                meta: meta.clone(),
            })
        })
        .collect();
    events.extend(
        known
            .keys()
            .filter(|id| !now.contains_key(*id))
            .map(|id| PeerEvent::Down {
                node_id: id.clone(),
            }),
    );
    *known = now;
    events
}

/// What a backend's renewal task holds: where to report loss, and when to stop.
pub struct LeaseSignals {
    /// Send `true` when the lease is lost.
    pub lost: watch::Sender<bool>,
    /// Changes when the holder releases or drops the lease: stop renewing.
    pub stop: watch::Receiver<bool>,
}

type Action = Box<dyn Fn() -> BoxFuture<'static, CoordResult<()>> + Send + Sync>;

/// A held lease: the token and TTL, the loss signal, and the backend's release action. Dropping
/// it stops renewal without releasing (the lease then expires by TTL, as a crashed holder's
/// would).
pub struct HeldLease {
    name: String,
    token: u64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    release: Action,
}

impl HeldLease {
    /// A handle, and the signals for the backend's renewal task.
    pub fn new(
        name: &str,
        token: u64,
        ttl: Duration,
        release: impl Fn() -> BoxFuture<'static, CoordResult<()>> + Send + Sync + 'static,
    ) -> (Self, LeaseSignals) {
        let (lost_tx, lost_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = watch::channel(false);
        (
            Self {
                name: name.to_owned(),
                token,
                ttl,
                lost: lost_rx,
                stop: stop_tx,
                release: Box::new(release),
            },
            LeaseSignals {
                lost: lost_tx,
                stop: stop_rx,
            },
        )
    }
}

#[async_trait]
impl Lease for HeldLease {
    fn name(&self) -> &str {
        &self.name
    }

    fn token(&self) -> u64 {
        self.token
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|l| *l).await;
    }

    async fn release(&self) -> CoordResult<()> {
        let _ = self.stop.send(true);
        (self.release)().await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A registered presence: its refresh task stops on deregistration or drop (then it expires by
/// TTL).
pub struct HeldPresence {
    stop: watch::Sender<bool>,
    deregister: Action,
}

impl HeldPresence {
    /// A handle, and the receiver the backend's refresh task stops on.
    pub fn new(
        deregister: impl Fn() -> BoxFuture<'static, CoordResult<()>> + Send + Sync + 'static,
    ) -> (Self, watch::Receiver<bool>) {
        let (stop, stopped) = watch::channel(false);
        (
            Self {
                stop,
                deregister: Box::new(deregister),
            },
            stopped,
        )
    }
}

#[async_trait]
impl Presence for HeldPresence {
    async fn deregister(&self) -> CoordResult<()> {
        let _ = self.stop.send(true);
        (self.deregister)().await
    }
}

impl Drop for HeldPresence {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_changes_reports_joins_and_leaves() {
        let mut known: BTreeMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let now: BTreeMap<String, String> =
            [("b".into(), "2".into()), ("c".into(), "3".into())].into();
        let ev = peer_changes(&mut known, now.clone());
        assert_eq!(
            ev,
            vec![
                PeerEvent::Up(Peer {
                    node_id: "c".into(),
                    meta: "3".into()
                }),
                PeerEvent::Down {
                    node_id: "a".into()
                }
            ]
        );
        assert_eq!(known, now);
        assert!(peer_changes(&mut known, now).is_empty());
    }
}
