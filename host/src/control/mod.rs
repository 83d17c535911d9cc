//! The minimal control plane: this replica's presence, leader election for cluster-wide
//! singleton work, graceful resignation, and the admin endpoints that show them
//! (`GET /api/cluster/status`, `GET /api/cluster/peers`). `config.rs`: which config each
//! replica runs, published through the coordinator.

pub mod config;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use mcpg_plugin_api::coordinator::{Coordinator, Lease, Presence};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

/// The lease every replica contends for; its holder is the leader.
pub const LEADER_LEASE: &str = "mcpg/control/leader";
/// Where the leader says who it is, so followers can report it.
pub const LEADER_RECORD: &str = "mcpg/control/leader-record";

/// What the leader publishes about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaderRecord {
    pub node_id: String,
    pub token: u64,
}

/// What a replica registers as its presence metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerMeta {
    pub advertise_url: Option<String>,
    pub version: String,
    /// A random id of this process: two presences with one node id but different instances
    /// are two processes.
    #[serde(default)]
    pub instance: Option<String>,
}

#[derive(Default)]
struct Leadership {
    lease: Option<Arc<dyn Lease>>,
}

/// The running control plane of one replica.
#[derive(Clone)]
pub struct ControlPlane {
    coordinator: Arc<dyn Coordinator>,
    kind: String,
    node_id: String,
    presence: Arc<Mutex<Option<Arc<dyn Presence>>>>,
    leadership: Arc<Mutex<Leadership>>,
    stop: watch::Sender<bool>,
    /// The cluster's id: created once in the coordinator by the first replica, shared by all.
    cluster_id: String,
    /// What the data plane adds to `/api/cluster/status` (its upstreams' state); the data
    /// plane sits above the control plane, so it hands this in.
    data_plane: Arc<std::sync::OnceLock<DataPlaneStatus>>,
    /// What the data plane knows of each node (its health, open sessions), for
    /// `/api/cluster/nodes`.
    nodes: Arc<std::sync::OnceLock<DataPlaneNodes>>,
    /// This replica's config (digest, generation, last reload) for `/api/cluster/status`,
    /// handed in by the reloader, which sits above.
    config: Arc<std::sync::OnceLock<DataPlaneStatus>>,
    /// The record `config::publish` keeps in the coordinator.
    config_record: watch::Sender<Option<config::ConfigRecord>>,
}

/// The data plane's facts per node id, merged into each node of `/api/cluster/nodes`.
pub type DataPlaneNodes = Arc<
    dyn Fn() -> futures::future::BoxFuture<
            'static,
            std::collections::HashMap<String, serde_json::Value>,
        > + Send
        + Sync,
>;

/// The data plane's part of `/api/cluster/status`.
pub type DataPlaneStatus = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// This process's instance id, made once.
pub fn instance() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
        .clone()
}

/// Where the cluster id lives in the coordinator.
const CLUSTER_ID: &str = "mcpg/control/cluster-id";

impl ControlPlane {
    /// Registers this replica's presence (returning once it is registered) and starts taking part
    /// in leader election in the background.
    pub async fn start(
        coordinator: Arc<dyn Coordinator>,
        kind: String,
        advertise_url: Option<String>,
    ) -> Result<Self, mcpg_plugin_api::coordinator::CoordError> {
        let node_id = coordinator.node_id();
        let meta = serde_json::to_string(&PeerMeta {
            advertise_url,
            version: env!("CARGO_PKG_VERSION").into(),
            instance: Some(instance()),
        })
        .expect("meta serializes");
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let cluster_id = match coordinator
            .create(CLUSTER_ID, fresh.clone().into_bytes(), None)
            .await?
        {
            Some(_) => fresh,
            None => coordinator
                .get(CLUSTER_ID)
                .await?
                .and_then(|e| String::from_utf8(e.value).ok())
                .unwrap_or(fresh),
        };
        let presence: Arc<dyn Presence> = Arc::from(coordinator.register(meta).await?);
        let (stop, _) = watch::channel(false);
        let (config_record, published) = watch::channel(None);
        tokio::spawn(config::publish(
            coordinator.clone(),
            published,
            stop.subscribe(),
        ));
        let cp = Self {
            data_plane: Arc::default(),
            nodes: Arc::default(),
            config: Arc::default(),
            config_record,
            coordinator,
            kind,
            node_id,
            presence: Arc::new(Mutex::new(Some(presence))),
            leadership: Arc::default(),
            stop,
            cluster_id,
        };
        tokio::spawn(cp.clone().elect());
        Ok(cp)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn current_lease(&self) -> Option<Arc<dyn Lease>> {
        self.leadership
            .lock()
            .unwrap()
            .lease
            .clone()
            .filter(|l| !l.is_lost())
    }

    /// Contends for leadership until stopped: holds it until lost, then contends again.
    async fn elect(self) {
        let mut stop = self.stop.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let attempt = tokio::select! {
                r = self.coordinator.acquire(LEADER_LEASE, None, Duration::from_secs(5)) => r,
                _ = stopped(&mut stop) => return,
            };
            let lease: Arc<dyn Lease> = match attempt {
                Ok(Some(l)) => Arc::from(l),
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: coordinator unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
            };
            let record = LeaderRecord {
                node_id: self.node_id.clone(),
                token: lease.token(),
            };
            let body = serde_json::to_vec(&record).expect("record serializes");
            if let Err(e) = self
                .coordinator
                .put(LEADER_RECORD, body.clone(), Some(lease.ttl()))
                .await
            {
                tracing::warn!(error = %e, "could not publish the leader record");
            }
            self.leadership.lock().unwrap().lease = Some(lease.clone());
            tracing::info!(token = lease.token(), "became leader");
            // Keep the record alive as long as the lease; stop at loss or shutdown.
            let refresh = lease.ttl() / 3;
            loop {
                tokio::select! {
                    _ = lease.lost() => {
                        tracing::warn!(token = lease.token(), "leadership lost");
                        break;
                    }
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(refresh) => {
                        let _ = self.coordinator.put(LEADER_RECORD, body.clone(), Some(lease.ttl())).await;
                    }
                }
            }
            self.leadership.lock().unwrap().lease = None;
        }
    }

