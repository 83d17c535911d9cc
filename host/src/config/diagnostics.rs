//! Config diagnostics: a position, a key path, a severity and a message, rendered as
//! `FILE:LINE:COL: KEY.PATH: message`.

use std::fmt;

use serde::Serialize;

/// A 1-based line and column in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// The path of keys from the document root to a value, shown as `bindings[0].upstreams[1].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn push_key(&mut self, key: &str) {
        self.0.push(Segment::Key(key.to_owned()));
    }

    pub fn push_index(&mut self, i: usize) {
        self.0.push(Segment::Index(i));
    }

    pub fn pop(&mut self) {
        self.0.pop();
    }

    pub fn key(mut self, key: &str) -> Self {
        self.push_key(key);
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.push_index(i);
        self
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The JSON pointer (RFC 6901) of this path.
    pub fn pointer(&self) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            out.push('/');
            match seg {
                Segment::Key(k) => out.push_str(&escape_pointer(k)),
                Segment::Index(i) => out.push_str(&i.to_string()),
            }
        }
        out
    }

    /// Builds a path from a JSON pointer, using the document to tell array indices from keys.
    pub fn from_pointer(pointer: &str, doc: &serde_json::Value) -> Self {
        let mut path = KeyPath::root();
        let mut cur = Some(doc);
        for raw in pointer.split('/').skip(1) {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            match cur {
                Some(serde_json::Value::Array(items)) => match seg.parse::<usize>() {
                    Ok(i) => {
                        cur = items.get(i);
                        path.push_index(i);
                    }
                    Err(_) => {
                        cur = None;
                        path.push_key(&seg);
                    }
                },
                Some(serde_json::Value::Object(m)) => {
                    cur = m.get(&seg);
                    path.push_key(&seg);
                }
                _ => {
                    cur = None;
                    path.push_key(&seg);
                }
            }
        }
        path
    }
}

fn is_plain_key(k: &str) -> bool {
    k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{}]", serde_json::Value::String(k.clone()))?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub pos: Pos,
    pub path: KeyPath,
    pub message: String,
}

impl Diagnostic {
    pub fn error(pos: Pos, path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            pos,
            path,
            message: message.into(),
        }
    }

    pub fn warning(pos: Pos, path: KeyPath, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            pos,
            path,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL: KEY.PATH: message`, with `warning: ` before the path for warnings.
    /// Control characters are escaped (see [`escape_controls`]), so the result is always one
    /// line: a value quoted in a message cannot forge a diagnostic of its own.
    pub fn render(&self, file: &str) -> String {
        let Pos { line, column } = self.pos;
        let file = escape_controls(file);
        let path = escape_controls(&self.path.to_string()).into_owned();
        let message = escape_controls(&self.message);
        match self.severity {
            Severity::Error => format!("{file}:{line}:{column}: {path}: {message}"),
            Severity::Warning => format!("{file}:{line}:{column}: warning: {path}: {message}"),
        }
    }

    /// The machine-readable form used by `mcpg-config-check --format json`.
    pub fn to_json(&self, file: &str) -> serde_json::Value {
        serde_json::json!({
            "file": file,
            "line": self.pos.line,
            "column": self.pos.column,
            "path": self.path.to_string(),
            "severity": self.severity,
            "message": self.message,
        })
    }
}

/// Escapes what could break a message out of its line or disguise it when printed to a
/// terminal: C0 and C1 control characters (ESC, CR, LF, TAB, NEL, …), DEL, the Unicode line
/// and paragraph separators U+2028/U+2029, and the bidirectional overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069). `\n`, `\r` and `\t` are written so; the rest as `\u{…}`.
/// A backslash stays as it is: the escapes are for reading, not for parsing back.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON pointer escaping (RFC 6901).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_the_yaml_reads() {
        let p = KeyPath::root()
            .key("bindings")
            .index(0)
            .key("upstreams")
            .index(2)
            .key("name");
        assert_eq!(p.to_string(), "bindings[0].upstreams[2].name");
        assert_eq!(p.pointer(), "/bindings/0/upstreams/2/name");
        let odd = KeyPath::root().key("headers").key("X.Y");
        assert_eq!(odd.to_string(), "headers[\"X.Y\"]");
        assert_eq!(KeyPath::root().to_string(), "(root)");
    }

    #[test]
    fn control_characters_in_values_cannot_forge_a_diagnostic_line() {
        let forged = "x\nconfig.yaml:1:1: server.listen: all good\r\u{1b}[2K\u{2028}\u{2029}\u{85}\u{202e}\u{7f}\t";
        let d = Diagnostic::error(
            Pos { line: 3, column: 9 },
            KeyPath::root().key("bindings").index(0).key(forged),
            format!("`{forged}` is not valid"),
        );
        let out = d.render("config.yaml");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            !out.chars()
                .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}')),
            "{out:?}"
        );
        assert!(
            out.ends_with(r"`x\nconfig.yaml:1:1: server.listen: all good\r\u{1b}[2K\u{2028}\u{2029}\u{85}\u{202e}\u{7f}\t` is not valid"),
            "{out}"
        );
        // Text without such characters is left as it is.
        assert!(matches!(
            escape_controls("plain `é` text"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn pointers_round_trip_through_the_document() {
        let doc = serde_json::json!({"a": [{"0": {"b/c": 1}}]});
        let p = KeyPath::from_pointer("/a/0/0/b~1c", &doc);
        assert_eq!(p.to_string(), "a[0][\"0\"][\"b/c\"]");
        assert_eq!(p.pointer(), "/a/0/0/b~1c");
    }
}
