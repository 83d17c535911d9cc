//! The derived coordinator (`mcpg_plugin_api::layer::Layer`) passes the whole kit over the
//! small store in memory: the layer's leases, fencing, presence, watches and pub/sub are
//! proven here once for every backend built on it.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use mcpg_plugin_api::coordinator::{CoordResult, Coordinator, Entry};
use mcpg_plugin_api::layer::{Cond, Layer, LayerConfig, LocalStore, Store};
use mcpg_plugin_api::memory::lease_key;
use mcpg_plugin_testkit::{Harness, run};

struct LayerHarness(LocalStore);

fn config(node_id: &str) -> LayerConfig {
    LayerConfig {
        peer_ttl: Duration::from_millis(600),
        peer_refresh: Duration::from_millis(200),
        ..LayerConfig::new(node_id)
    }
}

#[async_trait::async_trait]
impl Harness for LayerHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        Arc::new(Layer::new(self.0.clone(), config(node_id)))
    }

    async fn break_lease(&self, name: &str) -> bool {
        matches!(
            self.0.delete_if(&lease_key(name), Cond::Any).await,
            Ok(Some(_))
        )
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_millis(600)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_over_the_in_memory_store_passes_the_test_kit() {
    run(&LayerHarness(LocalStore::new())).await.assert_passed();
}

/// A channel that takes only small payloads (as PostgreSQL's `NOTIFY`): the layer passes the
/// kit's large messages and watch events by reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_over_a_store_with_a_small_channel_limit_passes_the_test_kit() {
    run(&LayerHarness(LocalStore::with_max_payload(100)))
        .await
        .assert_passed();
}

/// A store that stalls one contender right after it advanced a fencing counter, until told to
/// go on: the race the layer's re-check exists for.
struct Stalling {
    inner: LocalStore,
    stalled: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    go: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Store for Stalling {
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        self.inner.get(key).await
    }
    async fn put_if(
        &self,
        key: &str,
        cond: Cond,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let out = self.inner.put_if(key, cond, value, ttl).await?;
        let tell = match key.contains("mcpg/fence/") {
            true => self.stalled.lock().unwrap().take(),
            false => None,
        };
        if let Some(tell) = tell {
            let _ = tell.send(());
            self.go.notified().await;
        }
        Ok(out)
    }
    async fn delete_if(&self, key: &str, cond: Cond) -> CoordResult<Option<u64>> {
        self.inner.delete_if(key, cond).await
    }
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        self.inner.list(prefix).await
    }
    async fn send(&self, channel: &str, payload: Vec<u8>) -> CoordResult<()> {
        self.inner.send(channel, payload).await
    }
    async fn listen(&self, channel: &str) -> CoordResult<BoxStream<'static, Vec<u8>>> {
        self.inner.listen(channel).await
    }
}

/// A contender that advanced the counter, stalled while another held and released the lease,
/// and then created the record must not hold the lease with its older, smaller token: it
/// starts over and gets a larger one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_contender_never_holds_a_smaller_token_than_an_earlier_holder() {
    let shared = LocalStore::new();
    let (tell, stalled) = tokio::sync::oneshot::channel();
    let slow = Arc::new(Stalling {
        inner: shared.clone(),
        stalled: std::sync::Mutex::new(Some(tell)),
        go: tokio::sync::Notify::new(),
    });
    let a = Layer::from_arc(slow.clone(), config("a"));
    let b = Layer::new(shared.clone(), config("b"));
    let ttl = Some(Duration::from_secs(30));
    let first = tokio::spawn(async move { a.acquire("x", ttl, Duration::from_secs(30)).await });
    stalled.await.unwrap();
    let middle = b
        .acquire("x", ttl, Duration::ZERO)
        .await
        .unwrap()
        .expect("the stalled contender has not created its record yet");
    middle.release().await.unwrap();
    slow.go.notify_one();
    let late = first.await.unwrap().unwrap().expect("the lease is free");
    assert!(
        late.token() > middle.token(),
        "token {} held after token {}",
        late.token(),
        middle.token()
    );
}
