//! The coordinator as Rust code uses it: the four primitives (key-value store, pub/sub, leases
//! with fencing tokens, watch) as an async trait, and their types.
//!
//! The host's capabilities are written against [`Coordinator`]. The built-in `single_node`, a
//! plugin loaded from a library, and a plugin linked in-process all present it, which is what
//! lets one test kit prove them all.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

/// What went wrong in a coordinator call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct CoordError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The class of a [`CoordError`]; the code crosses the plugin boundary as a `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorKind {
    /// The backend cannot be reached or refused the operation; worth retrying.
    Unavailable = 1,
    /// The operation did not finish within the plugin's deadline.
    Timeout = 2,
    /// The caller passed something the backend cannot accept (a bad key, a bad pattern).
    InvalidArgument = 3,
    /// The plugin panicked while serving this call. The plugin and host keep running.
    Panicked = 4,
    /// The coordinator has been shut down.
    Closed = 5,
    /// Any other backend error.
    Backend = 6,
}

impl ErrorKind {
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Unavailable,
            2 => Self::Timeout,
            3 => Self::InvalidArgument,
            4 => Self::Panicked,
            5 => Self::Closed,
            _ => Self::Backend,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "backend unavailable",
            Self::Timeout => "timed out",
            Self::InvalidArgument => "invalid argument",
            Self::Panicked => "plugin panicked",
            Self::Closed => "coordinator closed",
            Self::Backend => "backend error",
        })
    }
}

impl CoordError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Backend, message)
    }
}

pub type CoordResult<T> = Result<T, CoordError>;

/// A key-value entry. `revision` increases on every write to the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

impl Entry {
    pub fn new(key: impl Into<String>, value: Vec<u8>, revision: u64) -> Self {
        Self {
            key: key.into(),
            value,
            revision,
        }
    }
}

/// The outcome of [`Coordinator::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the new revision.
    Swapped(u64),
    /// Not written: the key's current entry (absent if the key does not exist).
    Mismatch(Option<Entry>),
}

/// A published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub payload: Vec<u8>,
}

/// A live node as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    /// Opaque metadata the node registered (the host puts JSON here).
    pub meta: String,
}

/// A change in peer presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Up(Peer),
    /// The peer deregistered or its presence expired.
    Down {
        node_id: String,
    },
}

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    Put(Entry),
    Delete { key: String, revision: u64 },
}

/// The backend's own health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    pub detail: String,
}

/// A held lease. The implementation renews it (at the backend's configured percent of the TTL)
/// until it is released or lost.
#[async_trait]
pub trait Lease: Send + Sync {
    fn name(&self) -> &str;
    /// The fencing token: strictly greater than every earlier holder's token for this name.
    fn token(&self) -> u64;
    fn ttl(&self) -> Duration;
    fn is_lost(&self) -> bool;
    /// Resolves when the lease is lost (renewal failed or the lease expired). A holder must
    /// stop acting on the lease's behalf when this resolves.
    async fn lost(&self);
    /// Gives the lease up so another contender can take it at once (graceful resignation).
    async fn release(&self) -> CoordResult<()>;
}

/// This node's registered presence, refreshed by the implementation until deregistered.
/// Dropping it stops the refresh; the presence then expires by TTL.
#[async_trait]
pub trait Presence: Send + Sync {
    async fn deregister(&self) -> CoordResult<()>;
}

