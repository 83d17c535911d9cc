//! Upstream pools under a cluster (issue 22's proof): two `mcpg` replicas on one real Redis
//! behind nginx round-robin; three bindings on the same kind of pool — three fixture HTTP
//! endpoints balanced `round_robin` (`/rr`) and `least_requests` (`/lr`), and two stdio
//! children (`/st`) — each with a real Python `mcp` client of each era calling continuously.
//! One HTTP endpoint and one stdio endpoint (those the legacy sessions of `/rr` and `/st` are
//! pinned to) are killed mid-run and brought back. Asserted: no stateless call fails apart
//! from those in flight on a killed endpoint (counted separately), both replicas take the
//! endpoints out and back in, legacy sessions carry on, and a legacy session stays on its
//! endpoint when the replica owning it is killed and the other takes it over (its pin read
//! through `GET /api/cluster/sessions/{id}`). Printed (never asserted): what the pinned
//! legacy sessions saw, the time to ejection and to readmission on each replica, and how the
//! requests spread over the endpoints under each policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::cluster_sessions::{LongClient, Nginx, now_s};
use crate::harness::{
    Proc, TempDir, bin, cdylib, free_port, get_json, http_get, start_replicas, wait_until,
};
use crate::observability::{promtool_check, samples};
use crate::peers::{peers_script, python};
use crate::upstream_pools::fixture;

/// How each pool is watched and ejected: short periods, so that the run stays near a minute.
const HEALTH: &str = "health: {interval_ms: 500, timeout_ms: 2000, healthy_threshold: 2, unhealthy_threshold: 2, outlier: {consecutive_failures: 3, base_ejection_ms: 2000}}";

