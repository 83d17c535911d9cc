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
