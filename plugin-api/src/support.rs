//! Building blocks every backend needs the same way: lease and presence handles whose
//! background work stops when they are released or dropped, streams over channels, and the
//! peer-set diff that turns "who is live now" into join and leave events.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::coordinator::{CoordResult, Coordinator, Entry, Lease, Peer, PeerEvent, Presence};

/// Where the in-process coordinators (the memory store and the layer) keep presence entries:
/// under a prefix no host key can start with.
pub(crate) const PEER_PREFIX: &str = "\u{1}mcpg/peer/";

/// The peers that presence entries (listed under [`PEER_PREFIX`]) describe.
pub(crate) fn peers_from(entries: Vec<Entry>) -> Vec<Peer> {
    entries
        .into_iter()
        .map(|e| Peer {
            node_id: e.key[PEER_PREFIX.len()..].to_owned(),
            meta: String::from_utf8_lossy(&e.value).into_owned(),
        })
        .collect()
}

/// The node id by the seed's rule: the host's override (`mcpg --node-id`), else the configured
/// `node_id`, else `service_name-$HOSTNAME`, else `service_name-<8 hex digits>` (random).
pub fn node_id(host: Option<String>, configured: Option<String>, service_name: &str) -> String {
    host.or(configured).unwrap_or_else(|| {
        match std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()) {
            Some(h) => format!("{service_name}-{h}"),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos();
                format!(
                    "{service_name}-{:08x}",
                    nanos ^ std::process::id().rotate_left(16)
                )
            }
        }
    })
}

/// A URL without its credentials (`scheme://user:pw@host/db` → `scheme://host/db`), for
/// messages.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => "<invalid url>".into(),
    }
}

/// A release or deregister action for [`HeldLease::new`] / [`HeldPresence::new`] without the
/// clone-twice dance: `state` is cloned into each call of `f`.
///
/// ```ignore
/// HeldLease::new(name, token, ttl, action((client, key), |(c, k)| async move {
///     c.delete(&k).await
/// }))
/// ```
pub fn action<S, F, Fut>(
    state: S,
    f: F,
) -> impl Fn() -> BoxFuture<'static, CoordResult<()>> + Send + Sync + 'static
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CoordResult<()>> + Send + 'static,
{
    move || Box::pin(f(state.clone()))
}

/// The lease-acquire prologue every backend repeats: the caller's TTL or the configured
/// default, refused below 10 ms.
pub fn lease_ttl(requested: Option<Duration>, default: Duration) -> CoordResult<Duration> {
    let ttl = requested.unwrap_or(default);
    if ttl < Duration::from_millis(10) {
        return Err(crate::coordinator::CoordError::invalid(
            "lease TTL must be at least 10 ms",
        ));
    }
    Ok(ttl)
}

/// A plugin's config, deserialized in `boot` (after `validate` passed), or the reason not.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    config: serde_json::Value,
) -> Result<T, String> {
    serde_json::from_value(config).map_err(|e| format!("invalid config: {e}"))
}

/// An error and its causes, `error: cause: cause`, for a backend client whose `Display` does
/// not include the cause (where "connection refused" usually is).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.ends_with(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// Notifications for many channels that arrive on one connection (PostgreSQL's `LISTEN`, a
/// pub/sub connection), fanned out to a stream per channel. The connection's task sends
/// `(channel, payload)` on the [`fanout`] sender; each [`Fanout::listen`] stream yields its
/// channel's payloads from the moment it is made, and ends when the sender is dropped (the
/// connection closed). A listener that falls `buffer` behind skips what it missed.
pub struct Fanout(tokio::sync::broadcast::Receiver<(String, Vec<u8>)>);

/// A [`Fanout`] and the sender its connection's task feeds.
pub fn fanout(buffer: usize) -> (tokio::sync::broadcast::Sender<(String, Vec<u8>)>, Fanout) {
    let (tx, rx) = tokio::sync::broadcast::channel(buffer);
    (tx, Fanout(rx))
}

impl Fanout {
    /// The payloads sent on `channel` from now on.
    pub fn listen(&self, channel: impl Into<String>) -> BoxStream<'static, Vec<u8>> {
        use tokio::sync::broadcast::error::RecvError;
        let channel: String = channel.into();
        let next = move |mut rx: tokio::sync::broadcast::Receiver<(String, Vec<u8>)>| {
            let channel = channel.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok((c, payload)) if c == channel => return Some((payload, rx)),
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        };
        futures::stream::unfold(self.0.resubscribe(), next).boxed()
    }
}

