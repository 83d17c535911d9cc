//! The audit log: one structured record per MCP request, handed to a bounded queue that a
//! writer thread drains into the sinks (a rotated, hash-chained JSON-lines file; stdout).
//!
//! - [`chain`]: the line format and its hash chain (sealing and checking one line).
//! - [`sink`]: the writer thread, the file sink (resume, rotation, fsync) and stdout.
//! - [`verify`]: checking files against the chain, behind `mcpg audit verify`.
//!
//! The data plane calls [`Auditor::record`], which never blocks: a full queue turns into a
//! counted drop, so a slow disk degrades the audit log, never the traffic. A config reload
//! changes the settings and sinks in place ([`Auditor::reconfigure`]). See `docs/audit.md`.

pub mod chain;
pub mod sink;
pub mod verify;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::model::AuditConfig;

pub use verify::{Problem, VerifyError, VerifyReport, verify};

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// One MCP request and its outcome. The field names are the JSON keys.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the request arrived ([`Record::new`]): RFC 3339, UTC, milliseconds. Formatted by
    /// [`Auditor::record`] from [`Record::at`], so a record nobody writes is never formatted.
    pub time: String,
    /// When the record was made; [`Auditor::record`] writes it to `time` if that is empty.
    #[serde(skip)]
    pub at: SystemTime,
    /// The replica's node id; [`Auditor::record`] fills it when left empty.
    pub replica: String,
    /// Who called, as authentication named them (`token:ci`, `jwt:alice`); `None` = anonymous.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The legacy `Mcp-Session-Id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The JSON-RPC id as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Value>,
    /// `"legacy"` or `"modern"`.
    pub era: &'static str,
    pub binding: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The endpoint of the upstream's pool the request went to (pools of several endpoints;
    /// the last one tried when it was sent again elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub method: String,
    /// The tool or prompt name or the resource URI, as the client saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub outcome: Outcome,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl Record {
    /// A record stamped now, with outcome `ok` and everything optional unset.
    pub fn new(era: &'static str, binding: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            time: String::new(),
            at: SystemTime::now(),
            replica: String::new(),
            identity: None,
            session: None,
            request_id: None,
            era,
            binding: binding.into(),
            upstream: None,
            endpoint: None,
            method: method.into(),
            name: None,
            outcome: Outcome::Ok,
            latency_ms: 0.0,
            arguments: None,
            result: None,
            trace_id: None,
        }
    }
}

/// How a request ended: `{"status":"ok"}`, `{"status":"error","code":…,"message":…}`,
/// `{"status":"cancelled"}`, `{"status":"timed_out"}`, `{"status":"denied"}`,
/// `{"status":"tool_error"}` for a tool result marked `isError`, and
/// `{"status":"rate_limited","limit":…}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error {
        code: i64,
        message: String,
    },
    Cancelled,
    TimedOut,
    Denied,
    ToolError,
    /// Refused by rate limit `limit` (`{"status":"rate_limited","limit":…}`).
    RateLimited {
        limit: String,
    },
}

/// The handle the data plane records through. Cloning is cheap; every clone sees a
/// [`Auditor::reconfigure`].
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<arc_swap::ArcSwap<Inner>>,
}

struct Inner {
    /// `None` when auditing is off.
    tx: Option<mpsc::Sender<sink::Msg>>,
    node_id: String,
    include_arguments: bool,
    include_results: bool,
    /// Lower-cased field names.
    redact: HashSet<String>,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    warn_gate: WarnGate,
}

impl Auditor {
    /// An auditor that records nothing.
    pub fn disabled() -> Self {
        Self::over(Inner::off(String::new(), Arc::default(), Arc::default()))
    }

    fn over(inner: Inner) -> Self {
        Self {
            inner: Arc::new(arc_swap::ArcSwap::from_pointee(inner)),
        }
    }

    /// Opens the sinks (resuming the file's chain) and starts the writer. `cfg.file.path` is
    /// absolute: the config loader resolved it against the config file's directory.
    pub async fn start(cfg: &AuditConfig, node_id: &str) -> anyhow::Result<Self> {
        let (written, dropped) = (Arc::default(), Arc::default());
        if !cfg.enabled {
            return Ok(Self::over(Inner::off(node_id.to_owned(), written, dropped)));
        }
        let open = opener(cfg, node_id);
        // Resuming reads the file's tail and may truncate or fsync: blocking work.
        let sinks = tokio::task::spawn_blocking(open).await??;
        let tx = Self::spawn(cfg, sinks, &written, &dropped)?;
        Ok(Self::over(Inner::on(cfg, node_id, tx, written, dropped)))
    }

