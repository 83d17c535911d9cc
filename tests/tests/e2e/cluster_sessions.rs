//! Any replica serves any session: three `mcpg` replicas on one real Redis, behind a real nginx
//! doing plain round-robin with the config users copy (`examples/nginx/mcpg-round-robin.conf`),
//! with real clients (the Python `mcp` client in both eras) and real upstreams
//! (`server-everything` over HTTP, the echo upstream over stdio). Then a replica is killed
//! with SIGKILL mid-run and its sessions carry on elsewhere. The same scenarios run against
//! one `single_node` replica.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcpg_backends::{PostgresServer, RedisServer};
use serde_json::{Value, json};

use crate::harness::{
    MCP_ACCEPT as ACCEPT, MCP_JSON as JSON, Proc, TempDir, cdylib, free_port, get_json, http,
    http_for, legacy_session, repo_root, session_post, sse_messages, start_replicas, wait_until,
};
use crate::peers::{Everything, everything_http, peers_script, py_client, python};

/// nginx, found where Debian puts it; `tools/install-test-deps` installs it.
fn nginx_bin() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/nginx");
    assert!(
        p.exists(),
        "nginx is missing: run `tools/install-test-deps` (apt-get install nginx-light)"
    );
    p
}

/// A real nginx running the example config, pointed at `backends`.
pub(crate) struct Nginx {
    _proc: Proc,
    pub(crate) addr: SocketAddr,
    _dir: TempDir,
}

impl Nginx {
    pub(crate) fn start(backends: &[SocketAddr]) -> Self {
        Self::start_bound(backends, None)
    }

