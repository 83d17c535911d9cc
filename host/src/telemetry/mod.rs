//! Telemetry: log output and the request span (this file), Prometheus metrics (`metrics`),
//! OpenTelemetry traces and trace-context propagation (`traces`).
//!
//! Logs go through `tracing` to standard error: human-readable on a terminal, one flat JSON
//! object per line otherwise. Every line emitted inside a [`request_span`] carries that
//! request's fields (`request_id`, `session`, `binding`, …) — in JSON as top-level keys, in the
//! human format in the span prefix. See `docs/observability.md`.

pub mod metrics;
pub mod traces;

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Empty, Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::format::{DefaultVisitor, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::model::{LogFormat, ObservabilityConfig};

pub use traces::{
    TracesGuard, TracingError, extract_parent, inject_headers, inject_meta, set_parent,
    start_traces,
};

/// The name of the span [`request_span`] opens; the log filter always lets it through (see
/// [`init`]).
pub const REQUEST_SPAN: &str = "mcp.request";

/// Installs the global subscriber: the log output and, when `observability.enabled` and
/// `observability.tracing` is set, the OpenTelemetry layer (whose exporter starts with
/// [`start_traces`] once the node id is known). `MCPG_LOG`, when set, overrides the configured
/// level.
pub fn init(obs: &ObservabilityConfig, traces_endpoint: Option<&url::Url>) {
    let logs = &obs.logs;
    let directive = std::env::var("MCPG_LOG").unwrap_or_else(|_| logs.level.clone());
    // The loader has already checked the configured level; a bad MCPG_LOG falls back to it.
    let filter = EnvFilter::builder()
        .parse(&directive)
        .or_else(|_| EnvFilter::builder().parse(&logs.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match logs.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // The level can change while the process runs (a config reload): the filter sits behind
    // a reload handle.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_LEVEL.set(Box::new(move |directive: &str| {
        let f = EnvFilter::builder()
            .parse(directive)
            .map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    }));
    let tracing = obs.tracing.as_ref().zip(traces_endpoint);
    let otel = tracing.filter(|_| obs.enabled).map(|(cfg, endpoint)| {
        traces::install(cfg, endpoint)
            .layer()
            .with_filter(traces::span_filter())
    });
    // `try_init` so that tests embedding the host may call this more than once.
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(log_layer(
            json,
            std::io::stderr().is_terminal(),
            std::io::stderr,
            filter,
        ))
        .try_init();
}

/// Sets the log level of the running process (see [`set_log_level`]).
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// Changes the log level (`observability.logs.level`) of the running process; `Ok(false)` when
/// `MCPG_LOG` is set (it wins over the config, at start and after) or logging was not set up
/// by [`init`].
pub fn set_log_level(level: &str) -> Result<bool, String> {
    if std::env::var_os("MCPG_LOG").is_some() {
        return Ok(false);
    }
    match LOG_LEVEL.get() {
        Some(set) => set(level).map(|()| true),
        None => Ok(false),
    }
}

/// The log output layer. The request span passes the level filter whatever the level, so that
/// a `warn` line inside a request still carries the request's ids when `info` is filtered out
/// (a span only prints as the context of lines, never on its own). Colours only on a terminal:
/// `format: human` into a file or a pipe gets plain text.
fn log_layer<S, W, F>(
    json: bool,
    ansi: bool,
    writer: W,
    filter: F,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    F: tracing_subscriber::layer::Filter<S> + Send + Sync + 'static,
{
    let filter = filter.or(filter_fn(|m| m.is_span() && m.name() == REQUEST_SPAN));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi && !json);
    if json {
        layer
            .event_format(FlatJson)
            .fmt_fields(AppendJsonFields)
            .with_filter(filter)
            .boxed()
    } else {
        layer.fmt_fields(HumanFields).with_filter(filter).boxed()
    }
}

