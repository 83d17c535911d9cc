//! The architecture invariants ARCHITECTURE.md states, checked the way rust-analyzer's
//! `xtask/src/tidy.rs` checks its own: one `#[test]` per **Architecture Invariant**, named after
//! it, whose failure message starts with the invariant's title and lists every offender at once.
//!
//! Plain std + serde_json. Crate dependencies come from `cargo metadata`; everything else from a
//! small scanner of Rust source (comments and literals stripped, `#[cfg(test)]` items dropped
//! where a rule is about shipped code) at the bottom of this file, which has tests of its own.
//! The allowed-lists are the constants right below: change them together with ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// The invariants' titles, as ARCHITECTURE.md states them.

const CRATE_DEPS: &str = "plugin-api depends on no crate of ours, plugins never on the host, and the host links no plugin";
const CONFIG_DEPS: &str = "config depends on neither auth, mcp, control nor server";
const REPR_C: &str =
    "only plugin-api/src/abi.rs is #[repr(C)], and only plugin-api names abi_stable";
const HTTP: &str = "only front/, cluster/forward.rs and upstream/http.rs know HTTP";
const MODULE_DOCS: &str = "every module starts with a //! line saying what it owns";
const NO_CYCLES: &str = "no import cycles between the modules of host";
const SHORT_FUNCTIONS: &str = "data-plane functions fit on a screen, and no function takes so many arguments that a struct is missing";

/// The data plane, where every function stays readable in one screen.
const SHORT_FUNCTIONS_IN: &str = "host/src/mcp/";
/// The most lines a function of the data plane may span, signature to closing brace.
const MAX_FUNCTION_LINES: usize = 80;

// ---------------------------------------------------------------------------------------------
// Crate dependencies (normal and build dependencies among the workspace's own crates).

const HOST_CRATE: &str = "mcpg";
const PLUGIN_API_CRATE: &str = "mcpg-plugin-api";
/// The crates of the plugin boundary and the only workspace crates each may depend on.
const BOUNDARY_CRATES: &[(&str, &[&str])] = &[
    ("mcpg-plugin-api", &[]),
    ("mcpg-plugin-testkit", &["mcpg-plugin-api"]),
];
/// Every crate whose manifest is under this folder is a plugin.
const PLUGINS_DIR: &str = "plugins/";

// ---------------------------------------------------------------------------------------------
// Inside host/src: what the config module must not import (paths `crate::<one of these>`).

const CONFIG_MODULE: &str = "host/src/config/";
const CONFIG_MUST_NOT_IMPORT: &[&str] = &["auth", "mcp", "control", "server"];

// ---------------------------------------------------------------------------------------------
// `#[repr(C)]` and abi_stable.

/// The only file that may be `#[repr(C)]`.
const REPR_C_ALLOWED: &[&str] = &["plugin-api/src/abi.rs"];
/// The only files that may name `abi_stable`: the boundary itself, the export glue
/// (`export_plugin!` spells abi_stable's root-module symbol through `$crate::abi_stable`), the
/// host-side loader (libraries are loaded and layout-checked through abi_stable), and the crate
/// root's `pub use abi_stable` that the export macro's `$crate` paths go through.
const ABI_STABLE_ALLOWED: &[&str] = &[
    "plugin-api/src/abi.rs",
    "plugin-api/src/export.rs",
    "plugin-api/src/remote.rs",
    "plugin-api/src/lib.rs",
];
/// Test fixtures that exist to be different: each declares its own `#[repr(C)]` root module
/// with abi_stable directly, to prove the loader refuses a library with another layout
/// (`abi-skew`) or built against an incompatible plugin-api (`version-skew`).
const ABI_FIXTURES: &[&str] = &["tests/plugins/abi-skew/", "tests/plugins/version-skew/"];
/// The crates that may depend on abi_stable (the fixtures above, and plugin-api).
const ABI_STABLE_CRATES: &[&str] = &[
    "mcpg-plugin-api",
    "mcpg-test-plugin-abi-skew",
    "mcpg-test-plugin-version-skew",
];

// ---------------------------------------------------------------------------------------------
// HTTP libraries in host/src (the plain `http` types crate is not one of them).

const HTTP_CRATES: &[&str] = &[
    "axum",
    "hyper",
    "hyper_rustls",
    "hyper_util",
    "reqwest",
    "tower",
];
/// Where in host/src a path into an HTTP library may appear: a folder (ending in `/`) or a file.
const HTTP_ALLOWED: &[&str] = &[
    "host/src/server/",
    "host/src/tls.rs",
    // The admin routes (`/api/cluster/status`, `/api/cluster/peers`, `/mcpg/meta`).
    "host/src/control/mod.rs",
    // The `GET /metrics` handler.
    "host/src/telemetry/metrics.rs",
    // W3C Trace Context in HTTP headers; the OTLP/HTTP exporter.
    "host/src/telemetry/traces.rs",
    "host/src/oci/registry.rs",
    // The JWKS fetcher: the one HTTP client in auth.
    "host/src/auth/jwks_http.rs",
    // Composing the routers at boot.
    "host/src/cli/",
    "host/src/cli.rs",
    "host/src/mcp/front/",
    "host/src/mcp/cluster/forward.rs",
    "host/src/mcp/upstream/http.rs",
    // The fuzz targets' entry points build request bodies and upstream answers in memory.
    "host/src/fuzzing.rs",
];

// ---------------------------------------------------------------------------------------------
// Module docs: every .rs file under these folders (`*` is any one folder) starts with `//!`.

const DOC_ROOTS: &[&str] = &[
    "host/src",
    "plugin-api/src",
    "plugin-api/testkit/src",
    "plugins/*/src",
    "tools/src",
    "tools/backends/src",
    "bench/src",
    "bench/fixture/src",
];

// ---------------------------------------------------------------------------------------------
// Import cycles.

const HOST_SRC: &str = "host/src/";
/// At most this many cycles are listed.
const MAX_CYCLES: usize = 20;

// =============================================================================================
// The invariants.

