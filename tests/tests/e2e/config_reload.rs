//! Config reload without a restart, across a cluster: two `mcpg` replicas on one real Redis
//! behind nginx, reading one config file, while real clients (the Python `mcp` client, a
//! legacy session and the stateless 2026-07-28 era) call continuously. The config changes
//! five times, each trigger used at least once: an upstream added (the file replaced by an
//! atomic rename, as a Kubernetes ConfigMap is), an access rule changed (SIGHUP), a binding
//! removed (`POST /api/config/reload`), an invalid file (written in place) and its fix (the
//! file watch again); the log level goes from info to warn on the way. Failed calls are
//! counted (none expected, except those of the client whose binding is removed, after its
//! removal); each change is checked on both replicas directly; the invalid file changes
//! nothing and is reported with positions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::cluster_sessions::Nginx;
use crate::harness::{
    MCP_ACCEPT, MCP_JSON, Proc, TempDir, bin, cdylib, http, http_get, start_replicas, wait_until,
};
use crate::peers::{peers_script, python};

/// Long enough that SIGHUP and the admin endpoint apply a change before the watch has read
/// the file (the watch then finds it already applied).
const DEBOUNCE_MS: u64 = 1500;

struct Cluster {
    procs: Vec<Proc>,
    mains: Vec<SocketAddr>,
    admins: Vec<SocketAddr>,
    file: PathBuf,
    dir: TempDir,
    redis: RedisServer,
}

/// The config: binding `main` at `/mcp` (prefixed names; upstream `fx`, and `fy` when
/// asked; `fx__payload` denied when `deny`), and `gone` at `/gone` when asked. From step 2 on
/// the log level is `warn`.
fn config(redis: &str, deny: bool, fy: bool, gone: bool) -> String {
    let quiet = deny || !gone;
    let fixture = bin("mcpg-fixture-upstream").display().to_string();
    let up = |name: &str| {
        format!("{{name: {name}, stdio: {{command: \"{fixture}\", args: [\"--stdio\"]}}}}")
    };
    let mut c = format!(
        "server:\n  config_reload: {{debounce_ms: {DEBOUNCE_MS}}}\n\
         mcp:\n  limits: {{request_timeout_ms: 5000}}\n\
         cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"reload:\"\n\
         plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
         bindings:\n  - name: main\n    path: /mcp\n    prefix: always\n",
        cdylib("mcpg_cluster_redis").display(),
    );
    if quiet {
        c = c.replacen(
            "cluster:",
            "observability:\n  logs: {level: warn}\ncluster:",
            1,
        );
    }
    if deny {
        c.push_str("    access: {default: allow, rules: [{deny: {tools: [fx__payload]}}]}\n");
    }
    c.push_str(&format!("    upstreams:\n      - {}\n", up("fx")));
    if fy {
        c.push_str(&format!("      - {}\n", up("fy")));
    }
    if gone {
        c.push_str(&format!(
            "  - name: gone\n    path: /gone\n    upstreams: [{{name: fz, stdio: {{command: \"{fixture}\", args: [\"--stdio\"], mode: shared, env: {{MCPG_E2E_UPSTREAM: fz}}}}}}]\n"
        ));
    }
    c
}

fn start() -> Cluster {
    let redis = RedisServer::start();
    let dir = TempDir::new("config-reload");
    // The file sits in a directory of its own, as a mounted ConfigMap does.
    std::fs::create_dir_all(dir.0.join("conf")).unwrap();
    let file = dir.0.join("conf/mcpg.yaml");
    std::fs::write(&file, config(&redis.url(), false, false, true)).unwrap();
    let started = start_replicas(&file, "reload", 2, |_, cmd| {
        cmd.env_remove("MCPG_LOG");
    });
    let mains = started.iter().map(|r| r.main).collect();
    let admins = started.iter().map(|r| r.admin).collect();
    let procs = started.into_iter().map(|r| r.proc).collect();
    Cluster {
        procs,
        mains,
        admins,
        file,
        dir,
        redis,
    }
}

