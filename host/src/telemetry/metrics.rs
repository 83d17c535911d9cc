//! Prometheus metrics: the process-wide registry, the cheap recording calls the data plane and
//! the coordinator decorator make, and the text exposition served at `GET /metrics`.
//!
//! Every label is bounded: bindings and upstreams come from the config, methods are mapped onto
//! the MCP method list (anything else is `other`), and outcomes, reasons, kinds and lease names
//! are `&'static str` so that only constants chosen in the code can become label values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets from 100 µs (an in-process coordinator call, a cached list) to 60 s (a long
/// tool call), roughly ×2.5 apart.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The Content-Type of [`encode`]'s body: the Prometheus text format 0.0.4. prometheus-client
/// writes OpenMetrics text, which `promtool check metrics` (and any 0.0.4 parser) rejects, so
/// [`encode`] converts it; see [`to_prometheus_text`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The MCP methods that get their own `method` label value; any other method is `other`, so a
/// client cannot grow the label set by inventing methods.
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "subscriptions/listen",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "tasks/update",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/message",
    "notifications/roots/list_changed",
    "notifications/resources/updated",
];

/// The `method` label for an MCP method: itself when it is a known method, else `other`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The outcomes a request ends with: the `outcome` label values of `mcpg_requests`.
pub const REQUEST_OUTCOMES: [&str; 6] = [
    "ok",
    "error",
    "cancelled",
    "timed_out",
    "denied",
    "tool_error",
];

/// The request metrics of one binding and upstream (or none) in the process-wide registry,
/// each (method, outcome) pair's counter and histogram resolved on its first request and kept:
/// recording a request then builds no label set (two `String`s) and hashes nothing.
pub struct RequestRecorder {
    binding: String,
    upstream: String,
    /// Indexed by method (`KNOWN_METHODS`, then `other`) × outcome (`REQUEST_OUTCOMES`).
    slots: Box<[OnceLock<(Counter, Histogram)>]>,
}

