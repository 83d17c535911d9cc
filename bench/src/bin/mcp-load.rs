//! `mcp-load`: a load generator for MCP `tools/call` (or `tools/list`, `--tool list`) over
//! Streamable HTTP, in either protocol era. It owns the command line, the per-era request shapes (2026-07-28 metadata headers and
//! `_meta`; a legacy session per worker), the two load models (fixed concurrency, closed loop;
//! fixed rate, open loop with latency from the intended send time, so coordinated omission is
//! corrected), answer checking (JSON or SSE) and the one JSON report on stdout.
//!
//! Every latency goes into an HdrHistogram (nanoseconds, 3 significant digits). Requests are
//! counted when their (intended) send time falls in the measured window, after the warm-up.
//! An error is any transport failure, non-200 status, unreadable answer, JSON-RPC error, tool
//! result with `isError: true`, (`--tool payload`) a text of the wrong length, or (`--tool
//! list`) a list with no tools or not `--expect-tools` of them. `--tool-prefix` names a tool
//! behind a binding that prefixes names (`u01__echo`).
//!
//! `--header 'Name: value'` (repeatable) adds a header to every request, e.g. a bearer token
//! for a binding with `auth`; the report lists the names (`headers`), not the values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-11-25";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Era {
    Modern,
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Tool {
    /// Sends `--payload-bytes` of text; the answer echoes it.
    Echo,
    /// Asks for `--payload-bytes` of text back.
    Payload,
    /// Sends `tools/list` instead of `tools/call` (the answer must list at least one tool, or
    /// exactly `--expect-tools`).
    List,
}

#[derive(Parser, Debug)]
#[command(
    about = "Drive MCP tools/call over Streamable HTTP and report latency percentiles as JSON"
)]
struct Args {
    /// The MCP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    url: String,
    /// Legacy era: where each worker opens (and ends) its session, when not `--url`; the
    /// calls still go to `--url`. With two replicas, this sends every call to a replica that
    /// does not own the session (the cross-replica benchmark).
    #[arg(long)]
    session_url: Option<String>,
    #[arg(long, value_enum, default_value = "modern")]
    era: Era,
    /// Workers: requests in flight at once (with --rate, the most in flight).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Load before the measured window that is not recorded, in seconds.
    #[arg(long, default_value_t = 0.0)]
    warmup_secs: f64,
    #[arg(long, value_enum, default_value = "echo")]
    tool: Tool,
    /// Put before the tool's name, e.g. `u01__` for a binding whose tool names carry their
    /// upstream's prefix.
    #[arg(long, default_value = "")]
    tool_prefix: String,
    /// With `--tool list`: how many tools every answer must list.
    #[arg(long)]
    expect_tools: Option<usize>,
    /// Bytes of text sent (echo) or asked for (payload).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Requests per second across all workers (open loop); without it, each worker sends its
    /// next request when the previous one is answered.
    #[arg(long)]
    rate: Option<f64>,
    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
    /// An extra header sent on every request (`initialize`, `notifications/initialized`,
    /// `tools/call`, the closing `DELETE`), as `'Name: value'`, e.g.
    /// `--header 'Authorization: Bearer …'`. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// `Name: value` as a header; the value is trimmed of surrounding whitespace.
fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected 'Name: value', got {s:?}"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("header name {:?}: {e}", name.trim()))?;
    let value =
        HeaderValue::from_str(value.trim()).map_err(|e| format!("header value for {name}: {e}"))?;
    Ok((name, value))
}

/// What the workers share.
struct Shared {
    args: Args,
    client: reqwest::Client,
    /// Recording starts here (after the warm-up).
    measure_from: Instant,
    /// No request is sent (or, with --rate, scheduled) at or after this instant.
    until: Instant,
    /// Open loop: intended send times from the pacer thread, taken by whichever worker is free.
    tickets: Option<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// The JSON-RPC `arguments` of every call.
    arguments: Value,
    /// The called tool's full name (`--tool-prefix` included); `None` for `tools/list`.
    tool_name: Option<String>,
}

