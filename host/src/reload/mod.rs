//! Changing a running replica's config without a restart. [`Reloader::reload`] reads the file
//! again through the loader `mcpg-config-check` uses (plugin phase included, against the
//! plugin loaded at boot), refuses an invalid one (the running config stays), works out what
//! changed ([`diff`]) and applies it: new bindings swapped in whole, unchanged upstreams
//! keeping their pools, sessions of removed or replaced bindings ended. Reloads run one at a
//! time; what triggers them (SIGHUP, the file changing, `POST /api/config/reload`) is
//! `cli/reload.rs`'s.

pub mod diff;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mcpg_plugin_api::remote::LoadedPlugin;
use serde::Serialize;
use serde_json::Value;

use crate::config::{self, Override, Severity, ValidatedConfig};
use crate::control::ControlPlane;
use crate::mcp::Gateway;
use diff::{BindingChange, BindingDiff, Diff, UpstreamChange};

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Signal,
    File,
    Admin,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Something changed and is now served.
    Applied,
    /// Valid, and nothing that reloads changed (restart-needing keys may have).
    Unchanged,
    /// Invalid or unreadable: the running config stays.
    Rejected,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::File => "file",
            Self::Admin => "admin",
        }
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
        }
    }
}

/// What one reload did: the answer of `POST /api/config/reload` and the last one shown in
/// `/api/cluster/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    pub trigger: Trigger,
    /// The generation and digest running after this reload.
    pub generation: u64,
    pub digest: String,
    /// The digest of the file this reload read (differs from `digest` when rejected).
    pub file_digest: Option<String>,
    /// Every finding, positioned: `{file, line, column, path, severity, message}`.
    pub diagnostics: Vec<Value>,
    /// Why it was rejected, in one line.
    pub error: Option<String>,
    /// Keys whose change waits for a restart (compared with the config the process started
    /// with).
    pub restart_required: Vec<String>,
    /// The bindings that changed, and how.
    pub changes: Vec<BindingDiff>,
    pub at_ms: u64,
}

/// The config running now.
#[derive(Debug, Clone, Serialize)]
struct Current {
    generation: u64,
    digest: String,
    loaded_at_ms: u64,
    last_reload: Option<Report>,
    /// The last reload that applied something.
    last_applied: Option<Report>,
    /// The last rejected reload, kept until a later one applies or finds nothing changed.
    last_error: Option<Report>,
}

/// What a [`Reloader`] needs from the replica it reloads.
pub struct Parts {
    /// The config file, and the command-line values that win over it.
    pub path: PathBuf,
    pub overrides: Vec<Override>,
    /// The coordinator plugin loaded at boot (it cannot change without a restart).
    pub plugin: Option<LoadedPlugin>,
    pub boot: ValidatedConfig,
    /// The digest of the file the process started with.
    pub digest: String,
    pub gateway: Arc<Gateway>,
    pub control: ControlPlane,
    /// Rebuilds the data plane's routes from the gateway's bindings and swaps them in.
    pub swap_routes: Box<dyn Fn() + Send + Sync>,
}

/// Reloads one replica's config, one reload at a time.
pub struct Reloader {
    parts: Parts,
    running: tokio::sync::Mutex<ValidatedConfig>,
    current: Mutex<Current>,
}

impl Reloader {
    pub fn new(parts: Parts) -> Arc<Self> {
        let current = Current {
            generation: 1,
            digest: parts.digest.clone(),
            loaded_at_ms: now_ms(),
            last_reload: None,
            last_applied: None,
            last_error: None,
        };
        parts
            .control
            .publish_config(&current.digest, 1, current.loaded_at_ms);
        crate::telemetry::metrics::metrics()
            .config()
            .set_generation(1);
        let me = Arc::new(Self {
            running: tokio::sync::Mutex::new(parts.boot.clone()),
            parts,
            current: Mutex::new(current),
        });
        let weak = Arc::downgrade(&me);
        me.parts.control.report_config(Arc::new(move || {
            weak.upgrade().map_or(Value::Null, |r| r.status())
        }));
        me
    }

    /// This replica's part of `/api/cluster/status`.
    pub fn status(&self) -> Value {
        let c = self.current.lock().expect("lock").clone();
        serde_json::json!({
            "file": self.parts.boot.file,
            "digest": c.digest,
            "generation": c.generation,
            "loaded_at_ms": c.loaded_at_ms,
            "last_reload": c.last_reload,
            "last_applied": c.last_applied,
            "last_error": c.last_error,
        })
    }

