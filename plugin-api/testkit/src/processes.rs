//! Lease safety across OS processes: several processes (`mcpg-lease-contender`, this crate's
//! binary) × K contenders compete for one lease while the parent SIGSTOPs holders past their
//! TTL and restarts the backend. Every holding is logged on `CLOCK_MONOTONIC` (shared by all
//! processes); [`lease_safety_processes`] then checks that no two holdings overlap as the
//! backend defines them (from the acquire to the earlier of the release and the acquire's send
//! time plus the TTL), that fencing tokens strictly increase in acquisition order, and how
//! many stale holders a register that rejects lower tokens refused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Seconds on `CLOCK_MONOTONIC`.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// What the parent tells each contender process.
#[derive(Serialize, Deserialize, Clone)]
pub struct ChildPlan {
    pub library: String,
    pub id: String,
    pub config: serde_json::Value,
    pub node: String,
    pub name: String,
    pub ttl_ms: u64,
    pub contenders: usize,
    pub log: String,
    pub stop: String,
}

/// One holding, as its holder logged it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Holding {
    pub holder: String,
    pub token: u64,
    /// When the acquire was sent.
    pub sent: f64,
    /// When the acquire returned the lease.
    pub start: f64,
    /// Just before the release was sent.
    pub end: f64,
    /// When the holder wrote to the register, if it still believed it held the lease.
    pub write_at: Option<f64>,
}

/// Appends one JSON line with a single `write` (O_APPEND: lines of several processes do not
/// interleave).
pub fn append_line(path: &str, h: &Holding) {
    let mut line = serde_json::to_vec(h).expect("serializes");
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the holdings log");
    f.write_all(&line).expect("append to the holdings log");
}

/// How the parent runs the processes.
pub struct ProcessPlan {
    pub processes: usize,
    pub contenders: usize,
    pub acquisitions: usize,
    pub ttl: Duration,
    /// How often a holder process is SIGSTOPped (for twice the TTL).
    pub pause_every: Duration,
    /// How often the backend is restarted (`None`: never).
    pub restart_every: Option<Duration>,
    /// Run at least this long even if the acquisitions are done sooner (so a short run still
    /// sees pauses and restarts).
    pub min_duration: Duration,
    /// Give up after this long even if fewer acquisitions happened (reported as partial).
    pub limit: Duration,
}

/// What a cross-process run found.
#[derive(Debug, Default)]
pub struct ProcessSafety {
    pub acquisitions: usize,
    pub pauses: usize,
    pub restarts: usize,
    pub overlaps: Vec<String>,
    pub token_regressions: Vec<String>,
    /// Register writes refused because a higher token had written (stale holders caught).
    pub stale_writes_refused: usize,
    /// Holdings that outlived their TTL (their holder was paused).
    pub outlived_ttl: usize,
    /// Acquires that returned after the TTL counted from their send had passed (the holder
    /// was paused while acquiring): never validly held, left out of the overlap and token
    /// checks; their register writes are still replayed (and refused when stale).
    pub expired_on_arrival: usize,
    pub partial: bool,
    pub seconds: f64,
}

impl ProcessSafety {
    pub fn summary(&self) -> String {
        format!(
            "{} acquisitions{} in {:.0} s, {} holder pauses, {} backend restarts: {} overlapping holders, {} token regressions, {} holdings outlived their TTL, {} expired before the acquire returned, {} stale register writes refused",
            self.acquisitions,
            if self.partial { " (partial)" } else { "" },
            self.seconds,
            self.pauses,
            self.restarts,
            self.overlaps.len(),
            self.token_regressions.len(),
            self.outlived_ttl,
            self.expired_on_arrival,
            self.stale_writes_refused
        )
    }

