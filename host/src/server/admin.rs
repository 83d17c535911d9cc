//! The admin token guard: with `server.admin_token` set, the admin API (`/api/…`) and
//! `/metrics` answer only requests carrying `Authorization: Bearer <admin_token>`; without
//! one they are served only on a loopback listener (elsewhere they answer `403`).
//!
//! The guard wraps a listener's whole composed router and decides by path, so it covers admin
//! routes wherever they are mounted (the control plane's, the data plane's
//! `/api/cluster/sessions/{id}`, routes filled in late) and on either listener. Probes
//! (`/healthz`, `/readyz`), MCP bindings and `/mcpg/meta` are not admin paths.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The admin bearer token, kept only as its SHA-256 so that comparing digests takes the same
/// time whatever the length of the presented token.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(Arc::new(Sha256::digest(token.as_bytes()).into()))
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&*self.0).into()
    }
}

/// Whether `path` belongs to the admin surface. Matched on the raw path as the router sees it,
/// so no spelling reaches an admin route without also matching here.
pub fn is_admin_path(path: &str) -> bool {
    path == "/api"
        || path.starts_with("/api/")
        || path == "/metrics"
        || path.starts_with("/metrics/")
}

/// Wraps `router` in the guard when a token is configured.
pub fn guard(router: Router, token: Option<AdminToken>) -> Router {
    match token {
        Some(t) => router.layer(axum::middleware::from_fn_with_state(t, check)),
        None => router,
    }
}

/// The guard for a listener on `loopback` or not: the token when there is one; without one,
/// the admin paths are open on loopback and closed anywhere else.
pub fn guard_listener(router: Router, token: Option<AdminToken>, loopback: bool) -> Router {
    match (token, loopback) {
        (None, false) => router.layer(axum::middleware::from_fn(closed)),
        (token, _) => guard(router, token),
    }
}

async fn closed(req: Request, next: Next) -> Response {
    if !is_admin_path(req.uri().path()) {
        return next.run(req).await;
    }
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": "forbidden",
            "message": "the admin API and /metrics are not served on a non-loopback address without `server.admin_token`",
        })),
    )
        .into_response()
}

async fn check(State(token): State<AdminToken>, req: Request, next: Next) -> Response {
    if !is_admin_path(req.uri().path()) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match presented {
        Some(t) if token.matches(t) => next.run(req).await,
        Some(_) => {
            tracing::debug!(path = %req.uri().path(), "admin request with a wrong token refused");
            refuse(
                "Bearer realm=\"mcpg-admin\", error=\"invalid_token\"",
                "the admin token is not valid",
            )
        }
        None => refuse(
            "Bearer realm=\"mcpg-admin\"",
            "this endpoint requires the admin token: Authorization: Bearer <server.admin_token>",
        ),
    }
}

fn refuse(challenge: &'static str, message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))],
        axum::Json(serde_json::json!({ "error": "unauthorized", "message": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    const TOKEN: &str = "an-admin-token-of-some-length";

    fn app() -> Router {
        guard(routes(), Some(AdminToken::new(TOKEN)))
    }

    fn routes() -> Router {
        super::super::health::router(super::super::Readiness::default())
            .route("/api/cluster/status", get(|| async { "status" }))
            .route("/api/cluster/sessions/{id}", get(|| async { "session" }))
            .route("/metrics", get(|| async { "metrics" }))
            .route("/mcp", get(|| async { "mcp" }).post(|| async { "mcp" }))
            .route("/mcpg/meta", get(|| async { "meta" }))
    }

    async fn send(app: Router, path: &str, auth: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn body(r: Response) -> String {
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn without_a_token_admin_paths_are_closed_off_loopback() {
        let st = |r: Router, path: &'static str, auth: Option<String>| async move {
            send(r, path, auth.as_deref()).await.status()
        };
        let open = guard_listener(routes(), None, true);
        assert_eq!(st(open, "/metrics", None).await, StatusCode::OK);
        let shut = guard_listener(routes(), None, false);
        assert_eq!(
            st(shut.clone(), "/metrics", None).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            st(shut.clone(), "/api/cluster/status", None).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(st(shut.clone(), "/healthz", None).await, StatusCode::OK);
        assert_eq!(st(shut, "/mcp", None).await, StatusCode::OK);
        let tokened = guard_listener(routes(), Some(AdminToken::new(TOKEN)), false);
        assert_eq!(
            st(tokened.clone(), "/metrics", Some(format!("Bearer {TOKEN}"))).await,
            StatusCode::OK
        );
        assert_eq!(
            st(tokened, "/metrics", None).await,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn admin_paths_need_the_token() {
        for path in [
            "/api/cluster/status",
            "/api/cluster/sessions/abc",
            "/metrics",
        ] {
            let r = send(app(), path, None).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer realm=\"mcpg-admin\"");
            let b: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
            assert_eq!(b["error"], "unauthorized");

            let r = send(app(), path, Some("Bearer not-the-admin-token")).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
            assert!(
                r.headers()[WWW_AUTHENTICATE]
                    .to_str()
                    .unwrap()
                    .contains("invalid_token")
            );
            // A prefix of the right token is still wrong.
            let r = send(app(), path, Some(&format!("Bearer {}", &TOKEN[..10]))).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
            let r = send(app(), path, Some(&format!("Basic {TOKEN}"))).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");

            let r = send(app(), path, Some(&format!("Bearer {TOKEN}"))).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let r = send(app(), path, Some(&format!("bearer {TOKEN}"))).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
        }
        // An unknown admin path is refused before it can be found missing.
        let r = send(app(), "/api/nothing-here", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn probes_bindings_and_meta_stay_open() {
        for path in ["/healthz", "/mcp", "/mcpg/meta"] {
            let r = send(app(), path, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
        }
        // /readyz answers by phase (503 while starting), never 401.
        let r = send(app(), "/readyz", None).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // The binding does not see the admin challenge even with a wrong token of its own.
        let r = send(app(), "/mcp", Some("Bearer something-else")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn without_a_token_nothing_is_guarded() {
        let routes = Router::new().route("/api/cluster/status", get(|| async { "status" }));
        let r = send(guard(routes, None), "/api/cluster/status", None).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn routes_filled_in_late_are_guarded() {
        let late = super::super::Late::default();
        let app = guard(late.router(), Some(AdminToken::new(TOKEN)));
        late.set(Router::new().route("/api/cluster/peers", get(|| async { "peers" })));
        let r = send(app.clone(), "/api/cluster/peers", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = send(app, "/api/cluster/peers", Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn the_token_is_not_printed() {
        assert!(!format!("{:?}", AdminToken::new(TOKEN)).contains(TOKEN));
    }
}
