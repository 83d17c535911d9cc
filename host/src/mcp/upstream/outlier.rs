//! The health of each endpoint of an upstream pool as this replica sees it: passive outlier
//! detection from real traffic (consecutive failures eject an endpoint for a back-off that
//! doubles while it keeps failing, never more than the configured share of the pool at once)
//! and the active probes' healthy/unhealthy thresholds. Pure state over `tokio::time::Instant`,
//! so the tests run it on paused time.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::model::HealthConfig;

/// What a recorded outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Ejected by passive detection for this long.
    Ejected(Duration),
    /// Enough consecutive failures, but the pool's ejection share was used up.
    EjectionRefused,
    /// Active probes marked it unhealthy.
    Unhealthy,
    /// Active probes brought it back.
    Healthy,
}

/// One endpoint's health state, as shown by the management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Healthy,
    /// Active probes failed `unhealthy_threshold` times in a row.
    Unhealthy,
    /// Ejected by passive detection until its back-off ends.
    Ejected,
}

#[derive(Debug, Clone, Default)]
struct Endpoint {
    /// Failed requests in a row.
    failures: u32,
    ejected_until: Option<Instant>,
    /// How many times it was ejected without recovering in between (the back-off exponent).
    ejections: u32,
    /// When its last ejection ended, and how long it lasted: a success once it has been back
    /// for as long resets the back-off.
    back_since: Option<(Instant, Duration)>,
    /// How long its last ejection lasted.
    last_ejection: Duration,
    /// Ejections in total (metrics and the management API).
    total_ejections: u64,
    /// Active probes: `Some(false)` once unhealthy, `Some(true)` once healthy again.
    probe_healthy: bool,
    probe_successes: u32,
    probe_failures: u32,
}

/// The health of a pool's endpoints.
pub struct Detector {
    cfg: HealthConfig,
    endpoints: Vec<Endpoint>,
}

impl Detector {
    pub fn new(cfg: &HealthConfig, endpoints: usize) -> Self {
        Self {
            cfg: cfg.clone(),
            endpoints: (0..endpoints)
                .map(|_| Endpoint {
                    probe_healthy: true,
                    ..Endpoint::default()
                })
                .collect(),
        }
    }

    fn ejected(&self, i: usize, now: Instant) -> bool {
        self.endpoints[i].ejected_until.is_some_and(|t| t > now)
    }

    /// Whether endpoint `i` may take new work now.
    pub fn available(&self, i: usize, now: Instant) -> bool {
        self.state(i, now) == State::Healthy
    }

    pub fn state(&self, i: usize, now: Instant) -> State {
        if self.ejected(i, now) {
            State::Ejected
        } else if !self.endpoints[i].probe_healthy {
            State::Unhealthy
        } else {
            State::Healthy
        }
    }

    pub fn total_ejections(&self, i: usize) -> u64 {
        self.endpoints[i].total_ejections
    }

    /// Endpoints out of the rotation now, for either reason.
    fn out(&self, now: Instant) -> usize {
        (0..self.endpoints.len())
            .filter(|&i| !self.available(i, now))
            .count()
    }

    /// How many endpoints may be out at once: the configured share, rounded down.
    fn max_out(&self) -> usize {
        self.endpoints.len() * self.cfg.outlier.max_ejection_percent as usize / 100
    }

    /// Notes the outcome of a real request on endpoint `i` (a failure: not reached, closed or
    /// timed out; an upstream's own JSON-RPC error is a success here).
    pub fn record(&mut self, i: usize, ok: bool, now: Instant) -> Change {
        let o = self.cfg.outlier.clone();
        self.readmit(i, now);
        let e = &mut self.endpoints[i];
        if ok {
            e.failures = 0;
            if let Some((since, lasted)) = e.back_since
                && now >= since + lasted
            {
                e.ejections = 0;
                e.back_since = None;
            }
            return Change::None;
        }
        e.failures += 1;
        if o.consecutive_failures == 0
            || e.failures < o.consecutive_failures
            || self.ejected(i, now)
        {
            return Change::None;
        }
        // Its own exclusion does not count against the share when it is already out.
        let out = self.out(now) - usize::from(!self.available(i, now));
        if out >= self.max_out() {
            return Change::EjectionRefused;
        }
        let e = &mut self.endpoints[i];
        let factor = 1u64 << e.ejections.min(20);
        let lasts = Duration::from_millis(
            o.base_ejection_ms
                .saturating_mul(factor)
                .min(o.max_ejection_ms),
        );
        e.ejections += 1;
        e.total_ejections += 1;
        e.failures = 0;
        e.ejected_until = Some(now + lasts);
        e.last_ejection = lasts;
        e.back_since = None;
        Change::Ejected(lasts)
    }

    /// An ejection that has run out ends: the endpoint is back, on probation.
    fn readmit(&mut self, i: usize, now: Instant) {
        let e = &mut self.endpoints[i];
        if let Some(until) = e.ejected_until
            && until <= now
        {
            e.ejected_until = None;
            e.back_since = Some((until, e.last_ejection));
        }
    }

