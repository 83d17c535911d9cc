//! Log output: `tracing` to standard error, human-readable on a terminal and JSON otherwise.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::model::{LogConfig, LogFormat};

/// Installs the global subscriber. `MCPG_LOG`, when set, overrides the configured level.
pub fn init(logs: &LogConfig) {
    let directive = std::env::var("MCPG_LOG").unwrap_or_else(|_| logs.level.clone());
    // The loader has already checked the configured level; a bad MCPG_LOG falls back to it.
    let filter = EnvFilter::builder()
        .parse(&directive)
        .or_else(|_| EnvFilter::builder().parse(&logs.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match logs.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` so that tests embedding the host may call this more than once.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