impl Shared {
    async fn error(&self, text: String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self.first_error.lock().await;
            if first.is_none() {
                *first = Some(text);
            }
        }
    }
}

impl Args {
    fn session_url(&self) -> &str {
        self.session_url.as_deref().unwrap_or(&self.url)
    }
}

/// One worker's connection state: the legacy session, the next JSON-RPC id.
struct Worker {
    id: usize,
    seq: u64,
    session: Option<String>,
    version: String,
}

impl Worker {
    /// The next JSON-RPC id: distinct across workers and requests.
    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        ((self.id as u64) << 40) | self.seq
    }

    fn headers(&self, sh: &Shared, method: &str, name: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        match sh.args.era {
            Era::Modern => {
                h.insert("mcp-protocol-version", HeaderValue::from_static(MODERN));
                h.insert("mcp-method", HeaderValue::from_str(method).expect("ascii"));
                if let Some(n) = name {
                    h.insert("mcp-name", HeaderValue::from_str(n).expect("ascii"));
                }
            }
            Era::Legacy => {
                if let Some(s) = &self.session {
                    h.insert("mcp-session-id", HeaderValue::from_str(s).expect("ascii"));
                    h.insert(
                        "mcp-protocol-version",
                        HeaderValue::from_str(&self.version).expect("ascii"),
                    );
                }
            }
        }
        for (name, value) in &sh.args.headers {
            h.insert(name.clone(), value.clone());
        }
        h
    }

    /// Legacy: `initialize`, then `notifications/initialized`, on this worker's own session.
    async fn open_session(&mut self, sh: &Shared) -> Result<(), String> {
        let id = self.next_id();
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {},
            "clientInfo": {"name": "mcp-load", "version": env!("CARGO_PKG_VERSION")}}});
        let resp = sh
            .client
            .post(sh.args.session_url())
            .headers(self.headers(sh, "initialize", None))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("initialize: {}", error_chain(&e)))?;
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let result = answer(resp, id)
            .await
            .map_err(|e| format!("initialize: {e}"))?;
        self.version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or(LEGACY)
            .to_owned();
        self.session = Some(session.ok_or("initialize: no Mcp-Session-Id in the answer")?);
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let resp = sh
            .client
            .post(sh.args.session_url())
            .headers(self.headers(sh, "notifications/initialized", None))
            .body(note.to_string())
            .send()
            .await
            .map_err(|e| format!("notifications/initialized: {}", error_chain(&e)))?;
        if resp.status() != reqwest::StatusCode::ACCEPTED && !resp.status().is_success() {
            return Err(format!(
                "notifications/initialized: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Legacy: end the session (best effort).
    async fn close_session(&mut self, sh: &Shared) {
        if self.session.is_some() {
            let _ = sh
                .client
                .delete(sh.args.session_url())
                .headers(self.headers(sh, "", None))
                .send()
                .await;
            self.session = None;
        }
    }

    /// One `tools/call` (or `tools/list`), checked; `Err` is the error's text.
    async fn call(&mut self, sh: &Shared) -> Result<(), String> {
        let id = self.next_id();
        let (method, mut params) = match &sh.tool_name {
            Some(name) => (
                "tools/call",
                json!({"name": name, "arguments": sh.arguments}),
            ),
            None => ("tools/list", json!({})),
        };
        if sh.args.era == Era::Modern {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let resp = sh
            .client
            .post(&sh.args.url)
            .headers(self.headers(sh, method, sh.tool_name.as_deref()))
            .body(serde_json::to_vec(&body).expect("serialise"))
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let result = answer(resp, id).await?;
        if sh.args.tool == Tool::List {
            let listed = result.get("tools").and_then(Value::as_array).map(Vec::len);
            return match (listed, sh.args.expect_tools) {
                (Some(n), Some(want)) if n != want => {
                    Err(format!("tools/list listed {n} tools, expected {want}"))
                }
                (Some(n), _) if n > 0 => Ok(()),
                _ => Err(format!("tools/list listed no tools: {result}")),
            };
        }
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            return Err(format!("tool result has isError: true: {result}"));
        }
        if sh.args.tool == Tool::Payload {
            let len = result
                .pointer("/content/0/text")
                .and_then(Value::as_str)
                .map(str::len);
            if len != Some(sh.args.payload_bytes) {
                return Err(format!(
                    "payload text is {len:?} bytes, expected {}",
                    sh.args.payload_bytes
                ));
            }
        }
        Ok(())
    }
}

/// The `result` of the JSON-RPC response with `id`, from a JSON or an SSE answer.
async fn answer(resp: reqwest::Response, id: u64) -> Result<Value, String> {
    let status = resp.status();
    let sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the answer: {}", error_chain(&e)))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        ));
    }
    let msg = if sse {
        let text = std::str::from_utf8(&bytes).map_err(|_| "SSE answer is not UTF-8")?;
        sse_response(text, id).ok_or_else(|| {
            format!(
                "no response with id {id} in the SSE answer: {}",
                &text[..text.len().min(500)]
            )
        })?
    } else {
        serde_json::from_slice::<Value>(&bytes).map_err(|e| {
            format!(
                "answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
            )
        })?
    };
    if msg.get("id").and_then(Value::as_u64) != Some(id) {
        return Err(format!("answer is not the response to id {id}: {msg}"));
    }
    if let Some(e) = msg.get("error") {
        return Err(format!("JSON-RPC error: {e}"));
    }
    msg.get("result")
        .cloned()
        .ok_or_else(|| format!("response has no result: {msg}"))
}

/// The response with `id` among an SSE body's events (multi-line `data:` joined by `\n`).
fn sse_response(text: &str, id: u64) -> Option<Value> {
    let mut data = String::new();
    let mut found = None;
    let mut flush = |data: &mut String| {
        if !data.is_empty() {
            if let Ok(v) = serde_json::from_str::<Value>(data)
                && v.get("id").and_then(Value::as_u64) == Some(id)
                && (v.get("result").is_some() || v.get("error").is_some())
            {
                found = Some(v);
            }
            data.clear();
        }
    };
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            flush(&mut data);
        } else if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    flush(&mut data);
    found
}

