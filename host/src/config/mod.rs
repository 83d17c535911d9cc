//! Configuration: the one loader both `mcpg` and `mcpg-config-check` use.
//!
//! The pipeline is parse (positioned YAML) → interpolate `${env.…}` → validate against the JSON
//! Schema derived from [`model`] → deserialize → semantic rules. Each phase collects every
//! problem it finds; a later phase runs only on what the earlier ones accepted, so one mistake is
//! never reported twice. The result is a [`ValidatedConfig`] that start-up consumes without
//! validating again.

mod diagnostics;
mod interpolate;
pub mod model;
pub mod parsed;
pub mod reference;
mod schema;
mod semantic;
mod yaml;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use diagnostics::{Diagnostic, KeyPath, Pos, Severity};
pub use interpolate::EnvLookup;
pub use model::AppConfig;
pub use schema::app_config_schema;
pub use semantic::{ClusterPlan, RESERVED_PATHS, RESERVED_PREFIXES, resolve as resolve_path};
pub use yaml::SourceMap;

use serde_json::Value;
use url::Url;

/// A configuration that passed every check, with relative paths resolved.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    /// The file as the user named it, for messages.
    pub file: String,
    /// The directory relative paths were resolved against.
    pub base_dir: PathBuf,
    pub config: AppConfig,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// Where other replicas reach this one: configured, or derived from a specific `listen`.
    pub advertise_url: Option<Url>,
    pub cluster: ClusterPlan,
    /// Positions of every key, for diagnostics raised after loading (the plugin phase).
    pub source_map: SourceMap,
    /// The interpolated document, for the same purpose.
    pub document: Value,
    /// What the loader checked, parsed (URLs, headers): start-up never parses config again.
    pub parsed: parsed::Parsed,
}

impl ValidatedConfig {
    /// The one-line summary `mcpg-config-check` prints:
    /// `1 bindings, audit on, observability on, cluster: nats`.
    pub fn summary(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        format!(
            "{} bindings, audit {}, observability {}, cluster: {}",
            self.config.bindings.len(),
            on(self.config.audit.enabled),
            on(self.config.observability.enabled),
            self.config.cluster.kind
        )
    }
}

/// What loading one file produced: the config if it is valid, and every diagnostic.
#[derive(Debug)]
pub struct LoadOutcome {
    pub config: Option<ValidatedConfig>,
    /// Errors and warnings, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
    /// What the plugin phase needs, whenever `cluster` and its plugin entry are usable, even
    /// when other parts of the file are not (so `mcpg-config-check` reports everything in one
    /// run).
    pub plugin: Option<PluginTarget>,
}

/// The coordinator plugin a file selects, with what its findings are positioned by.
#[derive(Debug, Clone)]
pub struct PluginTarget {
    /// Always [`ClusterPlan::Plugin`].
    pub plan: ClusterPlan,
    /// The plugin entry's source, relative paths resolved against the file's directory.
    pub source: model::PluginSource,
    pub source_map: SourceMap,
    pub document: Value,
}

impl ValidatedConfig {
    /// The plugin phase's view of a valid config, if it selects a plugin.
    pub fn plugin_target(&self) -> Option<PluginTarget> {
        let ClusterPlan::Plugin { plugin_index, .. } = &self.cluster else {
            return None;
        };
        Some(PluginTarget {
            plan: self.cluster.clone(),
            source: self.config.plugins.get(*plugin_index)?.source.clone(),
            source_map: self.source_map.clone(),
            document: self.document.clone(),
        })
    }
}

