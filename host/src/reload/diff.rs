//! What a reload changes, decided once and purely between two validated configs: each binding
//! kept, changed in place, replaced, added or removed; each upstream kept, replaced, added or
//! removed; and the keys whose new value needs a restart, by key path.
//!
//! Values are compared in their serialised form (the config types are the schema, so two
//! configs that serialise alike are alike), which needs no `PartialEq` on the model and no
//! knowledge of the pools' internals.

use serde_json::Value;

use crate::config::model::{AppConfig, BindingConfig, UpstreamConfig};
use crate::config::{KeyPath, ValidatedConfig};

/// What happens to one binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindingChange {
    /// Identical: the same live object goes on serving, sessions untouched.
    Kept,
    /// Only settings swapped under live sessions changed (auth, access rules, rate limits,
    /// `ready_requires`, `on_upstream_failure`): a new binding object on the same upstream
    /// pools, in the same order; its sessions go on.
    InPlace,
    /// Its upstream set, path or naming changed: a new binding object (unchanged upstreams
    /// keep their pools); its live sessions move to it (handed over and claimed again:
    /// conversations with kept upstreams resume, replaced and added upstreams are
    /// initialised with the client's recorded hello, removed ones are dropped).
    Replaced,
    Added,
    /// Its route goes; its live sessions end.
    Removed,
}

/// What happens to one upstream of a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamChange {
    /// Same settings (and the same default timeout): the same pool, with its children,
    /// connections, health and outlier state.
    Kept,
    /// Any setting changed (command, URL, endpoints, timeouts, health, …): a new pool; the
    /// old one goes with the last session or request that holds it.
    Replaced,
    Added,
    Removed,
}

/// One binding's part of a [`Diff`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BindingDiff {
    pub name: String,
    pub change: BindingChange,
    /// Its upstreams, by name, in the new order, then the removed ones.
    pub upstreams: Vec<(String, UpstreamChange)>,
}

/// Everything a reload would change.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    /// Every binding of either config: the new config's in order, then the removed ones.
    pub bindings: Vec<BindingDiff>,
    /// Keys whose new value takes effect only after a restart, as key paths
    /// (`server.listen`, `cluster.url`), the deepest key that differs.
    pub restart_required: Vec<String>,
    /// The new `observability.logs.level`, when it changed.
    pub log_level: Option<String>,
    /// Whether the `audit` section changed (applied by [`crate::audit::Auditor::reconfigure`];
    /// only `audit.queue_capacity` needs a restart).
    pub audit: bool,
}

/// The top-level sections (and keys of sections) that need a restart, as JSON pointers: the
/// listeners, the cluster and its plugin, the capability stores, the session registry and
/// everything started once per process (the audit queue, log subscriber, trace exporter).
/// Everything else (`bindings`, `mcp.limits.request_timeout_ms`, `audit` but its queue,
/// `observability.logs.level`) is applied.
pub const RESTART_REQUIRED: &[&str] = &[
    "/server",
    "/cluster",
    "/plugins",
    "/mcp/configurations",
    "/mcp/sessions",
    "/mcp/limits/max_request_bytes",
    "/audit/queue_capacity",
    "/observability/enabled",
    "/observability/logs/format",
    "/observability/tracing",
];

impl Diff {
    /// Whether applying this diff changes nothing that is applied without a restart.
    pub fn is_empty(&self) -> bool {
        self.log_level.is_none()
            && !self.audit
            && self
                .bindings
                .iter()
                .all(|b| b.change == BindingChange::Kept)
    }

    /// The bindings whose live sessions end: the removed ones.
    pub fn ending(&self) -> impl Iterator<Item = &str> {
        self.bindings
            .iter()
            .filter(|b| b.change == BindingChange::Removed)
            .map(|b| b.name.as_str())
    }

    /// The bindings whose live sessions move to a new binding object, each with the
    /// upstreams whose conversations they lose (replaced or removed).
    pub fn moving(&self) -> impl Iterator<Item = (&str, Vec<String>)> {
        self.bindings
            .iter()
            .filter(|b| b.change == BindingChange::Replaced)
            .map(|b| {
                let lost = b
                    .upstreams
                    .iter()
                    .filter(|(_, c)| {
                        matches!(c, UpstreamChange::Replaced | UpstreamChange::Removed)
                    })
                    .map(|(n, _)| n.clone())
                    .collect();
                (b.name.as_str(), lost)
            })
    }

    pub fn binding(&self, name: &str) -> Option<&BindingDiff> {
        self.bindings.iter().find(|b| b.name == name)
    }