    /// Reads the file again and applies it if it is valid; see the module docs.
    pub async fn reload(&self, trigger: Trigger) -> Report {
        let mut running = self.running.lock().await;
        let mut report = match self.load() {
            Ok((cfg, file_digest, diagnostics)) => {
                self.apply(&mut running, cfg, file_digest, diagnostics)
                    .await
            }
            Err(rejected) => *rejected,
        };
        report.trigger = trigger;
        self.record(&report);
        report
    }

    /// The file, validated as `mcpg-config-check` does; a rejection as a finished report.
    fn load(&self) -> Result<(ValidatedConfig, String, Vec<Value>), Box<Report>> {
        let file = self.parts.path.display().to_string();
        let (outcome, digest) =
            match config::load_file_hashed(&self.parts.path, &self.parts.overrides) {
                Ok(o) => o,
                Err(e) => return Err(Box::new(self.rejected(None, Vec::new(), e.to_string()))),
            };
        let mut diagnostics: Vec<Value> = outcome
            .diagnostics
            .iter()
            .map(|d| d.to_json(&file))
            .collect();
        let errors = outcome.errors().count();
        let Some(cfg) = outcome.config else {
            let why = format!("{file}: invalid configuration ({errors} errors)");
            return Err(Box::new(self.rejected(Some(digest), diagnostics, why)));
        };
        if let Some(plugin) = &self.parts.plugin
            && same_plugin(&cfg, plugin)
        {
            match crate::coordinator::plugin_diagnostics(&cfg, plugin) {
                Ok(found) => {
                    let errors = found
                        .iter()
                        .filter(|d| d.severity == Severity::Error)
                        .count();
                    diagnostics.extend(found.iter().map(|d| d.to_json(&file)));
                    if errors > 0 {
                        let why = format!(
                            "{file}: plugin {} found {errors} errors in `cluster`",
                            plugin.id()
                        );
                        return Err(Box::new(self.rejected(Some(digest), diagnostics, why)));
                    }
                }
                Err(e) => {
                    return Err(Box::new(self.rejected(
                        Some(digest),
                        diagnostics,
                        e.to_string(),
                    )));
                }
            }
        }
        Ok((cfg, digest, diagnostics))
    }

    /// Applies a valid config: the bindings that changed are built (unchanged upstreams keep
    /// their pools), the audit sinks and settings changed, the log level set, the bindings
    /// swapped in with the routes, and the sessions that cannot go on end.
    async fn apply(
        &self,
        running: &mut ValidatedConfig,
        cfg: ValidatedConfig,
        file_digest: String,
        diagnostics: Vec<Value>,
    ) -> Report {
        let d = diff::diff(&self.parts.boot, running, &cfg);
        // Built before anything changes: a binding that cannot be built refuses the reload.
        let bindings_changed = d.bindings.iter().any(|b| b.change != BindingChange::Kept);
        let next = match bindings_changed.then(|| self.build(&d, &cfg)).transpose() {
            Ok(next) => next,
            Err(e) => return self.rejected(Some(file_digest), diagnostics, format!("{e:#}")),
        };
        // The audit sinks next: a file that cannot be opened refuses the reload before
        // anything has changed (the running sinks stay).
        if d.audit {
            let audit = &self.parts.gateway.auditor;
            if let Err(e) = audit
                .reconfigure(&running.config.audit, &cfg.config.audit)
                .await
            {
                return self.rejected(Some(file_digest), diagnostics, format!("audit: {e:#}"));
            }
            tracing::warn!("config reload: audit settings applied");
        }
        if let Some(level) = &d.log_level {
            set_log_level(level);
        }
        if let Some(next) = next {
            let ending: Vec<String> = d.ending().map(str::to_owned).collect();
            let moving = d.moving().map(|(b, f)| (b.to_owned(), f)).collect();
            self.parts.gateway.install(next, &ending, moving).await;
            (self.parts.swap_routes)();
        }
        let outcome = if d.is_empty() {
            Outcome::Unchanged
        } else {
            Outcome::Applied
        };
        *running = cfg;
        let mut c = self.current.lock().expect("lock");
        if outcome == Outcome::Applied {
            c.generation += 1;
        }
        // The file now running: a change of comments or formatting alone is `unchanged`
        // but still the file the fleet should compare.
        c.digest = file_digest.clone();
        c.loaded_at_ms = now_ms();
        Report {
            outcome,
            trigger: Trigger::Admin,
            generation: c.generation,
            digest: c.digest.clone(),
            file_digest: Some(file_digest),
            diagnostics,
            error: None,
            restart_required: d.restart_required.clone(),
            changes: d
                .bindings
                .into_iter()
                .filter(|b| b.change != BindingChange::Kept)
                .collect(),
            at_ms: now_ms(),
        }
    }