    /// Graceful exit: stop contending, hand leadership over at once, deregister presence.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let lease = self.leadership.lock().unwrap().lease.take();
        if let Some(lease) = lease {
            let _ = self.coordinator.delete(LEADER_RECORD, None).await;
            match lease.release().await {
                Ok(()) => tracing::info!(token = lease.token(), "resigned leadership"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not release leadership; it will expire")
                }
            }
        }
        let presence = self.presence.lock().unwrap().take();
        if let Some(p) = presence
            && let Err(e) = p.deregister().await
        {
            tracing::warn!(error = %e, "could not deregister presence; it will expire");
        }
    }

    /// The body of `GET /api/cluster/status`.
    pub async fn status(&self) -> serde_json::Value {
        let health = self.coordinator.health().await;
        let own = self.current_lease();
        let (role, leader) = match &own {
            Some(l) => (
                "leader",
                Some(LeaderRecord {
                    node_id: self.node_id.clone(),
                    token: l.token(),
                }),
            ),
            None => {
                let record = match self.coordinator.get(LEADER_RECORD).await {
                    Ok(Some(e)) => serde_json::from_slice::<LeaderRecord>(&e.value).ok(),
                    _ => None,
                };
                ("follower", record)
            }
        };
        json!({
            "node_id": self.node_id,
            "cluster_kind": self.kind,
            "role": role,
            "leader_id": leader.as_ref().map(|l| l.node_id.clone()),
            "leadership_token": leader.as_ref().map(|l| l.token),
            "backend": {"ok": health.ok, "detail": health.detail},
            "upstreams": self.data_plane.get().map(|f| f()),
            "config": self.config.get().map(|f| f()),
            "fleet": match config::fleet(self.coordinator.as_ref()).await {
                Ok(f) => json!(f),
                Err(e) => json!({"error": e}),
            },
        })
    }

    /// Sets what the data plane adds to each node of `/api/cluster/nodes` (once).
    pub fn report_nodes(&self, nodes: DataPlaneNodes) {
        let _ = self.nodes.set(nodes);
    }

    /// The leader's node id: this replica while it holds the lease, else the leader record.
    async fn leader_id(&self) -> Option<String> {
        if self.current_lease().is_some() {
            return Some(self.node_id.clone());
        }
        match self.coordinator.get(LEADER_RECORD).await {
            Ok(Some(e)) => serde_json::from_slice::<LeaderRecord>(&e.value)
                .ok()
                .map(|r| r.node_id),
            _ => None,
        }
    }

    /// Sets what the reloader adds to `/api/cluster/status` (once).
    pub fn report_config(&self, status: DataPlaneStatus) {
        let _ = self.config.set(status);
    }

    /// Publishes the config this replica runs now (digest and generation) to the fleet.
    pub fn publish_config(&self, digest: &str, generation: u64, loaded_at_ms: u64) {
        self.config_record.send_replace(Some(config::ConfigRecord {
            node_id: self.node_id.clone(),
            digest: digest.to_owned(),
            generation,
            loaded_at_ms,
        }));
    }

    /// Sets what the data plane adds to `/api/cluster/status` (once).
    pub fn report_data_plane(&self, status: DataPlaneStatus) {
        let _ = self.data_plane.set(status);
    }

    /// The body of `GET /mcpg/meta`, the probe a peer or an operator uses on the MCP listener:
    /// what this replica is, which MCP revisions it speaks (`protocols`, the data plane's to
    /// say), and its place in the cluster.
    pub fn meta(&self, protocols: &serde_json::Value) -> serde_json::Value {
        json!({
            "product": "mcpg",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol_versions": protocols,
            "node_id": self.node_id,
            "instance": instance(),
            "cluster": {
                "id": self.cluster_id,
                "kind": self.kind,
                "role": if self.current_lease().is_some() { "leader" } else { "follower" },
            },
        })
    }

    /// `GET /mcpg/meta`, served on the main listener.
    pub fn meta_router(&self, protocols: serde_json::Value) -> Router {
        Router::new()
            .route("/mcpg/meta", get(meta))
            .with_state((self.clone(), Arc::new(protocols)))
    }

    /// The admin routes of the control plane.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/cluster/status", get(status))
            .route("/api/cluster/peers", get(peers))
            // MCPHub's name; presence expires, so every node listed is active (`?active=true`
            // lists the same).
            .route("/api/cluster/nodes", get(nodes))
            .with_state(self.clone())
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here rather than across an await.
    let _ = rx.wait_for(|s| *s).await;
}