impl LoadOutcome {
    /// A file refused before parsing, with the one reason.
    fn refused(d: Diagnostic) -> Self {
        Self {
            config: None,
            diagnostics: vec![d],
            plugin: None,
        }
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
}

/// The file could not be read at all (as opposed to being read and found invalid).
#[derive(Debug, thiserror::Error)]
#[error("{file}: cannot read: {source}")]
pub struct ReadError {
    pub file: String,
    #[source]
    pub source: std::io::Error,
}

/// A value given on the command line that replaces (or adds) one key of the file, validated
/// with everything else: `--listen` sets `server.listen`.
#[derive(Debug, Clone)]
pub struct Override {
    /// The flag, for messages (`--listen`).
    pub flag: &'static str,
    /// The key as a JSON pointer (`/server/listen`).
    pub pointer: &'static str,
    pub value: Value,
}

/// Reads a config file and validates it, using the process environment for `${env.…}`.
pub fn load_file(path: &Path) -> Result<LoadOutcome, ReadError> {
    load_file_with_overrides(path, &[])
}

/// [`load_file`] with command-line values that win over the file's.
pub fn load_file_with_overrides(
    path: &Path,
    overrides: &[Override],
) -> Result<LoadOutcome, ReadError> {
    let env = |name: &str| std::env::var(name).ok();
    let (file, base_dir, text) = read(path)?;
    Ok(match text {
        Ok(text) => load_str_with(&file, &base_dir, &text, &env, overrides),
        Err(d) => LoadOutcome::refused(d),
    })
}

/// [`load_file_with_overrides`], also returning the SHA-256 (hex) of the bytes it validated:
/// the config's digest, read once with the text so the two cannot disagree.
pub fn load_file_hashed(
    path: &Path,
    overrides: &[Override],
) -> Result<(LoadOutcome, String), ReadError> {
    use sha2::Digest;
    let env = |name: &str| std::env::var(name).ok();
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReadError {
        file: file.clone(),
        source,
    })?;
    let digest = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base_dir = base_dir_of(path);
    let outcome = match decode(bytes) {
        Ok(text) => load_str_with(&file, &base_dir, &text, &env, overrides),
        Err(d) => LoadOutcome::refused(d),
    };
    Ok((outcome, digest))
}

/// Reads a config file and validates it, looking variables up through `env`.
pub fn load_file_with_env(path: &Path, env: EnvLookup<'_>) -> Result<LoadOutcome, ReadError> {
    let (file, base_dir, text) = read(path)?;
    Ok(match text {
        Ok(text) => load_str(&file, &base_dir, &text, env),
        Err(d) => LoadOutcome::refused(d),
    })
}

/// The file's name, directory and text; text that is not UTF-8 is a positioned diagnostic.
type Read = (String, PathBuf, Result<String, Diagnostic>);

fn read(path: &Path) -> Result<Read, ReadError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReadError {
        file: file.clone(),
        source,
    })?;
    let base_dir = base_dir_of(path);
    Ok((file, base_dir, decode(bytes)))
}

/// The directory relative paths in the file at `path` are resolved against.
fn base_dir_of(path: &Path) -> PathBuf {
    path.parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The file's text, or where it stops being UTF-8: the line and column (in characters, like
/// every other position) of the first bad byte.
pub fn decode(bytes: Vec<u8>) -> Result<String, Diagnostic> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let valid = std::str::from_utf8(&bytes[..at]).expect("valid up to here");
        let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
        let pos = Pos {
            line: valid.matches('\n').count() + 1,
            column: valid[line_start..].chars().count() + 1,
        };
        Diagnostic::error(
            pos,
            KeyPath::root(),
            format!(
                "not valid UTF-8: byte 0x{:02X} here (byte offset {at}); mcpg reads config files as UTF-8 text",
                bytes[at]
            ),
        )
    })
}

/// Validates config text. Pure: the only outside input is `env`.
pub fn load_str(file: &str, base_dir: &Path, text: &str, env: EnvLookup<'_>) -> LoadOutcome {
    load_str_with(file, base_dir, text, env, &[])
}

