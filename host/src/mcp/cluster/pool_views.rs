//! What the replicas share about upstream pools through the coordinator (the `pools`
//! capability): each replica's view of its endpoints' health (one key per replica, with a
//! TTL, refreshed while it lives), shown by the management API as the cluster's view; and an
//! operator's drain or disable, kept cluster-wide (one key per endpoint, applied by every
//! replica). One replica's view never takes an endpoint out on another: views are only
//! shown; each replica's own health checks decide for it.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::capabilities::Capability;
use crate::mcp::binding::Binding;
use crate::mcp::cluster::ownership::Ownership;
use crate::mcp::session::Sessions;
use crate::mcp::upstream::outlier::State;
use crate::mcp::upstream::pool::Admin;

/// How often a replica writes its view; the view lives three times as long.
const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How often a replica applies the cluster's drain/disable keys.
const APPLY_EVERY: Duration = Duration::from_secs(1);

/// One endpoint as one replica sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointBrief {
    pub name: String,
    pub state: State,
    pub admin: Admin,
    pub in_flight: u32,
    pub ejections: u64,
}

/// One upstream of a binding, as one replica sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerBrief {
    pub binding: String,
    pub upstream: String,
    pub endpoints: Vec<EndpointBrief>,
}

/// What one replica publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    pub node_id: String,
    /// When it was written (Unix milliseconds).
    pub at_ms: u64,
    /// `ready`, or `draining` once it is shutting down.
    pub health: String,
    pub open_sessions: usize,
    pub servers: Vec<ServerBrief>,
}

/// The drain/disable an operator set on one endpoint, kept in the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdminKey {
    binding: String,
    upstream: String,
    endpoint: String,
    admin: Admin,
}

/// This replica's part: publishing its view, applying the cluster's admin keys.
pub struct PoolViews {
    cap: Capability,
    node_id: String,
    /// The bindings served now (a config reload swaps them).
    bindings: Arc<ArcSwap<Vec<Arc<Binding>>>>,
    sessions: Weak<Sessions>,
    ownership: Arc<Ownership>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn admin_key(binding: &str, upstream: &str, endpoint: &str) -> String {
    format!("admin/{binding}/{upstream}/{endpoint}")
}

impl PoolViews {
    /// Starts publishing and applying in the background, until the returned value is dropped.
    pub fn start(
        cap: Capability,
        bindings: Arc<ArcSwap<Vec<Arc<Binding>>>>,
        sessions: &Arc<Sessions>,
        ownership: Arc<Ownership>,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            cap,
            node_id: ownership.node_id().to_owned(),
            bindings,
            sessions: Arc::downgrade(sessions),
            ownership,
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(APPLY_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let per_publish = (PUBLISH_EVERY.as_millis() / APPLY_EVERY.as_millis()) as u64;
            for n in 0u64.. {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.apply().await;
                if n % per_publish == 0 {
                    me.publish().await;
                }
            }
        });
        me
    }

    /// This replica's view now.
    pub fn own_view(&self) -> ReplicaView {
        let servers = self
            .bindings
            .load()
            .iter()
            .flat_map(|b| {
                b.upstreams.iter().map(|p| ServerBrief {
                    binding: b.name.clone(),
                    upstream: p.name.clone(),
                    endpoints: p
                        .view()
                        .into_iter()
                        .map(|e| EndpointBrief {
                            name: e.name,
                            state: e.state,
                            admin: e.admin,
                            in_flight: e.in_flight,
                            ejections: e.ejections,
                        })
                        .collect(),
                })
            })
            .collect();
        ReplicaView {
            node_id: self.node_id.clone(),
            at_ms: now_ms(),
            health: if self.ownership.draining() {
                "draining"
            } else {
                "ready"
            }
            .into(),
            open_sessions: self.sessions.upgrade().map_or(0, |s| s.live_count()),
            servers,
        }
    }

    pub(crate) async fn publish(&self) {
        let view = serde_json::to_vec(&self.own_view()).expect("serialisable");
        let key = format!("views/{}", self.node_id);
        if let Err(e) = self
            .cap
            .store
            .put(&key, view, Some(PUBLISH_EVERY * 3))
            .await
        {
            tracing::debug!(error = %e, "cannot publish this replica's view of the upstream pools");
        }
    }

    /// Every replica's published view (this one's as it is now), sorted by node id.
    pub async fn cluster(&self) -> Result<Vec<ReplicaView>, String> {
        let entries = self
            .cap
            .store
            .list("views/")
            .await
            .map_err(|e| format!("coordinator unavailable: {}", e.kind))?;
        let mut views: Vec<ReplicaView> = entries
            .iter()
            .filter_map(|e| serde_json::from_slice::<ReplicaView>(&e.value).ok())
            .filter(|v| v.node_id != self.node_id)
            .collect();
        views.push(self.own_view());
        views.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(views)
    }

    /// What `/api/cluster/nodes` adds per node: health and open sessions, from the views.
    pub async fn nodes(&self) -> HashMap<String, Value> {
        self.cluster()
            .await
            .unwrap_or_else(|_| vec![self.own_view()])
            .into_iter()
            .map(|v| {
                let facts = json!({"health": v.health, "open_sessions": v.open_sessions, "view_at_ms": v.at_ms});
                (v.node_id, facts)
            })
            .collect()
    }

