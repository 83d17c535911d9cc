//! Writing a message as JSON, byte for byte as `serde_json::to_vec` writes it, but with strings
//! escaped eight bytes at a time: serde_json looks up every byte of every string in a table,
//! which made re-serialising a 16 KiB tool answer half of what a request cost.

use serde_json::{Map, Value};

/// `m` as compact JSON (the text `serde_json::to_vec` gives).
pub fn to_vec(m: &Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    object(&mut out, m);
    out
}

/// `m` as compact JSON text (what `serde_json::to_string` gives).
pub fn to_string(m: &Map<String, Value>) -> String {
    String::from_utf8(to_vec(m)).expect("JSON text of UTF-8 strings is UTF-8")
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Numbers as serde_json writes them (integers as they are, floats shortest and with a
        // fraction or exponent, non-finite as `null`).
        Value::Number(n) => serde_json::to_writer(&mut *out, n).expect("a Vec takes every write"),
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(out, item);
            }
            out.push(b']');
        }
        Value::Object(m) => object(out, m),
    }
}

fn object(out: &mut Vec<u8>, m: &Map<String, Value>) {
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

/// Whether any of the eight bytes of `w` must be escaped: a control character (below 0x20),
/// `"` or `\`.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 has its high bit set after subtracting 0x20 from it (and was not
    // already above 0x7f); a byte equal to `c` is zero after xor, found the same way.
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
    (below_space | zero_in(quote) | zero_in(backslash)) & HIGHS != 0
}

fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Clean runs are copied whole; a word that may hold an escape is done byte by byte.
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if i + 8 <= bytes.len() {
            let w = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
            if !needs_escape(w) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => &[],
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.extend_from_slice(&bytes[start..i]);
            if esc.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            } else {
                out.extend_from_slice(esc);
            }
            i += 1;
            start = i;
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn same(v: Value) {
        let Value::Object(m) = v else {
            panic!("an object")
        };
        assert_eq!(
            String::from_utf8(to_vec(&m)).unwrap(),
            serde_json::to_string(&m).unwrap()
        );
        assert_eq!(to_string(&m), serde_json::to_string(&m).unwrap());
    }

    #[test]
    fn writes_what_serde_json_writes() {
        same(json!({}));
        same(
            json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "hi"}], "isError": false}}),
        );
        same(
            json!({"n": [0, -1, u64::MAX, i64::MIN, 1.0, 0.5, -0.0, 1e300, 2.5e-8], "z": null, "t": true, "f": false}),
        );
        same(json!({"s": "déjà vu ✓ 𝄞", "e": "", "k\"ey\n": "v"}));
        same(json!({"nested": {"a": [[], {}, [{"b": {"c": "d"}}]]}}));
        // Every byte that is escaped, and each in every position of an eight-byte word.
        let all: String = (0u8..0x80).map(char::from).collect();
        same(json!({ "all": all }));
        for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "é"] {
            for pos in 0..17 {
                let mut s = "x".repeat(17);
                s.insert_str(pos, special);
                same(json!({ "s": s }));
            }
        }
        // A long answer: clean words copied whole, escapes spread through it.
        let long: String = (0..20_000)
            .map(|i| match i % 997 {
                0 => '"',
                1 => '\n',
                2 => '\\',
                3 => 'ü',
                _ => char::from(b'a' + (i % 26) as u8),
            })
            .collect();
        same(json!({ "text": long }));
    }

    #[test]
    fn the_word_test_flags_exactly_the_bytes_to_escape() {
        for b in 0u8..=255 {
            let w = u64::from_le_bytes([b'a', b'a', b'a', b, b'a', b'a', b'a', b'a']);
            let want = b < 0x20 || b == b'"' || b == b'\\';
            assert_eq!(needs_escape(w), want, "byte {b:#x}");
        }
    }
}
