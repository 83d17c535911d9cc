//! The coordinator decorator that measures every call: duration and errors per primitive and
//! operation, and lease transitions (acquired, released, lost), into the Prometheus metrics.
//!
//! It wraps whatever `boot` produced (single_node or a plugin), so the data plane and control
//! plane are measured without knowing it. Streams are passed through as they are: a stream's
//! items are not calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use mcpg_plugin_api::coordinator::{
    CasOutcome, CoordError, CoordResult, Coordinator, Entry, ErrorKind, Health, KvEvent, Lease,
    Message, Peer, PeerEvent, Presence,
};

use crate::telemetry::metrics::{Metrics, metrics};

/// A [`Coordinator`] that records each call in [`Metrics`] and delegates it.
pub struct Instrumented {
    inner: Arc<dyn Coordinator>,
    metrics: &'static Metrics,
}

/// Wraps `inner` so that its calls are recorded in the process metrics.
pub fn instrument(inner: Arc<dyn Coordinator>) -> Arc<dyn Coordinator> {
    Arc::new(Instrumented::new(inner, metrics()))
}

impl Instrumented {
    /// Records into `metrics` (the process's, or a test's own).
    pub fn new(inner: Arc<dyn Coordinator>, metrics: &'static Metrics) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(
        &self,
        primitive: &'static str,
        operation: &'static str,
        started: Instant,
        result: &CoordResult<T>,
    ) {
        observe(self.metrics, primitive, operation, started, result);
    }
}

fn observe<T>(
    metrics: &Metrics,
    primitive: &'static str,
    operation: &'static str,
    started: Instant,
    result: &CoordResult<T>,
) {
    let kind = result.as_ref().err().map(error_label);
    metrics.coordinator_op(primitive, operation, started.elapsed().as_secs_f64(), kind);
}

/// The `kind` label of a failed call.
fn error_label(e: &CoordError) -> &'static str {
    match e.kind {
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::Panicked => "panicked",
        ErrorKind::Closed => "closed",
        ErrorKind::Backend => "backend",
    }
}

#[async_trait]
impl Coordinator for Instrumented {
    fn node_id(&self) -> String {
        self.inner.node_id()
    }

    async fn health(&self) -> Health {
        let t = Instant::now();
        let h = self.inner.health().await;
        // An unhealthy answer is the backend failing, as an error is for other calls.
        let r: CoordResult<()> = if h.ok {
            Ok(())
        } else {
            Err(CoordError::unavailable(String::new()))
        };
        self.record("health", "health", t, &r);
        h
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.record("kv", "get", t, &r);
        r
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        let t = Instant::now();
        let r = self.inner.put(key, value, ttl).await;
        self.record("kv", "put", t, &r);
        r
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let t = Instant::now();
        let r = self.inner.create(key, value, ttl).await;
        self.record("kv", "create", t, &r);
        r
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let t = Instant::now();
        let r = self.inner.compare_and_swap(key, expected, value, ttl).await;
        self.record("kv", "compare_and_swap", t, &r);
        r
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let t = Instant::now();
        let r = self.inner.delete(key, expected).await;
        self.record("kv", "delete", t, &r);
        r
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        self.record("kv", "list", t, &r);
        r
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        let t = Instant::now();
        let r = self.inner.publish(subject, payload).await;
        self.record("pubsub", "publish", t, &r);
        r
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let t = Instant::now();
        let r = self.inner.subscribe(pattern).await;
        self.record("pubsub", "subscribe", t, &r);
        r
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let t = Instant::now();
        let r = self.inner.acquire(name, ttl, wait).await;
        // Includes the time spent waiting for a holder to let go, up to `wait`.
        self.record("lease", "acquire", t, &r);
        match r {
            Ok(Some(lease)) => {
                self.metrics.lease_change(name, "acquired");
                Ok(Some(Box::new(InstrumentedLease::new(lease, self.metrics))))
            }
            other => other,
        }
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        let t = Instant::now();
        let r = self.inner.register(meta).await;
        self.record("presence", "register", t, &r);
        r.map(|p| {
            Box::new(InstrumentedPresence {
                inner: p,
                metrics: self.metrics,
            }) as Box<dyn Presence>
        })
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        let t = Instant::now();
        let r = self.inner.peers().await;
        self.record("presence", "peers", t, &r);
        r
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let t = Instant::now();
        let r = self.inner.watch_peers().await;
        self.record("presence", "watch_peers", t, &r);
        r
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let t = Instant::now();
        let r = self.inner.watch_prefix(prefix).await;
        self.record("watch", "watch_prefix", t, &r);
        r
    }
}