/// What is known of a request when it arrives: everything its span shows but the outcome.
/// `era` is the protocol era (e.g. `legacy`, `2026-07-28`); `params` names the target (the
/// tool of a `tools/call`, the prompt of a `prompts/get`, the URI of a `resources/*` request).
#[derive(Clone, Copy)]
pub struct RequestInfo<'a> {
    pub binding: &'a str,
    pub method: &'a str,
    pub request_id: Option<&'a Value>,
    pub session: Option<&'a str>,
    pub era: &'static str,
    pub identity: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub params: Option<&'a Value>,
}

/// The span around one MCP request or notification from a client: every log line inside it
/// carries these fields, and with tracing configured it is the request's server span (see
/// `traces`). The tool or prompt name is part of the trace span's name (`tools/call
/// get_weather`).
///
/// Every field known on arrival is set as the span is made, which costs one pass through the
/// log layers instead of one per field; only `outcome` ([`record_outcome`]) and a session an
/// `initialize` starts are recorded later. The fields are declared in the order a log line
/// shows them. Call [`set_parent`] before the span is first entered, so the remote parent is
/// in place when the span starts.
pub fn request_span_for(info: &RequestInfo<'_>) -> tracing::Span {
    let target = Target::of(info.method, info.params);
    let named;
    let otel_name = match target.named() {
        Some((_, name)) => {
            named = format!("{} {name}", info.method);
            named.as_str()
        }
        None => info.method,
    };
    // One call site per JSON type of the id, so that a number stays a number in the logs.
    macro_rules! span {
        ($id:expr) => {
            tracing::info_span!(
                target: "mcpg::request",
                "mcp.request",
                binding = info.binding,
                method = info.method,
                era = info.era,
                request_id = $id,
                session = info.session,
                tool = target.tool,
                prompt = target.prompt,
                resource = target.resource,
                identity = info.identity,
                upstream = info.upstream,
                outcome = Empty,
                // Read by the OpenTelemetry layer only; both log formats leave `otel.*` out.
                "otel.name" = otel_name,
                "otel.kind" = "server",
                "otel.status_code" = Empty,
            )
        };
    }
    let span = match info.request_id {
        Some(Value::String(s)) => span!(s.as_str()),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => span!(i),
            (None, Some(u)) => span!(u),
            (None, None) => span!(n.as_f64().unwrap_or_default()),
        },
        Some(other) => span!(tracing::field::display(other)),
        None => span!(Empty),
    };
    traces::annotate_request(&span, info.method, info.request_id, info.session);
    target.annotate(&span);
    span
}

/// [`request_span_for`] a request whose caller, upstream and target are not known (or are
/// recorded later: `identity` and `upstream` with `Span::record`, the target through
/// [`record_target`]).
pub fn request_span(
    binding: &str,
    method: &str,
    request_id: Option<&Value>,
    session: Option<&str>,
    era: &'static str,
) -> tracing::Span {
    request_span_for(&RequestInfo {
        binding,
        method,
        request_id,
        session,
        era,
        identity: None,
        upstream: None,
        params: None,
    })
}

/// What a request is about, from its `params`.
#[derive(Default)]
struct Target<'a> {
    tool: Option<&'a str>,
    prompt: Option<&'a str>,
    resource: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn of(method: &str, params: Option<&'a Value>) -> Self {
        let str_param = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_str);
        match method {
            "tools/call" => Self {
                tool: str_param("name"),
                ..Self::default()
            },
            "prompts/get" => Self {
                prompt: str_param("name"),
                ..Self::default()
            },
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Self {
                resource: str_param("uri"),
                ..Self::default()
            },
            _ => Self::default(),
        }
    }

    /// The trace attribute of a tool or prompt name, which is also part of the span's name
    /// (a URI is not: it is unbounded).
    fn named(&self) -> Option<(&'static str, &'a str)> {
        match (self.tool, self.prompt) {
            (Some(tool), _) => Some(("gen_ai.tool.name", tool)),
            (None, Some(prompt)) => Some(("gen_ai.prompt.name", prompt)),
            (None, None) => None,
        }
    }

    /// Sets the target's trace attributes on `span`.
    fn annotate(&self, span: &tracing::Span) {
        if let Some((key, name)) = self.named() {
            traces::annotate_target(span, key, name);
        }
        if let Some(uri) = self.resource {
            traces::set_attribute(span, "mcp.resource.uri", uri.to_owned());
        }
    }
}