/// A stream over a channel's receiver.
pub fn receiver_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// A stream that survives reconnection: `connect` makes a live stream, and whenever that
/// stream ends, `connect` is tried again every `backoff` until it succeeds. The first
/// `connect`'s error is returned; items produced while disconnected are lost. Ends when the
/// returned stream is dropped.
pub async fn reconnecting<T, F, Fut>(
    backoff: Duration,
    connect: F,
) -> CoordResult<BoxStream<'static, T>>
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CoordResult<BoxStream<'static, T>>> + Send,
{
    let mut current = connect().await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            loop {
                tokio::select! {
                    item = current.next() => match item {
                        Some(item) => if tx.send(item).await.is_err() { return },
                        None => break,
                    },
                    _ = tx.closed() => return,
                }
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                if let Ok(s) = connect().await {
                    current = s;
                    break;
                }
            }
        }
    });
    Ok(receiver_stream(rx))
}

/// Tries `attempt` until it succeeds or `deadline` passes. Between tries it waits for a wake-up
/// on `wake` (a release notification, subscribed before the first try so none is missed) or
/// 200 ms, whichever comes first: a release is seen at once, an expiry by polling.
pub async fn retry_until<T, F, Fut>(
    deadline: Instant,
    mut wake: Option<BoxStream<'static, ()>>,
    mut attempt: F,
) -> CoordResult<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = CoordResult<Option<T>>>,
{
    loop {
        if let Some(v) = attempt().await? {
            return Ok(Some(v));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let poll = (deadline - now).min(Duration::from_millis(200));
        match wake.as_mut() {
            Some(w) => {
                let _ = tokio::time::timeout(poll, w.next()).await;
            }
            None => tokio::time::sleep(poll).await,
        }
    }
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

/// Peer events for a backend whose presence expiry raises no event: re-reads the live set
/// whenever `wake` fires (a join or leave announcement) or `poll` passes, and reports the
/// difference. Ends when the returned stream is dropped.
pub async fn polled_peer_events<C: Coordinator + Clone>(
    c: C,
    mut wake: BoxStream<'static, ()>,
    poll: Duration,
    buffer: usize,
) -> CoordResult<BoxStream<'static, PeerEvent>> {
    let live = |peers: Vec<Peer>| -> BTreeMap<String, String> {
        peers.into_iter().map(|p| (p.node_id, p.meta)).collect()
    };
    let mut known = live(c.peers().await?);
    let (tx, rx) = mpsc::channel(buffer);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = wake.next() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tx.closed() => return,
            }
            let Ok(now) = c.peers().await else { continue };
            for ev in peer_changes(&mut known, live(now)) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(receiver_stream(rx))
}

/// What a backend's renewal task holds: where to report loss, when the lease runs out, and when
/// to stop.
pub struct LeaseSignals {
    /// Send `true` when the lease is lost.
    pub lost: watch::Sender<bool>,
    /// Changes when the holder releases or drops the lease: stop renewing.
    pub stop: watch::Receiver<bool>,
    /// The local deadline: the instant the last acquire or renewal was sent, plus the TTL.
    /// [`Lease::is_lost`] is true from then on even before the renewal task has run (after
    /// the process was paused, it may run after the holder asks).
    pub deadline: Deadline,
}

/// A lease's local deadline, shared by its holder and its renewal task. Once seen passed it
/// stays passed: a renewal answered after it does not bring the lease back.
#[derive(Clone)]
pub struct Deadline(Arc<std::sync::Mutex<(Instant, bool)>>);

impl Deadline {
    fn new(at: Instant) -> Self {
        Self(Arc::new(std::sync::Mutex::new((at, false))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Instant, bool)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the deadline to `at`; false (and unchanged) once it has passed: the lease is lost.
    pub fn set(&self, at: Instant) -> bool {
        let mut d = self.lock();
        if d.1 || Instant::now() >= d.0 {
            d.1 = true;
            return false;
        }
        d.0 = at;
        true
    }

    /// Whether the deadline has passed, judged now on the monotonic clock.
    pub fn passed(&self) -> bool {
        let mut d = self.lock();
        if !d.1 && Instant::now() >= d.0 {
            d.1 = true;
        }
        d.1
    }
}

type Action = Box<dyn Fn() -> BoxFuture<'static, CoordResult<()>> + Send + Sync>;

/// What one renewal attempt found.
pub enum Renewal {
    /// The backend extended the lease by its TTL.
    Renewed,
    /// The lease belongs to nobody or someone else now.
    Lost,
    /// The backend could not be asked (logged by the caller); try again until the lease would
    /// expire.
    Failed,
}

/// A backend's renewal of one held lease.
pub trait Renew: Send + 'static {
    fn renew(&mut self) -> impl Future<Output = Renewal> + Send;

    /// Called once when the lease is lost, by the backend's answer or by running out of time.
    fn lost(&mut self) {}
}

/// Renews a lease every `every` until it is released or dropped. The local deadline counts
/// from when each acquire or renewal was *sent* (`sent` for the acquire), so a slow reply can
/// only make the holder give up early, never late; a failed attempt is retried every 100 ms
/// until that deadline, after which the lease is reported lost.
pub fn keep_renewing(
    sent: Instant,
    ttl: Duration,
    every: Duration,
    signals: LeaseSignals,
    mut r: impl Renew,
) {
    let LeaseSignals {
        lost,
        mut stop,
        deadline: shared,
    } = signals;
    shared.set(sent + ttl);
    tokio::spawn(async move {
        let mut deadline = sent + ttl;
        let mut next = sent + every;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => return,
            }
            let sent = Instant::now();
            let outcome = if sent >= deadline || shared.passed() {
                Renewal::Lost
            } else {
                r.renew().await
            };
            match outcome {
                Renewal::Renewed if shared.set(sent + ttl) => {
                    deadline = sent + ttl;
                    next = sent + every;
                }
                // Answered after the deadline: the lease may be someone else's by now.
                Renewal::Renewed => {
                    r.lost();
                    let _ = lost.send(true);
                    return;
                }
                Renewal::Lost => {
                    r.lost();
                    let _ = lost.send(true);
                    return;
                }
                Renewal::Failed => {
                    next = Instant::now()
                        + Duration::from_millis(100)
                            .min(deadline.saturating_duration_since(Instant::now()));
                }
            }
        }
    });
}