/// A held lease that counts its release and its loss. A watcher task waits for the loss so it
/// is counted even when the holder never asks; the task holds the inner lease, so dropping this
/// handle aborts the task, which drops the inner lease as the holder's drop would have.
struct InstrumentedLease {
    inner: Arc<dyn Lease>,
    metrics: &'static Metrics,
    released: Arc<AtomicBool>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl InstrumentedLease {
    fn new(inner: Box<dyn Lease>, metrics: &'static Metrics) -> Self {
        let inner: Arc<dyn Lease> = Arc::from(inner);
        let released = Arc::new(AtomicBool::new(false));
        let watcher = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (lease, released) = (inner.clone(), released.clone());
            rt.spawn(async move {
                lease.lost().await;
                // `lost` also resolves once the lease is released; that is no loss.
                if !released.load(Ordering::Acquire) {
                    metrics.lease_change(lease.name(), "lost");
                }
            })
        });
        Self {
            inner,
            metrics,
            released,
            watcher,
        }
    }
}

impl Drop for InstrumentedLease {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

#[async_trait]
impl Lease for InstrumentedLease {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn token(&self) -> u64 {
        self.inner.token()
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl()
    }

    fn is_lost(&self) -> bool {
        self.inner.is_lost()
    }

    async fn lost(&self) {
        self.inner.lost().await
    }

