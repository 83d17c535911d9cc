//! Replays every fuzz target's committed corpus (`fuzz/corpus/<target>/`) and crash inputs
//! (`fuzz/regressions/<target>/`) through the same entry points the fuzzer runs
//! (`mcpg::fuzzing`), in the normal build: no fuzzer is built in CI. A crash input stays in the
//! tree as a regression test; inputs whose fix has not landed yet are listed in
//! `fuzz/regressions/PENDING` and skipped (see docs/fuzzing.md).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .join("fuzz")
}

/// `<target>/<file>` of every input whose fix is pending.
fn pending() -> Vec<String> {
    let list = fuzz_dir().join("regressions/PENDING");
    let text = std::fs::read_to_string(&list).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(name: &str) {
    let target = mcpg::fuzzing::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target named {name}"));
    let pending = pending();
    for p in pending
        .iter()
        .filter(|p| p.starts_with(&format!("{name}/")))
    {
        assert!(
            fuzz_dir().join("regressions").join(p).is_file(),
            "fuzz/regressions/PENDING lists {p}, which does not exist"
        );
    }
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name}/ is empty: every target keeps a corpus"
    );
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    let mut failed = Vec::new();
    let mut skipped = 0;
    for path in corpus.iter().chain(&regressions) {
        let rel = path
            .strip_prefix(fuzz_dir())
            .expect("under fuzz/")
            .display()
            .to_string();
        let key = rel.strip_prefix("regressions/").unwrap_or("");
        if pending.iter().any(|p| p == key) {
            skipped += 1;
            continue;
        }
        let data = std::fs::read(path).expect("a readable input");
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("fuzz/{rel}: {why}"));
        }
    }
    eprintln!(
        "{name}: {} corpus inputs, {} regression inputs replayed, {skipped} pending skipped",
        corpus.len(),
        regressions.len() - skipped
    );
    assert!(
        failed.is_empty(),
        "fuzz target {name} fails on {} input(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Every fuzz binary (`fuzz/fuzz_targets/<name>.rs`) is an entry of `mcpg::fuzzing::TARGETS`
/// and has a test below.
#[test]
fn every_fuzz_binary_is_replayed() {
    let mut binaries: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    binaries.sort();
    let mut names: Vec<&str> = mcpg::fuzzing::TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    assert_eq!(binaries, names);
    let tests = [
        "config",
        "jsonrpc",
        "upstream",
        "headers",
        "request_state",
        "audit",
        "stdio_lines",
    ];
    assert!(
        names.iter().all(|n| tests.contains(n)),
        "a target lacks its #[test]"
    );
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn jsonrpc() {
    replay("jsonrpc");
}

#[test]
fn upstream() {
    replay("upstream");
}

#[test]
fn headers() {
    replay("headers");
}

#[test]
fn request_state() {
    replay("request_state");
}

#[test]
fn audit() {
    replay("audit");
}

#[test]
fn stdio_lines() {
    replay("stdio_lines");
}