    /// Notes the outcome of an active probe of endpoint `i`.
    pub fn probed(&mut self, i: usize, ok: bool, now: Instant) -> Change {
        let (up, down) = (self.cfg.healthy_threshold, self.cfg.unhealthy_threshold);
        let max_out = self.max_out();
        // Its own exclusion (an ejection) does not count against the share.
        let out = self.out(now) - usize::from(!self.available(i, now));
        let e = &mut self.endpoints[i];
        if ok {
            e.probe_failures = 0;
            e.probe_successes += 1;
            if !e.probe_healthy && e.probe_successes >= up {
                e.probe_healthy = true;
                return Change::Healthy;
            }
        } else {
            e.probe_successes = 0;
            e.probe_failures += 1;
            if e.probe_healthy && e.probe_failures >= down {
                // A probe that fails everywhere (its own bug, the network of this replica)
                // cannot take out more than the pool's share.
                if out >= max_out {
                    return Change::EjectionRefused;
                }
                e.probe_healthy = false;
                return Change::Unhealthy;
            }
        }
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::OutlierConfig;

    fn cfg(consecutive: u32, percent: u32) -> HealthConfig {
        HealthConfig {
            outlier: OutlierConfig {
                consecutive_failures: consecutive,
                base_ejection_ms: 1_000,
                max_ejection_ms: 5_000,
                max_ejection_percent: percent,
            },
            ..HealthConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_and_the_back_off_doubles_while_it_keeps_failing() {
        let mut d = Detector::new(&cfg(3, 50), 2);
        let fail = |d: &mut Detector, n| {
            (0..n)
                .map(|_| d.record(0, false, Instant::now()))
                .last()
                .unwrap()
        };
        assert_eq!(fail(&mut d, 2), Change::None);
        assert!(d.available(0, Instant::now()));
        // A success in between resets the count.
        d.record(0, true, Instant::now());
        assert_eq!(fail(&mut d, 2), Change::None);
        assert_eq!(fail(&mut d, 1), Change::Ejected(Duration::from_secs(1)));
        assert_eq!(d.state(0, Instant::now()), State::Ejected);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!d.available(0, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(d.available(0, Instant::now()));
        // Failing again straight away: twice as long, then four times, capped at the max.
        assert_eq!(fail(&mut d, 3), Change::Ejected(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(fail(&mut d, 3), Change::Ejected(Duration::from_secs(4)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(fail(&mut d, 3), Change::Ejected(Duration::from_secs(5)));
        assert_eq!(d.total_ejections(0), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_back_off_resets_once_the_endpoint_has_served_as_long_as_it_was_out() {
        let mut d = Detector::new(&cfg(1, 50), 2);
        assert_eq!(
            d.record(0, false, Instant::now()),
            Change::Ejected(Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        d.record(0, true, Instant::now());
        tokio::time::advance(Duration::from_millis(500)).await;
        d.record(0, true, Instant::now());
        assert_eq!(
            d.record(0, false, Instant::now()),
            Change::Ejected(Duration::from_secs(2)),
            "back for only half as long as it was out: still doubling"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        d.record(0, true, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        d.record(0, true, Instant::now());
        assert_eq!(
            d.record(0, false, Instant::now()),
            Change::Ejected(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_share_of_the_pool_is_ejected_at_once() {
        // 50% of three endpoints is one.
        let mut d = Detector::new(&cfg(1, 50), 3);
        let now = Instant::now();
        assert!(matches!(d.record(0, false, now), Change::Ejected(_)));
        assert_eq!(d.record(1, false, now), Change::EjectionRefused);
        assert_eq!(d.record(2, false, now), Change::EjectionRefused);
        assert!(d.available(1, now) && d.available(2, now));
        // Once the first is back, the next failing one can go.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            d.record(1, false, Instant::now()),
            Change::Ejected(_)
        ));
        // A pool of one ejects its endpoint only when the share is 100%.
        let mut one = Detector::new(&cfg(1, 100), 1);
        assert!(matches!(one.record(0, false, now), Change::Ejected(_)));
        let mut one = Detector::new(&cfg(1, 99), 1);
        assert_eq!(one.record(0, false, now), Change::EjectionRefused);
        // Passive detection off.
        let mut off = Detector::new(&cfg(0, 100), 2);
        assert!((0..100).all(|_| off.record(0, false, now) == Change::None));
    }

    #[tokio::test(start_paused = true)]
    async fn probes_mark_unhealthy_and_healthy_by_their_thresholds_within_the_share() {
        let mut c = cfg(5, 50);
        c.unhealthy_threshold = 2;
        c.healthy_threshold = 3;
        let mut d = Detector::new(&c, 2);
        let now = Instant::now();
        assert_eq!(d.probed(0, false, now), Change::None);
        assert_eq!(d.probed(0, false, now), Change::Unhealthy);
        assert_eq!(d.state(0, now), State::Unhealthy);
        // The other endpoint's probes fail too: the share (one of two) is used up.
        d.probed(1, false, now);
        assert_eq!(d.probed(1, false, now), Change::EjectionRefused);
        assert!(d.available(1, now));
        assert_eq!(d.probed(0, true, now), Change::None);
        assert_eq!(d.probed(0, true, now), Change::None);
        assert_eq!(d.probed(0, true, now), Change::Healthy);
        assert!(d.available(0, now));
        // An endpoint ejected by passive detection whose probes fail is marked unhealthy
        // too (its own ejection is not the share's), so it stays out after the ejection.
        let mut d = Detector::new(&c, 2);
        for _ in 0..5 {
            d.record(1, false, now);
        }
        assert_eq!(d.state(1, now), State::Ejected);
        d.probed(1, false, now);
        assert_eq!(d.probed(1, false, now), Change::Unhealthy);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.state(1, Instant::now()), State::Unhealthy);
    }
}
