//! Server-sent events: one message as an event, and the GET stream of a legacy session (a
//! reconnect hint with the stream's position first, numbered events for `Last-Event-ID` resumption, and a last hint when
//! this replica drains).

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::mcp::wire::jsonrpc::Message;

/// How soon a client reconnects after its stream ends.
const RECONNECT: Duration = Duration::from_millis(500);

/// One message as an SSE event.
pub fn event(m: &Message) -> Event {
    Event::default()
        .event("message")
        .data(crate::mcp::wire::json_out::to_string(m))
}

/// A session's GET stream from its numbered messages, starting at event id `position`.
/// `held` lives as long as the stream; `closing` ends the stream when this replica drains or
/// its binding is replaced by a config reload.
pub fn get_stream(
    position: u64,
    messages: BoxStream<'static, (u64, Message)>,
    held: impl Send + Sync + 'static,
    closing: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    // A reconnect hint first, with the position as its id and no data (the priming event of
    // the 2025-11-25 transport): when the stream ends before any message came, the client
    // comes back quickly (to any replica) and resumes from there, so nothing delivered in
    // between is lost.
    let hint = futures::stream::once(async move {
        Ok::<_, Infallible>(
            Event::default()
                .retry(RECONNECT)
                .id(position.to_string())
                .data(""),
        )
    });
    let events = messages
        .map(move |(n, m)| {
            let _held = &held;
            Ok::<_, Infallible>(event(&m).id(n.to_string()))
        })
        .take_until(closing)
        // Ended by a drain: the client reconnects (to another replica) and resumes.
        .chain(futures::stream::once(async {
            Ok(Event::default()
                .retry(RECONNECT)
                .comment("replica shutting down; reconnect with Last-Event-ID"))
        }));
    Sse::new(hint.chain(events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
