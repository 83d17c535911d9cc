//! The two era bridges: a legacy session in front of an upstream that speaks only 2026-07-28
//! ([`legacy_to_modern`]), and 2026-07-28 clients, served statelessly, in front of upstreams
//! of either era ([`modern_to_legacy`]: discovery, native forwarding, parked exchanges).

pub mod legacy_to_modern;
pub mod listen;
pub mod modern_to_legacy;
pub mod request_state;
