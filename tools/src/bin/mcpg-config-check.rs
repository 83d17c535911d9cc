//! `mcpg-config-check`: validates mcpg config files with the exact loader `mcpg` boots with.
//!
//! After the host's own checks, the plugin phase loads the coordinator plugin `cluster.kind`
//! selects, when its library is at hand, and reports the plugin's findings on its keys.
//!
//! Exit codes: 0 every file valid; 1 a file is invalid (or has warnings under
//! `--deny-warnings`); 2 a file cannot be read or the command line is wrong.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use mcpg::config::{self, LoadOutcome};
use serde_json::json;

/// Checks mcpg configuration files with the loader mcpg itself boots with, and reports every
/// problem in one run, each at its FILE:LINE:COL. A file it accepts is a file mcpg accepts.
#[derive(Debug, Parser)]
#[command(
    name = "mcpg-config-check",
    version,
    about = "Checks mcpg configuration files with the loader mcpg itself boots with, and reports every problem in one run, each at its FILE:LINE:COL.",
    long_about = None,
    after_help = "Exit codes: 0 every file is valid; 1 a file is invalid (or has warnings under --deny-warnings); 2 a file cannot be read or the command line is wrong.\n\nBy default a file is checked as if it runs here: a plugin library that does not exist at its (resolved) `source.path` is an error, as mcpg would not start. Use --not-here for a file that runs on another machine."
)]
struct Args {
    /// Config files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Treat warnings as errors.
    #[arg(long)]
    deny_warnings: bool,
    /// Skip the plugin phase (loading the coordinator plugin to check its own keys).
    #[arg(long)]
    no_plugins: bool,
    /// The file runs on another machine: a plugin library missing here is a warning (its keys
    /// are not checked), not an error.
    #[arg(long)]
    not_here: bool,
    /// After validation, reach every upstream once as mcpg does at start (a stdio child is
    /// started and initialised, an HTTP upstream gets its `initialize` or `server/discover`)
    /// and report each that fails, at its position. Spawns and connects: for CI runners that
    /// have the upstreams.
    #[arg(long)]
    probe: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

enum Verdict {
    Valid,
    Invalid,
    Unreadable,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let mut worst = 0u8;
    let mut reports = Vec::new();
    for path in &args.files {
        let file = path.display().to_string();
        let (verdict, report) = match config::load_file(path) {
            Ok(mut outcome) => {
                // The plugin phase runs whenever the cluster and its plugin entry are usable,
                // even if other parts of the file are not: one run reports everything.
                if !args.no_plugins
                    && let Some(target) = &outcome.plugin
                {
                    let found = mcpg::coordinator::check_plugin(target, !args.not_here);
                    if found.iter().any(|d| d.severity == config::Severity::Error) {
                        outcome.config = None;
                    }
                    outcome.diagnostics.extend(found);
                    outcome.diagnostics.sort_by_key(|d| (d.pos, d.severity));
                }
                if args.probe
                    && let Some(cfg) = &outcome.config
                {
                    let found = probe(cfg);
                    if !found.is_empty() {
                        outcome.diagnostics.extend(found);
                        outcome.diagnostics.sort_by_key(|d| (d.pos, d.severity));
                        outcome.config = None;
                    }
                }
                check(&file, &outcome, &args)
            }
            Err(e) => {
                if args.format == Format::Text {
                    eprintln!("✗ {e}");
                }
                (
                    Verdict::Unreadable,
                    json!({"file": file, "valid": false, "readable": false, "error": e.source.to_string(), "errors": [], "warnings": []}),
                )
            }
        };
        worst = worst.max(match verdict {
            Verdict::Valid => 0,
            Verdict::Invalid => 1,
            Verdict::Unreadable => 2,
        });
        reports.push(report);
    }
    if args.format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"valid": worst == 0, "files": reports}))
                .expect("a JSON value serializes")
        );
    }
    ExitCode::from(worst)
}

/// The probe phase (`--probe`), on a runtime of its own.
fn probe(cfg: &config::ValidatedConfig) -> Vec<config::Diagnostic> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    rt.block_on(mcpg::mcp::upstream::probe::probe_config(cfg))
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn check(file: &str, outcome: &LoadOutcome, args: &Args) -> (Verdict, serde_json::Value) {
    let errors: Vec<_> = outcome.errors().collect();
    let warnings: Vec<_> = outcome.warnings().collect();
    let failed = !errors.is_empty() || (args.deny_warnings && !warnings.is_empty());
    if args.format == Format::Text {
        for d in &outcome.diagnostics {
            println!("{}", d.render(file));
        }
        match (&outcome.config, failed) {
            (Some(cfg), false) => println!("✓ {file}: valid ({})", cfg.summary()),
            (Some(_), true) => println!(
                "✗ {file}: {}, denied by --deny-warnings",
                count(warnings.len(), "warning")
            ),
            (None, _) => println!(
                "✗ {file}: invalid ({}, {})",
                count(errors.len(), "error"),
                count(warnings.len(), "warning")
            ),
        }
    }
    let report = json!({
        "file": file,
        "valid": !failed,
        "readable": true,
        "summary": outcome.config.as_ref().map(|c| c.summary()),
        "errors": errors.iter().map(|d| d.to_json(file)).collect::<Vec<_>>(),
        "warnings": warnings.iter().map(|d| d.to_json(file)).collect::<Vec<_>>(),
    });
    (
        if failed {
            Verdict::Invalid
        } else {
            Verdict::Valid
        },
        report,
    )
}
