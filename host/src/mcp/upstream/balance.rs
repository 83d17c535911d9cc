//! Which endpoint of an upstream pool gets the next new session or stateless request: smooth
//! weighted round robin, or least requests by the power of two choices. Pure and in-process;
//! which endpoints may be picked at all is the pool's decision (`pool.rs`).

use std::sync::Mutex;

use crate::config::model::BalancePolicy;

/// An endpoint that may be picked: its position in the pool, weight and requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub index: usize,
    pub weight: u32,
    pub in_flight: u32,
}

/// The balancing state of one pool.
pub struct Balancer {
    policy: BalancePolicy,
    state: Mutex<State>,
}

struct State {
    /// Smooth weighted round robin's current weight per endpoint (nginx's algorithm: every
    /// pick adds each candidate's weight, the largest wins and loses the total).
    current: Vec<i64>,
    rng: fastrand::Rng,
}

impl Balancer {
    pub fn new(policy: BalancePolicy, endpoints: usize) -> Self {
        Self::with_rng(policy, endpoints, fastrand::Rng::new())
    }

    /// With a given random source (tests seed it).
    pub fn with_rng(policy: BalancePolicy, endpoints: usize, rng: fastrand::Rng) -> Self {
        Self {
            policy,
            state: Mutex::new(State {
                current: vec![0; endpoints],
                rng,
            }),
        }
    }

    pub fn policy(&self) -> BalancePolicy {
        self.policy
    }

    /// The endpoint to use among `candidates` (none when there is none).
    pub fn pick(&self, candidates: &[Candidate]) -> Option<usize> {
        let mut s = self.state.lock().expect("balancer lock");
        match candidates {
            [] => None,
            [only] => Some(only.index),
            _ => Some(match self.policy {
                BalancePolicy::RoundRobin => smooth_weighted(&mut s.current, candidates),
                BalancePolicy::LeastRequests => two_choices(&mut s.rng, candidates),
            }),
        }
    }
}

fn smooth_weighted(current: &mut [i64], candidates: &[Candidate]) -> usize {
    let total: i64 = candidates.iter().map(|c| i64::from(c.weight)).sum();
    let mut best = candidates[0].index;
    for c in candidates {
        current[c.index] += i64::from(c.weight);
        if current[c.index] > current[best] {
            best = c.index;
        }
    }
    current[best] -= total;
    best
}

/// Two distinct candidates drawn at random in proportion to their weights; the one with
/// fewer requests in flight per unit of weight wins (the first drawn on a tie).
fn two_choices(rng: &mut fastrand::Rng, candidates: &[Candidate]) -> usize {
    let first = weighted_draw(rng, candidates, None);
    let second = weighted_draw(rng, candidates, Some(first));
    let (a, b) = (&candidates[first], &candidates[second]);
    // a.in_flight / a.weight <= b.in_flight / b.weight, without division.
    if u64::from(a.in_flight) * u64::from(b.weight) <= u64::from(b.in_flight) * u64::from(a.weight)
    {
        a.index
    } else {
        b.index
    }
}

/// A position in `candidates`, drawn by weight, never `except`.
fn weighted_draw(
    rng: &mut fastrand::Rng,
    candidates: &[Candidate],
    except: Option<usize>,
) -> usize {
    let total: u64 = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != except)
        .map(|(_, c)| u64::from(c.weight))
        .sum();
    let mut r = rng.u64(0..total);
    for (i, c) in candidates.iter().enumerate() {
        if Some(i) == except {
            continue;
        }
        if r < u64::from(c.weight) {
            return i;
        }
        r -= u64::from(c.weight);
    }
    unreachable!("the draw is below the total weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(index, &weight)| Candidate {
                index,
                weight,
                in_flight: 0,
            })
            .collect()
    }

    #[test]
    fn round_robin_follows_the_weights_smoothly() {
        let b = Balancer::new(BalancePolicy::RoundRobin, 3);
        let c = cands(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(&c).unwrap()).collect();
        // nginx's smooth sequence for 5:1:1 — the heavy endpoint never gets five in a row.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..700 {
            counts[b.pick(&c).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn round_robin_with_equal_weights_takes_turns_and_skips_who_is_not_a_candidate() {
        let b = Balancer::new(BalancePolicy::RoundRobin, 3);
        let all = cands(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|_| b.pick(&all).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let without_1: Vec<Candidate> = all.iter().copied().filter(|c| c.index != 1).collect();
        let picks: Vec<usize> = (0..4).map(|_| b.pick(&without_1).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
        assert_eq!(b.pick(&[]), None);
    }

    #[test]
    fn least_requests_prefers_the_idle_endpoint_of_each_pair() {
        let b = Balancer::with_rng(BalancePolicy::LeastRequests, 3, fastrand::Rng::with_seed(7));
        let mut c = cands(&[1, 1, 1]);
        c[0].in_flight = 10;
        c[1].in_flight = 10;
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[b.pick(&c).unwrap()] += 1;
        }
        // Endpoint 2 wins every pair it is drawn into (2 of 3 pairs); 0 and 1 tie otherwise.
        assert_eq!(counts[2], 3000 - counts[0] - counts[1]);
        assert!(counts[2] > 1800 && counts[2] < 2200, "{counts:?}");
        // Two busy endpoints: the one drawn first wins ties, so neither starves.
        assert!(counts[0] > 300 && counts[1] > 300, "{counts:?}");
    }

    #[test]
    fn least_requests_draws_by_weight_and_compares_load_per_weight() {
        let b = Balancer::with_rng(BalancePolicy::LeastRequests, 2, fastrand::Rng::with_seed(1));
        let mut c = cands(&[3, 1]);
        // 6 in flight on weight 3 is as loaded as 2 on weight 1: a tie, the first drawn wins,
        // and endpoint 0 is drawn first three times in four.
        c[0].in_flight = 6;
        c[1].in_flight = 2;
        let mut counts = [0; 2];
        for _ in 0..4000 {
            counts[b.pick(&c).unwrap()] += 1;
        }
        assert!(counts[0] > 2800 && counts[0] < 3200, "{counts:?}");
        c[0].in_flight = 7;
        assert!((0..100).all(|_| b.pick(&c) == Some(1)));
    }
}
