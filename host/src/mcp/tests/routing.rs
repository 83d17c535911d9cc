//! Routing: the era path of each combination of client and upstream era, where a request
//! goes among a binding's upstreams (prefixed, unprefixed and searched, single upstream), and
//! the status, JSON-RPC code and data every refusal of the data plane is answered with.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::mcp::front::respond::McpError;
use crate::mcp::route::names::{Naming, Route, UpstreamIdx};
use crate::mcp::route::path::Path;
use crate::mcp::session::SessionError;
use crate::mcp::wire::jsonrpc::{Message, RpcError, code};
use crate::mcp::wire::version::Era;

#[test]
fn each_era_combination_takes_its_path() {
    assert_eq!(Path::of(Era::Legacy, Era::Legacy), Path::Native);
    assert_eq!(Path::of(Era::Modern, Era::Modern), Path::Native);
    assert_eq!(Path::of(Era::Legacy, Era::Modern), Path::Stamp);
    assert_eq!(Path::of(Era::Modern, Era::Legacy), Path::Park);
}

fn msg(v: Value) -> Message {
    v.as_object().unwrap().clone()
}

fn request(method: &str, params: Value) -> Message {
    msg(json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}))
}

fn naming(prefix: bool, upstreams: &[&str]) -> Naming {
    Naming {
        prefix,
        sep: "__".into(),
        upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
    }
}

/// Unprefixed names over several upstreams: a named request goes to the upstream that lists
/// the name (a search, its params untouched); lists go to all; the rest to the first.
#[test]
fn unprefixed_names_over_several_upstreams_are_searched() {
    let n = naming(false, &["one", "two"]);
    let cases = [
        ("tools/call", json!({"name":"echo"}), "tools/list", "echo"),
        ("prompts/get", json!({"name":"p"}), "prompts/list", "p"),
        (
            "resources/read",
            json!({"uri":"f://x"}),
            "resources/list",
            "f://x",
        ),
        (
            "resources/subscribe",
            json!({"uri":"f://y"}),
            "resources/list",
            "f://y",
        ),
    ];
    for (method, params, list, name) in cases {
        let mut m = request(method, params.clone());
        assert_eq!(
            n.route(&mut m).unwrap(),
            Route::Search {
                list,
                name: name.into()
            },
            "{method}"
        );
        assert_eq!(m["params"], params, "{method}: params untouched");
    }
    let mut m = request("tools/call", json!({}));
    assert_eq!(
        n.route(&mut m).unwrap_err().code,
        code::INVALID_PARAMS,
        "a call naming nothing"
    );
    let mut m = request("tools/list", json!({}));
    assert_eq!(n.route(&mut m).unwrap(), Route::All);
    let mut m = request("tasks/get", json!({"taskId":"t"}));
    assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(0)));
}

/// One unprefixed upstream: everything but `ping` and `logging/setLevel` goes to it as it is.
#[test]
fn a_single_unprefixed_upstream_gets_everything_unchanged() {
    let n = naming(false, &["only"]);
    for (method, params) in [
        ("tools/call", json!({"name":"only__x"})),
        ("tools/list", json!({})),
        ("tasks/list", json!({})),
        ("resources/read", json!({"uri":"f://x"})),
        ("vendor/thing", json!({"a":1})),
    ] {
        let mut m = request(method, params.clone());
        assert_eq!(
            n.route(&mut m).unwrap(),
            Route::One(UpstreamIdx(0)),
            "{method}"
        );
        assert_eq!(m["params"], params);
    }
    let mut m = request("ping", json!({}));
    assert_eq!(n.route(&mut m).unwrap(), Route::Local);
    let mut m = request("logging/setLevel", json!({"level":"info"}));
    assert_eq!(n.route(&mut m).unwrap(), Route::All);
}

