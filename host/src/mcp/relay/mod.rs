//! Relaying upstream exchanges to clients: what the gateway answers a client message with
//! ([`Reply`]), and cancellation of requests running here ([`cancel`]).

pub mod cancel;
pub mod exchange;
#[cfg(test)]
mod exchange_tests;
pub mod legacy;

use tokio::sync::mpsc;

use crate::mcp::wire::jsonrpc::Message;

/// What the gateway answers a client message with.
pub enum Reply {
    /// One JSON-RPC response.
    Json(Message),
    /// Messages about the request, ending with its response (an SSE stream).
    Stream(mpsc::Receiver<Message>),
    /// A notification or response was taken (202).
    Accepted,
}
