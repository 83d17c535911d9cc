//! The HTTPS listeners end to end in-process: real certificates (rcgen), real TLS clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Version};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::*;
use crate::tls::tests::Pki;
use crate::tls::{ServerCert, client_tls};

const TOKEN: &str = "an-admin-token-of-some-length";

fn routes(entered: Arc<tokio::sync::Notify>) -> Router {
    Router::new()
        .route(
            "/host",
            get(|h: HeaderMap| async move {
                h.get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("<none>")
                    .to_owned()
            }),
        )
        .route(
            "/slow",
            get(move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
}

async fn serve(cert: ServerCert) -> (Running, SocketAddr) {
    serve_with(cert, Default::default()).await
}

async fn serve_with(cert: ServerCert, entered: Arc<tokio::sync::Notify>) -> (Running, SocketAddr) {
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap()
        .with_security(Security {
            main_tls: Some(cert),
            admin_tls: None,
            admin_token: Some(AdminToken::new(TOKEN)),
            ..Security::default()
        });
    let addr = bound.main_addr().unwrap();
    let admin = Router::new().route("/api/cluster/status", get(|| async { "status" }));
    (bound.start(routes(entered), admin), addr)
}

fn client(ca: Option<&Path>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(ca).unwrap())
        .build()
        .unwrap()
}

/// Connects anew and returns the serial (hex) of the certificate the server presented.
async fn served_serial(addr: SocketAddr, ca: &Path) -> Result<String, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(Some(ca)).unwrap()));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await?;
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    Ok(crate::tls::tests::serial(leaf))
}

