//! The admin routes of upstream pools, as this replica sees them:
//! `GET /api/cluster/servers`, `GET /api/cluster/servers/{upstream}/replicas`, and
//! `POST /api/cluster/servers/{upstream}/replicas/{endpoint}/{drain|disable|enable}`.
//! Errors are JSON with a status.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Gateway;
use crate::mcp::binding::Binding;
use crate::mcp::upstream::pool::{Admin, Pool};

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({"error": message, "status": status.as_u16()})),
    )
        .into_response()
}

/// One upstream of a binding with its endpoints.
fn server(b: &Binding, p: &Pool) -> Value {
    let (retries, refused) = p.retries();
    json!({
        "binding": b.name,
        "upstream": p.name,
        "balance": p.balance(),
        "retries": retries,
        "retries_refused": refused,
        "replicas": p.view(),
    })
}

/// Every upstream named `name`, with its binding (one name may serve several bindings).
fn named(gw: &Gateway, name: &str) -> Vec<(Arc<Binding>, Arc<Pool>)> {
    let bindings = gw.bindings();
    bindings
        .iter()
        .flat_map(|b| {
            b.upstreams
                .iter()
                .filter(|p| p.name == name)
                .map(|p| (b.clone(), p.clone()))
        })
        .collect()
}

/// `GET /api/cluster/servers`.
pub async fn servers(State(gw): State<Arc<Gateway>>) -> Response {
    let servers: Vec<Value> = gw
        .bindings()
        .iter()
        .flat_map(|b| b.upstreams.iter().map(|p| server(b, p)))
        .collect();
    Json(json!({"node_id": gw.sessions.node_id(), "servers": servers})).into_response()
}

/// `GET /api/cluster/servers/{upstream}/replicas`.
pub async fn replicas(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    let found: Vec<Value> = named(&gw, &name)
        .iter()
        .map(|(b, p)| server(b, p))
        .collect();
    if found.is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no upstream named `{name}`"));
    }
    Json(json!({"node_id": gw.sessions.node_id(), "servers": found})).into_response()
}

/// `POST /api/cluster/servers/{upstream}/replicas/{endpoint}/{action}`: on this replica.
pub async fn set_admin(
    State(gw): State<Arc<Gateway>>,
    Path((name, endpoint, action)): Path<(String, String, String)>,
) -> Response {
    let admin = match action.as_str() {
        "drain" => Admin::Draining,
        "disable" => Admin::Disabled,
        "enable" => Admin::Enabled,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown action `{action}`: use drain, disable or enable"),
            );
        }
    };
    let mut changed = Vec::new();
    let mut upstream_found = false;
    for (b, p) in named(&gw, &name) {
        upstream_found = true;
        if p.set_admin(&endpoint, admin) {
            changed.push(
                json!({"binding": b.name, "upstream": p.name, "replica": endpoint, "admin": admin}),
            );
        }
    }
    match (upstream_found, changed.is_empty()) {
        (false, _) => error(StatusCode::NOT_FOUND, format!("no upstream named `{name}`")),
        (true, true) => error(
            StatusCode::NOT_FOUND,
            format!("upstream `{name}` has no endpoint named `{endpoint}`"),
        ),
        _ => Json(json!({"node_id": gw.sessions.node_id(), "changed": changed})).into_response(),
    }
}
