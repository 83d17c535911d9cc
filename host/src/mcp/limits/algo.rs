//! The two counting rules, pure: GCRA for a `rate` (state: the theoretical arrival time, in
//! microseconds) and a
//! fixed window for a `quota` (state: the window and how much of it is used), each taking up
//! to `want` units at once so that a replica can lease a share of the budget in one write.
//! States are small strings, the value stored under a limit's key.

use std::time::Duration;

/// How a limit counts, with its numbers in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// `burst` units at once, then one every `interval_us` microseconds (GCRA: a unit is
    /// admitted while the theoretical arrival time is at most `burst × interval` ahead of
    /// now). Microseconds, so that rates up to a million per second per key stay exact.
    Gcra { interval_us: u64, burst: u64 },
    /// At most `n` units per window of `len_ms`, windows aligned to the Unix epoch.
    Window { len_ms: u64, n: u64 },
}

/// The outcome of [`Algo::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// Units granted, `0..=want`.
    pub granted: u64,
    /// The state to store when `granted > 0`.
    pub state: String,
    /// When nothing was granted: how long until one unit would be.
    pub retry_after: Duration,
    /// How long the stored state matters: after this it is equivalent to no state at all.
    pub ttl: Duration,
    /// For a window: its index (leased units are good only inside it).
    pub window: Option<u64>,
}

impl Algo {
    /// A `rate` of `n` per `period_ms` with `burst`.
    pub fn rate(n: u64, period_ms: u64, burst: u64) -> Self {
        Algo::Gcra {
            // At least 1 µs: a rate above a million per second per key is kept at that.
            interval_us: (period_ms.saturating_mul(1_000) / n).max(1),
            burst: burst.max(1),
        }
    }

    /// A `quota` of `n` per window of `len_ms`.
    pub fn quota(n: u64, len_ms: u64) -> Self {
        Algo::Window { len_ms, n }
    }

    /// How many units may be used at once: the burst, or the whole quota.
    pub fn capacity(&self) -> u64 {
        match *self {
            Algo::Gcra { burst, .. } => burst,
            Algo::Window { n, .. } => n,
        }
    }

    /// Takes up to `want` units at `now_ms` (Unix time) from `state` (`None`: no state).
    /// A state that cannot be read counts as none: it can only come from a newer release or
    /// a damaged write, and refusing every request for it would be worse.
    pub fn take(&self, state: Option<&str>, now_ms: u64, want: u64) -> Take {
        match *self {
            Algo::Gcra { interval_us, burst } => {
                // In µs, as u128: `burst × interval` can exceed u64 for long periods.
                let (now, t) = (u128::from(now_ms) * 1_000, u128::from(interval_us));
                let tat = state
                    .and_then(|s| s.strip_prefix('g'))
                    .and_then(|s| s.parse::<u128>().ok())
                    .unwrap_or(0)
                    .max(now);
                let horizon = now + u128::from(burst) * t;
                // Room ahead of now: `burst` intervals, minus what is already booked.
                let room = horizon.saturating_sub(tat) / t;
                let granted = room.min(u128::from(want)) as u64;
                let new_tat = tat + u128::from(granted) * t;
                // One unit fits once `tat + interval - now <= burst * interval`.
                let retry = (tat + t).saturating_sub(horizon).max(1);
                let micros = |v: u128| Duration::from_micros(u64::try_from(v).unwrap_or(u64::MAX));
                Take {
                    granted,
                    state: format!("g{new_tat}"),
                    retry_after: micros(retry),
                    ttl: micros(new_tat - now) + Duration::from_secs(1),
                    window: None,
                }
            }
            Algo::Window { len_ms, n } => {
                let idx = now_ms / len_ms;
                let used = state
                    .and_then(|s| s.strip_prefix('w'))
                    .and_then(|s| s.split_once(':'))
                    .and_then(|(w, u)| Some((w.parse::<u64>().ok()?, u.parse::<u64>().ok()?)))
                    .filter(|(w, _)| *w == idx)
                    .map_or(0, |(_, u)| u);
                let granted = n.saturating_sub(used).min(want);
                let end = (idx + 1) * len_ms;
                Take {
                    granted,
                    state: format!("w{idx}:{}", used + granted),
                    retry_after: Duration::from_millis((end - now_ms).max(1)),
                    ttl: Duration::from_millis(end - now_ms + 1_000),
                    window: Some(idx),
                }
            }
        }
    }

