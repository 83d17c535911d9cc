//! Access rules applied to messages (a refused name, list results narrowed, JSON and
//! streamed) and task ownership (the creator recorded before the client sees the task; anyone
//! else told it does not exist; `tasks/list` narrowed to the caller's own).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::kit;
use crate::auth::{Identity, Kind};
use crate::mcp::access::Caller;
use crate::mcp::binding::Binding;
use crate::mcp::relay::Reply;
use crate::mcp::tasks::{own_tasks, task_refused};
use crate::mcp::wire::jsonrpc::{Message, code};

fn token(name: &str) -> Caller {
    Some(Arc::new(Identity {
        key: format!("token:{name}"),
        token: Some(name.into()),
        subject: None,
        claims: Default::default(),
    }))
}

fn msg(v: Value) -> Message {
    v.as_object().unwrap().clone()
}

fn call(tool: &str) -> Message {
    msg(json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name": tool}}))
}

async fn binding_with(extra: Value) -> Arc<Binding> {
    let store = kit::store();
    let c: Arc<dyn mcpg_plugin_api::coordinator::Coordinator> = Arc::new(store.handle("node-a"));
    let caps = crate::capabilities::Capabilities::build(&Default::default(), &c).unwrap();
    kit::binding(&caps, &kit::binding_config(extra))
}

/// Deny by default; alice may use `one__*` tools but not `one__secret`, and read `two+file:*`.
fn policy() -> Value {
    json!({"access": {"default": "deny", "rules": [
        {"match": {"tokens": ["alice"]},
         "allow": {"tools": ["one__*"], "resources": ["two+file:*"]},
         "deny": {"tools": ["one__secret"]}},
    ]}})
}

#[tokio::test]
async fn a_name_the_caller_may_not_use_is_refused() {
    let b = binding_with(policy()).await;
    let (alice, bob) = (token("alice"), token("bob"));
    assert!(b.access.refuse(&alice, &call("one__echo")).is_none());
    let (kind, name, err) = b
        .access
        .refuse(&alice, &call("one__secret"))
        .expect("deny wins");
    assert_eq!((kind, name.as_str()), (Kind::Tool, "one__secret"));
    assert_eq!(err["id"], 7);
    assert_eq!(err["error"]["code"], code::INVALID_PARAMS);
    assert_eq!(err["error"]["data"]["reason"], "access_denied");
    assert!(b.access.refuse(&bob, &call("one__echo")).is_some());
    assert!(b.access.refuse(&None, &call("one__echo")).is_some());
    let read = |uri: &str| {
        msg(json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri": uri}}))
    };
    assert!(b.access.refuse(&alice, &read("two+file:///x")).is_none());
    assert!(b.access.refuse(&alice, &read("one+file:///x")).is_some());
    // A request that names nothing is not the policy's to refuse.
    let list = msg(json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}));
    assert!(b.access.refuse(&bob, &list).is_none());
    // Without rules, nothing is refused.
    let open = binding_with(json!({})).await;
    assert!(open.access.refuse(&None, &call("one__secret")).is_none());
}

fn tools_list() -> Message {
    msg(json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
        {"name":"one__echo"},{"name":"one__secret"},{"name":"two__x"}]}}))
}

fn names(m: &Message) -> Vec<String> {
    m["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn list_results_are_narrowed_to_what_the_caller_may_see() {
    let b = binding_with(policy()).await;
    let alice = token("alice");
    let Reply::Json(m) = b
        .access
        .filter(&alice, "tools/list", Reply::Json(tools_list()))
    else {
        panic!("json in, json out")
    };
    assert_eq!(names(&m), ["one__echo"]);
    let Reply::Json(m) = b
        .access
        .filter(&None, "tools/list", Reply::Json(tools_list()))
    else {
        panic!()
    };
    assert!(names(&m).is_empty());
    // Another method's result passes untouched.
    let Reply::Json(m) = b
        .access
        .filter(&None, "prompts/get", Reply::Json(tools_list()))
    else {
        panic!()
    };
    assert_eq!(names(&m).len(), 3);

    // Streamed: what precedes the response passes, the response is narrowed.
    let (tx, rx) = mpsc::channel(4);
    let progress = msg(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}));
    tx.send(progress.clone()).await.unwrap();
    tx.send(tools_list()).await.unwrap();
    drop(tx);
    let Reply::Stream(mut out) = b.access.filter(&alice, "tools/list", Reply::Stream(rx)) else {
        panic!("stream in, stream out")
    };
    assert_eq!(out.recv().await.unwrap(), progress);
    assert_eq!(names(&out.recv().await.unwrap()), ["one__echo"]);
    assert!(out.recv().await.is_none());
}