    /// As [`Nginx::start`], connecting to the replicas from `bind` (`proxy_bind`) when given:
    /// the nemesis partition tells nginx's connections from the replicas' own that way.
    pub(crate) fn start_bound(backends: &[SocketAddr], bind: Option<std::net::IpAddr>) -> Self {
        let dir = TempDir::new("nginx");
        let example =
            std::fs::read_to_string(repo_root().join("examples/nginx/mcpg-round-robin.conf"))
                .unwrap();
        let port = free_port();
        let mut conf = String::new();
        let mut servers_written = false;
        for line in example.lines() {
            let t = line.trim_start();
            if t.starts_with("server 10.0.0.") {
                // The example's replicas, replaced by this test's.
                if !servers_written {
                    for b in backends {
                        conf.push_str(&format!("        server {b};\n"));
                    }
                    servers_written = true;
                }
                continue;
            }
            if t.starts_with("listen 8080;") {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                continue;
            }
            if t.starts_with("worker_processes") {
                conf.push_str(&format!(
                    "worker_processes 1;\npid {0}/nginx.pid;\nerror_log {0}/error.log warn;\n",
                    dir.0.display()
                ));
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
            if let (true, Some(bind)) = (t.starts_with("proxy_pass "), bind) {
                conf.push_str(&format!("            proxy_bind {bind};\n"));
            }
            if t.starts_with("http {") {
                // Keep the test's files in its own directory.
                for (k, sub) in [
                    ("client_body_temp_path", "body"),
                    ("proxy_temp_path", "proxy"),
                    ("fastcgi_temp_path", "fastcgi"),
                    ("uwsgi_temp_path", "uwsgi"),
                    ("scgi_temp_path", "scgi"),
                ] {
                    conf.push_str(&format!("    {k} {}/{sub};\n", dir.0.display()));
                }
                conf.push_str("    access_log off;\n");
            }
        }
        assert!(
            servers_written,
            "the example lists its replicas as `server 10.0.0.x`"
        );
        let f = dir.write("nginx.conf", &conf);
        let proc = Proc::spawn(
            Command::new(nginx_bin())
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(&f)
                .args(["-g", "daemon off;"]),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                addr
            )
            .is_ok()),
            "nginx never listened on {addr}: {conf}"
        );
        Self {
            _proc: proc,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master stops its workers on TERM; killing it outright would orphan them.
        self._proc.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self._proc.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One replica of the cluster under test.
struct Replica {
    id: String,
    proc: Option<Proc>,
    main: SocketAddr,
    admin: SocketAddr,
}

/// The coordinator backend several replicas share.
#[derive(Clone, Copy)]
pub enum Backend {
    Redis,
    Postgres,
}

/// The replicas (and what they need) of one scenario run.
struct Cluster {
    replicas: Vec<Replica>,
    nginx: Nginx,
    _everything: Everything,
    _backend: Option<Box<dyn std::any::Any>>,
    _dir: TempDir,
}

fn bindings(everything: &str) -> String {
    format!(
        "bindings:\n  - name: ev\n    path: /ev\n    upstreams: [{{name: everything, http: {{url: \"{everything}\"}}}}]\n  \
         - name: echo\n    path: /echo\n    upstreams: [{{name: echo, stdio: {{command: {:?}, args: [{:?}]}}}}]\n",
        python().display().to_string(),
        peers_script("echo_upstream.py").display().to_string()
    )
}

impl Cluster {
    /// `n` replicas on `backend` (`n > 1`), or one `single_node` replica.
    fn start(tag: &str, n: usize, backend: Backend) -> Self {
        let everything = everything_http();
        let dir = TempDir::new(tag);
        let (server, cluster): (Option<Box<dyn std::any::Any>>, String) = match backend {
            _ if n == 1 => (None, String::new()),
            Backend::Redis => {
                let r = RedisServer::start();
                let yaml = format!(
                    "cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"e2e6:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
                     plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n",
                    r.url(),
                    cdylib("mcpg_cluster_redis").display()
                );
                (Some(Box::new(r)), yaml)
            }
            Backend::Postgres => {
                let p = PostgresServer::start();
                let yaml = format!(
                    "cluster:\n  kind: postgres\n  url: \"{}\"\n  schema: e2e6\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
                     plugins:\n  - id: dev.mcpg.cluster.postgres\n    source: {{path: \"{}\"}}\n",
                    p.url(),
                    cdylib("mcpg_cluster_postgres").display()
                );
                (Some(Box::new(p)), yaml)
            }
        };
        // One config file for every replica, written once before any starts (a rewrite while
        // one reads it would hand that one a torn file): the flags make each one itself.
        let f = dir.write(
            "mcpg.yaml",
            &format!(
                "server:\n  drain_timeout_ms: 5000\n{cluster}mcp:\n  sessions: {{owner_ttl_ms: 3000}}\n{}",
                bindings(&everything.url)
            ),
        );
        let mut replicas: Vec<Replica> = start_replicas(&f, "replica", n, |_, cmd| {
            cmd.env("MCPG_LOG", "info,mcpg=debug");
        })
        .into_iter()
        .map(|r| Replica {
            id: r.id,
            proc: Some(r.proc),
            main: r.main,
            admin: r.admin,
        })
        .collect();
        // Everyone sees everyone (forwarding needs the peers' advertised URLs).
        for r in &mut replicas {
            let seen = wait_until(Duration::from_secs(30), || {
                get_json(r.admin, "/api/cluster/peers")
                    .and_then(|v| v["peers"].as_array().map(Vec::len))
                    == Some(n)
            });
            if !seen {
                let peers = get_json(r.admin, "/api/cluster/peers");
                let proc = r.proc.take().unwrap();
                proc.signal("TERM");
                let (status, stderr) = proc.wait(Duration::from_secs(30));
                panic!(
                    "{} does not see its {n} peers: {peers:?}; it exited {status}:\n{stderr}",
                    r.id
                );
            }
        }
        let nginx = Nginx::start(&replicas.iter().map(|r| r.main).collect::<Vec<_>>());
        Self {
            replicas,
            nginx,
            _everything: everything,
            _backend: server,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.nginx.addr)
    }

    /// The session's owner, as any live replica's admin API reports it.
    fn owner(&self, sid: &str) -> Option<String> {
        self.replicas
            .iter()
            .filter(|r| r.proc.is_some())
            .find_map(|r| get_json(r.admin, &format!("/api/cluster/sessions/{sid}")))
            .and_then(|v| v["owner"].as_str().map(str::to_owned))
    }

    fn replica(&self, id: &str) -> &Replica {
        self.replicas.iter().find(|r| r.id == id).unwrap()
    }

    /// A live replica other than `not` (or the first when there is only one).
    fn other_than(&self, not: &str) -> &Replica {
        self.replicas
            .iter()
            .filter(|r| r.proc.is_some())
            .find(|r| r.id != not)
            .unwrap_or(&self.replicas[0])
    }
}

fn body_json(body: &str) -> Value {
    // A JSON body, or the last `data:` of an SSE body.
    if let Ok(v) = serde_json::from_str(body) {
        return v;
    }
    body.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .unwrap_or_else(|| panic!("no JSON in {body:?}"))
}

fn post(addr: SocketAddr, path: &str, sid: &str, body: &Value) -> (u16, String) {
    session_post(addr, path, sid, body)
}

/// Raw-HTTP scenarios on the echo binding, each touching several replicas directly: every
/// replica serves the session; a long request runs on the owner and is cancelled from
/// another replica; a GET stream on a third replica carries what the owner's upstream sent
/// and resumes there from Last-Event-ID.
fn raw_scenarios(c: &Cluster) {
    let first = &c.replicas[0];
    let sid = legacy_session(first.main, "/echo");
    let owner = c.owner(&sid).expect("the session has an owner");
    assert_eq!(
        owner, first.id,
        "the replica that answered initialize owns it"
    );
    // Every replica serves it.
    for r in &c.replicas {
        let (status, text) = post(
            r.main,
            "/echo",
            &sid,
            &json!({"jsonrpc":"2.0","id":1,"method":"echo/sleep","params":{"ms":1}}),
        );
        assert_eq!(status, 200, "{}: {text}", r.id);
        assert!(
            body_json(&text)["result"]["pid"].is_number(),
            "{}: {text}",
            r.id
        );
    }
    assert_eq!(
        c.owner(&sid).as_deref(),
        Some(first.id.as_str()),
        "ownership did not move"
    );

    // A long request sent to one replica, cancelled through another.
    let runs_via = c.other_than(&owner).main;
    let cancels_via = c
        .replicas
        .iter()
        .rev()
        .find(|r| r.id != owner)
        .unwrap_or(first)
        .main;
    let slow = {
        let sid = sid.clone();
        std::thread::spawn(move || {
            http_for(
                runs_via,
                "POST",
                "/echo",
                &[JSON, ACCEPT, ("Mcp-Session-Id", sid.as_str())],
                br#"{"jsonrpc":"2.0","id":"slow","method":"echo/sleep","params":{"ms":4000}}"#,
                Duration::from_secs(15),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, text) = post(
        cancels_via,
        "/echo",
        &sid,
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow","reason":"from another replica"}}),
    );
    assert_eq!(status, 202, "{text}");
    let (status, _, text) = slow.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains("\"result\""),
        "a cancelled request gets no result: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "the request ran to its end instead of being cancelled"
    );
    let (_, text) = post(
        cancels_via,
        "/echo",
        &sid,
        &json!({"jsonrpc":"2.0","id":2,"method":"echo/notifications","params":{}}),
    );
    let seen = body_json(&text);
    let cancelled: Vec<&Value> = seen["result"]["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("{seen}"))
        .iter()
        .filter(|n| n["method"] == "notifications/cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "the upstream was told once: {seen}");
    assert_eq!(cancelled[0]["params"]["reason"], "from another replica");

    // Messages the upstream sends outside requests reach a GET stream held on another
    // replica, and a GET stream there resumes after the last event seen.
    let streams_on = c.replicas.last().unwrap().main;
    let (status, text) = post(
        c.other_than(&owner).main,
        "/echo",
        &sid,
        &json!({"jsonrpc":"2.0","id":3,"method":"echo/emit","params":{"count":3}}),
    );
    assert_eq!(status, 200, "{text}");
    let get = |last: &str| {
        let (status, _, body) = http_for(
            streams_on,
            "GET",
            "/echo",
            &[
                ("Accept", "text/event-stream"),
                ("Mcp-Session-Id", sid.as_str()),
                ("Last-Event-ID", last),
            ],
            b"",
            Duration::from_millis(1500),
        );
        assert_eq!(status, 200, "{body}");
        sse_messages(&body)
    };
    let all = get("0");
    assert_eq!(
        all.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [1, 2, 3],
        "{all:?}"
    );
    assert_eq!(
        get(&all[1].0.to_string()),
        [all[2]],
        "resumed after the named event"
    );

    // DELETE through a non-owner ends the session everywhere.
    let (status, _, _) = http(
        c.other_than(&owner).main,
        "DELETE",
        "/echo",
        &[("Mcp-Session-Id", sid.as_str())],
        b"",
    );
    assert_eq!(status, 200);
    for r in &c.replicas {
        let (status, _) = post(
            r.main,
            "/echo",
            &sid,
            &json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}),
        );
        assert_eq!(status, 404, "{} still serves the deleted session", r.id);
    }
}

/// A long-running tool call of `server-everything`, sent to one replica that does not own the
/// session (forwarded to the owner, which runs it) and cancelled through a third: the call
/// stops long before its end, after progress had started flowing, and gets no result; the
/// session goes on.
fn long_tool_call_cancelled_elsewhere(c: &Cluster) {
    let first = &c.replicas[0];
    let sid = legacy_session(first.main, "/ev");
    let (status, _) = post(
        c.replicas.last().unwrap().main,
        "/ev",
        &sid,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(status, 202);
    let owner = c.owner(&sid).unwrap();
    let runs_via = c.other_than(&owner).main;
    let cancels_via = c
        .replicas
        .iter()
        .rev()
        .find(|r| r.id != owner)
        .unwrap_or(first)
        .main;
    let started = Instant::now();
    let long = {
        let sid = sid.clone();
        std::thread::spawn(move || {
            http_for(
                runs_via,
                "POST",
                "/ev",
                &[JSON, ACCEPT, ("Mcp-Session-Id", sid.as_str())],
                json!({"jsonrpc":"2.0","id":"long","method":"tools/call","params":{
                    "name":"trigger-long-running-operation",
                    "arguments":{"duration":10,"steps":20},
                    "_meta":{"progressToken":"long-progress"}}})
                .to_string()
                .as_bytes(),
                Duration::from_secs(20),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (status, text) = post(
        cancels_via,
        "/ev",
        &sid,
        &json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"long","reason":"cancelled elsewhere"}}),
    );
    assert_eq!(status, 202, "{text}");
    let (status, _, text) = long.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("long-progress"),
        "progress had not started: {text}"
    );
    assert!(
        !text.contains("\"result\""),
        "a cancelled call gets no result: {text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the 10 s operation was not cancelled ({:?})",
        started.elapsed()
    );
    let (status, text) = post(
        runs_via,
        "/ev",
        &sid,
        &json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"after the cancel"}}}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("after the cancel"), "{text}");
}

/// Real clients through the load balancer: server-to-client requests in both eras (the
/// client's answer lands on whichever replica nginx picks), and a modern client's
/// input-required round whose retry reaches another replica than the one holding the
/// exchange.
fn client_scenarios(c: &Cluster) {
    let plan = json!({
        "answer": true,
        "calls": [
            {"name": "trigger-elicitation-request", "arguments": {}},
            {"name": "trigger-sampling-request", "arguments": {"prompt": "hello", "maxTokens": 10}},
            {"name": "echo", "arguments": {"message": "through nginx"}}
        ]
    });
    for mode in ["legacy", "2026-07-28"] {
        // Several runs, so that with round-robin the answers and retries land on replicas
        // other than the one that asked.
        for run in 0..3 {
            let r = py_client(&c.url("/ev"), mode, plan.clone());
            let calls = r["calls"].as_array().unwrap();
            assert!(
                calls[0]["text"].to_string().contains("Ada Lovelace"),
                "{mode} run {run}: elicitation answer lost: {r}"
            );
            assert!(
                calls[1]["text"]
                    .to_string()
                    .contains("sampled by the test client"),
                "{mode} run {run}: sampling answer lost: {r}"
            );
            assert!(
                calls[2]["text"].to_string().contains("through nginx"),
                "{mode} run {run}: {r}"
            );
        }
    }
}

/// A Python client running one session through nginx until told to stop.
pub(crate) struct LongClient {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stop: PathBuf,
    mode: &'static str,
}

impl LongClient {
    fn start(url: &str, mode: &'static str, dir: &TempDir, subscribe: Option<&str>) -> Self {
        let mut plan = json!({
            "call": {"name": "echo", "arguments": {"message": "still here"}},
            "pause_ms": 20,
        });
        if let Some(uri) = subscribe {
            plan["subscribe"] = json!(uri);
            plan["first"] = json!([{"name": "toggle-subscriber-updates", "arguments": {}}]);
        }
        Self::with_plan(url, mode, &dir.0.join(format!("stop-{mode}")), plan)
    }

    /// A client running `plan` (`cluster_client.py`'s), stopped by creating `stop`.
    pub(crate) fn with_plan(
        url: &str,
        mode: &'static str,
        stop: &std::path::Path,
        mut plan: Value,
    ) -> Self {
        let stop = stop.to_path_buf();
        plan["stop_file"] = json!(stop);
        let mut child = Command::new(python())
            .arg(peers_script("cluster_client.py"))
            .args([url, mode, &plan.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the Python cluster client");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stop,
            mode,
        }
    }

    /// Waits for the client's session to be set up; returns its session id (legacy).
    pub(crate) fn ready(&self) -> Option<String> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the {} client never got ready", self.mode));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "ready", "{v}");
        v["session"].as_str().map(str::to_owned)
    }

    pub(crate) fn finish(mut self) -> Value {
        std::fs::write(&self.stop, "").unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("the {} client never reported", self.mode));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the {} client failed", self.mode);
        serde_json::from_str(&line).unwrap()
    }
}

pub(crate) fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn three_replicas_behind_round_robin_serve_every_session_and_survive_a_kill() {
    three_replicas_survive_a_kill(Backend::Redis);
}

/// The whole scenario on three replicas sharing `backend`.
pub fn three_replicas_survive_a_kill(backend: Backend) {
    let mut c = Cluster::start("cluster-3", 3, backend);
    raw_scenarios(&c);
    long_tool_call_cancelled_elsewhere(&c);
    client_scenarios(&c);

    // Long-running clients of both eras, one subscribed to a resource of server-everything.
    let dir = TempDir::new("cluster-clients");
    let uri = "demo://resource/dynamic/text/1";
    let legacy = LongClient::start(&c.url("/ev"), "legacy", &dir, Some(uri));
    let modern = LongClient::start(&c.url("/ev"), "2026-07-28", &dir, None);
    let sid = legacy.ready().expect("a legacy session id");
    modern.ready();
    std::thread::sleep(Duration::from_secs(2));

    // Kill the replica that owns the legacy session, mid-run.
    let victim = c.owner(&sid).expect("the legacy session has an owner");
    let killed_at = now_s();
    let idx = c.replicas.iter().position(|r| r.id == victim).unwrap();
    let proc = c.replicas[idx].proc.take().unwrap();
    proc.signal("KILL");
    drop(proc);

    // Its sessions carry on elsewhere: wait for a new owner and for a resource update sent
    // after the takeover.
    assert!(
        wait_until(Duration::from_secs(30), || c
            .owner(&sid)
            .is_some_and(|o| o != victim)),
        "nobody took the session over from {victim}"
    );
    let new_owner = c.owner(&sid).unwrap();
    std::thread::sleep(Duration::from_secs(7));
    let survivor = c.replica(&new_owner);
    let status = get_json(survivor.admin, &format!("/api/cluster/sessions/{sid}")).unwrap();
    assert_eq!(status["state"], "live", "{status}");
    assert_eq!(status["served_here"], true, "{status}");
    let legacy = legacy.finish();
    let modern = modern.finish();
    for r in [&legacy, &modern] {
        let failures = r["failures"].as_array().unwrap();
        let after_kill: Vec<&Value> = r["failures"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["t"].as_f64().unwrap() + 0.5 >= killed_at)
            .collect();
        eprintln!(
            "[cluster] {} client: {} calls, {} ok, {} failed ({} around the kill): {:?}; slowest call {:.3} s, started {:.3} s after the kill",
            if r["session"].is_string() {
                "legacy"
            } else {
                "modern"
            },
            r["calls"],
            r["ok"],
            failures.len(),
            after_kill.len(),
            failures,
            r["slowest"]["took"].as_f64().unwrap_or_default(),
            r["slowest"]["t"].as_f64().unwrap_or_default() - killed_at,
        );
        // At most the one request that was in flight on the killed replica.
        assert!(failures.len() <= 1, "{r}");
        assert!(r["ok"].as_u64().unwrap() > 50, "{r}");
        assert_eq!(r["last_text"], json!(["Echo: still here"]), "{r}");
    }
    assert_eq!(legacy["session"], json!(sid), "the same session throughout");
    let updates: Vec<f64> = legacy["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["uri"] == uri)
        .map(|u| u["t"].as_f64().unwrap())
        .collect();
    eprintln!(
        "[cluster] killed {victim} (owner of {sid}); {new_owner} took over; updates at {:?} (kill at {killed_at})",
        updates
    );
    assert!(
        updates.iter().any(|t| *t < killed_at),
        "no resource update before the kill: {legacy}"
    );
    assert!(
        updates.iter().any(|t| *t > killed_at + 1.0),
        "the subscription did not survive the kill: {legacy}"
    );
}

#[test]
fn one_single_node_replica_passes_the_same_scenarios() {
    let c = Cluster::start("cluster-1", 1, Backend::Redis);
    raw_scenarios(&c);
    long_tool_call_cancelled_elsewhere(&c);
    client_scenarios(&c);
    let dir = TempDir::new("single-clients");
    let uri = "demo://resource/dynamic/text/1";
    let legacy = LongClient::start(&c.url("/ev"), "legacy", &dir, Some(uri));
    legacy.ready().expect("a legacy session id");
    std::thread::sleep(Duration::from_secs(6));
    let r = legacy.finish();
    assert_eq!(r["failures"], json!([]), "{r}");
    assert!(
        r["updates"].as_array().is_some_and(|u| !u.is_empty()),
        "no resource update: {r}"
    );
}