#[test]
fn plugin_api_depends_on_no_crate_of_ours_and_plugins_never_on_the_host() {
    let meta = metadata();
    let workspace: BTreeSet<&str> = meta.packages.iter().map(|p| p.name.as_str()).collect();
    let mut offenders = Vec::new();
    for p in &meta.packages {
        let ours = p.deps.iter().filter(|d| workspace.contains(d.as_str()));
        if let Some((_, allowed)) = BOUNDARY_CRATES.iter().find(|(name, _)| *name == p.name) {
            for d in ours.filter(|d| !allowed.contains(&d.as_str())) {
                let allowed = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                offenders.push(format!(
                    "{}: {} depends on {d} (allowed among ours: {allowed})",
                    p.dep_site(d),
                    p.name
                ));
            }
        } else if p.manifest.starts_with(PLUGINS_DIR) {
            for d in ours.filter(|d| *d == HOST_CRATE) {
                offenders.push(format!(
                    "{}: plugin {} depends on the host ({d})",
                    p.dep_site(d),
                    p.name
                ));
            }
        } else if p.name == HOST_CRATE {
            let plugins: BTreeSet<&str> = meta
                .packages
                .iter()
                .filter(|q| q.manifest.starts_with(PLUGINS_DIR))
                .map(|q| q.name.as_str())
                .collect();
            for d in ours.filter(|d| plugins.contains(d.as_str())) {
                offenders.push(format!("{}: the host depends on plugin {d}", p.dep_site(d)));
            }
            if !p.deps.iter().any(|d| d == PLUGIN_API_CRATE) {
                offenders.push(format!(
                    "{}:1: the host does not depend on {PLUGIN_API_CRATE}",
                    p.manifest
                ));
            }
        }
    }
    check(CRATE_DEPS, "", offenders);
}

#[test]
fn config_depends_on_neither_auth_mcp_control_nor_server() {
    let mut offenders = Vec::new();
    for f in host_files()
        .iter()
        .filter(|f| f.rel.starts_with(CONFIG_MODULE) && !f.test_only)
    {
        for r in &f.refs {
            if let Target::Crate(abs) = &r.target
                && abs
                    .first()
                    .is_some_and(|m| CONFIG_MUST_NOT_IMPORT.contains(&m.as_str()))
            {
                let resolved = format!("crate::{}", abs.join("::"));
                let also = if r.written == resolved {
                    String::new()
                } else {
                    format!(" (= {resolved})")
                };
                offenders.push(format!("{}:{}: `{}`{also}", f.rel, r.line, r.written));
            }
        }
    }
    check(CONFIG_DEPS, "", offenders);
}

#[test]
fn only_abi_rs_is_repr_c_and_only_plugin_api_names_abi_stable() {
    let root = workspace_root();
    let mut offenders = Vec::new();
    for path in rust_files(root) {
        let rel = rel_path(root, &path);
        if ABI_FIXTURES.iter().any(|f| rel.starts_with(f)) {
            continue;
        }
        let text = read(&path);
        let tokens = lex(&text);
        if !REPR_C_ALLOWED.contains(&rel.as_str()) {
            for line in repr_c_lines(&tokens) {
                offenders.push(format!("{rel}:{line}: #[repr(C)]"));
            }
        }
        if !ABI_STABLE_ALLOWED.contains(&rel.as_str()) {
            for t in tokens.iter().filter(|t| t.is_ident("abi_stable")) {
                offenders.push(format!("{rel}:{}: names abi_stable", t.line));
            }
        }
    }
    for p in &metadata().packages {
        if p.deps.iter().any(|d| d == "abi_stable") && !ABI_STABLE_CRATES.contains(&p.name.as_str())
        {
            offenders.push(format!(
                "{}: {} depends on abi_stable",
                p.dep_site("abi_stable"),
                p.name
            ));
        }
    }
    check(
        REPR_C,
        &format!(
            "  (#[repr(C)] allowed only in {}; abi_stable only in {}; fixtures exempt: {})\n",
            REPR_C_ALLOWED.join(", "),
            ABI_STABLE_ALLOWED.join(", "),
            ABI_FIXTURES.join(", ")
        ),
        offenders,
    );
}

#[test]
fn only_front_forward_and_upstream_http_know_http() {
    let mut offenders = Vec::new();
    for f in host_files().iter().filter(|f| !f.test_only) {
        if HTTP_ALLOWED.iter().any(|a| {
            if a.ends_with('/') {
                f.rel.starts_with(a)
            } else {
                f.rel == *a
            }
        }) {
            continue;
        }
        for r in &f.refs {
            if let Target::External(segs) = &r.target
                && HTTP_CRATES.contains(&segs[0].as_str())
            {
                offenders.push(format!("{}:{}: `{}`", f.rel, r.line, r.written));
            }
        }
    }
    check(
        HTTP,
        &format!(
            "  HTTP libraries ({}) may appear in host/src only in: {}\n",
            HTTP_CRATES.join(", "),
            HTTP_ALLOWED.join(", ")
        ),
        offenders,
    );
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let root = workspace_root();
    let mut offenders = Vec::new();
    for dir in DOC_ROOTS.iter().flat_map(|d| expand(root, d)) {
        for path in rust_files(&dir) {
            let text = read(&path);
            let first = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty());
            match first {
                Some((_, l)) if l.trim_start().starts_with("//!") => {}
                Some((n, l)) => {
                    let l: String = l.trim().chars().take(60).collect();
                    offenders.push(format!(
                        "{}:{}: starts with `{l}`",
                        rel_path(root, &path),
                        n + 1
                    ));
                }
                None => offenders.push(format!("{}:1: is empty", rel_path(root, &path))),
            }
        }
    }
    check(MODULE_DOCS, "", offenders);
}

