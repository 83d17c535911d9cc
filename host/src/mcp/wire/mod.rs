//! What MCP looks like on the wire, as pure functions over raw messages: JSON-RPC framing,
//! protocol revisions and their eras, the 2026-07-28 `_meta` keys and metadata headers.

pub mod headers;
pub mod json_out;
pub mod jsonrpc;
pub mod meta;
pub mod version;
