//! An owner paused past its ownership TTL (SIGSTOP, then SIGCONT), on a real Redis with two
//! real replicas and a stdio upstream that answers with its process id and a per-child
//! counter: a request sent to the other replica meanwhile is not stuck behind the hung owner
//! (its lease expires, the session is taken over, a new child counts from 1), and none of the
//! requests that waited in the paused owner's socket runs on its stale child after SIGCONT —
//! each is refused (503, or a JSON-RPC error saying it was not run) or served by the new owner.
//! The requests are sent only once every thread of the owner has stopped.

use std::net::SocketAddr;
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::harness::{TempDir, cdylib, legacy_session, session_post, start_agreeing_replicas};
use crate::peers::python;

/// A stdio MCP server whose one tool answers `<pid>:<n>`, n counting this child's calls.
const COUNTER: &str = r#"
import json, os, sys
n = 0
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    meth = m.get("method")
    if meth == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "counter", "version": "0"}}
    elif meth == "tools/list":
        r = {"tools": [{"name": "count", "inputSchema": {"type": "object"}}]}
    elif meth == "tools/call":
        n += 1
        r = {"content": [{"type": "text", "text": "%d:%d" % (os.getpid(), n)}]}
    else:
        r = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}) + "\n")
    sys.stdout.flush()
"#;

fn config(redis: &str, script: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"e2e-ha:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
         plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
         mcp:\n  sessions: {{owner_ttl_ms: 2000}}\n\
         bindings: [{{name: c, path: /c, upstreams: [{{name: counter, stdio: {{command: {:?}, args: [{:?}]}}}}]}}]\n",
        cdylib("mcpg_cluster_redis").display(),
        python().display().to_string(),
        script,
    )
}

fn count(i: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "count", "arguments": {}}})
}

/// `(status, Some("<pid>:<n>"))` for an answered call, `(status, None)` otherwise.
fn call(addr: SocketAddr, sid: &str, i: u64) -> (u16, Option<String>, String) {
    let (status, body) = session_post(addr, "/c", sid, &count(i));
    let text = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
        v["result"]["content"][0]["text"]
            .as_str()
            .map(str::to_owned)
    });
    (status, text, body)
}

fn pid(answer: &str) -> &str {
    answer.split(':').next().unwrap()
}

#[test]
fn requests_queued_at_a_paused_owner_never_run_on_its_stale_child() {
    let redis = RedisServer::start();
    let dir = TempDir::new("ha-pause-script");
    let script = dir.write("counter.py", COUNTER).display().to_string();
    let (_dir, replicas, _) = start_agreeing_replicas("ha-pause", &["ha-a", "ha-b"], |l, a| {
        config(&redis.url(), &script, l, a)
    });
    let (a, b) = (&replicas[0], &replicas[1]);
    let sid = legacy_session(a.main, "/c");
    let (status, first, body) = call(a.main, &sid, 1);
    assert_eq!(status, 200, "{body}");
    let first = first.expect("a count");
    assert!(first.ends_with(":1"), "{first}");
    let stale = pid(&first).to_owned();

    a.proc.stop();
    // Requests that wait in the paused owner's socket.
    let queued: Vec<_> = (0..3)
        .map(|i| {
            let (addr, sid) = (a.main, sid.clone());
            std::thread::spawn(move || call(addr, &sid, 100 + i))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The other replica forwards to the hung owner, gives up once its lease is gone, and takes
    // the session over. The forwarded request itself is not run again (the owner took it and
    // may have run it): the client is told so; its next request is served by the new owner.
    let (status, _, body) = call(b.main, &sid, 2);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not run again"), "{body}");
    let (status, taken, body) = call(b.main, &sid, 2);
    assert_eq!(status, 200, "{body}");
    let taken = taken.expect("a count");
    assert_ne!(pid(&taken), stale, "served by a new child: {taken}");
    assert!(taken.ends_with(":1"), "a new child counts from 1: {taken}");

    a.proc.signal("CONT");
    let mut refused = 0;
    let mut wrong = Vec::new();
    for q in queued {
        let (status, text, body) = q.join().unwrap();
        match text {
            Some(t) if pid(&t) == stale => wrong.push(format!(
                "a queued request ran on the paused owner's stale child: {t}"
            )),
            Some(_) => {}
            // Refused before it reached an upstream: 503, or (when the fence, the last check
            // before the upstream, refuses it) a JSON-RPC error saying it was not run.
            None if status == 503 || body.contains("the request was not run") => refused += 1,
            None => wrong.push(format!("a queued request got {status}: {body}")),
        }
    }
    if !wrong.is_empty() {
        panic!(
            "{}\n--- {} ---\n{}\n--- {} ---\n{}",
            wrong.join("\n"),
            a.id,
            a.proc.stderr_so_far(),
            b.id,
            b.proc.stderr_so_far()
        );
    }
    // The new owner's child carries on.
    let (status, after, body) = call(b.main, &sid, 3);
    assert_eq!(status, 200, "{body}");
    let after = after.expect("a count");
    assert_ne!(pid(&after), stale, "{after}");
    eprintln!(
        "[ha-pause] first {first}, taken over {taken}, after {after}; {refused} of 3 queued requests refused, the rest served by the new owner"
    );
}
