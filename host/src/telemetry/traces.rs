//! OpenTelemetry traces: the OTLP/HTTP exporter, the MCP attributes on the request span, and
//! W3C Trace Context propagation through HTTP headers and MCP `params._meta`.
//!
//! Start-up is in two steps because the subscriber is installed before the node id is known
//! (a coordinator plugin may choose it): [`install`] (from `telemetry::init`) builds the tracer
//! provider and the `tracing` layer, and [`start_traces`] (once the node id is known, inside
//! the runtime) attaches the exporter, whose resource carries `service.instance.id`. Spans that
//! end before then are dropped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData, SpanExporter as _,
    SpanProcessor,
};
use serde_json::{Map, Value};
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::config::model::TracingConfig;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("trace export must start inside the async runtime")]
    NoRuntime,
}

/// The process's tracing pipeline, before and after its exporter is attached.
pub struct Tracing {
    config: TracingConfig,
    /// Where spans are posted, resolved by the config loader.
    endpoint: url::Url,
    provider: SdkTracerProvider,
    exporter: Arc<OnceLock<BatchSpanProcessor>>,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Creates the process's tracing pipeline for `config` (the first call wins).
pub(crate) fn install(config: &TracingConfig, endpoint: &url::Url) -> &'static Tracing {
    TRACING.get_or_init(|| Tracing::new(config, endpoint.clone()))
}

/// Attaches the OTLP exporter to the pipeline `telemetry::init` installed, with `node_id` as
/// `service.instance.id`. `None` when tracing is not configured. Call inside the runtime (the
/// exporter's requests run on it), once.
pub fn start_traces(node_id: &str) -> Result<Option<TracesGuard>, TracingError> {
    match TRACING.get() {
        None => Ok(None),
        Some(t) => t.start(node_id).map(Some),
    }
}

/// Flushes and stops trace export. Keep it for the process's life and call
/// [`TracesGuard::shutdown`] at exit.
pub struct TracesGuard {
    provider: SdkTracerProvider,
}

impl TracesGuard {
    /// Exports what is queued and stops. The export runs on the runtime while this waits on a
    /// blocking thread, so it may be awaited from any task.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let res = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }

    /// Exports what is queued now.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }
}

impl Tracing {
    pub(crate) fn new(config: &TracingConfig, endpoint: url::Url) -> Self {
        let exporter = Arc::new(OnceLock::new());
        let provider = SdkTracerProvider::builder()
            // A sampled (or unsampled) caller decides for us; a new trace is kept at the ratio.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_span_processor(LateExporter(exporter.clone()))
            .build();
        Self {
            config: config.clone(),
            endpoint,
            provider,
            exporter,
        }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub(crate) fn layer<S>(&self) -> OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("mcpg"))
            // Source locations and thread ids say nothing to someone reading an MCP trace.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    }

    pub(crate) fn start(&self, node_id: &str) -> Result<TracesGuard, TracingError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TracingError::NoRuntime)?;
        let endpoint = self.endpoint.to_string();
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TracingError::Exporter(e.to_string()))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(OnRuntime { client, runtime })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TracingError::Exporter(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder()
                .with_service_name(self.config.service_name.clone())
                .with_attributes([
                    KeyValue::new("service.instance.id", node_id.to_owned()),
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                ])
                .build(),
        );
        let processor = BatchSpanProcessor::builder(exporter).build();
        if let Err(p) = self.exporter.set(processor) {
            let _ = p.shutdown();
            return Err(TracingError::Exporter(
                "trace export already started".into(),
            ));
        }
        Ok(TracesGuard {
            provider: self.provider.clone(),
        })
    }
}

/// Which spans and events become trace data: mcpg's own at `info` and above, whatever the log
/// level. Events inside a span become span events (an `error` event also marks it failed).
pub(crate) fn span_filter() -> Targets {
    Targets::new().with_target("mcpg", tracing::Level::INFO)
}

