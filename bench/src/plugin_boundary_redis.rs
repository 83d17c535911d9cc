//! Plugin-boundary benchmark for the Redis coordinator: through the `.so`, in-process, and the
//! `redis` crate sending the same commands and Lua scripts. See `bench/README.md`.

use std::future::Future;
use std::pin::Pin;

use mcpg_backends::RedisServer;
use mcpg_bench::{Direct, args, host, run};
use mcpg_plugin_api::export::Plugin;
use serde_json::json;

struct RedisDirect {
    conn: redis::aio::ConnectionManager,
    put: redis::Script,
    acquire: redis::Script,
    release: redis::Script,
}

impl Direct for RedisDirect {
    fn supports(&self, _op: &str) -> bool {
        true
    }

    fn op<'a>(&'a mut self, op: &'a str, i: u64) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let conn = &mut self.conn;
            match op {
                "kv_get" => {
                    let (v, _r): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
                        .arg("direct:kv:bench/key")
                        .arg("v")
                        .arg("r")
                        .query_async(conn)
                        .await
                        .unwrap();
                    v.expect("seeded");
                }
                "kv_put" => {
                    let _: u64 = self
                        .put
                        .key("direct:kv:bench/key")
                        .key("direct:rev")
                        .arg(format!("value-{i}"))
                        .arg("")
                        .arg("direct:ev:kv")
                        .arg("bench/key")
                        .arg("0")
                        .invoke_async(conn)
                        .await
                        .unwrap();
                }
                _ => {
                    let nonce = format!("direct:{i}");
                    let token: u64 = self
                        .acquire
                        .key("direct:lease:bench-lease")
                        .key("direct:fence:bench-lease")
                        .arg(&nonce)
                        .arg(30_000)
                        .invoke_async(&mut *conn)
                        .await
                        .unwrap();
                    assert!(token > 0);
                    let _: i64 = self
                        .release
                        .key("direct:lease:bench-lease")
                        .arg(&nonce)
                        .arg("direct:ev:lease:bench-lease")
                        .invoke_async(conn)
                        .await
                        .unwrap();
                }
            }
        })
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args("plugin-boundary-redis");
    let server = RedisServer::start();
    let config = json!({"url": server.url(), "key_prefix": "bench:"});
    let client = redis::Client::open(server.url()).unwrap();
    let direct = RedisDirect {
        conn: redis::aio::ConnectionManager::new(client).await.unwrap(),
        put: redis::Script::new(mcpg_cluster_redis::coordinator::PUT),
        acquire: redis::Script::new(mcpg_cluster_redis::coordinator::ACQUIRE),
        release: redis::Script::new(mcpg_cluster_redis::coordinator::RELEASE),
    };
    let in_process = mcpg_cluster_redis::RedisPlugin::boot(
        json!({"url": server.url(), "key_prefix": "inproc:"}),
        host("inproc"),
    )
    .await
    .unwrap();
    run(
        "redis",
        "dev.mcpg.cluster.redis",
        &args,
        config,
        in_process,
        Box::new(direct),
    )
    .await;
}