impl RequestRecorder {
    pub fn new(binding: &str, upstream: Option<&str>) -> Self {
        let n = (KNOWN_METHODS.len() + 1) * REQUEST_OUTCOMES.len();
        Self {
            binding: binding.to_owned(),
            upstream: upstream.unwrap_or("").to_owned(),
            slots: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// [`Metrics::request_done`] for this binding and upstream, on [`metrics`].
    pub fn done(&self, method: &str, outcome: &'static str, seconds: f64) {
        let m = KNOWN_METHODS
            .iter()
            .position(|k| *k == method)
            .unwrap_or(KNOWN_METHODS.len());
        let Some(o) = REQUEST_OUTCOMES.iter().position(|k| *k == outcome) else {
            let up = Some(self.upstream.as_str()).filter(|u| !u.is_empty());
            return metrics().request_done(&self.binding, up, method, outcome, seconds);
        };
        let (count, duration) = self.slots[m * REQUEST_OUTCOMES.len() + o].get_or_init(|| {
            metrics().request_handles(&RequestLabels {
                binding: self.binding.clone(),
                upstream: self.upstream.clone(),
                method: method_label(method),
                outcome,
            })
        });
        count.inc();
        duration.observe(seconds);
    }
}

/// The `lease` label for a lease name: the leases the host takes have fixed names or a fixed
/// prefix followed by a node id, which must not become a label value.
pub fn lease_label(name: &str) -> &'static str {
    if name.starts_with("mcpg/owners/") {
        "owner"
    } else if name == "mcpg/control/leader" {
        "leader"
    } else if name == "mcpg/sessions/sweeper" {
        "sweeper"
    } else {
        "other"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    binding: String,
    upstream: String,
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    binding: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindingLabels {
    binding: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    binding: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    binding: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    binding: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    binding: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoordLabels {
    primitive: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CoordErrorLabels {
    primitive: &'static str,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    lease: &'static str,
    change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric mcpg exports. Recording is a hash-map lookup under a read lock plus an atomic
/// add; label sets are created on first use.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RequestLabels>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    upstream_restarts: Family<UpstreamLabels, Counter>,
    sessions_open: Family<BindingLabels, Gauge>,
    forwarded: Family<OutcomeLabels, Counter>,
    takeovers: Family<BindingLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    access_denied: Family<KindLabels, Counter>,
    coord_duration: HistogramFamily<CoordLabels>,
    coord_errors: Family<CoordErrorLabels, Counter>,
    lease_changes: Family<LeaseLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    audit: Arc<AuditCollector>,
    pools: PoolFamilies,
    config: ConfigMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The process-wide metrics, created on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    /// A fresh registry with every family registered. The process uses [`metrics`]; tests make
    /// their own so that counts are theirs alone.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "mcpg_requests",
            "MCP requests and notifications handled, by binding, upstream (empty when none was \
             chosen), method and outcome",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "mcpg_request_duration_seconds",
            "Time from receiving an MCP request to sending its final response",
            request_duration.clone(),
        );
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "mcpg_upstream_up",
            "1 while the upstream is reachable (child running or HTTP upstream answering), else 0",
            upstream_up.clone(),
        );
        let upstream_restarts = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "mcpg_upstream_restarts",
            "Restarts of an upstream's child process",
            upstream_restarts.clone(),
        );
        let sessions_open = Family::<BindingLabels, Gauge>::default();
        registry.register(
            "mcpg_sessions_open",
            "Legacy-era sessions this replica serves",
            sessions_open.clone(),
        );
        let forwarded = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "mcpg_forwarded_requests",
            "Requests forwarded to the replica that owns their session, by outcome",
            forwarded.clone(),
        );
        let takeovers = Family::<BindingLabels, Counter>::default();
        registry.register(
            "mcpg_session_takeovers",
            "Sessions this replica claimed from a departed owner",
            takeovers.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mcpg_auth_failures",
            "Requests refused because their credentials were missing or invalid, by reason",
            auth_failures.clone(),
        );
        let access_denied = Family::<KindLabels, Counter>::default();
        registry.register(
            "mcpg_access_denied",
            "Requests refused by a binding's access rules, by the kind of rule",
            access_denied.clone(),
        );
        let coord_duration: HistogramFamily<CoordLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "mcpg_coordinator_operation_duration_seconds",
            "Duration of coordinator calls, by primitive and operation (errors included)",
            coord_duration.clone(),
        );
        let coord_errors = Family::<CoordErrorLabels, Counter>::default();
        registry.register(
            "mcpg_coordinator_errors",
            "Coordinator calls that failed, by primitive, operation and error kind",
            coord_errors.clone(),
        );
        let lease_changes = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "mcpg_lease_changes",
            "Lease transitions seen by this replica: acquired, released or lost",
            lease_changes.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "mcpg_build_info",
            "The running mcpg version; always 1",
            build,
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "mcpg_rate_limited",
            "Requests refused by a binding's rate limit (over it, or its coordinator failing \
             closed), by binding and limit",
            rate_limited.clone(),
        );
        let audit = Arc::new(AuditCollector::default());
        registry.register_collector(Box::new(audit.clone()));
        let pools = PoolFamilies::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        Self {
            config,
            registry,
            requests,
            request_duration,
            upstream_up,
            upstream_restarts,
            sessions_open,
            forwarded,
            takeovers,
            auth_failures,
            access_denied,
            coord_duration,
            coord_errors,
            lease_changes,
            rate_limited,
            audit,
            pools,
        }
    }

    /// A finished MCP request. `outcome` is one of `ok`, `error`, `cancelled`, `timed_out`, `tool_error`,
    /// `denied`, `unauthenticated`; `method` is mapped through [`method_label`].
    pub fn request_done(
        &self,
        binding: &str,
        upstream: Option<&str>,
        method: &str,
        outcome: &'static str,
        seconds: f64,
    ) {
        let labels = RequestLabels {
            binding: binding.to_owned(),
            upstream: upstream.unwrap_or("").to_owned(),
            method: method_label(method),
            outcome,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// The request counter and latency histogram of one label set, resolved once.
    fn request_handles(&self, labels: &RequestLabels) -> (Counter, Histogram) {
        (
            self.requests.get_or_create(labels).clone(),
            self.request_duration.get_or_create(labels).clone(),
        )
    }

    pub fn upstream_up(&self, binding: &str, upstream: &str, up: bool) {
        self.upstream_up
            .get_or_create(&upstream_labels(binding, upstream))
            .set(i64::from(up));
    }

    pub fn upstream_restart(&self, binding: &str, upstream: &str) {
        self.upstream_restarts
            .get_or_create(&upstream_labels(binding, upstream))
            .inc();
    }

    /// Adds `delta` (negative when sessions end) to the binding's open sessions.
    pub fn sessions_open_add(&self, binding: &str, delta: i64) {
        self.sessions_open
            .get_or_create(&binding_labels(binding))
            .inc_by(delta);
    }

    /// A request forwarded to its owner replica; `outcome` e.g. `ok`, `error`, `unreachable`.
    pub fn forwarded(&self, binding: &str, outcome: &'static str) {
        self.forwarded
            .get_or_create(&OutcomeLabels {
                binding: binding.to_owned(),
                outcome,
            })
            .inc();
    }

    pub fn takeover(&self, binding: &str) {
        self.takeovers.get_or_create(&binding_labels(binding)).inc();
    }

    /// A refused credential; `reason` e.g. `missing`, `invalid`, `expired`.
    pub fn auth_failure(&self, binding: &str, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                binding: binding.to_owned(),
                reason,
            })
            .inc();
    }

    /// A request an access rule refused; `kind` names the rule's kind, e.g. `tool`, `method`.
    pub fn access_denied(&self, binding: &str, kind: &'static str) {
        self.access_denied
            .get_or_create(&KindLabels {
                binding: binding.to_owned(),
                kind,
            })
            .inc();
    }

    /// The counter of requests limit `limit` of `binding` refuses, resolved once per limit
    /// (the names come from the config).
    pub fn rate_limited(&self, binding: &str, limit: &str) -> Counter {
        self.rate_limited
            .get_or_create(&LimitLabels {
                binding: binding.to_owned(),
                limit: limit.to_owned(),
            })
            .clone()
    }

    /// One coordinator call; `error_kind` is set when it failed. Called by
    /// [`crate::coordinator::Instrumented`].
    pub fn coordinator_op(
        &self,
        primitive: &'static str,
        operation: &'static str,
        seconds: f64,
        error_kind: Option<&'static str>,
    ) {
        self.coord_duration
            .get_or_create(&CoordLabels {
                primitive,
                operation,
            })
            .observe(seconds);
        if let Some(kind) = error_kind {
            self.coord_errors
                .get_or_create(&CoordErrorLabels {
                    primitive,
                    operation,
                    kind,
                })
                .inc();
        }
    }

    /// A lease transition; `lease` is a lease name, reduced by [`lease_label`]; `change` is
    /// `acquired`, `released` or `lost`.
    pub fn lease_change(&self, lease: &str, change: &'static str) {
        self.lease_changes
            .get_or_create(&LeaseLabels {
                lease: lease_label(lease),
                change,
            })
            .inc();
    }

    /// Exposes the audit sink's counters of records written and dropped. The sink owns the
    /// atomics and bumps them itself; a scrape reads them. A second call replaces the first.
    pub fn register_audit(&self, written: Arc<AtomicU64>, dropped: Arc<AtomicU64>) {
        *self.audit.counters.lock().expect("audit counters lock") = Some((written, dropped));
    }

    /// The config reload's metrics (`reload/`).
    pub fn config(&self) -> &ConfigMetrics {
        &self.config
    }

    /// The registry in the Prometheus text format 0.0.4 (see [`CONTENT_TYPE`]).
    pub fn encode_text(&self) -> String {
        let mut open_metrics = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
            .expect("metrics encode into a String");
        to_prometheus_text(&open_metrics)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn upstream_labels(binding: &str, upstream: &str) -> UpstreamLabels {
    UpstreamLabels {
        binding: binding.to_owned(),
        upstream: upstream.to_owned(),
    }
}

fn binding_labels(binding: &str) -> BindingLabels {
    BindingLabels {
        binding: binding.to_owned(),
    }
}

/// The audit counters, read at scrape time from the atomics the audit sink owns. Zero until an
/// audit sink registers, so that the families exist (and alerts on them work) either way.
#[derive(Debug, Default)]
struct AuditCollector {
    counters: Mutex<Option<(Arc<AtomicU64>, Arc<AtomicU64>)>>,
}

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (written, dropped) = match &*self.counters.lock().expect("audit counters lock") {
            Some((w, d)) => (w.load(Ordering::Relaxed), d.load(Ordering::Relaxed)),
            None => (0, 0),
        };
        for (name, help, value) in [
            (
                "mcpg_audit_records",
                "Audit records written by the audit sink",
                written,
            ),
            (
                "mcpg_audit_dropped",
                "Audit records dropped because the audit sink's queue was full or it failed",
                dropped,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Converts prometheus-client's OpenMetrics text into the Prometheus text format 0.0.4. The two
/// differ, for what this registry holds, only in that OpenMetrics names a counter family
/// without its `_total` suffix (samples keep it), and ends with `# EOF`. Gauges and histograms
/// are written alike. (`# UNIT` lines would be comments in 0.0.4; none are registered.)
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<&str> = None;
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            // The TYPE line that follows decides the family's name.
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map(|(_, t)| t).unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(&format!("# HELP {h}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The process registry's exposition: `(Content-Type, body)`.
pub fn encode() -> (&'static str, String) {
    (CONTENT_TYPE, metrics().encode_text())
}

/// `GET /metrics`. The caller mounts it on the admin listener behind the admin token.
pub async fn handler() -> axum::response::Response {
    use axum::response::IntoResponse;
    let (content_type, body) = encode();
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// What a request attempt on one endpoint of an upstream found: the `outcome` label values
/// of `mcpg_endpoint_requests`.
pub const ENDPOINT_OUTCOMES: [&str; 4] = ["sent", "not_reached", "failed", "timed_out"];

/// The states an endpoint is in as this replica sees it: the `state` label values of
/// `mcpg_endpoint_state`.
pub const ENDPOINT_STATES: [&str; 3] = ["healthy", "unhealthy", "ejected"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    binding: String,
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOutcomeLabels {
    binding: String,
    upstream: String,
    endpoint: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointStateLabels {
    binding: String,
    upstream: String,
    endpoint: String,
    state: &'static str,
}

/// The families of upstream pools: per endpoint and per upstream.
struct PoolFamilies {
    requests: Family<EndpointOutcomeLabels, Counter>,
    duration: HistogramFamily<EndpointLabels>,
    in_flight: Family<EndpointLabels, Gauge>,
    ejections: Family<EndpointLabels, Counter>,
    state: Family<EndpointStateLabels, Gauge>,
    retries: Family<RetryLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    binding: String,
    upstream: String,
    outcome: &'static str,
}

impl PoolFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            ejections: Family::default(),
            state: Family::default(),
            retries: Family::default(),
        };
        registry.register(
            "mcpg_endpoint_requests",
            "Request attempts on one endpoint of an upstream, by binding, upstream, endpoint and \
             outcome: sent, not_reached (never left mcpg; sent to another endpoint when the \
             retry budget allows), failed (sending failed after it may have reached the \
             endpoint) or timed_out",
            f.requests.clone(),
        );
        registry.register(
            "mcpg_endpoint_request_duration_seconds",
            "How long a request attempt occupied an endpoint, from the attempt to the end of \
             its exchange (the answer relayed, or the failure)",
            f.duration.clone(),
        );
        registry.register(
            "mcpg_endpoint_in_flight",
            "Requests in flight on an endpoint (what least_requests balances on)",
            f.in_flight.clone(),
        );
        registry.register(
            "mcpg_endpoint_ejections",
            "Times passive outlier detection ejected an endpoint",
            f.ejections.clone(),
        );
        registry.register(
            "mcpg_endpoint_state",
            "An endpoint's health as this replica sees it: 1 for its current state (healthy, \
             unhealthy: failing active probes, ejected: by outlier detection), 0 for the others",
            f.state.clone(),
        );
        registry.register(
            "mcpg_upstream_retries",
            "Requests that never reached an endpoint, by whether they were sent to another \
             endpoint (retried) or the retry budget refused it (refused)",
            f.retries.clone(),
        );
        f
    }
}

/// The metrics of one endpoint of an upstream, resolved when its pool is built: recording
/// builds no label set and hashes nothing.
pub struct EndpointRecorder {
    requests: [Counter; 4],
    duration: Histogram,
    pub in_flight: Gauge,
    pub ejections: Counter,
    state: [Gauge; 3],
}

impl EndpointRecorder {
    /// Counts an attempt with outcome `ENDPOINT_OUTCOMES[outcome]`.
    pub fn attempt(&self, outcome: usize) {
        self.requests[outcome].inc();
    }

    pub fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// Sets the current state to `ENDPOINT_STATES[state]`.
    pub fn set_state(&self, state: usize) {
        for (i, g) in self.state.iter().enumerate() {
            g.set(i64::from(i == state));
        }
    }
}

impl Metrics {
    /// The recorder of endpoint `endpoint` of upstream `upstream` in `binding`.
    pub fn endpoint(&self, binding: &str, upstream: &str, endpoint: &str) -> EndpointRecorder {
        let labels = EndpointLabels {
            binding: binding.to_owned(),
            upstream: upstream.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        let p = &self.pools;
        let outcome = |outcome| {
            p.requests
                .get_or_create(&EndpointOutcomeLabels {
                    binding: binding.to_owned(),
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.to_owned(),
                    outcome,
                })
                .clone()
        };
        let state = |state| {
            p.state
                .get_or_create(&EndpointStateLabels {
                    binding: binding.to_owned(),
                    upstream: upstream.to_owned(),
                    endpoint: endpoint.to_owned(),
                    state,
                })
                .clone()
        };
        let r = EndpointRecorder {
            requests: ENDPOINT_OUTCOMES.map(outcome),
            duration: p.duration.get_or_create(&labels).clone(),
            in_flight: p.in_flight.get_or_create(&labels).clone(),
            ejections: p.ejections.get_or_create(&labels).clone(),
            state: ENDPOINT_STATES.map(state),
        };
        r.set_state(0);
        r
    }

    /// The counters of upstream `upstream`'s retries: (retried, refused by the budget).
    pub fn upstream_retries(&self, binding: &str, upstream: &str) -> (Counter, Counter) {
        let c = |outcome| {
            self.pools
                .retries
                .get_or_create(&RetryLabels {
                    binding: binding.to_owned(),
                    upstream: upstream.to_owned(),
                    outcome,
                })
                .clone()
        };
        (c("retried"), c("refused"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family with at least one sample, as a scrape in production would see it.
    fn populated() -> Metrics {
        let m = Metrics::new();
        m.request_done("main", Some("files"), "tools/call", "ok", 0.012);
        m.request_done("main", None, "x-made-up", "error", 0.3);
        m.upstream_up("main", "files", true);
        m.upstream_restart("main", "files");
        m.sessions_open_add("main", 2);
        m.sessions_open_add("main", -1);
        m.forwarded("main", "ok");
        m.takeover("main");
        m.auth_failure("main", "invalid");
        m.access_denied("main", "tool");
        m.rate_limited("main", "per-caller").inc();
        m.coordinator_op("kv", "get", 0.0002, None);
        m.coordinator_op("kv", "put", 0.1, Some("unavailable"));
        m.lease_change("mcpg/owners/node-a", "acquired");
        m.register_audit(Arc::new(AtomicU64::new(7)), Arc::new(AtomicU64::new(1)));
        let e = m.endpoint("main", "search", "b");
        e.attempt(0);
        e.attempt(1);
        e.observe(0.01);
        e.in_flight.inc();
        e.ejections.inc();
        e.set_state(2);
        m.upstream_retries("main", "search").0.inc();
        m
    }

    #[test]
    fn endpoint_families_have_one_series_per_outcome_and_state() {
        let text = populated().encode_text();
        for family in [
            "# TYPE mcpg_endpoint_requests_total counter",
            "# TYPE mcpg_endpoint_request_duration_seconds histogram",
            "# TYPE mcpg_endpoint_in_flight gauge",
            "# TYPE mcpg_endpoint_ejections_total counter",
            "# TYPE mcpg_endpoint_state gauge",
            "# TYPE mcpg_upstream_retries_total counter",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
        let ep = |name: &str, extra: &str| {
            sample(
                &text,
                &format!(r#"{name}{{binding="main",upstream="search",endpoint="b"{extra}}}"#),
            )
        };
        assert_eq!(
            ep("mcpg_endpoint_requests_total", r#",outcome="sent""#),
            Some(1.0)
        );
        assert_eq!(
            ep("mcpg_endpoint_requests_total", r#",outcome="timed_out""#),
            Some(0.0)
        );
        assert_eq!(
            ep("mcpg_endpoint_request_duration_seconds_count", ""),
            Some(1.0)
        );
        assert_eq!(ep("mcpg_endpoint_in_flight", ""), Some(1.0));
        assert_eq!(ep("mcpg_endpoint_ejections_total", ""), Some(1.0));
        assert_eq!(ep("mcpg_endpoint_state", r#",state="ejected""#), Some(1.0));
        assert_eq!(ep("mcpg_endpoint_state", r#",state="healthy""#), Some(0.0));
        assert_eq!(
            sample(
                &text,
                r#"mcpg_upstream_retries_total{binding="main",upstream="search",outcome="refused"}"#
            ),
            Some(0.0)
        );
    }

    /// The value of the sample line `series` (name and labels exactly as exposed).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().expect("a number"))
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let body = populated().encode_text();
        // A missing promtool fails the test: CI installs it (tools/install-test-deps).
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool is not installed; run: sudo apt-get install -y prometheus");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write to promtool");
        let out = child.wait_with_output().expect("promtool runs");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics: {:?}\n{report}\n--- exposition ---\n{body}",
            out.status
        );
    }

    #[test]
    fn exposition_names_and_values() {
        let text = populated().encode_text();
        for family in [
            "# TYPE mcpg_requests_total counter",
            "# TYPE mcpg_request_duration_seconds histogram",
            "# TYPE mcpg_upstream_up gauge",
            "# TYPE mcpg_upstream_restarts_total counter",
            "# TYPE mcpg_sessions_open gauge",
            "# TYPE mcpg_forwarded_requests_total counter",
            "# TYPE mcpg_session_takeovers_total counter",
            "# TYPE mcpg_auth_failures_total counter",
            "# TYPE mcpg_access_denied_total counter",
            "# TYPE mcpg_rate_limited_total counter",
            "# TYPE mcpg_coordinator_operation_duration_seconds histogram",
            "# TYPE mcpg_coordinator_errors_total counter",
            "# TYPE mcpg_lease_changes_total counter",
            "# TYPE mcpg_build_info gauge",
            "# TYPE mcpg_audit_records_total counter",
            "# TYPE mcpg_audit_dropped_total counter",
        ] {
            assert!(text.contains(family), "{family} missing from\n{text}");
        }
        assert!(!text.contains("# EOF"));
        assert_eq!(
            sample(
                &text,
                r#"mcpg_rate_limited_total{binding="main",limit="per-caller"}"#
            ),
            Some(1.0)
        );
        let ok = r#"{binding="main",upstream="files",method="tools/call",outcome="ok"}"#;
        assert_eq!(
            sample(&text, &format!("mcpg_requests_total{ok}")),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, &format!("mcpg_request_duration_seconds_count{ok}")),
            Some(1.0)
        );
        // An invented method is `other`, and no upstream is the empty label.
        let other = r#"{binding="main",upstream="",method="other",outcome="error"}"#;
        assert_eq!(
            sample(&text, &format!("mcpg_requests_total{other}")),
            Some(1.0)
        );
        assert!(!text.contains("x-made-up"));
        assert_eq!(
            sample(&text, r#"mcpg_sessions_open{binding="main"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"mcpg_lease_changes_total{lease="owner",change="acquired"}"#
            ),
            Some(1.0)
        );
        assert!(!text.contains("node-a"));
        assert_eq!(sample(&text, "mcpg_audit_records_total"), Some(7.0));
        assert_eq!(sample(&text, "mcpg_audit_dropped_total"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                &format!(
                    "mcpg_build_info{{version=\"{}\"}}",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            Some(1.0)
        );
    }

    #[test]
    fn audit_counters_are_read_at_scrape_time() {
        let m = Metrics::new();
        assert_eq!(
            sample(&m.encode_text(), "mcpg_audit_dropped_total"),
            Some(0.0)
        );
        let dropped = Arc::new(AtomicU64::new(0));
        m.register_audit(Arc::new(AtomicU64::new(0)), dropped.clone());
        dropped.fetch_add(3, Ordering::Relaxed);
        assert_eq!(
            sample(&m.encode_text(), "mcpg_audit_dropped_total"),
            Some(3.0)
        );
    }

    #[test]
    fn bounded_labels() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("tools/call2"), "other");
        assert_eq!(lease_label("mcpg/owners/n1"), "owner");
        assert_eq!(lease_label("mcpg/control/leader"), "leader");
        assert_eq!(lease_label("mcpg/sessions/sweeper"), "sweeper");
        assert_eq!(lease_label("anything/else"), "other");
    }

    #[tokio::test]
    async fn handler_sets_the_content_type() {
        let resp = handler().await;
        assert_eq!(
            resp.headers()[axum::http::header::CONTENT_TYPE],
            CONTENT_TYPE
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    outcome: &'static str,
}

/// What config reloads did and which configs the fleet runs.
#[derive(Debug)]
pub struct ConfigMetrics {
    reloads: Family<ReloadLabels, Counter>,
    generation: Gauge,
    fleet_digests: Gauge,
}

impl ConfigMetrics {
    fn register(registry: &mut Registry) -> Self {
        let reloads = Family::<ReloadLabels, Counter>::default();
        for outcome in ["applied", "unchanged", "rejected"] {
            let _ = reloads.get_or_create(&ReloadLabels { outcome });
        }
        registry.register(
            "mcpg_config_reload",
            "Config reloads by outcome: applied, unchanged (nothing that reloads changed) or \
             rejected (invalid; the running config stays)",
            reloads.clone(),
        );
        let generation = Gauge::default();
        generation.set(1);
        registry.register(
            "mcpg_config_generation",
            "The generation of the config this replica runs: 1 at start, one more per applied \
             reload",
            generation.clone(),
        );
        let fleet_digests = Gauge::default();
        registry.register(
            "mcpg_config_fleet_digests",
            "How many distinct configs (by digest) the live replicas run, as this replica last \
             read them from the coordinator; above 1 for longer than a rollout is drift",
            fleet_digests.clone(),
        );
        Self {
            reloads,
            generation,
            fleet_digests,
        }
    }

    /// A reload ended with `outcome` (`applied`, `unchanged` or `rejected`).
    pub fn reload(&self, outcome: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { outcome }).inc();
    }

    pub fn set_generation(&self, generation: u64) {
        self.generation.set(generation as i64);
    }

    pub fn set_fleet_digests(&self, n: usize) {
        self.fleet_digests.set(n as i64);
    }
}
