//! `mcp-sessions`: opens N legacy MCP sessions (`initialize`, `notifications/initialized`) on an
//! endpoint, 64 at a time, prints `opened N` on stdout, and holds them (sending nothing) until
//! its standard input closes; then it ends them with DELETE (unless `--leave-open`). The
//! resources benchmark measures a gateway's memory while they are open.

use std::io::{BufRead, Write};
use std::sync::Arc;

use clap::Parser;
use futures::StreamExt;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Open N legacy MCP sessions and hold them until stdin closes")]
struct Args {
    /// The MCP endpoint, e.g. http://127.0.0.1:8080/mcp.
    #[arg(long)]
    url: String,
    /// How many sessions to open.
    #[arg(long)]
    sessions: usize,
    /// Do not DELETE the sessions at the end.
    #[arg(long)]
    leave_open: bool,
}

async fn open(client: &reqwest::Client, url: &str, i: usize) -> Result<String, String> {
    let init = json!({"jsonrpc": "2.0", "id": i, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "mcp-sessions", "version": "0"}}});
    let resp = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("initialize: HTTP {} without Mcp-Session-Id", resp.status()))?;
    let _ = resp.bytes().await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&note)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("notifications/initialized: HTTP {}", r.status()));
    }
    Ok(sid)
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client");
    let url = Arc::new(args.url.clone());
    let sessions: Vec<String> = rt.block_on(async {
        let results: Vec<Result<String, String>> = futures::stream::iter(0..args.sessions)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                async move { open(&client, &url, i).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut ok = Vec::new();
        for r in results {
            match r {
                Ok(s) => ok.push(s),
                Err(e) => {
                    eprintln!("mcp-sessions: {e}");
                    std::process::exit(1);
                }
            }
        }
        ok
    });
    println!("opened {}", sessions.len());
    std::io::stdout().flush().expect("stdout");
    // Hold until stdin closes.
    for _ in std::io::stdin().lock().lines() {}
    if !args.leave_open {
        rt.block_on(async {
            futures::stream::iter(sessions)
                .map(|sid| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let _ = client
                            .delete(url.as_str())
                            .header("mcp-session-id", sid)
                            .send()
                            .await;
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
        });
    }
}