#[test]
fn data_plane_functions_are_short_and_take_few_arguments() {
    let root = workspace_root();
    let test_only: Vec<&str> = host_files()
        .iter()
        .filter(|f| f.test_only)
        .map(|f| f.rel.as_str())
        .collect();
    let mut offenders = Vec::new();
    for path in rust_files(&root.join(HOST_SRC)) {
        let rel = rel_path(root, &path);
        if test_only.contains(&rel.as_str()) {
            continue;
        }
        let (t, _) = strip_cfg_test(lex(&read(&path)));
        for tok in &t {
            if tok.is_ident("too_many_arguments") {
                offenders.push(format!(
                    "{rel}:{}: allows clippy::too_many_arguments",
                    tok.line
                ));
            }
        }
        if !rel.starts_with(SHORT_FUNCTIONS_IN) {
            continue;
        }
        for (name, line, lines) in long_functions(&t, MAX_FUNCTION_LINES) {
            offenders.push(format!(
                "{rel}:{line}: fn {name} spans {lines} lines (at most {MAX_FUNCTION_LINES})"
            ));
        }
    }
    check(SHORT_FUNCTIONS, "", offenders);
}

/// Functions (with a body) spanning more than `max` lines: name, first line, lines.
fn long_functions(t: &[Token], max: usize) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (k, tok) in t.iter().enumerate() {
        if !tok.is_ident("fn") {
            continue;
        }
        let Some(name) = t.get(k + 1).filter(|n| n.kind == Kind::Ident) else {
            continue;
        };
        // The body is the first `{` before any `;` (a declaration without a body has none).
        let Some(open) = t[k..]
            .iter()
            .position(|x| x.is("{") || x.is(";"))
            .map(|p| k + p)
            .filter(|&p| t[p].is("{"))
        else {
            continue;
        };
        let close = closing(t, open);
        let lines = t[close].line - tok.line + 1;
        if lines > max {
            out.push((name.text.clone(), tok.line, lines));
        }
    }
    out
}

#[test]
fn no_import_cycles_between_the_modules_of_host() {
    let graph = ModuleGraph::new(host_files());
    let cycles = graph.cycles();
    let mut offenders = Vec::new();
    for (n, cycle) in cycles.iter().take(MAX_CYCLES).enumerate() {
        let mut chain: Vec<&str> = cycle.iter().map(String::as_str).collect();
        chain.push(&cycle[0]);
        offenders.push(format!("cycle {}: {}", n + 1, chain.join(" -> ")));
        for pair in chain.windows(2) {
            let (line, written) = &graph.edges[&(pair[0].to_owned(), pair[1].to_owned())];
            offenders.push(format!("  {}:{line}: `{written}`", pair[0]));
        }
    }
    if cycles.len() > MAX_CYCLES {
        offenders.push(format!("… and {} more cycles", cycles.len() - MAX_CYCLES));
    }
    // Every module on some cycle, by group of modules that all reach each other.
    for tangle in graph.tangles() {
        let names: Vec<&str> = tangle
            .iter()
            .map(|m| m.trim_start_matches(HOST_SRC))
            .collect();
        offenders.push(format!(
            "tangled ({} modules): {}",
            names.len(),
            names.join(", ")
        ));
    }
    check(NO_CYCLES, "", offenders);
}

fn check(title: &str, preamble: &str, offenders: Vec<String>) {
    if !offenders.is_empty() {
        panic!(
            "Architecture Invariant `{title}` broken:\n{preamble}  {}\n",
            offenders.join("\n  ")
        );
    }
}

// =============================================================================================
// The workspace on disk.

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rel_path(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `.rs` file under `dir`, sorted; build output, hidden folders and installed
/// dependencies are skipped.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `plugins/*/src` → every `plugins/<x>/src` that exists.
fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    for part in pattern.split('/') {
        dirs = if part == "*" {
            let mut next: Vec<PathBuf> = dirs
                .iter()
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flat_map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()))
                .collect();
            next.sort();
            next
        } else {
            dirs.iter()
                .map(|d| d.join(part))
                .filter(|d| d.is_dir())
                .collect()
        };
    }
    dirs
}

/// Every source file of host/src, scanned once for all the tests that need it.
fn host_files() -> &'static [FileRefs] {
    static FILES: OnceLock<Vec<FileRefs>> = OnceLock::new();
    FILES.get_or_init(|| {
        let root = workspace_root();
        let sources: Vec<(String, String)> = rust_files(&root.join(HOST_SRC))
            .iter()
            .map(|p| (rel_path(root, p), read(p)))
            .collect();
        analyze(HOST_SRC, &sources)
    })
}

// =============================================================================================
// `cargo metadata`.

struct Metadata {
    packages: Vec<Package>,
}

struct Package {
    name: String,
    /// Relative to the workspace root.
    manifest: String,
    /// Names of normal and build dependencies.
    deps: Vec<String>,
}

impl Package {
    /// `manifest:line` of the dependency's line in a `[dependencies]` or `[build-dependencies]`
    /// table (line 1 when it cannot be found).
    fn dep_site(&self, dep: &str) -> String {
        let text =
            std::fs::read_to_string(workspace_root().join(&self.manifest)).unwrap_or_default();
        let normal = |t: &str| t.ends_with("dependencies") && !t.ends_with("dev-dependencies");
        let mut in_deps = false;
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            let here = || format!("{}:{}", self.manifest, n + 1);
            if let Some(table) = l.strip_prefix('[') {
                let table = table.trim_end_matches(']');
                if table
                    .rsplit_once('.')
                    .is_some_and(|(t, name)| name == dep && normal(t))
                {
                    return here(); // [dependencies.<dep>]
                }
                in_deps = normal(table);
            } else if in_deps
                && l.strip_prefix(dep)
                    .is_some_and(|rest| rest.starts_with([' ', '=', '.']))
            {
                return here();
            }
        }
        format!("{}:1", self.manifest)
    }
}

fn metadata() -> &'static Metadata {
    static META: OnceLock<Metadata> = OnceLock::new();
    META.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = std::process::Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
                "--manifest-path",
            ])
            .arg(root.join("Cargo.toml"))
            .output()
            .expect("running cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
        let members: BTreeSet<&str> = v["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        let packages = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| members.contains(p["id"].as_str().unwrap_or("")))
            .map(|p| Package {
                name: p["name"].as_str().unwrap().to_owned(),
                manifest: rel_path(root, Path::new(p["manifest_path"].as_str().unwrap())),
                deps: p["dependencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|d| matches!(d["kind"].as_str(), None | Some("build")))
                    .map(|d| d["name"].as_str().unwrap().to_owned())
                    .collect(),
            })
            .collect();
        Metadata { packages }
    })
}