/// The error and its sources, which is where reqwest puts the useful part.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The open-loop clock: issues the intended send time `start + n / rate` of every request
/// before `until`, each at that time. A thread sleep wakes within tens of microseconds, where
/// Tokio's timer wheel has a 1 ms tick that would show up as latency. Tickets no worker is free
/// to take wait in the channel, and that wait counts: latency is measured from the ticket.
fn pace(tx: mpsc::UnboundedSender<Instant>, start: Instant, until: Instant, rate: f64) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    for n in 0u64.. {
        let at = start + interval.mul_f64(n as f64);
        if at >= until {
            return;
        }
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if tx.send(at).is_err() {
            return;
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is valid")
}

/// A worker's latencies and when its last recorded request was answered.
async fn run_worker(sh: Arc<Shared>, id: usize) -> (Histogram<u64>, Instant) {
    let mut hist = histogram();
    let mut last_done = sh.measure_from;
    let mut w = Worker {
        id,
        seq: 0,
        session: None,
        version: LEGACY.to_owned(),
    };
    loop {
        if sh.args.era == Era::Legacy && w.session.is_none() {
            if Instant::now() >= sh.until {
                break;
            }
            if let Err(e) = w.open_session(&sh).await {
                sh.error(e).await;
                w.session = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        // The instant latency is measured from: the intended send time with --rate.
        let from = match &sh.tickets {
            Some(rx) => {
                let ticket = rx.lock().await.recv().await;
                match ticket {
                    Some(at) => at,
                    None => break,
                }
            }
            None => {
                let now = Instant::now();
                if now >= sh.until {
                    break;
                }
                now
            }
        };
        let result = w.call(&sh).await;
        let done = Instant::now();
        let took = done - from;
        if from < sh.measure_from {
            if let Err(e) = result {
                // Warm-up errors are not counted, but a broken setup should still be visible.
                if sh.errors.load(Ordering::Relaxed) == 0 {
                    eprintln!("mcp-load: warm-up error: {e}");
                }
            }
            continue;
        }
        last_done = last_done.max(done);
        match result {
            Ok(()) => hist
                .record(took.as_nanos().max(1) as u64)
                .expect("histogram auto-resizes"),
            Err(e) => sh.error(e).await,
        }
    }
    w.close_session(&sh).await;
    (hist, last_done)
}

fn main() {
    let args = Args::parse();
    assert!(args.concurrency >= 1, "--concurrency must be at least 1");
    assert!(args.duration_secs > 0.0, "--duration-secs must be positive");
    if let Some(r) = args.rate {
        assert!(r > 0.0, "--rate must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run(args));
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("serialise")
    );
}

async fn run(args: Args) -> Value {
    // mcp-load speaks plain HTTP, but in a build unified with mcpg's, reqwest has rustls
    // without a provider and refuses to build a client unless one is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs_f64(args.timeout_secs))
        .build()
        .expect("HTTP client");
    let arguments = match args.tool {
        Tool::Echo => json!({"text": "x".repeat(args.payload_bytes)}),
        Tool::Payload => json!({"bytes": args.payload_bytes}),
        Tool::List => json!({}),
    };
    let tool_name = match args.tool {
        Tool::Echo => Some(format!("{}echo", args.tool_prefix)),
        Tool::Payload => Some(format!("{}payload", args.tool_prefix)),
        Tool::List => None,
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_secs);
    let until = measure_from + Duration::from_secs_f64(args.duration_secs);
    let tickets = args.rate.map(|rate| {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || pace(tx, start, until, rate));
        Mutex::new(rx)
    });
    let sh = Arc::new(Shared {
        client,
        measure_from,
        until,
        tickets,
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        arguments,
        tool_name,
        args,
    });
    let workers: Vec<_> = (0..sh.args.concurrency)
        .map(|i| tokio::spawn(run_worker(sh.clone(), i)))
        .collect();
    let mut hist = histogram();
    let mut last_done = sh.until;
    for w in workers {
        let (h, done) = w.await.expect("worker panicked");
        hist.add(h).expect("histograms merge");
        last_done = last_done.max(done);
    }
    // From the end of the warm-up to the last answer counted: the window plus the calls still
    // in flight at its end (with --rate, also the backlog of an overloaded target).
    let measured = (last_done - sh.measure_from).as_secs_f64();
    let a = &sh.args;
    let requests = hist.len();
    let errors = sh.errors.load(Ordering::Relaxed);
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    let mut report = json!({
        "era": match a.era { Era::Modern => "modern", Era::Legacy => "legacy" },
        "url": a.url,
        "session_url": a.session_url(),
        "tool": match a.tool { Tool::Echo => "echo", Tool::Payload => "payload", Tool::List => "tools/list" },
        "tool_name": sh.tool_name,
        "concurrency": a.concurrency,
        "rate": a.rate,
        "duration_s": a.duration_secs,
        "warmup_s": a.warmup_secs,
        "measured_s": (measured * 1000.0).round() / 1000.0,
        "requests": requests,
        "errors": errors,
        "throughput_rps": ((requests as f64 / measured) * 10.0).round() / 10.0,
        "latency_us": {
            "p50": us(hist.value_at_quantile(0.50)),
            "p90": us(hist.value_at_quantile(0.90)),
            "p99": us(hist.value_at_quantile(0.99)),
            "p999": us(hist.value_at_quantile(0.999)),
            "max": us(hist.max()),
            "mean": (hist.mean() / 100.0).round() / 10.0,
        },
        "payload_bytes": a.payload_bytes,
        "headers": a.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
    });
    if let Some(e) = sh.first_error.lock().await.take() {
        report["first_error"] = Value::String(e);
    }
    report
}
