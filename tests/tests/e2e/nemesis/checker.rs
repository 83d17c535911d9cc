//! The nemesis checker: judges a history of client calls, the upstreams' execution records
//! (and the stale requests they refused by fencing token) and the ownership timeline. Pure logic, unit-tested on hand-written histories (one per kind of
//! violation) so it is known to catch each.

use std::collections::{BTreeMap, HashMap};

/// Seconds on the system's monotonic clock (`CLOCK_MONOTONIC`, shared by every process).
pub type T = f64;

/// What the client saw of one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Answered with a result: the upstream's value.
    Ok(Value),
    /// A definite failure (the gateway said it did not run).
    Fail(String),
    /// No answer, or one that cannot tell whether it ran (timeout, reset, proxy 502/504).
    Unknown(String),
}

/// A value an instrumented upstream returns: which incarnation of the session's upstream state
/// answered (a stdio child; one for the HTTP upstream) and its counter there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub incarnation: String,
    pub n: u64,
}

/// One call a client made, in the order that client made them (calls of one client are
/// sequential).
#[derive(Clone, Debug)]
pub struct Op {
    pub session: String,
    pub call: String,
    pub invoked: T,
    pub completed: T,
    pub outcome: Outcome,
}

/// One execution an upstream recorded.
#[derive(Clone, Debug)]
pub struct Exec {
    pub call: String,
    pub replica: String,
    pub at: T,
    pub value: Value,
}

/// A request an upstream refused, unrun, because it carried a lower fencing token than one the
/// session had already seen (a replica that lost the session and did not know yet).
#[derive(Clone, Debug)]
pub struct Refusal {
    pub call: String,
    pub replica: String,
    pub at: T,
    pub token: u64,
    pub highest: u64,
}

/// One observation of a session's owner (from the session record).
#[derive(Clone, Debug)]
pub struct Owned {
    pub session: String,
    pub at: T,
    pub owner: String,
}

/// The checker's counts and the violations, each described in one line.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub calls: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub executions: usize,
    /// Ownership observations the stale-execution check had.
    pub observations: usize,
    /// Times a client saw its session's state start over (a new incarnation: a stdio child
    /// started on another replica). Not a violation — a takeover after a crash costs it — but
    /// what a stall or a hand-over should not cost.
    pub state_resets: usize,
    /// Stale requests the upstreams refused by fencing token (not run, so not violations:
    /// what the token is for), one line each.
    pub refused_stale: Vec<String>,
    /// How often each reason for a failed or unknown outcome came up.
    pub reasons: BTreeMap<String, usize>,
    /// Executed by a replica while the record named another owner before and after.
    pub stale_executions: Vec<String>,
    /// A client saw a counter go back (a stale incarnation or a non-increasing count).
    pub counter_regressions: Vec<String>,
    /// An acknowledged call executed never, or more than once, or with another value.
    pub ack_not_once: Vec<String>,
    /// A call reported failed that did execute, a call executed more than once whatever its
    /// outcome, or an execution of a call nobody made.
    pub unaccounted: Vec<String>,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.stale_executions.len()
            + self.counter_regressions.len()
            + self.ack_not_once.len()
            + self.unaccounted.len()
    }

    /// Every violation, one per line, the first `max` of each kind.
    pub fn describe(&self, max: usize) -> String {
        let mut s = format!(
            "{} calls: {} ok, {} failed, {} unknown; {} executions; {} stale requests refused by token; {} ownership observations; {} state resets; violations: {} stale executions, {} counter regressions, {} acknowledged-not-once, {} unaccounted",
            self.calls,
            self.ok,
            self.failed,
            self.unknown,
            self.executions,
            self.refused_stale.len(),
            self.observations,
            self.state_resets,
            self.stale_executions.len(),
            self.counter_regressions.len(),
            self.ack_not_once.len(),
            self.unaccounted.len()
        );
        for (why, n) in &self.reasons {
            s.push_str(&format!("\n  {n} × {why}"));
        }
        for v in [
            &self.refused_stale,
            &self.stale_executions,
            &self.counter_regressions,
            &self.ack_not_once,
            &self.unaccounted,
        ] {
            for line in v.iter().take(max) {
                s.push_str("\n  ");
                s.push_str(line);
            }
        }
        s
    }
}