/// The stdio endpoints: `DIR/fx-NAME` (a link to the fixture, so its processes are told
/// apart by their command line) run by `DIR/ep-NAME.sh`, which fails at once while
/// `DIR/down-NAME` exists (the endpoint is "dead": it cannot be started again).
fn stdio_endpoint(dir: &TempDir, name: &str) -> PathBuf {
    let link = dir.0.join(format!("fx-{name}"));
    std::os::unix::fs::symlink(bin("mcpg-fixture-upstream"), &link).unwrap();
    let script = dir.write(
        &format!("ep-{name}.sh"),
        &format!(
            "#!/bin/sh\n[ -e '{0}/down-{name}' ] && {{ echo 'endpoint {name} is down' >&2; exit 1; }}\nexec '{1}' --stdio\n",
            dir.0.display(),
            link.display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The processes whose command line starts with `exe` (the stdio endpoint's children, on
/// every replica).
fn processes_of(exe: &Path) -> Vec<u32> {
    let want = exe.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(want))
        })
        .collect()
}

struct Cluster {
    replicas: Vec<(String, Option<Proc>, SocketAddr, SocketAddr)>,
    nginx: Nginx,
    http_ports: [u16; 3],
    fixtures: Vec<Option<Proc>>,
    dir: TempDir,
    _redis: RedisServer,
}

impl Cluster {
    fn start() -> Self {
        let redis = RedisServer::start();
        let dir = TempDir::new("pools-cluster");
        let http_ports = [free_port(), free_port(), free_port()];
        let fixtures = http_ports.iter().map(|&p| Some(fixture(p))).collect();
        let http_pool = |policy: &str| {
            let eps: Vec<String> = ["a", "b", "c"]
                .iter()
                .zip(http_ports)
                .map(|(n, p)| format!("{{name: {n}, http: {{url: \"http://127.0.0.1:{p}/mcp\"}}}}"))
                .collect();
            format!(
                "[{{name: fx, balance: {policy}, {HEALTH}, endpoints: [{}]}}]",
                eps.join(", ")
            )
        };
        let stdio: Vec<String> = ["a", "b"]
            .iter()
            .map(|n| {
                format!(
                    "{{name: {n}, stdio: {{command: \"{}\"}}}}",
                    stdio_endpoint(&dir, n).display()
                )
            })
            .collect();
        let f = dir.write(
            "mcpg.yaml",
            &format!(
                "server:\n  drain_timeout_ms: 5000\n\
                 cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"pools:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
                 plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
                 mcp:\n  sessions: {{owner_ttl_ms: 3000}}\n\
                 audit:\n  enabled: true\n  file: {{path: \"${{env.AUDIT_FILE}}\"}}\n\
                 bindings:\n\
                 \x20 - {{name: rr, path: /rr, upstreams: {}}}\n\
                 \x20 - {{name: lr, path: /lr, upstreams: {}}}\n\
                 \x20 - {{name: st, path: /st, upstreams: [{{name: fs, {HEALTH}, endpoints: [{}]}}]}}\n\
                 \x20 - {{name: mix, path: /mix, upstreams: [{{name: mx, health: {{interval_ms: 0}}, endpoints: [{{name: fx, stdio: {{command: \"{}\", args: [--stdio]}}}}, {{name: py, stdio: {{command: \"{}\", args: [\"{}\"]}}}}]}}]}}\n",
                redis.url(),
                cdylib("mcpg_cluster_redis").display(),
                http_pool("round_robin"),
                http_pool("least_requests"),
                stdio.join(", "),
                bin("mcpg-fixture-upstream").display(),
                python().display(),
                peers_script("echo_upstream.py").display(),
            ),
        );
        let audit_dir = dir.0.clone();
        let mut replicas: Vec<_> = start_replicas(&f, "pool", 2, |id, cmd| {
            cmd.env("AUDIT_FILE", audit_dir.join(format!("audit-{id}.jsonl")));
        })
        .into_iter()
        .map(|r| (r.id, Some(r.proc), r.main, r.admin))
        .collect();
        for (id, proc, main, admin) in &mut replicas {
            let up = wait_until(Duration::from_secs(60), || {
                matches!(http_get(*main, "/readyz"), Ok((200, _)))
                    && get_json(*admin, "/api/cluster/peers")
                        .and_then(|v| v["peers"].as_array().map(Vec::len))
                        == Some(2)
            });
            if !up {
                let p = proc.take().unwrap();
                p.signal("KILL");
                let (status, stderr) = p.wait(Duration::from_secs(10));
                panic!("{id} never became ready with both nodes ({status}):\n{stderr}");
            }
        }
        let nginx = Nginx::start(&replicas.iter().map(|r| r.2).collect::<Vec<_>>());
        Self {
            replicas,
            nginx,
            http_ports,
            fixtures,
            dir,
            _redis: redis,
        }
    }

    fn admins(&self) -> Vec<(String, SocketAddr)> {
        self.replicas
            .iter()
            .filter(|r| r.1.is_some())
            .map(|r| (r.0.clone(), r.3))
            .collect()
    }

    /// A legacy session's record as a live replica reports it.
    fn session(&self, sid: &str) -> Value {
        self.admins()
            .iter()
            .find_map(|(_, a)| get_json(*a, &format!("/api/cluster/sessions/{sid}")))
            .unwrap_or_else(|| panic!("no replica knows session {sid}"))
    }

    fn client(&self, path: &str, mode: &'static str) -> LongClient {
        let stop = self
            .dir
            .0
            .join(format!("stop{}-{mode}", path.replace('/', "-")));
        LongClient::with_plan(
            &format!("http://{}{path}", self.nginx.addr),
            mode,
            &stop,
            json!({"call": {"name": "echo", "arguments": {"text": "pooled"}}, "pause_ms": 20}),
        )
    }

    /// Kills an HTTP endpoint (`a`, `b` or `c`).
    fn kill_http(&mut self, name: &str) {
        let i = (name.as_bytes()[0] - b'a') as usize;
        let p = self.fixtures[i].take().expect("the endpoint is running");
        p.signal("KILL");
        drop(p);
    }

    fn revive_http(&mut self, name: &str) {
        let i = (name.as_bytes()[0] - b'a') as usize;
        self.fixtures[i] = Some(fixture(self.http_ports[i]));
    }

    /// Kills a stdio endpoint: it cannot start again, and its running children die.
    fn kill_stdio(&self, name: &str) -> usize {
        self.dir.write(&format!("down-{name}"), "");
        let pids = processes_of(&self.dir.0.join(format!("fx-{name}")));
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        pids.len()
    }

    fn revive_stdio(&self, name: &str) {
        std::fs::remove_file(self.dir.0.join(format!("down-{name}"))).unwrap();
    }
}

/// The pool of `binding` as one replica's admin API shows it.
fn pool_view(admin: SocketAddr, binding: &str) -> Option<Value> {
    get_json(admin, "/api/cluster/servers")?["servers"]
        .as_array()?
        .iter()
        .find(|s| s["binding"] == binding)
        .cloned()
}

fn endpoint_state(admin: SocketAddr, binding: &str, endpoint: &str) -> Option<String> {
    pool_view(admin, binding)?["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == endpoint)
        .and_then(|r| r["state"].as_str().map(str::to_owned))
}

/// When each (replica, binding) first saw the killed endpoint out of rotation after the
/// kill, and back in after its return; polled every 50 ms.
#[derive(Default, Debug)]
struct Timeline {
    out: BTreeMap<(String, String), f64>,
    back: BTreeMap<(String, String), f64>,
}

fn watch(
    admins: Vec<(String, SocketAddr)>,
    killed: Vec<(&'static str, String)>,
    revived: Arc<Mutex<Option<f64>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Timeline> {
    std::thread::spawn(move || {
        let mut t = Timeline::default();
        while !stop.load(Ordering::Relaxed) {
            let back_at = *revived.lock().unwrap();
            for (id, admin) in &admins {
                for (binding, ep) in &killed {
                    let key = (id.clone(), binding.to_string());
                    let Some(state) = endpoint_state(*admin, binding, ep) else {
                        continue;
                    };
                    if state != "healthy" && !t.out.contains_key(&key) {
                        t.out.insert(key.clone(), now_s());
                    }
                    if state == "healthy"
                        && t.out.contains_key(&key)
                        && back_at.is_some()
                        && !t.back.contains_key(&key)
                    {
                        t.back.insert(key, now_s());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    })
}

/// Requests per endpoint of `binding`, summed over the replicas.
fn distribution(admins: &[(String, SocketAddr)], binding: &str) -> BTreeMap<String, u64> {
    let mut d = BTreeMap::new();
    for (_, a) in admins {
        for r in pool_view(*a, binding)
            .and_then(|v| v["replicas"].as_array().cloned())
            .unwrap_or_default()
        {
            *d.entry(r["name"].as_str().unwrap().to_owned()).or_default() +=
                r["requests"].as_u64().unwrap();
        }
    }
    d
}

/// A client's failures split into those in flight at the kill (started before `until` and
/// ended after `from`) and the others.
fn split_failures(report: &Value, from: f64, until: f64) -> (Vec<Value>, Vec<Value>) {
    report["failures"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .cloned()
        .partition(|f| {
            let t = f["t"].as_f64().unwrap();
            t <= until && t + f["took"].as_f64().unwrap_or(0.0) >= from
        })
}

/// Each replica's `/metrics` passes `promtool`; the endpoint families count what happened:
/// requests that did not reach the killed endpoints, retries, and every endpoint healthy
/// again at the end.
fn check_metrics(c: &Cluster, killed: &[(&str, &String)]) {
    let mut not_reached = 0.0;
    let mut retried = 0.0;
    for (id, admin) in c.admins() {
        let (status, body) = http_get(admin, "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        let (ok, said) = promtool_check(&body);
        assert!(ok && said.trim().is_empty(), "promtool on {id}: {said}");
        for (b, e) in killed {
            let labels = [
                ("binding", *b),
                ("endpoint", e.as_str()),
                ("outcome", "not_reached"),
            ];
            not_reached += samples(&body, "mcpg_endpoint_requests_total", &labels)
                .iter()
                .sum::<f64>();
        }
        retried += samples(
            &body,
            "mcpg_upstream_retries_total",
            &[("outcome", "retried")],
        )
        .iter()
        .sum::<f64>();
        let healthy = samples(&body, "mcpg_endpoint_state", &[("state", "healthy")]);
        assert_eq!(
            healthy.len(),
            10,
            "{id}: an endpoint_state series per endpoint: {body}"
        );
        assert!(
            healthy.iter().all(|v| *v == 1.0),
            "{id}: not all healthy again: {healthy:?}"
        );
        let sent = samples(
            &body,
            "mcpg_endpoint_requests_total",
            &[("outcome", "sent")],
        );
        eprintln!(
            "[pools] {id}: {} requests sent to endpoints, ejections {:?}",
            sent.iter().sum::<f64>(),
            samples(&body, "mcpg_endpoint_ejections_total", &[])
        );
    }
    eprintln!(
        "[pools] requests that did not reach a killed endpoint: {not_reached}; retried elsewhere: {retried}"
    );
    assert!(not_reached >= 1.0, "no request found a killed endpoint");
    assert!(retried >= 1.0, "no request was retried");
}

/// The management API before the kill: `/api/cluster/nodes` (both replicas with their
/// role, health, open sessions, version), every replica's view of every endpoint, the tool
/// lists compared, and a drain sent to one replica applied by the other.
fn check_management_api(c: &Cluster) {
    let admins = c.admins();
    let (_, a0) = &admins[0];
    let (id1, a1) = &admins[1];
    let nodes = get_json(*a0, "/api/cluster/nodes?active=true").expect("the nodes");
    eprintln!("[pools] /api/cluster/nodes: {}", nodes["nodes"]);
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{nodes}");
    assert_eq!(
        list.iter().filter(|n| n["role"] == "leader").count(),
        1,
        "{nodes}"
    );
    for n in list {
        assert_eq!(n["health"], "ready", "{n}");
        assert!(n["open_sessions"].is_u64(), "{n}");
        assert!(
            n["version"].is_string() && n["advertise_url"].is_string(),
            "{n}"
        );
    }
    // Each replica publishes its count every two seconds.
    let open = || -> u64 {
        get_json(*a0, "/api/cluster/nodes").map_or(0, |v| {
            v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n["open_sessions"].as_u64())
                .sum()
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || open() == 3),
        "three legacy sessions are open: {}",
        open()
    );
    // Both replicas' views, on either replica; the tool lists agree.
    assert!(
        wait_until(Duration::from_secs(15), || pool_view(*a0, "st")
            .is_some_and(|v| {
                v["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["cluster"].as_array().map(Vec::len) == Some(2))
                    && v["tool_lists"]["consistent"] == true
            })),
        "{:?}",
        pool_view(*a0, "st")
    );
    // A pool whose endpoints run different servers: reported, not merged.
    assert!(
        wait_until(Duration::from_secs(30), || pool_view(*a0, "mix")
            .is_some_and(|v| v["tool_lists"]["consistent"] == false)),
        "{:?}",
        pool_view(*a0, "mix")
    );
    let mix = pool_view(*a0, "mix").unwrap();
    eprintln!(
        "[pools] tool lists of the mixed pool: {}",
        mix["tool_lists"]
    );
    assert_eq!(
        mix["tool_lists"]["only_on"]["echo2"],
        json!(["py"]),
        "{mix}"
    );
    assert_eq!(
        mix["tool_lists"]["only_on"]["payload"],
        json!(["fx"]),
        "{mix}"
    );
    // Drain rr/c on replica 0: replica 1 applies it; enable it again the same way.
    let post = |admin: SocketAddr, action: &str| {
        let (status, _, body) = crate::harness::http(
            admin,
            "POST",
            &format!("/api/cluster/servers/fx/replicas/c/{action}"),
            &[],
            b"",
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let answer = post(*a0, "drain");
    assert_eq!(answer["scope"], "cluster", "{answer}");
    assert_eq!(
        answer["changed"].as_array().unwrap().len(),
        2,
        "rr and lr: {answer}"
    );
    let admin_on = |a: SocketAddr, b: &str| {
        pool_view(a, b).and_then(|v| {
            v["replicas"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "c")
                .map(|r| r["admin"].clone())
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || admin_on(*a1, "rr")
            == Some(json!("draining"))
            && admin_on(*a1, "lr") == Some(json!("draining"))),
        "{id1} never applied the drain: {:?}",
        pool_view(*a1, "rr")
    );
    post(*a1, "enable");
    assert!(
        wait_until(Duration::from_secs(15), || admin_on(*a0, "rr")
            == Some(json!("enabled"))),
        "the enable did not reach replica 0"
    );
}

/// How many lines each replica's audit file has now.
fn audit_marks(dir: &Path) -> BTreeMap<String, usize> {
    audit_files(dir)
        .into_iter()
        .map(|(name, text)| (name, text.lines().count()))
        .collect()
}

fn audit_files(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|f| (f.file_name().to_string_lossy().into_owned(), f.path()))
        .filter(|(n, _)| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .map(|(n, p)| (n, std::fs::read_to_string(p).unwrap()))
        .collect()
}

/// `tools/call` audit records per (binding, era, endpoint), from every replica's audit file,
/// between two marks (from the start, to the end when `None`).
fn audited(
    dir: &Path,
    from: Option<&BTreeMap<String, usize>>,
    to: Option<&BTreeMap<String, usize>>,
) -> BTreeMap<(String, String, String), usize> {
    let mut n = BTreeMap::new();
    for (name, text) in audit_files(dir) {
        let skip = from.and_then(|m| m.get(&name).copied()).unwrap_or(0);
        let take = to.and_then(|m| m.get(&name).copied()).unwrap_or(usize::MAX);
        for line in text.lines().take(take).skip(skip) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let r = if v.get("record").is_some() {
                &v["record"]
            } else {
                &v
            };
            if r["method"] != "tools/call" {
                continue;
            }
            let key = (
                r["binding"].as_str().unwrap_or("?").to_owned(),
                r["era"].as_str().unwrap_or("?").to_owned(),
                r["endpoint"].as_str().unwrap_or("-").to_owned(),
            );
            *n.entry(key).or_default() += 1;
        }
    }
    n
}

#[test]
fn pools_behind_two_replicas_lose_no_stateless_call_when_an_endpoint_dies_and_returns() {
    let mut c = Cluster::start();
    let bindings = ["/rr", "/lr", "/st"];
    let mut modern = Vec::new();
    let mut legacy = Vec::new();
    for b in bindings {
        modern.push(c.client(b, "2026-07-28"));
        legacy.push(c.client(b, "legacy"));
    }
    for m in &modern {
        m.ready();
    }
    let sids: Vec<String> = legacy
        .iter()
        .map(|l| l.ready().expect("a legacy session id"))
        .collect();
    let pin = |c: &Cluster, sid: &str, upstream: &str| -> String {
        c.session(sid)["upstream_endpoints"][upstream]
            .as_str()
            .unwrap_or_else(|| panic!("session {sid} has no pin for {upstream}"))
            .to_owned()
    };
    let pins_before: Vec<String> = sids
        .iter()
        .zip(["fx", "fx", "fs"])
        .map(|(s, u)| pin(&c, s, u))
        .collect();
    check_management_api(&c);
    // A steady phase with every endpoint in rotation, for the policies' distribution.
    let steady_from = audit_marks(&c.dir.0);
    std::thread::sleep(Duration::from_secs(3));
    let steady_to = audit_marks(&c.dir.0);

    // Kill the endpoints the legacy sessions of /rr and /st are pinned to.
    let (http_victim, stdio_victim) = (pins_before[0].clone(), pins_before[2].clone());
    let stop = Arc::new(AtomicBool::new(false));
    let revived = Arc::new(Mutex::new(None));
    let watcher = watch(
        c.admins(),
        vec![
            ("rr", http_victim.clone()),
            ("lr", http_victim.clone()),
            ("st", stdio_victim.clone()),
        ],
        revived.clone(),
        stop.clone(),
    );
    let before_kill: Vec<(&str, BTreeMap<String, u64>)> = ["rr", "lr", "st"]
        .iter()
        .map(|b| (*b, distribution(&c.admins(), b)))
        .collect();
    let kill_started = now_s();
    c.kill_http(&http_victim);
    let children_killed = c.kill_stdio(&stdio_victim);
    // Requests that started before both endpoints were dead (and a moment for their sockets
    // to close) and ended after the kill began were in flight on them.
    let killed_at = now_s() + 0.2;
    let all_out = || {
        c.admins().iter().all(|(_, a)| {
            [
                ("rr", &http_victim),
                ("lr", &http_victim),
                ("st", &stdio_victim),
            ]
            .iter()
            .all(|(b, e)| endpoint_state(*a, b, e).is_some_and(|s| s != "healthy"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), all_out),
        "not every replica took the killed endpoints out: {:?}",
        c.admins()
            .iter()
            .map(|(_, a)| get_json(*a, "/api/cluster/servers"))
            .collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_secs(3));
    // Every replica's published view shows the dead endpoints out, on both replicas.
    let (_, a0) = &c.admins()[0];
    assert!(
        wait_until(Duration::from_secs(15), || {
            let Some(v) = pool_view(*a0, "rr") else {
                return false;
            };
            let ep = v["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == *http_victim)
                .cloned();
            ep.is_some_and(|e| {
                let seen = e["cluster"].as_array().cloned().unwrap_or_default();
                seen.len() == 2 && seen.iter().all(|s| s["state"] != "healthy")
            })
        }),
        "the cluster's view of rr/{http_victim}: {:?}",
        pool_view(*a0, "rr")
    );
    // The legacy sessions pinned to the dead endpoints moved, and their records say where
    // (a takeover now would resume them there).
    for (i, (sid, upstream, victim)) in [
        (&sids[0], "fx", &http_victim),
        (&sids[2], "fs", &stdio_victim),
    ]
    .into_iter()
    .enumerate()
    {
        let moved = pin(&c, sid, upstream);
        eprintln!(
            "[pools] legacy session {i} pinned to {upstream}/{victim} before the kill, to {upstream}/{moved} after"
        );
        assert_ne!(
            &moved, victim,
            "the record still pins {sid} to the dead endpoint"
        );
    }

    // Bring them back: both replicas readmit them.
    *revived.lock().unwrap() = Some(now_s());
    let revived_at = now_s();
    c.revive_http(&http_victim);
    c.revive_stdio(&stdio_victim);
    let all_back = || {
        c.admins().iter().all(|(_, a)| {
            [
                ("rr", &http_victim),
                ("lr", &http_victim),
                ("st", &stdio_victim),
            ]
            .iter()
            .all(|(b, e)| endpoint_state(*a, b, e).is_some_and(|s| s == "healthy"))
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), all_back),
        "not every replica took the endpoints back"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let timeline = watcher.join().unwrap();

    // The stateless clients are done: every call but those in flight at the kill succeeded.
    let admins = c.admins();
    let dist: Vec<(&str, BTreeMap<String, u64>)> = ["rr", "lr", "st"]
        .iter()
        .map(|b| (*b, distribution(&admins, b)))
        .collect();
    for (b, m) in bindings.iter().zip(modern) {
        let r = m.finish();
        let (in_flight, other) = split_failures(&r, kill_started, killed_at);
        eprintln!(
            "[pools] stateless client on {b}: {} calls, {} ok, {} failed in flight at the kill {:?}, {} failed otherwise",
            r["calls"],
            r["ok"],
            in_flight.len(),
            in_flight,
            other.len()
        );
        assert!(other.is_empty(), "stateless calls failed on {b}: {other:?}");
        assert!(r["ok"].as_u64().unwrap() > 50, "{r}");
    }

    let killed = [
        ("rr", &http_victim),
        ("lr", &http_victim),
        ("st", &stdio_victim),
    ];
    check_metrics(&c, &killed);

    // The takeover: kill the replica owning the /rr legacy session; its pin stays.
    let sid = &sids[0];
    let pin_now = pin(&c, sid, "fx");
    let owner = c.session(sid)["owner"].as_str().unwrap().to_owned();
    let taken_at = now_s();
    let i = c.replicas.iter().position(|r| r.0 == owner).unwrap();
    let p = c.replicas[i].1.take().unwrap();
    p.signal("KILL");
    let (_, log) = p.wait(Duration::from_secs(10));
    assert!(
        log.contains("the endpoints of this pool list different tools"),
        "no warning about the mixed pool in {owner}'s log"
    );
    assert!(
        wait_until(Duration::from_secs(30), || c.session(sid)["owner"]
            .as_str()
            .is_some_and(|o| o != owner)),
        "nobody took {sid} over from {owner}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let after = c.session(sid);
    eprintln!(
        "[pools] takeover: {owner} (owner of {sid}, pinned to fx/{pin_now}) killed; now {} owns it, pinned to {}",
        after["owner"], after["upstream_endpoints"]
    );
    assert_eq!(
        after["upstream_endpoints"]["fx"],
        json!(pin_now),
        "the session moved off its endpoint on takeover: {after}"
    );

    // What the legacy sessions saw.
    for ((b, l), (sid, before)) in bindings
        .iter()
        .zip(legacy)
        .zip(sids.iter().zip(&pins_before))
    {
        let r = l.finish();
        let was_pinned_to_victim =
            (*b == "/st" && *before == stdio_victim) || (*b != "/st" && *before == http_victim);
        eprintln!(
            "[pools] legacy session on {b} (pinned to {before}{}): {} calls, {} ok, failures {:?}",
            if was_pinned_to_victim {
                ", the killed endpoint"
            } else {
                ""
            },
            r["calls"],
            r["ok"],
            r["failures"]
        );
        assert_eq!(r["session"], json!(sid), "the same session throughout");
        // A request its endpoint refused never left mcpg: it went to the session's next
        // endpoint rather than failing.
        assert!(
            !r["failures"].to_string().contains("request not sent"),
            "a legacy request that never left mcpg failed: {r}"
        );
        assert!(r["ok"].as_u64().unwrap() > 50, "{r}");
        assert_eq!(r["last_text"], json!(["pooled"]), "{r}");
        // At most a call in flight on the killed endpoint and one on the killed replica
        // (nginx does not retry a POST a dead replica's connection took).
        assert!(
            r["failures"].as_array().unwrap().len() <= 2,
            "legacy session on {b} (endpoint killed at {killed_at:.3}, replica at {taken_at:.3}): {r}"
        );
    }

    // Figures.
    for ((id, binding), t) in &timeline.out {
        let back = timeline.back.get(&(id.clone(), binding.clone()));
        eprintln!(
            "[pools] {id} {binding}: out of rotation {:.2} s after the kill, back {} after the return",
            t - kill_started,
            back.map(|b| format!("{:.2} s", b - revived_at))
                .unwrap_or_else(|| "never seen".into())
        );
    }
    eprintln!(
        "[pools] killed fx/{http_victim} and fs/{stdio_victim} ({children_killed} stdio children) at {kill_started:.3}, back at {revived_at:.3}"
    );
    for ((b, d), (_, before)) in dist.iter().zip(&before_kill) {
        eprintln!(
            "[pools] requests per endpoint on {b} (both replicas, legacy included): {before:?} before the kill, {d:?} in all"
        );
    }
    assert_eq!(timeline.out.len(), 6, "{timeline:?}");
    let steady = audited(&c.dir.0, Some(&steady_from), Some(&steady_to));
    eprintln!(
        "[pools] steady phase (3 s, every endpoint in rotation): tools/call per (binding, era, endpoint) over both replicas: {steady:?}"
    );
    let audit = audited(&c.dir.0, None, None);
    eprintln!("[pools] tools/call audit records per (binding, endpoint): {audit:?}");
    assert!(
        audit.keys().all(|(_, _, e)| e != "-"),
        "a tools/call audit record without its endpoint: {audit:?}"
    );
    assert!(
        audit.contains_key(&("rr".to_owned(), "modern".to_owned(), http_victim.clone())),
        "{audit:?}"
    );
}