/// The span processor the provider is built with: forwards to the batch exporter once
/// [`start_traces`] has attached it, drops spans until then. The provider's own resource is
/// ignored: the exporter gets its resource (with the node id) when it is attached.
#[derive(Debug)]
struct LateExporter(Arc<OnceLock<BatchSpanProcessor>>);

impl SpanProcessor for LateExporter {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(p) = self.0.get() {
            p.on_start(span, cx)
        }
    }

    fn on_end(&self, span: SpanData) {
        if let Some(p) = self.0.get() {
            p.on_end(span)
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.get().map_or(Ok(()), |p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0
            .get()
            .map_or(Ok(()), |p| p.shutdown_with_timeout(timeout))
    }
}

/// The exporter's HTTP client. The batch processor exports from its own thread with a
/// futures executor, where reqwest's async client (no reactor there) cannot run; each request
/// is handed to the host's runtime instead and awaited from that thread.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let client = self.client.clone();
        self.runtime
            .spawn(
                async move { opentelemetry_http::HttpClient::send_bytes(&client, request).await },
            )
            .await?
    }
}

/// Sets the MCP semantic-convention attributes known when the request span opens.
pub(crate) fn annotate_request(
    span: &tracing::Span,
    method: &str,
    request_id: Option<&Value>,
    session: Option<&str>,
) {
    span.set_attribute("mcp.method.name", method.to_owned());
    match request_id {
        Some(Value::String(s)) => span.set_attribute("jsonrpc.request.id", s.clone()),
        Some(other) => span.set_attribute("jsonrpc.request.id", other.to_string()),
        None => {}
    }
    if let Some(s) = session {
        span.set_attribute("mcp.session.id", s.to_owned());
    }
    // Clients reach mcpg over Streamable HTTP only.
    span.set_attribute("network.transport", "tcp");
    span.set_attribute("network.protocol.name", "http");
}

/// Sets the target's attribute (`key` is `gen_ai.tool.name` or `gen_ai.prompt.name`); tool
/// calls also get `gen_ai.operation.name = execute_tool`. The span's name, `{mcp.method.name}
/// {target}`, is its `otel.name` field (`telemetry::request_span_for`).
pub(crate) fn annotate_target(span: &tracing::Span, key: &'static str, name: &str) {
    span.set_attribute(key, name.to_owned());
    if key == "gen_ai.tool.name" {
        span.set_attribute("gen_ai.operation.name", "execute_tool");
    }
}

pub(crate) fn set_attribute(span: &tracing::Span, key: &'static str, value: String) {
    span.set_attribute(key, value);
}

/// Marks the span failed: `error.type` and an error status with `message`.
pub(crate) fn mark_error(span: &tracing::Span, error_type: &str, message: &str) {
    span.set_attribute("error.type", error_type.to_owned());
    span.set_status(Status::error(message.to_owned()));
}

/// The caller's trace context, to be the request span's parent ([`set_parent`]). An HTTP
/// `traceparent` header is taken first: when a client sets both, its HTTP span is nested in
/// its MCP span, so the header is the nearer ancestor; and a request forwarded by another
/// replica carries that replica's span in the header while `_meta` still holds the client's.
/// Otherwise `params._meta.traceparent` / `tracestate`, which the MCP specification (revision
/// 2026-07-28, `_meta` reserved keys) reserves for W3C Trace Context. An empty context when
/// neither is present or valid.
pub fn extract_parent(headers: &HeaderMap, meta: Option<&Value>) -> Context {
    let propagator = TraceContextPropagator::new();
    let cx = propagator.extract(&HeaderCarrier(headers));
    if cx.span().span_context().is_valid() {
        return cx;
    }
    if let Some(Value::Object(meta)) = meta {
        let cx = propagator.extract(&MetaCarrier(meta));
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    Context::new()
}

/// Makes `cx` the span's parent. Call before the span is first entered.
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of the span, when traces are exported (for the audit record).
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Writes the span's context as `traceparent` (and `tracestate` when not empty) into the
/// headers of a request mcpg sends: to an HTTP upstream, or to the replica a request is
/// forwarded to. Replaces any the client sent; leaves the headers alone when tracing is off.
pub fn inject_headers(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderCarrierMut(headers));
}

