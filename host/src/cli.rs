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
use crate::mcp::cluster::ownership::{Ownership, OwnershipError};
use crate::{coordinator, identity, server, telemetry};
use std::sync::Arc;

/// mcpg: a clustered gateway for the Model Context Protocol.
#[derive(Debug, Parser)]
#[command(name = "mcpg", version, about, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration file (YAML).
    #[arg(long, short = 'c', value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    /// This replica's node id; overrides the coordinator's `node_id` and the hostname.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Overrides `server.listen` (`IP:PORT`), so one config file serves every replica.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Overrides `server.admin_listen` (`IP:PORT`).
    #[arg(long, value_name = "IP:PORT")]
    pub admin_listen: Option<String>,
    /// Overrides `server.advertise_url`: where the other replicas reach this one.
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// When the cluster backend cannot be reached at start, keep running (not ready) and
    /// retry until it answers, instead of exiting with an error.
    #[arg(long)]
    pub wait_for_cluster: bool,
}

/// Commands besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Publish, fetch and look at plugins in OCI registries.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Check audit log files.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `mcpg audit …`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Checks audit files against their hash chain (every record's hash, the links between
    /// records and files, the seq numbering). Exit 0: intact; 1: problems, each printed;
    /// 2: a file could not be read.
    Verify {
        /// The live file and any rotated ones (`audit.jsonl*`), in any order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs `mcpg audit …`.
fn audit_command(cmd: AuditCommand) -> ExitCode {
    let AuditCommand::Verify { files } = cmd;
    match crate::audit::verify(&files) {
        Ok(report) => {
            println!("OK: {report}");
            ExitCode::SUCCESS
        }
        Err(crate::audit::VerifyError::Invalid { summary, problems }) => {
            for p in &problems {
                println!("{p}");
            }
            println!("FAILED: {} problem(s) in {summary}", problems.len());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mcpg: {e}");
            ExitCode::from(2)
        }
    }
}

/// `mcpg plugin …`
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Packs a plugin library built for this machine (its id, ABI version, platform and config
    /// schema read from the library) and pushes it to a registry tag, keeping the builds for
    /// other platforms already published there.
    Push {
        /// The plugin's shared library (`.so`).
        file: PathBuf,
        /// Where to push: `registry/repository:tag`.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pulls a plugin into the cache (every digest verified) and prints where its library is.
    Pull {
        /// `registry/repository:tag` or `registry/repository@sha256:…`.
        reference: String,
        /// The build to pull, `os/architecture` (default: this machine's).
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// The plugin cache (default: `$MCPG_PLUGIN_CACHE`, `$XDG_CACHE_HOME/mcpg/plugins` or
        /// `~/.cache/mcpg/plugins`).
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Shows what a reference holds: the digest it resolves to and each platform's build.
    Inspect {
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// How to reach a registry.
#[derive(Debug, clap::Args)]
pub struct RegistryArgs {
    /// Talk to the registry over plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Registry user name; the password is read from `$MCPG_REGISTRY_PASSWORD`. Without it,
    /// the container tools' credentials file (`$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`) is used when it has the registry, else none.
    #[arg(long, value_name = "USER")]
    pub username: Option<String>,
}

impl RegistryArgs {
    fn basic(&self) -> Result<crate::oci::Basic, String> {
        match &self.username {
            None => Ok(None),
            Some(u) => match std::env::var("MCPG_REGISTRY_PASSWORD") {
                Ok(p) => Ok(Some((u.clone(), p))),
                Err(_) => Err("--username needs the password in $MCPG_REGISTRY_PASSWORD".into()),
            },
        }
    }
}

/// Runs `mcpg plugin …`.
fn plugin_command(cmd: PluginCommand) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let out = rt.block_on(async {
        match cmd {
            PluginCommand::Push {
                file,
                reference,
                registry,
            } => {
                let p = crate::oci::push(&file, &reference, registry.plain_http, registry.basic()?)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({
                    "pushed": reference,
                    "digest": p.index_digest,
                    "pinned": pinned(&reference, &p.index_digest),
                    "platform": p.info.platform.to_string(),
                    "manifest_digest": p.manifest_digest,
                    "id": p.info.id,
                    "abi": p.info.abi,
                }))
            }
            PluginCommand::Pull {
                reference,
                platform,
                cache_dir,
                registry,
            } => {
                let want = match platform {
                    Some(p) => crate::oci::artifact::Platform::parse(&p).ok_or_else(|| {
                        format!("--platform `{p}`: expected OS/ARCH, e.g. linux/amd64")
                    })?,
                    None => crate::oci::artifact::Platform::host(),
                };
                let src = crate::oci::Source {
                    reference: reference.clone(),
                    policy: crate::config::model::PullPolicy::Always,
                    plain_http: registry.plain_http,
                    basic: registry.basic()?,
                    cache_dir: cache_dir.unwrap_or_else(crate::oci::cache::default_dir),
                };
                let r = crate::oci::fetch(&src, &want, None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({
                    "pulled": reference,
                    "digest": r.digest,
                    "id": r.info.id,
                    "platform": r.info.platform.to_string(),
                    "abi": r.info.abi,
                    "library": r.library,
                }))
            }
            PluginCommand::Inspect {
                reference,
                registry,
            } => crate::oci::inspect(&reference, registry.plain_http, registry.basic()?)
                .await
                .map_err(|e| e.to_string()),
        }
    });
    match out {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `registry/repository@digest` for a pushed tag.
fn pinned(reference: &str, digest: &str) -> String {
    let repo = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    };
    format!("{repo}@{digest}")
}

impl Args {
    /// The flags that override keys of the config file.
    fn overrides(&self) -> Vec<config::Override> {
        let mut out = Vec::new();
        for (flag, pointer, value) in [
            ("--listen", "/server/listen", &self.listen),
            ("--admin-listen", "/server/admin_listen", &self.admin_listen),
            (
                "--advertise-url",
                "/server/advertise_url",
                &self.advertise_url,
            ),
        ] {
            if let Some(v) = value {
                out.push(config::Override {
                    flag,
                    pointer,
                    value: serde_json::Value::String(v.clone()),
                });
            }
        }
        out
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mcpg: {message}");
    ExitCode::from(1)
}

/// Exit codes: 0 clean shutdown, 1 invalid config or failed start, 2 unreadable config.
pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Plugin(cmd)) = args.command {
        telemetry::init(&Default::default());
        return plugin_command(cmd);
    }
    if let Some(Command::Audit(cmd)) = args.command {
        return audit_command(cmd);
    }
    let config_path = args
        .config
        .clone()
        .expect("clap requires --config without a command");
    // HTTPS (upstreams, registries) uses rustls with the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let outcome = match config::load_file_with_overrides(&config_path, &args.overrides()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mcpg: {e}");
            return ExitCode::from(2);
        }
    };
    let file = config_path.display().to_string();
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
    telemetry::init(&cfg.config.observability);

    // The one Tokio runtime of the process (each plugin runs its own inside its library).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let plugin = match plugin_phase(&cfg, &file).await {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        run(cfg, plugin, args.node_id, args.wait_for_cluster, file).await
    })
}