    pub fn assert_safe(&self) {
        assert!(self.acquisitions > 0, "no lease was ever acquired");
        assert!(
            self.overlaps.is_empty() && self.token_regressions.is_empty(),
            "{}\n{}\n{}",
            self.summary(),
            self.overlaps
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            self.token_regressions
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// The contender binary beside the test executable (`cargo build -p mcpg-plugin-testkit`, or
/// the workspace build, puts it there).
fn contender_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let p = dir.join("mcpg-lease-contender");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p mcpg-plugin-testkit` (the workspace build does)",
        p.display()
    );
    p
}

/// Runs the plan: `processes` contender processes on the plugin at `library` with `config`,
/// holders paused and the backend restarted (by `restart`, blocking until it answers) as
/// planned, until `acquisitions` holdings were logged or the limit passed.
pub fn lease_safety_processes(
    library: &Path,
    id: &str,
    config: serde_json::Value,
    plan: &ProcessPlan,
    mut restart: impl FnMut(),
) -> ProcessSafety {
    let started = Instant::now();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("mcpg-lease-safety-{nanos}"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("holdings.jsonl");
    let stop = dir.join("stop");
    let mut children: Vec<Child> = (0..plan.processes)
        .map(|i| {
            let child = ChildPlan {
                library: library.display().to_string(),
                id: id.to_owned(),
                config: config.clone(),
                node: format!("lsp-{nanos}-{i}"),
                name: format!("lease-safety-processes-{nanos}"),
                ttl_ms: plan.ttl.as_millis() as u64,
                contenders: plan.contenders,
                log: log.display().to_string(),
                stop: stop.display().to_string(),
            };
            Command::new(contender_bin())
                .env("MCPG_LEASE_CHILD", serde_json::to_string(&child).unwrap())
                .stdout(Stdio::null())
                .spawn()
                .expect("start a contender process")
        })
        .collect();
    let count = || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut out = ProcessSafety::default();
    let mut next_pause = Instant::now() + plan.pause_every;
    let mut next_restart = plan.restart_every.map(|e| Instant::now() + e);
    while count() < plan.acquisitions || started.elapsed() < plan.min_duration {
        if started.elapsed() > plan.limit {
            out.partial = true;
            break;
        }
        if Instant::now() >= next_pause {
            // The process that logged the latest holding: likely holding or about to again.
            let latest = std::fs::read_to_string(&log)
                .ok()
                .and_then(|t| t.lines().last().map(str::to_owned))
                .and_then(|l| serde_json::from_str::<Holding>(&l).ok())
                .and_then(|h| {
                    let node = h.holder.split('/').next()?.to_owned();
                    node.rsplit('-').next()?.parse::<usize>().ok()
                });
            let victim = &children[latest.unwrap_or(out.pauses) % children.len()];
            signal(victim.id(), "STOP");
            std::thread::sleep(plan.ttl * 2);
            signal(victim.id(), "CONT");
            out.pauses += 1;
            next_pause = Instant::now() + plan.pause_every;
        }
        if let (Some(at), Some(every)) = (next_restart, plan.restart_every)
            && Instant::now() >= at
        {
            restart();
            out.restarts += 1;
            next_restart = Some(Instant::now() + every);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&stop, b"").unwrap();
    for c in &mut children {
        let until = Instant::now() + Duration::from_secs(30);
        while c.try_wait().ok().flatten().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let holdings: Vec<Holding> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    judge(&holdings, plan.ttl, &mut out);
    if out.overlaps.is_empty() && out.token_regressions.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the holdings are kept in {}", log.display());
    }
    out.seconds = started.elapsed().as_secs_f64();
    out
}

/// The checks over the logged holdings (see the module docs).
pub fn judge(holdings: &[Holding], ttl: Duration, out: &mut ProcessSafety) {
    out.acquisitions = holdings.len();
    let mut hs: Vec<(f64, f64, &Holding)> = holdings
        .iter()
        .map(|h| {
            let valid_until = h.end.min(h.sent + ttl.as_secs_f64());
            (h.start, valid_until, h)
        })
        .collect();
    out.expired_on_arrival = hs.iter().filter(|(s, e, _)| e <= s).count();
    hs.retain(|(s, e, _)| e > s);
    out.outlived_ttl = holdings
        .iter()
        .filter(|h| h.end > h.sent + ttl.as_secs_f64())
        .count();
    hs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut latest: Option<(f64, &Holding)> = None;
    for w in hs.windows(2) {
        let (_, _, h0) = w[0];
        let (_, _, h1) = w[1];
        if h1.token <= h0.token {
            out.token_regressions.push(format!(
                "token {} ({}) acquired after token {} ({})",
                h1.token, h1.holder, h0.token, h0.holder
            ));
        }
    }
    for &(s, e, h) in &hs {
        if let Some((le, lh)) = latest
            && s < le
        {
            out.overlaps.push(format!(
                "{} (token {}) held from {s:.3} while {} (token {}) held until {le:.3}",
                h.holder, h.token, lh.holder, lh.token
            ));
        }
        if latest.is_none_or(|(le, _)| e > le) {
            latest = Some((e, h));
        }
    }
    // The register: writes in time order, a lower token than the highest written is refused.
    let mut writes: Vec<(f64, u64)> = holdings
        .iter()
        .filter_map(|h| h.write_at.map(|t| (t, h.token)))
        .collect();
    writes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut max = 0;
    for (_, token) in writes {
        if token < max {
            out.stale_writes_refused += 1;
        } else {
            max = token;
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// The plan a plugin's cross-process test runs: 3 processes × 3 contenders, a 2 s TTL, a holder
/// paused every 3 s, at least 12 s; `MCPG_LEASE_SAFETY_N` acquisitions (else `default_n`, the CI run) and a
/// backend restart every `MCPG_LEASE_SAFETY_RESTART_SEC` seconds if set (else `restart_every`),
/// within `MCPG_LEASE_SAFETY_LIMIT_SEC` (else 20 minutes).
pub fn plan_from_env(default_n: usize, restart_every: Option<Duration>) -> ProcessPlan {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    ProcessPlan {
        processes: 3,
        contenders: 3,
        acquisitions: var("MCPG_LEASE_SAFETY_N").map_or(default_n, |n| n as usize),
        ttl: Duration::from_secs(2),
        pause_every: Duration::from_secs(3),
        min_duration: Duration::from_secs(12),
        restart_every: var("MCPG_LEASE_SAFETY_RESTART_SEC")
            .map(Duration::from_secs)
            .or(restart_every),
        limit: Duration::from_secs(var("MCPG_LEASE_SAFETY_LIMIT_SEC").unwrap_or(1200)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(holder: &str, token: u64, sent: f64, end: f64) -> Holding {
        Holding {
            holder: holder.into(),
            token,
            sent,
            start: sent + 0.001,
            end,
            write_at: Some(end - 0.0005),
        }
    }

    #[test]
    fn judge_catches_overlaps_regressions_and_counts_refused_stale_writes() {
        let ttl = Duration::from_secs(1);
        let mut ok = ProcessSafety::default();
        judge(&[h("a", 1, 0.0, 0.1), h("b", 2, 0.2, 0.3)], ttl, &mut ok);
        assert!(ok.overlaps.is_empty() && ok.token_regressions.is_empty());

        // A paused holder (end long after its TTL) overlaps nobody as the backend defines it;
        // its late register write is refused.
        let mut paused = ProcessSafety::default();
        judge(
            &[h("a", 1, 0.0, 5.0), h("b", 2, 1.5, 1.6)],
            ttl,
            &mut paused,
        );
        assert!(paused.overlaps.is_empty(), "{paused:?}");
        assert_eq!((paused.outlived_ttl, paused.stale_writes_refused), (1, 1));

        // An acquire that returned after its TTL had run out (paused mid-acquire) held nothing:
        // not an overlap, not a token regression; its stale write is refused.
        let mut late = ProcessSafety::default();
        let mut arrived_late = h("a", 1, 0.0, 5.1);
        arrived_late.start = 5.0;
        judge(&[h("b", 2, 2.5, 2.6), arrived_late], ttl, &mut late);
        assert!(
            late.overlaps.is_empty() && late.token_regressions.is_empty(),
            "{late:?}"
        );
        assert_eq!((late.expired_on_arrival, late.stale_writes_refused), (1, 1));

        let mut bad = ProcessSafety::default();
        judge(&[h("a", 2, 0.0, 0.5), h("b", 1, 0.2, 0.3)], ttl, &mut bad);
        assert_eq!(
            (bad.overlaps.len(), bad.token_regressions.len()),
            (1, 1),
            "{bad:?}"
        );
    }
}
