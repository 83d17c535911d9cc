//! The clients `docs/clients.md` tells people to use, run as that guide runs them: the MCP
//! Inspector CLI and `mcp-remote` (the stdio proxy Claude Desktop users run), both pinned in
//! `tests/peers/package.json`, against a real mcpg with an open binding and with a binding
//! behind a static token. Also what such a token binding tells an OAuth-minded client: no
//! protected-resource metadata and a challenge that does not point at any.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{MCP_ACCEPT, MCP_JSON, TempDir, header, http, http_get};
use crate::peers::{Gateway, deps, node, time_stdio};

const TOKEN: &str = "clients-guide-token-0123456789";

/// A generous upper bound for one client run (npm clients start slowly on a busy machine).
const LIMIT: Duration = Duration::from_secs(120);

fn open_gateway(tag: &str) -> Gateway {
    Gateway::start(
        tag,
        &format!(
            "bindings:\n  - name: time\n    path: /mcp\n    upstreams:\n      - {}\n",
            time_stdio("")
        ),
    )
}

fn token_gateway(tag: &str) -> Gateway {
    Gateway::start(
        tag,
        &format!(
            "bindings:\n  - name: time\n    path: /mcp\n    upstreams:\n      - {}\n    auth:\n      tokens: [{{name: laptop, token: \"{TOKEN}\"}}]\n",
            time_stdio("")
        ),
    )
}

fn package_file(rel: &str) -> PathBuf {
    let p = deps().join("node/node_modules").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run tools/install-test-deps (it installs the npm clients pinned in tests/peers/package.json)",
        p.display()
    );
    p
}

/// `mcp-inspector` of `@modelcontextprotocol/inspector`.
fn inspector() -> PathBuf {
    package_file("@modelcontextprotocol/inspector/clients/launcher/build/index.js")
}

/// `mcp-remote` (its `proxy.js`).
fn mcp_remote() -> PathBuf {
    package_file("mcp-remote/dist/proxy.js")
}

/// Runs `cmd` to its end (killed and failed after [`LIMIT`]); returns status, stdout, stderr.
fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "client did not finish within {LIMIT:?}; stderr:\n{}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The Inspector CLI (`mcp-inspector --cli URL …`) with its own HOME (it keeps a catalog and
/// secrets under `~/.mcp-inspector`).
fn inspector_cli(home: &TempDir, url: &str, args: &[&str]) -> (ExitStatus, String, String) {
    run(Command::new(node())
        .arg(inspector())
        .arg("--cli")
        .arg(url)
        .args(args)
        .env("HOME", &home.0)
        .env("PATH", node().parent().unwrap()))
}

fn tool_names(v: &Value) -> Vec<String> {
    v["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn inspector_cli_lists_and_calls_tools_on_an_open_binding() {
    let gw = open_gateway("clients-inspector-open");
    let home = TempDir::new("clients-inspector-open-home");
    let url = gw.url("/mcp");
    let (status, out, err) = inspector_cli(&home, &url, &["--method", "tools/list"]);
    assert!(status.success(), "tools/list failed: {err}\n{out}");
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        tool_names(&listed).contains(&"get_current_time".to_owned()),
        "{listed}"
    );

    let (status, out, err) = inspector_cli(
        &home,
        &url,
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "get_current_time",
            "--tool-arg",
            "timezone=Asia/Tokyo",
        ],
    );
    assert!(status.success(), "tools/call failed: {err}\n{out}");
    let called: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_ne!(called["isError"], json!(true), "{called}");
    assert!(called.to_string().contains("Asia/Tokyo"), "{called}");
}

#[test]
fn inspector_cli_needs_the_token_as_a_header_on_a_token_binding() {
    let gw = token_gateway("clients-inspector-token");
    let home = TempDir::new("clients-inspector-token-home");
    let url = gw.url("/mcp");

    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, out, err) = inspector_cli(
        &home,
        &url,
        &["--header", &bearer, "--method", "tools/list"],
    );
    assert!(
        status.success(),
        "tools/list with the token failed: {err}\n{out}"
    );
    let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        tool_names(&listed).contains(&"get_current_time".to_owned()),
        "{listed}"
    );

    // Without it the Inspector wants to run OAuth, which a static-token binding cannot
    // satisfy; headless it stops with "auth required" (its exit code 3) instead of hanging.
    let (status, out, err) = inspector_cli(&home, &url, &["--method", "tools/list"]);
    assert_eq!(status.code(), Some(3), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        err.contains("auth_required"),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    let wrong = "Authorization: Bearer not-the-token-0123456789";
    let (status, out, err) =
        inspector_cli(&home, &url, &["--header", wrong, "--method", "tools/list"]);
    assert_eq!(status.code(), Some(3), "stdout:\n{out}\nstderr:\n{err}");
}

/// `mcp-remote` as Claude Desktop runs it: a stdio MCP server that proxies to `url`, driven
/// here over its stdin and stdout with its own HOME (it keeps state under `~/.mcp-auth`).
struct Remote {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    _home: TempDir,
}

