//! The cost of the plugin boundary: the same Redis operations through the Redis coordinator
//! plugin loaded as a `.so` (what mcpg does), and through the `redis` crate called directly
//! with the same commands and scripts, side by side in one run against one real redis-server.
//! The built-in `single_node` (in-process, no network) is measured too, for scale.
//!
//! Usage: `plugin-boundary PLUGIN_SO OUT_JSON [ITERATIONS_PER_ROUND] [ROUNDS]`
//! Variants run in interleaved rounds, so drift on a shared machine hits them alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpg_backends::RedisServer;
use mcpg_cluster_redis::coordinator::{ACQUIRE, PUT, RELEASE};
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::export::HostInfo;
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};
use mcpg_plugin_api::remote::LoadedPlugin;
use redis::Script;
use redis::aio::ConnectionManager;
use serde_json::json;

const OPS: [&str; 3] = ["kv_get", "kv_put", "lease_acquire_release"];
const VARIANTS: [&str; 3] = ["plugin_so", "redis_crate_direct", "single_node_in_process"];

struct Direct {
    conn: ConnectionManager,
    put: Script,
    acquire: Script,
    release: Script,
}

async fn op_coordinator(c: &Arc<dyn Coordinator>, op: &str, i: u64) {
    match op {
        "kv_get" => {
            c.get("bench/key").await.unwrap().expect("seeded");
        }
        "kv_put" => {
            c.put("bench/key", format!("value-{i}").into_bytes(), None)
                .await
                .unwrap();
        }
        _ => {
            let lease = c
                .acquire("bench-lease", Some(Duration::from_secs(30)), Duration::ZERO)
                .await
                .unwrap()
                .expect("uncontended");
            lease.release().await.unwrap();
        }
    }
}

async fn op_direct(d: &mut Direct, op: &str, i: u64) {
    // The same commands and scripts the plugin sends, so the difference is the boundary.
    match op {
        "kv_get" => {
            let (v, _r): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
                .arg("direct:kv:bench/key")
                .arg("v")
                .arg("r")
                .query_async(&mut d.conn)
                .await
                .unwrap();
            v.expect("seeded");
        }
        "kv_put" => {
            let _: u64 = d
                .put
                .key("direct:kv:bench/key")
                .key("direct:rev")
                .arg(format!("value-{i}"))
                .arg("")
                .arg("direct:ev:kv")
                .arg("bench/key")
                .arg("0")
                .invoke_async(&mut d.conn)
                .await
                .unwrap();
        }
        _ => {
            let nonce = format!("direct:{i}");
            let token: u64 = d
                .acquire
                .key("direct:lease:bench-lease")
                .key("direct:fence:bench-lease")
                .arg(&nonce)
                .arg(30_000)
                .invoke_async(&mut d.conn)
                .await
                .unwrap();
            assert!(token > 0);
            let _: i64 = d
                .release
                .key("direct:lease:bench-lease")
                .arg(&nonce)
                .arg("direct:ev:lease:bench-lease")
                .invoke_async(&mut d.conn)
                .await
                .unwrap();
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let so = args
        .get(1)
        .expect("usage: plugin-boundary PLUGIN_SO OUT_JSON [ITERATIONS] [ROUNDS]");
    let out = args
        .get(2)
        .expect("usage: plugin-boundary PLUGIN_SO OUT_JSON [ITERATIONS] [ROUNDS]");
    let iterations: u64 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(2000);
    let rounds: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(5);
    let warmup = iterations / 4;

    let server = RedisServer::start();
    let plugin = LoadedPlugin::load(std::path::Path::new(so), Some("dev.mcpg.cluster.redis"))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = json!({"url": server.url(), "key_prefix": "bench:"});
    let p = plugin.clone();
    let via_plugin = tokio::task::spawn_blocking(move || {
        p.boot(
            &config,
            &HostInfo {
                node_id: Some("bench".into()),
                host_version: "bench".into(),
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut direct = Direct {
        conn: ConnectionManager::new(client).await.unwrap(),
        put: Script::new(PUT),
        acquire: Script::new(ACQUIRE),
        release: Script::new(RELEASE),
    };
    let single: Arc<dyn Coordinator> =
        Arc::new(MemoryStore::new(MemoryConfig::default()).handle("bench"));

    // Seed the key each variant reads.
    op_coordinator(&via_plugin, "kv_put", 0).await;
    op_coordinator(&single, "kv_put", 0).await;
    op_direct(&mut direct, "kv_put", 0).await;

    let mut samples: std::collections::BTreeMap<(&str, &str), Vec<u64>> = Default::default();
    for round in 0..rounds {
        for op in OPS {
            for variant in VARIANTS {
                let n = if round == 0 {
                    iterations + warmup
                } else {
                    iterations
                };
                let mut lat = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let t = Instant::now();
                    match variant {
                        "plugin_so" => op_coordinator(&via_plugin, op, i).await,
                        "redis_crate_direct" => op_direct(&mut direct, op, i).await,
                        _ => op_coordinator(&single, op, i).await,
                    }
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                if round == 0 {
                    lat.drain(..warmup as usize);
                }
                samples.entry((op, variant)).or_default().extend(lat);
            }
        }
    }

    let mut results = Vec::new();
    let mut table = String::from(
        "| operation | variant | p50 µs | p99 µs | mean µs | p50 vs direct | p99 vs direct |\n|---|---|---|---|---|---|---|\n",
    );
    for op in OPS {
        let stats = |variant: &str| {
            let mut v = samples[&(op, variant)].clone();
            v.sort_unstable();
            let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
            (percentile(&v, 0.5), percentile(&v, 0.99), mean, v.len())
        };
        let (d50, d99, _, _) = stats("redis_crate_direct");
        for variant in VARIANTS {
            let (p50, p99, mean, n) = stats(variant);
            let r50 = p50 as f64 / d50 as f64;
            let r99 = p99 as f64 / d99 as f64;
            results.push(json!({
                "operation": op, "variant": variant, "samples": n,
                "p50_ns": p50, "p99_ns": p99, "mean_ns": mean.round(),
                "p50_ratio_to_direct": (r50 * 1000.0).round() / 1000.0,
                "p99_ratio_to_direct": (r99 * 1000.0).round() / 1000.0,
            }));
            table.push_str(&format!(
                "| {op} | {variant} | {:.1} | {:.1} | {:.1} | {r50:.2}× | {r99:.2}× |\n",
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0,
                mean / 1000.0
            ));
        }
    }
    let report = json!({
        "benchmark": "plugin-boundary",
        "what": "Redis coordinator operations through the plugin .so (FFI boundary, plugin runtime) vs the redis crate called directly with the same commands and scripts; single_node in-process for scale",
        "load": {"concurrency": 1, "iterations_per_round": iterations, "rounds": rounds, "warmup": warmup, "interleaved": true},
        "backend": "redis-server on loopback, no persistence",
        "payload": "values of ~10 bytes",
        "errors": 0,
        "results": results,
    });
    std::fs::write(out, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
    println!("{table}");
}