/// A held lease: the token and TTL, the loss signal, and the backend's release action. Dropping
/// it stops renewal without releasing (the lease then expires by TTL, as a crashed holder's
/// would).
pub struct HeldLease {
    name: String,
    token: u64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    deadline: Deadline,
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
        // Until the renewal task starts (`keep_renewing` sets it from the acquire's send time).
        let deadline = Deadline::new(Instant::now() + ttl);
        (
            Self {
                name: name.to_owned(),
                token,
                ttl,
                lost: lost_rx,
                stop: stop_tx,
                deadline: deadline.clone(),
                release: Box::new(release),
            },
            LeaseSignals {
                lost: lost_tx,
                stop: stop_rx,
                deadline,
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

    /// Lost when the renewal task said so, or once the local deadline has passed: a holder
    /// resumed after a pause longer than the TTL learns it at once, whatever order its tasks
    /// run in.
    fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.deadline.passed()
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
    fn error_chains_name_each_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        // io::Error's Display already shows the wrapped error: it is not repeated.
        assert_eq!(error_chain(&outer), "refused");
        #[derive(Debug)]
        struct Ctx(std::io::Error);
        impl std::fmt::Display for Ctx {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error connecting to server")
            }
        }
        impl std::error::Error for Ctx {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Ctx(std::io::Error::other("connection refused"));
        assert_eq!(
            error_chain(&e),
            "error connecting to server: connection refused"
        );
    }

    /// A holder paused past its TTL (here: its only runtime thread blocked, so the renewal task
    /// cannot run) learns at once that the lease is lost, and a renewal answered afterwards
    /// does not bring it back.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lease_past_its_deadline_is_lost_before_the_renewal_task_runs() {
        use crate::coordinator::Coordinator;
        let store = crate::memory::MemoryStore::new(Default::default());
        let c = store.handle("a");
        let ttl = Duration::from_millis(200);
        let lease = c
            .acquire("l", Some(ttl), Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(!lease.is_lost());
        // No await: nothing else runs on this thread meanwhile.
        std::thread::sleep(ttl + Duration::from_millis(50));
        assert!(lease.is_lost(), "lost as soon as the deadline has passed");
        tokio::time::timeout(Duration::from_secs(5), lease.lost())
            .await
            .expect("the renewal task reports the loss too");
        assert!(lease.is_lost());

        let (held, signals) = HeldLease::new("m", 1, ttl, || Box::pin(async { Ok(()) }));
        let d = signals.deadline.clone();
        assert!(
            d.set(Instant::now() + ttl),
            "a renewal in time moves the deadline"
        );
        d.set(Instant::now());
        assert!(held.is_lost());
        assert!(
            !d.set(Instant::now() + ttl),
            "a renewal answered after the deadline is refused"
        );
        assert!(held.is_lost(), "and the lease stays lost");
    }

    #[tokio::test]
    async fn fanout_streams_get_their_channel_only_and_end_with_the_sender() {
        let (tx, hub) = fanout(16);
        let (mut a, b) = (hub.listen("a"), hub.listen("b"));
        tx.send(("b".into(), vec![1])).unwrap();
        tx.send(("a".into(), vec![2])).unwrap();
        assert_eq!(a.next().await, Some(vec![2]));
        drop(tx);
        assert_eq!(a.next().await, None);
        assert_eq!(b.collect::<Vec<_>>().await, vec![vec![1]]);
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redacted_url("postgres://u:pw@db:5432/x?sslmode=require"),
            "postgres://db:5432/x?sslmode=require"
        );
        assert_eq!(redacted_url("redis://h:1"), "redis://h:1");
        assert_eq!(node_id(Some("a".into()), Some("b".into()), "s"), "a");
        assert_eq!(node_id(None, Some("b".into()), "s"), "b");
        assert!(node_id(None, None, "svc").starts_with("svc-"));
    }

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
