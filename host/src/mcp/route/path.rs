//! The era path of an exchange: decided once, from the client's era and the era the
//! upstream's conversation speaks.

use crate::mcp::wire::version::Era;

/// The four ways a request crosses the gateway, by the client's era and the era the
/// upstream's conversation speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Both sides speak the same era: the request passes as it is (ids, names and cursors
    /// mapped).
    Native,
    /// A legacy session in front of an upstream that speaks only 2026-07-28: each request is
    /// stamped with the session's `_meta` (`bridge::legacy_to_modern`).
    Stamp,
    /// A 2026-07-28 client in front of a legacy upstream: server requests become
    /// input-required results and the exchange is parked for the retry
    /// (`bridge::modern_to_legacy`).
    Park,
}

impl Path {
    pub fn of(client: Era, upstream: Era) -> Path {
        match (client, upstream) {
            (Era::Legacy, Era::Modern) => Path::Stamp,
            (Era::Modern, Era::Legacy) => Path::Park,
            _ => Path::Native,
        }
    }
}
