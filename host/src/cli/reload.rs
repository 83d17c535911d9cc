//! What starts a config reload: SIGHUP, a change of the config file (its directory watched,
//! so atomic renames and Kubernetes ConfigMap symlink swaps are seen; debounced; a reload
//! only when the file's bytes differ from the last seen), and `POST /api/config/reload` on
//! the admin routes. Each calls [`Reloader::reload`], which runs one reload at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::config::model::ConfigReloadConfig;
use crate::reload::{Outcome, Reloader, Trigger};

/// `POST /api/config/reload` (behind the admin token like every `/api/` path): the reload's
/// report; 200 when applied or unchanged, 422 when rejected.
pub fn admin_router(reloader: Arc<Reloader>) -> Router {
    Router::new()
        .route("/api/config/reload", axum::routing::post(reload))
        .with_state(reloader)
}

async fn reload(State(r): State<Arc<Reloader>>) -> Response {
    let report = r.reload(Trigger::Admin).await;
    let status = match report.outcome {
        Outcome::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    (status, Json(report)).into_response()
}

/// SIGHUP, listened for from the start of serving: its default action would end the process
/// if one arrived before the replica is up (a `systemctl reload` during a long
/// `--wait-for-cluster`); those that do are answered with a reload once it is.
pub fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /api/config/reload");
            None
        }
    }
}

/// Starts the SIGHUP listener and, unless switched off, the file watch; both stop when the
/// returned tasks are aborted.
pub fn spawn_triggers(
    reloader: Arc<Reloader>,
    hangups: Option<tokio::signal::unix::Signal>,
    path: &Path,
    digest: String,
    cfg: &ConfigReloadConfig,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if let Some(hup) = hangups {
        tasks.push(tokio::spawn(on_sighup(reloader.clone(), hup)));
    }
    if cfg.watch {
        match watch_file(
            path,
            reloader,
            digest,
            Duration::from_millis(cfg.debounce_ms),
        ) {
            Ok(t) => tasks.push(t),
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "cannot watch the config file; reload with SIGHUP or POST /api/config/reload"
            ),
        }
    }
    tasks
}

async fn on_sighup(reloader: Arc<Reloader>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        reloader.reload(Trigger::Signal).await;
    }
}

/// Watches the directory holding the config file (a file replaced by rename, or a symlink
/// swapped, is a new inode a watch on the file itself would lose). After each burst of events
/// quiet for `debounce`, the file is read and reloaded if its bytes changed.
fn watch_file(
    path: &Path,
    reloader: Arc<Reloader>,
    digest: String,
    debounce: Duration,
) -> notify::Result<tokio::task::JoinHandle<()>> {
    use notify::Watcher;
    let file = std::path::absolute(path)?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads are not changes: reading the file (this replica's reload, or another
        // process's) must not start another round.
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64, "watching the config file for changes");
    Ok(tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        follow(rx, &file, reloader, digest, debounce).await;
    }))
}

async fn follow(
    mut rx: mpsc::UnboundedReceiver<()>,
    file: &Path,
    reloader: Arc<Reloader>,
    mut seen: String,
    debounce: Duration,
) {
    while rx.recv().await.is_some() {
        // Quiet for `debounce`: every event meanwhile starts the wait again.
        while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
        let Ok(bytes) = tokio::fs::read(file).await else {
            // Gone for a moment (a rename in progress): the next event reads it again.
            continue;
        };
        let now: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if now == seen {
            continue;
        }
        seen = now;
        tracing::info!(file = %file.display(), "config file changed: reloading");
        reloader.reload(Trigger::File).await;
    }
}