    async fn release(&self) -> CoordResult<()> {
        // Set before releasing: the release is what resolves `lost` for the watcher.
        let first = !self.released.swap(true, Ordering::AcqRel);
        let t = Instant::now();
        let r = self.inner.release().await;
        observe(self.metrics, "lease", "release", t, &r);
        if first && r.is_ok() {
            self.metrics.lease_change(self.inner.name(), "released");
        }
        r
    }
}

struct InstrumentedPresence {
    inner: Box<dyn Presence>,
    metrics: &'static Metrics,
}

#[async_trait]
impl Presence for InstrumentedPresence {
    async fn deregister(&self) -> CoordResult<()> {
        let t = Instant::now();
        let r = self.inner.deregister().await;
        observe(self.metrics, "presence", "deregister", t, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(0.0)
    }

    fn count(m: &Metrics, primitive: &str, op: &str) -> f64 {
        sample(
            &m.encode_text(),
            &format!(
                "mcpg_coordinator_operation_duration_seconds_count{{primitive=\"{primitive}\",operation=\"{op}\"}}"
            ),
        )
    }

    fn errors(m: &Metrics, primitive: &str, op: &str, kind: &str) -> f64 {
        sample(
            &m.encode_text(),
            &format!(
                "mcpg_coordinator_errors_total{{primitive=\"{primitive}\",operation=\"{op}\",kind=\"{kind}\"}}"
            ),
        )
    }

    fn lease(m: &Metrics, lease: &str, change: &str) -> f64 {
        sample(
            &m.encode_text(),
            &format!("mcpg_lease_changes_total{{lease=\"{lease}\",change=\"{change}\"}}"),
        )
    }

    fn wrapped() -> (Arc<dyn Coordinator>, &'static Metrics) {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let c = Arc::new(Instrumented::new(crate::coordinator::single_node("n1"), m));
        (c, m)
    }

    #[tokio::test]
    async fn calls_are_timed_and_errors_counted() {
        let (c, m) = wrapped();
        assert_eq!(c.node_id(), "n1");
        c.put("k", b"v".to_vec(), None).await.unwrap();
        assert_eq!(c.get("k").await.unwrap().unwrap().value, b"v");
        c.get("missing").await.unwrap();
        assert_eq!(c.list("").await.unwrap().len(), 1);
        let mut sub = c.subscribe("a.*").await.unwrap();
        c.publish("a.b", b"x".to_vec()).await.unwrap();
        assert_eq!(
            sub.next().await.unwrap().payload,
            b"x",
            "streams pass through"
        );
        // The memory coordinator refuses to publish to a pattern.
        let e = c.publish("a.*", vec![]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        c.peers().await.unwrap();
        let p = c.register("{}".into()).await.unwrap();
        p.deregister().await.unwrap();
        assert!(c.health().await.ok);

        assert_eq!(count(m, "kv", "put"), 1.0);
        assert_eq!(count(m, "kv", "get"), 2.0);
        assert_eq!(count(m, "kv", "list"), 1.0);
        assert_eq!(count(m, "pubsub", "subscribe"), 1.0);
        assert_eq!(count(m, "pubsub", "publish"), 2.0);
        assert_eq!(count(m, "presence", "peers"), 1.0);
        assert_eq!(count(m, "presence", "register"), 1.0);
        assert_eq!(count(m, "presence", "deregister"), 1.0);
        assert_eq!(count(m, "health", "health"), 1.0);
        assert_eq!(errors(m, "pubsub", "publish", "invalid_argument"), 1.0);
        assert_eq!(errors(m, "kv", "get", "invalid_argument"), 0.0);
    }

    #[tokio::test]
    async fn lease_changes_are_counted() {
        let (c, m) = wrapped();
        let l = c
            .acquire("mcpg/owners/n1", None, Duration::ZERO)
            .await
            .unwrap()
            .expect("free");
        assert!(l.token() > 0);
        // Held: a second acquire gets nothing and changes nothing.
        assert!(
            c.acquire("mcpg/owners/n1", None, Duration::ZERO)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(lease(m, "owner", "acquired"), 1.0);
        l.release().await.unwrap();
        assert_eq!(lease(m, "owner", "released"), 1.0);
        // Its watcher sees `lost` resolve after the release; give it the chance to miscount.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(lease(m, "owner", "lost"), 0.0);
        assert_eq!(count(m, "lease", "acquire"), 2.0);
        assert_eq!(count(m, "lease", "release"), 1.0);

        // A TTL the backend refuses is an error, counted.
        assert!(
            c.acquire(
                "mcpg/control/leader",
                Some(Duration::from_millis(1)),
                Duration::ZERO
            )
            .await
            .is_err()
        );
        assert_eq!(errors(m, "lease", "acquire", "invalid_argument"), 1.0);
    }

    #[tokio::test]
    async fn a_lost_lease_is_counted_without_anyone_asking() {
        let store =
            mcpg_plugin_api::memory::MemoryStore::new(crate::coordinator::single_node_config());
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let c = Instrumented::new(Arc::new(store.handle("n1")), m);
        let name = "mcpg/sessions/sweeper";
        // A short TTL so that the renewal which discovers the loss comes soon.
        let l = c
            .acquire(name, Some(Duration::from_millis(100)), Duration::ZERO)
            .await
            .unwrap()
            .expect("free");
        // The backend forgets the holder (how the memory store simulates a lost lease); the
        // next renewal fails. Nobody awaits `lost` here: the watcher must see it.
        let backend = store.handle("other");
        assert!(
            backend
                .delete(&mcpg_plugin_api::memory::lease_key(name), None)
                .await
                .unwrap()
        );
        for _ in 0..500 {
            if lease(m, "sweeper", "lost") > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(l.is_lost());
        assert_eq!(lease(m, "sweeper", "lost"), 1.0);
        assert_eq!(lease(m, "sweeper", "released"), 0.0);
    }
}
