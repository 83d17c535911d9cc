//! Entry points for the fuzz targets in `fuzz/` and for their replay test (`host/tests/fuzz_replay.rs`):
//! thin wrappers that feed arbitrary bytes through the real parsers and checks of the gateway
//! and assert only what must hold for every input.
//!
//! Each wrapper calls the code the gateway itself runs, never a copy of it:
//! - [`config`]: [`crate::config::load_file`], the function `mcpg-config-check` and `mcpg` load
//!   a config file with (the bytes are written to a file first, so unreadable and invalid
//!   UTF-8 files take the real path too).
//! - [`jsonrpc`]: a client's POST body through [`admit::message`] (size limit, JSON parse, batch
//!   and JSON-RPC checks), the accessors the data plane routes on, and the error rendering.
//! - [`upstream`]: an upstream's answer (SSE, JSON of a known length, or a stream of JSON
//!   values / NDJSON, in arbitrary chunks) through the HTTP transport's answer reader.
//! - [`headers`]: the content, accept and version checks of a POST and the 2026-07-28 metadata
//!   header checks (`admit`), and the `=?base64?…?=` header encoding (`wire::headers`).
//! - [`request_state`]: `requestState` opening (must refuse anything this gateway did not seal
//!   unaltered) and seal/open round trips.
//! - [`stdio_lines`]: a stdio child's stdout through the bounded line reader and the line
//!   parser of the stdio transport (`max_response_bytes`), in arbitrary read sizes.
//! - [`audit`]: the audit chain verifier ([`crate::audit::verify`]) on arbitrary files, and on
//!   chains sealed by [`crate::audit::chain::seal`].
//!
//! Hidden from the docs: this is a test seam, not an API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use futures::StreamExt;

use crate::mcp::bridge::request_state::{State, StateKey};
use crate::mcp::front::admit;
use crate::mcp::upstream::http::{Endpoint, HttpTransport};
use crate::mcp::wire::headers as mcp_headers;
use crate::mcp::wire::jsonrpc::{self, Kind, Parsed};

/// A fuzz target: takes any bytes, panics only on a defect.
pub type Target = fn(&[u8]);

/// The targets, by the name their corpus folders and fuzz binaries carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("jsonrpc", jsonrpc),
    ("upstream", upstream),
    ("headers", headers),
    ("request_state", request_state),
    ("audit", audit),
    ("stdio_lines", stdio_lines),
];

/// The body limit the `jsonrpc` target admits with; a longer input takes the 413 path.
const BODY_LIMIT: usize = 64 * 1024;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds")
    })
}

/// The directory for the files the file-reading targets write (each file named after its
/// process and thread, and removed after use).
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Memory-backed where there is one: a disk's metadata writes would make the
        // file-reading targets wait on I/O (hundreds of executions a second instead of
        // thousands).
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join("mcpg-fuzz");
        std::fs::create_dir_all(&dir).expect("the scratch directory can be created");
        dir
    })
}

/// A file written for one call of a target, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `data` to a scratch file named `name` for the calling process and thread (tests
/// replay in parallel threads and processes).
fn scratch_file(name: &str, data: &[u8]) -> Scratch {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let pid = std::process::id();
    let path = scratch_dir().join(format!("p{pid}-t{thread}-{name}"));
    std::fs::write(&path, data).expect("the scratch file can be written");
    Scratch(path)
}

/// Target 1: a config file, loaded as `mcpg-config-check` loads it.
pub fn config(data: &[u8]) {
    let file = scratch_file("config.yaml", data);
    let Ok(outcome) = crate::config::load_file(&file.0) else {
        // Unreadable (e.g. not UTF-8): a clear error, nothing else to check.
        return;
    };
    let errors = outcome.errors().count();
    assert_eq!(
        outcome.config.is_some(),
        errors == 0,
        "a config is returned exactly when there are no errors"
    );
    // Rendering every diagnostic (text and JSON, as the checker does) is part of the answer.
    if let Some(cfg) = &outcome.config {
        let _ = cfg.summary();
    }
    for d in &outcome.diagnostics {
        let _ = (d.render("config.yaml"), d.to_json("config.yaml"));
    }
}

