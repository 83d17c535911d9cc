//! MCP protocol revisions mcpg speaks, by era, and version negotiation.

/// Legacy-era revisions (handshake with `initialize`), newest first.
pub const LEGACY: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Modern-era revisions (stateless, `server/discover`), newest first.
pub const MODERN: &[&str] = &["2026-07-28"];

pub const LATEST_LEGACY: &str = LEGACY[0];
pub const LATEST_MODERN: &str = MODERN[0];

/// The revision a legacy request without `MCP-Protocol-Version` is assumed to speak, as the
/// 2025-06-18 transport specifies.
pub const DEFAULT_LEGACY_HEADER: &str = "2025-03-26";

/// The two eras of MCP: the legacy protocol (`initialize`, `Mcp-Session-Id`, GET streams) and
/// the stateless one (`server/discover`, per-request `_meta`, `Mcp-Method` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    Legacy,
    Modern,
}

impl Era {
    /// The era's name in logs, metrics, audit records and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Era::Legacy => "legacy",
            Era::Modern => "modern",
        }
    }

    /// The era of a revision mcpg speaks.
    pub fn of(version: &str) -> Option<Era> {
        if is_legacy(version) {
            Some(Era::Legacy)
        } else if is_modern(version) {
            Some(Era::Modern)
        } else {
            None
        }
    }
}

pub fn is_legacy(v: &str) -> bool {
    LEGACY.contains(&v)
}

pub fn is_modern(v: &str) -> bool {
    MODERN.contains(&v)
}

pub fn is_supported(v: &str) -> bool {
    is_legacy(v) || is_modern(v)
}

/// The revisions mcpg speaks by era, as `GET /mcpg/meta` names them.
pub fn by_era() -> serde_json::Value {
    serde_json::json!({"modern": MODERN, "legacy": LEGACY})
}

/// Every revision mcpg speaks, newest first.
pub fn all() -> Vec<&'static str> {
    MODERN.iter().chain(LEGACY).copied().collect()
}

/// What the gateway answers a legacy `initialize` asking for `requested`: the same revision
/// when it is a legacy one mcpg speaks, else the newest legacy revision (the client then
/// decides whether it can go on).
pub fn negotiate_legacy(requested: &str) -> &'static str {
    LEGACY
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST_LEGACY)
}

/// The older of two legacy revisions (dates compare as strings).
pub fn older<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a <= b { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate_legacy("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate_legacy("2099-01-01"), LATEST_LEGACY);
        assert_eq!(negotiate_legacy("2026-07-28"), LATEST_LEGACY);
        assert_eq!(older("2025-03-26", "2025-11-25"), "2025-03-26");
    }
}