// =============================================================================================
// The scanner: a lexer that drops comments and keeps literals as opaque tokens, the removal of
// `#[cfg(test)]` items, and the paths a file names (`use` trees expanded, inline paths in code).

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ident,
    Punct,
    Literal,
    Lifetime,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: String,
    line: usize,
}

impl Token {
    fn is(&self, text: &str) -> bool {
        self.kind != Kind::Literal && self.text == text
    }
    fn is_ident(&self, text: &str) -> bool {
        self.kind == Kind::Ident && self.text == text
    }
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Rust source → tokens with their line numbers. Comments (doc comments included) disappear;
/// string, char and number literals become one `Literal` token whose text is not kept, so
/// nothing inside them looks like code. `::` is one token; every other punctuation char is one.
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let push =
        |out: &mut Vec<Token>, kind, text: String, line| out.push(Token { kind, text, line });
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if let Some(end) = string_end(&c, i) {
            line += c[i..end].iter().filter(|&&x| x == '\n').count();
            push(&mut out, Kind::Literal, String::new(), start_line);
            i = end;
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            let q = if ch == 'b' { i + 1 } else { i };
            if at(q + 1) == '\\' {
                // An escaped char: skip the escaped char, then up to the closing quote.
                let mut j = q + 3;
                while j < c.len() && c[j] != '\'' && c[j] != '\n' {
                    j += 1;
                }
                push(&mut out, Kind::Literal, String::new(), start_line);
                i = j + 1;
            } else if at(q + 2) == '\'' {
                push(&mut out, Kind::Literal, String::new(), start_line);
                i = q + 3;
            } else {
                let mut j = q + 1;
                while j < c.len() && is_ident_continue(c[j]) {
                    j += 1;
                }
                push(
                    &mut out,
                    Kind::Lifetime,
                    c[q..j].iter().collect(),
                    start_line,
                );
                i = j.max(q + 1);
            }
        } else if is_ident_start(ch) {
            let mut j = i;
            if ch == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
                j += 2; // a raw identifier: `r#type` is the identifier `type`
                i += 2;
            }
            while j < c.len() && is_ident_continue(c[j]) {
                j += 1;
            }
            push(&mut out, Kind::Ident, c[i..j].iter().collect(), start_line);
            i = j;
        } else if ch.is_ascii_digit() {
            while i < c.len() && is_ident_continue(c[i]) {
                i += 1;
            }
            push(&mut out, Kind::Literal, String::new(), start_line);
        } else if ch == ':' && at(i + 1) == ':' {
            push(&mut out, Kind::Punct, "::".to_owned(), start_line);
            i += 2;
        } else {
            push(&mut out, Kind::Punct, ch.to_string(), start_line);
            i += 1;
        }
    }
    out
}

/// Where the string literal starting at `i` ends (one past its closing quote and hashes), if one
/// starts there: `"…"`, `b"…"`, `c"…"`, and raw `r"…"`, `r#"…"#`, `br##"…"##`, `cr"…"`.
fn string_end(c: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let mut j = i;
    if at(j) == 'b' || at(j) == 'c' {
        j += 1;
    }
    if at(j) == 'r' && (at(j + 1) == '"' || at(j + 1) == '#') {
        let mut hashes = 0;
        j += 1;
        while at(j) == '#' {
            hashes += 1;
            j += 1;
        }
        if at(j) != '"' {
            return None;
        }
        j += 1;
        while j < c.len() {
            if c[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#') {
                return Some(j + 1 + hashes);
            }
            j += 1;
        }
        return Some(c.len());
    }
    if at(j) != '"' {
        return None;
    }
    j += 1;
    while j < c.len() {
        match c[j] {
            '\\' => j += 2,
            '"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    Some(c.len())
}

/// Index of the token that closes the bracket opened at `open` (or the last token).
fn closing(t: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (k, tok) in t.iter().enumerate().skip(open) {
        if tok.kind == Kind::Punct {
            match tok.text.as_str() {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" | "}" => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                return k;
            }
        }
    }
    t.len().saturating_sub(1)
}

/// `#[cfg(test)]` starting at `i`?
fn is_cfg_test(t: &[Token], i: usize) -> bool {
    let want = ["#", "[", "cfg", "(", "test", ")", "]"];
    t.len() >= i + want.len() && want.iter().enumerate().all(|(k, w)| t[i + k].is(w))
}

/// The tokens without the items marked `#[cfg(test)]` (the attribute through the end of the item:
/// its `;`, or the `}` that closes its body), and the names of the modules declared that way
/// (`#[cfg(test)] mod tests;`), whose files are test-only.
fn strip_cfg_test(t: Vec<Token>) -> (Vec<Token>, Vec<String>) {
    let mut out = Vec::with_capacity(t.len());
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if !is_cfg_test(&t, i) {
            out.push(t[i].clone());
            i += 1;
            continue;
        }
        let mut j = i;
        while j + 1 < t.len() && t[j].is("#") && t[j + 1].is("[") {
            j = closing(&t, j + 1) + 1; // this and any further attributes
        }
        let item_start = j;
        let mut depth = 0i32;
        while j < t.len() {
            let tok = &t[j];
            if tok.kind == Kind::Punct {
                match tok.text.as_str() {
                    "(" | "[" | "{" => depth += 1,
                    ")" | "]" => depth -= 1,
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    ";" if depth == 0 => {
                        j += 1;
                        break;
                    }
                    _ => {}
                }
                if depth < 0 {
                    break; // the attribute was on the last thing inside a block
                }
            }
            j += 1;
        }
        let item = &t[item_start..j.min(t.len())];
        if let Some(m) = item.iter().position(|x| x.is_ident("mod"))
            && item.len() == m + 3
            && item[m + 2].is(";")
        {
            test_mods.push(item[m + 1].text.clone());
        }
        i = j;
    }
    (out, test_mods)
}

