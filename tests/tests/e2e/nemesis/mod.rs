//! The nemesis suite (issue 19): three real `mcpg` replicas on a real backend (Redis, NATS,
//! etcd) behind nginx round-robin, instrumented upstreams over stdio and HTTP that log which
//! replica executed each call and refuse requests carrying a stale fencing token (both
//! bindings pass it: `meta` to stdio, `header` to HTTP) (`tests/peers/nemesis_upstream.py`),
//! clients that record a
//! history on the monotonic clock, a poller that records the ownership timeline, and faults
//! injected meanwhile; [`checker`] judges the result.
//!
//! CI runs the fixed reduced matrix below (`ci_*`, nextest group `timing`). The full matrix is
//! `tools/nemesis` (docs/reliability.md); it prints one table per backend and fails on
//! nothing, so scenarios that still violate are reported, not hidden.

pub mod checker;
pub mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpg_backends::{EtcdServer, NatsServer, RedisOptions, RedisServer};
use serde_json::{Value, json};

use self::checker::{Exec, Op, Outcome, Owned, Refusal, Report, T};
use self::netns::Netns;
use crate::cluster_sessions::Nginx;
use crate::harness::{Proc, TempDir, bin, cdylib, free_port, http_get, wait_until};
use crate::peers::{peers_script, python};

/// Seconds on `CLOCK_MONOTONIC`, the clock the upstreams' `time.monotonic()` reads.
pub fn now() -> T {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Redis,
    Nats,
    Etcd,
}

/// A running backend the faults can reach.
enum Server {
    Redis(RedisServer),
    Nats(NatsServer),
    Etcd(EtcdServer),
}

impl Server {
    /// Starts `b` bound to `host`; Redis with `appendonly yes` + `appendfsync always` when
    /// `persistent` (NATS and etcd always keep their data across a restart here).
    fn start(b: Backend, host: &str, persistent: bool) -> Self {
        match b {
            Backend::Redis => Self::Redis(RedisServer::start_with(RedisOptions {
                host: host.to_owned(),
                persistent,
            })),
            Backend::Nats => Self::Nats(NatsServer::start_on(host, &[])),
            Backend::Etcd => Self::Etcd(EtcdServer::start_on(host)),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Self::Redis(s) => s.port,
            Self::Nats(s) => s.port,
            Self::Etcd(s) => s.port,
        }
    }

    fn yaml(&self) -> String {
        match self {
            Self::Redis(r) => format!(
                "cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"nem:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
                 plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n",
                r.url(),
                cdylib("mcpg_cluster_redis").display()
            ),
            Self::Nats(n) => format!(
                "cluster:\n  kind: nats\n  servers: [\"{}\"]\n  node: {{id: from-config, heartbeat_interval_sec: 1, peer_expiry_sec: 3}}\n\
                 \x20 lease: {{default_ttl_sec: 3}}\n\
                 plugins:\n  - id: dev.mcpg.cluster.nats\n    source: {{path: \"{}\"}}\n",
                n.url(),
                cdylib("mcpg_cluster_nats").display()
            ),
            Self::Etcd(e) => format!(
                "cluster:\n  kind: etcd\n  endpoints: [\"{}\"]\n  key_prefix: \"/mcpg/nem/\"\n\
                 plugins:\n  - id: dev.mcpg.cluster.etcd\n    source: {{path: \"{}\"}}\n",
                e.url(),
                cdylib("mcpg_cluster_etcd").display()
            ),
        }
    }

    fn pause(&self) {
        match self {
            Self::Redis(s) => s.pause(),
            Self::Nats(s) => s.pause(),
            Self::Etcd(s) => s.pause(),
        }
    }

    fn resume(&self) {
        match self {
            Self::Redis(s) => s.resume(),
            Self::Nats(s) => s.resume(),
            Self::Etcd(s) => s.resume(),
        }
    }

    fn kill(&mut self) {
        match self {
            Self::Redis(s) => s.kill(),
            Self::Nats(s) => s.kill(),
            Self::Etcd(s) => s.kill(),
        }
    }

    fn restart(&mut self) {
        match self {
            Self::Redis(s) => s.restart(),
            Self::Nats(s) => s.restart(),
            Self::Etcd(s) => s.restart(),
        }
    }
}

