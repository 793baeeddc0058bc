//! OpenTelemetry tracing (SPEC §8.2 "Tracing (optional)", `[tracing]`; cargo
//! feature `otel`). Observes, never decides: the connection loop
//! (`http::app`) asks for a [`RequestTrace`] when a head has been read, marks
//! the decision around `Pinned::decide`/`decide_body`, forwards the W3C
//! `traceparent` with keyward's span as parent, and ends the request span
//! with the access line.
//!
//! - Context: a client's `traceparent` (and `tracestate`) is accepted as the
//!   parent; without a valid one a trace is started. Sampling is parent-based
//!   — a sampled client trace is always followed — with `sample_ratio` of
//!   the new traces (`TraceIdRatioBased`).
//! - Upstream: when keyward's request span is sampled, the upstream's
//!   `traceparent` is replaced by one naming keyward's request span as
//!   parent; the client's `tracestate` is kept (dropped with a trace keyward
//!   started, which it does not belong to). When the span is not sampled,
//!   keyward is transparent: the client's headers pass unchanged and none is
//!   added.
//! - Spans: `{method} {route}` (server kind) from the head to the access line,
//!   and `keyward.decide` (internal) around the decision — with the body
//!   read when the route inspects one, as the access line's `auth_us` counts
//!   it — attributes in [`names`].
//!   The organization id only with `tracing.include_org = true`.
//! - Export: OTLP/HTTP protobuf over hyper to `tracing.endpoint`. The SDK's
//!   batch span processor queues ended spans for its own thread (a bounded
//!   queue: no wake-up per span; full, spans are dropped, never waited for)
//!   and each export's HTTP exchange runs on the admin runtime — never on a
//!   pingora worker. (The SDK's tokio-task processor was measured first: it
//!   woke the admin runtime once per span.) The standard `OTEL_BSP_*`
//!   variables tune the batching (`OTEL_BSP_SCHEDULE_DELAY`, default
//!   5000 ms; `OTEL_BSP_MAX_QUEUE_SIZE`, 2048). [`Tracing::shutdown`]
//!   flushes with a bounded wait when keyward stops.
//!
//! Cost when `[tracing]` is absent: the app holds `None` and checks it once
//! per request. A request the sampler drops costs the `traceparent` parse and
//! the sampling decision, nothing after.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use opentelemetry_sdk::Resource;

use crate::auth::decide::{AuthMethod, Decision};
use crate::config::Config;
use crate::config::TracingConfig;
use crate::metrics::Outcome;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest one export (one HTTP request to the receiver) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Span names and attribute keys (what a trace backend shows).
pub mod names {
    pub const DECISION_SPAN: &str = "keyward.decide";
    /// index of the matched `[[route]]` (absent: no route matched)
    pub const ROUTE: &str = "keyward.route";
    /// the matched route's `path` pattern (OpenTelemetry HTTP convention)
    pub const HTTP_ROUTE: &str = "http.route";
    /// `api_key`, `session`, `service_key`, `mcp_bearer`, `mcp_oauth`, `none`
    pub const AUTH_METHOD: &str = "keyward.auth_method";
    /// the metrics' outcome label: `forwarded`, `unauthenticated`, …
    pub const OUTCOME: &str = "keyward.outcome";
    /// `details.reason` of a refusal
    pub const REASON: &str = "keyward.reason";
    /// the snapshot generation serving the request
    pub const GENERATION: &str = "keyward.snapshot.generation";
    /// the route read the request body before deciding
    pub const BODY_INSPECTED: &str = "keyward.body_inspected";
    /// only with `tracing.include_org = true`
    pub const ORG_ID: &str = "keyward.org_id";
    pub const REQUEST_ID: &str = "keyward.request_id";
    pub const METHOD: &str = "http.request.method";
    pub const PATH: &str = "url.path";
    pub const STATUS: &str = "http.response.status_code";
}

