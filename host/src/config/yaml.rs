//! Reading YAML into a tree that remembers where every key and value stood in the file.
//!
//! The rest of the loader works on JSON values (the schema, serde), so this module also turns the
//! tree into a [`serde_json::Value`] plus a [`SourceMap`] from JSON pointers back to positions.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Value};

use super::diagnostics::{Diagnostic, KeyPath, Pos, escape_pointer};

/// One YAML node with its position.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar {
        text: String,
        style: ScalarStyle,
        /// `!!str` forces a string even where a plain scalar would read as a number.
        forced_str: bool,
        /// Names of the environment variables substituted into this scalar. A non-empty list
        /// marks the value as secret: it is never printed back.
        from_env: Vec<String>,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// Where each key and value of the converted JSON document stood in the YAML source.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    entries: HashMap<String, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Option<Pos>,
    value: Pos,
    secret: bool,
}

impl SourceMap {
    /// Position of the value at `pointer` (a JSON pointer), or of its nearest ancestor.
    pub fn value_pos(&self, pointer: &str) -> Pos {
        self.nearest(pointer).map(|e| e.value).unwrap_or(Pos::START)
    }

    /// Position of the key that introduces `pointer`, falling back to its value's position.
    pub fn key_pos(&self, pointer: &str) -> Pos {
        self.nearest(pointer)
            .map(|e| e.key.unwrap_or(e.value))
            .unwrap_or(Pos::START)
    }

    /// Whether the value at `pointer` came (partly) from the environment.
    pub fn is_secret(&self, pointer: &str) -> bool {
        self.entries.get(pointer).is_some_and(|e| e.secret)
    }

    fn nearest(&self, pointer: &str) -> Option<&Entry> {
        let mut p = pointer;
        loop {
            if let Some(e) = self.entries.get(p) {
                return Some(e);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }
}

/// At most this many aliases (`*name`) in one file. A config needs a handful; the limit stops an
/// alias bomb ("billion laughs") before it expands.
pub const MAX_ALIASES: usize = 1_000;
/// At most this many nodes (keys, values, list items) added by aliases in one file, all
/// aliases together.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// At most this many bytes of scalar text added by aliases in one file, all aliases together.
pub const MAX_ALIAS_BYTES: usize = 4 * 1024 * 1024;

/// Parses one YAML document. A syntax error ends parsing (the parser cannot recover), so it is
/// returned alone; everything after that is collected. Alias expansion is bounded by
/// [`MAX_ALIASES`], [`MAX_ALIAS_NODES`] and [`MAX_ALIAS_BYTES`]: past them parsing stops with an
/// error at the alias, before anything is copied.
pub fn parse(text: &str) -> Result<Option<Node>, Diagnostic> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder {
        parser: &mut parser,
        anchors: HashMap::new(),
        aliases: 0,
        alias_nodes: 0,
        alias_bytes: 0,
    };
    builder.document()
}

struct Builder<'a, 'i> {
    parser: &'a mut Parser<'i, saphyr_parser::StrInput<'i>>,
    /// Each anchored node with its size (nodes, scalar bytes), so an alias is measured before
    /// it is copied.
    anchors: HashMap<usize, (Node, Size)>,
    aliases: usize,
    alias_nodes: usize,
    alias_bytes: usize,
}

/// How big a node is once expanded: its nodes and the bytes of its scalars.
#[derive(Debug, Clone, Copy)]
struct Size {
    nodes: usize,
    bytes: usize,
}

fn size_of(node: &Node) -> Size {
    match &node.kind {
        NodeKind::Scalar { text, .. } => Size {
            nodes: 1,
            bytes: text.len(),
        },
        NodeKind::Seq(items) => items.iter().fold(Size { nodes: 1, bytes: 0 }, |acc, n| {
            let s = size_of(n);
            Size {
                nodes: acc.nodes.saturating_add(s.nodes),
                bytes: acc.bytes.saturating_add(s.bytes),
            }
        }),
        NodeKind::Map(entries) => {
            entries
                .iter()
                .fold(Size { nodes: 1, bytes: 0 }, |acc, (k, v)| {
                    let (a, b) = (size_of(k), size_of(v));
                    Size {
                        nodes: acc.nodes.saturating_add(a.nodes).saturating_add(b.nodes),
                        bytes: acc.bytes.saturating_add(a.bytes).saturating_add(b.bytes),
                    }
                })
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn syntax_error(e: saphyr_parser::ScanError) -> Diagnostic {
    let m = e.marker();
    Diagnostic::error(
        Pos {
            line: m.line(),
            column: m.col() + 1,
        },
        KeyPath::root(),
        format!("YAML syntax error: {}", e.info()),
    )
}

impl<'i> Builder<'_, 'i> {
    fn next(&mut self) -> Result<(Event<'i>, Span), Diagnostic> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(syntax_error(e)),
            None => Err(Diagnostic::error(
                Pos::START,
                KeyPath::root(),
                "YAML syntax error: unexpected end of input",
            )),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, Diagnostic> {
        let mut root = None;
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) => {
                    if root.is_some() {
                        return Err(Diagnostic::error(
                            pos_of(&span),
                            KeyPath::root(),
                            "the file holds more than one YAML document; mcpg reads exactly one",
                        ));
                    }
                    let (ev, span) = self.next()?;
                    root = Some(self.node(ev, span)?);
                }
                other => {
                    return Err(Diagnostic::error(
                        pos_of(&span),
                        KeyPath::root(),
                        format!("YAML syntax error: unexpected {other:?}"),
                    ));
                }
            }
        }
    }

    fn node(&mut self, ev: Event<'i>, span: Span) -> Result<Node, Diagnostic> {
        let pos = pos_of(&span);
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                let forced_str = tag
                    .as_deref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                (
                    Node {
                        pos,
                        kind: NodeKind::Scalar {
                            text: text.into_owned(),
                            style,
                            forced_str,
                            from_env: Vec::new(),
                        },
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span)?);
                }
                (
                    Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, tag) => {
                check_tag(tag.as_deref(), pos)?;
                let mut entries = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(ev, span)?;
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span)?;
                    entries.push((key, value));
                }
                (
                    Node {
                        pos,
                        kind: NodeKind::Map(entries),
                    },
                    anchor,
                )
            }
            Event::Alias(id) => {
                // An alias stands for a copy of the anchored node, reported at the alias itself.
                let (anchored, size) = self.anchors.get(&id).ok_or_else(|| {
                    Diagnostic::error(
                        pos,
                        KeyPath::root(),
                        "YAML alias refers to an unknown anchor",
                    )
                })?;
                self.aliases += 1;
                self.alias_nodes = self.alias_nodes.saturating_add(size.nodes);
                self.alias_bytes = self.alias_bytes.saturating_add(size.bytes);
                if let Some(limit) = self.alias_limit() {
                    return Err(Diagnostic::error(pos, KeyPath::root(), limit));
                }
                let mut node = anchored.clone();
                relocate(&mut node, pos);
                return Ok(node);
            }
            other => {
                return Err(Diagnostic::error(
                    pos,
                    KeyPath::root(),
                    format!("YAML syntax error: unexpected {other:?}"),
                ));
            }
        };
        if anchor != 0 {
            let size = size_of(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        Ok(node)
    }

    /// Why alias expansion must stop here, if it must.
    fn alias_limit(&self) -> Option<String> {
        let what = if self.aliases > MAX_ALIASES {
            format!("more than {MAX_ALIASES} aliases")
        } else if self.alias_nodes > MAX_ALIAS_NODES {
            format!("aliases that expand to more than {MAX_ALIAS_NODES} values")
        } else if self.alias_bytes > MAX_ALIAS_BYTES {
            format!(
                "aliases that expand to more than {} MiB of text",
                MAX_ALIAS_BYTES / (1024 * 1024)
            )
        } else {
            return None;
        };
        Some(format!(
            "YAML alias expansion stopped here: the file uses {what} (an alias bomb?); mcpg refuses to expand it"
        ))
    }
}

