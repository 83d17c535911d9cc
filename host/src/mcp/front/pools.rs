//! The admin routes of upstream pools: `GET /api/cluster/servers` and
//! `GET /api/cluster/servers/{upstream}/replicas` (this replica's view of each endpoint, and
//! every replica's published view), and
//! `POST /api/cluster/servers/{upstream}/replicas/{endpoint}/{drain|disable|enable}` (for
//! the whole cluster). Errors are JSON with a status.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Gateway;
use crate::mcp::binding::Binding;
use crate::mcp::cluster::pool_views::ReplicaView;
use crate::mcp::upstream::pool::{Admin, Pool};

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        Json(json!({"error": message, "status": status.as_u16()})),
    )
        .into_response()
}

/// One upstream of a binding with its endpoints: this replica's view of each, and under
/// `cluster` every replica's published view of it.
fn server(b: &Binding, p: &Pool, cluster: &[ReplicaView]) -> Value {
    let (retries, refused) = p.retries();
    let replicas: Vec<Value> = p
        .view()
        .into_iter()
        .map(|e| {
            let seen: Vec<Value> = cluster
                .iter()
                .filter_map(|v| {
                    let s = v
                        .servers
                        .iter()
                        .find(|s| s.binding == b.name && s.upstream == p.name)?;
                    let ep = s.endpoints.iter().find(|x| x.name == e.name)?;
                    Some(
                        json!({"node_id": v.node_id, "state": ep.state, "admin": ep.admin,
                        "in_flight": ep.in_flight, "ejections": ep.ejections, "at_ms": v.at_ms}),
                    )
                })
                .collect();
            let mut v = serde_json::to_value(&e).expect("serialisable");
            v["cluster"] = Value::Array(seen);
            v
        })
        .collect();
    json!({
        "binding": b.name,
        "upstream": p.name,
        "balance": p.balance(),
        "retries": retries,
        "retries_refused": refused,
        "tool_lists": p.tool_lists(),
        "replicas": replicas,
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

/// The answer listing the upstreams named `only` (all when `None`), with the cluster's
/// views (or why they could not be read).
async fn listing(gw: &Gateway, only: Option<&str>) -> Response {
    let (cluster, cluster_error) = match gw.pool_views().cluster().await {
        Ok(c) => (c, None),
        Err(e) => (vec![gw.pool_views().own_view()], Some(e)),
    };
    let servers: Vec<Value> = gw
        .bindings()
        .iter()
        .flat_map(|b| b.upstreams.iter().map(move |p| (b.as_ref(), p)))
        .filter(|(_, p)| only.is_none_or(|n| p.name == n))
        .map(|(b, p)| server(b, p, &cluster))
        .collect();
    Json(json!({
        "node_id": gw.sessions.node_id(),
        "nodes": cluster.iter().map(|v| &v.node_id).collect::<Vec<_>>(),
        "cluster_error": cluster_error,
        "servers": servers,
    }))
    .into_response()
}

/// `GET /api/cluster/servers`.
pub async fn servers(State(gw): State<Arc<Gateway>>) -> Response {
    listing(&gw, None).await
}

/// `GET /api/cluster/servers/{upstream}/replicas`.
pub async fn replicas(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    if named(&gw, &name).is_empty() {
        return error(StatusCode::NOT_FOUND, format!("no upstream named `{name}`"));
    }
    listing(&gw, Some(&name)).await
}

/// `POST /api/cluster/servers/{upstream}/replicas/{endpoint}/{action}`: for the whole
/// cluster (a key in the coordinator every replica applies), and at once on this replica.
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
    let found = named(&gw, &name);
    let targets: Vec<(String, String)> = found
        .iter()
        .filter(|(_, p)| p.endpoint(&endpoint).is_some())
        .map(|(b, p)| (b.name.clone(), p.name.clone()))
        .collect();
    if targets.is_empty() {
        let why = if found.is_empty() {
            format!("no upstream named `{name}`")
        } else {
            format!("upstream `{name}` has no endpoint named `{endpoint}`")
        };
        return error(StatusCode::NOT_FOUND, why);
    }
    let mut changed = Vec::new();
    for (binding, upstream) in targets {
        if let Err(e) = gw
            .pool_views()
            .set_admin(&binding, &upstream, &endpoint, admin)
            .await
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the change could not be stored for the cluster ({e}); nothing changed on this replica for binding `{binding}`"
                ),
            );
        }
        changed.push(
            json!({"binding": binding, "upstream": upstream, "replica": endpoint, "admin": admin}),
        );
    }
    Json(json!({"node_id": gw.sessions.node_id(), "changed": changed, "scope": "cluster"}))
        .into_response()
}
