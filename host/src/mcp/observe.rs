//! What each MCP request leaves behind: its span (log fields, trace), and once it is answered
//! its audit record and metrics, taken from the request and the response that ended it (for a
//! streamed reply, when the stream ends: without a response, the request was cancelled).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tracing::Instrument;

use crate::audit::{Auditor, Outcome, Record};
use crate::mcp::access::{Caller, target};
use crate::mcp::binding::Binding;
use crate::mcp::relay::Reply;
use crate::mcp::wire::jsonrpc::{self, Message, code};
use crate::mcp::wire::version::Era;
use crate::telemetry::metrics::{RequestRecorder, metrics};
use crate::telemetry::{self};

/// A request being served, until its outcome is known.
pub struct Observed {
    started: Instant,
    /// Until it is answered (or found not to be served here, [`Observed::not_here`]): a
    /// request dropped before that (its client went away) is recorded as cancelled.
    armed: bool,
    record: Record,
    auditor: Auditor,
    span: tracing::Span,
    /// The request metrics of its binding and upstream.
    recorder: Arc<RequestRecorder>,
}

impl Observed {
    /// Notes a request as it arrives. `session`: the legacy session it belongs to.
    pub fn begin(
        auditor: &Auditor,
        b: &Binding,
        parent: opentelemetry::Context,
        msg: &Message,
        era: Era,
        session: Option<&str>,
        who: &Caller,
    ) -> Self {
        let method = jsonrpc::method(msg).unwrap_or_default();
        let named = target(msg).map(|(_, n)| n);
        let up = upstream_of(b, named.as_deref());
        let identity = who.as_deref().map(|i| i.key.as_str());
        let upstream = up.map(|i| b.upstreams[i].name.as_str());
        // Everything but the outcome is known now, so the span is made with it.
        let span = telemetry::request_span_for(&telemetry::RequestInfo {
            binding: &b.name,
            method,
            request_id: jsonrpc::member(msg, "id"),
            session,
            era: era.as_str(),
            identity,
            upstream,
            params: jsonrpc::member(msg, "params"),
        });
        // The caller's trace (W3C `traceparent` header, or in `_meta`) is the parent; a request
        // forwarded by another replica carries that replica's span.
        telemetry::set_parent(&span, parent);
        let mut record = Record::new(era.as_str(), &b.name, method);
        record.identity = identity.map(str::to_owned);
        record.session = session.map(str::to_owned);
        record.request_id = jsonrpc::member(msg, "id").cloned();
        record.upstream = upstream.map(str::to_owned);
        let recorder = b.recorders[up.unwrap_or(b.upstreams.len())].clone();
        record.name = named;
        if auditor.wants_arguments() {
            record.arguments = jsonrpc::params(msg).map(|p| match p.get("arguments") {
                Some(a) => a.clone(),
                None => {
                    let mut p = p.clone();
                    // `_meta` is protocol plumbing (progress tokens, client capabilities).
                    p.remove("_meta");
                    Value::Object(p)
                }
            });
        }
        Self {
            started: Instant::now(),
            armed: true,
            record,
            auditor: auditor.clone(),
            span,
            recorder,
        }
    }

    /// The request's span: the work serving it runs inside it.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// `fut` run inside the request's span.
    pub fn within<F: std::future::Future>(&self, fut: F) -> tracing::instrument::Instrumented<F> {
        fut.instrument(self.span.clone())
    }

    /// The legacy session the request started (an `initialize`).
    pub fn set_session(&mut self, id: &str) {
        self.record.session = Some(id.to_owned());
        self.span.record("session", id);
    }

    /// The endpoint of the upstream's pool the request went to.
    pub fn set_endpoint(&mut self, endpoint: Option<String>) {
        self.record.endpoint = endpoint;
    }

    /// The request was refused by the access rules.
    pub fn denied(mut self, kind: crate::auth::Kind) {
        metrics().access_denied(&self.record.binding, kind.as_str());
        self.record.outcome = Outcome::Denied;
        self.done();
    }

    /// The request was refused by rate limit `limit` with `response` (the error the client
    /// gets); the limit's name becomes the span's `mcpg.rate_limit` attribute.
    pub fn rate_limited(mut self, limit: &str, response: &Message) {
        telemetry::traces::set_attribute(&self.span, "mcpg.rate_limit", limit.to_owned());
        let finished = self.finish_outcome(Some(response));
        self.record.outcome = match finished {
            Outcome::Error { .. } => Outcome::RateLimited {
                limit: limit.to_owned(),
            },
            other => other,
        };
        self.done();
    }

