//! Errors as people read them: an error with its chain of causes on one line (the HTTP
//! clients' own text hides the cause, such as which certificate check failed).

/// An error with its causes, `outer: inner: …`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The request body stalled for longer than `server.limits.body_read_timeout_ms` (raised by
/// the listeners, answered `408 Request Timeout` by the endpoints that read bodies).
#[derive(Debug, thiserror::Error)]
#[error("no part of the request body arrived for {0} ms (`server.limits.body_read_timeout_ms`)")]
pub struct BodyStalled(pub u128);