/// Target 2: a client's POST body, admitted as the data plane admits it.
pub fn jsonrpc(data: &[u8]) {
    runtime().block_on(async {
        match admit::message(Body::from(data.to_vec()), BODY_LIMIT).await {
            Ok((bytes, msg)) => {
                assert_eq!(bytes.as_ref(), data, "the admitted bytes are the body");
                let kind = jsonrpc::kind(&msg);
                assert_ne!(kind, Kind::Invalid, "an admitted message is JSON-RPC");
                let _ = (jsonrpc::method(&msg), jsonrpc::params(&msg));
                let _ = (jsonrpc::progress_token(&msg), mcp_headers::name_value(&msg));
                let _ = admit::era(&HeaderMap::new(), &msg);
                // What the gateway writes on must parse back as the same kind of message.
                let again = jsonrpc::to_bytes(&msg);
                assert_eq!(
                    again,
                    serde_json::to_vec(&msg).expect("a map serialises"),
                    "the gateway's writer writes serde_json's text"
                );
                match jsonrpc::parse(&again) {
                    Ok(Parsed::One(m)) => assert_eq!(jsonrpc::kind(&m), kind),
                    _ => panic!("a message the gateway serialises does not parse back"),
                }
            }
            Err((id, e)) => {
                assert!(
                    id.is_null() || id.is_string() || id.is_number(),
                    "an error answers with a usable id or null"
                );
                let status = e.status();
                let _ = e.to_message(id.clone());
                assert_eq!(e.respond(id).status(), status);
            }
        }
    });
}

fn http_transport() -> &'static HttpTransport {
    static T: OnceLock<HttpTransport> = OnceLock::new();
    T.get_or_init(|| {
        // As `mcpg` does at boot: reqwest is built without a default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg: crate::config::model::HttpTransport =
            serde_json::from_value(serde_json::json!({"url": "http://127.0.0.1:9/mcp"}))
                .expect("a minimal HTTP transport config");
        let parsed = crate::config::parsed::HttpUpstream {
            url: "http://127.0.0.1:9/mcp".parse().expect("a URL"),
            headers: Default::default(),
            pass_through: Vec::new(),
        };
        HttpTransport::new("fuzz", &Endpoint::new(&cfg, &parsed, 16 << 20))
    })
}

/// Target 3: an upstream's answer to a POST. The first byte picks how it arrives (SSE, JSON of
/// a known length, or JSON streamed without a length) and the chunk size; the rest is the body.
pub fn upstream(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode >> 2).max(1);
    let mut builder = http::Response::builder().status(200);
    builder = match mode & 3 {
        0 => builder.header("content-type", "text/event-stream"),
        _ => builder.header("content-type", "application/json"),
    };
    // A body of known length (one piece) or one streamed in chunks without a length.
    let resp_body = if mode & 3 == 1 {
        http_body_util::Either::Left(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
    } else {
        let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = body
            .chunks(chunk)
            .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
            .collect();
        http_body_util::Either::Right(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )))
    };
    let resp = builder.body(resp_body).expect("a valid response");
    runtime().block_on(async {
        let Ok(Some(mut messages)) = http_transport().answer(resp).await else {
            return;
        };
        let mut n = 0;
        while let Some(m) = messages.next().await {
            n += 1;
            // Every message is a JSON object that serialises again.
            let _ = jsonrpc::to_bytes(&m);
        }
        assert!(
            n <= body.len() / 2,
            "{n} messages from {} bytes",
            body.len()
        );
    });
}

/// Target 7: a stdio child's stdout. The first byte picks the line limit (64 bytes to 16 KiB)
/// and the size of each read; the rest is what the child prints. Every line is read through
/// [`crate::mcp::upstream::stdio::read_line_bounded`] and parsed by `line_messages`, as the
/// transport does.
pub fn stdio_lines(data: &[u8]) {
    use crate::mcp::upstream::stdio::{line_messages, read_line_bounded};
    let Some((&mode, out)) = data.split_first() else {
        return;
    };
    let max = 64usize << (mode & 7);
    let read_size = usize::from(mode >> 3).max(1);
    runtime().block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(read_size, out);
        let mut line = Vec::new();
        let (mut seen, mut lines) = (0usize, 0usize);
        while let Some(len) = read_line_bounded(&mut reader, &mut line, max)
            .await
            .expect("reading a slice cannot fail")
        {
            // What is kept is the line's start, never more than the limit.
            assert_eq!(line.len(), len.min(max), "kept {} of {len}", line.len());
            assert!(
                out[seen..].starts_with(&line),
                "the kept bytes are the line's own"
            );
            seen += len;
            if seen < out.len() {
                assert_eq!(out[seen], b'\n', "a line ends at a newline");
                seen += 1;
            }
            lines += 1;
            for m in line_messages("fuzz", &line, len, max) {
                // An over-limit line yields at most its error, naming the limit.
                if len > max {
                    let text = m["error"]["message"].as_str().unwrap_or_default();
                    assert!(text.contains("max_response_bytes"), "{text}");
                }
                let _ = jsonrpc::to_bytes(&m);
            }
        }
        assert_eq!(seen, out.len(), "every byte is read once");
        assert!(lines <= out.len() + 1);
    });
}

