//! The coordinator conformance suite: one call proves a coordinator's semantics.
//!
//! A backend author implements [`Harness`] (how to make another instance over the same backend,
//! and a few backend facts) and calls [`run`]. Instances stand for replicas: every
//! multi-replica check uses several of them over one shared backend. The same suite runs against
//! mcpg's in-process `single_node`, a plugin linked as an `rlib`, and a plugin `.so` by path.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn my_backend_conforms() {
//!     let harness = MyHarness::start().await;
//!     mcpg_plugin_testkit::run(&harness).await.assert_passed();
//! }
//! ```
//!
//! Loading and booting the plugin as mcpg does: [`built_library`] finds the `.so` that
//! `cargo test` builds beside the test executable (or names the command that builds it), and
//! [`boot`] boots one instance as a replica. A harness that can restart its server implements
//! [`Harness::restart_backend`]; [`state_and_leases_survive_restart`] is the extra scenario for
//! durable backends. Real servers for a harness: the `mcpg-backends` crate (`tools/backends`).
//!
//! Nothing here asserts how long an operation takes: waits have generous deadlines and only
//! their outcome is checked.

pub mod processes;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use mcpg_plugin_api::coordinator::*;

/// A plugin library built by cargo (`file_name`, e.g. `libmcpg_cluster_acme.so`), loaded and
/// checked to be plugin `id`.
///
/// A test of the plugin's own crate needs nothing more: `cargo test` (and `cargo nextest`)
/// build the crate's `cdylib` beside the test executable, in the target's `deps/` folder, every
/// time they build the test, so that copy is always current. Otherwise (a test in another
/// crate) the library is taken from the profile folder, where `cargo build -p <crate>` puts it;
/// when neither exists the panic names both paths and that command.
pub fn built_library(file_name: &str, id: &str) -> mcpg_plugin_api::remote::LoadedPlugin {
    let path = library_path(file_name);
    mcpg_plugin_api::remote::LoadedPlugin::load(&path, Some(id))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where [`built_library`] finds `file_name` (for a run that loads it in other processes).
pub fn library_path(file_name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("the test executable's folder");
    let candidates = [
        deps.join(file_name),
        deps.parent().unwrap_or(deps).join(file_name),
    ];
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        panic!(
            "{file_name} is neither at {} nor at {}: a crate's own tests get it from `cargo test -p <that crate>`; \
             for another crate's library run `cargo build -p <that crate>` first",
            candidates[0].display(),
            candidates[1].display()
        );
    };
    path.clone()
}

