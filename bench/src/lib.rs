//! Shared parts of the plugin-boundary benchmarks: the operations, the measurement loop, and
//! the report. Each backend has its own binary because two plugin crates cannot be linked into
//! one executable (each exports the same root-module symbol, as a loadable plugin must).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::export::HostInfo;
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};
use mcpg_plugin_api::remote::LoadedPlugin;
use serde_json::{Value, json};

pub const OPS: [&str; 3] = ["kv_get", "kv_put", "lease_acquire_release"];

/// The backend's own client doing what the plugin does for one operation.
pub trait Direct: Send {
    /// Whether the client variant implements `op` with the same requests as the plugin.
    fn supports(&self, op: &str) -> bool;
    fn op<'a>(&'a mut self, op: &'a str, i: u64) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

pub fn host(id: &str) -> HostInfo {
    HostInfo {
        node_id: Some(id.into()),
        host_version: "bench".into(),
    }
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Command-line arguments shared by the benchmark binaries.
pub struct Args {
    pub so: String,
    pub out: String,
    pub iterations: u64,
    pub rounds: usize,
}

pub fn args(name: &str) -> Args {
    let a: Vec<String> = std::env::args().collect();
    let usage = format!("usage: {name} PLUGIN_SO OUT_JSON [ITERATIONS_PER_ROUND] [ROUNDS]");
    Args {
        so: a.get(1).expect(&usage).clone(),
        out: a.get(2).expect(&usage).clone(),
        iterations: a.get(3).map(|s| s.parse().unwrap()).unwrap_or(2000),
        rounds: a.get(4).map(|s| s.parse().unwrap()).unwrap_or(5),
    }
}

/// Runs every operation on the four variants in interleaved rounds and writes the report.
pub async fn run(
    backend: &str,
    plugin_id: &str,
    args: &Args,
    so_config: Value,
    in_process: Arc<dyn Coordinator>,
    mut direct: Box<dyn Direct>,
) {
    let warmup = args.iterations / 4;
    let plugin = LoadedPlugin::load(std::path::Path::new(&args.so), Some(plugin_id))
        .unwrap_or_else(|e| panic!("{e}"));
    let p = plugin.clone();
    let via_so = tokio::task::spawn_blocking(move || p.boot(&so_config, &host("bench")))
        .await
        .unwrap()
        .unwrap();
    let single: Arc<dyn Coordinator> =
        Arc::new(MemoryStore::new(MemoryConfig::default()).handle("bench"));
    let variants = [
        "plugin_so",
        "plugin_in_process",
        "client_direct",
        "single_node_in_process",
    ];
    for c in [&via_so, &in_process, &single] {
        op_coordinator(c, "kv_put", 0).await;
    }
    direct.op("kv_put", 0).await;

    let mut samples: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for round in 0..args.rounds {
        for op in OPS {
            for variant in variants {
                if variant == "client_direct" && !direct.supports(op) {
                    continue;
                }
                let n = if round == 0 {
                    args.iterations + warmup
                } else {
                    args.iterations
                };
                let mut lat = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let t = Instant::now();
                    match variant {
                        "plugin_so" => op_coordinator(&via_so, op, i).await,
                        "plugin_in_process" => op_coordinator(&in_process, op, i).await,
                        "client_direct" => direct.op(op, i).await,
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
        "| operation | variant | p50 µs | p99 µs | mean µs | p50 / baseline | p99 / baseline |\n|---|---|---|---|---|---|---|\n",
    );
    for op in OPS {
        let stats = |variant: &str| {
            samples.get(&(op, variant)).map(|v| {
                let mut v = v.clone();
                v.sort_unstable();
                let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
                (percentile(&v, 0.5), percentile(&v, 0.99), mean, v.len())
            })
        };
        // The baseline is the client called directly, or the plugin's code in-process where
        // there is no direct equivalent.
        let baseline = if stats("client_direct").is_some() {
            "client_direct"
        } else {
            "plugin_in_process"
        };
        let (b50, b99, _, _) = stats(baseline).unwrap();
        for variant in variants {
            let Some((p50, p99, mean, n)) = stats(variant) else {
                continue;
            };
            let (r50, r99) = (p50 as f64 / b50 as f64, p99 as f64 / b99 as f64);
            results.push(json!({
                "operation": op, "variant": variant, "samples": n, "baseline": baseline,
                "p50_ns": p50, "p99_ns": p99, "mean_ns": mean.round(),
                "p50_ratio_to_baseline": (r50 * 1000.0).round() / 1000.0,
                "p99_ratio_to_baseline": (r99 * 1000.0).round() / 1000.0,
            }));
            table.push_str(&format!(
                "| {op} | {variant} | {:.1} | {:.1} | {:.1} | {r50:.3}× | {r99:.3}× |\n",
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0,
                mean / 1000.0
            ));
        }
    }
    let report = json!({
        "benchmark": "plugin-boundary",
        "backend": backend,
        "what": "coordinator operations through the plugin .so (FFI boundary + plugin runtime), the same plugin code in-process, the backend's client crate called directly with the same requests, and single_node in-process for scale",
        "load": {"concurrency": 1, "iterations_per_round": args.iterations, "rounds": args.rounds, "warmup": warmup, "interleaved": true},
        "server": "started by the benchmark on loopback, no persistence",
        "payload": "values of ~10 bytes",
        "errors": 0,
        "results": results,
    });
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&report).unwrap() + "\n",
    )
    .unwrap();
    println!("{table}");
}
