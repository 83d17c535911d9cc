//! What the data plane's unit tests share: replicas of one cluster on the in-memory
//! coordinator (each its capabilities, ownership lease, sessions and a binding whose upstreams
//! cannot be started), session records written directly, and waiting for a condition under
//! paused time.

use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::{Coordinator, Presence};
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};
use serde_json::{Value, json};

use crate::capabilities::Capabilities;
use crate::capabilities::cluster::Coordination;
use crate::config::model::BindingConfig;
use crate::mcp::binding::Binding;
use crate::mcp::cluster::ownership::Ownership;
use crate::mcp::session::delivery::Delivery;
use crate::mcp::session::record::record_key;
use crate::mcp::session::server_requests::ServerRequests;
use crate::mcp::session::{RECORD_FORMAT, Services, SessionRecord, Sessions, now_ms};
use crate::mcp::upstream::Hello;

/// Each replica's ownership lease TTL (time is paused where it matters).
pub(crate) const OWNER_TTL: Duration = Duration::from_secs(10);
/// Long enough that no live session of a test is reaped unless the test says so.
pub(crate) const IDLE_TTL: Duration = Duration::from_secs(3600);
/// The binding every replica serves.
pub(crate) const BINDING: &str = "b";

/// A program that does not exist: an upstream that cannot be started, at once and without
/// any network (sessions are still created on a fail-open binding with two upstreams, and
/// claims tolerate unreachable upstreams).
const NO_SUCH_PROGRAM: &str = "/nonexistent/mcpg-unit-test-no-such-upstream";

/// One in-memory backend shared by the replicas of a test.
pub(crate) fn store() -> MemoryStore {
    MemoryStore::new(MemoryConfig::default())
}

/// A binding's config: two stdio upstreams (`one`, `two`) that cannot start, fail-open, with
/// `extra` merged in (access rules, a name).
pub(crate) fn binding_config(extra: Value) -> BindingConfig {
    let mut v = json!({
        "name": BINDING,
        "path": "/mcp",
        "upstreams": [
            {"name": "one", "stdio": {"command": NO_SUCH_PROGRAM}},
            {"name": "two", "stdio": {"command": NO_SUCH_PROGRAM}},
        ],
    });
    for (k, x) in extra.as_object().expect("an object") {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("a binding config")
}

pub(crate) fn binding(caps: &Capabilities, cfg: &BindingConfig) -> Arc<Binding> {
    // Through the loader, as at start-up: it compiles what the binding is built from.
    let text = json!({"bindings": [cfg]}).to_string();
    let loaded = crate::config::load_str("unit.yaml", std::path::Path::new("."), &text, &|_| None);
    let valid = loaded
        .config
        .unwrap_or_else(|| panic!("the binding config loads: {:?}", loaded.diagnostics));
    Binding::new(
        cfg,
        std::path::Path::new("."),
        Duration::from_secs(5),
        caps,
        &valid.parsed,
    )
    .expect("a binding")
}

/// One replica of the cluster.
pub(crate) struct Replica {
    pub(crate) caps: Capabilities,
    pub(crate) ownership: Arc<Ownership>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) binding: Arc<Binding>,
    /// Its presence in the peer directory, when it advertises a URL (held, not read).
    _presence: Option<Box<dyn Presence>>,
}

impl Replica {
    /// Replica `node` on `store`, holding its ownership lease, serving at most `max` sessions;
    /// present in the peer directory with `url` when given.
    pub(crate) async fn start(
        store: &MemoryStore,
        node: &str,
        url: Option<&str>,
        max: usize,
    ) -> Replica {
        Self::with_idle_ttl(store, node, url, max, IDLE_TTL).await
    }

    /// [`Replica::start`] with sessions idle after `idle_ttl`.
    pub(crate) async fn with_idle_ttl(
        store: &MemoryStore,
        node: &str,
        url: Option<&str>,
        max: usize,
        idle_ttl: Duration,
    ) -> Replica {
        Self::on(Arc::new(store.handle(node)), node, url, max, idle_ttl).await
    }

    /// [`Replica::with_idle_ttl`] where sessions that never sent a request end after
    /// `unused_ttl`.
    pub(crate) async fn with_unused_ttl(
        store: &MemoryStore,
        node: &str,
        idle_ttl: Duration,
        unused_ttl: Duration,
    ) -> Replica {
        let coordinator: Arc<dyn Coordinator> = Arc::new(store.handle(node));
        Self::on_with(coordinator, node, None, 10, (idle_ttl, unused_ttl)).await
    }