/// The tracer and its exporter, started once with the process.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Build the exporter and the batch processor. The SDK's batching thread
    /// collects ended spans without waking anything per span; each export
    /// runs its HTTP exchange on `rt` (the admin runtime).
    pub fn start(cfg: &TracingConfig, rt: &tokio::runtime::Handle) -> anyhow::Result<Arc<Tracing>> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("tracing.endpoint: {e}"))?;
        let exporter = OnRuntime {
            inner: exporter,
            rt: rt.clone(),
        };
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("keyward");
        tracing::info!(endpoint = %cfg.endpoint, sample_ratio = cfg.sample_ratio, "OpenTelemetry tracing on");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// Start the request span when a head has been read: the client's
    /// `traceparent` is its parent when valid. None when the sampler drops
    /// it: nothing more is done for that request (no decision span, the
    /// client's headers pass unchanged).
    pub fn request(
        self: &Arc<Self>,
        method: &http::Method,
        headers: &HeaderMap,
    ) -> Option<RequestTrace> {
        use opentelemetry::trace::Span as _;
        let parent = self.propagator.extract(&Headers(headers));
        let new_root = !parent.span().span_context().is_valid();
        let span = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        if !span.is_recording() {
            return None;
        }
        Some(RequestTrace {
            tracing: self.clone(),
            cx: parent.with_span(span),
            method: method.clone(),
            new_root,
            decision: None,
        })
    }

    /// Export what is queued and stop, waiting at most `wait` (keyward is
    /// stopping; a receiver that does not answer does not hold it).
    pub fn shutdown(&self, wait: Duration) {
        let provider = self.provider.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let flushing = std::thread::Builder::new()
            .name("keyward-otel-flush".into())
            .spawn(move || {
                let _ = tx.send(provider.shutdown_with_timeout(wait));
            });
        match flushing.ok().map(|_| rx.recv_timeout(wait)) {
            Some(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Some(Ok(Err(e))) => tracing::warn!(error = %e, "tracing: flushing spans failed"),
            _ => tracing::warn!(?wait, "tracing: spans not flushed in time"),
        }
    }
}

/// The OTLP/HTTP exporter, called from the SDK's batching thread, with its
/// HTTP client (hyper, which needs a tokio runtime) driven on keyward's
/// admin runtime.
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    rt: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // the batching thread is no runtime thread: blocking it is its job
        std::future::ready(self.rt.block_on(self.inner.export(batch)))
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `http::HeaderMap` as the propagator reads it.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// What the decision span records, read from the decision.
pub struct Decided<'a> {
    pub route: Option<(usize, &'a str)>,
    pub auth_method: &'static str,
    pub outcome: &'static str,
    pub reason: &'static str,
    pub generation: u64,
    /// set only when `tracing.include_org = true`
    pub org_id: Option<&'a str>,
    pub body_inspected: bool,
}

impl<'a> Decided<'a> {
    pub fn of(
        decision: &'a Decision<'_>,
        config: &'a Config,
        generation: u64,
        body_inspected: bool,
    ) -> Decided<'a> {
        let (route, caller, outcome, reason, org) = match decision {
            Decision::Forward(g) => (
                g.route,
                g.caller.as_ref(),
                Outcome::Forwarded,
                "",
                g.identity.org_id.as_deref(),
            ),
            Decision::Refuse(r) => (
                r.route,
                r.caller.as_ref(),
                Outcome::of(&r.denial),
                r.denial.reason().unwrap_or(""),
                r.caller
                    .as_ref()
                    .and_then(|c| c.org.as_ref())
                    .map(|o| &*o.id),
            ),
            Decision::NeedBody(_) => (None, None, Outcome::Error, "", None),
        };
        let include_org = config.tracing.as_ref().is_some_and(|t| t.include_org);
        Decided {
            route: route.and_then(|i| config.routes.routes().get(i).map(|r| (i, r.path.as_str()))),
            auth_method: caller.map_or("none", |c| AuthMethod::as_str(c.method)),
            outcome: outcome.as_str(),
            reason,
            generation,
            org_id: org.filter(|_| include_org),
            body_inspected,
        }
    }
}