/// [`load_str`] with command-line overrides. A diagnostic about an overridden key says which
/// flag the value came from.
pub fn load_str_with(
    file: &str,
    base_dir: &Path,
    text: &str,
    env: EnvLookup<'_>,
    overrides: &[Override],
) -> LoadOutcome {
    let mut diagnostics = Vec::new();
    let mut plugin = None;
    let config = run(
        file,
        base_dir,
        text,
        env,
        overrides,
        &mut diagnostics,
        &mut plugin,
    );
    for d in &mut diagnostics {
        let pointer = d.path.pointer();
        if let Some(o) = overrides.iter().find(|o| o.pointer == pointer) {
            d.message = format!("{} (value given by {})", d.message, o.flag);
        }
    }
    diagnostics.sort_by_key(|d| (d.pos, d.severity));
    LoadOutcome {
        config,
        diagnostics,
        plugin,
    }
}

fn run(
    file: &str,
    base_dir: &Path,
    text: &str,
    env: EnvLookup<'_>,
    overrides: &[Override],
    diagnostics: &mut Vec<Diagnostic>,
    plugin: &mut Option<PluginTarget>,
) -> Option<ValidatedConfig> {
    let mut root = match yaml::parse(text) {
        Ok(Some(node)) => node,
        // An empty file is the all-defaults configuration.
        Ok(None) => yaml::Node {
            pos: Pos::START,
            kind: yaml::NodeKind::Map(Vec::new()),
        },
        Err(e) => {
            diagnostics.push(e);
            return None;
        }
    };
    let mut errors = Vec::new();
    interpolate::interpolate(&mut root, env, &mut KeyPath::root(), &mut errors);
    let (mut doc, map) = yaml::to_json(&root, &mut errors);
    // A null document (`~`) reads as no settings at all.
    if doc.is_null() {
        doc = Value::Object(Default::default());
    }
    for o in overrides {
        set_pointer(&mut doc, o.pointer, o.value.clone());
    }
    // Values that failed interpolation are not trusted by the later phases either.
    let mut invalid: Vec<String> = errors.iter().map(|d| d.path.pointer()).collect();
    let report = schema::validate(&doc, &map);
    errors.extend(report.diagnostics);
    invalid.extend(report.invalid);
    // Unknown keys are reported; without them the rest of their section is still checkable.
    let mut pruned = doc.clone();
    for pointer in &report.unknown_keys {
        remove_pointer(&mut pruned, pointer);
    }
    let sections = semantic::Sections::extract(&pruned, &invalid);
    let mut checker = semantic::Checker {
        doc: &doc,
        map: &map,
        out: Vec::new(),
        plan: None,
    };
    let derived = checker.check(&sections);
    diagnostics.extend(errors);
    diagnostics.extend(checker.out);
    *plugin = plugin_target(checker.plan, &sections, diagnostics, base_dir, &doc, &map);
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return None;
    }
    let derived = derived?;
    let mut config: AppConfig = match serde_path_to_error::deserialize(&doc) {
        Ok(c) => c,
        Err(e) => {
            // The schema is derived from these types, so this means they disagree: report it at
            // its position rather than panic.
            let path = KeyPath::from_pointer(&path_to_pointer(e.path()), &doc);
            diagnostics.push(Diagnostic::error(
                map.value_pos(&path.pointer()),
                path,
                e.inner().to_string(),
            ));
            return None;
        }
    };
    resolve_paths(&mut config, base_dir);
    let parsed = match parsed::Parsed::build(&config, &map) {
        Ok(p) => p,
        Err(e) => {
            diagnostics.extend(e);
            return None;
        }
    };
    Some(ValidatedConfig {
        file: file.to_owned(),
        base_dir: base_dir.to_path_buf(),
        config,
        listen: derived.listen,
        admin_listen: derived.admin_listen,
        advertise_url: derived.advertise_url,
        cluster: derived.cluster,
        source_map: map,
        document: doc,
        parsed,
    })
}