fn status(admin: SocketAddr) -> Value {
    let (code, body) = http_get(admin, "/api/cluster/status").expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn generation(admin: SocketAddr) -> u64 {
    status(admin)["config"]["generation"].as_u64().unwrap()
}

/// Waits until every replica runs `generation`; how long that took from `since`.
fn applied_everywhere(c: &Cluster, generation_wanted: u64, since: Instant) -> Duration {
    let mut took = Duration::ZERO;
    let ok = wait_until(Duration::from_secs(30), || {
        let all = c.admins.iter().all(|a| generation(*a) >= generation_wanted);
        took = since.elapsed();
        all
    });
    assert!(
        ok,
        "generation {generation_wanted} not applied on every replica: {:?}",
        c.admins
            .iter()
            .map(|a| status(*a)["config"].clone())
            .collect::<Vec<_>>()
    );
    took
}

/// Replaces the file by writing a sibling and renaming it over (an atomic write).
fn replace_atomically(file: &Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A raw 2026-07-28 `tools/call` of `tool` on one replica directly: the JSON-RPC answer.
fn call(addr: SocketAddr, path: &str, tool: &str) -> (u16, Value) {
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":tool,"arguments":{"text":"direct","bytes":3},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let (code, _, text) = http(
        addr,
        "POST",
        path,
        &[
            MCP_JSON,
            MCP_ACCEPT,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", tool),
        ],
        body.to_string().as_bytes(),
    );
    (
        code,
        serde_json::from_str(&text).unwrap_or(json!({"raw": text})),
    )
}

/// A tool call that reached the upstream and succeeded.
fn succeeded(answer: &(u16, Value)) -> bool {
    answer.0 == 200 && answer.1["result"].is_object() && answer.1["result"]["isError"] != true
}

/// A continuous caller: the Python client in `mode` calling `tool` until the stop file.
struct Caller {
    child: Child,
    name: &'static str,
    /// Created by the client after its first call that succeeded.
    ready: PathBuf,
}

fn caller(url: &str, mode: &str, tool: &str, stop: &Path, name: &'static str) -> Caller {
    let ready = stop.with_file_name(format!("ready-{}", name.replace(['/', ' '], "-")));
    let child = Command::new(python())
        .arg(peers_script("reload_client.py"))
        .args([url, mode, tool])
        .arg(stop)
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Python client");
    Caller { child, name, ready }
}

/// Each call's (time in s since the epoch, ok, what failed), and how many notifications of
/// each method the client got.
fn finish(c: Caller) -> (Vec<(f64, bool, String)>, Value) {
    let out = c.child.wait_with_output().expect("the client ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{stdout}",
        c.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    eprintln!(
        "config_reload: {}: connected {} times",
        c.name,
        v["connects"].as_array().map_or(0, Vec::len)
    );
    let calls = v["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["t"].as_f64().unwrap(),
                c["ok"].as_bool().unwrap(),
                format!("{}{}", c["exception"].as_str().unwrap_or(""), c["text"]),
            )
        })
        .collect();
    (calls, v["notified"].clone())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn config_changes_apply_on_both_replicas_under_continuous_load_and_a_bad_file_changes_nothing() {
    let c = start();
    let redis = c.redis.url();
    let nginx = Nginx::start(&c.mains);
    let stop = c.dir.0.join("stop");
    let base = format!("http://{}", nginx.addr);
    let callers = vec![
        caller(
            &format!("{base}/mcp"),
            "legacy",
            "fx__echo",
            &stop,
            "legacy on /mcp",
        ),
        caller(
            &format!("{base}/mcp"),
            "2026-07-28",
            "fx__echo",
            &stop,
            "2026-07-28 on /mcp",
        ),
    ];
    let doomed = caller(
        &format!("{base}/gone"),
        "legacy",
        "echo",
        &stop,
        "legacy on /gone",
    );
    // Every replica runs the same config, and the fleet view says so.
    for a in &c.admins {
        let s = status(*a);
        assert_eq!(s["config"]["generation"], 1, "{s}");
        assert_eq!(s["fleet"]["distinct_digests"], 1, "{s}");
        assert_eq!(s["fleet"]["drift"], false, "{s}");
    }
    // Every client calls before the first change (Python takes seconds to start here).
    for cl in callers.iter().chain([&doomed]) {
        assert!(
            wait_until(Duration::from_secs(60), || cl.ready.exists()),
            "{} never made a call",
            cl.name
        );
    }
    for p in &c.procs {
        assert_eq!(
            children_with_env(p.child.id(), FZ).len(),
            1,
            "fz's shared child"
        );
    }
    std::thread::sleep(Duration::from_millis(500));

    // 1. An upstream added to `main`, by replacing the file atomically.
    let step1 = config(&redis, false, true, true);
    let since = Instant::now();
    replace_atomically(&c.file, &step1);
    let took = applied_everywhere(&c, 2, since);
    eprintln!(
        "config_reload: file replaced -> applied on both replicas in {took:?} (debounce {DEBOUNCE_MS} ms)"
    );
    for m in &c.mains {
        let a = call(*m, "/mcp", "fy__echo");
        assert!(succeeded(&a), "fy on {m}: {a:?}");
    }
    for a in &c.admins {
        let s = status(*a);
        assert_eq!(s["config"]["last_applied"]["trigger"], "file", "{s}");
    }
    std::thread::sleep(Duration::from_millis(1000));

    // 2. An access rule: `fx__payload` denied. SIGHUP to both replicas.
    for m in &c.mains {
        assert!(
            succeeded(&call(*m, "/mcp", "fx__payload")),
            "allowed before, on {m}"
        );
    }
    let step2 = config(&redis, true, true, true);
    std::fs::write(&c.file, &step2).unwrap();
    for p in &c.procs {
        p.signal("HUP");
    }
    applied_everywhere(&c, 3, Instant::now());
    for (m, a) in c.mains.iter().zip(&c.admins) {
        let denied = call(*m, "/mcp", "fx__payload");
        assert!(!succeeded(&denied), "denied now on {m}: {denied:?}");
        assert!(
            denied.1["error"].is_object() || denied.1["result"]["isError"] == true,
            "{denied:?}"
        );
        assert!(succeeded(&call(*m, "/mcp", "fx__echo")));
        let s = status(*a);
        assert_eq!(s["config"]["last_applied"]["trigger"], "signal", "{s}");
        assert_eq!(
            s["config"]["last_applied"]["changes"][0]["change"], "in_place",
            "{s}"
        );
    }
    std::thread::sleep(Duration::from_millis(1000));

    // 3. The binding `gone` removed, through the admin endpoint of each replica.
    let step3 = config(&redis, true, true, false);
    std::fs::write(&c.file, &step3).unwrap();
    let removed_at = now_s();
    for a in &c.admins {
        let (code, _, body) = http(*a, "POST", "/api/config/reload", &[], b"");
        let r: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(r["outcome"], "applied", "{body}");
        assert_eq!(r["trigger"], "admin", "{body}");
        assert_eq!(r["generation"], 4, "{body}");
        let changes = r["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 1, "only `gone` changed: {body}");
        assert_eq!(changes[0]["name"], "gone");
        assert_eq!(changes[0]["change"], "removed");
    }
    // The removed upstream's shared child stops with it, on each replica.
    for p in &c.procs {
        let pid = p.child.id();
        assert!(
            wait_until(Duration::from_secs(30), || children_with_env(pid, FZ)
                .is_empty()),
            "fz's child still runs under {pid}: {:?}",
            children_with_env(pid, FZ)
        );
    }
    for m in &c.mains {
        assert_eq!(call(*m, "/gone", "echo").0, 404, "no route any more on {m}");
        assert!(succeeded(&call(*m, "/mcp", "fx__echo")));
    }
    std::thread::sleep(Duration::from_millis(1000));

    // 4. An invalid file, written in place: refused on both, nothing changes, readiness stays.
    let rejected_before = metric_sum(&c.admins, "mcpg_config_reload_total{outcome=\"rejected\"}");
    let broken = step3.replace("    path: /mcp\n", "    path: 5\n    upstreamz: []\n");
    std::fs::write(&c.file, &broken).unwrap();
    let ok = wait_until(Duration::from_secs(30), || {
        c.admins
            .iter()
            .all(|a| status(*a)["config"]["last_error"].is_object())
    });
    assert!(ok, "the invalid file was not reported");
    for (m, a) in c.mains.iter().zip(&c.admins) {
        let s = status(*a);
        let e = &s["config"]["last_error"];
        assert_eq!(e["outcome"], "rejected");
        assert_eq!(s["config"]["generation"], 4, "nothing changed: {s}");
        let diags = e["diagnostics"].as_array().unwrap();
        let at = |path: &str| {
            diags
                .iter()
                .find(|d| d["path"] == path)
                .unwrap_or_else(|| panic!("no diagnostic at {path}: {e}"))
        };
        let path = at("bindings[0].path");
        assert!(path["line"].as_u64().unwrap() > 1 && path["column"].as_u64().unwrap() > 1);
        at("bindings[0].upstreamz");
        assert_eq!(http_get(*m, "/readyz").unwrap().0, 200, "still ready");
        assert!(
            succeeded(&call(*m, "/mcp", "fx__echo")),
            "still served on {m}"
        );
        assert!(
            !succeeded(&call(*m, "/mcp", "fx__payload")),
            "the rule still holds"
        );
    }
    let rejected = metric_sum(&c.admins, "mcpg_config_reload_total{outcome=\"rejected\"}");
    assert!(
        rejected > rejected_before,
        "mcpg_config_reload_total{{outcome=\"rejected\"}}"
    );
    std::thread::sleep(Duration::from_millis(1000));

    // 5. Fixed: the rule lifted again, through the file watch.
    let fixed = config(&redis, false, true, false);
    let since = Instant::now();
    replace_atomically(&c.file, &fixed);
    let took_fix = applied_everywhere(&c, 5, since);
    eprintln!("config_reload: fixed file -> applied on both replicas in {took_fix:?}");
    let digests: Vec<Value> = c
        .admins
        .iter()
        .map(|a| {
            let s = status(*a);
            assert!(s["config"]["last_error"].is_null(), "{s}");
            assert_eq!(s["fleet"]["drift"], false, "{s}");
            s["config"]["digest"].clone()
        })
        .collect();
    assert_eq!(digests[0], digests[1], "both run the same file");
    for m in &c.mains {
        assert!(
            succeeded(&call(*m, "/mcp", "fx__payload")),
            "allowed again on {m}"
        );
    }
    let (_, nodes) = http_get(c.admins[0], "/api/cluster/nodes").unwrap();
    let nodes: Value = serde_json::from_str(&nodes).unwrap();
    for p in nodes["peers"].as_array().unwrap() {
        assert_eq!(p["config"]["digest"], digests[0], "{nodes}");
        assert_eq!(p["config"]["generation"], 5, "{nodes}");
    }
    std::thread::sleep(Duration::from_millis(1000));

    std::fs::write(&stop, "").unwrap();
    let mut failed_total = 0;
    for cl in callers {
        let name = cl.name;
        let (calls, notified) = finish(cl);
        eprintln!("config_reload: {name}: notified {notified}");
        if name == "legacy on /mcp" {
            // Step 1 moved its session to `main`'s new upstreams: its client was told.
            assert!(
                notified["notifications/tools/list_changed"].as_u64() >= Some(1),
                "{name} got no tools/list_changed: {notified}"
            );
        }
        let failed: Vec<_> = calls.iter().filter(|(_, ok, _)| !ok).collect();
        eprintln!(
            "config_reload: {name}: {} calls, {} failed",
            calls.len(),
            failed.len()
        );
        assert!(calls.len() > 20, "{name} kept calling: {}", calls.len());
        failed_total += failed.len();
        assert!(
            failed.is_empty(),
            "{name}: calls failed across the reloads: {failed:?}"
        );
    }
    let (doomed_calls, _) = finish(doomed);
    let before_removal = doomed_calls.iter().filter(|(t, _, _)| *t < removed_at);
    let failed_before = before_removal.clone().filter(|(_, ok, _)| !ok).count();
    let failed_after = doomed_calls
        .iter()
        .filter(|(t, ok, _)| *t >= removed_at && !ok)
        .count();
    eprintln!(
        "config_reload: legacy on /gone: {} calls before its removal ({failed_before} failed), {failed_after} failed after it (by design)",
        before_removal.count()
    );
    assert_eq!(
        failed_before, 0,
        "the removed binding served until its removal"
    );
    assert!(failed_after > 0, "its client was told the binding is gone");
    assert_eq!(failed_total, 0);

    // The refusal reached the log as one line with every positioned diagnostic; the legacy
    // session of `main` was moved (handed over, claimed on the new binding) by step 1.
    let (mut moved, mut applied_lines) = (false, 0);
    for p in c.procs {
        p.signal("TERM");
        let (_, log) = p.wait(Duration::from_secs(60));
        moved |= log.contains("the binding's sessions move to its new upstreams");
        // The level went from info to warn with step 2: of the INFO lines saying a reload
        // applied, only step 1's was written.
        applied_lines += log.matches("\"config reload applied\"").count();
        assert!(
            log.contains("config reload: log level set"),
            "the new level was applied"
        );
        let line = log
            .lines()
            .find(|l| l.contains("config reload rejected"))
            .unwrap_or_else(|| panic!("no rejection logged:\n{log}"));
        assert!(
            line.contains("mcpg.yaml:") && line.contains("bindings[0].upstreamz"),
            "{line}"
        );
    }
    assert!(
        moved,
        "the legacy session of `main` moved to its new upstreams"
    );
    assert_eq!(
        applied_lines, 2,
        "one INFO line per replica, step 1's; none after `warn`"
    );
}

/// What marks the shared child of `gone`'s upstream in its environment.
const FZ: &str = "MCPG_E2E_UPSTREAM=fz";

/// The child processes of `pid` whose environment has `entry`.
fn children_with_env(pid: u32, entry: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so split after its `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(pid)
                && std::fs::read(format!("/proc/{child}/environ"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|kv| kv == entry.as_bytes())
        })
        .collect()
}

fn metric_sum(admins: &[SocketAddr], series: &str) -> u64 {
    admins
        .iter()
        .map(|a| {
            let (_, text) = http_get(*a, "/metrics").unwrap();
            text.lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .sum()
}

/// The alert rules `docs/reload.md` gives for config drift pass `promtool check rules`.
#[test]
fn the_drift_alert_rules_in_the_docs_pass_promtool() {
    let doc = std::fs::read_to_string(crate::harness::repo_root().join("docs/reload.md")).unwrap();
    let rules = doc
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/reload.md has a yaml block with the alert rules");
    assert!(rules.contains("mcpg_config_fleet_digests"), "{rules}");
    let dir = TempDir::new("reload-rules");
    let file = dir.write("rules.yml", rules);
    let out = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!(
            "promtool could not be run ({e}): run tools/install-test-deps (it installs Debian's \
             prometheus package, which has promtool)"
        ),
    };
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