/// Checks `clients` (each one client's calls in order) against the upstreams' `execs` and the
/// ownership timeline `owned`.
pub fn check(clients: &[Vec<Op>], execs: &[Exec], owned: &[Owned]) -> Report {
    let mut r = Report {
        executions: execs.len(),
        observations: owned.len(),
        ..Default::default()
    };
    let mut by_call: HashMap<&str, Vec<&Exec>> = HashMap::new();
    for e in execs {
        by_call.entry(e.call.as_str()).or_default().push(e);
    }
    let mut invoked: HashMap<&str, &Op> = HashMap::new();
    for ops in clients {
        counters(ops, &mut r);
        for op in ops {
            r.calls += 1;
            invoked.insert(op.call.as_str(), op);
            let ran = by_call.get(op.call.as_str()).map_or(&[][..], Vec::as_slice);
            match &op.outcome {
                Outcome::Ok(v) => {
                    r.ok += 1;
                    if ran.len() != 1 {
                        let runs: Vec<String> = ran
                            .iter()
                            .map(|e| format!("{} at {:.3}", e.replica, e.at))
                            .collect();
                        r.ack_not_once.push(format!(
                            "call {} (sent {:.3}, answered {:.3}) acknowledged with {v:?} but executed {} times: {}",
                            op.call,
                            op.invoked,
                            op.completed,
                            ran.len(),
                            runs.join(", ")
                        ));
                    } else if &ran[0].value != v {
                        r.ack_not_once.push(format!(
                            "call {} acknowledged with {v:?} but executed with {:?}",
                            op.call, ran[0].value
                        ));
                    }
                }
                Outcome::Fail(why) => {
                    r.failed += 1;
                    *r.reasons.entry(format!("failed: {why}")).or_default() += 1;
                    if !ran.is_empty() {
                        r.unaccounted.push(format!(
                            "call {} reported failed ({why}) but executed on {}",
                            op.call, ran[0].replica
                        ));
                    }
                }
                Outcome::Unknown(why) => {
                    r.unknown += 1;
                    *r.reasons.entry(format!("unknown: {why}")).or_default() += 1;
                    if ran.len() > 1 {
                        r.unaccounted.push(format!(
                            "call {} (outcome unknown) executed {} times",
                            op.call,
                            ran.len()
                        ));
                    }
                }
            }
        }
    }
    for e in execs {
        match invoked.get(e.call.as_str()) {
            None => r.unaccounted.push(format!(
                "call {} executed on {} but nobody made it",
                e.call, e.replica
            )),
            Some(op) if e.at < op.invoked => r.unaccounted.push(format!(
                "call {} executed on {} at {:.3}, before the client sent it at {:.3}",
                e.call, e.replica, e.at, op.invoked
            )),
            Some(_) => {}
        }
    }
    stale(&invoked, execs, owned, &mut r);
    r
}

/// Counts the upstreams' refusals of stale requests apart. A refused call must not have run
/// (an execution of it is unaccounted) nor have been acknowledged with a value (caught by
/// [`check`] as acknowledged-not-once, since it has no execution).
pub fn refusals(r: &mut Report, clients: &[Vec<Op>], execs: &[Exec], refused: &[Refusal]) {
    let outcome: HashMap<&str, &Outcome> = clients
        .iter()
        .flatten()
        .map(|op| (op.call.as_str(), &op.outcome))
        .collect();
    for f in refused {
        let seen = match outcome.get(f.call.as_str()) {
            Some(Outcome::Ok(_)) => "acknowledged",
            Some(Outcome::Fail(_)) => "failed",
            Some(Outcome::Unknown(_)) => "unknown",
            None => "not made by a client",
        };
        r.refused_stale.push(format!(
            "call {} refused on {} at {:.3}: token {} below {} (client saw: {seen})",
            f.call, f.replica, f.at, f.token, f.highest
        ));
        if let Some(e) = execs.iter().find(|e| e.call == f.call) {
            r.unaccounted.push(format!(
                "call {} was refused as stale on {} but executed on {} at {:.3}",
                f.call, f.replica, e.replica, e.at
            ));
        }
    }
}

