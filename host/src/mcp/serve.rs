//! The pipeline every admitted client request goes through, written once for both eras:
//! access rules, rate limits, task ownership, dispatch to the binding (within a legacy session, or
//! statelessly for 2026-07-28), tasks the answer creates recorded as the caller's, list
//! results narrowed to what the caller may see. The request is observed throughout.

use std::sync::Arc;

use crate::mcp::access::{self, Caller};
use crate::mcp::binding::Binding;
use crate::mcp::limits::{Admitted, Refusal, Request};
use crate::mcp::observe::{Observed, upstream_of};
use crate::mcp::relay::Reply;
use crate::mcp::route::dispatch::{self, Client};
use crate::mcp::tasks;
use crate::mcp::upstream::pool;
use crate::mcp::wire::jsonrpc::{self, Message};

/// Serves one request; the reply, and the observation still running while a streamed reply
/// is sent. A request over a rate limit comes back refused, with its observation, before it
/// reaches an upstream: its response (429) is the front's to make.
pub async fn serve(
    b: &Arc<Binding>,
    who: &Caller,
    obs: Observed,
    msg: Message,
    client: Client<'_>,
) -> Result<(Reply, Option<Observed>), (Refusal, Observed)> {
    if let Some((kind, _, refusal)) = b.access.refuse(who, &msg) {
        obs.denied(kind);
        return Ok((Reply::Json(refusal), None));
    }
    let admitted = if b.limits.is_empty() {
        Admitted::default()
    } else {
        let name = access::target(&msg).map(|(_, n)| n);
        let upstream = upstream_of(b, name.as_deref()).map(|i| b.upstreams[i].name.as_str());
        let req = Request {
            who: who.as_deref(),
            msg: &msg,
            upstream,
        };
        match obs.within(b.limits.admit(&req)).await {
            Ok(a) => a,
            Err(refusal) => return Err((refusal, obs)),
        }
    };
    if let Some(refusal) = tasks::task_refused(b, who, &msg).await {
        obs.finish(Some(&refusal));
        return Ok((Reply::Json(refusal), None));
    }
    let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
    // Boxed: the dispatch's future is most of a request's state, and the wrappers around it
    // (and axum, which boxes the handler's future) would otherwise move it whole.
    let (r, endpoint) = obs
        .within(pool::noting_endpoint(Box::pin(dispatch::dispatch(
            b, client, msg,
        ))))
        .await;
    let mut obs = obs;
    obs.set_endpoint(endpoint);
    let r = tasks::own_tasks(b, who, &method, r).await;
    Ok(obs.reply(admitted.hold(b.access.filter(who, &method, r))))
}
