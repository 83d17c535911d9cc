//! One replica's life: bind the listeners, join the cluster (coordinator, ownership lease,
//! presence; retried with `--wait-for-cluster`), serve, and on the way out drain (unready,
//! hand sessions over, resign) and stop.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use mcpg_plugin_api::remote::LoadedPlugin;

use crate::audit::Auditor;
use crate::capabilities::{Capabilities, OpenError};
use crate::config::ValidatedConfig;
use crate::control::ControlPlane;
use crate::mcp::Gateway;
use crate::mcp::cluster::ownership::{Ownership, OwnershipError};
use crate::reload::{self, Reloader};
use crate::telemetry::{TracesGuard, TracingError};
use crate::{coordinator, identity, server, telemetry};

/// What [`Replica::start`] needs besides the config.
pub struct Options {
    /// The coordinator plugin, loaded and validated (the plugin phase), if `cluster.kind`
    /// names one.
    pub plugin: Option<LoadedPlugin>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--wait-for-cluster`: serve probes at once and retry joining until the backend answers.
    pub wait_for_cluster: bool,
    /// The config file as given, for the start-up log line.
    pub config_file: String,
    /// What a config reload reads again: the file, the flags that win over it, and the
    /// digest of the bytes the process started with.
    pub reload: ReloadSource,
}

/// The config's origin, for reloads.
pub struct ReloadSource {
    pub path: std::path::PathBuf,
    pub overrides: Vec<crate::config::Override>,
    pub digest: String,
    /// SIGHUP, listened for since before the replica started.
    pub hangups: Option<tokio::signal::unix::Signal>,
}

/// Why a replica did not start. Each renders as the message `mcpg` prints before exiting 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Tls(#[from] crate::tls::LoadError),
    #[error("{0}")]
    Bind(#[from] server::BindError),
    #[error("{0}")]
    Join(String),
    #[error("{0}")]
    Capabilities(#[from] OpenError),
    #[error("observability.tracing: {0}")]
    Traces(#[from] TracingError),
    #[error("audit: {0:#}")]
    Audit(anyhow::Error),
    #[error("{0}")]
    Gateway(anyhow::Error),
}

/// A replica that has joined the cluster and is serving, ready.
pub struct Replica {
    gateway: Arc<Gateway>,
    auditor: Auditor,
    control: ControlPlane,
    booted: coordinator::Booted,
    running: server::Running,
    traces: Option<TracesGuard>,
    /// SIGHUP and the config file watch.
    reload_triggers: Vec<tokio::task::JoinHandle<()>>,
    shutdown_delay_ms: u64,
    drain_timeout_ms: u64,
}

impl Replica {
    /// Binds the listeners, joins the cluster, builds the data plane and serves it; returns
    /// once the replica is ready.
    pub async fn start(cfg: &ValidatedConfig, mut options: Options) -> Result<Self, StartError> {
        let listeners = Listeners::bind(cfg, options.wait_for_cluster).await?;
        let Joined {
            booted,
            ownership,
            control,
        } = join_retrying(cfg, &options).await?;
        let node_id = ownership.node_id().to_owned();
        let capabilities =
            Capabilities::build(&cfg.config.mcp.configurations, &booted.coordinator)?;
        let obs = &cfg.config.observability;
        // Traces need the node id (`service.instance.id`), known only now.
        let traces = if obs.enabled {
            telemetry::start_traces(&node_id)?
        } else {
            None
        };
        let auditor = Auditor::start(&cfg.config.audit, &node_id)
            .await
            .map_err(StartError::Audit)?;
        let (written, dropped) = auditor.counters();
        telemetry::metrics::metrics().register_audit(written, dropped);
        let gateway = Gateway::new(cfg, capabilities, ownership, auditor.clone())
            .map_err(StartError::Gateway)?;
        let gw = gateway.clone();
        control.report_data_plane(Arc::new(move || gw.upstream_status()));
        let views = gateway.pool_views().clone();
        control.report_nodes(Arc::new(move || {
            let views = views.clone();
            Box::pin(async move { views.nodes().await })
        }));
        tracing::info!(
            node_id = %node_id,
            listen = %listeners.main_addr,
            // Absent without an admin listener; the address itself (not `Some(…)`) with one.
            admin_listen = listeners.admin_addr.map(tracing::field::display),
            config = %options.config_file,
            summary = %cfg.summary(),
            // The threads that serve requests as built (`server.worker_threads`, 0 being one
            // per CPU): the serving threads, or the runtime's workers with `work_stealing`.
            worker_threads = match crate::server::threads::count() {
                0 => tokio::runtime::Handle::current().metrics().num_workers(),
                n => n,
            },
            scheduler = match cfg.config.server.scheduler {
                crate::config::model::Scheduler::Pinned => "pinned",
                crate::config::model::Scheduler::WorkStealing => "work_stealing",
            },
            "mcpg starting"
        );
        let data_routes: Arc<OnceLock<DataRoutes>> = Arc::default();
        let reloader = {
            let (gw, cp, routes) = (gateway.clone(), control.clone(), data_routes.clone());
            Reloader::new(reload::Parts {
                path: options.reload.path.clone(),
                overrides: options.reload.overrides.clone(),
                plugin: options.plugin.clone(),
                boot: cfg.clone(),
                digest: options.reload.digest.clone(),
                gateway: gateway.clone(),
                control: control.clone(),
                swap_routes: Box::new(move || {
                    if let Some(r) = routes.get() {
                        r.set(data_router(&gw, &cp));
                    }
                }),
            })
        };
        let (data, admin) = routes(&gateway, &control, obs.enabled);
        let admin = admin.merge(super::reload::admin_router(reloader.clone()));
        let (running, swappable) = listeners.serve(data, admin);
        let _ = data_routes.set(swappable);
        let reload_triggers = super::reload::spawn_triggers(
            reloader,
            options.reload.hangups.take(),
            &options.reload.path,
            options.reload.digest.clone(),
            &cfg.config.server.config_reload,
        );
        running.readiness.watch_backend(booted.coordinator.clone());
        let gw = gateway.clone();
        running
            .readiness
            .require_upstreams(Arc::new(move || gw.required_upstreams_down()));
        // Ready only once presence is registered: peers can see this replica.
        running.readiness.set_ready();
        tracing::info!("ready");
        server::systemd::ready();
        Ok(Self {
            gateway,
            auditor,
            control,
            booted,
            running,
            traces,
            reload_triggers,
            shutdown_delay_ms: cfg.config.server.shutdown_delay_ms,
            drain_timeout_ms: cfg.config.server.drain_timeout_ms,
        })
    }

    /// The shutdown sequence: unready and draining at once; after `shutdown_delay_ms` the
    /// listeners stop accepting and sessions are handed over; in-flight requests get
    /// `drain_timeout_ms`, long-lived streams end just before that deadline; presence goes
    /// last, then the data plane, the audit log and the traces.
    pub async fn drain(self) {
        for t in &self.reload_triggers {
            t.abort();
        }
        self.running.readiness.set_draining();
        server::systemd::stopping();
        self.gateway.begin_drain();
        tracing::info!(
            delay_ms = self.shutdown_delay_ms,
            drain_ms = self.drain_timeout_ms,
            "shutting down: unready, resigning, handing sessions over, draining"
        );
        let delay = Duration::from_millis(self.shutdown_delay_ms);
        let drain = Duration::from_millis(self.drain_timeout_ms);
        let deadline = tokio::time::Instant::now() + delay + drain;
        // Long-lived streams end just before the deadline, with a reconnect hint, rather than
        // being cut at it.
        let closer = {
            let gateway = self.gateway.clone();
            let at = deadline - (drain / 10).min(Duration::from_secs(1));
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                gateway.close_streams();
            })
        };
        let handed = {
            let gateway = self.gateway.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                gateway.hand_over(deadline).await;
            })
        };
        let drained = self.running.shutdown(delay, drain).await;
        let _ = handed.await;
        // Presence goes last: until every session is handed over, peers keep forwarding here.
        self.control.shutdown().await;
        closer.abort();
        self.gateway.shutdown().await;
        // After the last request: every record of this run reaches the file.
        self.auditor.shutdown().await;
        if let Some(t) = self.traces {
            t.shutdown().await;
        }
        tracing::info!(drained, "stopped");
        // The rest goes in this order: the data plane (its upstreams), the audit log, presence,
        // and last the coordinator they all used.
        drop((self.gateway, self.auditor, self.control));
        drop(self.booted);
    }
}

/// The listeners, bound before anything else so that a port in use or a bad certificate stops
/// start-up with a clear message.
struct Listeners {
    main_addr: String,
    admin_addr: Option<SocketAddr>,
    serving: Serving,
}

/// Whether the listeners serve yet.
enum Serving {
    /// Not yet: the replica joins first and then serves its routes directly (no indirection
    /// on the request path).
    NotYet(server::Bound),
    /// Already, with `--wait-for-cluster`: probes answer, the rest says it is starting,
    /// through routes filled in once the replica has joined the cluster.
    Late {
        running: server::Running,
        mcp: server::Late,
        admin: server::Late,
    },
}

impl Serving {
    /// Starts serving now, through routes that answer "starting" until they are set.
    fn late(bound: server::Bound, separate_admin: bool) -> Self {
        let (mcp, admin) = (server::Late::default(), server::Late::default());
        let admin_router = if separate_admin {
            admin.router()
        } else {
            Router::new()
        };
        let running = bound.start(mcp.router(), admin_router);
        Self::Late {
            running,
            mcp,
            admin,
        }
    }
}

impl Listeners {
    async fn bind(cfg: &ValidatedConfig, wait_for_cluster: bool) -> Result<Self, StartError> {
        // Certificates and CA files are read before anything binds, so a bad one stops
        // start-up with its key.
        let security = server::Security::from_config(&cfg.config.server)?;
        crate::tls::check_ca_files(&cfg.config)?;
        let bound = server::Bound::bind(cfg.listen, cfg.admin_listen)
            .await?
            .with_security(security);
        let main_addr = bound.main_addr().map(|a| a.to_string()).unwrap_or_default();
        let admin_addr = bound.admin_addr().and_then(Result::ok);
        // Without an admin listener the admin routes share the main one.
        let separate_admin = admin_addr.is_some();
        let serving = if wait_for_cluster {
            Serving::late(bound, separate_admin)
        } else {
            Serving::NotYet(bound)
        };
        Ok(Self {
            main_addr,
            admin_addr,
            serving,
        })
    }

    /// Serves `data` (the bindings, `/mcpg/meta`) and `admin` (the admin API); the data
    /// routes through a [`DataRoutes`] a config reload replaces.
    fn serve(self, data: Router, admin: Router) -> (server::Running, DataRoutes) {
        let separate_admin = self.admin_addr.is_some();
        match self.serving {
            Serving::NotYet(bound) => {
                let late = server::Late::default();
                late.set(data);
                let running = bound.start(late.router(), admin);
                (running, DataRoutes { late, admin: None })
            }
            Serving::Late {
                running,
                mcp,
                admin: late_admin,
            } => {
                if separate_admin {
                    mcp.set(data);
                    late_admin.set(admin);
                    (
                        running,
                        DataRoutes {
                            late: mcp,
                            admin: None,
                        },
                    )
                } else {
                    mcp.set(data.merge(admin.clone()));
                    let admin = Some(admin);
                    (running, DataRoutes { late: mcp, admin })
                }
            }
        }
    }
}

/// Where the data plane's routes are replaced after a reload: the main listener's routes,
/// with the admin routes merged in when they share it.
struct DataRoutes {
    late: server::Late,
    admin: Option<Router>,
}

impl DataRoutes {
    fn set(&self, data: Router) {
        match &self.admin {
            Some(admin) => self.late.set(data.merge(admin.clone())),
            None => self.late.set(data),
        }
    }
}

/// The routes of each listener: the bindings and `/mcpg/meta` on the main one; the admin API
/// (and `/metrics` when observability is on) wherever the admin routes go.
fn routes(gateway: &Arc<Gateway>, control: &ControlPlane, metrics: bool) -> (Router, Router) {
    let data = data_router(gateway, control);
    let mut admin = control
        .router()
        .merge(crate::mcp::front::admin_router(gateway));
    if metrics {
        admin = admin.route("/metrics", axum::routing::get(telemetry::metrics::handler));
    }
    (data, admin)
}

/// The main listener's own routes: every binding (as the gateway holds them now) and
/// `/mcpg/meta`.
fn data_router(gateway: &Arc<Gateway>, control: &ControlPlane) -> Router {
    crate::mcp::front::router(gateway)
        .merge(control.meta_router(crate::mcp::wire::version::by_era()))
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

/// Joins the cluster; with `--wait-for-cluster`, retries every 2 s until the backend answers
/// (a fatal failure still ends start-up).
async fn join_retrying(cfg: &ValidatedConfig, options: &Options) -> Result<Joined, StartError> {
    loop {
        match join(cfg, options.plugin.clone(), options.node_id.as_deref()).await {
            Ok(j) => return Ok(j),
            Err(e) if e.fatal || !options.wait_for_cluster => {
                return Err(StartError::Join(e.message));
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "cluster backend not reachable yet (--wait-for-cluster); not ready, retrying in 2 s");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Boots the coordinator, takes this replica's ownership lease (refusing a node id another
/// live instance uses) and registers its presence.
async fn join(
    cfg: &ValidatedConfig,
    plugin: Option<LoadedPlugin>,
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
        crate::capabilities::cluster::Coordination::new(booted.coordinator.clone()),
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