impl Remote {
    fn start(tag: &str, url: &str, extra: &[&str]) -> Self {
        let home = TempDir::new(tag);
        let mut child = Command::new(node())
            .arg(mcp_remote())
            .arg(url)
            .args(extra)
            .env("HOME", &home.0)
            .env("PATH", node().parent().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mcp-remote");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = drain(child.stderr.take().unwrap());
        Self {
            child,
            stdin,
            lines,
            stderr,
            _home: home,
        }
    }

    fn send(&mut self, msg: Value) -> std::io::Result<()> {
        writeln!(self.stdin, "{msg}")?;
        self.stdin.flush()
    }

    /// The answer to request `id` (notifications in between are skipped), or `None` when
    /// mcp-remote closes its stdout or says nothing for [`LIMIT`].
    fn answer(&self, id: u64) -> Option<Value> {
        let until = Instant::now() + LIMIT;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if v["id"] == json!(id) {
                return Some(v);
            }
        }
    }

    fn initialize(&mut self) -> Option<Value> {
        self.send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "mcpg-e2e", "version": "0"}}}),
        )
        .ok()?;
        self.answer(1)
    }

    fn list_tools(&mut self) -> Value {
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .unwrap();
        self.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            .unwrap();
        self.answer(2).expect("an answer to tools/list")
    }

    /// Waits for mcp-remote to exit on its own; its status and stderr.
    fn exit(mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(start.elapsed() < LIMIT, "mcp-remote did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.stderr.join().unwrap())
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.join().unwrap()
    }
}

fn remote_lists_time_tools(mut r: Remote) {
    let init = r.initialize();
    let Some(init) = init else {
        panic!("no answer to initialize; stderr:\n{}", r.stop());
    };
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    let tools = r.list_tools();
    let err = r.stop();
    assert!(
        tool_names(&tools["result"]).contains(&"get_current_time".to_owned()),
        "{tools}\n{err}"
    );
}

#[test]
fn mcp_remote_proxies_an_open_binding() {
    let gw = open_gateway("clients-remote-open");
    remote_lists_time_tools(Remote::start(
        "clients-remote-open-home",
        &gw.url("/mcp"),
        &[],
    ));
}

#[test]
fn mcp_remote_proxies_a_token_binding_with_the_header() {
    let gw = token_gateway("clients-remote-token");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    remote_lists_time_tools(Remote::start(
        "clients-remote-token-home",
        &gw.url("/mcp"),
        &["--header", &bearer],
    ));

    // Without the header, mcp-remote answers every 401 with an OAuth sign-in; a static-token
    // binding has no authorization server, so it gives up (it does not hang, and it never
    // reaches the upstream). docs/clients.md names the message it prints.
    let mut r = Remote::start("clients-remote-token-bare-home", &gw.url("/mcp"), &[]);
    let init = r.initialize();
    assert!(
        init.as_ref().is_none_or(|v| v.get("result").is_none()),
        "initialize succeeded without a token: {init:?}"
    );
    let (status, err) = r.exit();
    assert!(!status.success(), "{err}");
    assert!(err.contains("Dynamic Client Registration"), "{err}");
}

/// What a static-token binding says to an OAuth client: a plain bearer challenge and no
/// protected-resource metadata (the MCP authorization spec requires such a document to name
/// an authorization server, and this binding has none).
#[test]
fn a_token_binding_advertises_no_authorization_server() {
    let gw = token_gateway("clients-metadata");
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let (status, headers, _) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[MCP_JSON, MCP_ACCEPT],
        init.to_string().as_bytes(),
    );
    assert_eq!(status, 401);
    let challenge = header(&headers, "www-authenticate").expect("a challenge");
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(!challenge.contains("resource_metadata"), "{challenge}");

    let (status, body) = http_get(gw.addr, "/.well-known/oauth-protected-resource/mcp").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("static bearer tokens"), "{body}");
}

/// The first fenced block of `lang` in `docs/clients.md`, as a reader copies it.
fn doc_snippet(lang: &str) -> String {
    let doc = std::fs::read_to_string(crate::harness::repo_root().join("docs/clients.md"))
        .expect("read docs/clients.md");
    let fence = format!("```{lang}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("no {lang} block in docs/clients.md"))
        + fence.len();
    let len = doc[start..].find("\n```").expect("an end to the block");
    doc[start..start + len + 1].to_owned()
}

/// Runs the guide's Python and TypeScript programs as written, against `url`, with
/// `MCPG_TOKEN` set when `token` is given; both must list and call the time tool.
fn doc_programs_work(url: &str, token: Option<&str>) {
    let dir = TempDir::new("clients-doc-programs");
    let py = dir.write("client.py", &doc_snippet("python"));
    let js = dir.write("client.mjs", &doc_snippet("js"));
    // `npm install` beside the program: the pinned SDK, found through node_modules.
    std::os::unix::fs::symlink(deps().join("node/node_modules"), dir.0.join("node_modules"))
        .unwrap();
    for (what, mut cmd) in [
        ("Python", Command::new(crate::peers::python())),
        ("TypeScript", Command::new(node())),
    ] {
        cmd.arg(if what == "Python" { &py } else { &js })
            .env("MCPG_URL", url)
            .env_remove("MCPG_TOKEN");
        if let Some(t) = token {
            cmd.env("MCPG_TOKEN", t);
        }
        let (status, out, err) = run(&mut cmd);
        assert!(status.success(), "{what} program failed:\n{err}\n{out}");
        assert!(out.contains("get_current_time"), "{what}: {out}");
        assert!(out.contains("\"timezone\": \"UTC\""), "{what}: {out}");
    }
}

#[test]
fn the_guides_sdk_programs_run_as_written() {
    let open = open_gateway("clients-doc-open");
    doc_programs_work(&open.url("/mcp"), None);
    let token = token_gateway("clients-doc-token");
    doc_programs_work(&token.url("/mcp"), Some(TOKEN));
}
