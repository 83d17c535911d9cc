//! Task ownership on bindings with `auth`: the owner of each task a response creates is
//! recorded in the binding's `tasks` capability before the client sees its id; anyone else
//! asking about the task is told it does not exist, and `tasks/list` shows each caller its own.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::auth::Identity;
use crate::mcp::access::Caller;
use crate::mcp::binding::Binding;
use crate::mcp::relay::Reply;
use crate::mcp::wire::jsonrpc::{self, Message, code};

/// How long a task's owner is remembered when the task names no `ttl` of its own.
const TASK_OWNER_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn task_key(binding: &str, task: &str) -> String {
    format!("owners/{binding}/{task}")
}

/// The task a request is about (`tasks/get`, `tasks/result`, `tasks/cancel`, `tasks/update`).
fn task_ref(msg: &Message) -> Option<String> {
    match jsonrpc::method(msg)? {
        "tasks/get" | "tasks/result" | "tasks/cancel" | "tasks/update" => jsonrpc::params(msg)?
            .get("taskId")?
            .as_str()
            .map(str::to_owned),
        _ => None,
    }
}

/// The task a response creates, as the client sees it (2025-11-25: `result.task`; 2026-07-28:
/// a result of type `task`), and how long it lives.
fn created_task(m: &Message) -> Option<(String, Option<u64>)> {
    let r = m.get("result")?;
    let task = match r.get("task") {
        Some(t) => t,
        None if r.get("resultType").and_then(Value::as_str) == Some("task") => r,
        None => return None,
    };
    let id = task.get("taskId")?.as_str()?.to_owned();
    Some((id, task.get("ttl").and_then(Value::as_u64)))
}

/// The refusal of a request about a task another identity created (answered as an unknown
/// task: the caller learns nothing about it). Only on bindings with `auth`.
pub async fn task_refused(b: &Binding, who: &Caller, msg: &Message) -> Option<Message> {
    let who = who.as_ref()?;
    let task = task_ref(msg)?;
    let owner = b.tasks.store.get(&task_key(&b.name, &task)).await;
    // A task mcpg did not see created (or whose owner record expired) belongs to nobody here.
    let mine = matches!(&owner, Ok(Some(e)) if e.value == who.key.as_bytes());
    if mine {
        return None;
    }
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    Some(jsonrpc::error(
        id,
        code::INVALID_PARAMS,
        format!("Task not found: {task}"),
        None,
    ))
}

/// `reply` with the tasks it creates recorded as the caller's (before the client sees their
/// ids), and `tasks/list` results narrowed to the caller's tasks.
pub async fn own_tasks(b: &Arc<Binding>, who: &Caller, method: &str, reply: Reply) -> Reply {
    let Some(who) = who.clone() else {
        return reply;
    };
    let listing = method == "tasks/list";
    // Only a tool call creates a task a client can see (2025-11-25 task-augmented calls,
    // 2026-07-28 task results): any other reply is passed on as it is, with no relay.
    if !listing && method != "tools/call" {
        return reply;
    }
    match reply {
        Reply::Stream(mut rx) => {
            let (tx, out) = mpsc::channel(16);
            let b = b.clone();
            tokio::spawn(async move {
                while let Some(mut m) = rx.recv().await {
                    settle(&b, &who, listing, &mut m).await;
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            });
            Reply::Stream(out)
        }
        Reply::Json(mut m) => {
            settle(b, &who, listing, &mut m).await;
            Reply::Json(m)
        }
        other => other,
    }
}

async fn settle(b: &Binding, who: &Identity, listing: bool, m: &mut Message) {
    let store = &b.tasks.store;
    if let Some((task, ttl)) = created_task(m) {
        let ttl = ttl
            .map(|ms| std::time::Duration::from_millis(ms) + std::time::Duration::from_secs(3600))
            .unwrap_or(TASK_OWNER_TTL);
        if let Err(e) = store
            .put(
                &task_key(&b.name, &task),
                who.key.clone().into_bytes(),
                Some(ttl),
            )
            .await
        {
            tracing::warn!(binding = %b.name, task = %task, error = %e, "cannot record the task's owner; it will be refused to every caller");
        }
    }
    if listing
        && let Some(Value::Array(items)) = m.get_mut("result").and_then(|r| r.get_mut("tasks"))
    {
        let mut kept = Vec::with_capacity(items.len());
        for item in std::mem::take(items) {
            let Some(id) = item.get("taskId").and_then(Value::as_str) else {
                continue;
            };
            if matches!(store.get(&task_key(&b.name, id)).await, Ok(Some(e)) if e.value == who.key.as_bytes())
            {
                kept.push(item);
            }
        }
        *items = kept;
    }
}
