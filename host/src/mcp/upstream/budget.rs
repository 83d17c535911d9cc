//! The retry budget of an upstream pool: a request that failed before reaching an endpoint
//! may be retried on another only while retries stay within `ratio_percent` of the requests
//! of the last ten seconds plus `min_per_second`, so retries do not multiply the load during
//! an outage. Counts over one-second buckets of `tokio::time::Instant`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::model::RetryBudgetConfig;

const BUCKETS: usize = 10;
const BUCKET: Duration = Duration::from_secs(1);

pub struct RetryBudget {
    cfg: RetryBudgetConfig,
    window: Mutex<Window>,
}

struct Window {
    start: Instant,
    /// Requests and retries per second, the current second at `head`.
    buckets: [(u64, u64); BUCKETS],
    head: usize,
}

impl Window {
    /// Moves the window on to `now`, clearing the seconds that passed.
    fn advance(&mut self, now: Instant) {
        let mut passed = 0;
        while now >= self.start + BUCKET && passed < BUCKETS {
            self.start += BUCKET;
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = (0, 0);
            passed += 1;
        }
        if now >= self.start + BUCKET {
            // Idle for longer than the window: start afresh.
            self.start = now;
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .fold((0, 0), |(r, t), (br, bt)| (r + br, t + bt))
    }
}

impl RetryBudget {
    pub fn new(cfg: &RetryBudgetConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            window: Mutex::new(Window {
                start: Instant::now(),
                buckets: [(0, 0); BUCKETS],
                head: 0,
            }),
        }
    }

    /// Counts a request (first attempts only).
    pub fn request(&self) {
        let mut w = self.window.lock().expect("budget lock");
        w.advance(Instant::now());
        let h = w.head;
        w.buckets[h].0 += 1;
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        let mut w = self.window.lock().expect("budget lock");
        w.advance(Instant::now());
        let (requests, retries) = w.totals();
        let allowed = requests * u64::from(self.cfg.ratio_percent) / 100
            + u64::from(self.cfg.min_per_second) * BUCKETS as u64;
        if retries >= allowed {
            return false;
        }
        let h = w.head;
        w.buckets[h].1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor_over_ten_seconds() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            ratio_percent: 20,
            min_per_second: 1,
        });
        for _ in 0..100 {
            b.request();
        }
        // 20% of 100, plus 1 per second of the 10-second window.
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 30);
        // Five seconds on, nothing has left the window yet.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.try_retry());
        // Ten seconds after they were made, the requests and retries are forgotten: only the
        // floor is left.
        tokio::time::advance(Duration::from_secs(5)).await;
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_never_retries() {
        let b = RetryBudget::new(&RetryBudgetConfig {
            ratio_percent: 0,
            min_per_second: 0,
        });
        for _ in 0..1000 {
            b.request();
        }
        assert!(!b.try_retry());
        tokio::time::advance(Duration::from_secs(60)).await;
        b.request();
        assert!(!b.try_retry());
    }
}