    /// The request ended with `response` (or, `None`, without one: cancelled).
    pub fn finish(mut self, response: Option<&Message>) {
        self.record.outcome = self.finish_outcome(response);
        self.done();
    }

    fn finish_outcome(&mut self, response: Option<&Message>) -> Outcome {
        match response {
            None => Outcome::Cancelled,
            Some(m) => match jsonrpc::member(m, "error") {
                Some(e) => {
                    let code = jsonrpc::field(e, "code")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    if code == code::REQUEST_TIMEOUT {
                        Outcome::TimedOut
                    } else {
                        Outcome::Error {
                            code,
                            message: jsonrpc::field(e, "message")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        }
                    }
                }
                None => {
                    if self.auditor.wants_results() {
                        self.record.result = jsonrpc::member(m, "result").cloned();
                    }
                    let failed_tool = jsonrpc::member(m, "result")
                        .and_then(|r| jsonrpc::field(r, "isError"))
                        .and_then(Value::as_bool)
                        == Some(true);
                    if failed_tool {
                        Outcome::ToolError
                    } else {
                        Outcome::Ok
                    }
                }
            },
        }
    }

    /// The request is not served on this replica (forwarded to its session's owner, which
    /// records it; or refused before reaching its session): nothing is recorded here.
    pub fn not_here(mut self) {
        self.armed = false;
    }

    fn done(mut self) {
        self.armed = false;
        let elapsed = self.started.elapsed();
        self.record.latency_ms = elapsed.as_secs_f64() * 1000.0;
        let label = match &self.record.outcome {
            Outcome::Ok => "ok",
            Outcome::Error { .. } => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::Denied => "denied",
            Outcome::ToolError => "tool_error",
            Outcome::RateLimited { .. } => "rate_limited",
        };
        let code = match &self.record.outcome {
            Outcome::Error { code, message } => Some((code.to_string(), message.clone())),
            Outcome::TimedOut => Some((code::REQUEST_TIMEOUT.to_string(), "timed out".into())),
            Outcome::ToolError => Some(("tool_error".into(), "the tool reported an error".into())),
            Outcome::RateLimited { limit } => {
                Some(("rate_limited".into(), format!("rate limit `{limit}`")))
            }
            _ => None,
        };
        telemetry::record_outcome(
            &self.span,
            label,
            code.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
        );
        self.recorder
            .done(&self.record.method, label, elapsed.as_secs_f64());
        self.record.trace_id = telemetry::traces::trace_id(&self.span);
        if self.auditor.enabled() {
            let record = std::mem::replace(&mut self.record, Record::new("", "", ""));
            self.auditor.record(record);
        }
    }

    /// `reply`, observed: at once for a JSON answer; for a stream, the observer comes back to
    /// go along with it (see [`saw`]) rather than a task of its own relaying it, which would
    /// cost every streamed reply another hop between tasks.
    pub fn reply(self, reply: Reply) -> (Reply, Option<Observed>) {
        match reply {
            Reply::Json(m) => {
                self.finish(Some(&m));
                (Reply::Json(m), None)
            }
            Reply::Stream(rx) => (Reply::Stream(rx), Some(self)),
            Reply::Accepted => {
                self.finish(None);
                (Reply::Accepted, None)
            }
        }
    }
}

/// One message of a streamed reply went to the client: the response ends the request. An
/// observer still held when the stream is dropped records the request as cancelled.
pub fn saw(slot: &mut Option<Observed>, m: &Message) {
    if slot
        .as_ref()
        .is_some_and(|o| is_response_to(m, o.record.request_id.as_ref()))
        && let Some(o) = slot.take()
    {
        o.finish(Some(m));
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if self.armed {
            // The request's future was dropped unanswered: its client disconnected.
            let me = Observed {
                started: self.started,
                armed: false,
                record: std::mem::replace(&mut self.record, Record::new("", "", "")),
                auditor: self.auditor.clone(),
                span: self.span.clone(),
                recorder: self.recorder.clone(),
            };
            me.finish(None);
        }
    }
}

fn is_response_to(m: &Message, id: Option<&Value>) -> bool {
    id.is_some()
        && jsonrpc::member(m, "id") == id
        && (jsonrpc::member(m, "result").is_some() || jsonrpc::member(m, "error").is_some())
        && jsonrpc::member(m, "method").is_none()
}

/// The index of the upstream a name belongs to: the only one, or the one its prefix names.
pub(crate) fn upstream_of(b: &Binding, name: Option<&str>) -> Option<usize> {
    if b.upstreams.len() == 1 {
        return Some(0);
    }
    let name = name?;
    b.naming
        .name_in(name)
        .or_else(|| b.naming.uri_in(name))
        .map(|(i, _)| i.0)
}
