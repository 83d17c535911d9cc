//! The `mcpg` command line and boot sequence: load and validate the config exactly as
//! `mcpg-config-check` does (plugin phase included), boot the coordinator, bind the listeners,
//! register presence and join leader election, serve until told to stop, then resign and drain.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::capabilities::Capabilities;
use crate::config::{self, Severity};
use crate::control::ControlPlane;
use crate::mcp::Gateway;
use crate::{coordinator, identity, server, telemetry};

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

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mcpg: {message}");
    ExitCode::from(1)
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
        return fail(format!(
            "{file}: invalid configuration ({} errors); not starting",
            outcome.errors().count()
        ));
    };
    if let Some(id) = &args.node_id
        && let Err(e) = identity::validate(id)
    {
        return fail(format!("--node-id: {e}"));
    }
    telemetry::init(&cfg.config.observability.logs);

    // The plugin phase: load the coordinator plugin and let it check its own keys, positioned
    // in the file like every other config error.
    let plugin = match coordinator::load_selected(&cfg) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Some(p) = &plugin {
        let diags = match coordinator::plugin_diagnostics(&cfg, p) {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        for d in &diags {
            eprintln!("{}", d.render(&file));
        }
        let errors = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        if errors > 0 {
            return fail(coordinator::CoordinatorError::Invalid {
                id: p.id().to_owned(),
                count: errors,
            });
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(run(cfg, plugin, args.node_id, file))
}

async fn run(
    cfg: config::ValidatedConfig,
    plugin: Option<mcpg_plugin_api::remote::LoadedPlugin>,
    node_id_flag: Option<String>,
    file: String,
) -> ExitCode {
    let booted = match coordinator::boot(&cfg, plugin, node_id_flag.as_deref()).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let node_id = booted.coordinator.node_id();
    if let Err(e) = identity::validate(&node_id) {
        return fail(format!("the coordinator's node id: {e}"));
    }
    let capabilities =
        match Capabilities::build(&cfg.config.mcp.configurations, &booted.coordinator) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
    // HTTPS upstreams use rustls with the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gateway = Gateway::new(&cfg, capabilities, node_id.clone());
    let bound = match server::Bound::bind(cfg.listen, cfg.admin_listen).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    tracing::info!(
        node_id = %node_id,
        listen = %bound.main_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin_listen = ?bound.admin_addr().and_then(Result::ok),
        config = %file,
        summary = %cfg.summary(),
        "mcpg starting"
    );
    let control = match ControlPlane::start(
        booted.coordinator.clone(),
        booted.kind.clone(),
        cfg.advertise_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned()),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "cannot register this replica's presence with the coordinator: {e}"
            ));
        }
    };
    let running = bound.start(
        gateway.router().merge(control.meta_router()),
        control.router().merge(gateway.admin_router()),
    );
    // Ready only once presence is registered: peers can see this replica.
    running.readiness.set_ready();
    tracing::info!("ready");

    server::shutdown_signal().await;
    running.readiness.set_draining();
    let s = &cfg.config.server;
    tracing::info!(
        delay_ms = s.shutdown_delay_ms,
        drain_ms = s.drain_timeout_ms,
        "shutting down: unready, resigning, draining"
    );
    control.shutdown().await;
    let drained = running
        .shutdown(
            Duration::from_millis(s.shutdown_delay_ms),
            Duration::from_millis(s.drain_timeout_ms),
        )
        .await;
    gateway.shutdown().await;
    tracing::info!(drained, "stopped");
    ExitCode::SUCCESS
}
