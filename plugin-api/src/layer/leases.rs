//! Leases with fencing tokens on the small store.
//!
//! The token is a per-name counter advanced by compare-and-set (`fence/<name>`); the lease is
//! a record created only if absent (`lease/<name>`), with the lease's TTL. The two are two
//! keys, so a contender could advance the counter, stall, and create the record after a
//! later contender had held and released the lease, with a smaller token. Hence the rule: a
//! contender holds the lease only if, **after** creating the record, the counter still shows
//! its own token; otherwise it deletes its record and starts over. Two successive holders A
//! then B: B's re-read comes after its create, which comes after A's record was gone, which
//! comes after A's re-read; the counter only grows and each value is written once, so
//! `token(B) > token(A)`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{Cond, Layer};
use crate::coordinator::{CoordResult, KvEvent, Lease};
use crate::memory::lease_key;
use crate::support::{HeldLease, Renew, Renewal, action, keep_renewing, lease_ttl, retry_until};

const FENCE_PREFIX: &str = "\u{1}mcpg/fence/";

fn counter(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Layer {
    pub async fn derived_acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let ttl = lease_ttl(ttl, self.config().lease_ttl)?;
        let key = lease_key(name);
        // Subscribed before the first try, so a release in between is not missed; an expiry
        // raises no event and is found by retry_until's poll.
        let wake = if wait.is_zero() {
            None
        } else {
            let events = self.derived_watch_prefix(&key).await?;
            Some(
                events
                    .filter(|ev| futures::future::ready(matches!(ev, KvEvent::Delete { .. })))
                    .map(|_| ())
                    .boxed(),
            )
        };
        let held = retry_until(Instant::now() + wait, wake, || {
            self.try_acquire(name, &key, ttl)
        })
        .await?;
        Ok(held.map(|l| Box::new(l) as Box<dyn Lease>))
    }

    async fn try_acquire(
        &self,
        name: &str,
        key: &str,
        ttl: Duration,
    ) -> CoordResult<Option<HeldLease>> {
        let store = self.store().clone();
        let fence = format!("{FENCE_PREFIX}{name}");
        loop {
            if store.get(key).await?.is_some() {
                return Ok(None);
            }
            let sent = Instant::now();
            let current = store.get(&fence).await?;
            let (cond, token) = match &current {
                Some(e) => (Cond::Revision(e.revision), counter(&e.value) + 1),
                None => (Cond::Absent, 1),
            };
            let value = token.to_be_bytes().to_vec();
            if store.put_if(&fence, cond, value, None).await?.is_none() {
                continue;
            }
            let mut record = token.to_be_bytes().to_vec();
            record.extend_from_slice(self.config().node_id.as_bytes());
            let Some(rev) = self
                .write(key, Cond::Absent, record.clone(), Some(ttl))
                .await?
            else {
                return Ok(None);
            };
            let now = store.get(&fence).await?;
            if now.is_some_and(|e| counter(&e.value) == token) {
                let grant = Grant {
                    token,
                    revision: rev,
                    record,
                    ttl,
                    sent,
                };
                return Ok(Some(self.hold(name, key, grant)));
            }
            self.remove(key, Cond::Revision(rev)).await?;
        }
    }

    fn hold(&self, name: &str, key: &str, grant: Grant) -> HeldLease {
        let Grant {
            token,
            revision,
            record,
            ttl,
            sent,
        } = grant;
        let rev = Arc::new(Mutex::new(Some(revision)));
        let state = (self.clone(), key.to_owned(), rev.clone());
        let release = action(state, |(me, k, r)| async move {
            let current = r.lock().unwrap().take();
            if let Some(current) = current {
                me.remove(&k, Cond::Revision(current)).await?;
            }
            Ok(())
        });
        let (lease, signals) = HeldLease::new(name, token, ttl, release);
        let percent = u32::from(self.config().renew_percent.clamp(1, 99));
        let renew = LayerRenew {
            layer: self.clone(),
            key: key.to_owned(),
            record,
            ttl,
            rev,
        };
        keep_renewing(sent, ttl, ttl * percent / 100, signals, renew);
        lease
    }
}

/// What a successful acquire got: the token, the record as written (and its revision), the TTL,
/// and when the acquire was sent (renewal deadlines count from it).
struct Grant {
    token: u64,
    revision: u64,
    record: Vec<u8>,
    ttl: Duration,
    sent: Instant,
}

/// Renews the lease record by compare-and-set at its revision (not announced: a renewal is
/// not a change).
struct LayerRenew {
    layer: Layer,
    key: String,
    record: Vec<u8>,
    ttl: Duration,
    rev: Arc<Mutex<Option<u64>>>,
}

impl Renew for LayerRenew {
    async fn renew(&mut self) -> Renewal {
        let Some(current) = *self.rev.lock().unwrap() else {
            return Renewal::Lost;
        };
        let store = self.layer.store();
        match store
            .put_if(
                &self.key,
                Cond::Revision(current),
                self.record.clone(),
                Some(self.ttl),
            )
            .await
        {
            Ok(Some(r)) => {
                *self.rev.lock().unwrap() = Some(r);
                Renewal::Renewed
            }
            Ok(None) => Renewal::Lost,
            Err(_) => Renewal::Failed,
        }
    }

    fn lost(&mut self) {
        *self.rev.lock().unwrap() = None;
    }
}