/// Writes the span's context into a request's `params._meta` as `traceparent` (and
/// `tracestate` when not empty), the keys the MCP specification reserves for it. Replaces the
/// client's; leaves `_meta` alone when tracing is off, so the client's context passes through.
pub fn inject_meta(span: &tracing::Span, meta: &mut Map<String, Value>) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    meta.remove("traceparent");
    meta.remove("tracestate");
    TraceContextPropagator::new().inject_context(&cx, &mut MetaCarrierMut(meta));
}

struct HeaderCarrier<'a>(&'a HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderCarrierMut<'a>(&'a mut HeaderMap);

impl Injector for HeaderCarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetaCarrier<'a>(&'a Map<String, Value>);

impl Extractor for MetaCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MetaCarrierMut<'a>(&'a mut Map<String, Value>);

impl Injector for MetaCarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), Value::String(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use prost::Message as _;
    use serde_json::json;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const PARENT_SPAN: &str = "b7ad6b7169203331";

    fn config(endpoint: String, ratio: f64) -> TracingConfig {
        TracingConfig {
            otlp_endpoint: endpoint,
            service_name: "mcpg-test".into(),
            sample_ratio: ratio,
        }
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).expect("a URL")
    }

    /// An OTLP/HTTP collector on a loopback port that keeps every export request.
    async fn collector() -> (String, Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    sink.lock().unwrap().push((uri.path().to_owned(), req));
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), got)
    }

    fn attr(
        attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
        key: &str,
    ) -> Option<String> {
        attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                AnyValue::IntValue(i) => Some(i.to_string()),
                other => Some(format!("{other:?}")),
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_span_is_exported_with_mcp_attributes_and_the_callers_parent() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (endpoint, got) = collector().await;
        // Ratio 0: only the caller's sampled flag can make this span recorded, which proves
        // the parent-based sampler.
        let tracing = Tracing::new(
            &config(endpoint.clone(), 0.0),
            url(&format!("{endpoint}/v1/traces")),
        );
        let guard = tracing.start("node-7").expect("exporter starts");
        let subscriber =
            tracing_subscriber::registry().with(tracing.layer().with_filter(span_filter()));

        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01")
                .parse()
                .unwrap(),
        );
        let mut upstream_headers = HeaderMap::new();
        let mut upstream_meta = Map::new();
        upstream_meta.insert(
            "traceparent".into(),
            json!("00-11111111111111111111111111111111-2222222222222222-01"),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = crate::telemetry::request_span(
                "main",
                "tools/call",
                Some(&json!(5)),
                Some("sess-1"),
                "legacy",
            );
            set_parent(&span, extract_parent(&headers, None));
            crate::telemetry::record_target(
                &span,
                "tools/call",
                Some(&json!({"name": "get_weather"})),
            );
            crate::telemetry::record_protocol_version(&span, "2025-06-18");
            crate::telemetry::record_outcome(&span, "error", Some(("-32602", "bad arguments")));
            inject_headers(&span, &mut upstream_headers);
            inject_meta(&span, &mut upstream_meta);
        });
        guard.flush().await;

        let got = got.lock().unwrap().clone();
        let (path, req) = got.first().expect("one export");
        assert_eq!(path, "/v1/traces");
        let rs = &req.resource_spans[0];
        let resource = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attr(resource, "service.name").as_deref(), Some("mcpg-test"));
        assert_eq!(
            attr(resource, "service.instance.id").as_deref(),
            Some("node-7")
        );
        let spans: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
        assert_eq!(spans.len(), 1, "{spans:?}");
        let s = spans[0];
        assert_eq!(s.name, "tools/call get_weather");
        assert_eq!(s.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(hex(&s.trace_id), PARENT_TRACE);
        assert_eq!(hex(&s.parent_span_id), PARENT_SPAN);
        for (k, v) in [
            ("mcp.method.name", "tools/call"),
            ("jsonrpc.request.id", "5"),
            ("mcp.session.id", "sess-1"),
            ("mcp.protocol.version", "2025-06-18"),
            ("gen_ai.tool.name", "get_weather"),
            ("gen_ai.operation.name", "execute_tool"),
            ("error.type", "-32602"),
            ("network.transport", "tcp"),
        ] {
            assert_eq!(
                attr(&s.attributes, k).as_deref(),
                Some(v),
                "{k} in {:?}",
                s.attributes
            );
        }
        let status = s.status.as_ref().expect("status");
        assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
        assert_eq!(status.message, "bad arguments");

        // What goes upstream names this span as the parent, in the same trace.
        let want = format!("00-{PARENT_TRACE}-{}-01", hex(&s.span_id));
        assert_eq!(upstream_headers["traceparent"], want.as_str());
        assert_eq!(upstream_meta["traceparent"], want.as_str());
        guard.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unsampled_and_before_start_spans_are_not_exported() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (endpoint, got) = collector().await;
        let tracing = Tracing::new(
            &config(endpoint.clone(), 1.0),
            url(&format!("{endpoint}/custom/path")),
        );
        let subscriber =
            tracing_subscriber::registry().with(tracing.layer().with_filter(span_filter()));
        let dispatch = tracing::Dispatch::new(subscriber);
        // Before the exporter is attached: dropped.
        tracing::dispatcher::with_default(&dispatch, || {
            let _ = crate::telemetry::request_span("main", "ping", None, None, "legacy");
        });
        let guard = tracing.start("n").expect("exporter starts");
        tracing::dispatcher::with_default(&dispatch, || {
            // The caller did not sample: neither do we, whatever the ratio.
            let mut headers = HeaderMap::new();
            headers.insert(
                "traceparent",
                format!("00-{PARENT_TRACE}-{PARENT_SPAN}-00")
                    .parse()
                    .unwrap(),
            );
            let span = crate::telemetry::request_span("main", "tools/list", None, None, "legacy");
            set_parent(&span, extract_parent(&headers, None));
            drop(span);
            // A root span at ratio 1: exported.
            let _ = crate::telemetry::request_span("main", "ping", None, None, "legacy");
        });
        guard.flush().await;
        let got = got.lock().unwrap().clone();
        let names: Vec<_> = got
            .iter()
            .flat_map(|(_, r)| &r.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(names, ["ping"]);
        assert_eq!(
            got[0].0, "/custom/path",
            "an endpoint with a path is used as is"
        );
    }

    #[test]
    fn parent_from_meta_when_no_header() {
        let meta = json!({"traceparent": format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"), "progressToken": 1});
        let cx = extract_parent(&HeaderMap::new(), Some(&meta));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), PARENT_TRACE);
        assert_eq!(sc.span_id().to_string(), PARENT_SPAN);
        // A header wins over `_meta`.
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01"
                .parse()
                .unwrap(),
        );
        let cx = extract_parent(&headers, Some(&meta));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "11111111111111111111111111111111"
        );
        // Garbage is no parent.
        let cx = extract_parent(&HeaderMap::new(), Some(&json!({"traceparent": "nope"})));
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn without_tracing_nothing_is_injected() {
        // No OpenTelemetry layer: the client's own `_meta` context passes through untouched.
        let span = crate::telemetry::request_span("main", "ping", None, None, "legacy");
        let mut meta = Map::new();
        meta.insert("traceparent".into(), json!("client's"));
        inject_meta(&span, &mut meta);
        assert_eq!(meta["traceparent"], "client's");
        let mut headers = HeaderMap::new();
        inject_headers(&span, &mut headers);
        assert!(headers.is_empty());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
