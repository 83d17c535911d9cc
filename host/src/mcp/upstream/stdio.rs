//! The stdio transport: a child process speaking newline-delimited JSON-RPC on stdin/stdout,
//! its stderr logged line by line under the upstream's name (the last lines kept, with its
//! exit status, to say why it stopped).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use super::conn::{Transport, UpstreamError};
use crate::config::model::StdioTransport;
use crate::mcp::wire::jsonrpc::Message;

/// How many of a child's last stderr lines are kept to say why it stopped.
const STDERR_TAIL: usize = 8;

/// How long a closed conversation waits for its child's exit status before saying why.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// Environment variables a child gets unless `inherit_env` is set.
const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"];

/// A running child.
pub struct StdioChild {
    name: String,
    /// Lines for the child's stdin; taken (closing stdin) on `close`.
    tx: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    /// Tells the monitor to kill the child if it does not exit on its own.
    kill: Mutex<Option<oneshot::Sender<()>>>,
    /// The child's last lines of stderr.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// How it exited, once it has.
    exit: tokio::sync::watch::Receiver<Option<String>>,
}

/// Spawns the child; returns the transport and the channel of everything it prints.
pub fn spawn(
    upstream: &str,
    cfg: &StdioTransport,
    base_dir: &Path,
) -> Result<(Arc<StdioChild>, mpsc::UnboundedReceiver<Message>), UpstreamError> {
    let mut child = command(cfg, base_dir)
        .spawn()
        .map_err(|e| UpstreamError::Transport {
            upstream: upstream.into(),
            message: format!("cannot start `{}`: {e}", cfg.command),
        })?;
    let pid = child.id();
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    tracing::info!(upstream, pid, command = %cfg.command, "started stdio upstream");
    let tx = write_lines(stdin);
    let in_rx = read_messages(upstream.to_owned(), stdout);
    let name = upstream.to_owned();
    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    let tail = stderr_tail.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(upstream = %name, stderr = %truncate(&line), "upstream stderr");
            let mut t = tail.lock().expect("stderr lock");
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(truncate(&line).chars().take(300).collect());
        }
    });
    let (exit_tx, exit) = tokio::sync::watch::channel(None);
    let kill_tx = monitor(upstream.to_owned(), pid, child, exit_tx);
    Ok((
        Arc::new(StdioChild {
            name: upstream.into(),
            tx: Mutex::new(Some(tx)),
            kill: Mutex::new(Some(kill_tx)),
            stderr_tail,
            exit,
        }),
        in_rx,
    ))
}

/// The child's command line, environment (the configured variables over a small base, or the
/// whole environment with `inherit_env`) and working directory.
fn command(cfg: &StdioTransport, base_dir: &Path) -> Command {
    let mut cmd = Command::new(&cfg.command);
    cmd.args(&cfg.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !cfg.inherit_env {
        cmd.env_clear();
        for k in BASE_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
    }
    cmd.envs(&cfg.env);
    // The service manager's socket is mcpg's own: a child must not report for it.
    cmd.env_remove("NOTIFY_SOCKET");
    if let Some(dir) = &cfg.cwd {
        cmd.current_dir(crate::config::resolve_path(base_dir, dir));
    }
    cmd
}

/// Writes each line sent on the returned channel to the child's stdin.
fn write_lines(stdin: tokio::process::ChildStdin) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut write_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(mut line) = write_rx.recv().await {
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    tx
}

/// The JSON-RPC messages the child prints, one per line (each message of a batch, which
/// 2025-03-26 allowed); anything else is logged and ignored.
fn read_messages(
    name: String,
    stdout: tokio::process::ChildStdout,
) -> mpsc::UnboundedReceiver<Message> {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(m)) => {
                    let _ = in_tx.send(m);
                }
                Ok(Value::Array(items)) => {
                    for item in items {
                        if let Value::Object(m) = item {
                            let _ = in_tx.send(m);
                        }
                    }
                }
                _ => {
                    tracing::warn!(upstream = %name, line = %truncate(&line), "stdio upstream printed a line that is not JSON-RPC; ignored");
                }
            }
        }
        tracing::debug!(upstream = %name, "stdio upstream closed its stdout");
    });
    in_rx
}

/// The monitor owns the child: it reports how the child ended, and kills it when asked to
/// (through the returned sender) and it has not exited within a grace period after its stdin
/// closed.
fn monitor(
    name: String,
    pid: Option<u32>,
    mut child: tokio::process::Child,
    exit: tokio::sync::watch::Sender<Option<String>>,
) -> oneshot::Sender<()> {
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut asked = false;
        let status = tokio::select! {
            s = child.wait() => s,
            _ = kill_rx => {
                asked = true;
                match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        tracing::debug!(upstream = %name, "child did not exit after stdin closed; killing it");
                        let _ = child.kill().await;
                        child.wait().await
                    }
                }
            }
        };
        exit.send_replace(Some(match &status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown ({e})"),
        }));
        match status {
            // Closed by mcpg (the session ended, a probe child): however it ended is fine.
            Ok(s) if s.success() || asked => {
                tracing::info!(upstream = %name, pid, status = %s, "stdio upstream exited")
            }
            Ok(s) => tracing::warn!(upstream = %name, pid, status = %s, "stdio upstream exited"),
            Err(e) => {
                tracing::warn!(upstream = %name, pid, error = %e, "cannot wait for stdio upstream")
            }
        }
    });
    kill_tx
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(2000) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[async_trait]
impl Transport for StdioChild {
    async fn send(
        &self,
        msg: Message,
        _headers: &[(String, String)],
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError> {
        let bytes = crate::mcp::wire::jsonrpc::to_bytes(&msg);
        let tx = self.tx.lock().expect("stdin lock");
        tx.as_ref()
            .and_then(|tx| tx.send(bytes).ok())
            .ok_or_else(|| UpstreamError::Closed(self.name.clone()))?;
        Ok(None)
    }

    async fn why_closed(&self) -> Option<String> {
        let mut exit = self.exit.clone();
        let status = tokio::time::timeout(EXIT_WAIT, exit.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|s| s.clone()));
        let tail: Vec<String> = self
            .stderr_tail
            .lock()
            .expect("stderr lock")
            .iter()
            .cloned()
            .collect();
        let stderr = (!tail.is_empty()).then(|| format!("its last stderr: {}", tail.join(" | ")));
        match (status, stderr) {
            (None, None) => None,
            (Some(s), None) => Some(format!("exited ({s}) without a word on stderr")),
            (Some(s), Some(e)) => Some(format!("exited ({s}); {e}")),
            (None, Some(e)) => Some(e),
        }
    }

    async fn close(&self) {
        // Closing stdin asks the child to exit, as the MCP stdio transport describes; the
        // monitor kills it if it is still there after a grace period.
        self.tx.lock().expect("stdin lock").take();
        if let Some(k) = self.kill.lock().expect("kill lock").take() {
            let _ = k.send(());
        }
    }
}