async fn meta(
    State((cp, protocols)): State<(ControlPlane, Arc<serde_json::Value>)>,
) -> Json<serde_json::Value> {
    Json(cp.meta(&protocols))
}

async fn status(State(cp): State<ControlPlane>) -> Json<serde_json::Value> {
    Json(cp.status().await)
}

async fn peers(
    State(cp): State<ControlPlane>,
) -> Result<Json<serde_json::Value>, (StatusCode, Json<serde_json::Value>)> {
    let configs = config::fleet(cp.coordinator.as_ref())
        .await
        .map(|f| f.replicas)
        .unwrap_or_default();
    match cp.coordinator.peers().await {
        Ok(peers) => Ok(Json(json!({
            "node_id": cp.node_id,
            "peers": peers
                .into_iter()
                .map(|p| {
                    let meta: serde_json::Value = serde_json::from_str(&p.meta).unwrap_or(serde_json::Value::Null);
                    let config = configs.iter().find(|c| c.node_id == p.node_id)
                        .map(|c| json!({"digest": c.digest, "generation": c.generation}));
                    json!({"node_id": p.node_id, "meta": meta, "config": config})
                })
                .collect::<Vec<_>>(),
        }))),
        Err(e) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("coordinator unavailable: {}", e.kind)})),
        )),
    }
}

/// `GET /api/cluster/nodes` (`?active=true` lists the same: presence expires): every
/// replica with its node id, advertised URL, role, health, open sessions, version and config
/// (digest, generation), and its presence metadata as `/api/cluster/peers` shows it.
async fn nodes(
    State(cp): State<ControlPlane>,
) -> Result<Json<serde_json::Value>, (StatusCode, Json<serde_json::Value>)> {
    let Json(mut body) = peers(State(cp.clone())).await?;
    let leader = cp.leader_id().await;
    let facts = match cp.nodes.get() {
        Some(f) => f().await,
        None => Default::default(),
    };
    let nodes: Vec<serde_json::Value> = body["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let id = p["node_id"].as_str().unwrap_or_default();
            let f = facts.get(id);
            json!({
                "node_id": id,
                "advertise_url": p["meta"]["advertise_url"],
                "role": if leader.as_deref() == Some(id) { "leader" } else { "follower" },
                // Listed replicas are alive (presence expires); `ready` or `draining` as the
                // replica last published, `unknown` before it has.
                "health": f.map_or(json!("unknown"), |f| f["health"].clone()),
                "open_sessions": f.map_or(serde_json::Value::Null, |f| f["open_sessions"].clone()),
                "version": p["meta"]["version"],
                // The digest and generation of the config it runs (see docs/reload.md).
                "config": p["config"],
                "meta": p["meta"],
            })
        })
        .collect();
    body["nodes"] = json!(nodes);
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};

    fn store() -> MemoryStore {
        MemoryStore::new(MemoryConfig {
            lease_ttl: Duration::from_millis(600),
            peer_ttl: Duration::from_secs(5),
            renew_percent: 50,
        })
    }

    async fn wait_role(cp: &ControlPlane, role: &str) -> serde_json::Value {
        for _ in 0..200 {
            let s = cp.status().await;
            if s["role"] == role {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never became {role}: {}", cp.node_id, cp.status().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_and_resignation_hands_over_at_once() {
        let s = store();
        let a = ControlPlane::start(Arc::new(s.handle("a")), "single_node".into(), None)
            .await
            .unwrap();
        let first = wait_role(&a, "leader").await;
        let b = ControlPlane::start(Arc::new(s.handle("b")), "single_node".into(), None)
            .await
            .unwrap();
        let seen_by_b = b.status().await;
        assert_eq!(seen_by_b["role"], "follower");
        assert_eq!(seen_by_b["leader_id"], "a");
        assert_eq!(seen_by_b["leadership_token"], first["leadership_token"]);
        let peers: Vec<String> = b
            .coordinator
            .peers()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        assert_eq!(peers, ["a", "b"]);

        a.shutdown().await;
        let after = wait_role(&b, "leader").await;
        assert!(after["leadership_token"].as_u64() > first["leadership_token"].as_u64());
        let peers: Vec<String> = b
            .coordinator
            .peers()
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.node_id)
            .collect();
        assert_eq!(peers, ["b"], "a deregistered on shutdown");
    }
}