/// Builds a header map from `name: value` lines; lines that are not a valid header are skipped.
fn header_map(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// Target 4: request headers (`name: value` lines, then an empty line) and a body: the POST
/// content checks, the era, the legacy version check and the 2026-07-28 metadata headers.
pub fn headers(data: &[u8]) {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let map = header_map(head);
    let _ = admit::post_headers(&map);
    let _ = admit::stream_headers(&map);
    let _ = admit::legacy_version(&map);
    let _ = admit::not_modern(&map);
    for v in map.values() {
        if let Ok(s) = v.to_str() {
            let _ = mcp_headers::decode(s);
        }
    }
    // Encoding any text and decoding it again gives the text back.
    let text = String::from_utf8_lossy(body);
    assert_eq!(
        mcp_headers::decode(&mcp_headers::encode(&text)).as_deref(),
        Some(text.as_ref())
    );
    let Ok(Parsed::One(msg)) = jsonrpc::parse(body) else {
        return;
    };
    let _ = admit::era(&map, &msg);
    if let Ok(params) = admit::modern_headers(&map, &msg) {
        // Accepted: the headers agreed with the body.
        let method = jsonrpc::method(&msg).unwrap_or_default();
        assert_eq!(admit::header(&map, mcp_headers::METHOD), Some(method));
        assert!(
            params
                .iter()
                .all(|(k, _)| k.starts_with(mcp_headers::PARAM_PREFIX))
        );
    }
}

fn state_key() -> &'static StateKey {
    static KEY: OnceLock<StateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        // The in-memory store's sweeper is a task on the runtime.
        let _rt = runtime().enter();
        let store = mcpg_plugin_api::memory::MemoryStore::new(Default::default());
        let c: Arc<dyn mcpg_plugin_api::coordinator::Coordinator> = Arc::new(store.handle("fuzz"));
        let caps = crate::capabilities::Capabilities::build(&Default::default(), &c)
            .expect("in-memory capabilities build");
        StateKey::new(caps.pipelines)
    })
}

/// Target 5: `requestState`. Mode 0 opens the input as a client's `requestState` (always
/// refused: only this gateway can sign); otherwise the input's fields are sealed, the seal must
/// open to the same fields, and the seal altered at one input-chosen place must be refused.
pub fn request_state(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = state_key();
    runtime().block_on(async {
        if mode == 0 {
            let s = String::from_utf8_lossy(rest);
            assert!(key.open(&s).await.is_err(), "a forged requestState opened");
            return;
        }
        let mut parts = rest.split(|b| *b == 0xff).map(String::from_utf8_lossy);
        let mut field = || parts.next().map(|p| p.into_owned());
        let st = State {
            v: u32::from(mode),
            u: field().unwrap_or_default(),
            s: field(),
            p: field(),
            n: field(),
        };
        let sealed = key.seal(&st).await.expect("sealing never fails");
        let opened = key.open(&sealed).await.expect("a fresh seal opens");
        assert_eq!(
            (opened.v, &opened.u, &opened.s, &opened.p, &opened.n),
            (st.v, &st.u, &st.s, &st.p, &st.n)
        );
        // One byte altered: refused. The place and the new byte come from the input.
        let mut bytes = sealed.clone().into_bytes();
        let at = rest.len() % bytes.len();
        let new = rest.first().copied().unwrap_or(b'A');
        if bytes[at] != new {
            bytes[at] = new;
            let altered = String::from_utf8_lossy(&bytes);
            assert!(
                key.open(&altered).await.is_err(),
                "an altered requestState opened: {altered}"
            );
        }
    });
}

/// Target 6: the audit chain verifier. Mode 0 verifies the input as up to three files (split at
/// `0x1e`); otherwise the input's lines are sealed into a chain, which must verify.
pub fn audit(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        let files: Vec<Scratch> = rest
            .splitn(3, |b| *b == 0x1e)
            .enumerate()
            .map(|(i, part)| scratch_file(&format!("audit-{i}.jsonl"), part))
            .collect();
        let paths: Vec<PathBuf> = files.iter().map(|f| f.0.clone()).collect();
        if let Ok(report) = crate::audit::verify(&paths) {
            // Clean: every line was a record.
            let lines: usize = rest
                .splitn(3, |b| *b == 0x1e)
                .map(|p| p.iter().filter(|b| **b == b'\n').count())
                .sum();
            assert_eq!(report.records, lines as u64);
        }
        return;
    }
    let mut prev = crate::audit::chain::GENESIS.to_owned();
    let mut file = Vec::new();
    let mut records = 0u64;
    for (seq, text) in rest.split(|b| *b == b'\n').enumerate() {
        let rec = serde_json::json!({"event": "fuzz", "text": String::from_utf8_lossy(text)});
        let sealed = crate::audit::chain::seal(seq as u64 + u64::from(mode), &prev, &rec)
            .expect("a JSON value seals");
        file.extend_from_slice(&sealed.line);
        prev = sealed.hash;
        records += 1;
    }
    let sealed = scratch_file("audit-sealed.jsonl", &file);
    match crate::audit::verify(std::slice::from_ref(&sealed.0)) {
        Ok(report) => {
            assert_eq!(report.records, records);
            assert_eq!(report.last_hash.as_deref(), Some(prev.as_str()));
        }
        Err(e) => panic!("a chain sealed by the writer does not verify: {e}"),
    }
}