/// The plugin phase: loads the coordinator plugin and lets it check its own keys, positioned
/// in the file like every other config error.
async fn plugin_phase(
    cfg: &config::ValidatedConfig,
    file: &str,
) -> Result<Option<mcpg_plugin_api::remote::LoadedPlugin>, coordinator::CoordinatorError> {
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

/// What joining the cluster produced.
struct Joined {
    booted: coordinator::Booted,
    ownership: Arc<Ownership>,
    control: ControlPlane,
}

/// Why joining failed: `fatal` failures are not retried by `--wait-for-cluster`.
struct JoinError {
    message: String,
    fatal: bool,
}

impl JoinError {
    fn retry(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            fatal: false,
        }
    }
    fn fatal(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            fatal: true,
        }
    }
}

/// Boots the coordinator, takes this replica's ownership lease (refusing a node id another
/// live instance uses) and registers its presence.
async fn join(
    cfg: &config::ValidatedConfig,
    plugin: Option<mcpg_plugin_api::remote::LoadedPlugin>,
    node_id_flag: Option<&str>,
) -> Result<Joined, JoinError> {
    let booted = coordinator::boot(cfg, plugin, node_id_flag)
        .await
        .map_err(JoinError::retry)?;
    let node_id = booted.coordinator.node_id();
    identity::validate(&node_id)
        .map_err(|e| JoinError::fatal(format!("the coordinator's node id: {e}")))?;
    // The ownership lease comes first: it is also how a second live instance with this node
    // id is refused before it registers a presence over the other one's.
    let ownership = Ownership::start(
        booted.coordinator.clone(),
        node_id,
        Duration::from_millis(cfg.config.mcp.sessions.owner_ttl_ms),
        cfg.config.server.forwarding_secret.clone(),
    )
    .await
    .map_err(|e| match e {
        OwnershipError::DuplicateNode { .. } => JoinError::fatal(e),
        OwnershipError::Coordinator(_) => JoinError::retry(e),
    })?;
    let control = ControlPlane::start(
        booted.coordinator.clone(),
        booted.kind.clone(),
        cfg.advertise_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned()),
    )
    .await
    .map_err(|e| {
        JoinError::retry(format!(
            "cannot register this replica's presence with the coordinator: {e}"
        ))
    })?;
    Ok(Joined {
        booted,
        ownership,
        control,
    })
}