/// A fault, injected once the clients are running.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Nothing: the baseline.
    None,
    /// SIGKILL of replica 0 (it stays dead).
    KillReplica,
    /// SIGSTOP of replica 0 for twice the owner TTL, then SIGCONT.
    PauseReplica,
    /// SIGSTOP of replica 0 for 10 s: it accepts (the kernel does) and never answers.
    HungReplica,
    /// SIGSTOP of the backend for 2 s (less than the TTL), then SIGCONT.
    PauseBackendShort,
    /// SIGSTOP of the backend for 5 s (more than the TTL), then SIGCONT.
    PauseBackendLong,
    /// SIGKILL of the backend, restarted after 1 s (Redis: without persistence).
    RestartBackend,
    /// As `RestartBackend`, with Redis running `appendonly yes` + `appendfsync always` (NATS
    /// and etcd keep their data in `RestartBackend` already: the full matrix runs this on
    /// Redis only).
    RestartBackendPersisted,
    /// Replica 0, in its own network namespace, cut off from the backend (packets to the
    /// backend's port dropped inside the namespace) for twice the owner TTL, then healed; the
    /// clients and the other replicas still reach it.
    PartitionBackend,
    /// Replica 0, in its own network namespace, cut off from the other replicas (its forwards
    /// to them and theirs to it dropped) for twice the owner TTL, then healed; it still reaches
    /// the backend and nginx still reaches it.
    PartitionPeers,
}

impl Fault {
    /// Whether replica 0 runs in its own network namespace.
    fn partitions(self) -> bool {
        matches!(self, Self::PartitionBackend | Self::PartitionPeers)
    }
}

/// The admin API's bearer token: a namespaced replica's admin API is on a non-loopback address,
/// which mcpg serves only with a token.
const ADMIN_TOKEN: &str = "nemesis-admin-token-0123456789abcdef0123";

/// The owner TTL every scenario runs with.
const TTL: Duration = Duration::from_secs(3);

struct Replica {
    id: String,
    proc: Option<Proc>,
    main: SocketAddr,
    admin: SocketAddr,
}

/// One scenario's cluster: backend, upstream, replicas, nginx.
struct Cluster {
    server: Server,
    replicas: Vec<Replica>,
    nginx: Nginx,
    _http_upstream: Proc,
    log: std::path::PathBuf,
    _dir: TempDir,
    /// Replica 0's network namespace (partition faults). Declared last: dropped after the
    /// processes in it are gone.
    netns: Option<Netns>,
}