/// Per session, the values one client saw must strictly increase: within an incarnation the
/// counter grows, and an incarnation once left behind never answers again.
fn counters(ops: &[Op], r: &mut Report) {
    let mut seen: HashMap<&str, (Vec<&str>, &Value, &str)> = HashMap::new();
    for op in ops {
        let Outcome::Ok(v) = &op.outcome else {
            continue;
        };
        match seen.get_mut(op.session.as_str()) {
            None => {
                seen.insert(&op.session, (vec![v.incarnation.as_str()], v, &op.call));
            }
            Some((incs, last, last_call)) => {
                if v.incarnation == last.incarnation {
                    if v.n <= last.n {
                        r.counter_regressions.push(format!(
                            "session {}: call {} saw {}#{} after call {last_call} saw {}#{}",
                            op.session, op.call, v.incarnation, v.n, last.incarnation, last.n
                        ));
                    }
                } else if incs.contains(&v.incarnation.as_str()) {
                    r.counter_regressions.push(format!(
                        "session {}: call {} was answered by the earlier incarnation {}#{} after call {last_call} saw {}#{}",
                        op.session, op.call, v.incarnation, v.n, last.incarnation, last.n
                    ));
                } else {
                    incs.push(&v.incarnation);
                    r.state_resets += 1;
                }
                *last = v;
                *last_call = &op.call;
            }
        }
    }
}

