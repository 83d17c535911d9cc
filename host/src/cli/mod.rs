//! The `mcpg` command line: parses the arguments and dispatches to a subcommand or to serving
//! (load and validate the config exactly as `mcpg-config-check` does, plugin phase included,
//! start a [`Replica`], wait for SIGTERM, drain). Builds the process's one Tokio runtime.
//!
//! - `args.rs`: the clap types and the flags that override config keys.
//! - `plugin.rs`: `mcpg plugin push|pull|inspect`.
//! - `audit.rs`: `mcpg audit verify`.
//! - `replica.rs`: [`Replica`]: `start` (bind, join the cluster, serve) and `drain`.
//! - `reload.rs`: what triggers a config reload (SIGHUP, the file watch, the admin route).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use mcpg_plugin_api::remote::LoadedPlugin;

use crate::config::model::Scheduler;
use crate::config::{self, Severity, ValidatedConfig};
use crate::{coordinator, identity, server, telemetry};

mod args;
mod audit;
mod plugin;
mod reload;
mod replica;

pub use args::{Args, AuditCommand, Command, PluginCommand, RegistryArgs};
pub use replica::{Options, ReloadSource, Replica, StartError};

/// Exit codes: 0 clean shutdown, 1 invalid config or failed start, 2 unreadable config.
pub fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Plugin(cmd)) => {
            telemetry::init(&Default::default(), None);
            install_crypto();
            on_runtime(plugin::run(cmd))
        }
        Some(Command::Audit(cmd)) => audit::run(cmd),
        None => serve(args),
    }
}

/// `mcpg --config FILE`: serves until SIGTERM or Ctrl-C, then drains and exits 0.
fn serve(args: Args) -> ExitCode {
    let config_path = args
        .config
        .clone()
        .expect("clap requires --config without a command");
    install_crypto();
    let (cfg, file, digest) = match load_config(&config_path, &args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if let Some(id) = &args.node_id
        && let Err(e) = identity::validate(id)
    {
        return fail(format!("--node-id: {e}"));
    }
    telemetry::init(&cfg.config.observability, cfg.parsed.traces_endpoint());
    let overrides = args.overrides();
    let threads = cfg.config.server.worker_threads;
    on_runtime_with(threads, cfg.config.server.scheduler, async move {
        let hangups = reload::hangups();
        let shutdown = server::shutdown_signal();
        let plugin = match plugin_phase(&cfg, &file).await {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let options = replica::Options {
            plugin,
            node_id: args.node_id,
            wait_for_cluster: args.wait_for_cluster,
            config_file: file,
            reload: replica::ReloadSource {
                path: config_path,
                overrides,
                digest,
                hangups,
            },
        };
        let replica = match Replica::start(&cfg, options).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        shutdown.await;
        replica.drain().await;
        ExitCode::SUCCESS
    })
}

/// Loads the config with the flags' overrides and prints every diagnostic. `Err` is the exit
/// code: 2 when the file cannot be read, 1 when it is invalid.
fn load_config(path: &Path, args: &Args) -> Result<(ValidatedConfig, String, String), ExitCode> {
    let (outcome, digest) = match config::load_file_hashed(path, &args.overrides()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mcpg: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let file = path.display().to_string();
    for d in &outcome.diagnostics {
        eprintln!("{}", d.render(&file));
    }
    match outcome.config {
        Some(cfg) => Ok((cfg, file, digest)),
        None => Err(fail(format!(
            "{file}: invalid configuration ({} errors); not starting",
            outcome.errors().count()
        ))),
    }
}

/// The plugin phase: loads the coordinator plugin and lets it check its own keys, positioned
/// in the file like every other config error.
async fn plugin_phase(
    cfg: &ValidatedConfig,
    file: &str,
) -> Result<Option<LoadedPlugin>, coordinator::CoordinatorError> {
    let plugin = coordinator::load_selected(cfg).await?;
    if let Some(p) = &plugin {
        let diags = coordinator::plugin_diagnostics(cfg, p)?;
        for d in &diags {
            eprintln!("{}", d.render(file));
        }
        let errors = diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        if errors > 0 {
            return Err(coordinator::CoordinatorError::Invalid {
                id: p.id().to_owned(),
                count: errors,
            });
        }
    }
    Ok(plugin)
}

/// Runs `work` on the process's main Tokio runtime, built here and nowhere else in the host
/// (the serving threads' runtimes aside, `server::threads`). Each plugin runs its own inside
/// its library, by design: a cdylib links its own Tokio.
fn on_runtime(work: impl Future<Output = ExitCode>) -> ExitCode {
    on_runtime_with(0, Scheduler::WorkStealing, work)
}

/// [`on_runtime`] with `threads` threads serving requests (`server.worker_threads`; 0 is one
/// per CPU) spread as `scheduler` says. `pinned` starts
/// that many serving threads, and the main runtime, which then only accepts connections and
/// runs the control plane, gets at most two workers.
fn on_runtime_with(
    threads: u16,
    scheduler: Scheduler,
    work: impl Future<Output = ExitCode>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match scheduler {
        Scheduler::WorkStealing => {
            if threads > 0 {
                builder.worker_threads(usize::from(threads));
            }
        }
        Scheduler::Pinned => {
            let n = match threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => usize::from(n),
            };
            if let Err(e) = server::threads::start(n) {
                return fail(format!("cannot start the serving threads: {e}"));
            }
            builder.worker_threads(n.min(2));
        }
    }
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(work),
        Err(e) => fail(format!("cannot start the async runtime: {e}")),
    }
}

/// HTTPS (upstreams, registries) uses rustls with the ring provider.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mcpg: {message}");
    ExitCode::from(1)
}
