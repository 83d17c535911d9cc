//! Whether the endpoints of a pool offer the same tools: each endpoint's `tools/list` (every
//! page) read on its shared conversation, and the lists compared by name and definition.
//! A difference is reported (a warning in the log, `tool_lists` in the management API),
//! never merged: clients keep seeing the list of whichever endpoint answers them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::Upstream;
use crate::mcp::wire::meta;

/// At most this many pages of one endpoint's list are read.
const MAX_PAGES: usize = 100;

/// One endpoint's tools: each name with its definition as JSON text.
pub type Tools = BTreeMap<String, String>;

/// The last comparison of a pool's tool lists.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Comparison {
    /// When the lists were compared (Unix milliseconds).
    pub checked_ms: u64,
    /// Every endpoint that answered lists the same tools, defined alike.
    pub consistent: bool,
    /// How many tools each endpoint that answered lists.
    pub tools: BTreeMap<String, usize>,
    /// Tools that only some endpoints list: each with the endpoints that list it.
    pub only_on: BTreeMap<String, Vec<String>>,
    /// Tools every endpoint lists, but defined differently (description, schemas, …).
    pub defined_differently: Vec<String>,
    /// Endpoints whose list could not be read, with why; they are left out of the comparison.
    pub unreadable: BTreeMap<String, String>,
}

impl Comparison {
    /// Whether two comparisons report the same difference (the time aside).
    pub fn same_finding(&self, other: &Self) -> bool {
        self.consistent == other.consistent
            && self.only_on == other.only_on
            && self.defined_differently == other.defined_differently
    }
}

/// Compares what each endpoint listed.
pub fn compare(lists: &[(String, Result<Tools, String>)], checked_ms: u64) -> Comparison {
    let mut c = Comparison {
        checked_ms,
        ..Default::default()
    };
    let read: Vec<(&String, &Tools)> = lists
        .iter()
        .filter_map(|(name, r)| match r {
            Ok(t) => Some((name, t)),
            Err(e) => {
                c.unreadable.insert(name.clone(), e.clone());
                None
            }
        })
        .collect();
    let mut names: Vec<&String> = read.iter().flat_map(|(_, t)| t.keys()).collect();
    names.sort();
    names.dedup();
    for tool in names {
        let having: Vec<(&String, &String)> = read
            .iter()
            .filter_map(|(ep, t)| t.get(tool).map(|d| (*ep, d)))
            .collect();
        if having.len() < read.len() {
            let eps = having.iter().map(|(ep, _)| (*ep).clone()).collect();
            c.only_on.insert(tool.clone(), eps);
        } else if having.iter().any(|(_, d)| *d != having[0].1) {
            c.defined_differently.push(tool.clone());
        }
    }
    c.tools = read
        .iter()
        .map(|(ep, t)| ((*ep).clone(), t.len()))
        .collect();
    c.consistent = c.only_on.is_empty() && c.defined_differently.is_empty();
    c
}

/// One endpoint's tools, every page, on its shared conversation.
pub async fn fetch(up: &Upstream) -> Result<Tools, String> {
    let h = up.modern().await.map_err(|e| e.message)?;
    let mut tools = Tools::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut params = Map::new();
        if let Some(c) = cursor.take() {
            params.insert("cursor".into(), json!(c));
        }
        if h.native {
            meta::stamp_gateway(&mut params);
        } else {
            meta::strip_params_fields(&mut params);
        }
        let call = h.conn.call("tools/list", Some(Value::Object(params)));
        let page = tokio::time::timeout(up.timeout, call)
            .await
            .map_err(|_| "tools/list timed out".to_owned())?
            .map_err(|e| e.message)?;
        for t in page["tools"].as_array().into_iter().flatten() {
            if let Some(name) = t["name"].as_str() {
                tools.insert(name.to_owned(), t.to_string());
            }
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(tools),
        }
    }
    Ok(tools)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(defs: &[(&str, &str)]) -> Result<Tools, String> {
        Ok(defs
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect())
    }

    #[test]
    fn alike_lists_are_consistent() {
        let c = compare(
            &[
                ("a".into(), tools(&[("echo", "1"), ("add", "2")])),
                ("b".into(), tools(&[("add", "2"), ("echo", "1")])),
            ],
            7,
        );
        assert!(c.consistent, "{c:?}");
        assert_eq!(c.tools["a"], 2);
        assert_eq!(c.checked_ms, 7);
    }

    #[test]
    fn missing_and_differently_defined_tools_are_reported_and_unreadable_lists_left_out() {
        let c = compare(
            &[
                ("a".into(), tools(&[("echo", "1"), ("add", "2")])),
                ("b".into(), tools(&[("echo", "1*")])),
                ("c".into(), Err("connection refused".into())),
            ],
            0,
        );
        assert!(!c.consistent);
        assert_eq!(c.only_on["add"], ["a"]);
        assert_eq!(c.defined_differently, ["echo"]);
        assert_eq!(c.unreadable["c"], "connection refused");
        assert!(!c.tools.contains_key("c"));
        let again = compare(
            &[
                ("a".into(), tools(&[("echo", "1"), ("add", "2")])),
                ("b".into(), tools(&[("echo", "1*")])),
            ],
            99,
        );
        assert!(c.same_finding(&again));
    }
}