async fn run(
    cfg: config::ValidatedConfig,
    plugin: Option<mcpg_plugin_api::remote::LoadedPlugin>,
    node_id_flag: Option<String>,
    wait_for_cluster: bool,
    file: String,
) -> ExitCode {
    // Certificates and CA files are read before anything binds, so a bad one stops start-up
    // with its key.
    let security = match server::Security::from_config(&cfg.config.server)
        .and_then(|s| crate::tls::check_ca_files(&cfg.config).map(|()| s))
    {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let bound = match server::Bound::bind(cfg.listen, cfg.admin_listen).await {
        Ok(b) => b.with_security(security),
        Err(e) => return fail(e),
    };
    let main_addr = bound.main_addr().map(|a| a.to_string()).unwrap_or_default();
    let admin_addr = bound.admin_addr().and_then(Result::ok);
    // Without an admin listener the admin routes share the main one.
    let separate_admin = admin_addr.is_some();
    // With --wait-for-cluster the listeners serve at once (probes answer, the rest says it is
    // starting) through routes filled in once the replica has joined the cluster; otherwise
    // the replica joins first and then serves its routes directly (no indirection on the
    // request path).
    let mut bound = Some(bound);
    let late = if wait_for_cluster {
        let (mcp, admin) = (server::Late::default(), server::Late::default());
        let running = bound.take().expect("bound once").start(
            mcp.router(),
            if separate_admin {
                admin.router()
            } else {
                axum::Router::new()
            },
        );
        Some((running, mcp, admin))
    } else {
        None
    };
    let joined = loop {
        match join(&cfg, plugin.clone(), node_id_flag.as_deref()).await {
            Ok(j) => break j,
            Err(e) if e.fatal || !wait_for_cluster => return fail(e.message),
            Err(e) => {
                tracing::warn!(error = %e.message, "cluster backend not reachable yet (--wait-for-cluster); not ready, retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let Joined {
        booted,
        ownership,
        control,
    } = joined;
    let node_id = ownership.node_id().to_owned();
    let capabilities =
        match Capabilities::build(&cfg.config.mcp.configurations, &booted.coordinator) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
    let obs = &cfg.config.observability;
    // Traces need the node id (`service.instance.id`), known only now.
    let traces = if obs.enabled {
        match telemetry::start_traces(&node_id) {
            Ok(t) => t,
            Err(e) => return fail(format!("observability.tracing: {e}")),
        }
    } else {
        None
    };
    let auditor = match crate::audit::Auditor::start(&cfg.config.audit, &node_id).await {
        Ok(a) => a,
        Err(e) => return fail(format!("audit: {e:#}")),
    };
    let (written, dropped) = auditor.counters();
    telemetry::metrics::metrics().register_audit(written, dropped);
    let gateway = match Gateway::new(&cfg, capabilities, ownership, auditor.clone()) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    tracing::info!(
        node_id = %node_id,
        listen = %main_addr,
        admin_listen = ?admin_addr,
        config = %file,
        summary = %cfg.summary(),
        "mcpg starting"
    );
    let data = crate::mcp::front::router(&gateway).merge(control.meta_router());
    let mut admin_routes = control
        .router()
        .merge(crate::mcp::front::admin_router(&gateway));
    if obs.enabled {
        admin_routes =
            admin_routes.route("/metrics", axum::routing::get(telemetry::metrics::handler));
    }
    let running = match late {
        Some((running, mcp, admin)) => {
            if separate_admin {
                mcp.set(data);
                admin.set(admin_routes);
            } else {
                mcp.set(data.merge(admin_routes));
            }
            running
        }
        None => bound.take().expect("bound once").start(data, admin_routes),
    };
    running.readiness.watch_backend(booted.coordinator.clone());
    // Ready only once presence is registered: peers can see this replica.
    running.readiness.set_ready();
    tracing::info!("ready");

    server::shutdown_signal().await;
    running.readiness.set_draining();
    gateway.begin_drain();
    let s = &cfg.config.server;
    tracing::info!(
        delay_ms = s.shutdown_delay_ms,
        drain_ms = s.drain_timeout_ms,
        "shutting down: unready, resigning, handing sessions over, draining"
    );
    let delay = Duration::from_millis(s.shutdown_delay_ms);
    let drain = Duration::from_millis(s.drain_timeout_ms);
    let deadline = tokio::time::Instant::now() + delay + drain;
    // Long-lived streams end just before the deadline, with a reconnect hint, rather than
    // being cut at it.
    let closer = {
        let gateway = gateway.clone();
        let at = deadline - (drain / 10).min(Duration::from_secs(1));
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            gateway.close_streams();
        })
    };
    let handed = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            gateway.hand_over(deadline).await;
        })
    };
    let drained = running.shutdown(delay, drain).await;
    let _ = handed.await;
    // Presence goes last: until every session is handed over, peers keep forwarding here.
    control.shutdown().await;
    closer.abort();
    gateway.shutdown().await;
    // After the last request: every record of this run reaches the file.
    auditor.shutdown().await;
    if let Some(t) = traces {
        t.shutdown().await;
    }
    tracing::info!(drained, "stopped");
    ExitCode::SUCCESS
}