fn check_tag(tag: Option<&Tag>, pos: Pos) -> Result<(), Diagnostic> {
    match tag {
        Some(t) if !t.is_yaml_core_schema() => Err(Diagnostic::error(
            pos,
            KeyPath::root(),
            format!("YAML tag `{t}` is not supported; mcpg reads plain YAML 1.2 core values"),
        )),
        _ => Ok(()),
    }
}

fn relocate(node: &mut Node, pos: Pos) {
    node.pos = pos;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| relocate(n, pos)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            relocate(k, pos);
            relocate(v, pos);
        }),
    }
}

/// Converts the tree to JSON, recording positions. Problems that YAML allows but a config cannot
/// have (duplicate keys, non-scalar keys) are collected into `errors`.
pub fn to_json(root: &Node, errors: &mut Vec<Diagnostic>) -> (Value, SourceMap) {
    let mut map = SourceMap::default();
    let mut path = KeyPath::root();
    let value = convert(root, None, "", &mut path, &mut map, errors);
    (value, map)
}

fn convert(
    node: &Node,
    key_pos: Option<Pos>,
    pointer: &str,
    path: &mut KeyPath,
    map: &mut SourceMap,
    errors: &mut Vec<Diagnostic>,
) -> Value {
    let secret = matches!(&node.kind, NodeKind::Scalar { from_env, .. } if !from_env.is_empty());
    map.entries.insert(
        pointer.to_owned(),
        Entry {
            key: key_pos,
            value: node.pos,
            secret,
        },
    );
    match &node.kind {
        NodeKind::Scalar {
            text,
            style,
            forced_str,
            ..
        } => {
            if *style == ScalarStyle::Plain && !forced_str {
                resolve_plain(text)
            } else {
                Value::String(text.clone())
            }
        }
        NodeKind::Seq(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    path.push_index(i);
                    let v = convert(item, None, &format!("{pointer}/{i}"), path, map, errors);
                    path.pop();
                    v
                })
                .collect(),
        ),
        NodeKind::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let key = match &k.kind {
                    NodeKind::Scalar { text, .. } => text.clone(),
                    _ => {
                        errors.push(Diagnostic::error(
                            k.pos,
                            path.clone(),
                            "a mapping key must be a plain value, not a list or mapping",
                        ));
                        continue;
                    }
                };
                path.push_key(&key);
                if out.contains_key(&key) {
                    errors.push(Diagnostic::error(
                        k.pos,
                        path.clone(),
                        "duplicate key; each key may appear once in a mapping",
                    ));
                } else {
                    let child_pointer = format!("{pointer}/{}", escape_pointer(&key));
                    let value = convert(v, Some(k.pos), &child_pointer, path, map, errors);
                    out.insert(key, value);
                }
                path.pop();
            }
            Value::Object(out)
        }
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema: null, booleans, integers, floats, else a
/// string. `.inf` and `.nan` have no JSON form and stay strings.
pub fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::from(n);
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

