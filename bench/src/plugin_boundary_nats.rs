//! Plugin-boundary benchmark for the NATS coordinator: through the `.so`, in-process, and
//! `async-nats` making the same KV requests. The lease is several JetStream requests of the
//! plugin's own design, so its baseline is the plugin in-process. See `bench/README.md`.

use std::future::Future;
use std::pin::Pin;

use mcpg_backends::NatsServer;
use mcpg_bench::{Direct, args, host, run};
use mcpg_plugin_api::export::Plugin;
use serde_json::json;

struct NatsDirect {
    kv: async_nats::jetstream::kv::Store,
}

impl Direct for NatsDirect {
    fn supports(&self, op: &str) -> bool {
        op != "lease_acquire_release"
    }

    fn op<'a>(&'a mut self, op: &'a str, i: u64) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match op {
                "kv_get" => {
                    self.kv.entry("bench/key").await.unwrap().expect("seeded");
                }
                "kv_put" => {
                    self.kv
                        .put("bench/key", bytes::Bytes::from(format!("value-{i}")))
                        .await
                        .unwrap();
                }
                other => unreachable!("{other} has no direct variant"),
            }
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args("plugin-boundary-nats");
    let server = NatsServer::start();
    let config = json!({"servers": [server.url()], "node": {"id": "bench"}, "jetstream": {"storage": "memory"}});
    let in_process = mcpg_cluster_nats::NatsPlugin::boot(
        json!({"servers": [server.url()], "node": {"id": "inproc"}, "jetstream": {
            "storage": "memory", "state_bucket": "inproc-state", "leases_bucket": "inproc-leases",
            "fencing_bucket": "inproc-fencing", "notifications_stream": "inproc-notifications"}}),
        host("inproc"),
    )
    .await
    .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "direct-state".into(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    run(
        "nats",
        "dev.mcpg.cluster.nats",
        &args,
        config,
        in_process,
        Box::new(NatsDirect { kv }),
    )
    .await;
}
