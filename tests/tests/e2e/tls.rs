//! HTTPS end to end: two replicas on Redis serve `listen` over TLS with a certificate from a
//! private CA (made by the test); the real Python `mcp` client trusts that CA and works through
//! one replica, and a session made on one replica is served through the other, the forward
//! between them going over HTTPS checked against `server.forwarding_ca_file`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::harness::{Proc, TempDir, bin, cdylib, free_port, wait_until};
use crate::peers::{py_client_env, python, time_stdio};

/// A CA and a certificate for `127.0.0.1` and `localhost` signed by it, written to `dir`.
fn pki(dir: &TempDir) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mcpg e2e CA");
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &*ca).unwrap();
    dir.write("ca.pem", &ca.pem());
    dir.write("tls.crt", &cert.pem());
    dir.write("tls.key", &key.serialize_pem());
}

/// One HTTPS request through Python's own TLS stack (trusting only `ca`): status, the
/// `Mcp-Session-Id` header if any, body.
fn https(addr: SocketAddr, ca: &Path, sid: Option<&str>, body: &Value) -> (u16, String, String) {
    const SCRIPT: &str = r#"
import http.client, json, ssl, sys
host, port, ca, sid, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = http.client.HTTPSConnection(host, port, context=ssl.create_default_context(cafile=ca), timeout=20)
h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
if sid:
    h["Mcp-Session-Id"] = sid
c.request("POST", "/mcp", body=body, headers=h)
r = c.getresponse()
print(json.dumps([r.status, r.getheader("mcp-session-id") or "", r.read().decode()]))
"#;
    let out = Command::new(python())
        .args(["-c", SCRIPT, "127.0.0.1", &addr.port().to_string()])
        .arg(ca)
        .args([sid.unwrap_or(""), &body.to_string()])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "https request failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v[0].as_u64().unwrap() as u16,
        v[1].as_str().unwrap().to_owned(),
        v[2].as_str().unwrap().to_owned(),
    )
}

#[test]
fn replicas_serve_and_forward_over_https_with_a_private_ca() {
    let dir = TempDir::new("tls-e2e");
    pki(&dir);
    let redis = RedisServer::start();
    let config = dir.write(
        "mcpg.yaml",
        &format!(
            "server:\n  tls: {{cert_file: tls.crt, key_file: tls.key}}\n  forwarding_ca_file: ca.pem\n\
             cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"tls:\"\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             bindings:\n  - name: time\n    path: /mcp\n    upstreams: [{}]\n",
            redis.url(),
            cdylib("mcpg_cluster_redis").display(),
            time_stdio("")
        ),
    );
    let ca = dir.0.join("ca.pem");
    let start = |id: &str| {
        let port = free_port();
        let proc = Proc::spawn(
            Command::new(bin("mcpg"))
                .arg("--config")
                .arg(&config)
                .args(["--node-id", id])
                .args(["--listen", &format!("127.0.0.1:{port}")]),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready once it answers over TLS (the plain-HTTP probe helpers do not speak it).
        assert!(
            wait_until(Duration::from_secs(30), || {
                Command::new(python())
                    .args([
                        "-c",
                        "import http.client,ssl,sys; c=http.client.HTTPSConnection('127.0.0.1', int(sys.argv[1]), context=ssl.create_default_context(cafile=sys.argv[2]), timeout=2); c.request('GET','/readyz'); sys.exit(0 if c.getresponse().status==200 else 1)",
                        &port.to_string(),
                    ])
                    .arg(&ca)
                    .status()
                    .is_ok_and(|s| s.success())
            }),
            "{id} never became ready over HTTPS"
        );
        (proc, addr)
    };
    let (_a, a) = start("tls-a");
    let (_b, b) = start("tls-b");

    // The real client, trusting the private CA.
    let r = py_client_env(
        &format!("https://127.0.0.1:{}/mcp", a.port()),
        "legacy",
        json!({"calls": [{"name": "get_current_time", "arguments": {"timezone": "UTC"}}]}),
        &[("MCPG_TEST_CA", ca.to_str().unwrap())],
    );
    assert!(r["tools"].to_string().contains("get_current_time"), "{r}");
    assert_eq!(r["calls"][0]["is_error"], false, "{r}");

    // A session made on A, used through B: forwarded A-ward over HTTPS.
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let (status, sid, body) = https(a, &ca, None, &init);
    assert_eq!(status, 200, "{body}");
    assert!(!sid.is_empty());
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_current_time","arguments":{"timezone":"UTC"}}});
    let (status, _, body) = https(b, &ca, Some(&sid), &call);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("datetime"), "{body}");

    // Plain HTTP to a TLS listener is not served.
    let plain = std::panic::catch_unwind(|| crate::harness::http_get(a, "/readyz"));
    assert!(
        !matches!(plain, Ok(Ok((200, _)))),
        "plain HTTP must not be answered on a TLS listener"
    );
}