/// Both CAs in one PEM file, so one client can see which certificate is served.
fn both(a: &Pki, b: &Pki) -> std::path::PathBuf {
    let path = a.dir.join("both.pem");
    let mut pem = std::fs::read_to_string(a.ca_file()).unwrap();
    pem.push_str(&std::fs::read_to_string(b.ca_file()).unwrap());
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn https_with_the_ca_answers_and_without_it_fails() {
    let pki = Pki::new("serve");
    let cert = ServerCert::load("server.tls", &pki.write_leaf(1, 100)).unwrap();
    let (running, addr) = serve(cert).await;

    let ok = client(Some(&pki.ca_file()));
    let r = ok
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    // By name as well as by address.
    let r = ok
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The platform's roots alone do not know the test CA.
    let e = client(None)
        .get(format!("https://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap_err();
    assert!(
        crate::errors::error_chain(&e).contains("certificate"),
        "{e:?}"
    );

    // Plain HTTP to the HTTPS port gets nothing served.
    let plain = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(None).unwrap())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");

    // The admin guard applies on the HTTPS listener too.
    let url = format!("https://127.0.0.1:{}/api/cluster/status", addr.port());
    let r = ok.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = ok.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    assert!(
        running
            .shutdown(Duration::ZERO, Duration::from_secs(5))
            .await
    );
}

#[tokio::test]
async fn http2_is_negotiated_and_host_comes_from_the_authority() {
    let pki = Pki::new("h2");
    let cert = ServerCert::load("server.tls", &pki.write_leaf(2, 100)).unwrap();
    let (running, addr) = serve(cert).await;

    let mut config = client_tls(Some(&pki.ca_file())).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (path, want) in [
        ("/healthz", "ok\n".to_owned()),
        ("/host", format!("localhost:{}", addr.port())),
    ] {
        let req = hyper::Request::get(format!("https://localhost:{}{path}", addr.port()))
            .body(axum::body::Body::empty())
            .unwrap();
        let r = send.send_request(req).await.unwrap();
        assert_eq!(r.version(), Version::HTTP_2);
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(axum::body::Body::new(r.into_body()), 1 << 16)
            .await
            .unwrap();
        assert_eq!(body, want.as_bytes(), "{path}");
    }
    drop(send);

    // HTTP/1.1 keeps its own Host.
    let r = client(Some(&pki.ca_file()))
        .get(format!("https://localhost:{}/host", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), Version::HTTP_11);
    assert_eq!(
        r.text().await.unwrap(),
        format!("localhost:{}", addr.port())
    );

    assert!(
        running
            .shutdown(Duration::ZERO, Duration::from_secs(5))
            .await
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_garbage_is_not() {
    let old_ca = Pki::new("reload-old");
    let new_ca = Pki::new("reload-new");
    let cfg = old_ca.write_leaf(0x0a, 100);
    let cert = ServerCert::load("server.tls", &cfg).unwrap();
    let (running, addr) = serve(cert).await;
    let either = both(&old_ca, &new_ca);
    assert_eq!(served_serial(addr, &either).await.unwrap(), "0a");

    // A broken replacement keeps the old certificate.
    std::fs::write(&cfg.cert_file, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_serial(addr, &either).await.unwrap(), "0a");

    // A kept-alive connection from before the renewal, to show it is not cut.
    let kept = client(Some(&old_ca.ca_file()));
    let url = format!("https://localhost:{}/healthz", addr.port());
    assert_eq!(kept.get(&url).send().await.unwrap().status(), 200);

    // A new pair from another CA: new connections get it.
    let (c, k) = new_ca.leaf(0x0b);
    std::fs::write(&cfg.key_file, k).unwrap();
    std::fs::write(&cfg.cert_file, c).unwrap();
    let mut tries = 0;
    while served_serial(addr, &either).await.unwrap() != "0b" {
        tries += 1;
        assert!(tries < 200, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client(Some(&new_ca.ca_file()))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let e = client(Some(&old_ca.ca_file())).get(&url).send().await;
    assert!(e.is_err(), "a client trusting only the old CA: {e:?}");
    assert_eq!(kept.get(&url).send().await.unwrap().status(), 200);

    assert!(
        running
            .shutdown(Duration::ZERO, Duration::from_secs(5))
            .await
    );
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_others_and_shutdown_drains() {
    let pki = Pki::new("drain");
    let cert = ServerCert::load("server.tls", &pki.write_leaf(3, 100)).unwrap();
    let entered = Arc::new(tokio::sync::Notify::new());
    let (running, addr) = serve_with(cert, entered.clone()).await;
    // Connects and never sends a ClientHello.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();

    let c = client(Some(&pki.ca_file()));
    let r = c
        .get(format!("https://localhost:{}/healthz", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let slow = tokio::spawn({
        let url = format!("https://localhost:{}/slow", addr.port());
        async move { c.get(url).send().await?.text().await }
    });
    entered.notified().await;
    assert!(
        running
            .shutdown(Duration::ZERO, Duration::from_secs(5))
            .await
    );
    assert_eq!(slow.await.unwrap().unwrap(), "done");
    // Stopped accepting.
    assert!(
        client(Some(&pki.ca_file()))
            .get(format!("https://localhost:{}/healthz", addr.port()))
            .send()
            .await
            .is_err()
    );
}

#[test]
fn start_up_fails_naming_the_missing_key_file() {
    let pki = Pki::new("startup");
    let mut tls = pki.write_leaf(4, 100);
    tls.key_file = pki.dir.join("absent.key");
    let s = crate::config::model::ServerConfig {
        admin_tls: Some(tls),
        ..Default::default()
    };
    let e = Security::from_config(&s).unwrap_err().to_string();
    assert!(e.starts_with("server.admin_tls.key_file: "), "{e}");
    assert!(e.contains("absent.key"), "{e}");
}

#[tokio::test]
async fn the_upstream_client_trusts_its_ca_file() {
    let pki = Pki::new("upstream");
    let other = Pki::new("upstream-other");
    let cert = ServerCert::load("server.tls", &pki.write_leaf(5, 100)).unwrap();
    let (running, addr) = serve(cert).await;
    let url = format!("https://localhost:{}/healthz", addr.port());

    let get = |c: crate::mcp::upstream::http::Client| {
        let uri: http::Uri = url.parse().unwrap();
        async move { c.get(uri).await }
    };
    let c = crate::mcp::upstream::http::client(Duration::from_secs(5), Some(&pki.ca_file()));
    assert_eq!(get(c).await.unwrap().status(), StatusCode::OK);
    let c = crate::mcp::upstream::http::client(Duration::from_secs(5), Some(&other.ca_file()));
    let refused = get(c).await.expect_err("an unknown CA is refused");
    // Refused in the handshake: nothing was sent, which a pool may retry elsewhere.
    assert!(refused.is_connect(), "{refused:?}");

    assert!(
        running
            .shutdown(Duration::ZERO, Duration::from_secs(5))
            .await
    );
}
