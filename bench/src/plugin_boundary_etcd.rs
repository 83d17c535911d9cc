//! Plugin-boundary benchmark for the etcd coordinator: through the `.so`, in-process, and
//! `etcd-client` making the same KV requests. The lease is a grant, a transaction and a
//! keep-alive stream of the plugin's own design, so its baseline is the plugin in-process. See
//! `bench/README.md`.

use std::future::Future;
use std::pin::Pin;

use mcpg_backends::EtcdServer;
use mcpg_bench::{Direct, args, host, run};
use mcpg_plugin_api::export::Plugin;
use serde_json::json;

struct EtcdDirect {
    client: etcd_client::Client,
}

impl Direct for EtcdDirect {
    fn supports(&self, op: &str) -> bool {
        op != "lease_acquire_release"
    }

    fn op<'a>(&'a mut self, op: &'a str, i: u64) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match op {
                "kv_get" => {
                    let r = self.client.get("/direct/kv/bench/key", None).await.unwrap();
                    assert!(!r.kvs().is_empty(), "seeded");
                }
                "kv_put" => {
                    self.client
                        .put("/direct/kv/bench/key", format!("value-{i}"), None)
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
    let args = args("plugin-boundary-etcd");
    let server = EtcdServer::start();
    let config = json!({"endpoints": [server.url()], "key_prefix": "/bench/"});
    let in_process = mcpg_cluster_etcd::EtcdPlugin::boot(
        json!({"endpoints": [server.url()], "key_prefix": "/inproc/"}),
        host("inproc"),
    )
    .await
    .unwrap();
    let client = etcd_client::Client::connect([server.url()], None)
        .await
        .unwrap();
    run(
        "etcd",
        "dev.mcpg.cluster.etcd",
        &args,
        config,
        in_process,
        Box::new(EtcdDirect { client }),
    )
    .await;
}
