//! The PostgreSQL plugin against a real PostgreSQL (Debian's, started on a free port in a
//! temporary directory): the coordinator test kit through the `.so` mcpg loads, with several
//! instances acting as replicas; a boot failure that names the server without credentials;
//! a server restart after which state, leases and subscriptions are intact; and TLS against a
//! server that accepts nothing else, verified against `ca_cert`.

use std::sync::Arc;
use std::time::Duration;

use mcpg_backends::PostgresServer;
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::remote::LoadedPlugin;
use mcpg_plugin_testkit::{Harness, boot, built_library, run, state_and_leases_survive_restart};

const ID: &str = "dev.mcpg.cluster.postgres";

fn plugin() -> LoadedPlugin {
    built_library("libmcpg_cluster_postgres.so", ID)
}

struct PgHarness {
    plugin: LoadedPlugin,
    server: std::sync::Mutex<PostgresServer>,
}

impl PgHarness {
    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.server.lock().unwrap().url(),
            "schema": "tk",
            "peer_ttl_ms": 1000,
            "peer_refresh_interval_ms": 300,
        })
    }
}

#[async_trait::async_trait]
impl Harness for PgHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        boot(&self.plugin, self.config(), node_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn break_lease(&self, name: &str) -> bool {
        // Through another instance: the lease record is an entry of the same table.
        let c = self.instance("breaker").await;
        let key = mcpg_plugin_api::memory::lease_key(name);
        c.delete(&key, None).await.unwrap_or(false)
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_millis(1000)
    }

    async fn restart_backend(&self) -> bool {
        tokio::task::block_in_place(|| self.server.lock().unwrap().restart());
        true
    }

    /// What the table holds once a node's presence lapsed: no live row for it. Through another
    /// instance: the presence is an entry of the same table.
    async fn expire_presence(&self, node_id: &str) -> bool {
        let c = self.instance("expirer").await;
        let key = mcpg_plugin_api::memory::presence_key(node_id);
        c.delete(&key, None).await.unwrap_or(false)
    }

    async fn pause_backend(&self) -> bool {
        self.server.lock().unwrap().pause();
        true
    }

    async fn resume_backend(&self) {
        self.server.lock().unwrap().resume();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_library_passes_the_test_kit_against_real_postgres() {
    let harness = PgHarness {
        plugin: plugin(),
        server: std::sync::Mutex::new(PostgresServer::start()),
    };
    let report = run(&harness).await;
    report.assert_passed();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_failure_says_where_it_tried_without_credentials() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://mcpg:hunter2@127.0.0.1:{port}/db");
    let err = boot(&plugin(), serde_json::json!({ "url": url }), "a")
        .await
        .err()
        .expect("boot must fail");
    assert!(
        err.contains(&format!(
            "cannot reach postgres at postgres://127.0.0.1:{port}/db"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_leases_survive_a_postgres_restart() {
    let mut server = PostgresServer::start();
    let config = serde_json::json!({"url": server.url(), "schema": "restart"});
    state_and_leases_survive_restart(&plugin(), config, || server.restart()).await;
}

/// A CA, and a certificate for `127.0.0.1` it signed: (CA PEM, certificate PEM, key PEM).
fn pki() -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &*ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_and_verified_against_ca_cert() {
    let (ca, cert, key) = pki();
    let server = PostgresServer::start_tls_only(&cert, &key);
    let dir = std::env::temp_dir().join(format!("mcpg-pg-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let url = |mode: &str| format!("{}?sslmode={mode}", server.url());
    let p = plugin();

    // The server takes TLS connections only, so this works only over TLS, and only because
    // the CA in ca_cert vouches for the server's certificate.
    let config = serde_json::json!({"url": url("require"), "ca_cert": ca_file, "schema": "tls"});
    let c = boot(&p, config, "a")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    c.put("k", b"over tls".to_vec(), None).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().unwrap().value, b"over tls");

    // Without the CA the certificate is refused; without TLS the server refuses.
    let unknown = boot(&p, serde_json::json!({"url": url("require")}), "b").await;
    let err = unknown.err().expect("an unknown issuer must be refused");
    assert!(err.contains("cannot reach postgres at"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    let plain = serde_json::json!({"url": url("disable"), "ca_cert": ca_file});
    assert!(
        boot(&p, plain, "c").await.is_err(),
        "a plain connection was accepted"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// What boot's URL parser refuses, `validate` refuses at `/url`, without quoting the URL.
#[test]
fn the_url_is_checked_with_boots_parser() {
    use mcpg_cluster_postgres::PostgresPlugin;
    use mcpg_plugin_api::export::Plugin;
    for bad in [
        "postgres://u:hunter2@db:99999/x",
        "postgres://u:hunter2@db:54 32/x",
    ] {
        let d = PostgresPlugin::validate(&serde_json::json!({ "url": bad }));
        assert_eq!(d.len(), 1, "{bad}: {d:?}");
        assert_eq!(d[0].pointer, "/url");
        assert!(d[0].message.starts_with("invalid URL: "), "{d:?}");
        assert!(!d[0].message.contains("hunter2"), "{d:?}");
    }
    let ok = serde_json::json!({"url": "postgresql://u:p@db:5432/x?sslmode=require"});
    assert!(PostgresPlugin::validate(&ok).is_empty());
}

/// Lease safety under contention (issue 19): 3 replicas x 3 contenders, holder intervals on
/// the monotonic clock never overlap and fencing tokens strictly increase. 100 acquisitions in
/// CI; `MCPG_LEASE_SAFETY_N=10000` for the long run (docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_safety_under_contention() {
    let harness = PgHarness {
        plugin: plugin(),
        server: std::sync::Mutex::new(PostgresServer::start()),
    };
    let n = mcpg_plugin_testkit::lease_safety_runs(100);
    let found = mcpg_plugin_testkit::lease_safety(&harness, 3, 3, n).await;
    eprintln!("lease safety: {found:?}");
    found.assert_safe();
}

/// Lease safety across processes (issue 19): 3 contender processes × 3 contenders loading the
/// plugin `.so` as mcpg does, a holder SIGSTOPped for twice the TTL every 3 s, PostgreSQL
/// crashed (`SIGQUIT`) and restarted on its data directory every 10 s. No overlapping holders,
/// strictly increasing tokens, stale holders refused by the register. 150 acquisitions in CI;
/// the long run sets `MCPG_LEASE_SAFETY_N=10000` (docs/reliability.md).
#[test]
fn lease_safety_across_processes_with_paused_holders_and_restarts() {
    let mut server = PostgresServer::start();
    let plan = mcpg_plugin_testkit::processes::plan_from_env(150, Some(Duration::from_secs(10)));
    let found = mcpg_plugin_testkit::processes::lease_safety_processes(
        &mcpg_plugin_testkit::library_path("libmcpg_cluster_postgres.so"),
        ID,
        serde_json::json!({"url": server.url(), "schema": "lsp"}),
        &plan,
        || server.restart(),
    );
    eprintln!("lease safety across processes: {}", found.summary());
    found.assert_safe();
}
