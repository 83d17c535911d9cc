//! The pipeline every admitted client request goes through, written once for both eras:
//! access rules, task ownership, dispatch to the binding (within a legacy session, or
//! statelessly for 2026-07-28), tasks the answer creates recorded as the caller's, list
//! results narrowed to what the caller may see. The request is observed throughout.

use std::sync::Arc;

use crate::mcp::access::Caller;
use crate::mcp::binding::Binding;
use crate::mcp::observe::Observed;
use crate::mcp::relay::Reply;
use crate::mcp::route::dispatch::{self, Client};
use crate::mcp::tasks;
use crate::mcp::wire::jsonrpc::{self, Message};

/// Serves one request; the reply, and the observation still running while a streamed reply
/// is sent.
pub async fn serve(
    b: &Arc<Binding>,
    who: &Caller,
    obs: Observed,
    msg: Message,
    client: Client<'_>,
) -> (Reply, Option<Observed>) {
    if let Some((kind, _, refusal)) = b.access.refuse(who, &msg) {
        obs.denied(kind);
        return (Reply::Json(refusal), None);
    }
    if let Some(refusal) = tasks::task_refused(b, who, &msg).await {
        obs.finish(Some(&refusal));
        return (Reply::Json(refusal), None);
    }
    let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
    let r = obs.within(dispatch::dispatch(b, client, msg)).await;
    let r = tasks::own_tasks(b, who, &method, r).await;
    obs.reply(b.access.filter(who, &method, r))
}
