//! Per-identity access rules, compiled once: which tool, prompt and resource names a caller may
//! see and use. Pure: `mcp/access.rs` applies the answers to MCP messages.

use serde_json::Value;

use super::Identity;
use crate::config::model::{AccessConfig, AccessDefault, AccessMatch};
use crate::config::parsed::{NamePatterns, RulePatterns};

/// What a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Prompt,
    Resource,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }
}

/// Whether one side of a rule names `name`.
fn named(n: &NamePatterns, kind: Kind, name: &str) -> bool {
    let list = match kind {
        Kind::Tool => &n.tools,
        Kind::Prompt => &n.prompts,
        Kind::Resource => &n.resources,
    };
    list.iter().any(|g| g.is_match(name))
}

struct Rule {
    matches: AccessMatch,
    names: RulePatterns,
}

/// A binding's compiled access rules.
pub struct Policy {
    default_allow: bool,
    rules: Vec<Rule>,
}

impl Policy {
    /// The rules of `cfg` with their name patterns as the config loader compiled them (in
    /// the order of `cfg.rules`). Patterns that do not match the rules one for one are
    /// refused: a rule silently dropped would let callers through.
    pub fn new(cfg: &AccessConfig, patterns: &[RulePatterns]) -> Result<Self, String> {
        if patterns.len() != cfg.rules.len() {
            return Err(format!(
                "{} access rules but {} compiled by the config loader",
                cfg.rules.len(),
                patterns.len()
            ));
        }
        let rules = cfg
            .rules
            .iter()
            .zip(patterns)
            .map(|(r, names)| Rule {
                matches: r.matches.clone(),
                names: names.clone(),
            })
            .collect();
        Ok(Self {
            default_allow: cfg.default == AccessDefault::Allow,
            rules,
        })
    }

    /// Whether `who` may see and use the `kind` named `name` (as the client sees it).
    pub fn allows(&self, who: Option<&Identity>, kind: Kind, name: &str) -> bool {
        let mut allowed = false;
        for r in self.rules.iter().filter(|r| applies(&r.matches, who)) {
            if named(&r.names.deny, kind, name) {
                return false;
            }
            allowed |= named(&r.names.allow, kind, name);
        }
        allowed || self.default_allow
    }
}

