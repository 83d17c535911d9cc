//! An upstream as the data plane sees it: a pool of one or more endpoints (each an
//! [`Upstream`] conversation source), the endpoint chosen per new session or stateless
//! request by the balancer among those this replica sees healthy and an operator has not
//! drained or disabled, failures fed to the outlier detector, active probes on a timer, and
//! the retry budget. A single-transport upstream is a pool of one, and behaves as before.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::balance::{Balancer, Candidate};
use super::budget::RetryBudget;
use super::outlier::{Change, Detector, State};
use super::tool_lists::{self, Comparison};
use super::{Health, Hello, Link, ModernHandle, Upstream};
use crate::config::model::{HealthConfig, UpstreamConfig};
use crate::config::parsed::Parsed;
use crate::mcp::wire::jsonrpc::{RpcError, code};
use crate::telemetry::metrics::{EndpointRecorder, metrics};

/// How often the endpoints' tool lists are compared (and once at the first tick).
const TOOLS_EVERY: Duration = Duration::from_secs(60);

tokio::task_local! {
    /// The endpoint the request being served went to, for its audit record: set by
    /// [`Pool::start`] on a pool of several endpoints, read by whoever scoped it
    /// ([`noting_endpoint`]).
    static CHOSEN: std::cell::RefCell<Option<String>>;
}

/// Runs `f`, returning what it returned and the endpoint of a pool it sent a request to
/// (the last one, when it was sent again elsewhere); `None` for single-endpoint upstreams.
///
/// Not an `async fn`: one would hold `f` three times over (its argument, the block that
/// awaits it, the scope's copy), and a request's future is moved whole several times on its
/// way to the runtime, so its size is paid in copying on every request. The map runs inside
/// the scope, where the endpoint can still be read.
pub fn noting_endpoint<F: std::future::Future>(
    f: F,
) -> impl std::future::Future<Output = (F::Output, Option<String>)> {
    use futures::FutureExt;
    CHOSEN.scope(
        std::cell::RefCell::new(None),
        f.map(|out| (out, CHOSEN.with(|c| c.borrow_mut().take()))),
    )
}

/// What an attempt to send a request to an endpoint found (the `outcome` of
/// `mcpg_endpoint_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// It left mcpg for the endpoint.
    Sent,
    /// It never left mcpg (refused connection, closed conversation): safe to send elsewhere.
    NotReached,
    /// Sending failed after it may have reached the endpoint (reset, HTTP error).
    Failed,
    /// No answer in time.
    TimedOut,
}

/// What an operator set on one endpoint through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admin {
    Enabled,
    /// No new sessions or stateless requests; sessions pinned to it stay.
    Draining,
    /// No new work at all; sessions pinned to it move to another endpoint.
    Disabled,
}

/// One endpoint of a pool.
pub struct Member {
    pub name: String,
    pub weight: u32,
    pub up: Arc<Upstream>,
    in_flight: AtomicU32,
    admin: AtomicU8,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Requests that never left mcpg for it (refused connection, closed conversation).
    not_reached: AtomicU64,
    metrics: EndpointRecorder,
}

impl Member {
    pub fn admin(&self) -> Admin {
        match self.admin.load(Ordering::Relaxed) {
            0 => Admin::Enabled,
            1 => Admin::Draining,
            _ => Admin::Disabled,
        }
    }
}

/// One request in flight on an endpoint; its outcome is reported with [`Pool::outcome`].
pub struct InFlight {
    pool: Arc<Pool>,
    pub endpoint: usize,
    since: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let m = &self.pool.members[self.endpoint];
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
        m.metrics.in_flight.dec();
        m.metrics.observe(self.since.elapsed().as_secs_f64());
    }
}

/// An upstream: its endpoints and how they are chosen.
pub struct Pool {
    pub name: String,
    pub timeout: Duration,
    pub members: Vec<Member>,
    balancer: Balancer,
    detector: Mutex<Detector>,
    budget: RetryBudget,
    health_cfg: HealthConfig,
    binding: String,
    /// Requests sent again on another endpoint, and those the budget refused.
    retries: AtomicU64,
    retries_refused: AtomicU64,
    /// The last comparison of the endpoints' tool lists (pools of several endpoints).
    tool_lists: Mutex<Option<Comparison>>,
    /// `mcpg_upstream_retries`: retried, refused.
    retry_metrics: (
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ),
}