/// The four coordinator primitives, plus identity and health.
///
/// Keys and subjects are opaque UTF-8 strings chosen by the host; a backend adds its own
/// namespace (prefix) in front. Subjects are dot-separated tokens; in a subscription pattern `*`
/// matches one token and a final `>` matches one or more.
///
/// # The contract, decided once for every backend
///
/// The test kit (`mcpg-plugin-testkit`) checks each point that can be checked.
///
/// - **Keys and values.** A key is any non-empty UTF-8 string without NUL (spaces, quotes,
///   `*`, `%`, newlines, non-ASCII: all literal). `list` and `watch_prefix` take a literal
///   prefix and order keys by their bytes. A value is any bytes, empty included. Values and
///   messages of at least 256 KiB work.
/// - **Revisions.** Every write gives its key a revision greater than every revision the
///   backend gave before. A `KvEvent::Delete` carries a revision greater than the key's last
///   write (the delete's own, where the backend has one).
/// - **Compare-and-swap on an absent key** (never written, deleted or expired) fails with
///   `CasOutcome::Mismatch(None)`, whatever `expected` is; `create` is the write-if-absent.
///   `Mismatch(Some(entry))` is the entry as read just after the refusal.
/// - **Expiry.** An expired key is neither returned, listed nor matched by a condition. Its
///   expiry **may or may not raise a watch event** (`single_node` raises one; Redis and
///   PostgreSQL do not): never rely on one. Presence expiry, by contrast, always reaches
///   `watch_peers` (by event or by the backend's poll).
/// - **Pub/sub and watches are at-most-once.** Every subscriber whose `subscribe` (or
///   `watch_prefix`) returned receives what is published afterwards, in publish order per
///   publisher, while its connection to the backend holds. While a subscriber's connection is
///   re-established, **messages may be lost**; the stream stays open and carries on afterwards.
///   A consumer that falls more than the backend's buffer behind loses messages rather than
///   stalling the others. Keep the truth in the KV store and use messages as wake-ups.
/// - **Lease renewal.** A held lease is renewed when `lease_renew_before_expiry_percent` of
///   its TTL has **elapsed** since the acquire or last renewal was sent (80: renew with a fifth
///   of the TTL left), clamped to 1..=99. The local deadline counts from when each request was
///   sent, so a slow reply can only make a holder give up early.
/// - **Handle lifetime.** Streams ([`Coordinator::subscribe`], [`Coordinator::watch_prefix`],
///   [`Coordinator::watch_peers`]), [`Lease`]s and [`Presence`]s keep working after the
///   `Coordinator` that made them is dropped (the host and the kit drop it freely): anything
///   their background work needs, they hold themselves.
/// - **Presence heals itself.** A registered presence stays registered until deregistered,
///   whatever happened in between: if the backend dropped it (the process was paused or the
///   backend stalled past the presence TTL, its key or lease or session expired or was
///   deleted), the next refresh registers it again — on a fresh lease or session where the old
///   one is gone — so the node is listed again within about one refresh interval of the backend
///   answering. Refreshing an existing key is not enough where the backend ties the key to a
///   lease that no longer exists. The kit's `presence_reregisters_after_expiry` check holds
///   every backend to this (the harness drops the presence as expiry would).
/// - **Health reaches the server.** [`Coordinator::health`] makes a round trip the server
///   itself answers (a PING, a read, a request), never only a local flush or a cached
///   connection state, and answers within 5 s: `ok: false` when the server does not answer in
///   time. The kit's `health_reaches_the_server` check stops the server (`SIGSTOP`) and
///   requires `ok: false` within its `HEALTH_BOUND` (10 s).
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// This replica's node id.
    fn node_id(&self) -> String;
    /// The backend's health, from a round trip to the server, within 5 s (see the contract
    /// above); `ok: false` with the reason when it did not answer.
    async fn health(&self) -> Health;

    // Key-value store.
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>>;
    /// Writes unconditionally; returns the new revision. `ttl` makes the key expire.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64>;
    /// Writes only if the key does not exist; `None` if it does.
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>>;
    /// Writes only if the key's revision is `expected` (atomically).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome>;
    /// Deletes the key, only at revision `expected` when given. Returns whether it deleted.
    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool>;
    /// Every live entry whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>>;

    // Pub/sub.
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()>;
    /// Every message published to a matching subject after this returns, on any replica.
    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>>;

    // Leases.
    /// Acquires the lease `name` with `ttl` (the backend's default when `None`), waiting up to
    /// `wait` for a current holder to let go. `None` if it is still held by another.
    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>>;

    // Watch.
    /// Registers this node as live, with opaque `meta`, refreshed until deregistered, and
    /// registered again whenever the backend dropped it meanwhile (see the contract above).
    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>>;
    /// The live peers now, this node included if registered.
    async fn peers(&self) -> CoordResult<Vec<Peer>>;
    /// Peers joining and leaving from now on.
    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>>;
    /// Changes to keys under `prefix` from now on.
    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>>;
}

/// Whether `subject` matches `pattern` (`*` one token, trailing `>` one or more tokens).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return p.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards() {
        assert!(subject_matches("a.b", "a.b"));
        assert!(subject_matches("a.*", "a.b"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(subject_matches("*.>", "x.y"));
    }
}