/// Whether a rule's (or a rate limit's) `match` selects `who`.
pub fn applies(m: &AccessMatch, who: Option<&Identity>) -> bool {
    if m.tokens.is_empty() && m.subjects.is_empty() && m.claims.is_empty() {
        return true;
    }
    let Some(who) = who else { return false };
    if !m.tokens.is_empty() && !who.token.as_ref().is_some_and(|t| m.tokens.contains(t)) {
        return false;
    }
    if !m.subjects.is_empty() && !who.subject.as_ref().is_some_and(|s| m.subjects.contains(s)) {
        return false;
    }
    m.claims.iter().all(|(k, want)| match who.claims.get(k) {
        Some(Value::String(s)) if k == "scope" => s.split_whitespace().any(|x| x == want),
        Some(Value::String(s)) => s == want,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want.as_str())),
        Some(Value::Bool(b)) => b.to_string() == *want,
        Some(Value::Number(n)) => n.to_string() == *want,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{AccessNames, AccessRule};
    use serde_json::json;

    fn jwt(sub: &str, claims: Value) -> Identity {
        Identity {
            key: format!("jwt:{sub}"),
            token: None,
            subject: Some(sub.into()),
            claims: claims.as_object().unwrap().clone(),
        }
    }

    fn token(name: &str) -> Identity {
        Identity::token(name)
    }

    /// The policy with its patterns compiled as the config loader does.
    fn policy(cfg: &AccessConfig) -> Policy {
        let compile = |n: &AccessNames| {
            let one = |l: &[String]| -> Vec<_> {
                l.iter()
                    .map(|p| crate::config::model::name_pattern(p).unwrap())
                    .collect()
            };
            NamePatterns {
                tools: one(&n.tools),
                prompts: one(&n.prompts),
                resources: one(&n.resources),
            }
        };
        let patterns: Vec<_> = cfg
            .rules
            .iter()
            .map(|r| RulePatterns {
                allow: compile(&r.allow),
                deny: compile(&r.deny),
            })
            .collect();
        Policy::new(cfg, &patterns).expect("one set of patterns per rule")
    }

    fn names(tools: &[&str], prompts: &[&str], resources: &[&str]) -> AccessNames {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        AccessNames {
            tools: v(tools),
            prompts: v(prompts),
            resources: v(resources),
        }
    }

    #[test]
    fn deny_wins_allow_adds_default_decides() {
        let cfg = AccessConfig {
            default: AccessDefault::Deny,
            rules: vec![
                AccessRule {
                    matches: AccessMatch::default(),
                    allow: names(&["time__*"], &[], &[]),
                    deny: names(&[], &[], &["file:///secret/*"]),
                },
                AccessRule {
                    matches: AccessMatch {
                        claims: [("groups".to_string(), "admins".to_string())].into(),
                        ..Default::default()
                    },
                    allow: names(&["*"], &["*"], &["*"]),
                    deny: names(&["*delete*"], &[], &[]),
                },
                AccessRule {
                    matches: AccessMatch {
                        tokens: vec!["ci".into()],
                        ..Default::default()
                    },
                    allow: names(&["echo"], &[], &[]),
                    deny: AccessNames::default(),
                },
            ],
        };
        let p = policy(&cfg);
        let admin = jwt("alice", json!({"groups": ["admins", "x"]}));
        let user = jwt("bob", json!({"groups": "users"}));
        let ci = token("ci");
        assert!(p.allows(None, Kind::Tool, "time__now"));
        assert!(!p.allows(None, Kind::Tool, "echo"));
        assert!(p.allows(Some(&ci), Kind::Tool, "echo"));
        assert!(!p.allows(Some(&user), Kind::Tool, "echo"));
        assert!(p.allows(Some(&admin), Kind::Tool, "echo"));
        assert!(!p.allows(Some(&admin), Kind::Tool, "fs__delete_file"));
        assert!(p.allows(Some(&admin), Kind::Prompt, "any"));
        assert!(!p.allows(Some(&user), Kind::Prompt, "any"));
        // The deny for everyone beats the admins' allow.
        assert!(!p.allows(Some(&admin), Kind::Resource, "file:///secret/key"));
        assert!(p.allows(Some(&admin), Kind::Resource, "file:///public/a"));
    }

    #[test]
    fn subjects_scopes_and_default_allow() {
        let cfg = AccessConfig {
            default: AccessDefault::Allow,
            rules: vec![AccessRule {
                matches: AccessMatch {
                    subjects: vec!["mallory".into()],
                    claims: [("scope".to_string(), "mcp:read".to_string())].into(),
                    ..Default::default()
                },
                allow: AccessNames::default(),
                deny: names(&["*"], &["*"], &["*"]),
            }],
        };
        let p = policy(&cfg);
        let m = jwt("mallory", json!({"scope": "openid mcp:read"}));
        let m2 = jwt("mallory", json!({"scope": "openid"}));
        assert!(!p.allows(Some(&m), Kind::Tool, "t"));
        assert!(p.allows(Some(&m2), Kind::Tool, "t"));
        assert!(p.allows(Some(&token("x")), Kind::Tool, "t"));
        assert!(p.allows(None, Kind::Tool, "t"));
    }

    #[test]
    fn patterns_match_whole_names() {
        let g = crate::config::model::name_pattern("time__get_*").unwrap();
        assert!(g.is_match("time__get_current_time"));
        assert!(!g.is_match("xtime__get_current_time"));
        assert!(
            crate::config::model::name_pattern("file:///a/*")
                .unwrap()
                .is_match("file:///a/b/c.txt")
        );
        assert!(
            crate::config::model::name_pattern("ab?")
                .unwrap()
                .is_match("abc")
        );
        assert!(crate::config::model::name_pattern("[").is_err());
    }
}