    /// Starts the writer over the given sinks; the first one decides what counts as written.
    fn spawn(
        cfg: &AuditConfig,
        sinks: Vec<Box<dyn sink::Sink>>,
        written: &Arc<AtomicU64>,
        dropped: &Arc<AtomicU64>,
    ) -> anyhow::Result<mpsc::Sender<sink::Msg>> {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1) as usize);
        sink::spawn_writer(rx, sinks, written.clone(), dropped.clone())?;
        Ok(tx)
    }

    /// An auditor over the given sinks (tests with sinks of their own).
    #[cfg(test)]
    fn with_sinks(
        cfg: &AuditConfig,
        node_id: &str,
        sinks: Vec<Box<dyn sink::Sink>>,
    ) -> anyhow::Result<Self> {
        let (written, dropped) = (Arc::default(), Arc::default());
        let tx = Self::spawn(cfg, sinks, &written, &dropped)?;
        Ok(Self::over(Inner::on(cfg, node_id, tx, written, dropped)))
    }

    /// Applies a reloaded `audit` section, from `old` (running) to `new`, without losing a
    /// queued record: switched on, a writer starts; switched off, the writer writes what is
    /// queued and stops; otherwise the running writer swaps its sinks in queue order (the old
    /// file synced, the new one resumed: a file's chain is never written by two writers) and
    /// the redaction and `include_*` settings change with it. An error (a file that cannot
    /// be opened) changes nothing. `queue_capacity` needs a restart.
    pub async fn reconfigure(&self, old: &AuditConfig, new: &AuditConfig) -> anyhow::Result<()> {
        if json(old) == json(new) {
            return Ok(());
        }
        let now = self.inner.load_full();
        let (written, dropped) = (now.written.clone(), now.dropped.clone());
        let node = now.node_id.clone();
        let next = match (&now.tx, new.enabled) {
            (_, false) => Inner::off(node, written, dropped),
            (None, true) => {
                let sinks = tokio::task::spawn_blocking(opener(new, &node)).await??;
                let tx = Self::spawn(new, sinks, &written, &dropped)?;
                Inner::on(new, &node, tx, written, dropped)
            }
            (Some(tx), true) => {
                if (json(&old.file), old.stdout) != (json(&new.file), new.stdout) {
                    let (ack, done) = oneshot::channel();
                    tx.send(sink::Msg::Replace(Box::new(opener(new, &node)), ack))
                        .await
                        .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
                    done.await
                        .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?
                        .map_err(|e| anyhow::anyhow!("cannot open the new audit sinks: {e}"))?;
                }
                Inner::on(new, &node, tx.clone(), written, dropped)
            }
        };
        self.inner.store(Arc::new(next));
        if let (Some(tx), false) = (&now.tx, new.enabled) {
            let (ack, done) = oneshot::channel();
            if tx.send(sink::Msg::Shutdown(ack)).await.is_ok() {
                let _ = done.await;
            }
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.inner.load().tx.is_some()
    }

    /// Whether arguments will be kept: callers can skip cloning them otherwise.
    pub fn wants_arguments(&self) -> bool {
        let i = self.inner.load();
        i.tx.is_some() && i.include_arguments
    }

    pub fn wants_results(&self) -> bool {
        let i = self.inner.load();
        i.tx.is_some() && i.include_results
    }

    /// `v` with the value of every configured field name (at any depth, keys compared
    /// case-insensitively) replaced by `"[redacted]"`.
    pub fn redacted(&self, v: &Value) -> Value {
        redact(v, &self.inner.load().redact)
    }

    /// Queues a record. Never blocks and never awaits: when the queue is full the record is
    /// dropped and counted. Arguments and results are redacted here, or removed when the
    /// config does not ask for them, so no caller can forget.
    pub fn record(&self, mut r: Record) {
        let inner = self.inner.load();
        let Some(tx) = &inner.tx else { return };
        if r.time.is_empty() {
            r.time = rfc3339_millis(r.at);
        }
        if r.replica.is_empty() {
            r.replica.clone_from(&inner.node_id);
        }
        r.arguments = match r.arguments.take() {
            Some(a) if inner.include_arguments => Some(redact(&a, &inner.redact)),
            _ => None,
        };
        r.result = match r.result.take() {
            Some(a) if inner.include_results => Some(redact(&a, &inner.redact)),
            _ => None,
        };
        if let Err(e) = tx.try_send(sink::Msg::Record(Box::new(r))) {
            let total = inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if inner.warn_gate.open() {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the audit queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped",
                };
                tracing::warn!(dropped_total = total, "audit record dropped: {why}");
            }
        }
    }

    /// Records dropped so far: queue full, writer stopped, or a sink write that failed.
    pub fn dropped(&self) -> u64 {
        self.inner.load().dropped.load(Ordering::Relaxed)
    }

    /// Records the first sink (the file when there is one) has accepted.
    pub fn written(&self) -> u64 {
        self.inner.load().written.load(Ordering::Relaxed)
    }

    /// `(written, dropped)`, shared with the metrics.
    pub fn counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        let i = self.inner.load();
        (i.written.clone(), i.dropped.clone())
    }

    /// Writes everything queued so far, fsyncs the file and stops the writer. Records made
    /// afterwards are counted as dropped.
    pub async fn shutdown(&self) {
        let inner = self.inner.load_full();
        let Some(tx) = &inner.tx else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(sink::Msg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

impl Inner {
    /// Auditing off (records are not even formatted).
    fn off(node_id: String, written: Arc<AtomicU64>, dropped: Arc<AtomicU64>) -> Self {
        Self {
            tx: None,
            node_id,
            include_arguments: false,
            include_results: false,
            redact: HashSet::new(),
            written,
            dropped,
            warn_gate: WarnGate::new(),
        }
    }

    /// Auditing on `cfg`'s settings into the writer behind `tx`.
    fn on(
        cfg: &AuditConfig,
        node_id: &str,
        tx: mpsc::Sender<sink::Msg>,
        written: Arc<AtomicU64>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Self {
            tx: Some(tx),
            node_id: node_id.to_owned(),
            include_arguments: cfg.include_arguments,
            include_results: cfg.include_results,
            redact: cfg.redact.iter().map(|k| k.to_lowercase()).collect(),
            written,
            dropped,
            warn_gate: WarnGate::new(),
        }
    }
}

/// A config value as JSON, to compare (the config types derive no `PartialEq`).
fn json<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

/// What opens `cfg`'s sinks (blocking: the file sink resumes its chain).
fn opener(
    cfg: &AuditConfig,
    node_id: &str,
) -> impl FnOnce() -> std::io::Result<Vec<Box<dyn sink::Sink>>> + Send + 'static {
    let (file, stdout, node) = (cfg.file.clone(), cfg.stdout, node_id.to_owned());
    move || {
        let mut sinks: Vec<Box<dyn sink::Sink>> = Vec::new();
        if let Some(f) = file {
            sinks.push(Box::new(sink::FileSink::open(
                &f.path,
                f.max_bytes,
                f.max_files,
                &node,
            )?));
        }
        if stdout {
            sinks.push(Box::new(sink::StdoutSink));
        }
        if sinks.is_empty() {
            return Err(std::io::Error::other(
                "audit is enabled but has no sink (`audit.file` or `audit.stdout`)",
            ));
        }
        Ok(sinks)
    }
}

/// Lets one warning through per interval, so a flood of drops logs a trickle.
struct WarnGate {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last warning, plus one; 0 = never.
    last: AtomicU64,
}

const WARN_INTERVAL: Duration = Duration::from_secs(10);

impl WarnGate {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn open(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        // Saturating: another thread may have stored a later `now` than ours.
        if last != 0 && now.saturating_sub(last) < WARN_INTERVAL.as_millis() as u64 {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

fn redact(v: &Value, keys: &HashSet<String>) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if keys.contains(&k.to_lowercase()) {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v, keys)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| redact(v, keys)).collect()),
        other => other.clone(),
    }
}

/// `2026-11-21T23:30:46.123Z`. Hand-written because the crate has no date library.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let secs = ms_of_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests;