/// Records what the request is about, from its `params`, on a span made without them
/// ([`request_span`]): the tool of a `tools/call`, the prompt of a `prompts/get`, the URI of a
/// `resources/*` request. The tool or prompt name becomes part of the trace span's name.
pub fn record_target(span: &tracing::Span, method: &str, params: Option<&Value>) {
    let target = Target::of(method, params);
    if let Some(tool) = target.tool {
        span.record("tool", tool);
    }
    if let Some(prompt) = target.prompt {
        span.record("prompt", prompt);
    }
    if let Some(uri) = target.resource {
        span.record("resource", uri);
    }
    if let Some((_, name)) = target.named() {
        span.record("otel.name", format!("{method} {name}"));
    }
    target.annotate(span);
}

/// Records how the request ended (`ok`, `error`, `cancelled`, `timed_out`, `denied`,
/// `unauthenticated`). `error` is `(error.type, description)` for a failure: per the MCP
/// semantic conventions, the JSON-RPC error code as a string (or `tool_error` for a tool
/// result with `isError`), and the error message.
pub fn record_outcome(span: &tracing::Span, outcome: &str, error: Option<(&str, &str)>) {
    span.record("outcome", outcome);
    if let Some((error_type, message)) = error {
        traces::mark_error(span, error_type, message);
    }
}

/// Records the negotiated MCP protocol version (trace attribute `mcp.protocol.version`).
pub fn record_protocol_version(span: &tracing::Span, version: &str) {
    traces::set_attribute(span, "mcp.protocol.version", version.to_owned());
}

/// Field formatting for the human format: the default rendering, without `otel.*` fields.
struct HumanFields;

impl<'w> FormatFields<'w> for HumanFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = SkipOtel(DefaultVisitor::new(writer, true));
        fields.record(&mut v);
        v.0.finish()
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let empty = current.fields.is_empty();
        let mut v = SkipOtel(DefaultVisitor::new(current.as_writer(), empty));
        fields.record(&mut v);
        v.0.finish()
    }
}

struct SkipOtel<V>(V);

