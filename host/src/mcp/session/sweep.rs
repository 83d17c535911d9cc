//! Ending sessions nobody uses: each replica reaps its own idle sessions; under a cluster-wide
//! lease, one replica at a time sweeps the idle sessions of replicas that are gone (claiming
//! each, deleting its upstream sessions, removing its record).

use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::CasOutcome;

use super::record::{RECORD_FORMAT, SessionRecord, now_ms, record_key};
use super::{Live, Sessions};
use crate::mcp::binding::Binding;

impl Sessions {
    /// Every quarter of the idle TTL (between 1 s and 5 min), whichever replica takes the
    /// sweeper lease ends the sessions that departed replicas left idle ([`Sessions::sweep`]).
    pub fn spawn_sweeper(self: &Arc<Self>, bindings: Arc<arc_swap::ArcSwap<Vec<Arc<Binding>>>>) {
        let every = (self.idle_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = weak.upgrade() else { return };
                if s.ownership.draining() {
                    return;
                }
                if let Some(lease) = s.ownership.sweeper_lease(every * 2).await {
                    s.sweep(&bindings.load_full()).await;
                    let _ = lease.release().await;
                }
            }
        });
    }

    /// Ends sessions idle for longer than the TTL whose owner is gone (or which no replica
    /// owns after a hand-over): each is claimed (so no replica serves it meanwhile), its
    /// upstream HTTP sessions are deleted, and its record removed. Run under the cluster-wide
    /// sweeper lease, so by one replica at a time; sessions with a live owner are that
    /// owner's to reap.
    pub async fn sweep(&self, bindings: &[Arc<Binding>]) {
        let entries = match self.cap.store.list("s/").await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "session sweep: cannot list the session records");
                return;
            }
        };
        let now = now_ms();
        let idle = self.idle_ttl.as_millis() as u64;
        let peers = self.ownership.peers(true).await;
        for e in entries {
            let Ok(rec) = serde_json::from_slice::<SessionRecord>(&e.value) else {
                continue;
            };
            if rec.format > RECORD_FORMAT
                || now.saturating_sub(rec.active_ms.max(rec.created_ms)) <= idle
                || self.live.lock().expect("lock").contains_key(&rec.id)
            {
                continue;
            }
            let orphaned = if rec.owner.is_empty() {
                true
            } else if rec.owner == self.node_id() {
                self.ownership.held()
            } else if peers.contains_key(&rec.owner) {
                false
            } else {
                self.ownership
                    .owner_gone(&rec.owner, Duration::ZERO)
                    .await
                    .unwrap_or(false)
            };
            if !orphaned {
                continue;
            }
            let claimed = rec.claimed(self.node_id(), self.ownership.token());
            let key = record_key(&rec.id);
            let revision = match self
                .cap
                .store
                .compare_and_swap(
                    &key,
                    e.revision,
                    serde_json::to_vec(&claimed).expect("serialisable"),
                    Some(self.record_ttl()),
                )
                .await
            {
                Ok(CasOutcome::Swapped(r)) => r,
                _ => continue,
            };
            let mut closed = 0;
            if let Some(b) = bindings.iter().find(|b| b.name == rec.binding) {
                for u in &b.upstreams {
                    let Some(sid) = rec.upstream_sessions.get(&u.name) else {
                        continue;
                    };
                    let version = rec
                        .upstream_versions
                        .get(&u.name)
                        .unwrap_or(&rec.protocol_version);
                    let pin = rec.upstream_endpoints.get(&u.name).map(String::as_str);
                    if let Ok(l) = u.resume_at(pin, &rec.hello, (sid, version)).await {
                        l.conn.close().await;
                        closed += 1;
                    }
                }
            }
            let _ = self.cap.store.delete(&key, Some(revision)).await;
            tracing::info!(
                session = %rec.id,
                previous_owner = %rec.owner,
                upstream_sessions_closed = closed,
                "idle session of a departed replica cleaned up"
            );
        }
    }

    /// Ends sessions idle for longer than the TTL (or, when they never sent a request, for
    /// longer than the unused TTL since they started). Only the owner does this (a session's
    /// requests all reach its owner), so it happens once in the cluster.
    pub(super) async fn reap(&self) {
        let idle: Vec<Arc<Live>> = self
            .live
            .lock()
            .expect("lock")
            .values()
            .filter(|l| l.expired(self.idle_ttl, self.unused_ttl))
            .cloned()
            .collect();
        for l in idle {
            let unused = !l.used.load(std::sync::atomic::Ordering::SeqCst);
            tracing::info!(session = %l.id, binding = %l.binding.name, unused, "session idle past its TTL; closing");
            self.end(&l).await;
        }
    }
}
