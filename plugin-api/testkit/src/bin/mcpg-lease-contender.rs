//! One process of the cross-process lease-safety run ([`mcpg_plugin_testkit::lease_safety_processes`]
//! starts several): loads a coordinator plugin, boots it as one replica, and runs contenders
//! for one lease until a stop file appears, logging every holding as one JSON line.
//! Its whole input is the JSON in `MCPG_LEASE_CHILD` (written by the parent).

use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_testkit::processes::{ChildPlan, Holding, append_line, monotonic};

fn main() {
    let plan: ChildPlan = serde_json::from_str(
        &std::env::var("MCPG_LEASE_CHILD").expect("MCPG_LEASE_CHILD: the parent's plan"),
    )
    .expect("MCPG_LEASE_CHILD is a plan");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(plan));
}

async fn run(plan: ChildPlan) {
    let plugin = mcpg_plugin_api::remote::LoadedPlugin::load(
        std::path::Path::new(&plan.library),
        Some(&plan.id),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", plan.library));
    let c = mcpg_plugin_testkit::boot(&plugin, plan.config.clone(), &plan.node)
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let plan = Arc::new(plan);
    let mut tasks = Vec::new();
    for k in 0..plan.contenders {
        let (c, plan) = (c.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let ttl = Duration::from_millis(plan.ttl_ms);
            let stop = std::path::Path::new(&plan.stop);
            while !stop.exists() {
                let sent = monotonic();
                let lease = match c
                    .acquire(&plan.name, Some(ttl), Duration::from_secs(2))
                    .await
                {
                    Ok(Some(l)) => l,
                    Ok(None) => continue,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let start = monotonic();
                // Long enough that a pause often lands inside a holding.
                tokio::time::sleep(Duration::from_millis(10)).await;
                // The holder writes to the register only while it believes it holds the lease.
                let believes = !lease.is_lost();
                let write_at = believes.then(monotonic);
                let end = monotonic();
                append_line(
                    &plan.log,
                    &Holding {
                        holder: format!("{}/{k}", plan.node),
                        token: lease.token(),
                        sent,
                        start,
                        end,
                        write_at,
                    },
                );
                let _ = lease.release().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