impl<V: Visit> Visit for SkipOtel<V> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if !is_otel(field) {
            self.0.record_f64(field, value)
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if !is_otel(field) {
            self.0.record_i64(field, value)
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if !is_otel(field) {
            self.0.record_u64(field, value)
        }
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if !is_otel(field) {
            self.0.record_bool(field, value)
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if !is_otel(field) {
            self.0.record_str(field, value)
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !is_otel(field) {
            self.0.record_error(field, value)
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !is_otel(field) {
            self.0.record_debug(field, value)
        }
    }
}

fn is_otel(field: &Field) -> bool {
    field.name().starts_with("otel.")
}

/// One JSON object per line, flat for `jq`: `timestamp`, `level`, `message`, then the fields
/// of every enclosing span from the outermost in (so `request_id` and `session` are top-level
/// keys), then the event's own fields (which win over a span's on a name clash), then `target`.
/// tracing-subscriber's own JSON format can flatten only the event's fields; spans go into
/// nested `span`/`spans` objects.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let meta = event.metadata();
        // Events bridged from the `log` crate carry their real target in `log.target`.
        let target = match fields.remove("log.target") {
            Some(Value::String(t)) => t,
            _ => meta.target().to_owned(),
        };
        fields.retain(|k, _| !k.starts_with("log."));

        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        if let Some(m) = fields.remove("message") {
            line.insert("message".into(), m);
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                // The span's fields as JsonFields stored them: a JSON object (empty string when
                // the span has none).
                let Some(stored) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) = serde_json::from_str(&stored.fields) {
                    for (k, v) in span_fields {
                        if !k.starts_with("otel.") {
                            line.insert(k, v);
                        }
                    }
                }
            }
        }
        line.extend(fields);
        line.insert("target".into(), Value::String(target));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// A span's fields for the JSON format, kept as one JSON object that each `Span::record`
/// appends to. `JsonFields` parses the whole object and writes it out again on every record,
/// which was a third of the instructions of a request in profiles (the request span records
/// fields after it starts); [`FlatJson`] reads the object into a map, where a field recorded
/// twice keeps its last value. The fields are written straight into the span's text as they
/// are visited (no map, no `Value` per field: every request pays for this, whether or not a
/// line is ever printed inside it). `otel.*` fields, which no log line shows, are left out.
struct AppendJsonFields;

impl<'w> FormatFields<'w> for AppendJsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        writer.write_char('{')?;
        let mut v = JsonWriter::new(&mut writer, false);
        fields.record(&mut v);
        v.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // The object so far without its closing brace; whether it holds a field already.
        let (body, open) = match current.fields.strip_suffix('}') {
            Some(body) => (body.len(), body.len() > 1),
            None => (0, false),
        };
        let mut added = String::new();
        let mut w = Writer::new(&mut added);
        let mut v = JsonWriter::new(&mut w, open);
        fields.record(&mut v);
        v.result?;
        if added.is_empty() {
            return Ok(());
        }
        if body == 0 {
            current.fields.clear();
            current.fields.push('{');
        } else {
            current.fields.truncate(body);
        }
        current.fields.push_str(&added);
        current.fields.push('}');
        Ok(())
    }
}

/// Writes each visited field as `"name":value` (comma-separated) into a JSON object being
/// written, leaving out `otel.*` fields.
struct JsonWriter<'a, 'w> {
    out: &'a mut Writer<'w>,
    /// Whether a field was written before (the next one needs a comma).
    open: bool,
    result: fmt::Result,
}