/// The plugin phase's input, when the plan and its plugin entry are free of errors.
fn plugin_target(
    plan: Option<ClusterPlan>,
    sections: &semantic::Sections,
    diagnostics: &[Diagnostic],
    base_dir: &Path,
    doc: &Value,
    map: &SourceMap,
) -> Option<PluginTarget> {
    let plan = plan?;
    let ClusterPlan::Plugin { plugin_index, .. } = &plan else {
        return None;
    };
    let entry = format!("/plugins/{plugin_index}");
    let broken = diagnostics.iter().any(|d| {
        let p = d.path.pointer();
        d.severity == Severity::Error && (p == entry || p.starts_with(&format!("{entry}/")))
    });
    if broken {
        return None;
    }
    let (_, p) = sections.plugins.iter().find(|(i, _)| i == plugin_index)?;
    let mut source = p.source.clone();
    for path in [source.path.as_mut(), source.cache_dir.as_mut()]
        .into_iter()
        .flatten()
    {
        *path = semantic::resolve(base_dir, path);
    }
    Some(PluginTarget {
        plan,
        source,
        source_map: map.clone(),
        document: doc.clone(),
    })
}

/// Sets the value at a pointer of plain keys, creating the maps on the way (a non-map in the
/// way is replaced: the flag wins).
fn set_pointer(doc: &mut Value, pointer: &str, value: Value) {
    let mut cur = doc;
    let mut keys = pointer.split('/').skip(1).peekable();
    while let Some(k) = keys.next() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let map = cur.as_object_mut().expect("made a map");
        if keys.peek().is_none() {
            map.insert(k.to_owned(), value);
            return;
        }
        cur = map
            .entry(k.to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

fn remove_pointer(doc: &mut Value, pointer: &str) {
    if let Some((parent, key)) = pointer.rsplit_once('/') {
        let key = key.replace("~1", "/").replace("~0", "~");
        if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
            m.remove(&key);
        }
    }
}

fn path_to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", diagnostics::escape_pointer(key))),
            Segment::Enum { variant } => out.push_str(&format!("/{variant}")),
            Segment::Unknown => {}
        }
    }
    out
}

/// Makes every path in the config absolute against the config file's directory.
fn resolve_paths(config: &mut AppConfig, base: &Path) {
    use semantic::resolve;
    for p in &mut config.plugins {
        if let Some(path) = &mut p.source.path {
            *path = resolve(base, path);
        }
        if let Some(dir) = &mut p.source.cache_dir {
            *dir = resolve(base, dir);
        }
    }
    for b in &mut config.bindings {
        for u in &mut b.upstreams {
            if let Some(cwd) = u.stdio.as_mut().and_then(|s| s.cwd.as_mut()) {
                *cwd = resolve(base, cwd);
            }
            if let Some(ca) = u.http.as_mut().and_then(|h| h.ca_file.as_mut()) {
                *ca = resolve(base, ca);
            }
            for e in &mut u.endpoints {
                if let Some(cwd) = e.stdio.as_mut().and_then(|s| s.cwd.as_mut()) {
                    *cwd = resolve(base, cwd);
                }
                if let Some(ca) = e.http.as_mut().and_then(|h| h.ca_file.as_mut()) {
                    *ca = resolve(base, ca);
                }
            }
        }
        if let Some(j) = b.auth.as_mut().and_then(|a| a.jwt.as_mut()) {
            for p in [j.jwks_file.as_mut(), j.ca_file.as_mut()]
                .into_iter()
                .flatten()
            {
                *p = resolve(base, p);
            }
        }
    }
    let server = &mut config.server;
    for tls in [server.tls.as_mut(), server.admin_tls.as_mut()]
        .into_iter()
        .flatten()
    {
        tls.cert_file = resolve(base, &tls.cert_file);
        tls.key_file = resolve(base, &tls.key_file);
    }
    if let Some(ca) = &mut server.forwarding_ca_file {
        *ca = resolve(base, ca);
    }
    let c = &mut config.mcp.configurations;
    for cap in [
        &mut c.sessions,
        &mut c.pipelines,
        &mut c.tasks,
        &mut c.subscriptions,
        &mut c.delivery,
        &mut c.cancellation,
    ] {
        if let Some(dir) = &mut cap.store.dir {
            *dir = resolve(base, dir);
        }
    }
    if let Some(f) = &mut config.audit.file {
        f.path = resolve(base, &f.path);
    }
}
