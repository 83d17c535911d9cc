//! Where a client request goes among a binding's upstreams: names prefixed and unprefixed,
//! merged cursors ([`names`], pure).

pub mod dispatch;
pub mod fanout;
pub mod names;
pub mod path;

#[cfg(test)]
mod fencing_tests;
