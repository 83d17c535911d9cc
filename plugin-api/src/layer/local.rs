//! [`LocalStore`]: the small store in process memory, the reference the layer is proven on
//! (and what a plugin author starts from before wiring a real backend).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Cond, Store};
use crate::coordinator::{CoordError, CoordResult, Entry};

#[derive(Default)]
struct State {
    revision: u64,
    items: BTreeMap<String, (Vec<u8>, u64, Option<Instant>)>,
    listeners: Vec<(String, mpsc::UnboundedSender<Vec<u8>>)>,
}

impl State {
    fn live(&mut self, key: &str) -> Option<Entry> {
        let (value, revision, expires) = self.items.get(key)?;
        if expires.is_some_and(|e| e <= Instant::now()) {
            self.items.remove(key);
            return None;
        }
        Some(Entry {
            key: key.to_owned(),
            value: value.clone(),
            revision: *revision,
        })
    }

    fn holds(&mut self, key: &str, cond: Cond) -> bool {
        match (cond, self.live(key)) {
            (Cond::Any, _) | (Cond::Absent, None) => true,
            (Cond::Revision(r), Some(e)) => e.revision == r,
            _ => false,
        }
    }
}

/// The small store in memory. Clones share one store: several layers over clones behave like
/// several replicas on one backend.
#[derive(Clone)]
pub struct LocalStore(Arc<Mutex<State>>, usize);

impl Default for LocalStore {
    fn default() -> Self {
        Self(Arc::default(), usize::MAX)
    }
}

impl LocalStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose channel takes payloads of at most `limit` bytes, as PostgreSQL's
    /// `NOTIFY` does: the layer sends larger ones by reference.
    pub fn with_max_payload(limit: usize) -> Self {
        Self(Arc::default(), limit)
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        Ok(self.0.lock().unwrap().live(key))
    }

    async fn put_if(
        &self,
        key: &str,
        cond: Cond,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let mut st = self.0.lock().unwrap();
        if !st.holds(key, cond) {
            return Ok(None);
        }
        st.revision += 1;
        let rev = st.revision;
        let expires = ttl.map(|t| Instant::now() + t);
        st.items.insert(key.to_owned(), (value, rev, expires));
        Ok(Some(rev))
    }

    async fn delete_if(&self, key: &str, cond: Cond) -> CoordResult<Option<u64>> {
        let mut st = self.0.lock().unwrap();
        if st.live(key).is_none() || !st.holds(key, cond) {
            return Ok(None);
        }
        st.items.remove(key);
        st.revision += 1;
        Ok(Some(st.revision))
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let mut st = self.0.lock().unwrap();
        let keys: Vec<String> = st
            .items
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        Ok(keys.iter().filter_map(|k| st.live(k)).collect())
    }

    fn max_payload(&self) -> usize {
        self.1
    }

    async fn send(&self, channel: &str, payload: Vec<u8>) -> CoordResult<()> {
        if payload.len() > self.1 {
            return Err(CoordError::invalid("payload over the channel's limit"));
        }
        let mut st = self.0.lock().unwrap();
        st.listeners
            .retain(|(c, tx)| c != channel || tx.send(payload.clone()).is_ok());
        Ok(())
    }

    async fn listen(&self, channel: &str) -> CoordResult<BoxStream<'static, Vec<u8>>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.0
            .lock()
            .unwrap()
            .listeners
            .push((channel.to_owned(), tx));
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}