fn task_get(task: &str) -> Message {
    msg(json!({"jsonrpc":"2.0","id":3,"method":"tasks/get","params":{"taskId": task}}))
}

fn created(task: &str) -> Message {
    msg(json!({"jsonrpc":"2.0","id":2,"result":{"task":{"taskId": task, "status":"working"}}}))
}

#[tokio::test]
async fn a_task_belongs_to_the_identity_whose_call_created_it() {
    let b = binding_with(json!({})).await;
    let (alice, bob) = (token("alice"), token("bob"));
    // Before anything is recorded, a task belongs to nobody: refused to everyone.
    assert!(
        task_refused(&b, &alice, &task_get("one__t1"))
            .await
            .is_some()
    );

    let Reply::Json(m) = own_tasks(&b, &alice, "tools/call", Reply::Json(created("one__t1"))).await
    else {
        panic!()
    };
    assert_eq!(m, created("one__t1"), "the reply itself is unchanged");
    // 2026-07-28: a result of type `task`, streamed.
    let (tx, rx) = mpsc::channel(1);
    tx.send(msg(
        json!({"jsonrpc":"2.0","id":2,"result":{"resultType":"task","taskId":"one__t2"}}),
    ))
    .await
    .unwrap();
    drop(tx);
    let Reply::Stream(mut out) = own_tasks(&b, &bob, "tools/call", Reply::Stream(rx)).await else {
        panic!()
    };
    assert!(out.recv().await.is_some());
    assert!(out.recv().await.is_none());

    assert!(
        task_refused(&b, &alice, &task_get("one__t1"))
            .await
            .is_none()
    );
    let refused = task_refused(&b, &bob, &task_get("one__t1"))
        .await
        .expect("another identity is refused");
    assert_eq!(refused["id"], 3);
    assert_eq!(refused["error"]["code"], code::INVALID_PARAMS);
    assert_eq!(refused["error"]["message"], "Task not found: one__t1");
    assert!(task_refused(&b, &bob, &task_get("one__t2")).await.is_none());
    assert!(
        task_refused(&b, &alice, &task_get("one__t2"))
            .await
            .is_some()
    );
    // Without auth there is no owner to check.
    assert!(
        task_refused(&b, &None, &task_get("one__t1"))
            .await
            .is_none()
    );
    // Only a tool call creates a task: another method's reply records nothing.
    own_tasks(&b, &bob, "prompts/get", Reply::Json(created("one__t3"))).await;
    assert!(task_refused(&b, &bob, &task_get("one__t3")).await.is_some());

    // tasks/list shows each caller its own.
    let listing = || {
        msg(json!({"jsonrpc":"2.0","id":4,"result":{"tasks":[
            {"taskId":"one__t1"},{"taskId":"one__t2"},{"taskId":"one__t3"}]}}))
    };
    let Reply::Json(m) = own_tasks(&b, &alice, "tasks/list", Reply::Json(listing())).await else {
        panic!()
    };
    assert_eq!(m["result"]["tasks"], json!([{"taskId":"one__t1"}]));
    let Reply::Json(m) = own_tasks(&b, &bob, "tasks/list", Reply::Json(listing())).await else {
        panic!()
    };
    assert_eq!(m["result"]["tasks"], json!([{"taskId":"one__t2"}]));
}