    /// `added: a; in place: b; replaced: c; removed: d`, for the log line.
    pub fn summary(&self) -> String {
        let of = |c: BindingChange| {
            self.bindings
                .iter()
                .filter(|b| b.change == c)
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        [
            ("added", BindingChange::Added),
            ("in place", BindingChange::InPlace),
            ("replaced", BindingChange::Replaced),
            ("removed", BindingChange::Removed),
        ]
        .into_iter()
        .map(|(label, c)| (label, of(c)))
        .filter(|(_, names)| !names.is_empty())
        .map(|(label, names)| format!("{label}: {names}"))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

/// The diff from `old` (running) to `new` (just validated). Restart-needing keys are compared
/// against `boot`, the config the process started with, so a key changed by an earlier reload
/// is still reported until the process restarts.
pub fn diff(boot: &ValidatedConfig, old: &ValidatedConfig, new: &ValidatedConfig) -> Diff {
    let (old_timeout, new_timeout) = (
        old.config.mcp.limits.request_timeout_ms,
        new.config.mcp.limits.request_timeout_ms,
    );
    let mut bindings: Vec<BindingDiff> = new
        .config
        .bindings
        .iter()
        .map(|b| match find(&old.config, &b.name) {
            None => BindingDiff {
                name: b.name.clone(),
                change: BindingChange::Added,
                upstreams: b
                    .upstreams
                    .iter()
                    .map(|u| (u.name.clone(), UpstreamChange::Added))
                    .collect(),
            },
            Some(was) => binding_diff(was, b, (old_timeout, new_timeout)),
        })
        .collect();
    for b in &old.config.bindings {
        if find(&new.config, &b.name).is_none() {
            bindings.push(BindingDiff {
                name: b.name.clone(),
                change: BindingChange::Removed,
                upstreams: b
                    .upstreams
                    .iter()
                    .map(|u| (u.name.clone(), UpstreamChange::Removed))
                    .collect(),
            });
        }
    }
    let level = |c: &ValidatedConfig| c.config.observability.logs.level.clone();
    Diff {
        bindings,
        restart_required: restart_keys(&boot.config, &new.config),
        log_level: (level(old) != level(new)).then(|| level(new)),
        audit: value(&old.config.audit) != value(&new.config.audit),
    }
}

fn find<'a>(c: &'a AppConfig, name: &str) -> Option<&'a BindingConfig> {
    c.bindings.iter().find(|b| b.name == name)
}

/// Whether an upstream keeps its pool: the same settings under the same default request
/// timeout (the default counts only where the upstream sets none of its own).
pub fn same_upstream(
    old: &UpstreamConfig,
    new: &UpstreamConfig,
    (old_timeout, new_timeout): (u64, u64),
) -> bool {
    let timeout = |u: &UpstreamConfig, d: u64| u.request_timeout_ms.unwrap_or(d);
    value(old) == value(new) && timeout(old, old_timeout) == timeout(new, new_timeout)
}

fn binding_diff(old: &BindingConfig, new: &BindingConfig, timeouts: (u64, u64)) -> BindingDiff {
    let mut upstreams: Vec<(String, UpstreamChange)> = new
        .upstreams
        .iter()
        .map(|u| {
            let change = match old.upstreams.iter().find(|o| o.name == u.name) {
                None => UpstreamChange::Added,
                Some(o) if same_upstream(o, u, timeouts) => UpstreamChange::Kept,
                Some(_) => UpstreamChange::Replaced,
            };
            (u.name.clone(), change)
        })
        .collect();
    for o in &old.upstreams {
        if !new.upstreams.iter().any(|u| u.name == o.name) {
            upstreams.push((o.name.clone(), UpstreamChange::Removed));
        }
    }
    let same_order = old
        .upstreams
        .iter()
        .map(|u| &u.name)
        .eq(new.upstreams.iter().map(|u| &u.name));
    let upstreams_kept = same_order && upstreams.iter().all(|(_, c)| *c == UpstreamChange::Kept);
    // What a live session was built on: its path, its upstreams (one conversation each, by
    // index) and the names its client has listed (prefix and separator).
    let session_shape = |b: &BindingConfig| (b.path.clone(), value(&b.prefix), b.separator.clone());
    let change = if !upstreams_kept || session_shape(old) != session_shape(new) {
        BindingChange::Replaced
    } else if value(old) != value(new) {
        BindingChange::InPlace
    } else {
        BindingChange::Kept
    };
    BindingDiff {
        name: new.name.clone(),
        change,
        upstreams,
    }
}

fn value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("config types serialise")
}

/// Every restart-needing key that differs between the two configs, the deepest differing key
/// of each (values are never named: they may be secrets).
fn restart_keys(boot: &AppConfig, new: &AppConfig) -> Vec<String> {
    let (boot, new) = (value(boot), value(new));
    let mut out = Vec::new();
    for pointer in RESTART_REQUIRED {
        let (a, b) = (boot.pointer(pointer), new.pointer(pointer));
        if a != b {
            let mut path = KeyPath::from_pointer(pointer, &new);
            leaves(a, b, &mut path, &mut out);
        }
    }
    out
}