    /// [`Replica::with_idle_ttl`] on a coordinator of the test's making (one that stalls a
    /// write, say).
    pub(crate) async fn on(
        coordinator: Arc<dyn Coordinator>,
        node: &str,
        url: Option<&str>,
        max: usize,
        idle_ttl: Duration,
    ) -> Replica {
        Self::on_with(coordinator, node, url, max, (idle_ttl, idle_ttl)).await
    }

    async fn on_with(
        coordinator: Arc<dyn Coordinator>,
        node: &str,
        url: Option<&str>,
        max: usize,
        ttls: (Duration, Duration),
    ) -> Replica {
        let caps = Capabilities::build(&Default::default(), &coordinator).expect("capabilities");
        let ownership = Ownership::start(
            Coordination::new(coordinator.clone()),
            node.to_owned(),
            OWNER_TTL,
            Some("unit-test-secret".into()),
        )
        .await
        .expect("the ownership lease");
        let services = Arc::new(Services {
            delivery: Delivery::new(caps.delivery.clone(), 100, Duration::from_secs(600)),
            server_requests: ServerRequests::new(caps.pipelines.clone()),
            inflight: Default::default(),
            cancellation: caps.cancellation.clone(),
            ownership: ownership.clone(),
        });
        let sessions = Sessions::new(
            caps.sessions.clone(),
            services,
            ownership.clone(),
            ttls,
            max,
        );
        let presence = match url {
            Some(u) => Some(
                coordinator
                    .register(json!({"advertise_url": u, "version": "unit"}).to_string())
                    .await
                    .expect("presence"),
            ),
            None => None,
        };
        let binding = binding(&caps, &binding_config(json!({})));
        Replica {
            caps,
            ownership,
            sessions,
            binding,
            _presence: presence,
        }
    }

    /// A new session for `identity`, owned here; its id.
    pub(crate) async fn create(&self, identity: Option<&str>) -> String {
        let (live, _) = self
            .sessions
            .create(
                &self.binding,
                &json!({"protocolVersion": "2025-06-18", "clientInfo": {"name": "unit"}}),
                identity,
                None,
            )
            .await
            .expect("a session");
        live.id.clone()
    }

    /// The session's record as stored now.
    pub(crate) async fn record(&self, id: &str) -> Option<SessionRecord> {
        let e = self
            .caps
            .sessions
            .store
            .get(&record_key(id))
            .await
            .expect("the sessions store")?;
        Some(serde_json::from_slice(&e.value).expect("a record"))
    }

    /// Writes a record directly (as another replica, or an earlier release, left it).
    pub(crate) async fn put_record(&self, r: &SessionRecord) {
        self.caps
            .sessions
            .store
            .put(
                &record_key(&r.id),
                serde_json::to_vec(r).expect("serialisable"),
                Some(IDLE_TTL * 2),
            )
            .await
            .expect("the sessions store");
    }
}

/// A record of session `id` on the test binding owned by `owner` (empty: handed over), last
/// active at `active_ms`.
pub(crate) fn record(id: &str, owner: &str, token: u64, active_ms: u64) -> SessionRecord {
    SessionRecord {
        format: RECORD_FORMAT,
        id: id.to_owned(),
        binding: BINDING.to_owned(),
        protocol_version: "2025-06-18".into(),
        hello: Hello {
            protocol_version: "2025-06-18".into(),
            capabilities: crate::mcp::upstream::compact(&json!({})),
            client_info: crate::mcp::upstream::compact(&json!({"name": "unit"})),
            caller: None,
        },
        upstream_sessions: Default::default(),
        upstream_versions: Default::default(),
        upstream_endpoints: Default::default(),
        owner: owner.to_owned(),
        owner_token: token,
        epoch: 1,
        created_ms: active_ms,
        active_ms,
        log_level: None,
        listened: Default::default(),
        identity: None,
    }
}

/// A record idle since long before any idle TTL.
pub(crate) fn long_idle() -> u64 {
    1
}

/// Now, for a record just used.
pub(crate) fn fresh() -> u64 {
    now_ms()
}

/// Waits (in steps of tokio time, which may be paused) until `cond` holds; panics after a
/// generous number of steps.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}