    /// The bindings to serve after `d`: kept ones as they are, the rest built with the pools
    /// of their kept upstreams.
    fn build(
        &self,
        d: &Diff,
        cfg: &ValidatedConfig,
    ) -> anyhow::Result<Vec<Arc<crate::mcp::binding::Binding>>> {
        let gw = &self.parts.gateway;
        let now = gw.bindings();
        let kept: Vec<&str> = d
            .bindings
            .iter()
            .filter(|b| b.change == BindingChange::Kept)
            .map(|b| b.name.as_str())
            .collect();
        let pools = |binding: &str| {
            let (Some(was), Some(bd)) =
                (now.iter().find(|b| b.name == binding), d.binding(binding))
            else {
                return Vec::new();
            };
            was.upstreams
                .iter()
                .filter(|p| {
                    bd.upstreams
                        .iter()
                        .any(|(n, c)| *n == p.name && *c == UpstreamChange::Kept)
                })
                .cloned()
                .collect()
        };
        gw.build_bindings(cfg, &kept, &pools)
    }

    fn rejected(
        &self,
        file_digest: Option<String>,
        diagnostics: Vec<Value>,
        why: String,
    ) -> Report {
        let c = self.current.lock().expect("lock");
        Report {
            outcome: Outcome::Rejected,
            trigger: Trigger::Admin,
            generation: c.generation,
            digest: c.digest.clone(),
            file_digest,
            diagnostics,
            error: Some(why),
            restart_required: Vec::new(),
            changes: Vec::new(),
            at_ms: now_ms(),
        }
    }

    /// Logs, counts, remembers and publishes a finished reload.
    fn record(&self, r: &Report) {
        let m = crate::telemetry::metrics::metrics().config();
        m.reload(r.outcome.label());
        m.set_generation(r.generation);
        let rendered: Vec<String> = r.diagnostics.iter().map(render).collect();
        match r.outcome {
            Outcome::Rejected => tracing::error!(
                trigger = r.trigger.label(),
                error = r.error.as_deref().unwrap_or_default(),
                diagnostics = %rendered.join(" | "),
                generation = r.generation,
                "config reload rejected; the running config stays"
            ),
            outcome => {
                if !rendered.is_empty() {
                    tracing::warn!(diagnostics = %rendered.join(" | "), "config reload: warnings");
                }
                tracing::info!(
                    trigger = r.trigger.label(),
                    outcome = r.outcome.label(),
                    generation = r.generation,
                    digest = %r.digest,
                    changes = %summary(&r.changes),
                    "config reload {}",
                    if outcome == Outcome::Applied { "applied" } else { "found nothing to change" }
                );
            }
        }
        if !r.restart_required.is_empty() {
            tracing::warn!(
                keys = %r.restart_required.join(", "),
                "config reload: these keys changed and take effect only after a restart"
            );
        }
        let mut c = self.current.lock().expect("lock");
        c.last_reload = Some(r.clone());
        match r.outcome {
            Outcome::Rejected => c.last_error = Some(r.clone()),
            Outcome::Applied => {
                c.last_applied = Some(r.clone());
                c.last_error = None;
            }
            Outcome::Unchanged => c.last_error = None,
        }
        self.parts
            .control
            .publish_config(&c.digest, c.generation, c.loaded_at_ms);
    }
}

/// Applies `observability.logs.level` (validated by the loader, so it parses).
fn set_log_level(level: &str) {
    match crate::telemetry::set_log_level(level) {
        Ok(true) => tracing::warn!(level = %level, "config reload: log level set"),
        Ok(false) => tracing::warn!(
            level = %level,
            "config reload: MCPG_LOG is set and wins over observability.logs.level"
        ),
        Err(e) => {
            tracing::error!(level = %level, error = %e, "config reload: cannot set the log level")
        }
    }
}

/// Whether `cfg` selects the plugin loaded at boot (only then can the plugin judge its
/// `cluster` block; a different one needs a restart, reported as such by the diff).
fn same_plugin(cfg: &ValidatedConfig, plugin: &LoadedPlugin) -> bool {
    matches!(&cfg.cluster, config::ClusterPlan::Plugin { plugin_id, .. } if plugin_id == plugin.id())
}

/// `FILE:LINE:COL: KEY.PATH: message` from a diagnostic's JSON form.
fn render(d: &Value) -> String {
    let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
    let warning = if d["severity"] == "warning" {
        "warning: "
    } else {
        ""
    };
    format!(
        "{}:{}:{}: {warning}{}: {}",
        s("file"),
        d["line"],
        d["column"],
        s("path"),
        s("message")
    )
}

fn summary(changes: &[BindingDiff]) -> String {
    Diff {
        bindings: changes.to_vec(),
        restart_required: Vec::new(),
        log_level: None,
        audit: false,
    }
    .summary()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
