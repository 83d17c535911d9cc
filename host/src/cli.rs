//! The `mcpg` command line and boot sequence: load and validate the config exactly as
//! `mcpg-config-check` does, set up logging, bind the listeners, serve until told to stop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{self, ClusterPlan};
use crate::{identity, server, telemetry};

/// mcpg: a clustered gateway for the Model Context Protocol.
#[derive(Debug, Parser)]
#[command(name = "mcpg", version, about)]
pub struct Args {
    /// The configuration file (YAML).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// This replica's node id; overrides the coordinator's `node_id` and the hostname.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

/// Exit codes: 0 clean shutdown, 1 invalid config or failed start, 2 unreadable config.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match config::load_file(&args.config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mcpg: {e}");
            return ExitCode::from(2);
        }
    };
    let file = args.config.display().to_string();
    for d in &outcome.diagnostics {
        eprintln!("{}", d.render(&file));
    }
    let Some(cfg) = outcome.config else {
        eprintln!(
            "mcpg: {file}: invalid configuration ({} errors); not starting",
            outcome.errors().count()
        );
        return ExitCode::from(1);
    };
    if let Some(id) = &args.node_id
        && let Err(e) = identity::validate(id)
    {
        eprintln!("mcpg: --node-id: {e}");
        return ExitCode::from(1);
    }
    telemetry::init(&cfg.config.observability.logs);

    let node_id = match &cfg.cluster {
        ClusterPlan::SingleNode => identity::single_node_id(args.node_id.as_deref()),
        ClusterPlan::Plugin { plugin_id, .. } => {
            // Loading coordinator plugins is the plugin ABI's job; until this build has it, say
            // so plainly instead of silently running as a single node.
            eprintln!(
                "mcpg: cluster.kind `{}` needs the coordinator plugin `{plugin_id}`, and this build cannot load coordinator plugins yet; use `cluster.kind: single_node`",
                cfg.config.cluster.kind
            );
            return ExitCode::from(1);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcpg: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let bound = match server::Bound::bind(cfg.listen, cfg.admin_listen).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("mcpg: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            node_id = %node_id,
            listen = %bound.main_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin_listen = ?bound.admin_addr().and_then(Result::ok),
            config = %file,
            summary = %cfg.summary(),
            "mcpg starting"
        );
        let s = &cfg.config.server;
        bound
            .serve(
                server::shutdown_signal(),
                Duration::from_millis(s.shutdown_delay_ms),
                Duration::from_millis(s.drain_timeout_ms),
            )
            .await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
