//! A replica's life in a cluster, on a real Redis: a draining replica hands its sessions over
//! (no waiting for lease expiry), a second live instance of one node id is refused while a
//! quick restart of the same id is not, `--wait-for-cluster` waits for a backend that is not
//! up yet (and without it `mcpg` exits saying where it tried), and `/readyz` follows the
//! coordinator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::harness::{
    MCP_ACCEPT as ACCEPT, MCP_JSON as JSON, Proc, TempDir, cdylib, get_json, http, http_get,
    legacy_session, replica_command, session_post, wait_until,
};
use crate::peers::{peers_script, python};

/// One config file for every replica of a test; `owner_ttl_ms` as given.
fn config(dir: &TempDir, redis: &str, owner_ttl_ms: u64) -> std::path::PathBuf {
    dir.write(
        "mcpg.yaml",
        &format!(
            "server:\n  drain_timeout_ms: 3000\n\
             cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"life:\"\n  lease_ttl_ms: 2000\n  peer_ttl_ms: 2000\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             mcp:\n  sessions: {{owner_ttl_ms: {owner_ttl_ms}}}\n\
             bindings:\n  - name: echo\n    path: /echo\n    upstreams: [{{name: echo, stdio: {{command: {:?}, args: [{:?}]}}}}]\n",
            cdylib("mcpg_cluster_redis").display(),
            python().display().to_string(),
            peers_script("echo_upstream.py").display().to_string()
        ),
    )
}

struct Node {
    proc: Proc,
    main: SocketAddr,
    admin: SocketAddr,
}

fn start(config: &std::path::Path, id: &str, extra: &[&str]) -> Node {
    let (mut cmd, main, admin) = replica_command(config, id);
    Node {
        proc: Proc::spawn(cmd.args(extra)),
        main,
        admin,
    }
}

fn ready(n: &Node) -> bool {
    matches!(http_get(n.main, "/readyz"), Ok((200, _)))
}

fn assert_ready(n: &Node, what: &str) {
    assert!(
        crate::harness::wait_ready(n.main, Duration::from_secs(30)),
        "{what} never became ready"
    );
}

fn initialize(addr: SocketAddr) -> String {
    legacy_session(addr, "/echo")
}