/// Boots a coordinator instance from `plugin` as replica `node_id`, off the async workers (boot
/// blocks until the plugin has connected).
pub async fn boot(
    plugin: &mcpg_plugin_api::remote::LoadedPlugin,
    config: serde_json::Value,
    node_id: &str,
) -> Result<Arc<dyn Coordinator>, String> {
    let plugin = plugin.clone();
    let host = mcpg_plugin_api::export::HostInfo {
        node_id: Some(node_id.to_owned()),
        host_version: "test".into(),
    };
    tokio::task::spawn_blocking(move || plugin.boot(&config, &host))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Retries `f` every 200 ms, up to 100 times, until it succeeds (a client reconnecting after
/// its server restarted).
async fn eventually_ok<T, E, Fut: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> Fut,
) -> Option<T> {
    for _ in 0..100 {
        if let Ok(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// A backend restart keeps state and leases: replica `a` writes a key and takes a lease,
/// `restart` restarts the server, then a new replica `b` sees the key at its revision and the
/// lease still held; `a`'s client recovers and releases, and `b` takes over with a larger
/// token. For backends with durable storage (NATS `storage: file`, etcd).
pub async fn state_and_leases_survive_restart(
    plugin: &mcpg_plugin_api::remote::LoadedPlugin,
    config: serde_json::Value,
    restart: impl FnOnce(),
) {
    let a = boot(plugin, config.clone(), "a").await.unwrap();
    let rev = a
        .put("cap/sessions/s1", b"state".to_vec(), None)
        .await
        .unwrap();
    let lease = a
        .acquire("leader", Some(Duration::from_secs(60)), Duration::ZERO)
        .await
        .unwrap()
        .expect("uncontended");

    restart();
    let b = eventually_ok(|| boot(plugin, config.clone(), "b"))
        .await
        .expect("could not connect after the restart");
    let e = b
        .get("cap/sessions/s1")
        .await
        .unwrap()
        .expect("state kept across the restart");
    assert_eq!((e.value.as_slice(), e.revision), (&b"state"[..], rev));
    assert!(
        b.acquire("leader", Some(Duration::from_secs(60)), Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "the lease must still be held after the restart"
    );
    // The holder's client recovers too and can release; then b takes over.
    assert!(
        eventually_ok(|| lease.release()).await.is_some(),
        "the holder could not release after the restart"
    );
    let next = b
        .acquire(
            "leader",
            Some(Duration::from_secs(60)),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .expect("handed over");
    assert!(next.token() > lease.token());
}

/// How the suite reaches a backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new coordinator instance (a replica) with node id `node_id`, over the shared backend.
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator>;

    /// Makes the backend drop lease `name` behind its holder's back, as a failure would.
    /// Returns `false` if this backend cannot; the lost-lease check is then reported as skipped.
    async fn break_lease(&self, _name: &str) -> bool {
        false
    }

    /// The shortest TTL the backend honours (Consul's sessions, for example, have 10 s).
    fn min_ttl(&self) -> Duration {
        Duration::from_millis(500)
    }

    /// How long after a node stops refreshing its presence the backend reports it gone. The
    /// harness configures the backend so that this is short.
    fn peer_expiry(&self) -> Duration;

    /// Restarts the backend server (kill, then start again on the same address), blocking until
    /// it answers again. Returns `false` if this harness cannot; the restart check is then
    /// reported as skipped.
    async fn restart_backend(&self) -> bool {
        false
    }

    /// Makes the backend forget `node_id`'s presence as it would if the node had stopped
    /// refreshing for longer than its TTL (a process paused or stalled): delete its presence
    /// key, or revoke the lease or session it hangs on. Returns `false` if this harness cannot;
    /// the re-registration check is then reported as skipped.
    async fn expire_presence(&self, _node_id: &str) -> bool {
        false
    }

    /// Stops the backend server answering while its connections stay open (`SIGSTOP`), until
    /// [`Harness::resume_backend`]. Returns `false` if this harness cannot; the health check
    /// is then reported as skipped.
    async fn pause_backend(&self) -> bool {
        false
    }

    /// Lets a server stopped by [`Harness::pause_backend`] run again (`SIGCONT`).
    async fn resume_backend(&self) {}
}

/// How long `health()` may take to answer `ok: false` while the server does not answer (the
/// contract in the `Coordinator` docs gives plugins 5 s; the rest is slack for slow machines).
pub const HEALTH_BOUND: Duration = Duration::from_secs(10);

/// How long after its presence expired a node must be listed again: twice the harness's
/// `peer_expiry()` (a refresh comes at least once per presence TTL) plus 5 s of slack.
pub fn reregister_bound(peer_expiry: Duration) -> Duration {
    peer_expiry * 2 + Duration::from_secs(5)
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<&'static str>,
    pub failed: Vec<(&'static str, String)>,
    pub skipped: Vec<(&'static str, String)>,
}

impl Report {
    /// Panics, listing every failure, unless all checks passed. Skipped checks are listed on
    /// stderr and never counted as passed.
    pub fn assert_passed(&self) {
        for (name, why) in &self.skipped {
            eprintln!("testkit: SKIPPED {name}: {why}");
        }
        for name in &self.passed {
            eprintln!("testkit: passed {name}");
        }
        assert!(
            self.failed.is_empty(),
            "{} of {} coordinator checks failed:\n{}",
            self.failed.len(),
            self.failed.len() + self.passed.len(),
            self.failed
                .iter()
                .map(|(n, m)| format!("  {n}: {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

type CheckResult = Result<(), String>;

/// Outcome of a check that may not apply to a backend.
enum Outcome {
    Pass,
    Skip(String),
}

/// Runs every check against `h`, in sequence, each in its own key namespace.
pub async fn run(h: &dyn Harness) -> Report {
    let mut report = Report::default();
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    macro_rules! check {
        ($name:literal, $f:expr) => {{
            let ns = format!("tk{run_id}/{}/", $name);
            let outcome = tokio::time::timeout(Duration::from_secs(120), $f(h, ns)).await;
            match outcome {
                Ok(Ok(Outcome::Pass)) => report.passed.push($name),
                Ok(Ok(Outcome::Skip(why))) => report.skipped.push(($name, why)),
                Ok(Err(e)) => report.failed.push(($name, e)),
                Err(_) => report
                    .failed
                    .push(($name, "did not finish within 120 s".into())),
            }
        }};
    }
    check!("kv_basics", kv_basics);
    check!("kv_prefix_listing", kv_prefix_listing);
    check!("kv_cas_is_atomic_under_concurrency", kv_cas_concurrent);
    check!("kv_ttl_expiry", kv_ttl_expiry);
    check!("pubsub_fan_out", pubsub_fan_out);
    check!("pubsub_wildcards", pubsub_wildcards);
    check!("lease_mutual_exclusion_and_fencing", lease_mutual_exclusion);
    check!("lease_renewal_outlives_ttl", lease_renewal);
    check!("lease_release_hands_over", lease_release);
    check!("lease_abandoned_expires", lease_abandoned);
    check!("lease_lost_is_reported", lease_lost);
    check!("peers_join_leave_expire", peers);
    check!("watch_prefix_sees_changes", watch_prefix);
    check!("kv_contract_corners", kv_contract_corners);
    check!("large_payloads", large_payloads);
    check!("awkward_keys_and_values", awkward_bytes);
    check!(
        "handles_outlive_their_coordinator",
        handles_outlive_coordinator
    );
    check!(
        "presence_reregisters_after_expiry",
        presence_reregisters_after_expiry
    );
    check!("health_reaches_the_server", health_reaches_the_server);
    check!("backend_restart", backend_restart);
    report
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CheckResult {
    if cond { Ok(()) } else { Err(msg()) }
}

fn e(err: CoordError) -> String {
    err.to_string()
}

async fn kv_basics(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let c = h.instance("kv-a").await;
    let k = format!("{ns}k");
    ensure(c.get(&k).await.map_err(e)?.is_none(), || {
        "fresh key should be absent".into()
    })?;
    let r1 = c.put(&k, b"one".to_vec(), None).await.map_err(e)?;
    let got = c.get(&k).await.map_err(e)?.ok_or("key missing after put")?;
    ensure(got.value == b"one" && got.revision == r1, || {
        format!("get after put: {got:?}, put revision {r1}")
    })?;
    let r2 = c.put(&k, b"two".to_vec(), None).await.map_err(e)?;
    ensure(r2 > r1, || {
        format!("revision must increase on each write: {r1} then {r2}")
    })?;
    ensure(
        c.create(&k, b"x".to_vec(), None)
            .await
            .map_err(e)?
            .is_none(),
        || "create over an existing key must fail".into(),
    )?;
    let k2 = format!("{ns}new");
    ensure(
        c.create(&k2, b"x".to_vec(), None)
            .await
            .map_err(e)?
            .is_some(),
        || "create of a new key must succeed".into(),
    )?;
    match c
        .compare_and_swap(&k, r1, b"stale".to_vec(), None)
        .await
        .map_err(e)?
    {
        CasOutcome::Mismatch(Some(cur)) if cur.revision == r2 => {}
        other => {
            return Err(format!(
                "CAS at a stale revision must fail with the current entry: {other:?}"
            ));
        }
    }
    let r3 = match c
        .compare_and_swap(&k, r2, b"three".to_vec(), None)
        .await
        .map_err(e)?
    {
        CasOutcome::Swapped(r) => r,
        other => {
            return Err(format!(
                "CAS at the current revision must succeed: {other:?}"
            ));
        }
    };
    ensure(!c.delete(&k, Some(r2)).await.map_err(e)?, || {
        "conditional delete at a stale revision must fail".into()
    })?;
    ensure(c.delete(&k, Some(r3)).await.map_err(e)?, || {
        "conditional delete at the current revision must succeed".into()
    })?;
    ensure(c.get(&k).await.map_err(e)?.is_none(), || {
        "deleted key should be absent".into()
    })?;
    ensure(!c.delete(&k, None).await.map_err(e)?, || {
        "deleting an absent key reports false".into()
    })?;
    // A second instance sees the first one's writes.
    let d = h.instance("kv-b").await;
    ensure(
        d.get(&k2)
            .await
            .map_err(e)?
            .is_some_and(|v| v.value == b"x"),
        || "another instance must see the write".into(),
    )?;
    Ok(Outcome::Pass)
}

async fn kv_prefix_listing(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let c = h.instance("list-a").await;
    for k in ["a/2", "a/1", "ab/1", "b/1", "a/3/x"] {
        c.put(&format!("{ns}{k}"), k.as_bytes().to_vec(), None)
            .await
            .map_err(e)?;
    }
    let keys: Vec<String> = c
        .list(&format!("{ns}a/"))
        .await
        .map_err(e)?
        .into_iter()
        .map(|en| en.key[ns.len()..].to_owned())
        .collect();
    ensure(keys == ["a/1", "a/2", "a/3/x"], || {
        format!("list(a/) returned {keys:?}")
    })?;
    Ok(Outcome::Pass)
}

async fn kv_cas_concurrent(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    const INSTANCES: usize = 3;
    const TASKS: usize = 4;
    const INCREMENTS: u64 = 10;
    let key = format!("{ns}counter");
    let first = h.instance("cas-0").await;
    first
        .put(&key, 0u64.to_be_bytes().to_vec(), None)
        .await
        .map_err(e)?;
    let mut handles = Vec::new();
    for i in 0..INSTANCES {
        let c = h.instance(&format!("cas-{i}")).await;
        for _ in 0..TASKS {
            let (c, key) = (c.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let cur = c.get(&key).await.map_err(e)?.ok_or("counter vanished")?;
                        let n = u64::from_be_bytes(
                            cur.value.as_slice().try_into().map_err(|_| "bad counter")?,
                        );
                        match c
                            .compare_and_swap(
                                &key,
                                cur.revision,
                                (n + 1).to_be_bytes().to_vec(),
                                None,
                            )
                            .await
                            .map_err(e)?
                        {
                            CasOutcome::Swapped(_) => break,
                            CasOutcome::Mismatch(_) => continue,
                        }
                    }
                }
                Ok::<(), String>(())
            }));
        }
    }
    for h in handles {
        h.await.map_err(|j| j.to_string())??;
    }
    let end = first
        .get(&key)
        .await
        .map_err(e)?
        .ok_or("counter vanished")?;
    let n = u64::from_be_bytes(end.value.as_slice().try_into().map_err(|_| "bad counter")?);
    let want = (INSTANCES * TASKS) as u64 * INCREMENTS;
    ensure(n == want, || {
        format!(
            "{want} CAS increments from {} writers left the counter at {n}: updates were lost",
            INSTANCES * TASKS
        )
    })?;
    Ok(Outcome::Pass)
}

async fn eventually(
    limit: Duration,
    mut f: impl AsyncFnMut() -> Result<bool, String>,
) -> Result<bool, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kv_ttl_expiry(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let c = h.instance("ttl-a").await;
    let ttl = h.min_ttl();
    let k = format!("{ns}short");
    let keep = format!("{ns}keep");
    c.put(&k, b"v".to_vec(), Some(ttl)).await.map_err(e)?;
    c.put(&keep, b"v".to_vec(), None).await.map_err(e)?;
    ensure(c.get(&k).await.map_err(e)?.is_some(), || {
        "a TTL'd key must exist right after put".into()
    })?;
    let gone = eventually(ttl * 4 + Duration::from_secs(10), async || {
        Ok(c.get(&k).await.map_err(e)?.is_none())
    })
    .await?;
    ensure(gone, || format!("key with TTL {ttl:?} never expired"))?;
    ensure(c.get(&keep).await.map_err(e)?.is_some(), || {
        "a key without TTL must not expire".into()
    })?;
    ensure(
        c.list(&ns).await.map_err(e)?.iter().all(|en| en.key != k),
        || "an expired key must not be listed".into(),
    )?;
    Ok(Outcome::Pass)
}

async fn collect<T: Send>(
    s: &mut futures::stream::BoxStream<'static, T>,
    n: usize,
    limit: Duration,
) -> Vec<T> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        while out.len() < n {
            match s.next().await {
                Some(v) => out.push(v),
                None => break,
            }
        }
    })
    .await;
    out
}

async fn pubsub_fan_out(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let subject = format!("{}.events.x", ns.replace('/', "_"));
    let pattern = format!("{}.events.*", ns.replace('/', "_"));
    let mut subs = Vec::new();
    for i in 0..3 {
        let c = h.instance(&format!("ps-{i}")).await;
        subs.push(c.subscribe(&subject).await.map_err(e)?);
        subs.push(c.subscribe(&pattern).await.map_err(e)?);
    }
    // Subscriptions can take a moment to be live on a networked bus; publishing starts after
    // every subscribe call has returned, which the contract says is enough.
    let publisher = h.instance("ps-pub").await;
    for i in 0..5u8 {
        publisher.publish(&subject, vec![i]).await.map_err(e)?;
    }
    for (i, s) in subs.iter_mut().enumerate() {
        let got = collect(s, 5, Duration::from_secs(10)).await;
        let payloads: Vec<u8> = got.iter().map(|m| m.payload[0]).collect();
        ensure(payloads == [0, 1, 2, 3, 4], || {
            format!("subscriber {i} received {payloads:?}, want [0, 1, 2, 3, 4] in order")
        })?;
        ensure(got.iter().all(|m| m.subject == subject), || {
            format!("subscriber {i} saw a wrong subject")
        })?;
    }
    Ok(Outcome::Pass)
}

async fn pubsub_wildcards(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let root = ns.replace('/', "_");
    let c = h.instance("wc-a").await;
    let mut deep = c.subscribe(&format!("{root}.a.>")).await.map_err(e)?;
    let mut one = c.subscribe(&format!("{root}.a.*")).await.map_err(e)?;
    for s in ["a.b", "a.b.c", "x.b", "a"] {
        c.publish(&format!("{root}.{s}"), s.as_bytes().to_vec())
            .await
            .map_err(e)?;
    }
    c.publish(&format!("{root}.a.end"), b"end".to_vec())
        .await
        .map_err(e)?;
    let deep_got: Vec<String> = collect(&mut deep, 3, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let one_got: Vec<String> = collect(&mut one, 2, Duration::from_secs(10))
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    ensure(deep_got == ["a.b", "a.b.c", "end"], || {
        format!("`a.>` received {deep_got:?}")
    })?;
    ensure(one_got == ["a.b", "end"], || {
        format!("`a.*` received {one_got:?}")
    })?;
    Ok(Outcome::Pass)
}

async fn lease_mutual_exclusion(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let name = format!("{ns}mutex");
    let inside = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ttl = h.min_ttl().max(Duration::from_secs(2));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let c = h.instance(&format!("mx-{i}")).await;
        for _ in 0..2 {
            let (c, name, inside, violations, tokens) = (
                c.clone(),
                name.clone(),
                inside.clone(),
                violations.clone(),
                tokens.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    let lease = c
                        .acquire(&name, Some(ttl), Duration::from_secs(60))
                        .await
                        .map_err(e)?
                        .ok_or("acquire with a 60 s wait gave up")?;
                    if inside.swap(true, Ordering::SeqCst) {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    tokens.lock().unwrap().push(lease.token());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    inside.store(false, Ordering::SeqCst);
                    lease.release().await.map_err(e)?;
                }
                Ok::<(), String>(())
            }));
        }
    }
    for t in tasks {
        t.await.map_err(|j| j.to_string())??;
    }
    ensure(violations.load(Ordering::SeqCst) == 0, || {
        "two holders were inside the lease at once".into()
    })?;
    let tokens = tokens.lock().unwrap().clone();
    let strictly_increasing = tokens.windows(2).all(|w| w[1] > w[0]);
    ensure(strictly_increasing, || {
        format!("fencing tokens in acquisition order must strictly increase: {tokens:?}")
    })?;
    ensure(tokens.len() == 18, || {
        format!("expected 18 acquisitions, saw {}", tokens.len())
    })?;
    Ok(Outcome::Pass)
}

async fn lease_renewal(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let name = format!("{ns}renew");
    let ttl = h.min_ttl().max(Duration::from_secs(1));
    let a = h.instance("rn-a").await;
    let b = h.instance("rn-b").await;
    let lease = hold(&a, &name, ttl).await?;
    tokio::time::sleep(ttl * 3).await;
    ensure(!lease.is_lost(), || {
        "a renewed lease was reported lost".into()
    })?;
    let other = b
        .acquire(&name, Some(ttl), Duration::ZERO)
        .await
        .map_err(e)?;
    ensure(other.is_none(), || {
        format!("another instance acquired a lease that is being renewed, after 3 TTLs of {ttl:?}")
    })?;
    lease.release().await.map_err(e)?;
    Ok(Outcome::Pass)
}

async fn lease_release(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let name = format!("{ns}handover");
    let ttl = Duration::from_secs(60).max(h.min_ttl());
    let a = h.instance("ho-a").await;
    let b = h.instance("ho-b").await;
    let first = hold(&a, &name, ttl).await?;
    ensure(
        b.acquire(&name, Some(ttl), Duration::ZERO)
            .await
            .map_err(e)?
            .is_none(),
        || "a held lease was acquired by another".into(),
    )?;
    // The waiter could only get the lease by release: its TTL is a minute and the wait is 30 s.
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.acquire(&name, Some(ttl), Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.release().await.map_err(e)?;
    let second = waiter
        .await
        .map_err(|j| j.to_string())?
        .map_err(e)?
        .ok_or("the waiting contender did not get the released lease")?;
    ensure(second.token() > first.token(), || {
        format!("token {} after {}", second.token(), first.token())
    })?;
    second.release().await.map_err(e)?;
    Ok(Outcome::Pass)
}

/// Acquires a lease nobody else holds.
async fn hold(
    c: &Arc<dyn Coordinator>,
    name: &str,
    ttl: Duration,
) -> Result<Box<dyn Lease>, String> {
    c.acquire(name, Some(ttl), Duration::ZERO)
        .await
        .map_err(e)?
        .ok_or_else(|| "uncontended acquire failed".into())
}

async fn lease_abandoned(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let name = format!("{ns}abandoned");
    let ttl = h.min_ttl().max(Duration::from_secs(1));
    let a = h.instance("ab-a").await;
    let b = h.instance("ab-b").await;
    let lease = hold(&a, &name, ttl).await?;
    let token = lease.token();
    // Dropping the handle stops renewal without releasing, as a crashed holder would.
    drop(lease);
    let next = b
        .acquire(&name, Some(ttl), ttl * 4 + Duration::from_secs(10))
        .await
        .map_err(e)?
        .ok_or("an abandoned lease never expired")?;
    ensure(next.token() > token, || {
        "token must increase after expiry".into()
    })?;
    next.release().await.map_err(e)?;
    Ok(Outcome::Pass)
}

async fn lease_lost(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let name = format!("{ns}lost");
    let ttl = h.min_ttl().max(Duration::from_secs(1));
    let a = h.instance("ls-a").await;
    let lease = hold(&a, &name, ttl).await?;
    if !h.break_lease(&name).await {
        let _ = lease.release().await;
        return Ok(Outcome::Skip(
            "the harness cannot break a lease on this backend".into(),
        ));
    }
    let told = tokio::time::timeout(ttl * 4 + Duration::from_secs(10), lease.lost())
        .await
        .is_ok();
    ensure(told, || "the holder was not told its lease was lost".into())?;
    ensure(lease.is_lost(), || {
        "is_lost() must be true after lost() resolved".into()
    })?;
    Ok(Outcome::Pass)
}

async fn peers(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let tag = ns.replace('/', "-");
    let (ida, idb, idc) = (format!("{tag}a"), format!("{tag}b"), format!("{tag}c"));
    let a = h.instance(&ida).await;
    let mut events = a.watch_peers().await.map_err(e)?;
    let pa = a.register("{\"role\":\"a\"}".into()).await.map_err(e)?;
    let b = h.instance(&idb).await;
    let pb = b.register("{}".into()).await.map_err(e)?;
    let c = h.instance(&idc).await;
    let pc = c.register("{}".into()).await.map_err(e)?;
    let live: BTreeSet<String> = b
        .peers()
        .await
        .map_err(e)?
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    for id in [&ida, &idb, &idc] {
        ensure(live.contains(id), || {
            format!("peers() from another instance lacks {id}: {live:?}")
        })?;
    }
    ensure(
        b.peers()
            .await
            .map_err(e)?
            .iter()
            .any(|p| p.node_id == ida && p.meta == "{\"role\":\"a\"}"),
        || "peer metadata must round-trip".into(),
    )?;
    // b leaves gracefully; c stops refreshing (dropped) and must expire.
    pb.deregister().await.map_err(e)?;
    drop(pc);
    let limit = h.peer_expiry() * 3 + Duration::from_secs(15);
    let mut seen_up = BTreeSet::new();
    let mut seen_down = BTreeSet::new();
    let _ = tokio::time::timeout(limit, async {
        while !(seen_down.contains(&idb) && seen_down.contains(&idc)) {
            match events.next().await {
                Some(PeerEvent::Up(p)) => {
                    seen_up.insert(p.node_id);
                }
                Some(PeerEvent::Down { node_id }) => {
                    seen_down.insert(node_id);
                }
                None => break,
            }
        }
    })
    .await;
    ensure(seen_up.contains(&idb) && seen_up.contains(&idc), || {
        format!("watch saw joins {seen_up:?}, want {idb} and {idc}")
    })?;
    ensure(seen_down.contains(&idb), || {
        format!("watch did not see {idb} deregister (saw leaves {seen_down:?})")
    })?;
    ensure(seen_down.contains(&idc), || {
        format!("watch did not see {idc} expire within {limit:?}")
    })?;
    let live: BTreeSet<String> = a
        .peers()
        .await
        .map_err(e)?
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    ensure(
        live.contains(&ida) && !live.contains(&idb) && !live.contains(&idc),
        || format!("peers after leaves: {live:?}"),
    )?;
    pa.deregister().await.map_err(e)?;
    Ok(Outcome::Pass)
}

async fn watch_prefix(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let a = h.instance("wp-a").await;
    let b = h.instance("wp-b").await;
    let mut w = a.watch_prefix(&format!("{ns}w/")).await.map_err(e)?;
    let k = format!("{ns}w/x");
    b.put(&format!("{ns}other"), b"no".to_vec(), None)
        .await
        .map_err(e)?;
    let r1 = b.put(&k, b"1".to_vec(), None).await.map_err(e)?;
    b.delete(&k, None).await.map_err(e)?;
    b.put(&format!("{ns}w/y"), b"2".to_vec(), None)
        .await
        .map_err(e)?;
    let got = collect(&mut w, 3, Duration::from_secs(10)).await;
    let summary: Vec<String> = got
        .iter()
        .map(|ev| match ev {
            KvEvent::Put(en) => format!("put {}", &en.key[ns.len()..]),
            KvEvent::Delete { key, .. } => format!("delete {}", &key[ns.len()..]),
        })
        .collect();
    ensure(summary == ["put w/x", "delete w/x", "put w/y"], || {
        format!("watch saw {summary:?}")
    })?;
    if let KvEvent::Put(en) = &got[0] {
        ensure(en.revision == r1 && en.value == b"1", || {
            format!("put event {en:?} does not match the write (revision {r1})")
        })?;
    }
    Ok(Outcome::Pass)
}

/// The corners the `Coordinator` docs decide: compare-and-swap on an absent key fails with no
/// entry; a delete event's revision is greater than the key's last write.
async fn kv_contract_corners(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let c = h.instance("corner-a").await;
    let k = format!("{ns}absent");
    match c
        .compare_and_swap(&k, 1, b"x".to_vec(), None)
        .await
        .map_err(e)?
    {
        CasOutcome::Mismatch(None) => {}
        other => {
            return Err(format!(
                "CAS on an absent key must be Mismatch(None): {other:?}"
            ));
        }
    }
    ensure(c.get(&k).await.map_err(e)?.is_none(), || {
        "a failed CAS on an absent key created it".into()
    })?;
    let mut w = c.watch_prefix(&format!("{ns}w/")).await.map_err(e)?;
    let key = format!("{ns}w/k");
    let rev = c.put(&key, b"v".to_vec(), None).await.map_err(e)?;
    c.delete(&key, None).await.map_err(e)?;
    let got = collect(&mut w, 2, Duration::from_secs(10)).await;
    match got.as_slice() {
        [KvEvent::Put(_), KvEvent::Delete { revision, .. }] => ensure(*revision > rev, || {
            format!("the delete event's revision {revision} is not after the put's {rev}")
        })?,
        other => return Err(format!("watch saw {other:?}, want a put then a delete")),
    }
    Ok(Outcome::Pass)
}

/// Values and messages of 64 and 256 KiB (PostgreSQL's NOTIFY, for one, takes under 8000
/// bytes), through get, list, watch and pub/sub.
async fn large_payloads(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let a = h.instance("big-a").await;
    let b = h.instance("big-b").await;
    let big: Vec<u8> = (0..64 * 1024 + 7).map(|i| (i * 7 % 251) as u8).collect();
    let huge: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8).collect();
    let subject = format!("{}.big", ns.replace('/', "_"));
    let mut sub = b.subscribe(&subject).await.map_err(e)?;
    let mut w = b.watch_prefix(&format!("{ns}big/")).await.map_err(e)?;
    let k = format!("{ns}big/v");
    let rev = a.put(&k, big.clone(), None).await.map_err(e)?;
    let got = b
        .get(&k)
        .await
        .map_err(e)?
        .ok_or("a 64 KiB value vanished")?;
    ensure(got.value == big && got.revision == rev, || {
        format!("a 64 KiB value came back as {} bytes", got.value.len())
    })?;
    let listed = b.list(&format!("{ns}big/")).await.map_err(e)?;
    ensure(listed.len() == 1 && listed[0].value == big, || {
        "list lost or cut a 64 KiB value".into()
    })?;
    match collect(&mut w, 1, Duration::from_secs(10)).await.pop() {
        Some(KvEvent::Put(en)) if en.value == big => {}
        other => {
            let len = other.map(|ev| format!("{:?}", std::mem::discriminant(&ev)));
            return Err(format!(
                "the watch did not carry the 64 KiB put intact ({len:?})"
            ));
        }
    }
    let k = format!("{ns}big/huge");
    a.put(&k, huge.clone(), None).await.map_err(e)?;
    let got = b.get(&k).await.map_err(e)?.map(|en| en.value.len());
    ensure(got == Some(huge.len()), || {
        format!("a 256 KiB value came back as {got:?} bytes")
    })?;
    ensure(
        b.get(&k)
            .await
            .map_err(e)?
            .is_some_and(|en| en.value == huge),
        || "a 256 KiB value came back altered".into(),
    )?;
    for payload in [big, huge] {
        a.publish(&subject, payload.clone()).await.map_err(e)?;
        let got = collect(&mut sub, 1, Duration::from_secs(10)).await;
        ensure(got.len() == 1 && got[0].payload == payload, || {
            format!(
                "a {} byte message arrived as {:?}",
                payload.len(),
                got.iter().map(|m| m.payload.len()).collect::<Vec<_>>()
            )
        })?;
    }
    Ok(Outcome::Pass)
}

/// Keys with spaces, quotes, glob and LIKE characters, backslashes, newlines and non-ASCII;
/// values with every byte, invalid UTF-8 and nothing at all. A prefix with `%` or `*` matches
/// only itself.
async fn awkward_bytes(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let c = h.instance("odd-a").await;
    let every: Vec<u8> = (0..=255).collect();
    let cases: [(&str, &[u8]); 6] = [
        ("sp ace/'quote\"", &every),
        ("glob*?[x]/%_like", b"\xff\xfe not utf-8 \x00"),
        ("back\\slash\nnew\tline", b""),
        ("ünï/çødé/\u{1F600}", "värde".as_bytes()),
        ("dot.s:colon;semi,comma=eq", b"\x00"),
        ("%", b"percent"),
    ];
    for (key, value) in cases {
        let k = format!("{ns}{key}");
        let rev = c.put(&k, value.to_vec(), None).await.map_err(e)?;
        let got = c
            .get(&k)
            .await
            .map_err(e)?
            .ok_or_else(|| format!("{key:?} vanished"))?;
        ensure(got.value == value && got.revision == rev, || {
            format!("{key:?} came back as {:?}", got.value)
        })?;
    }
    let mut keys: Vec<String> = c
        .list(&ns)
        .await
        .map_err(e)?
        .into_iter()
        .map(|en| en.key[ns.len()..].to_owned())
        .collect();
    let mut want: Vec<String> = cases.iter().map(|(k, _)| k.to_string()).collect();
    want.sort();
    keys.sort();
    ensure(keys == want, || {
        format!("list returned {keys:?}, want {want:?}")
    })?;
    for (prefix, only) in [("%", "%"), ("glob*", "glob*?[x]/%_like")] {
        let got: Vec<String> = c
            .list(&format!("{ns}{prefix}"))
            .await
            .map_err(e)?
            .into_iter()
            .map(|en| en.key[ns.len()..].to_owned())
            .collect();
        ensure(got == [only], || {
            format!("list({prefix:?}) is a literal prefix; it returned {got:?}")
        })?;
    }
    Ok(Outcome::Pass)
}

/// The rule: streams, lease handles and presence handles keep working after the `Coordinator`
/// that made them is dropped.
async fn handles_outlive_coordinator(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let rule = "streams, leases and presence must keep working after the Coordinator that made \
                them is dropped (the Coordinator docs' handle-lifetime rule)";
    let tag = ns.replace('/', "-");
    let id = format!("{tag}gone");
    let subject = format!("{}.after", ns.replace('/', "_"));
    let name = format!("{ns}lease");
    let ttl = h.min_ttl().max(Duration::from_secs(1));
    let gone = h.instance(&id).await;
    let mut sub = gone.subscribe(&subject).await.map_err(e)?;
    let mut w = gone.watch_prefix(&format!("{ns}w/")).await.map_err(e)?;
    let lease = hold(&gone, &name, ttl).await?;
    let presence = gone.register("{}".into()).await.map_err(e)?;
    drop(gone);
    let other = h.instance("survivor").await;
    other.publish(&subject, b"m".to_vec()).await.map_err(e)?;
    other
        .put(&format!("{ns}w/k"), b"v".to_vec(), None)
        .await
        .map_err(e)?;
    let msgs = collect(&mut sub, 1, Duration::from_secs(10)).await;
    ensure(msgs.len() == 1, || {
        format!("a subscription received nothing once its coordinator was dropped: {rule}")
    })?;
    let evs = collect(&mut w, 1, Duration::from_secs(10)).await;
    ensure(evs.len() == 1, || {
        format!("a prefix watch received nothing once its coordinator was dropped: {rule}")
    })?;
    tokio::time::sleep(ttl * 3).await;
    ensure(!lease.is_lost(), || {
        format!("a lease was lost (not renewed) once its coordinator was dropped: {rule}")
    })?;
    ensure(
        other
            .acquire(&name, Some(ttl), Duration::ZERO)
            .await
            .map_err(e)?
            .is_none(),
        || format!("another replica took a lease whose coordinator was dropped: {rule}"),
    )?;
    let peers = other.peers().await.map_err(e)?;
    ensure(peers.iter().any(|p| p.node_id == id), || {
        format!("a presence expired once its coordinator was dropped: {rule}")
    })?;
    lease
        .release()
        .await
        .map_err(|err| format!("{err}: {rule}"))?;
    presence
        .deregister()
        .await
        .map_err(|err| format!("{err}: {rule}"))?;
    Ok(Outcome::Pass)
}

/// A backend restart: calls fail cleanly while it is down, and afterwards the same
/// coordinator works again and a subscription made before the restart receives messages.
async fn backend_restart(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let a = h.instance("rs-a").await;
    let b = h.instance("rs-b").await;
    let subject = format!("{}.restart", ns.replace('/', "_"));
    let mut sub = b.subscribe(&subject).await.map_err(e)?;
    a.put(&format!("{ns}k"), b"before".to_vec(), None)
        .await
        .map_err(e)?;
    if !h.restart_backend().await {
        return Ok(Outcome::Skip(
            "the harness cannot restart this backend".into(),
        ));
    }
    let k = format!("{ns}k");
    let written = eventually(Duration::from_secs(30), async || {
        Ok(a.put(&k, b"after".to_vec(), None).await.is_ok())
    })
    .await?;
    ensure(written, || {
        "writes never recovered after the restart".into()
    })?;
    let got = b.get(&k).await.map_err(e)?.map(|en| en.value);
    ensure(got.as_deref() == Some(&b"after"[..]), || {
        format!("after the restart another replica read {got:?}")
    })?;
    // Messages published while the subscription reconnects may be lost: publish until one
    // arrives.
    let mut received = false;
    for i in 0..100u8 {
        a.publish(&subject, vec![i]).await.map_err(e)?;
        if !collect(&mut sub, 1, Duration::from_millis(200))
            .await
            .is_empty()
        {
            received = true;
            break;
        }
    }
    ensure(received, || {
        "a subscription made before the restart never received again".into()
    })?;
    Ok(Outcome::Pass)
}

/// A presence whose entry the backend dropped (the node was paused past its TTL) registers
/// itself again: the node is listed again within [`reregister_bound`], with its metadata.
async fn presence_reregisters_after_expiry(h: &dyn Harness, ns: String) -> Result<Outcome, String> {
    let id = format!("{}a", ns.replace('/', "-"));
    let a = h.instance(&id).await;
    let b = h.instance("px-observer").await;
    let presence = a.register("{\"px\":1}".into()).await.map_err(e)?;
    let bound = reregister_bound(h.peer_expiry());
    let listed = async || -> Result<bool, String> {
        let peers = b.peers().await.map_err(e)?;
        Ok(peers
            .iter()
            .any(|p| p.node_id == id && p.meta == "{\"px\":1}"))
    };
    ensure(eventually(bound, async || listed().await).await?, || {
        "a registered node was never listed by another replica".into()
    })?;
    if !h.expire_presence(&id).await {
        return Ok(Outcome::Skip("the harness cannot expire a presence".into()));
    }
    // Whether the gap is observed depends on when the next refresh comes; not checked.
    let gap_seen = !listed().await?;
    let back = eventually(bound, async || listed().await).await?;
    drop(a);
    ensure(back, || {
        format!(
            "after its presence expired (gap observed: {gap_seen}), the node was not listed \
             again within {bound:?}: a presence must register itself again once the backend \
             has dropped it (after a pause or stall longer than its TTL)"
        )
    })?;
    presence
        .deregister()
        .await
        .map_err(|err| format!("deregistering the re-registered presence: {err}"))?;
    Ok(Outcome::Pass)
}

/// `health()` reaches the server: with the server stopped (`SIGSTOP`, connections open) it
/// answers `ok: false` within [`HEALTH_BOUND`]; once the server runs again it is ok again.
async fn health_reaches_the_server(h: &dyn Harness, _ns: String) -> Result<Outcome, String> {
    let c = h.instance("hc-a").await;
    let before = c.health().await;
    ensure(before.ok, || {
        format!("health not ok before the pause: {}", before.detail)
    })?;
    if !h.pause_backend().await {
        return Ok(Outcome::Skip("the harness cannot pause the backend".into()));
    }
    let during = tokio::time::timeout(HEALTH_BOUND, c.health()).await;
    h.resume_backend().await;
    match during {
        Err(_) => Err(format!(
            "health did not answer within {HEALTH_BOUND:?} while the server was stopped: it \
             must give up (ok: false) rather than hang"
        )),
        Ok(during) if during.ok => Err(format!(
            "health said ok while the server was stopped (SIGSTOP): it must make a round trip \
             to the server, not only flush a local buffer; detail: {}",
            during.detail
        )),
        Ok(_) => {
            let healthy = async || Ok(c.health().await.ok);
            ensure(eventually(Duration::from_secs(30), healthy).await?, || {
                "health never became ok again after the server resumed".into()
            })?;
            Ok(Outcome::Pass)
        }
    }
}

/// What [`lease_safety`] found.
#[derive(Debug, Default)]
pub struct LeaseSafety {
    /// Holder intervals recorded (acquire returned … release sent).
    pub acquisitions: usize,
    /// Holders whose lease reported itself lost while held (their interval is not counted).
    pub lost: usize,
    /// Pairs of holder intervals that overlapped, described.
    pub overlaps: Vec<String>,
    /// Successive holders whose fencing token did not increase, described.
    pub token_regressions: Vec<String>,
}

impl LeaseSafety {
    /// Panics, listing the violations, unless there were none (and anything was acquired).
    pub fn assert_safe(&self) {
        assert!(self.acquisitions > 0, "no lease was ever acquired");
        assert!(
            self.overlaps.is_empty() && self.token_regressions.is_empty(),
            "{} acquisitions: {} overlapping holders, {} token regressions:\n{}\n{}",
            self.acquisitions,
            self.overlaps.len(),
            self.token_regressions.len(),
            self.overlaps.join("\n"),
            self.token_regressions.join("\n")
        );
    }
}

/// Lease safety under contention: `instances` replicas with `contenders` tasks each compete for
/// one lease until `acquisitions` holds happened. Each holder's interval is logged on the
/// monotonic clock from when `acquire` returned to just before `release` is sent, so the
/// logged intervals lie inside the real holding times. Checked: no two intervals overlap, and
/// fencing tokens strictly increase in interval order. Instances are in-process replicas, each
/// with its own client; a run across OS processes with holders paused past their TTL is not
/// part of this function.
pub async fn lease_safety(
    h: &dyn Harness,
    instances: usize,
    contenders: usize,
    acquisitions: usize,
) -> LeaseSafety {
    use tokio::time::Instant;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("lease-safety-{run}");
    let ttl = h.min_ttl().max(Duration::from_secs(2));
    let done = Arc::new(AtomicU64::new(0));
    let log = Arc::new(std::sync::Mutex::new(Vec::<(Instant, Instant, u64)>::new()));
    let lost = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..instances {
        let c = h.instance(&format!("ls-{run}-{i}")).await;
        for _ in 0..contenders {
            let (c, name, done, log, lost) = (
                c.clone(),
                name.clone(),
                done.clone(),
                log.clone(),
                lost.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < acquisitions as u64 {
                    let Ok(Some(lease)) = c.acquire(&name, Some(ttl), Duration::from_secs(5)).await
                    else {
                        continue;
                    };
                    let start = Instant::now();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let end = Instant::now();
                    if lease.is_lost() {
                        lost.fetch_add(1, Ordering::SeqCst);
                    } else {
                        log.lock().unwrap().push((start, end, lease.token()));
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = lease.release().await;
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut intervals = log.lock().unwrap().clone();
    intervals.sort_by_key(|(start, _, _)| *start);
    let mut out = LeaseSafety {
        acquisitions: intervals.len(),
        lost: lost.load(Ordering::SeqCst) as usize,
        ..Default::default()
    };
    for w in intervals.windows(2) {
        let ((s0, e0, t0), (s1, _, t1)) = (w[0], w[1]);
        if s1 < e0 {
            out.overlaps.push(format!(
                "token {t1} started {:?} before token {t0}'s holder released",
                e0 - s1
            ));
        }
        if t1 <= t0 {
            out.token_regressions.push(format!(
                "token {t1} held after token {t0} (started {:?} later)",
                s1 - s0
            ));
        }
    }
    out
}

/// How many acquisitions a lease-safety test makes: `MCPG_LEASE_SAFETY_N` if set (the long run
/// in docs/reliability.md sets 10000), else `default` (the short CI run).
pub fn lease_safety_runs(default: usize) -> usize {
    std::env::var("MCPG_LEASE_SAFETY_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Release racing renewal: `leases` leases, each held on one of two instances and released at a
/// different offset (spread over two renewal intervals of `ttl`, stepped by 1 ms), so some
/// releases are sent while that lease's renewal is in flight. Every release must succeed
/// whatever the renewal did, and the lease must be free right after it. Run it with the
/// backend's tightest renewal interval (the harness's configuration) to make the race likely.
/// Returns the failures, one line each; empty when all releases were correct.
pub async fn release_races_renewal(
    h: &dyn Harness,
    ttl: Duration,
    renew_every: Duration,
    leases: usize,
) -> Vec<String> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let a = h.instance(&format!("rr-{run}-a")).await;
    let b = h.instance(&format!("rr-{run}-b")).await;
    let span = (renew_every * 2).as_millis().max(1) as u64;
    let mut tasks = Vec::new();
    for i in 0..leases {
        let (c, other) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        let name = format!("rr-{run}-{i}");
        let delay = renew_every + Duration::from_millis(i as u64 % span);
        tasks.push(tokio::spawn(async move {
            let lease = match c.acquire(&name, Some(ttl), Duration::from_secs(5)).await {
                Ok(Some(l)) => l,
                Ok(None) => return Err(format!("{name}: not acquired")),
                Err(err) => return Err(format!("{name}: acquire: {err}")),
            };
            tokio::time::sleep(delay).await;
            lease
                .release()
                .await
                .map_err(|err| format!("{name}: release after {delay:?}: {err}"))?;
            match other.acquire(&name, Some(ttl), Duration::ZERO).await {
                Ok(Some(l)) => {
                    let _ = l.release().await;
                    Ok(())
                }
                Ok(None) => Err(format!(
                    "{name}: still held right after its release (released after {delay:?})"
                )),
                Err(err) => Err(format!("{name}: acquire after release: {err}")),
            }
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(f)) => failures.push(f),
            Err(j) => failures.push(j.to_string()),
        }
    }
    failures
}
