//! HTTP/2 limits on the HTTPS listener, in-process against a real h2 client that misbehaves:
//! the announced stream limit, an oversized header list, and a rapid-reset flood.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use h2::Reason;
use h2::client::SendRequest;

use super::conn::{H2_MAX_PENDING_ACCEPT_RESETS, Limits};
use super::*;
use crate::tls::tests::Pki;
use crate::tls::{ServerCert, client_tls};

const STREAMS: u32 = 5;
const HEADER_LIST: u32 = 4096;

async fn serve(pki: &Pki) -> (Running, SocketAddr) {
    let cert = ServerCert::load("server.tls", &pki.write_leaf(7, 100)).unwrap();
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap()
        .with_security(Security {
            main_tls: Some(cert),
            limits: Limits {
                h2_max_concurrent_streams: STREAMS,
                h2_max_header_list: HEADER_LIST,
                ..Limits::default()
            },
            ..Security::default()
        });
    let addr = bound.main_addr().unwrap();
    (bound.start(Router::new(), Router::new()), addr)
}

/// An h2 connection over TLS (ALPN `h2`); its driver runs on its own task, whose result is
/// how the connection ended.
async fn connect(
    pki: &Pki,
    addr: SocketAddr,
) -> (
    SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
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
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    (send, tokio::spawn(conn))
}

fn get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("https://localhost:{}{path}", addr.port()))
        .body(())
        .unwrap()
}

async fn healthz(send: SendRequest<Bytes>, addr: SocketAddr) -> StatusCode {
    let mut send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(get(addr, "/healthz"), true).unwrap();
    resp.await.unwrap().status()
}

#[tokio::test]
async fn the_stream_limit_is_announced_and_oversized_header_lists_are_refused() {
    let pki = Pki::new("h2-limits");
    let (_running, addr) = serve(&pki).await;
    let (send, _conn) = connect(&pki, addr).await;
    // After one exchange the server's SETTINGS have arrived.
    assert_eq!(healthz(send.clone(), addr).await, StatusCode::OK);
    assert_eq!(send.current_max_send_streams(), STREAMS as usize);

    let mut big = get(addr, "/healthz");
    big.headers_mut().insert(
        "x-big",
        "a".repeat(2 * HEADER_LIST as usize).parse().unwrap(),
    );
    let mut s = send.clone().ready().await.unwrap();
    let (resp, _) = s.send_request(big, true).unwrap();
    match resp.await {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_remote() && e.is_reset(), "{e:?}"),
    }
    // Only that stream was refused: the connection serves on.
    assert_eq!(healthz(send, addr).await, StatusCode::OK);
}

#[tokio::test]
async fn a_rapid_reset_flood_closes_the_connection_and_spares_the_listener() {
    let pki = Pki::new("h2-reset");
    let (_running, addr) = serve(&pki).await;
    let (send, conn) = connect(&pki, addr).await;
    assert_eq!(healthz(send.clone(), addr).await, StatusCode::OK);

    // Requests opened and cancelled at once, far more than the server lets pile up. On this
    // single-threaded runtime nothing is written until the loop yields, so they reach the
    // server together, before it accepted any.
    let mut send = send;
    for _ in 0..(20 * H2_MAX_PENDING_ACCEPT_RESETS) {
        let Ok(ready) = send.clone().ready().await else {
            break;
        };
        send = ready;
        let Ok((_resp, mut stream)) = send.send_request(get(addr, "/healthz"), false) else {
            break;
        };
        stream.send_reset(Reason::CANCEL);
    }
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), conn)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    let e = ended.expect_err("the connection ends with an error");
    assert!(e.is_go_away(), "{e:?}");
    assert_eq!(e.reason(), Some(Reason::ENHANCE_YOUR_CALM), "{e:?}");

    // Everyone else is still served.
    let (fresh, _conn) = connect(&pki, addr).await;
    assert_eq!(healthz(fresh, addr).await, StatusCode::OK);
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_a_goaway() {
    let pki = Pki::new("h2-idle");
    let cert = ServerCert::load("server.tls", &pki.write_leaf(8, 100)).unwrap();
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap()
        .with_security(Security {
            main_tls: Some(cert),
            limits: Limits {
                idle: std::time::Duration::from_millis(300),
                ..Limits::default()
            },
            ..Security::default()
        });
    let addr = bound.main_addr().unwrap();
    let _running = bound.start(Router::new(), Router::new());
    let (send, conn) = connect(&pki, addr).await;
    assert_eq!(healthz(send.clone(), addr).await, StatusCode::OK);
    // Held open by nothing but the client, the connection is ended by the server well before
    // the header-read timeout (10 s by default) could have done it.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), conn)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    if let Err(e) = ended {
        assert!(
            e.is_go_away() && e.reason() == Some(Reason::NO_ERROR),
            "{e:?}"
        );
    }
}