/// Prefixed names: the prefix picks the upstream and is stripped (tasks and prompts too);
/// lists go to every upstream even with a single one; an unknown prefix is invalid params.
#[test]
fn prefixed_names_pick_their_upstream_and_are_stripped() {
    let n = naming(true, &["one", "two"]);
    let mut m = request("tasks/result", json!({"taskId":"two__t9"}));
    assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(1)));
    assert_eq!(m["params"]["taskId"], "t9");
    let mut m = request("prompts/get", json!({"name":"one__p","arguments":{}}));
    assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(0)));
    assert_eq!(m["params"], json!({"name":"p","arguments":{}}));
    let mut m = request(
        "completion/complete",
        json!({"ref":{"type":"ref/prompt","name":"two__p"}}),
    );
    assert_eq!(n.route(&mut m).unwrap(), Route::One(UpstreamIdx(1)));
    assert_eq!(m["params"]["ref"]["name"], "p");
    let mut m = request("resources/unsubscribe", json!({"uri":"three+f://x"}));
    let e = n.route(&mut m).unwrap_err();
    assert_eq!(e.code, code::INVALID_PARAMS);
    assert!(e.message.contains("one, two"), "{}", e.message);
    let single = naming(true, &["only"]);
    let mut m = request("prompts/list", json!({}));
    assert_eq!(single.route(&mut m).unwrap(), Route::All);
    let mut r = json!({"tasks":[{"taskId":"t1"}]});
    n.result_out("tasks/list", UpstreamIdx(1), &mut r);
    assert_eq!(r, json!({"tasks":[{"taskId":"two__t1"}]}));
}

fn rpc(code: i64, message: &str, data: Option<Value>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
        data,
    }
}

/// Every refusal: its HTTP status, JSON-RPC code and data.
#[test]
fn every_refusal_has_its_status_code_and_data() {
    let unauth = |error| McpError::Unauthenticated {
        error,
        challenge: "Bearer".into(),
    };
    let table: Vec<(McpError, StatusCode, i64, Option<Value>)> = vec![
        (
            McpError::ForgedForward,
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::Rebinding("origin".into()),
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            None,
        ),
        (
            unauth(AuthError::Missing),
            StatusCode::UNAUTHORIZED,
            code::INVALID_REQUEST,
            None,
        ),
        (
            unauth(AuthError::Expired),
            StatusCode::UNAUTHORIZED,
            code::INVALID_REQUEST,
            None,
        ),
        (
            unauth(AuthError::InsufficientScope),
            StatusCode::FORBIDDEN,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::ContentType,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::AcceptPost,
            StatusCode::NOT_ACCEPTABLE,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::AcceptStream,
            StatusCode::NOT_ACCEPTABLE,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::TooLarge { limit: 10 },
            StatusCode::PAYLOAD_TOO_LARGE,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::Batch,
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::Unparsable(rpc(code::PARSE_ERROR, "bad json", None)),
            StatusCode::BAD_REQUEST,
            code::PARSE_ERROR,
            None,
        ),
        (
            McpError::NotJsonRpc,
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::UnsupportedVersion("1999-01-01".into()),
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::NoSessionId,
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::SessionNotFound,
            StatusCode::NOT_FOUND,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::Misdirected,
            StatusCode::MISDIRECTED_REQUEST,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::SessionUnavailable(rpc(code::INTERNAL_ERROR, "store down", None)),
            StatusCode::SERVICE_UNAVAILABLE,
            code::INTERNAL_ERROR,
            None,
        ),
        (
            McpError::OwnerUnsettled,
            StatusCode::SERVICE_UNAVAILABLE,
            code::INTERNAL_ERROR,
            None,
        ),
        (
            McpError::SessionLimit { max: 5 },
            StatusCode::SERVICE_UNAVAILABLE,
            code::CONNECTION_CLOSED,
            Some(json!({"reason": "session_limit"})),
        ),
        (
            McpError::Draining("bye".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            code::CONNECTION_CLOSED,
            None,
        ),
        (
            McpError::ModernHeaders {
                code: code::HEADER_MISMATCH,
                message: "Mcp-Name".into(),
            },
            StatusCode::BAD_REQUEST,
            code::HEADER_MISMATCH,
            None,
        ),
        (
            McpError::ModernVersion {
                requested: "2099-01-01".into(),
            },
            StatusCode::BAD_REQUEST,
            code::UNSUPPORTED_VERSION,
            Some(json!({"supported": crate::mcp::wire::version::all(), "requested": "2099-01-01"})),
        ),
        (
            McpError::ModernResponse,
            StatusCode::BAD_REQUEST,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::ModernMethod,
            StatusCode::METHOD_NOT_ALLOWED,
            code::INVALID_REQUEST,
            None,
        ),
        (
            McpError::StreamUnavailable(rpc(code::INTERNAL_ERROR, "bus down", None)),
            StatusCode::SERVICE_UNAVAILABLE,
            code::INTERNAL_ERROR,
            None,
        ),
        (
            McpError::ParkedGone {
                node: "node-x".into(),
                why: "is gone".into(),
            },
            StatusCode::OK,
            code::INVALID_PARAMS,
            None,
        ),
        (
            McpError::Rpc(rpc(code::INVALID_PARAMS, "nope", Some(json!({"k": 1})))),
            StatusCode::OK,
            code::INVALID_PARAMS,
            Some(json!({"k": 1})),
        ),
    ];
    for (e, status, c, data) in table {
        let what = format!("{e:?}");
        assert_eq!(e.status(), status, "{what}");
        let m = e.to_message(json!(42));
        assert_eq!(m["id"], 42, "{what}");
        assert_eq!(m["error"]["code"], c, "{what}");
        assert_eq!(m["error"].get("data").cloned(), data, "{what}");
        assert_eq!(m["error"]["message"], e.to_string(), "{what}");
    }
}

/// The headers some refusals need: the inter-replica misdirected marker, `Allow` for a
/// method of the other era, `Retry-After` while draining, the authentication challenge.
#[test]
fn refusals_carry_the_headers_they_need() {
    let r = McpError::Misdirected.respond(json!(1));
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(r.headers()[crate::mcp::cluster::forward::MISDIRECTED], "1");
    let r = McpError::ModernMethod.respond(json!(1));
    assert_eq!(r.headers()["allow"], "POST");
    let r = McpError::Draining("bye".into()).respond(json!(1));
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let r = McpError::Unauthenticated {
        error: AuthError::Missing,
        challenge: "Bearer resource_metadata=\"x\"".into(),
    }
    .respond(json!(1));
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer resource_metadata=\"x\""
    );
    let r = McpError::SessionLimit { max: 1 }.respond(json!(1));
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["content-type"], "application/json");
}

