//! `mcpg-config-check --probe`: every upstream of a valid config reached once, as `mcpg`
//! reaches them at start ([`Pool::probe`]: every endpoint of a pool; the upstream passes when one does), each failure a diagnostic at the upstream's
//! position. A phase after validation, outside the pure loader: probing spawns children and
//! connects.

use std::time::Duration;

use crate::config::ValidatedConfig;
use crate::config::{Diagnostic, KeyPath};

use super::pool::Pool;

/// Probes every upstream of `cfg` (concurrently); the failures as positioned errors.
pub async fn probe_config(cfg: &ValidatedConfig) -> Vec<Diagnostic> {
    // HTTPS upstreams need the process's TLS provider (as `mcpg` installs at start).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = &cfg.config;
    let timeout = Duration::from_millis(c.mcp.limits.request_timeout_ms);
    let mut probes = Vec::new();
    for (bi, b) in c.bindings.iter().enumerate() {
        for (ui, u) in b.upstreams.iter().enumerate() {
            let path = KeyPath::root()
                .key("bindings")
                .index(bi)
                .key("upstreams")
                .index(ui);
            let up = Pool::new(&b.name, u, &cfg.parsed, &cfg.base_dir, timeout);
            probes.push(async move {
                let r = match up {
                    Ok(up) => up.probe().await.map_err(|e| e.message),
                    Err(e) => Err(e.to_string()),
                };
                (path, r)
            });
        }
    }
    futures::future::join_all(probes)
        .await
        .into_iter()
        .filter_map(|(path, r)| {
            let why = r.err()?;
            let pos = cfg.source_map.key_pos(&path.pointer());
            Some(Diagnostic::error(pos, path, format!("probe failed: {why}")))
        })
        .collect()
}