    /// The window `now_ms` falls in, for a quota (leased units expire with their window).
    pub fn window_of(&self, now_ms: u64) -> Option<u64> {
        match *self {
            Algo::Window { len_ms, .. } => Some(now_ms / len_ms),
            Algo::Gcra { .. } => None,
        }
    }

    /// How many units a replica leases per coordinator write: a sixteenth of the capacity,
    /// between 1 and 64. Small limits (a burst or quota up to 31) are thus counted exactly,
    /// one write per request; large ones cost one write per share. The cluster can exceed a
    /// limit by at most `replicas × (share − 1)` units: what each replica holds unspent.
    pub fn share(&self) -> u64 {
        (self.capacity() / 16).clamp(1, 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let a = Algo::rate(1, 1_000, 3); // 1/s, burst 3
        let mut state: Option<String> = None;
        let mut granted = 0;
        for _ in 0..5 {
            let t = a.take(state.as_deref(), 10_000, 1);
            if t.granted > 0 {
                state = Some(t.state);
                granted += t.granted;
            } else {
                // The next unit fits one interval after the burst began.
                assert_eq!(t.retry_after, Duration::from_millis(1_000));
            }
        }
        assert_eq!(granted, 3);
        let t = a.take(state.as_deref(), 10_999, 1);
        assert_eq!((t.granted, t.retry_after), (0, Duration::from_millis(1)));
        let t = a.take(state.as_deref(), 11_000, 1);
        assert_eq!(t.granted, 1);
        // Long idle: back to a full burst, never more.
        assert_eq!(a.take(Some(&t.state), 100_000, 10).granted, 3);
    }

    #[test]
    fn gcra_grants_part_of_a_share() {
        let a = Algo::rate(10, 1_000, 10);
        let t = a.take(None, 5_000, 4);
        assert_eq!(t.granted, 4);
        let t = a.take(Some(&t.state), 5_000, 8);
        assert_eq!(t.granted, 6, "only what is left of the burst");
        let t2 = a.take(Some(&t.state), 5_000, 8);
        assert_eq!(
            (t2.granted, t2.retry_after),
            (0, Duration::from_millis(100))
        );
    }

    #[test]
    fn window_resets_at_its_boundary() {
        let a = Algo::quota(3, 10_000);
        let t = a.take(None, 12_000, 2);
        assert_eq!((t.granted, t.state.as_str()), (2, "w1:2"));
        let t = a.take(Some(&t.state), 15_000, 2);
        assert_eq!(t.granted, 1);
        let t = a.take(Some(&t.state), 19_999, 1);
        assert_eq!((t.granted, t.retry_after), (0, Duration::from_millis(1)));
        let t = a.take(Some(&t.state), 20_000, 5);
        assert_eq!((t.granted, t.window), (3, Some(2)));
    }

    #[test]
    fn unreadable_state_counts_as_none_and_shares_are_bounded() {
        let a = Algo::rate(5, 1_000, 5);
        assert_eq!(a.take(Some("garbage"), 1_000, 5).granted, 5);
        assert_eq!(Algo::rate(1, 1_000, 10).share(), 1);
        assert_eq!(Algo::rate(1, 1_000, 320).share(), 20);
        assert_eq!(Algo::quota(1_000_000, 86_400_000).share(), 64);
    }

    #[test]
    fn fast_rates_and_long_periods_stay_exact() {
        // 100 000/s: after the burst, 100 units come back per millisecond, not 1.
        let a = Algo::rate(100_000, 1_000, 1_000);
        let t = a.take(None, 1_000, 1_000);
        assert_eq!(t.granted, 1_000);
        assert_eq!(a.take(Some(&t.state), 1_001, 1_000).granted, 100);
        // One a year with a huge burst: no overflow.
        let y = Algo::rate(1, 366 * 86_400_000, 1_000_000_000);
        assert_eq!(y.take(None, 1_000, 5).granted, 5);
    }
}