impl<'a, 'w> JsonWriter<'a, 'w> {
    fn new(out: &'a mut Writer<'w>, open: bool) -> Self {
        Self {
            out,
            open,
            result: Ok(()),
        }
    }

    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() || is_otel(field) {
            return;
        }
        self.result = (|| {
            if self.open {
                self.out.write_char(',')?;
            }
            self.open = true;
            json_str(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl Visit for JsonWriter<'_, '_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |w| write!(w, "{}", Value::from(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| json_str(w, value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |w| json_str(w, &value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| json_str(w, &format!("{value:?}")));
    }
}

/// `s` as a JSON string literal, escaped by serde_json, written without an allocation. A
/// string with nothing to escape (the usual field: a method, a binding, an id) is written as
/// it is, in one piece: this runs for every field of every request span.
fn json_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_char('"')?;
        w.write_str(s)?;
        return w.write_char('"');
    }
    serde_json::to_writer(Utf8Io(w), s).map_err(|_| fmt::Error)
}

/// A `fmt::Write` as the `io::Write` serde_json's writers take. serde_json writes a string
/// in pieces cut only before and after its ASCII escapes, so each piece is UTF-8.
struct Utf8Io<'a, W: ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> std::io::Write for Utf8Io<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let s = std::str::from_utf8(bytes).map_err(std::io::Error::other)?;
        self.0.write_str(s).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    #[test]
    fn json_str_writes_what_serde_json_writes() {
        for s in [
            "",
            "tools/call",
            "bench-legacy",
            "a \"quoted\" name",
            "back\\slash",
            "line\nbreak\ttab\u{1}",
            "déjà vu ✓",
            "\u{7f} delete",
        ] {
            let mut out = String::new();
            json_str(&mut out, s).unwrap();
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    /// A writer into a shared buffer, standing in for standard error.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Runs `f` under the log layer `init` installs, writing to a buffer; returns the output.
    fn capture(json: bool, level: &str, f: impl FnOnce()) -> String {
        let buf = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(log_layer(
            json,
            false,
            buf.clone(),
            EnvFilter::new(level),
        ));
        tracing::subscriber::with_default(subscriber, f);
        buf.text()
    }

    fn json_lines(out: &str) -> Vec<Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_span_fields_of_every_type_and_any_text_round_trip() {
        let nasty = "q\"uote \\ back\nline\ttab\u{1} ctl \u{7f} é 💥";
        let out = capture(true, "info", || {
            let span = tracing::info_span!(
                "mcp.request",
                s = nasty,
                i = -3i64,
                u = 18_446_744_073_709_551_615u64,
                f = 1.5f64,
                b = true,
                d = ?vec!["a\"b"],
                later = tracing::field::Empty,
                "otel.name" = "left out",
            );
            let _g = span.enter();
            span.record("later", nasty);
            span.record("otel.status_code", "left out too");
            tracing::info!("inside");
        });
        let line = &json_lines(&out)[0];
        assert_eq!(line["s"], nasty);
        assert_eq!(line["later"], nasty);
        assert_eq!(line["i"], -3);
        assert_eq!(line["u"], json!(u64::MAX));
        assert_eq!(line["f"], 1.5);
        assert_eq!(line["b"], true);
        assert_eq!(line["d"], r#"["a\"b"]"#);
        assert!(line.get("otel.name").is_none(), "{line}");
        assert!(line.get("otel.status_code").is_none(), "{line}");
    }

    #[test]
    fn json_span_fields_recorded_again_keep_their_last_value() {
        let out = capture(true, "info", || {
            let span = request_span("main", "tools/call", Some(&json!(7)), None, "legacy");
            let _g = span.enter();
            span.record("upstream", "first");
            span.record("upstream", "second");
            record_outcome(&span, "error", None);
            record_outcome(&span, "ok", None);
            tracing::info!("done");
        });
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{out}");
        assert_eq!(lines[0]["upstream"], "second", "{out}");
        assert_eq!(lines[0]["outcome"], "ok", "{out}");
        assert_eq!(lines[0]["request_id"], 7, "{out}");
    }

    #[test]
    fn json_lines_carry_the_request_fields_at_top_level() {
        let out = capture(true, "info", || {
            let span = request_span(
                "main",
                "tools/call",
                Some(&json!(42)),
                Some("sess-1"),
                "legacy",
            );
            let _g = span.enter();
            span.record("upstream", "files");
            record_target(&span, "tools/call", Some(&json!({"name": "get_weather"})));
            tracing::info!(bytes = 12, "relayed");
            record_outcome(&span, "ok", None);
            tracing::warn!("late");
        });
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 2, "{out}");
        let l = &lines[0];
        assert_eq!(l["message"], "relayed");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["request_id"], 42);
        assert_eq!(l["session"], "sess-1");
        assert_eq!(l["binding"], "main");
        assert_eq!(l["method"], "tools/call");
        assert_eq!(l["era"], "legacy");
        assert_eq!(l["upstream"], "files");
        assert_eq!(l["tool"], "get_weather");
        assert_eq!(l["bytes"], 12);
        assert!(l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(l.get("outcome").is_none(), "not yet recorded: {l}");
        assert!(
            l.as_object()
                .unwrap()
                .keys()
                .all(|k| !k.starts_with("otel.")),
            "{l}"
        );
        assert_eq!(lines[1]["outcome"], "ok");
        // A string id stays a string.
        let out = capture(true, "info", || {
            let span = request_span("main", "ping", Some(&json!("a-1")), None, "legacy");
            let _g = span.enter();
            tracing::info!("x");
        });
        let l = &json_lines(&out)[0];
        assert_eq!(l["request_id"], "a-1");
        assert!(l.get("session").is_none());
    }

    #[test]
    fn request_fields_survive_a_level_that_filters_info_out() {
        let out = capture(true, "warn", || {
            let span = request_span("main", "ping", Some(&json!(7)), Some("s"), "legacy");
            let _g = span.enter();
            tracing::info!("hidden");
            tracing::warn!("shown");
        });
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 1, "{out}");
        assert_eq!(lines[0]["message"], "shown");
        assert_eq!(lines[0]["request_id"], 7);
        assert_eq!(lines[0]["session"], "s");
    }

    #[test]
    fn human_lines_show_the_request_in_the_span_prefix() {
        let out = capture(false, "info", || {
            let span = request_span("main", "tools/call", Some(&json!(3)), Some("s-9"), "legacy");
            let _g = span.enter();
            record_target(&span, "tools/call", Some(&json!({"name": "echo"})));
            tracing::info!("relayed");
        });
        assert!(out.contains("mcp.request{"), "{out}");
        assert!(out.contains("request_id=3"), "{out}");
        assert!(out.contains("session=\"s-9\""), "{out}");
        assert!(out.contains("tool=\"echo\""), "{out}");
        assert!(out.contains("relayed"), "{out}");
        assert!(!out.contains("otel."), "{out}");
    }

    /// The span made with every field known ([`request_span_for`]) prints what the span made
    /// bare and recorded field by field printed: the same keys, values and order, both formats.
    #[test]
    fn a_span_made_with_its_fields_prints_the_lines_of_one_recorded_field_by_field() {
        let ids = [
            Some(json!(42)),
            Some(json!("a-1")),
            Some(json!(u64::MAX)),
            Some(json!(1.5)),
            Some(json!(null)),
            None,
        ];
        let calls = [
            ("tools/call", json!({"name": "get_weather"})),
            ("prompts/get", json!({"name": "greet"})),
            ("resources/read", json!({"uri": "file:///a"})),
            ("tools/list", json!({})),
        ];
        let without_time = |out: String| -> Vec<String> {
            out.lines()
                .map(|l| match l.find("\"level\"") {
                    Some(i) => l[i..].to_owned(), // JSON: drop the timestamp
                    None => l.split_once(' ').map_or(l, |(_, rest)| rest).to_owned(),
                })
                .collect()
        };
        for json in [true, false] {
            for id in &ids {
                for (method, params) in &calls {
                    let emit = |span: tracing::Span| {
                        let _g = span.enter();
                        tracing::info!(bytes = 12, "relayed");
                        record_outcome(&span, "ok", None);
                        tracing::warn!("late");
                    };
                    let recorded = capture(json, "info", || {
                        let span = request_span("main", method, id.as_ref(), Some("s-1"), "legacy");
                        record_target(&span, method, Some(params));
                        span.record("identity", "token:ci");
                        span.record("upstream", "files");
                        emit(span);
                    });
                    let made = capture(json, "info", || {
                        emit(request_span_for(&RequestInfo {
                            binding: "main",
                            method,
                            request_id: id.as_ref(),
                            session: Some("s-1"),
                            era: "legacy",
                            identity: Some("token:ci"),
                            upstream: Some("files"),
                            params: Some(params),
                        }))
                    });
                    assert_eq!(recorded.lines().count(), 2, "{recorded}");
                    assert_eq!(
                        without_time(made),
                        without_time(recorded),
                        "{method} {id:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn lines_outside_a_request_have_no_request_fields() {
        let out = capture(true, "info", || tracing::info!(node = "n1", "joined"));
        let l = &json_lines(&out)[0];
        assert_eq!(l["node"], "n1");
        assert!(l.get("request_id").is_none());
        assert_eq!(l["target"], module_path!());
    }
}