impl Cluster {
    fn start(backend: Backend, fault: Fault) -> Self {
        let netns = fault.partitions().then(Netns::create);
        // Everything in the root namespace listens where the namespace reaches it.
        let host = netns
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |n| n.host.to_string());
        let dir = TempDir::new("nemesis");
        let log = dir.0.join("executions.jsonl");
        std::fs::write(&log, "").unwrap();
        let up_port = free_port();
        let http_upstream = Proc::spawn(
            Command::new(python())
                .arg(peers_script("nemesis_upstream.py"))
                .args(["http", &up_port.to_string()])
                .arg(&log)
                .arg(&host),
        );
        let up: SocketAddr = format!("{host}:{up_port}").parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect(up).is_ok()),
            "the HTTP upstream never listened"
        );
        let server = Server::start(
            backend,
            &host,
            matches!(fault, Fault::RestartBackendPersisted),
        );
        let f = dir.write(
            "mcpg.yaml",
            &format!(
                "server:\n  drain_timeout_ms: 5000\n  admin_token: \"{ADMIN_TOKEN}\"\n{}mcp:\n  sessions: {{owner_ttl_ms: {}}}\n\
                 bindings:\n  - name: st\n    path: /st\n    upstreams: [{{name: st, fencing_token: meta, stdio: {{command: {:?}, args: [{:?}, stdio], inherit_env: true}}}}]\n  \
                 - name: ht\n    path: /ht\n    upstreams: [{{name: ht, fencing_token: header, http: {{url: \"http://{up}/mcp\", headers: {{X-Nemesis-Replica: \"${{env.NEMESIS_REPLICA}}\"}}}}}}]\n",
                server.yaml(),
                TTL.as_millis(),
                python().display().to_string(),
                peers_script("nemesis_upstream.py").display().to_string(),
            ),
        );
        let mut replicas = Vec::new();
        for i in 0..3 {
            let (listen, admin) = (free_port(), free_port());
            let id = format!("replica-{i}");
            // Replica 0 runs in the namespace when there is one, on its inside address.
            let (mut cmd, addr) = match (&netns, i) {
                (Some(n), 0) => (n.command(&bin("mcpg")), n.inside.to_string()),
                _ => (Command::new(bin("mcpg")), host.clone()),
            };
            let proc = Proc::spawn(
                cmd.arg("--config")
                    .arg(&f)
                    .args(["--node-id", &id])
                    .args(["--listen", &format!("{addr}:{listen}")])
                    .args(["--admin-listen", &format!("{addr}:{admin}")])
                    .env("NEMESIS_REPLICA", &id)
                    .env("NEMESIS_LOG", &log)
                    .env("MCPG_LOG", "warn"),
            );
            replicas.push(Replica {
                id,
                proc: Some(proc),
                main: format!("{addr}:{listen}").parse().unwrap(),
                admin: format!("{addr}:{admin}").parse().unwrap(),
            });
        }
        for r in &mut replicas {
            let ready = wait_until(Duration::from_secs(60), || {
                matches!(http_get(r.main, "/readyz"), Ok((200, _)))
                    && admin_get(r.admin, "/api/cluster/peers", Duration::from_secs(5))
                        .and_then(|v| v["peers"].as_array().map(Vec::len))
                        == Some(3)
            });
            if !ready {
                let proc = r.proc.take().unwrap();
                proc.signal("KILL");
                let (status, stderr) = proc.wait(Duration::from_secs(10));
                panic!(
                    "{} never became ready with 3 peers ({status}):\n{stderr}",
                    r.id
                );
            }
        }
        let nginx = Nginx::start_bound(
            &replicas.iter().map(|r| r.main).collect::<Vec<_>>(),
            netns.as_ref().map(|n| n.nginx.into()),
        );
        Self {
            server,
            replicas,
            nginx,
            _http_upstream: http_upstream,
            log,
            _dir: dir,
            netns,
        }
    }

    /// The `iptables` rules (inside replica 0's namespace) that make `fault`'s partition: to the
    /// backend's port; or to the other replicas' listeners and from them to replica 0's (nginx
    /// connects from its own address, the admin API stays reachable for the poller).
    fn partition_rules(&self, fault: Fault) -> Vec<Vec<String>> {
        let n = self
            .netns
            .as_ref()
            .expect("a partition fault has a namespace");
        let host = n.host.to_string();
        let drop_to = |port: u16| {
            [
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &host,
                "--dport",
                &port.to_string(),
                "-j",
                "DROP",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        match fault {
            Fault::PartitionBackend => vec![drop_to(self.server.port())],
            Fault::PartitionPeers => {
                let mut rules: Vec<Vec<String>> = self.replicas[1..]
                    .iter()
                    .map(|r| drop_to(r.main.port()))
                    .collect();
                rules.push(
                    [
                        "INPUT",
                        "-p",
                        "tcp",
                        "-s",
                        &host,
                        "--dport",
                        &self.replicas[0].main.port().to_string(),
                        "-j",
                        "DROP",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                );
                rules
            }
            _ => Vec::new(),
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(p) = &self.replicas[i].proc {
            p.signal(sig);
        }
    }

    /// Applies `fault`; returns when it has been healed (or, for a kill, done).
    fn inject(&mut self, fault: Fault) {
        let ttl = TTL;
        match fault {
            Fault::None => {}
            Fault::KillReplica => {
                self.signal(0, "KILL");
                if let Some(p) = self.replicas[0].proc.take() {
                    let _ = p.wait(Duration::from_secs(10));
                }
            }
            Fault::PauseReplica => {
                self.signal(0, "STOP");
                std::thread::sleep(ttl * 2);
                self.signal(0, "CONT");
            }
            Fault::HungReplica => {
                self.signal(0, "STOP");
                std::thread::sleep(Duration::from_secs(10));
                self.signal(0, "CONT");
            }
            Fault::PauseBackendShort => {
                self.server.pause();
                std::thread::sleep(Duration::from_secs(2));
                self.server.resume();
            }
            Fault::PauseBackendLong => {
                self.server.pause();
                std::thread::sleep(Duration::from_secs(5));
                self.server.resume();
            }
            Fault::RestartBackend | Fault::RestartBackendPersisted => {
                self.server.kill();
                std::thread::sleep(Duration::from_secs(1));
                self.server.restart();
            }
            Fault::PartitionBackend | Fault::PartitionPeers => {
                let rules = self.partition_rules(fault);
                let n = self.netns.as_ref().unwrap();
                for r in &rules {
                    let mut a = vec!["-A"];
                    a.extend(r.iter().map(String::as_str));
                    n.iptables(&a);
                }
                // `MCPG_NEMESIS_PARTITION_MS` lengthens the cut for a one-off run.
                let cut = std::env::var("MCPG_NEMESIS_PARTITION_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(ttl * 2, Duration::from_millis);
                std::thread::sleep(cut);
                for r in &rules {
                    let mut a = vec!["-D"];
                    a.extend(r.iter().map(String::as_str));
                    n.iptables(&a);
                }
            }
        }
    }

    fn executions(&self) -> (Vec<Exec>, Vec<Refusal>, usize) {
        executions(&self.log)
    }
}

/// The upstreams' log: the executions, the requests they refused for a stale fencing token
/// (which did not run), and how many executions carried no token.
fn executions(log: &std::path::Path) -> (Vec<Exec>, Vec<Refusal>, usize) {
    let (mut execs, mut refused, mut untokened) = (Vec::new(), Vec::new(), 0);
    let log = std::fs::read_to_string(log).unwrap();
    for v in log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let (call, replica, at) = (
            v["call"].as_str().unwrap_or("").to_owned(),
            v["replica"].as_str().unwrap_or("").to_owned(),
            v["at"].as_f64().unwrap_or(0.0),
        );
        if v["refused"] == true {
            refused.push(Refusal {
                call,
                replica,
                at,
                token: v["token"].as_u64().unwrap_or(0),
                highest: v["highest"].as_u64().unwrap_or(0),
            });
            continue;
        }
        if !v["token"].is_u64() {
            untokened += 1;
        }
        execs.push(Exec {
            call,
            replica,
            at,
            value: checker::Value {
                incarnation: v["incarnation"].as_str().unwrap_or("").to_owned(),
                n: v["n"].as_u64().unwrap_or(0),
            },
        });
    }
    (execs, refused, untokened)
}

/// One HTTP/1.1 POST over a fresh connection, never panicking: the status, headers and body,
/// or the I/O error (connect, reset, timeout).
fn post(
    addr: SocketAddr,
    path: &str,
    sid: Option<&str>,
    body: &Value,
    timeout: Duration,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.to_string();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(sid) = sid {
        req.push_str(&format!("Mcp-Session-Id: {sid}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// The JSON-RPC message in a JSON or SSE body.
fn message(body: &str) -> Option<Value> {
    serde_json::from_str(body).ok().or_else(|| {
        body.lines()
            .rev()
            .filter_map(|l| l.trim().strip_prefix("data:"))
            .find_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
    })
}

/// A legacy session on `path` through `addr`, retried for a while (the cluster may be
/// recovering).
fn open_session(addr: SocketAddr, path: &str) -> Option<String> {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"nemesis","version":"0"}}});
    for _ in 0..20 {
        if let Ok((200, head, _)) = post(addr, path, None, &init, Duration::from_secs(10)) {
            let sid = head
                .lines()
                .find_map(|l| l.strip_prefix("mcp-session-id:"))
                .map(|v| v.trim().to_owned());
            if let Some(sid) = sid {
                let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
                let _ = post(addr, path, Some(&sid), &note, Duration::from_secs(10));
                return Some(sid);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

/// One call and how the client judges its outcome: a result is `Ok`; an error the gateway
/// gave (a JSON-RPC error, with any status) is `Fail`, unless the gateway says it does not
/// know whether the call ran ("may or may not have run": a forward its owner took and never
/// answered, or an upstream that closed the connection after the request was sent); that,
/// and anything else — no answer, a reset, nginx's own 502/504 page — is `Unknown`.
fn call(addr: SocketAddr, path: &str, sid: &str, key: &str, id: &str) -> Outcome {
    let req =
        json!({"jsonrpc":"2.0","id":id,"method":"nemesis/count","params":{"key":key,"call":id}});
    match post(addr, path, Some(sid), &req, Duration::from_secs(15)) {
        Err(e) => Outcome::Unknown(e.kind().to_string()),
        Ok((status, _, body)) => match message(&body) {
            Some(m) if status == 200 && m["result"]["n"].is_u64() => Outcome::Ok(checker::Value {
                incarnation: m["result"]["incarnation"].as_str().unwrap_or("").to_owned(),
                n: m["result"]["n"].as_u64().unwrap(),
            }),
            Some(m) if m["error"].is_object() => {
                let why = format!("{status} {}", m["error"]["message"]);
                if why.contains("may or may not have run") {
                    Outcome::Unknown(why)
                } else {
                    Outcome::Fail(why)
                }
            }
            _ => Outcome::Unknown(format!(
                "{status} {}",
                body.chars().take(40).collect::<String>().replace('\n', " ")
            )),
        },
    }
}

/// What one scenario produced.
pub struct Run {
    pub fault: Fault,
    pub report: Report,
    /// The longest time any client went without a successful call, in seconds.
    pub longest_gap: f64,
    /// Executions whose request carried no fencing token (both bindings are configured to
    /// pass it: any is a wiring fault, and the upstream could not have refused it).
    pub untokened: usize,
}

/// Runs `fault` against 3 replicas on `backend` with `clients` clients (half stdio, half
/// HTTP), each calling continuously: `before` of calm, the fault, `after` of calm.
pub fn scenario(
    backend: Backend,
    fault: Fault,
    clients: usize,
    before: Duration,
    after: Duration,
) -> Run {
    let mut cluster = Cluster::start(backend, fault);
    let front = cluster.nginx.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for c in 0..clients {
        let (stop, sessions) = (stop.clone(), sessions.clone());
        let path = if c % 2 == 0 { "/st" } else { "/ht" };
        workers.push(std::thread::spawn(move || {
            let sid = open_session(front, path).expect("a session could be opened");
            sessions.lock().unwrap().push(sid.clone());
            let key = format!("client-{c}");
            let mut ops = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let id = format!("{key}-{i}");
                let invoked = now();
                let outcome = call(front, path, &sid, &key, &id);
                let failed = !matches!(outcome, Outcome::Ok(_));
                ops.push(Op {
                    session: key.clone(),
                    call: id,
                    invoked,
                    completed: now(),
                    outcome,
                });
                if failed {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            (key, sid, ops)
        }));
    }
    // The ownership timeline, from the session records as any replica that answers reports them.
    let admins: Vec<SocketAddr> = cluster.replicas.iter().map(|r| r.admin).collect();
    let poller = {
        let (stop, sessions) = (stop.clone(), sessions.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::<(String, T, String)>::new();
            while !stop.load(Ordering::SeqCst) {
                let sids = sessions.lock().unwrap().clone();
                for sid in sids {
                    for a in &admins {
                        if let Some(owner) = describe_owner(*a, &sid) {
                            seen.push((sid.clone(), now(), owner));
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };
    std::thread::sleep(before);
    eprintln!("fault {fault:?} at {:.3}", now());
    cluster.inject(fault);
    eprintln!("fault {fault:?} healed at {:.3}", now());
    std::thread::sleep(after);
    stop.store(true, Ordering::SeqCst);
    let ended = now();
    let mut clients_ops = Vec::new();
    let mut key_of_sid = std::collections::HashMap::new();
    for w in workers {
        let (key, sid, ops) = w.join().expect("client thread");
        key_of_sid.insert(sid, key);
        clients_ops.push(ops);
    }
    let owned: Vec<Owned> = poller
        .join()
        .unwrap()
        .into_iter()
        .filter_map(|(sid, at, owner)| {
            Some(Owned {
                session: key_of_sid.get(&sid)?.clone(),
                at,
                owner,
            })
        })
        .collect();
    // Let the stopped replica resume anything queued, so late executions are in the log.
    std::thread::sleep(Duration::from_millis(500));
    let (execs, refused, untokened) = cluster.executions();
    let mut report = checker::check(&clients_ops, &execs, &owned);
    checker::refusals(&mut report, &clients_ops, &execs, &refused);
    let longest_gap = clients_ops
        .iter()
        .map(|ops| {
            // From the first call, through every success, to the end of the run.
            let first = ops.first().map_or(ended, |o| o.invoked);
            let oks: Vec<T> = std::iter::once(first)
                .chain(
                    ops.iter()
                        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
                        .map(|o| o.completed),
                )
                .chain(std::iter::once(ended))
                .collect();
            oks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
        })
        .fold(0.0, f64::max);
    for r in &cluster.replicas {
        if let Some(p) = &r.proc {
            let _ = Command::new("kill")
                .args(["-CONT", &p.child.id().to_string()])
                .status();
        }
    }
    Run {
        fault,
        report,
        longest_gap,
        untokened,
    }
}

/// The session's owner as `admin` reports it (short timeout: a stopped replica must not hold
/// the poller up).
fn describe_owner(admin: SocketAddr, sid: &str) -> Option<String> {
    let v = admin_get(
        admin,
        &format!("/api/cluster/sessions/{sid}"),
        Duration::from_millis(300),
    )?;
    v["owner"].as_str().map(str::to_owned)
}

/// `GET path` on an admin API with the token, as JSON when it answers 200 within `timeout`.
fn admin_get(admin: SocketAddr, path: &str, timeout: Duration) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

fn row(r: &Run) -> String {
    let rep = &r.report;
    format!(
        "| {:?} | {} | {} | {} | {} | {} | {} | {:.1} s |",
        r.fault,
        rep.calls,
        rep.failed,
        rep.unknown,
        rep.refused_stale.len(),
        rep.violations(),
        rep.state_resets,
        r.longest_gap
    )
}

/// CI's reduced matrix: a fixed set (a retry means the same thing) of faults that end with 0
/// violations on every run today; each asserts none, and that every execution carried its
/// fencing token. `after` is the calm after the fault is healed (shorter for the replica
/// faults, whose recovery happens during the fault). Replica SIGKILL is in the full matrix
/// only (docs/reliability.md has its counts).
fn ci(backend: Backend, fault: Fault, after: Duration) {
    let run = scenario(backend, fault, 6, Duration::from_secs(3), after);
    eprintln!("{backend:?} {}\n{}", row(&run), run.report.describe(20));
    assert!(
        run.report.ok > 0,
        "no call succeeded: {}",
        run.report.describe(20)
    );
    assert_eq!(run.report.violations(), 0, "{}", run.report.describe(20));
    assert_eq!(run.untokened, 0, "executions without a fencing token");
}

/// The instrumented upstreams do refuse a stale fencing token (else "0 refused" in a run
/// would mean nothing): two stdio children of one client session share the register, so the
/// second refuses a token below the first's; the HTTP upstream refuses a lower
/// `Mcp-Fencing-Token` on the same upstream session and logs the refusal, not an execution.
#[test]
fn the_instrumented_upstreams_refuse_a_stale_fencing_token() {
    let dir = TempDir::new("nemesis-peer");
    let log = dir.0.join("executions.jsonl");
    let count = |id: u64, token: u64| {
        json!({"jsonrpc":"2.0","id":id,"method":"nemesis/count",
               "params":{"key":"k","call":format!("c{id}"),"_meta":{"dev.mcpg/fencingToken":token}}})
    };
    let child = |lines: &[Value]| -> Vec<Value> {
        let mut c = Command::new(python())
            .arg(peers_script("nemesis_upstream.py"))
            .arg("stdio")
            .env("NEMESIS_LOG", &log)
            .env("NEMESIS_REPLICA", "r")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        let mut input = c.stdin.take().unwrap();
        for l in lines {
            writeln!(input, "{l}").unwrap();
        }
        drop(input);
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let first = child(&[count(1, 3)]);
    assert_eq!(first[0]["result"]["n"], 1, "{first:?}");
    let second = child(&[count(2, 2), count(3, 4)]);
    assert!(
        second[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stale fencing token 2")),
        "{second:?}"
    );
    assert_eq!(
        second[1]["result"]["n"], 1,
        "a higher token runs: {second:?}"
    );

    let port = free_port();
    let _http = Proc::spawn(
        Command::new(python())
            .arg(peers_script("nemesis_upstream.py"))
            .args(["http", &port.to_string()])
            .arg(&log),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_until(Duration::from_secs(20), || TcpStream::connect(
        addr
    )
    .is_ok()));
    let send = |id: u64, token: u64| {
        let mut s = TcpStream::connect(addr).unwrap();
        let body = json!({"jsonrpc":"2.0","id":id,"method":"nemesis/count","params":{"key":"h","call":format!("c{id}")}}).to_string();
        write!(
            s,
            "POST /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\nMcp-Session-Id: up-1\r\nMcp-Fencing-Token: {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        message(out.split_once("\r\n\r\n").unwrap().1).unwrap()
    };
    assert_eq!(send(4, 5)["result"]["n"], 1);
    assert!(
        send(5, 4)["error"]["message"].is_string(),
        "token 4 after 5"
    );
    assert_eq!(send(6, 5)["result"]["n"], 2, "an equal token runs");

    let (execs, refused, untokened) = executions(&log);
    let calls = |v: Vec<String>| v.join(",");
    assert_eq!(
        calls(execs.into_iter().map(|e| e.call).collect()),
        "c1,c3,c4,c6"
    );
    assert_eq!(
        calls(refused.into_iter().map(|r| r.call).collect()),
        "c2,c5"
    );
    assert_eq!(untokened, 0);
}

#[test]
fn ci_redis_owner_hung() {
    ci(Backend::Redis, Fault::HungReplica, Duration::from_secs(4));
}

#[test]
fn ci_nats_owner_paused() {
    ci(Backend::Nats, Fault::PauseReplica, Duration::from_secs(4));
}

#[test]
fn ci_etcd_owner_paused() {
    ci(Backend::Etcd, Fault::PauseReplica, Duration::from_secs(4));
}

#[test]
fn ci_redis_backend_paused_below_the_ttl() {
    ci(
        Backend::Redis,
        Fault::PauseBackendShort,
        Duration::from_secs(8),
    );
}

#[test]
fn ci_nats_backend_restarted() {
    ci(Backend::Nats, Fault::RestartBackend, Duration::from_secs(8));
}

#[test]
fn ci_etcd_backend_paused_below_the_ttl() {
    ci(
        Backend::Etcd,
        Fault::PauseBackendShort,
        Duration::from_secs(8),
    );
}

#[test]
fn ci_redis_replica_cut_off_from_the_backend() {
    ci(
        Backend::Redis,
        Fault::PartitionBackend,
        Duration::from_secs(4),
    );
}

/// The full matrix (ignored in CI; `--run-ignored only`): every fault on every backend (or
/// those in `MCPG_NEMESIS_BACKENDS`, e.g. `redis,nats`), one table per backend printed and
/// appended to `$MCPG_NEMESIS_OUT` when set; `MCPG_NEMESIS_FAULTS` (e.g.
/// `PauseReplica,HungReplica`) picks faults; `MCPG_NEMESIS_PARTITION_MS` sets how long a partition
/// lasts (2 × the owner TTL by default). Violations are reported, not asserted: some faults
/// still violate until the gateway-side fixes land.
#[test]
#[ignore = "the long full matrix: tools/nemesis runs it"]
fn full_matrix() {
    let backends: Vec<Backend> = match std::env::var("MCPG_NEMESIS_BACKENDS").ok().as_deref() {
        Some(list) => list
            .split(',')
            .filter_map(|b| match b.trim() {
                "redis" => Some(Backend::Redis),
                "nats" => Some(Backend::Nats),
                "etcd" => Some(Backend::Etcd),
                _ => None,
            })
            .collect(),
        None => vec![Backend::Redis, Backend::Nats, Backend::Etcd],
    };
    let mut faults = vec![
        Fault::None,
        Fault::KillReplica,
        Fault::PauseReplica,
        Fault::HungReplica,
        Fault::PauseBackendShort,
        Fault::PauseBackendLong,
        Fault::RestartBackend,
        Fault::RestartBackendPersisted,
        Fault::PartitionBackend,
        Fault::PartitionPeers,
    ];
    if let Ok(only) = std::env::var("MCPG_NEMESIS_FAULTS") {
        faults.retain(|f| only.split(',').any(|o| o.trim() == format!("{f:?}")));
    }
    for b in backends {
        let mut table = format!(
            "\n{b:?}\n\n| scenario | calls | failed | unknown | stale requests refused | violations | stdio state resets | longest time without success |\n|---|---|---|---|---|---|---|---|\n"
        );
        for f in &faults {
            if matches!(f, Fault::RestartBackendPersisted) && !matches!(b, Backend::Redis) {
                // NATS and etcd keep their data in `RestartBackend` already.
                continue;
            }
            let run = scenario(b, *f, 8, Duration::from_secs(3), Duration::from_secs(10));
            eprintln!(
                "{b:?} {}\n{}\n  {} executions without a fencing token",
                row(&run),
                run.report.describe(5),
                run.untokened
            );
            table.push_str(&row(&run));
            table.push('\n');
        }
        eprintln!("{table}");
        if let Ok(out) = std::env::var("MCPG_NEMESIS_OUT") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)
                .unwrap();
            let _ = f.write_all(table.as_bytes());
        }
    }
}