/// Line numbers of `repr(…C…)` attributes (`#[repr(C)]`, `#[repr(C, u8)]`, in `cfg_attr` too).
fn repr_c_lines(t: &[Token]) -> Vec<usize> {
    let mut lines = Vec::new();
    for i in 0..t.len() {
        if t[i].is_ident("repr") && t.get(i + 1).is_some_and(|x| x.is("(")) {
            let end = closing(t, i + 1);
            if t[i + 1..end].iter().any(|x| x.is_ident("C")) {
                lines.push(t[i].line);
            }
        }
    }
    lines
}

/// A path a file names: `crate::a::b`, `super::x`, `self::y`, `child::z`, `axum::Router`.
#[derive(Debug, Clone, PartialEq)]
struct PathRef {
    segs: Vec<String>,
    line: usize,
    /// Written `::a::b`: an extern crate, never a module of ours.
    leading: bool,
    /// Part of a `pub use` (any visibility), i.e. a re-export.
    pub_use: bool,
    /// The inline `mod x { … }` blocks it sits in, outermost first.
    inline: Vec<String>,
    /// For a `use` leaf, the name it brings into scope (`None` for `as _` and globs; `None`
    /// for a path in code).
    binds: Option<String>,
}

/// Every path the tokens name: each leaf of each `use` tree, and every path of two or more
/// segments elsewhere (types, calls, macros' arguments).
fn paths(t: &[Token]) -> Vec<PathRef> {
    let mut out = Vec::new();
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < t.len() {
        let tok = &t[i];
        if tok.is("{") {
            depth += 1;
        } else if tok.is("}") {
            depth -= 1;
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
        } else if tok.is_ident("mod")
            && t.get(i + 1).is_some_and(|x| x.kind == Kind::Ident)
            && t.get(i + 2).is_some_and(|x| x.is("{"))
        {
            inline.push((t[i + 1].text.clone(), depth));
        } else if tok.is_ident("use") && !t.get(i + 1).is_some_and(|x| x.is("<")) {
            let pub_use = is_pub_before(t, i);
            let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
            let mut leaves = Vec::new();
            let mut end = use_tree(t, i + 1, Vec::new(), false, &mut leaves);
            while t.get(end).is_some_and(|x| !x.is(";")) {
                end += 1;
            }
            for leaf in leaves {
                out.push(PathRef {
                    segs: leaf.segs,
                    line: leaf.line,
                    leading: leaf.leading,
                    pub_use,
                    inline: names.clone(),
                    binds: leaf.binds,
                });
            }
            i = end + 1;
            continue;
        } else if tok.kind == Kind::Ident && t.get(i + 1).is_some_and(|x| x.is("::")) {
            let prev = i.checked_sub(1).map(|p| &t[p]);
            let continues = prev.is_some_and(|p| p.is("::"));
            let leading = continues
                && !i
                    .checked_sub(2)
                    .map(|p| &t[p])
                    .is_some_and(|p| matches!(p.kind, Kind::Ident | Kind::Lifetime) || p.is(">"));
            if !continues || leading {
                let mut segs = vec![tok.text.clone()];
                let mut j = i + 1;
                while t.get(j).is_some_and(|x| x.is("::"))
                    && t.get(j + 1).is_some_and(|x| x.kind == Kind::Ident)
                {
                    segs.push(t[j + 1].text.clone());
                    j += 2;
                }
                let names = inline.iter().map(|(n, _)| n.clone()).collect();
                out.push(PathRef {
                    segs,
                    line: tok.line,
                    leading,
                    pub_use: false,
                    inline: names,
                    binds: None,
                });
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Whether the `use` at `i` is preceded by a visibility (`pub`, `pub(crate)`, `pub(in …)`).
fn is_pub_before(t: &[Token], i: usize) -> bool {
    let Some(mut p) = i.checked_sub(1) else {
        return false;
    };
    if t[p].is(")") {
        let mut depth = 0;
        loop {
            if t[p].is(")") {
                depth += 1;
            } else if t[p].is("(") {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            let Some(q) = p.checked_sub(1) else {
                return false;
            };
            p = q;
        }
        let Some(q) = p.checked_sub(1) else {
            return false;
        };
        p = q;
    }
    t[p].is_ident("pub")
}

/// One leaf of a `use` tree.
struct UseLeaf {
    segs: Vec<String>,
    line: usize,
    leading: bool,
    binds: Option<String>,
}

/// Parses one use tree at `i` under `prefix`, pushing each leaf; returns the index after it.
fn use_tree(
    t: &[Token],
    mut i: usize,
    mut prefix: Vec<String>,
    mut leading: bool,
    out: &mut Vec<UseLeaf>,
) -> usize {
    if t.get(i).is_some_and(|x| x.is("::")) {
        leading |= prefix.is_empty();
        i += 1;
    }
    while let Some(tok) = t.get(i) {
        if tok.kind == Kind::Ident {
            // `self` inside braces (`use a::{self, b}`) names the prefix itself.
            if tok.text != "self" || prefix.is_empty() {
                prefix.push(tok.text.clone());
            }
            i += 1;
            if t.get(i).is_some_and(|x| x.is("::")) {
                i += 1;
                continue;
            }
            let mut binds = prefix.last().cloned();
            if t.get(i).is_some_and(|x| x.is_ident("as")) {
                binds = t.get(i + 1).map(|x| x.text.clone()).filter(|n| n != "_");
                i += 2;
            }
            out.push(UseLeaf {
                segs: prefix,
                line: tok.line,
                leading,
                binds,
            });
            return i;
        } else if tok.is("*") {
            out.push(UseLeaf {
                segs: prefix,
                line: tok.line,
                leading,
                binds: None,
            });
            return i + 1;
        } else if tok.is("{") {
            i += 1;
            while t.get(i).is_some_and(|x| !x.is("}")) {
                if t[i].is(",") {
                    i += 1;
                    continue;
                }
                i = use_tree(t, i, prefix.clone(), leading, out).max(i + 1);
            }
            return i + 1;
        } else {
            return i;
        }
    }
    i
}

// =============================================================================================
// Resolving paths to the modules of a crate.

/// What a path names.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// An item of this crate: the absolute module path (`crate::` dropped), as written.
    Crate(Vec<String>),
    /// Anything else: an extern crate, a type's associated item, a local enum.
    External(Vec<String>),
}

struct Ref {
    line: usize,
    written: String,
    target: Target,
}

struct FileRefs {
    /// Relative to the workspace root.
    rel: String,
    /// The module the file is (`None` for a binary's root, a crate of its own).
    module: Option<Vec<String>>,
    /// Declared only under `#[cfg(test)]`, or inside such a module.
    test_only: bool,
    /// The paths of its non-test code.
    refs: Vec<Ref>,
}

/// `mcp/front/admit.rs` → `[mcp, front, admit]`; `mcp/mod.rs` → `[mcp]`; `lib.rs` → `[]`;
/// `main.rs` and `bin/*` are crate roots of their own → `None`.
fn module_of(rel_in_src: &str) -> Option<Vec<String>> {
    if rel_in_src == "main.rs" || rel_in_src.starts_with("bin/") {
        return None;
    }
    if rel_in_src == "lib.rs" {
        return Some(Vec::new());
    }
    let mut segs: Vec<String> = rel_in_src
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

/// Scans the files of one crate's `src/` (`(path, text)`, paths starting with `src_prefix`).
fn analyze(src_prefix: &str, files: &[(String, String)]) -> Vec<FileRefs> {
    struct Scanned<'a> {
        rel: &'a str,
        module: Option<Vec<String>>,
        paths: Vec<PathRef>,
        test_mods: Vec<String>,
    }
    let scanned: Vec<Scanned> = files
        .iter()
        .map(|(rel, text)| {
            let (tokens, test_mods) = strip_cfg_test(lex(text));
            let module = module_of(rel.strip_prefix(src_prefix).unwrap_or(rel));
            Scanned {
                rel,
                module,
                paths: paths(&tokens),
                test_mods,
            }
        })
        .collect();
    let modules: BTreeSet<Vec<String>> = scanned.iter().filter_map(|s| s.module.clone()).collect();
    let mut test_modules: Vec<Vec<String>> = Vec::new();
    for s in &scanned {
        if let Some(m) = &s.module {
            test_modules.extend(
                s.test_mods
                    .iter()
                    .map(|n| [&m[..], &[n.clone()][..]].concat()),
            );
        }
    }
    scanned
        .into_iter()
        .map(|s| {
            let here = s.module.clone().unwrap_or_default();
            let test_only = s
                .module
                .as_ref()
                .is_some_and(|m| test_modules.iter().any(|t| m.starts_with(t)));
            // The names the file's `use` items bring into scope from this crate, so that
            // `use crate::mcp::session; session::placement::x()` reaches `session/placement.rs`.
            let mut imported: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for p in s.paths.iter().filter(|p| p.binds.is_some()) {
                if let Target::Crate(abs) = resolve(&modules, &imported, &here, p) {
                    imported.insert(p.binds.clone().unwrap(), abs);
                }
            }
            let refs = s
                .paths
                .iter()
                .map(|p| Ref {
                    line: p.line,
                    written: p.segs.join("::"),
                    target: resolve(&modules, &imported, &here, p),
                })
                .collect();
            FileRefs {
                rel: s.rel.to_owned(),
                module: s.module,
                test_only,
                refs,
            }
        })
        .collect()
}

/// What `r`, named in the file of module `file_module`, refers to: `crate::`, `self::`,
/// `super::`, a child module (`session::Sessions` in `mcp/mod.rs`) or a name a `use` imported
/// from this crate are ours; anything else (extern crates, `Self::`, enums) is external.
fn resolve(
    modules: &BTreeSet<Vec<String>>,
    imported: &BTreeMap<String, Vec<String>>,
    file_module: &[String],
    r: &PathRef,
) -> Target {
    let here: Vec<String> = [file_module, &r.inline].concat();
    let segs = &r.segs;
    if r.leading {
        return Target::External(segs.clone());
    }
    match segs[0].as_str() {
        "crate" => Target::Crate(segs[1..].to_vec()),
        "self" => Target::Crate([&here[..], &segs[1..]].concat()),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let base = &here[..here.len().saturating_sub(ups)];
            Target::Crate([base, &segs[ups..]].concat())
        }
        first => {
            let child = [&here[..], &[first.to_owned()][..]].concat();
            if modules.contains(&child) {
                Target::Crate([&here[..], &segs[..]].concat())
            } else if let Some(abs) = imported
                .get(first)
                .filter(|_| r.binds.as_deref() != Some(first))
            {
                Target::Crate([&abs[..], &segs[1..]].concat())
            } else {
                Target::External(segs.clone())
            }
        }
    }
}

// =============================================================================================
// The module graph of a crate and its cycles.

struct ModuleGraph {
    /// Module path → its file.
    files: BTreeMap<Vec<String>, String>,
    /// (from file, to file) → the first reference: line and path as written.
    edges: BTreeMap<(String, String), (usize, String)>,
}

impl ModuleGraph {
    /// Nodes are the non-test module files; an edge is any path one names into another
    /// (resolved to the deepest module file it names), except into its own descendants: a
    /// module is made of its children, so using them is composition, not a dependency. A child
    /// naming its parent (`super::Record`, `crate::mcp::Gateway`) is an edge.
    fn new(files: &[FileRefs]) -> Self {
        let live = || files.iter().filter(|f| !f.test_only);
        let modules: BTreeMap<Vec<String>, String> = live()
            .filter_map(|f| f.module.clone().map(|m| (m, f.rel.clone())))
            .collect();
        let mut edges = BTreeMap::new();
        for f in live() {
            let Some(from) = &f.module else { continue };
            for r in &f.refs {
                let Target::Crate(abs) = &r.target else {
                    continue;
                };
                let Some(to) = (0..=abs.len())
                    .rev()
                    .map(|n| abs[..n].to_vec())
                    .find(|m| modules.contains_key(m))
                else {
                    continue;
                };
                if to.starts_with(from) {
                    continue;
                }
                edges
                    .entry((f.rel.clone(), modules[&to].clone()))
                    .or_insert_with(|| (r.line, r.written.clone()));
            }
        }
        ModuleGraph {
            files: modules,
            edges,
        }
    }

    fn successors(&self, node: &str) -> Vec<&str> {
        self.edges
            .range((node.to_owned(), String::new())..)
            .take_while(|((from, _), _)| from == node)
            .map(|((_, to), _)| to.as_str())
            .collect()
    }

    /// The strongly connected components with more than one node (Tarjan).
    fn tangles(&self) -> Vec<BTreeSet<String>> {
        struct State<'g> {
            g: &'g ModuleGraph,
            index: BTreeMap<&'g str, usize>,
            low: BTreeMap<&'g str, usize>,
            stack: Vec<&'g str>,
            on_stack: BTreeSet<&'g str>,
            out: Vec<BTreeSet<String>>,
        }
        fn visit<'g>(s: &mut State<'g>, v: &'g str) {
            let n = s.index.len();
            s.index.insert(v, n);
            s.low.insert(v, n);
            s.stack.push(v);
            s.on_stack.insert(v);
            for w in s.g.successors(v) {
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if s.low[v] == s.index[v] {
                let mut scc = BTreeSet::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    scc.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    s.out.push(scc);
                }
            }
        }
        let mut s = State {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for node in self.files.values() {
            if !s.index.contains_key(node.as_str()) {
                visit(&mut s, node);
            }
        }
        s.out
    }

    /// Cycles, one per edge inside a tangle: the edge followed by the shortest way back, so every
    /// edge that takes part in a cycle shows up in one. Deduplicated by their set of modules,
    /// shortest first, each rotated to start at its smallest module.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut cycles = Vec::new();
        for scc in self.tangles() {
            for (from, to) in self.edges.keys() {
                if !(scc.contains(from) && scc.contains(to)) {
                    continue;
                }
                // Shortest path to -> … -> from, inside the tangle.
                let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
                let mut queue = VecDeque::from([to.as_str()]);
                while let Some(v) = queue.pop_front() {
                    if v == from {
                        break;
                    }
                    for w in self.successors(v) {
                        if scc.contains(w) && w != to && !prev.contains_key(w) {
                            prev.insert(w, v);
                            queue.push_back(w);
                        }
                    }
                }
                let mut cycle = vec![from.clone()];
                let mut v = from.as_str();
                while v != to {
                    v = prev[v];
                    cycle.push(v.to_owned());
                }
                // `cycle` is from <- … <- to: reverse it to from -> to -> … .
                cycle[1..].reverse();
                let set: BTreeSet<String> = cycle.iter().cloned().collect();
                if seen.insert(set) {
                    let start = (0..cycle.len()).min_by_key(|&k| &cycle[k]).unwrap();
                    cycle.rotate_left(start);
                    cycles.push(cycle);
                }
            }
        }
        cycles.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        cycles
    }
}

// =============================================================================================
// The scanner's own tests.

#[cfg(test)]
mod scanner {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        lex(src)
            .into_iter()
            .filter(|t| t.kind == Kind::Ident)
            .map(|t| t.text)
            .collect()
    }

    fn leaves(src: &str) -> Vec<(String, bool)> {
        paths(&lex(src))
            .into_iter()
            .map(|p| (p.segs.join("::"), p.pub_use))
            .collect()
    }

    /// Edges of a tiny crate: `(from, to)` as file paths under `src/`.
    fn edges(files: &[(&str, &str)]) -> Vec<(String, String)> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, s)| (format!("src/{p}"), s.to_string()))
            .collect();
        let g = ModuleGraph::new(&analyze("src/", &files));
        g.edges
            .keys()
            .map(|(a, b)| {
                (
                    a.trim_start_matches("src/").to_owned(),
                    b.trim_start_matches("src/").to_owned(),
                )
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn comments_and_literals_hide_what_is_inside_them() {
        let src = r####"
//! crate::doc::comment
/// crate::outer::doc
// use crate::line;
/* crate::block /* crate::nested */
   crate::still_comment */
fn f<'a>(x: &'a str) -> char {
    let s = "crate::string \" crate::escaped
      crate::escaped";
    let r = r#"crate::raw " still raw"#;
    let b = br##"crate::bytes "# still"##;
    let q = '"';
    let e = '\'';
    let u = '\u{1F600}';
    crate::real::path
}
"####;
        let ids = idents(src);
        assert!(
            !ids.iter().any(|i| [
                "doc",
                "outer",
                "line",
                "block",
                "nested",
                "still_comment",
                "string",
                "escaped",
                "raw",
                "bytes",
                "still"
            ]
            .contains(&i.as_str())),
            "{ids:?}"
        );
        assert_eq!(leaves(src), vec![("crate::real::path".to_owned(), false)]);
        let tokens = lex(src);
        let real = tokens.iter().find(|t| t.is_ident("real")).unwrap();
        assert_eq!(
            real.line, 15,
            "line numbers survive multi-line comments and strings"
        );
        assert!(
            tokens
                .iter()
                .any(|t| t.kind == Kind::Lifetime && t.text == "'a")
        );
    }

    #[test]
    fn raw_identifiers_and_numbers() {
        assert_eq!(
            idents("r#type 1.5e3 0x_ff abi_follows_abi_stable_semver"),
            ["type", "abi_follows_abi_stable_semver"]
        );
    }

    #[test]
    fn use_trees_expand_to_their_leaves() {
        let src = "use crate::{a, b::{c, d::e as f}, g::self}; pub use super::h::*; pub(crate) use ::axum::Router; use x::y as _;";
        assert_eq!(
            leaves(src),
            [
                ("crate::a", false),
                ("crate::b::c", false),
                ("crate::b::d::e", false),
                ("crate::g", false),
                ("super::h", true),
                ("axum::Router", true),
                ("x::y", false)
            ]
            .map(|(p, b)| (p.to_owned(), b))
        );
        assert!(paths(&lex("use ::axum::Router;"))[0].leading);
    }

    #[test]
    fn inline_paths_are_found_and_nested_segments_are_not_paths_of_their_own() {
        let src = "fn f() { let x: Vec<crate::a::B> = axum::serve(l, r); <T as super::Tr>::go(); Vec::<u8>::new(); ::http::HeaderName::x; }";
        assert_eq!(
            leaves(src).into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
            [
                "crate::a::B",
                "axum::serve",
                "super::Tr",
                "Vec",
                "http::HeaderName::x"
            ]
        );
    }

    #[test]
    fn cfg_test_items_are_dropped_and_test_modules_named() {
        let src = "use crate::a;\n#[cfg(test)]\nmod tests;\n#[cfg(test)]\n#[allow(unused)]\nuse crate::b;\nfn f() {}\n#[cfg(test)]\nmod more {\n use crate::c;\n fn g() { crate::d::x(); }\n}\n#[cfg(not(test))]\nuse crate::e;";
        let (tokens, test_mods) = strip_cfg_test(lex(src));
        assert_eq!(test_mods, ["tests"]);
        let found: Vec<String> = paths(&tokens)
            .into_iter()
            .map(|p| p.segs.join("::"))
            .collect();
        assert_eq!(found, ["crate::a", "crate::e"]);
    }

    #[test]
    fn long_functions_are_measured_from_signature_to_closing_brace() {
        let src = "fn short() {\n    let x = \"}\";\n}\ntrait T { fn decl(&self); }\nfn long(\n    a: u8,\n) {\n\n\n\n}\n";
        assert_eq!(long_functions(&lex(src), 4), [("long".to_owned(), 5, 7)]);
    }

    #[test]
    fn repr_c_is_found_in_attributes_only() {
        let src = "#[repr(C)]\nstruct A;\n// #[repr(C)]\n#[repr(u8, C)]\nenum B {}\n#[repr(transparent)]\nstruct C2;\nconst S: &str = \"#[repr(C)]\";";
        assert_eq!(repr_c_lines(&lex(src)), [1, 4]);
    }

    #[test]
    fn edges_resolve_to_the_deepest_module_file() {
        let found = edges(&[
            ("lib.rs", "pub mod a; pub mod b; pub mod c;"),
            ("main.rs", "use mcpg::a; fn main() { crate::a::x(); }"),
            (
                "a/mod.rs",
                "pub mod inner; pub use inner::Thing; use crate::b::Item; fn f() { inner::go(); }",
            ),
            (
                "a/inner.rs",
                "use super::super::c::deep::Type; fn g() { self::h(); super::f(); }",
            ),
            (
                "b.rs",
                "mod nested { use super::Item; } #[cfg(test)] mod tests { use crate::c::x; } #[cfg(test)] mod b_tests;",
            ),
            ("b/b_tests.rs", "use crate::a::y;"),
            (
                "c.rs",
                "// use crate::a;\nconst S: &str = \"crate::a::x\"; fn f() -> http::HeaderName { todo!() }",
            ),
        ]);
        // a/mod.rs naming its own child a/inner.rs is composition, not an edge; main.rs is a
        // crate of its own; b's tests and b_tests.rs are test-only.
        assert_eq!(
            found,
            pairs(&[
                ("a/inner.rs", "a/mod.rs"),
                ("a/inner.rs", "c.rs"),
                ("a/mod.rs", "b.rs")
            ])
        );
    }

    #[test]
    fn a_cycle_is_found_and_a_dag_has_none() {
        let lib = ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;");
        let files = [
            lib,
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "use crate::c::{Y, Z};"),
            ("c.rs", "fn f() { crate::a::go(); crate::d::go(); }"),
            ("d.rs", "use super::c;"),
        ];
        let analyzed = analyze(
            "src/",
            &files.map(|(p, s)| (format!("src/{p}"), s.to_owned())),
        );
        let cycles = ModuleGraph::new(&analyzed).cycles();
        let shown: Vec<String> = cycles
            .iter()
            .map(|c| c.join(" -> ").replace("src/", ""))
            .collect();
        assert_eq!(shown, ["c.rs -> d.rs", "a.rs -> b.rs -> c.rs"]);

        let dag = [
            lib,
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "use crate::c::Y;"),
            ("c.rs", "use crate::d::Z;"),
            ("d.rs", ""),
        ];
        let analyzed = analyze(
            "src/",
            &dag.map(|(p, s)| (format!("src/{p}"), s.to_owned())),
        );
        assert!(ModuleGraph::new(&analyzed).cycles().is_empty());
    }

    #[test]
    fn a_parent_using_its_children_is_composition_but_a_loop_through_a_sibling_is_a_cycle() {
        let files = [
            ("lib.rs", "pub mod m; pub mod n;"),
            (
                "m/mod.rs",
                "pub mod front; pub struct Gateway; fn wire() { front::router(); }",
            ),
            ("m/front.rs", "use crate::m::Gateway; pub fn router() {}"),
            ("n.rs", "pub fn f() {}"),
        ];
        let analyzed = analyze(
            "src/",
            &files.map(|(p, s)| (format!("src/{p}"), s.to_owned())),
        );
        assert!(ModuleGraph::new(&analyzed).cycles().is_empty());
        // The parent naming a sibling that names a child that names the parent closes a loop.
        let files = [
            ("lib.rs", "pub mod m; pub mod n;"),
            (
                "m/mod.rs",
                "pub mod front; pub struct G; fn wire() { crate::n::f(); }",
            ),
            ("m/front.rs", "pub fn router(_: super::G) {}"),
            ("n.rs", "pub fn f() { crate::m::front::router(); }"),
        ];
        let analyzed = analyze(
            "src/",
            &files.map(|(p, s)| (format!("src/{p}"), s.to_owned())),
        );
        assert_eq!(
            ModuleGraph::new(&analyzed).cycles(),
            [vec![
                "src/m/front.rs".to_owned(),
                "src/m/mod.rs".to_owned(),
                "src/n.rs".to_owned()
            ]]
        );
    }
}