/// The key paths below `path` where `a` and `b` differ: into maps key by key, into arrays of
/// the same length index by index; anything else is reported where it differs.
fn leaves(a: Option<&Value>, b: Option<&Value>, path: &mut KeyPath, out: &mut Vec<String>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if x.get(k) != y.get(k) {
                    path.push_key(k);
                    leaves(x.get(k), y.get(k), path, out);
                    path.pop();
                }
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if p != q {
                    path.push_index(i);
                    leaves(Some(p), Some(q), path, out);
                    path.pop();
                }
            }
        }
        _ => out.push(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(yaml: &str) -> ValidatedConfig {
        let env = |_: &str| None;
        let out = crate::config::load_str("t.yaml", Path::new("/tmp"), yaml, &env);
        let errors: Vec<String> = out.errors().map(|d| d.render("t.yaml")).collect();
        out.config
            .unwrap_or_else(|| panic!("invalid test config: {errors:?}"))
    }

    /// A config with bindings `a` (upstreams `x`, `y`) and `b` (upstream `z`), with `extra`
    /// spliced into binding `a` and `tail` appended at the top level.
    fn cfg(x_url: &str, a_extra: &str, tail: &str) -> ValidatedConfig {
        load(&format!(
            "server:\n  listen: 127.0.0.1:8080\n\
             bindings:\n\
             - name: a\n  path: /a\n{a_extra}  upstreams:\n\
             \x20 - name: x\n    http: {{url: \"{x_url}\"}}\n\
             \x20 - name: y\n    stdio: {{command: srv}}\n\
             - name: b\n  path: /b\n  upstreams:\n\
             \x20 - name: z\n    stdio: {{command: other}}\n{tail}"
        ))
    }

    fn base() -> ValidatedConfig {
        cfg("http://127.0.0.1:9000/mcp", "", "")
    }

    fn change(d: &Diff, name: &str) -> BindingChange {
        d.binding(name).expect("binding in diff").change
    }

    fn upstream(d: &Diff, binding: &str, name: &str) -> UpstreamChange {
        d.binding(binding)
            .expect("binding")
            .upstreams
            .iter()
            .find(|(n, _)| n == name)
            .expect("upstream")
            .1
    }

    #[test]
    fn identical_configs_keep_everything() {
        let (old, new) = (base(), base());
        let d = diff(&old, &old, &new);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(change(&d, "a"), BindingChange::Kept);
        assert_eq!(upstream(&d, "a", "x"), UpstreamChange::Kept);
        assert!(d.restart_required.is_empty());
        assert_eq!(d.ending().count(), 0);
    }

    #[test]
    fn an_access_rule_changes_a_binding_in_place_and_keeps_its_upstreams() {
        let old = base();
        let new = cfg(
            "http://127.0.0.1:9000/mcp",
            "  access:\n    default: allow\n    rules:\n    - deny: {tools: [\"x_danger\"]}\n",
            "",
        );
        let d = diff(&old, &old, &new);
        assert_eq!(change(&d, "a"), BindingChange::InPlace);
        assert_eq!(upstream(&d, "a", "x"), UpstreamChange::Kept);
        assert_eq!(upstream(&d, "a", "y"), UpstreamChange::Kept);
        assert_eq!(change(&d, "b"), BindingChange::Kept);
        assert_eq!(
            d.ending().count(),
            0,
            "sessions of an in-place change go on"
        );
        assert!(!d.is_empty());
    }

    #[test]
    fn a_changed_url_replaces_the_upstream_and_moves_the_bindings_sessions() {
        let old = base();
        let new = cfg("http://127.0.0.1:9001/mcp", "", "");
        let d = diff(&old, &old, &new);
        assert_eq!(upstream(&d, "a", "x"), UpstreamChange::Replaced);
        assert_eq!(
            upstream(&d, "a", "y"),
            UpstreamChange::Kept,
            "y keeps its pool"
        );
        assert_eq!(change(&d, "a"), BindingChange::Replaced);
        assert_eq!(change(&d, "b"), BindingChange::Kept);
        assert_eq!(d.ending().count(), 0);
        let moving: Vec<_> = d.moving().collect();
        assert_eq!(
            moving,
            [("a", vec!["x".to_owned()])],
            "only x's conversation is lost"
        );
    }

    #[test]
    fn the_default_timeout_counts_only_for_upstreams_without_their_own() {
        let old = base();
        let new = cfg(
            "http://127.0.0.1:9000/mcp",
            "",
            "mcp:\n  limits:\n    request_timeout_ms: 1234\n",
        );
        let d = diff(&old, &old, &new);
        assert_eq!(upstream(&d, "a", "x"), UpstreamChange::Replaced);
        assert_eq!(upstream(&d, "b", "z"), UpstreamChange::Replaced);
        let pinned = |ms: u64| {
            let y: UpstreamConfig = serde_json::from_value(serde_json::json!({
                "name": "y", "stdio": {"command": "srv"}, "request_timeout_ms": 500
            }))
            .unwrap();
            same_upstream(&y, &y, (30_000, ms))
        };
        assert!(
            pinned(1234),
            "an upstream's own timeout wins over the default"
        );
    }

    #[test]
    fn added_and_removed_bindings_and_upstreams() {
        let old = base();
        let new = load(
            "bindings:\n\
             - name: a\n  path: /a\n  upstreams:\n\
             \x20 - name: x\n    http: {url: \"http://127.0.0.1:9000/mcp\"}\n\
             \x20 - name: y\n    stdio: {command: srv}\n\
             \x20 - name: w\n    stdio: {command: new}\n\
             - name: c\n  path: /c\n  upstreams:\n\
             \x20 - name: z\n    stdio: {command: other}\n",
        );
        let d = diff(&old, &old, &new);
        assert_eq!(upstream(&d, "a", "w"), UpstreamChange::Added);
        assert_eq!(upstream(&d, "a", "x"), UpstreamChange::Kept);
        assert_eq!(change(&d, "a"), BindingChange::Replaced);
        assert_eq!(change(&d, "c"), BindingChange::Added);
        assert_eq!(change(&d, "b"), BindingChange::Removed);
        assert_eq!(upstream(&d, "b", "z"), UpstreamChange::Removed);
        assert_eq!(d.ending().collect::<Vec<_>>(), ["b"]);
        let moving: Vec<_> = d.moving().collect();
        assert_eq!(moving, [("a", vec![])], "an added upstream loses nothing");
        assert_eq!(d.summary(), "added: c; replaced: a; removed: b");
    }

    #[test]
    fn a_new_path_or_reordered_upstreams_replace_the_binding() {
        let old = base();
        let moved = load(
            "bindings:\n\
             - name: a\n  path: /a2\n  upstreams:\n\
             \x20 - name: x\n    http: {url: \"http://127.0.0.1:9000/mcp\"}\n\
             \x20 - name: y\n    stdio: {command: srv}\n\
             - name: b\n  path: /b\n  upstreams:\n\
             \x20 - name: z\n    stdio: {command: other}\n",
        );
        assert_eq!(
            change(&diff(&old, &old, &moved), "a"),
            BindingChange::Replaced
        );
        let reordered = load(
            "bindings:\n\
             - name: a\n  path: /a\n  upstreams:\n\
             \x20 - name: y\n    stdio: {command: srv}\n\
             \x20 - name: x\n    http: {url: \"http://127.0.0.1:9000/mcp\"}\n\
             - name: b\n  path: /b\n  upstreams:\n\
             \x20 - name: z\n    stdio: {command: other}\n",
        );
        let d = diff(&old, &old, &reordered);
        assert_eq!(change(&d, "a"), BindingChange::Replaced);
        assert_eq!(
            upstream(&d, "a", "x"),
            UpstreamChange::Kept,
            "its pool is reused"
        );
    }

    #[test]
    fn restart_keys_are_named_by_path_and_compared_with_the_boot_config() {
        let boot = base();
        let new = cfg(
            "http://127.0.0.1:9000/mcp",
            "",
            "audit:\n  enabled: true\n  stdout: true\n  queue_capacity: 5\n",
        );
        let new = {
            let mut n = new;
            // As if the file also moved the listener (the loader derives `listen` from it).
            n.config.server.listen = "127.0.0.1:9999".into();
            n
        };
        let d = diff(&boot, &boot, &new);
        assert!(d.audit, "the audit section is applied");
        assert!(!d.is_empty());
        assert!(d.log_level.is_none());
        assert_eq!(
            d.restart_required,
            ["server.listen", "audit.queue_capacity"]
        );
        // A later reload that keeps the change still names it: it has not taken effect.
        let again = diff(&boot, &new, &new);
        assert_eq!(again.restart_required, d.restart_required);
    }

    #[test]
    fn the_log_level_is_applied_and_the_log_format_needs_a_restart() {
        let boot = base();
        let new = cfg(
            "http://127.0.0.1:9000/mcp",
            "",
            "observability:\n  logs:\n    level: debug\n    format: json\n",
        );
        let d = diff(&boot, &boot, &new);
        assert_eq!(d.log_level.as_deref(), Some("debug"));
        assert!(!d.is_empty());
        assert_eq!(d.restart_required, ["observability.logs.format"]);
    }
}