fn sleep_call(addr: SocketAddr, sid: &str) -> (u16, Value) {
    let (status, _, body) = http(
        addr,
        "POST",
        "/echo",
        &[JSON, ACCEPT, ("Mcp-Session-Id", sid)],
        br#"{"jsonrpc":"2.0","id":1,"method":"echo/sleep","params":{"ms":1}}"#,
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// SIGTERM hands every session over at once: with a one-minute ownership lease, the other
/// replica serves the session within seconds, and the draining replica exits 0.
#[test]
fn a_draining_replica_hands_its_sessions_over() {
    let redis = RedisServer::start();
    let dir = TempDir::new("life-drain");
    let f = config(&dir, &redis.url(), 60_000);
    let a = start(&f, "drain-a", &[]);
    let b = start(&f, "drain-b", &[]);
    assert_ready(&a, "drain-a");
    assert_ready(&b, "drain-b");
    let sid = initialize(a.main);
    let (status, r) = sleep_call(b.main, &sid);
    assert_eq!(status, 200, "{r}");
    let owner = |admin| {
        get_json(admin, &format!("/api/cluster/sessions/{sid}")).map(|v| v["owner"].clone())
    };
    assert_eq!(owner(b.admin), Some(json!("drain-a")));

    let started = Instant::now();
    a.proc.signal("TERM");
    let (code, stderr) = a.proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(stderr.contains("session handed over"), "{stderr}");
    let (status, r) = sleep_call(b.main, &sid);
    assert_eq!(status, 200, "{r}");
    assert!(r["result"]["pid"].is_number(), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "served only after the ownership lease would have expired"
    );
    assert_eq!(owner(b.admin), Some(json!("drain-b")));
}

/// Two live processes with one node id: the second is refused. A process restarting with the
/// id of one that died is not (it waits out the dead one's lease).
#[test]
fn a_node_id_in_use_is_refused_but_a_restart_is_not() {
    let redis = RedisServer::start();
    let dir = TempDir::new("life-dup");
    let f = config(&dir, &redis.url(), 1500);
    let first = start(&f, "same-id", &[]);
    assert_ready(&first, "the first instance");
    let second = start(&f, "same-id", &[]);
    let (code, stderr) = second.proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another live mcpg instance is using node id `same-id`"),
        "{stderr}"
    );
    assert!(ready(&first), "the first instance was disturbed");

    // The first dies without a goodbye; a restart with its id starts once its lease expires.
    first.proc.signal("KILL");
    drop(first);
    let restarted = start(&f, "same-id", &[]);
    assert_ready(&restarted, "the restarted instance");
}

/// Without `--wait-for-cluster`, an unreachable backend at start is fatal and the message
/// names it; with it, the replica runs unready until the backend comes, then becomes ready.
/// `/readyz` then follows the coordinator's health.
#[test]
fn a_backend_that_is_not_up_yet_is_waited_for_only_when_asked() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let dir = TempDir::new("life-wait");
    let f = config(&dir, &url, 2000);

    let eager = start(&f, "eager", &[]);
    let (code, stderr) = eager.proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&url), "says where it tried: {stderr}");

    let patient = start(&f, "patient", &["--wait-for-cluster"]);
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            http_get(patient.main, "/healthz"),
            Ok((200, _))
        )),
        "not alive while waiting"
    );
    let (status, body) = http_get(patient.main, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    let (status, _) = http_get(patient.main, "/echo").unwrap();
    assert_eq!(status, 503, "MCP answers 503 while joining");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        patient.proc.child.id() > 0 && !ready(&patient),
        "became ready without a backend"
    );
    redis.restart();
    assert_ready(&patient, "the waiting replica");
    let sid = initialize(patient.main);
    assert_eq!(sleep_call(patient.main, &sid).0, 200);

    // The backend goes away: not ready; it comes back: ready again.
    redis.kill();
    assert!(
        wait_until(Duration::from_secs(15), || !ready(&patient)),
        "still ready with the coordinator gone"
    );
    let (_, body) = http_get(patient.main, "/readyz").unwrap();
    assert!(body.contains("coordinator"), "{body}");
    redis.restart();
    assert!(
        crate::harness::wait_ready(patient.main, Duration::from_secs(20)),
        "not ready again after the coordinator came back"
    );
    let _ = patient.admin;
}

/// A session whose owner died and that no client came back for is ended once, cluster-wide,
/// after its idle TTL: a surviving replica claims it, deletes its upstream HTTP session and
/// removes its record.
#[test]
fn sessions_left_idle_by_a_dead_replica_are_cleaned_up_once() {
    let redis = RedisServer::start();
    let everything = crate::peers::everything_http();
    let dir = TempDir::new("life-sweep");
    let f = dir.write(
        "mcpg.yaml",
        &format!(
            "cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"sweep:\"\n  lease_ttl_ms: 2000\n  peer_ttl_ms: 2000\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             mcp:\n  sessions: {{owner_ttl_ms: 1500, idle_ttl_ms: 2000}}\n\
             bindings:\n  - name: ev\n    path: /ev\n    upstreams: [{{name: everything, http: {{url: \"{}\"}}}}]\n",
            redis.url(),
            cdylib("mcpg_cluster_redis").display(),
            everything.url
        ),
    );
    let a = start(&f, "sweep-a", &[]);
    let b = start(&f, "sweep-b", &[]);
    assert_ready(&a, "sweep-a");
    assert_ready(&b, "sweep-b");
    let sid = legacy_session(a.main, "/ev");
    let record = get_json(b.admin, &format!("/api/cluster/sessions/{sid}")).unwrap();
    assert_eq!(
        record["upstream_sessions"],
        json!(["everything"]),
        "{record}"
    );

    a.proc.signal("KILL");
    drop(a);
    assert!(
        wait_until(Duration::from_secs(20), || http_get(
            b.admin,
            &format!("/api/cluster/sessions/{sid}")
        )
        .is_ok_and(|(s, _)| s == 404)),
        "the abandoned session was never cleaned up"
    );
    b.proc.signal("TERM");
    let (code, stderr) = b.proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{stderr}");
    let swept: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("idle session of a departed replica cleaned up"))
        .collect();
    assert_eq!(swept.len(), 1, "{stderr}");
    assert!(swept[0].contains(&sid), "{}", swept[0]);
    assert!(
        swept[0].contains("\"upstream_sessions_closed\":1"),
        "the upstream session was not deleted: {}",
        swept[0]
    );
}

