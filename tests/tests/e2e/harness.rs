//! Shared helpers: locating the workspace's binaries, free loopback ports, temp dirs, a tiny
//! HTTP/1.1 client, and child processes that are killed when a test ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, which `tools/test` does)",
        path.display()
    );
    path
}

/// A library built from this workspace (`lib<name>.so`).
pub fn cdylib(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .join(format!("lib{name}.so"));
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        path.display()
    );
    path
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A loopback port that was free a moment ago, and never handed out before in this test
/// process (the kernel may offer a port just released again, and a test asking for two ports,
/// e.g. a replica's listener and admin listener, must get two).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("mcpg-e2e-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A GET over a fresh connection; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {buf:?}")))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls until `f` returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Polls `addr`'s `/readyz` until it answers 200 or `limit` passes; whether it did.
pub fn wait_ready(addr: SocketAddr, limit: Duration) -> bool {
    wait_until(limit, || matches!(http_get(addr, "/readyz"), Ok((200, _))))
}

/// A replica's command line: `mcpg --config <config> --node-id <id>` listening on free loopback
/// ports; add environment or arguments, then spawn. Also its main and admin addresses.
pub fn replica_command(config: &Path, id: &str) -> (Command, SocketAddr, SocketAddr) {
    let (listen, admin) = (free_port(), free_port());
    let mut c = Command::new(bin("mcpg"));
    c.arg("--config")
        .arg(config)
        .args(["--node-id", id])
        .args(["--listen", &format!("127.0.0.1:{listen}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    (c, at(listen), at(admin))
}

/// A replica started by [`start_replicas`].
pub struct Started {
    pub id: String,
    pub proc: Proc,
    pub main: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `n` replicas on `config` named `<prefix>-<i>` (each [`replica_command`], given to
/// `setup` for its environment first) and waits until every one answers `/readyz` with 200;
/// one that never does fails the test with its stderr.
pub fn start_replicas(
    config: &Path,
    prefix: &str,
    n: usize,
    mut setup: impl FnMut(&str, &mut Command),
) -> Vec<Started> {
    let started: Vec<Started> = (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let (mut cmd, main, admin) = replica_command(config, &id);
            setup(&id, &mut cmd);
            let proc = Proc::spawn(&mut cmd);
            Started {
                id,
                proc,
                main,
                admin,
            }
        })
        .collect();
    for r in &started {
        let ready = wait_ready(r.main, Duration::from_secs(60));
        if !ready {
            r.proc.signal("KILL");
            panic!(
                "{} at {} never became ready:\n{}",
                r.id,
                r.main,
                r.proc.stderr_so_far()
            );
        }
    }
    started
}

/// A child process that is killed if the test ends before it exits.
pub struct Proc {
    pub child: Child,
    /// What the process wrote to stderr so far, read continuously (a full pipe would block a
    /// chatty process).
    stderr: Option<StderrReader>,
}

/// What a process wrote to stderr so far, and the thread reading it.
type StderrReader = (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    std::thread::JoinHandle<()>,
);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn process");
        Self::adopt(child)
    }

    /// Takes over a child whose output pipes may already be partly read (e.g. a first line of
    /// stdout): whatever is still piped is read from now on, stderr kept for [`Proc::wait`].
    pub fn adopt(mut child: Child) -> Self {
        let stderr = child.stderr.take().map(|mut err| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = buf.clone();
            let reader = std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            (buf, reader)
        });
        if let Some(mut out) = child.stdout.take() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut out, &mut std::io::sink());
            });
        }
        Self { child, stderr }
    }

    /// SIGSTOP, and waits until every thread of the process has stopped: `kill` returns once
    /// the signal is sent, and a thread running at that moment may go on briefly (long enough,
    /// on a loaded machine, to read and serve a request sent after `kill` returned).
    pub fn stop(&self) {
        self.signal("STOP");
        let pid = self.child.id();
        let stopped = || mcpg_backends::all_threads_stopped(pid);
        assert!(
            wait_until(Duration::from_secs(10), stopped),
            "process {} did not stop",
            self.child.id()
        );
    }

    /// What the process has written to stderr so far (for a failing test to show).
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .as_ref()
            .map(|(buf, _)| String::from_utf8_lossy(&buf.lock().unwrap()).into_owned())
            .unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit (up to `limit`), returning the status and everything it wrote to stderr.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                if let Some((buf, reader)) = self.stderr.take() {
                    // The reader sees the pipe close once the process (and anything that
                    // inherited the pipe) is gone; a grandchild holding it must not hang us.
                    let until = Instant::now() + Duration::from_secs(2);
                    while !reader.is_finished() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    err.push_str(&String::from_utf8_lossy(&buf.lock().unwrap()));
                }
                return (status, err);
            }
            assert!(
                start.elapsed() < limit,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` as JSON when it answers 200.
pub fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    match http_get(addr, path) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The node ids `/api/cluster/peers` lists, sorted.
pub fn peer_ids(admin: SocketAddr) -> Vec<String> {
    let mut ids: Vec<String> = get_json(admin, "/api/cluster/peers")
        .and_then(|v| v["peers"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// One running `mcpg` replica of a cluster test.
pub struct Replica {
    pub id: &'static str,
    pub proc: Proc,
    pub main: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts one `mcpg` per id (with `--node-id`), each with the config `config(listen, admin)`
/// gives, and waits until every one is ready, sees all of them as peers, and all agree on a
/// single leader with one fencing token. Returns the replicas and the agreed status.
pub fn start_agreeing_replicas(
    tag: &str,
    ids: &[&'static str],
    config: impl Fn(u16, u16) -> String,
) -> (TempDir, Vec<Replica>, serde_json::Value) {
    let dir = TempDir::new(tag);
    let mut replicas = Vec::new();
    for id in ids {
        let (listen, admin) = (free_port(), free_port());
        let f = dir.write(&format!("{id}.yaml"), &config(listen, admin));
        let proc = Proc::spawn(
            Command::new(bin("mcpg"))
                .args(["--node-id", id, "--config"])
                .arg(f),
        );
        replicas.push(Replica {
            id,
            proc,
            main: format!("127.0.0.1:{listen}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin}").parse().unwrap(),
        });
    }
    for r in &replicas {
        assert!(
            wait_ready(r.main, Duration::from_secs(30)),
            "{} never became ready",
            r.id
        );
    }
    let mut all: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    all.sort();
    for r in &replicas {
        assert!(
            wait_until(Duration::from_secs(15), || peer_ids(r.admin) == all),
            "{} sees peers {:?}",
            r.id,
            peer_ids(r.admin)
        );
    }
    let statuses = || {
        replicas
            .iter()
            .filter_map(|r| get_json(r.admin, "/api/cluster/status"))
            .collect::<Vec<_>>()
    };
    let agreed = wait_until(Duration::from_secs(15), || {
        let s = statuses();
        s.len() == replicas.len()
            && s.iter().filter(|x| x["role"] == "leader").count() == 1
            && s.iter().all(|x| {
                x["leader_id"] == s[0]["leader_id"]
                    && x["leadership_token"] == s[0]["leadership_token"]
            })
            && !s[0]["leader_id"].is_null()
    });
    assert!(agreed, "replicas disagree: {:?}", statuses());
    let status = statuses().remove(0);
    assert_eq!(status["backend"]["ok"], true, "{status}");
    (dir, replicas, status)
}

/// How long [`http_for`] waits for an answer's first bytes.
const FIRST_BYTE: Duration = Duration::from_secs(30);

/// One HTTP/1.1 exchange over a fresh connection (`Connection: close`): returns the status,
/// the response headers (names lowercased) and the body. Bodies of streamed responses are
/// read until the server closes or `read_for` passes.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    http_for(addr, method, path, headers, body, Duration::from_secs(5))
}

/// [`http`] that stops reading a response still streaming after `read_for` of silence.
pub fn http_for(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    read_for: Duration,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    // The answer's first bytes may take a while on a loaded machine (a new session starts
    // its upstream programs); `read_for` is the silence that ends a streamed answer after
    // them. Both are hang bounds, not performance assertions.
    s.set_read_timeout(Some(read_for.max(FIRST_BYTE))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        s.set_read_timeout(Some(read_for)).unwrap();
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// A response header's value.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The headers every raw MCP POST carries.
pub const MCP_JSON: (&str, &str) = ("Content-Type", "application/json");
pub const MCP_ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");

/// Starts a legacy (2025-11-25) session at `path` on `addr` with a raw `initialize`; returns
/// its `Mcp-Session-Id`.
pub fn legacy_session(addr: SocketAddr, path: &str) -> String {
    let init = serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let (status, headers, body) = http(
        addr,
        "POST",
        path,
        &[MCP_JSON, MCP_ACCEPT],
        init.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "initialize at {addr}{path}: {body}");
    header(&headers, "mcp-session-id")
        .unwrap_or_else(|| panic!("initialize answered without Mcp-Session-Id: {body}"))
        .to_owned()
}

/// A raw POST of `body` in session `sid`: the status and the body text.
pub fn session_post(
    addr: SocketAddr,
    path: &str,
    sid: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let (status, _, text) = http(
        addr,
        "POST",
        path,
        &[MCP_JSON, MCP_ACCEPT, ("Mcp-Session-Id", sid)],
        body.to_string().as_bytes(),
    );
    (status, text)
}

/// The `data.n` of every `notifications/message` event on an SSE body, with its event id.
pub fn sse_messages(body: &str) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    for block in body.replace("\r\n", "\n").split("\n\n") {
        let mut id = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            }
            if let Some(d) = line.strip_prefix("data:") {
                data = serde_json::from_str::<serde_json::Value>(d.trim()).ok();
            }
        }
        if let Some(v) = data
            && v["method"] == "notifications/message"
        {
            let id = id.expect("every GET-stream event has an id");
            out.push((id, v["params"]["data"]["n"].as_i64().unwrap()));
        }
    }
    out
}

/// Runs a command to completion and insists it succeeded, showing what it printed if not.
pub fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mcpg-config-check FILE` (plugin phase included): its exit code and what it printed.
pub fn config_check(file: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin("mcpg-config-check"))
        .arg(file)
        .output()
        .expect("run mcpg-config-check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