    /// Sets `admin` on endpoint `endpoint` of upstream `upstream` in `binding` for the whole
    /// cluster (the key every replica applies), then here.
    pub async fn set_admin(
        &self,
        binding: &str,
        upstream: &str,
        endpoint: &str,
        admin: Admin,
    ) -> Result<(), String> {
        let key = admin_key(binding, upstream, endpoint);
        let r = match admin {
            Admin::Enabled => self.cap.store.delete(&key, None).await.map(|_| ()),
            _ => {
                let value = AdminKey {
                    binding: binding.into(),
                    upstream: upstream.into(),
                    endpoint: endpoint.into(),
                    admin,
                };
                let bytes = serde_json::to_vec(&value).expect("serialisable");
                self.cap.store.put(&key, bytes, None).await.map(|_| ())
            }
        };
        r.map_err(|e| format!("coordinator unavailable: {}", e.kind))?;
        if let Some(p) = self.pool(binding, upstream) {
            p.set_admin(endpoint, admin);
        }
        Ok(())
    }

    fn pool(&self, binding: &str, upstream: &str) -> Option<Arc<crate::mcp::upstream::pool::Pool>> {
        self.bindings
            .load()
            .iter()
            .find(|b| b.name == binding)?
            .upstreams
            .iter()
            .find(|p| p.name == upstream)
            .cloned()
    }

    /// Makes every endpoint's admin state here what the cluster's keys say (no key:
    /// enabled). When the coordinator cannot be read, nothing changes.
    pub(crate) async fn apply(&self) {
        let Ok(entries) = self.cap.store.list("admin/").await else {
            return;
        };
        let keys: Vec<AdminKey> = entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect();
        for b in self.bindings.load().iter() {
            for p in &b.upstreams {
                for m in &p.members {
                    let want = keys
                        .iter()
                        .find(|k| {
                            k.binding == b.name && k.upstream == p.name && k.endpoint == m.name
                        })
                        .map_or(Admin::Enabled, |k| k.admin);
                    if m.admin() != want {
                        p.set_admin(&m.name, want);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::tests::kit::{Replica, binding, binding_config, store};
    use crate::mcp::upstream::pool::Attempt;

    /// Replica `node` with a binding whose upstream `p` is a pool of two endpoints that cannot
    /// start (no probes; one failure ejects), and its pool views.
    async fn replica(
        s: &mcpg_plugin_api::memory::MemoryStore,
        node: &str,
    ) -> (Replica, Arc<PoolViews>) {
        let r = Replica::start(s, node, None, 10).await;
        let cfg = binding_config(json!({"upstreams": [{
            "name": "p",
            "health": {"interval_ms": 0, "outlier": {"consecutive_failures": 1}},
            "endpoints": [
                {"name": "a", "stdio": {"command": "/nonexistent/mcpg-unit-a"}},
                {"name": "b", "stdio": {"command": "/nonexistent/mcpg-unit-b"}},
            ],
        }]}));
        let b = binding(&r.caps, &cfg);
        let views = PoolViews::start(
            r.caps.pools.clone(),
            Arc::new(ArcSwap::from_pointee(vec![b])),
            &r.sessions,
            r.ownership.clone(),
        );
        (r, views)
    }

    fn state_of(v: &PoolViews, endpoint: &str) -> (State, Admin) {
        let e = v.bindings.load()[0].upstreams[0]
            .view()
            .into_iter()
            .find(|e| e.name == endpoint)
            .expect("the endpoint");
        (e.state, e.admin)
    }

    #[tokio::test]
    async fn a_replicas_view_is_shown_to_the_others_but_never_ejects_there() {
        let s = store();
        let (_r0, v0) = replica(&s, "n0").await;
        let (_r1, v1) = replica(&s, "n1").await;
        v0.bindings.load()[0].upstreams[0].attempt(0, Attempt::NotReached);
        assert_eq!(state_of(&v0, "a").0, State::Ejected);
        v0.publish().await;
        let cluster = v1.cluster().await.expect("the views");
        let ids: Vec<&str> = cluster.iter().map(|v| v.node_id.as_str()).collect();
        assert_eq!(ids, ["n0", "n1"]);
        assert_eq!(cluster[0].servers[0].endpoints[0].state, State::Ejected);
        assert_eq!(cluster[1].servers[0].endpoints[0].state, State::Healthy);
        // n1 reads n0's view and still sends to `a`.
        v1.apply().await;
        assert_eq!(state_of(&v1, "a"), (State::Healthy, Admin::Enabled));
        assert_eq!(v1.bindings.load()[0].upstreams[0].pick(&[1]), Some(0));
        let nodes = v1.nodes().await;
        assert_eq!(nodes["n0"]["health"], "ready");
        assert_eq!(nodes["n1"]["open_sessions"], 0);
    }

    #[tokio::test]
    async fn drain_and_disable_are_applied_by_every_replica_and_enable_undoes_them() {
        let s = store();
        let (_r0, v0) = replica(&s, "n0").await;
        let (_r1, v1) = replica(&s, "n1").await;
        v0.set_admin(BINDING, "p", "b", Admin::Draining)
            .await
            .expect("stored");
        assert_eq!(state_of(&v0, "b").1, Admin::Draining, "at once here");
        assert_eq!(state_of(&v1, "b").1, Admin::Enabled, "not yet there");
        v1.apply().await;
        assert_eq!(state_of(&v1, "b").1, Admin::Draining);
        v1.set_admin(BINDING, "p", "b", Admin::Disabled)
            .await
            .expect("stored");
        v0.apply().await;
        assert_eq!(state_of(&v0, "b").1, Admin::Disabled);
        v0.set_admin(BINDING, "p", "b", Admin::Enabled)
            .await
            .expect("stored");
        v1.apply().await;
        assert_eq!(state_of(&v1, "b").1, Admin::Enabled);
        // A replica started later finds the cluster's state.
        v0.set_admin(BINDING, "p", "a", Admin::Draining)
            .await
            .expect("stored");
        let (_r2, v2) = replica(&s, "n2").await;
        v2.apply().await;
        assert_eq!(state_of(&v2, "a").1, Admin::Draining);
    }

    use crate::mcp::tests::kit::BINDING;
}