/// How the session machinery's errors become refusals: a session of another binding is not
/// found; only the limit (and not an upstream failure) refuses an `initialize` with a status.
#[test]
fn session_errors_map_to_refusals() {
    let cases = [
        (SessionError::NotFound, StatusCode::NOT_FOUND),
        (SessionError::WrongBinding, StatusCode::NOT_FOUND),
        (SessionError::Misdirected, StatusCode::MISDIRECTED_REQUEST),
        (
            SessionError::Limit { max: 2 },
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (SessionError::Unsettled, StatusCode::SERVICE_UNAVAILABLE),
        (
            SessionError::Rpc(rpc(code::INTERNAL_ERROR, "x", None)),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (e, status) in cases {
        let what = e.to_string();
        assert_eq!(McpError::from(e).status(), status, "{what}");
    }
    assert_eq!(
        McpError::not_started(SessionError::Rpc(rpc(
            code::CONNECTION_CLOSED,
            "down",
            None
        )))
        .status(),
        StatusCode::OK,
        "an upstream that cannot start answers initialize with its error"
    );
    assert_eq!(
        McpError::not_started(SessionError::Limit { max: 2 }).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// mcpg sends `list_changed` itself when a reload moves a session, so the `initialize` result
/// it gives declares it for every list the upstreams offer, and nothing else is added.
#[tokio::test]
async fn initialize_declares_list_changes_for_every_list_offered() {
    let r = super::kit::Replica::start(&super::kit::store(), "a", None, 10).await;
    let answers = [
        (
            UpstreamIdx(0),
            json!({"protocolVersion": "2025-06-18", "capabilities": {
                "tools": {"listChanged": false}, "prompts": {}, "logging": {}}}),
        ),
        (
            UpstreamIdx(1),
            json!({"protocolVersion": "2025-06-18", "capabilities": {
                "resources": {"subscribe": true}}}),
        ),
    ];
    let result = crate::mcp::route::fanout::merge_initialize(&r.binding, "2025-06-18", &answers);
    assert_eq!(
        result["capabilities"],
        json!({
            "tools": {"listChanged": true},
            "prompts": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "logging": {},
        })
    );
    let none = [(
        UpstreamIdx(0),
        json!({"protocolVersion": "2025-06-18", "capabilities": {}}),
    )];
    let result = crate::mcp::route::fanout::merge_initialize(&r.binding, "2025-06-18", &none);
    assert_eq!(
        result["capabilities"],
        json!({}),
        "no list, nothing declared"
    );
}
