//! This replica's node id: `--node-id` when given, else the coordinator's own (later: the
//! plugin's `node_id` / `node.id` key), else the hostname for `single_node`.

/// Why a node id cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    #[error("node id must not be empty")]
    Empty,
    #[error("node id `{0}` contains whitespace or control characters")]
    BadChar(String),
    #[error("node id is longer than 253 characters")]
    TooLong,
}

/// Checks a node id given by the user.
pub fn validate(id: &str) -> Result<(), NodeIdError> {
    if id.is_empty() {
        return Err(NodeIdError::Empty);
    }
    if id.len() > 253 {
        return Err(NodeIdError::TooLong);
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NodeIdError::BadChar(id.to_owned()));
    }
    Ok(())
}

/// The node id for `single_node`: the flag's value, else the hostname.
pub fn single_node_id(flag: Option<&str>) -> String {
    match flag {
        Some(id) => id.to_owned(),
        None => hostname(),
    }
}

/// The machine's hostname, or `localhost` when it cannot be read as text.
pub fn hostname() -> String {
    gethostname::gethostname()
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert_eq!(validate("mcpg-0"), Ok(()));
        assert_eq!(validate(""), Err(NodeIdError::Empty));
        assert!(matches!(validate("a b"), Err(NodeIdError::BadChar(_))));
        assert_eq!(single_node_id(Some("x")), "x");
        assert!(!single_node_id(None).is_empty());
    }
}
