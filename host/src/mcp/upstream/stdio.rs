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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};

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

/// Spawns the child; returns the transport and the channel of everything it prints. A line
/// of its stdout longer than `max_line` bytes is never buffered whole (see [`read_messages`]).
pub fn spawn(
    upstream: &str,
    cfg: &StdioTransport,
    base_dir: &Path,
    max_line: usize,
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
    let in_rx = read_messages(upstream.to_owned(), stdout, max_line);
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
/// 2025-03-26 allowed); anything else is logged and ignored. A line longer than `max_line`
/// is skipped to its end (the conversation resynchronises at the next line, the child is
/// kept): if its head shows it is a response, the request it answers gets an error naming
/// the upstream and the limit instead.
fn read_messages(
    name: String,
    stdout: tokio::process::ChildStdout,
    max_line: usize,
) -> mpsc::UnboundedReceiver<Message> {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            let len = match read_line_bounded(&mut reader, &mut line, max_line).await {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(upstream = %name, error = %e, "reading the stdio upstream's stdout failed");
                    break;
                }
            };
            for m in line_messages(&name, &line, len, max_line) {
                let _ = in_tx.send(m);
            }
        }
        tracing::debug!(upstream = %name, "stdio upstream closed its stdout");
    });
    in_rx
}

/// The messages one line of a child's stdout stands for. `line` holds the first bytes of a
/// line `len` bytes long (all of it unless `len > max_line`).
pub(crate) fn line_messages(name: &str, line: &[u8], len: usize, max_line: usize) -> Vec<Message> {
    if len > max_line {
        let head = sniff_head(line);
        tracing::warn!(upstream = %name, bytes = len, max_response_bytes = max_line, id = ?head.id, "stdio upstream printed a line over max_response_bytes; skipped");
        // A response whose id did not fit in the head is still an answer: on the child's
        // one channel it goes to the only request in flight, if there is just one.
        return match head.method {
            false => vec![super::http::too_large(
                name,
                max_line,
                head.id.unwrap_or(Value::Null),
            )],
            true => Vec::new(),
        };
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Vec::new();
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(m)) => vec![m],
        Ok(Value::Array(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => {
            let shown = String::from_utf8_lossy(line);
            tracing::warn!(upstream = %name, line = %truncate(&shown), "stdio upstream printed a line that is not JSON-RPC; ignored");
            Vec::new()
        }
    }
}

/// Reads the next line (up to `\n`, which is not kept) into `line`, keeping at most `max`
/// bytes of it and consuming the rest; returns the line's whole length, or `None` at the end
/// of the stream. Memory stays bounded by `max` whatever the child prints.
pub(crate) async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<usize>> {
    line.clear();
    let mut len = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok((len > 0).then_some(len));
        }
        let (part, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let keep = max.saturating_sub(line.len()).min(part.len());
        line.extend_from_slice(&part[..keep]);
        len = len.saturating_add(part.len());
        r.consume(used);
        if done {
            return Ok(Some(len));
        }
    }
}

/// What the head of an oversized line says about the message: its top-level `id`, and
/// whether it has a `method` (a request or notification rather than a response).
#[derive(Default)]
pub(crate) struct Head {
    pub id: Option<Value>,
    pub method: bool,
}

/// Reads the top-level keys of a JSON object that may be cut short, as far as they go.
pub(crate) fn sniff_head(bytes: &[u8]) -> Head {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Sniff<'a>(&'a mut Head);
    impl<'de> Visitor<'de> for Sniff<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON-RPC message")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<String>()? {
                match k.as_str() {
                    "id" => {
                        let v = map.next_value::<Value>()?;
                        if v.is_u64() || v.is_string() {
                            self.0.id = Some(v);
                        }
                    }
                    "method" => {
                        self.0.method = true;
                        map.next_value::<IgnoredAny>()?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    let mut head = Head::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = (&mut de).deserialize_map(Sniff(&mut head));
    head
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