/// One endpoint as the management API shows it (this replica's view).
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub name: String,
    pub weight: u32,
    pub state: State,
    pub admin: Admin,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
    pub not_reached: u64,
    pub ejections: u64,
    pub last_check: Health,
}

impl Pool {
    /// How the pool's endpoints are told a session owner's fencing token (the same for all:
    /// they share the upstream's config and transport kind).
    pub fn fencing(&self) -> crate::config::model::FencingToken {
        self.members[0].up.fencing
    }

    pub fn new(
        binding: &str,
        cfg: &UpstreamConfig,
        parsed: &Parsed,
        base_dir: &std::path::Path,
        default_timeout: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let endpoints = cfg.pool();
        let several = endpoints.len() > 1;
        let mut members = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            // Errors and logs name the endpoint of a pool: `search/a`.
            let name = if several {
                format!("{}/{}", cfg.name, e.name)
            } else {
                cfg.name.clone()
            };
            let http = parsed.http_endpoint(binding, &cfg.name, i);
            let up = Upstream::build(
                binding,
                &name,
                cfg,
                e.transport,
                http,
                base_dir,
                default_timeout,
            )?;
            members.push(Member {
                name: e.name.clone(),
                weight: e.weight,
                up,
                in_flight: AtomicU32::new(0),
                admin: AtomicU8::new(0),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                not_reached: AtomicU64::new(0),
                metrics: metrics().endpoint(binding, &cfg.name, &e.name),
            });
        }
        anyhow::ensure!(
            !members.is_empty(),
            "the config loader requires a transport"
        );
        let pool = Arc::new(Self {
            name: cfg.name.clone(),
            timeout: members[0].up.timeout,
            balancer: Balancer::new(cfg.balance, members.len()),
            detector: Mutex::new(Detector::new(&cfg.health, members.len())),
            budget: RetryBudget::new(&cfg.retry_budget),
            health_cfg: cfg.health.clone(),
            binding: binding.to_owned(),
            retries: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
            retry_metrics: metrics().upstream_retries(binding, &cfg.name),
            tool_lists: Mutex::new(None),
            members,
        });
        if several {
            Self::probe_periodically(Arc::downgrade(&pool), cfg.health.interval_ms);
        }
        Ok(pool)
    }

    pub fn balance(&self) -> crate::config::model::BalancePolicy {
        self.balancer.policy()
    }

    /// Whether some of the client's headers are copied to this upstream.
    pub fn passes_headers(&self) -> bool {
        self.members.iter().any(|m| m.up.passes_headers())
    }

    /// The endpoint for new work, never one of `tried`: among those enabled and healthy as
    /// this replica sees them; when none is healthy, among those enabled (a pool whose
    /// every endpoint looks down still tries, rather than failing without trying).
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let detector = self.detector.lock().expect("detector lock");
        let candidates = |healthy_only: bool| -> Vec<Candidate> {
            self.members
                .iter()
                .enumerate()
                .filter(|(i, m)| {
                    m.admin() == Admin::Enabled
                        && !tried.contains(i)
                        && (!healthy_only || detector.available(*i, now))
                })
                .map(|(index, m)| Candidate {
                    index,
                    weight: m.weight,
                    in_flight: m.in_flight.load(Ordering::Relaxed),
                })
                .collect()
        };
        let healthy = candidates(true);
        let c = if healthy.is_empty() {
            candidates(false)
        } else {
            healthy
        };
        drop(detector);
        self.balancer.pick(&c)
    }

    /// Marks a request in flight on endpoint `i`.
    pub fn start(self: &Arc<Self>, i: usize) -> InFlight {
        let m = &self.members[i];
        m.in_flight.fetch_add(1, Ordering::Relaxed);
        m.requests.fetch_add(1, Ordering::Relaxed);
        m.metrics.in_flight.inc();
        self.note_endpoint(i);
        InFlight {
            pool: self.clone(),
            endpoint: i,
            since: Instant::now(),
        }
    }

    /// Names endpoint `i` in the audit record of the request being served (pools of several
    /// endpoints; see [`noting_endpoint`]).
    pub fn note_endpoint(&self, i: usize) {
        if self.members.len() > 1 {
            let name = &self.members[i].name;
            let _ = CHOSEN.try_with(|c| *c.borrow_mut() = Some(name.clone()));
        }
    }

    /// Notes what an attempt to send a request on endpoint `i` found: counted per endpoint,
    /// and fed to the outlier detector (only [`Attempt::Sent`] is a success there).
    pub fn attempt(&self, i: usize, a: Attempt) {
        let m = &self.members[i];
        m.metrics.attempt(a as usize);
        if a == Attempt::NotReached {
            m.not_reached.fetch_add(1, Ordering::Relaxed);
        }
        self.outcome(i, a == Attempt::Sent);
    }

    /// Notes what a request on endpoint `i` found: `ok` is false when the endpoint was not
    /// reached, closed the conversation or timed out (an upstream's own JSON-RPC error is a
    /// success here).
    pub fn outcome(&self, i: usize, ok: bool) {
        if !ok {
            self.members[i].failures.fetch_add(1, Ordering::Relaxed);
        }
        let change = self
            .detector
            .lock()
            .expect("detector lock")
            .record(i, ok, Instant::now());
        self.log_change(i, change);
    }

    fn log_change(&self, i: usize, change: Change) {
        let (binding, upstream, endpoint) = (&self.binding, &self.name, &self.members[i].name);
        if change != Change::None {
            self.refresh_states();
        }
        match change {
            Change::None => {}
            Change::Ejected(d) => {
                self.members[i].metrics.ejections.inc();
                tracing::warn!(%binding, %upstream, %endpoint, ejected_for_ms = d.as_millis() as u64, "endpoint ejected after consecutive failures")
            }
            Change::EjectionRefused => {
                tracing::warn!(%binding, %upstream, %endpoint, "endpoint keeps failing but the pool's ejection share is used up; it stays in rotation")
            }
            Change::Unhealthy => {
                tracing::warn!(%binding, %upstream, %endpoint, "endpoint failed its health probes; out of rotation")
            }
            Change::Healthy => {
                tracing::info!(%binding, %upstream, %endpoint, "endpoint passed its health probes; back in rotation")
            }
        }
    }

    /// Takes one retry from the budget (counted either way).
    pub fn may_retry(&self) -> bool {
        let ok = self.budget.try_retry();
        if ok {
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.retry_metrics.0.inc();
        } else {
            self.retries_refused.fetch_add(1, Ordering::Relaxed);
            self.retry_metrics.1.inc();
            tracing::warn!(binding = %self.binding, upstream = %self.name, "retry budget spent; not retrying");
        }
        ok
    }

    /// Requests sent again on another endpoint, and retries the budget refused.
    pub fn retries(&self) -> (u64, u64) {
        (
            self.retries.load(Ordering::Relaxed),
            self.retries_refused.load(Ordering::Relaxed),
        )
    }

    /// Counts a first attempt against the retry budget.
    pub fn first_attempt(&self) {
        self.budget.request();
    }

    /// The conversation 2026-07-28 clients use, on the endpoint the balancer picks for this
    /// request among those not `tried`; an endpoint whose conversation cannot be established
    /// (the client's request was not sent) is reported, added to `tried` and the next one
    /// tried, within the retry budget. The first call for a request counts it for the budget.
    pub async fn modern_on(
        &self,
        tried: &mut Vec<usize>,
    ) -> Result<(usize, ModernHandle), RpcError> {
        if tried.is_empty() {
            self.first_attempt();
        }
        loop {
            let Some(i) = self.pick(tried) else {
                return Err(self.unavailable());
            };
            match self.members[i].up.modern().await {
                Ok(h) => return Ok((i, h)),
                Err(e) => {
                    self.outcome(i, false);
                    tried.push(i);
                    if tried.len() == self.members.len() || !self.may_retry() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// [`Pool::modern_on`] for one request, without the endpoint.
    pub async fn modern(&self) -> Result<ModernHandle, RpcError> {
        self.modern_on(&mut Vec::new()).await.map(|(_, h)| h)
    }

    /// The position of the endpoint named `name`.
    pub fn endpoint(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// Establishes a legacy session's conversation: on `pinned` when it names an endpoint
    /// that is not disabled (a takeover resumes there), else on the endpoint the balancer
    /// picks, the next one tried while establishing fails. The link names its endpoint.
    pub async fn connect_pinned(
        &self,
        hello: &Hello,
        resume: Option<(&str, &str)>,
        pinned: Option<&str>,
    ) -> Result<Link, RpcError> {
        if let Some(i) = pinned.and_then(|p| self.endpoint(p))
            && self.members[i].admin() != Admin::Disabled
        {
            let r = self.members[i].up.connect(hello, resume).await;
            self.outcome(i, r.is_ok());
            match r {
                Ok(mut l) => {
                    l.endpoint = Some(self.members[i].name.clone());
                    return Ok(l);
                }
                // Its pinned endpoint is gone: a new upstream session elsewhere, from the
                // recorded handshake (the session's upstream state is lost).
                Err(e) => {
                    tracing::warn!(upstream = %self.name, endpoint = %self.members[i].name, error = %e.message, "pinned endpoint unreachable; re-initialising the session on another endpoint")
                }
            }
        }
        let mut tried = Vec::new();
        loop {
            let Some(i) = self.pick(&tried) else {
                return Err(self.unavailable());
            };
            // A resumed upstream session lives on its own endpoint only.
            let resume = if pinned.is_none() && self.members.len() == 1 {
                resume
            } else {
                None
            };
            let r = self.members[i].up.connect(hello, resume).await;
            self.outcome(i, r.is_ok());
            match r {
                Ok(mut l) => {
                    l.endpoint = Some(self.members[i].name.clone());
                    return Ok(l);
                }
                Err(e) => {
                    tried.push(i);
                    if tried.len() == self.members.len() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// The endpoint a session's record pins it to, for a link of this pool (pools of
    /// several endpoints only: a single endpoint needs no pin).
    pub fn pin_of(&self, link: &Link) -> Option<String> {
        (self.members.len() > 1)
            .then(|| link.endpoint.clone())
            .flatten()
    }

    /// Resumes an upstream session where it lives (its pinned endpoint, or the only one),
    /// nowhere else: for closing it.
    pub async fn resume_at(
        &self,
        pinned: Option<&str>,
        hello: &Hello,
        resume: (&str, &str),
    ) -> Result<Link, RpcError> {
        let i = match (pinned.and_then(|p| self.endpoint(p)), self.members.len()) {
            (Some(i), _) => i,
            (None, 1) => 0,
            (None, _) => return Err(self.unavailable()),
        };
        self.members[i].up.connect(hello, Some(resume)).await
    }

    /// [`Pool::connect_pinned`] with no pin.
    pub async fn connect(
        &self,
        hello: &Hello,
        resume: Option<(&str, &str)>,
    ) -> Result<Link, RpcError> {
        self.connect_pinned(hello, resume, None).await
    }

    /// The upstream's health: up when some endpoint is; the first endpoint's otherwise.
    pub fn health(&self) -> Health {
        let all: Vec<Health> = self.members.iter().map(|m| m.up.health()).collect();
        all.iter()
            .find(|h| h.up == Some(true))
            .or_else(|| all.iter().find(|h| h.up.is_some()))
            .unwrap_or(&all[0])
            .clone()
    }

    /// The error for a request that finds no endpoint to use, with each one's cause.
    pub fn unavailable(&self) -> RpcError {
        if let [only] = self.members.as_slice() {
            return only.up.unavailable();
        }
        let causes: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}: {}", m.name, m.up.unavailable().message))
            .collect();
        RpcError::new(
            code::CONNECTION_CLOSED,
            format!(
                "upstream `{}` has no endpoint available ({})",
                self.name,
                causes.join("; ")
            ),
        )
    }

    /// The probe at start: every endpoint reached once; the upstream is up if one is.
    pub async fn probe(&self) -> Result<(), RpcError> {
        let results = futures::future::join_all(self.members.iter().map(|m| m.up.probe())).await;
        let now = Instant::now();
        let mut detector = self.detector.lock().expect("detector lock");
        for (i, r) in results.iter().enumerate() {
            if r.is_err() && self.members.len() > 1 {
                // Counted against the unhealthy threshold like any active probe.
                let change = detector.probed(i, false, now);
                self.log_change(i, change);
            }
        }
        drop(detector);
        match results.iter().find(|r| r.is_ok()) {
            Some(_) => Ok(()),
            None => Err(self.unavailable()),
        }
    }

    /// Sets each endpoint's `mcpg_endpoint_state` to what the detector says now (an ejection
    /// ends with time, not with an event: the probe timer calls this too).
    fn refresh_states(&self) {
        let now = Instant::now();
        let states: Vec<State> = {
            let d = self.detector.lock().expect("detector lock");
            (0..self.members.len()).map(|i| d.state(i, now)).collect()
        };
        for (m, s) in self.members.iter().zip(states) {
            m.metrics.set_state(s as usize);
        }
    }

    /// Probes every endpoint each `interval_ms` (an MCP round trip, [`Upstream::check`]) and
    /// feeds the outcome to the detector's thresholds; ends with the pool. With probes off
    /// (`0`), only refreshes the state metrics, each second.
    fn probe_periodically(pool: Weak<Self>, interval_ms: u64) {
        tokio::spawn(async move {
            let every = if interval_ms == 0 { 1000 } else { interval_ms };
            let mut tick = tokio::time::interval(Duration::from_millis(every));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_tools = None;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.refresh_states();
                if last_tools.is_none_or(|t: Instant| t.elapsed() >= TOOLS_EVERY) {
                    last_tools = Some(Instant::now());
                    pool.compare_tools().await;
                }
                if interval_ms == 0 {
                    continue;
                }
                let timeout = Duration::from_millis(pool.health_cfg.timeout_ms);
                let checks = pool.members.iter().map(|m| async move {
                    matches!(
                        tokio::time::timeout(timeout, m.up.check()).await,
                        Ok(Ok(()))
                    )
                });
                let results = futures::future::join_all(checks).await;
                for (i, ok) in results.into_iter().enumerate() {
                    let change =
                        pool.detector
                            .lock()
                            .expect("detector lock")
                            .probed(i, ok, Instant::now());
                    pool.log_change(i, change);
                }
            }
        });
    }

    /// Reads every endpoint's `tools/list` and compares them; a difference is logged as a
    /// warning when it is found (or changes), and kept for the management API.
    pub async fn compare_tools(&self) {
        let lists = futures::future::join_all(
            self.members
                .iter()
                .map(|m| async { (m.name.clone(), tool_lists::fetch(&m.up).await) }),
        )
        .await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let c = tool_lists::compare(&lists, now_ms);
        let mut last = self.tool_lists.lock().expect("tool lists lock");
        let news = last.as_ref().is_none_or(|l| !l.same_finding(&c));
        if news && !c.consistent {
            tracing::warn!(binding = %self.binding, upstream = %self.name, only_on = ?c.only_on, defined_differently = ?c.defined_differently, "the endpoints of this pool list different tools; clients see the list of whichever endpoint answers them (not merged)");
        } else if news && last.is_some() {
            tracing::info!(binding = %self.binding, upstream = %self.name, "the endpoints of this pool list the same tools again");
        }
        *last = Some(c);
    }

    /// The last comparison of the endpoints' tool lists (`None` for a single endpoint, or
    /// before the first).
    pub fn tool_lists(&self) -> Option<Comparison> {
        self.tool_lists.lock().expect("tool lists lock").clone()
    }

    /// Sets an endpoint's admin state; `false` when there is no such endpoint.
    pub fn set_admin(&self, name: &str, admin: Admin) -> bool {
        let Some(i) = self.endpoint(name) else {
            return false;
        };
        self.members[i].admin.store(admin as u8, Ordering::Relaxed);
        tracing::info!(binding = %self.binding, upstream = %self.name, endpoint = name, admin = ?admin, "endpoint admin state set");
        true
    }

    /// Each endpoint as this replica sees it.
    pub fn view(&self) -> Vec<EndpointView> {
        let now = Instant::now();
        let detector = self.detector.lock().expect("detector lock");
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| EndpointView {
                name: m.name.clone(),
                weight: m.weight,
                state: detector.state(i, now),
                admin: m.admin(),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                requests: m.requests.load(Ordering::Relaxed),
                failures: m.failures.load(Ordering::Relaxed),
                not_reached: m.not_reached.load(Ordering::Relaxed),
                ejections: detector.total_ejections(i),
                last_check: m.up.health(),
            })
            .collect()
    }
}