/// An execution by replica R at t is stale when the session record named the same other
/// owner in the last observation before t and the first after t (so ownership did not pass
/// through R in between, short of two moves within one polling interval).
fn stale(invoked: &HashMap<&str, &Op>, execs: &[Exec], owned: &[Owned], r: &mut Report) {
    let mut timeline: BTreeMap<&str, Vec<(T, &str)>> = BTreeMap::new();
    for o in owned {
        timeline
            .entry(&o.session)
            .or_default()
            .push((o.at, &o.owner));
    }
    for t in timeline.values_mut() {
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    for e in execs {
        let Some(op) = invoked.get(e.call.as_str()) else {
            continue;
        };
        let Some(t) = timeline.get(op.session.as_str()) else {
            continue;
        };
        let i = t.partition_point(|(at, _)| *at <= e.at);
        if i == 0 || i == t.len() {
            continue;
        }
        let ((t0, before), (t1, after)) = (t[i - 1], t[i]);
        if before == after && before != e.replica {
            r.stale_executions.push(format!(
                "call {} of session {} executed on {} at {:.3}, while {before} owned it ({:.3} and {:.3})",
                e.call, op.session, e.replica, e.at, t0, t1
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(inc: &str, n: u64) -> Value {
        Value {
            incarnation: inc.into(),
            n,
        }
    }

    fn op(call: &str, at: T, outcome: Outcome) -> Op {
        Op {
            session: "s".into(),
            call: call.into(),
            invoked: at,
            completed: at + 0.01,
            outcome,
        }
    }

    fn ex(call: &str, replica: &str, at: T, value: Value) -> Exec {
        Exec {
            call: call.into(),
            replica: replica.into(),
            at,
            value,
        }
    }

    fn owned(at: T, owner: &str) -> Owned {
        Owned {
            session: "s".into(),
            at,
            owner: owner.into(),
        }
    }

    /// A clean history: two incarnations (a takeover), every call once, owners matching.
    fn clean() -> (Vec<Vec<Op>>, Vec<Exec>, Vec<Owned>) {
        let ops = vec![
            op("c1", 1.0, Outcome::Ok(v("a", 1))),
            op("c2", 2.0, Outcome::Ok(v("a", 2))),
            op("c3", 3.0, Outcome::Unknown("timeout".into())),
            op("c4", 4.0, Outcome::Fail("503".into())),
            op("c5", 5.0, Outcome::Ok(v("b", 1))),
        ];
        let execs = vec![
            ex("c1", "r1", 1.005, v("a", 1)),
            ex("c2", "r1", 2.005, v("a", 2)),
            ex("c5", "r2", 5.005, v("b", 1)),
        ];
        let own = vec![
            owned(0.5, "r1"),
            owned(2.5, "r1"),
            owned(4.5, "r2"),
            owned(6.0, "r2"),
        ];
        (vec![ops], execs, own)
    }

    #[test]
    fn a_clean_history_has_no_violations_and_counts_outcomes() {
        let (ops, execs, own) = clean();
        let r = check(&ops, &execs, &own);
        assert_eq!(r.violations(), 0, "{}", r.describe(10));
        assert_eq!(
            (r.calls, r.ok, r.failed, r.unknown, r.executions),
            (5, 3, 1, 1, 3)
        );
        assert_eq!(r.state_resets, 1, "the takeover started a new incarnation");
    }

    #[test]
    fn an_execution_by_a_replica_that_was_not_the_owner_is_caught() {
        let (ops, mut execs, own) = clean();
        // c3's outcome was unknown; the old owner ran it after the new one took over.
        execs.push(ex("c3", "r1", 5.5, v("a", 3)));
        let r = check(&ops, &execs, &own);
        assert_eq!(r.stale_executions.len(), 1, "{}", r.describe(10));
        assert_eq!(r.violations(), 1);
    }

    #[test]
    fn a_stale_incarnation_answering_after_a_newer_one_is_caught() {
        let (mut ops, mut execs, own) = clean();
        ops[0].push(op("c6", 6.0, Outcome::Ok(v("a", 15))));
        execs.push(ex("c6", "r2", 6.005, v("a", 15)));
        let r = check(&ops, &execs, &own);
        assert_eq!(r.counter_regressions.len(), 1, "{}", r.describe(10));
    }

    #[test]
    fn a_counter_that_does_not_increase_is_caught() {
        let (mut ops, mut execs, own) = clean();
        ops[0].push(op("c6", 6.0, Outcome::Ok(v("b", 1))));
        execs.push(ex("c6", "r2", 6.005, v("b", 1)));
        let r = check(&ops, &execs, &own);
        assert_eq!(r.counter_regressions.len(), 1, "{}", r.describe(10));
    }

    #[test]
    fn an_acknowledged_call_executed_twice_or_never_is_caught() {
        let (ops, mut execs, own) = clean();
        execs.push(ex("c2", "r1", 2.006, v("a", 3)));
        execs.retain(|e| e.call != "c5");
        let r = check(&ops, &execs, &own);
        assert_eq!(r.ack_not_once.len(), 2, "{}", r.describe(10));
    }

    #[test]
    fn an_acknowledged_value_that_was_not_the_executed_one_is_caught() {
        let (ops, mut execs, own) = clean();
        execs[1].value = v("a", 7);
        let r = check(&ops, &execs, &own);
        assert_eq!(r.ack_not_once.len(), 1, "{}", r.describe(10));
    }

    #[test]
    fn a_failure_that_executed_or_an_unknown_that_ran_twice_is_unaccounted() {
        let (ops, mut execs, own) = clean();
        execs.push(ex("c4", "r2", 4.6, v("b", 1)));
        let r = check(&ops, &execs, &own);
        assert_eq!(r.unaccounted.len(), 1, "{}", r.describe(10));
        let (ops, mut execs, own) = clean();
        execs.push(ex("c3", "r1", 3.005, v("a", 3)));
        execs.push(ex("c3", "r1", 3.006, v("a", 4)));
        let r = check(&ops, &execs, &own);
        assert_eq!(r.unaccounted.len(), 1, "{}", r.describe(10));
    }

    fn refusal(call: &str, replica: &str, at: T) -> Refusal {
        Refusal {
            call: call.into(),
            replica: replica.into(),
            at,
            token: 1,
            highest: 2,
        }
    }

    #[test]
    fn a_stale_request_refused_by_token_is_counted_apart_and_must_not_have_run() {
        let (ops, execs, own) = clean();
        // c4 failed: the old owner's request, refused by the upstream.
        let mut r = check(&ops, &execs, &own);
        refusals(&mut r, &ops, &execs, &[refusal("c4", "r1", 4.6)]);
        assert_eq!(
            (r.refused_stale.len(), r.violations()),
            (1, 0),
            "{}",
            r.describe(10)
        );
        let (ops, mut execs, own) = clean();
        execs.push(ex("c4", "r2", 4.7, v("b", 1)));
        let mut r = check(&ops, &execs, &own);
        let before = r.unaccounted.len();
        refusals(&mut r, &ops, &execs, &[refusal("c4", "r1", 4.6)]);
        assert_eq!(r.unaccounted.len(), before + 1, "{}", r.describe(10));
    }

    #[test]
    fn an_execution_nobody_asked_for_or_before_it_was_asked_is_unaccounted() {
        let (ops, mut execs, own) = clean();
        execs.push(ex("ghost", "r1", 1.5, v("a", 9)));
        let r = check(&ops, &execs, &own);
        assert_eq!(r.unaccounted.len(), 1, "{}", r.describe(10));
        let (ops, mut execs, own) = clean();
        execs[0].at = 0.5;
        let r = check(&ops, &execs, &own);
        assert_eq!(r.unaccounted.len(), 1, "{}", r.describe(10));
    }
}