fn parse_int(text: &str) -> Option<i64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok();
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i64::from_str_radix(oct, 8).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    None
}

fn is_float(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((a, b)) => {
            (!a.is_empty() || !b.is_empty())
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    mantissa_ok && exp_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Value, SourceMap, Vec<Diagnostic>) {
        let node = parse(text).unwrap().unwrap();
        let mut errors = Vec::new();
        let (v, m) = to_json(&node, &mut errors);
        (v, m, errors)
    }

    #[test]
    fn plain_scalars_resolve_by_core_schema() {
        let (v, _, _) =
            load("a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: 0x1f\ng: hello\nh: !!str 2\ni: .inf\n");
        assert_eq!(
            v,
            serde_json::json!({"a":1,"b":1.5,"c":true,"d":null,"e":"1","f":31,"g":"hello","h":"2","i":".inf"})
        );
    }

    #[test]
    fn positions_are_one_based_for_keys_and_values() {
        let (_, m, _) = load("server:\n  listen: \"x\"\n");
        assert_eq!(m.key_pos("/server/listen"), Pos { line: 2, column: 3 });
        assert_eq!(
            m.value_pos("/server/listen"),
            Pos {
                line: 2,
                column: 11
            }
        );
        // A missing child falls back to its nearest parent.
        assert_eq!(m.value_pos("/server/nope"), m.value_pos("/server"));
    }

    #[test]
    fn duplicate_keys_are_reported_each_time() {
        let (_, _, errors) = load("a: 1\na: 2\nb:\n  c: 1\n  c: 2\n");
        let rendered: Vec<_> = errors.iter().map(|e| e.render("f")).collect();
        assert_eq!(
            rendered,
            vec![
                "f:2:1: a: duplicate key; each key may appear once in a mapping",
                "f:5:3: b.c: duplicate key; each key may appear once in a mapping"
            ]
        );
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let (v, _, _) = load("a: &x {k: 1}\nb: *x\n");
        assert_eq!(v["b"], serde_json::json!({"k": 1}));
    }

    /// A "billion laughs" file: nine levels of nine aliases each would expand to 9^9 values.
    pub(crate) fn alias_bomb(levels: usize) -> String {
        let mut text = String::from(
            "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..levels {
            let refs = vec![format!("*a{}", i - 1); 9].join(",");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() {
        let text = alias_bomb(9);
        assert!(text.len() < 500, "{} bytes", text.len());
        let e = parse(&text).unwrap_err();
        assert!(
            e.message.contains("alias expansion stopped"),
            "{}",
            e.message
        );
        assert!(e.message.contains("100000 values"), "{}", e.message);
        // Level 6 is where 9^5 copies cross the node limit.
        assert_eq!(e.pos.line, 6, "{}", e.render("f"));
    }

    #[test]
    fn many_small_aliases_are_refused_by_count() {
        let mut text = String::from("a: &x 1\nb: [");
        text.push_str(&vec!["*x"; MAX_ALIASES + 1].join(","));
        text.push_str("]\n");
        let e = parse(&text).unwrap_err();
        assert!(
            e.message.contains("more than 1000 aliases"),
            "{}",
            e.message
        );
    }

    #[test]
    fn aliases_of_large_text_are_refused_by_size() {
        let big = "x".repeat(1024 * 1024);
        let text = format!("a: &x \"{big}\"\nb: [*x, *x, *x, *x, *x]\n");
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("4 MiB of text"), "{}", e.message);
        assert_eq!(
            e.pos,
            Pos {
                line: 2,
                column: 21
            }
        );
    }

    #[test]
    fn ordinary_aliases_stay_allowed() {
        let text = alias_bomb(4); // 9^3 = 729 values
        let node = parse(&text).unwrap().unwrap();
        let mut errors = Vec::new();
        let (v, _) = to_json(&node, &mut errors);
        assert_eq!(v["a3"].as_array().unwrap().len(), 9);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.render("f").starts_with("f:"), "{}", e.render("f"));
        assert!(e.message.contains("YAML syntax error"));
    }

    #[test]
    fn several_documents_are_refused() {
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.message.contains("more than one YAML document"));
    }
}
