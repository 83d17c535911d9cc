//! The audit file's line format and hash chain: sealing a record into a line and checking one.
//!
//! A line is `{"seq":N,"prev":"<64 hex>",…record fields…,"hash":"<64 hex>"}` followed by `\n`.
//! `hash` is the SHA-256 of the line's bytes without the hash field, that is of
//! `{"seq":N,"prev":"…",…record fields…}` exactly as written. Because `hash` is always the last
//! field with a fixed-length suffix, a checker recovers those bytes by cutting the suffix off;
//! it never re-serializes, so key order and number formatting cannot make it disagree.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_KEY: &[u8] = br#","hash":""#;
/// `,"hash":"` + 64 hex digits + `"}`.
const SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

#[derive(Serialize)]
struct Chained<'a, T: Serialize> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    rec: &'a T,
}

/// A sealed line (with its `\n`) and its hash.
pub struct Sealed {
    pub line: Vec<u8>,
    pub hash: String,
}

/// Serializes `rec` as the line numbered `seq` following the line whose hash is `prev`.
pub fn seal<T: Serialize>(seq: u64, prev: &str, rec: &T) -> serde_json::Result<Sealed> {
    let mut line = serde_json::to_vec(&Chained { seq, prev, rec })?;
    let hash = hex(&Sha256::digest(&line));
    line.pop(); // the closing brace, re-added after the hash
    line.extend_from_slice(HASH_KEY);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok(Sealed { line, hash })
}

/// What one line says about itself.
#[derive(Debug, Clone)]
pub struct Opened {
    pub seq: u64,
    pub prev: String,
    /// The hash the line carries.
    pub hash: String,
    /// Whether `hash` is the hash of the line's bytes.
    pub intact: bool,
    /// `Some(reason)` for a chain-break marker (see [`ChainBreak`]).
    pub chain_break: Option<String>,
}

/// Reads a line (without its `\n`). `Err` says why it is not a chained record at all.
pub fn open(line: &[u8]) -> Result<Opened, String> {
    if line.len() < SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err("not a chained audit record (no trailing `hash` field)".into());
    }
    let cut = line.len() - SUFFIX_LEN;
    let (body, suffix) = line.split_at(cut);
    let hash = &suffix[HASH_KEY.len()..HASH_KEY.len() + 64];
    if !suffix.starts_with(HASH_KEY) || !hash.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("not a chained audit record (no trailing `hash` field)".into());
    }
    let hash = String::from_utf8(hash.to_vec()).expect("hex is ASCII");
    let mut whole = body.to_vec();
    whole.push(b'}');
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&whole)
        .map_err(|e| format!("not a JSON object once the hash is cut off: {e}"))?;
    let seq = fields
        .get("seq")
        .and_then(|v| v.as_u64())
        .ok_or("`seq` is missing or not an unsigned integer")?;
    let prev = fields
        .get("prev")
        .and_then(|v| v.as_str())
        .filter(|p| p.len() == 64)
        .ok_or("`prev` is missing or not 64 hex digits")?
        .to_owned();
    let chain_break = match fields.get("event").and_then(|v| v.as_str()) {
        Some(CHAIN_BREAK) => Some(
            fields
                .get("reason")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned(),
        ),
        _ => None,
    };
    Ok(Opened {
        seq,
        prev,
        intact: hex(&Sha256::digest(&whole)) == hash,
        hash,
        chain_break,
    })
}

const CHAIN_BREAK: &str = "chain_break";

/// The line written when start-up cannot continue the chain because the file's last complete
/// line is not a valid record: it starts a new segment (`prev` = [`GENESIS`]) and says why, so
/// `verify` reports the break instead of the writer hiding it.
#[derive(Serialize)]
pub struct ChainBreak<'a> {
    pub time: String,
    pub replica: &'a str,
    pub event: &'static str,
    pub reason: String,
}

impl<'a> ChainBreak<'a> {
    pub fn new(replica: &'a str, reason: String) -> Self {
        Self {
            time: super::rfc3339_millis(std::time::SystemTime::now()),
            replica,
            event: CHAIN_BREAK,
            reason,
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