/// A legacy session in front of an upstream spoken to in 2026-07-28 only keeps what mcpg holds
/// for it (the client's log level, its resource subscriptions, watched by a listen) in its
/// record, so the replica taking it over after the owner is killed stamps the same level and
/// watches the same resources: an update triggered after the takeover reaches the client's
/// GET stream, and debug logs still reach it.
#[test]
fn a_bridged_session_keeps_its_log_level_and_subscriptions_across_a_takeover() {
    let redis = RedisServer::start();
    let (_fixture, fixture_url) = crate::peers::conformance_fixture();
    let dir = TempDir::new("life-bridged");
    let f = dir.write(
        "mcpg.yaml",
        &format!(
            "cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"bridged:\"\n  lease_ttl_ms: 2000\n  peer_ttl_ms: 2000\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             mcp:\n  sessions: {{owner_ttl_ms: 1500}}\n\
             bindings:\n  - name: cf\n    path: /cf\n    upstreams: [{{name: cf, http: {{url: \"{fixture_url}\", protocol: modern}}}}]\n",
            redis.url(),
            cdylib("mcpg_cluster_redis").display(),
        ),
    );
    let a = start(&f, "bridged-a", &[]);
    let b = start(&f, "bridged-b", &[]);
    assert_ready(&a, "bridged-a");
    assert_ready(&b, "bridged-b");
    let sid = legacy_session(a.main, "/cf");
    let post = |addr: SocketAddr, body: Value| session_post(addr, "/cf", &sid, &body);
    for (i, (method, params)) in [
        ("logging/setLevel", json!({"level": "debug"})),
        (
            "resources/subscribe",
            json!({"uri": "test://watched-resource"}),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, text) = post(
            a.main,
            json!({"jsonrpc":"2.0","id":i + 1,"method":method,"params":params}),
        );
        assert_eq!(status, 200, "{method}: {text}");
        assert!(text.contains("\"result\""), "{method}: {text}");
    }
    let record = get_json(b.admin, &format!("/api/cluster/sessions/{sid}")).unwrap();
    assert_eq!(record["log_level"], "debug", "{record}");
    assert_eq!(
        record["subscriptions"],
        json!({"cf": ["test://watched-resource"]}),
        "{record}"
    );

    a.proc.signal("KILL");
    drop(a);
    // The next request (to b) waits out a's ownership lease and takes the session over.
    let (status, text) = post(
        b.main,
        json!({"jsonrpc":"2.0","id":10,"method":"tools/list"}),
    );
    assert_eq!(status, 200, "{text}");
    let record = get_json(b.admin, &format!("/api/cluster/sessions/{sid}")).unwrap();
    assert_eq!(record["owner"], "bridged-b", "{record}");
    // Debug logs still reach the client: the level was taken over.
    let (status, text) = post(
        b.main,
        json!({"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"test_logging_tool","arguments":{}}}),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Logging tool: debug entry"), "{text}");
    // The subscription was taken over: an update reaches the GET stream.
    std::thread::sleep(Duration::from_millis(1000));
    let stream = {
        let sid = sid.clone();
        let main = b.main;
        std::thread::spawn(move || {
            crate::harness::http_for(
                main,
                "GET",
                "/cf",
                &[
                    ("Accept", "text/event-stream"),
                    ("Mcp-Session-Id", sid.as_str()),
                ],
                b"",
                Duration::from_secs(3),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (status, text) = post(
        b.main,
        json!({"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"test_trigger_resource_update","arguments":{}}}),
    );
    assert_eq!(status, 200, "{text}");
    let (status, _, events) = stream.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        events.contains("notifications/resources/updated")
            && events.contains("test://watched-resource"),
        "no update after the takeover: {events}"
    );
}