/// One sampled request's spans.
pub struct RequestTrace {
    tracing: Arc<Tracing>,
    /// the client's context with keyward's request span in it
    cx: Context,
    method: http::Method,
    /// no valid client `traceparent`: keyward started the trace
    new_root: bool,
    decision: Option<opentelemetry_sdk::trace::Span>,
}

impl RequestTrace {
    /// Right before the decision starts.
    pub fn decision_started(&mut self) {
        let t = &self.tracing.tracer;
        self.decision = Some(
            t.span_builder(names::DECISION_SPAN)
                .with_kind(SpanKind::Internal)
                .start_with_context(t, &self.cx),
        );
    }

    /// Right after the final decision (after the body, when one was read).
    pub fn decided(&mut self, d: Decided<'_>) {
        use opentelemetry::trace::Span as _;
        let Some(mut span) = self.decision.take() else {
            return;
        };
        if span.is_recording() {
            let mut attrs = Vec::with_capacity(8);
            if let Some((index, path)) = d.route {
                attrs.push(KeyValue::new(names::ROUTE, index as i64));
                attrs.push(KeyValue::new(names::HTTP_ROUTE, path.to_string()));
                let request = self.cx.span();
                request.set_attribute(KeyValue::new(names::HTTP_ROUTE, path.to_string()));
                request.update_name(format!("{} {path}", self.method));
            }
            attrs.push(KeyValue::new(names::AUTH_METHOD, d.auth_method));
            attrs.push(KeyValue::new(names::OUTCOME, d.outcome));
            if !d.reason.is_empty() {
                attrs.push(KeyValue::new(names::REASON, d.reason));
            }
            attrs.push(KeyValue::new(names::GENERATION, d.generation as i64));
            attrs.push(KeyValue::new(names::BODY_INSPECTED, d.body_inspected));
            if let Some(org) = d.org_id {
                attrs.push(KeyValue::new(names::ORG_ID, org.to_string()));
            }
            span.set_attributes(attrs);
        }
        span.end();
    }

    /// What the upstream's head gets, when keyward's span is sampled.
    pub fn propagation(&self) -> Option<Propagation> {
        let span = self.cx.span();
        let sc = span.span_context();
        if !sc.is_sampled() {
            return None;
        }
        let value = format!("00-{}-{}-01", sc.trace_id(), sc.span_id());
        Some(Propagation {
            traceparent: HeaderValue::from_str(&value).ok()?,
            drop_tracestate: self.new_root,
        })
    }

    /// End the request span, with what the access line says.
    pub fn finish(&self, path: &str, status: u16, outcome: Outcome, request_id: &str) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new(names::PATH, path.to_string()),
                KeyValue::new(names::OUTCOME, outcome.as_str()),
                KeyValue::new(names::REQUEST_ID, request_id.to_string()),
                KeyValue::new(names::METHOD, method_name(&self.method)),
            ]);
            if status != 0 {
                span.set_attribute(KeyValue::new(names::STATUS, i64::from(status)));
            }
            if status >= 500 || matches!(outcome, Outcome::Error) {
                span.set_status(Status::error(outcome.as_str()));
            }
        }
        span.end();
    }
}

/// The method as a span name or attribute, without an allocation for the
/// standard ones.
fn method_name(m: &http::Method) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|s| **s == m.as_str()) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.as_str().to_string()),
    }
}

/// keyward's `traceparent` for the upstream.
pub struct Propagation {
    traceparent: HeaderValue,
    drop_tracestate: bool,
}

impl Propagation {
    /// Replace the client's `traceparent` in the upstream's head.
    pub fn apply(&self, up: &mut HeaderMap) {
        up.insert(TRACEPARENT, self.traceparent.clone());
        if self.drop_tracestate {
            up.remove(TRACESTATE);
        }
    }
}
