//! Logging and tracing.
//!
//! Logs are structured lines on stderr, filtered by `RUST_LOG`, as text (coloured only on a
//! terminal) or JSON (`--log-format json`). Traces are OpenTelemetry spans exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set; `OTEL_SERVICE_NAME` names the process and `OTEL_TRACES_SAMPLER` /
//! `OTEL_TRACES_SAMPLER_ARG` choose the sampling; every span carries the `service.version`
//! resource attribute. Spans go out in batches from a background task with a bounded
//! queue: a slow or absent collector drops spans, it never holds up a segment. Without an
//! endpoint nothing is exported, but spans are still made (ids only, a few microseconds a
//! segment), so log lines of one segment share its `trace_id` across processes.
//!
//! A segment is one trace across processes: the W3C `traceparent` of the span that
//! publishes a message travels in the message's AMQP headers, and the consumer's span
//! continues that trace (see [`Span`]). [`Span::in_logs`] is the `tracing` span that puts
//! the trace id on the log lines written inside it.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;

use crate::config::{LinkArgs, LogFormat};

/// This build's version: the workspace's, the same for every binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The tracing environment, for every binary's `--help`.
pub const ENV_HELP: &str = "Tracing (OpenTelemetry, exported only when an endpoint is set):
  OTEL_EXPORTER_OTLP_ENDPOINT  OTLP/gRPC collector, e.g. http://jaeger:4317 (or
                               OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
  OTEL_SERVICE_NAME            service name on the spans (castwork-<role> by default)
  OTEL_TRACES_SAMPLER          always_on, traceidratio, parentbased_traceidratio, ...
                               (parentbased_always_on by default), with
                               OTEL_TRACES_SAMPLER_ARG for the ratios";

/// Whether spans are made (telemetry was initialised; they are exported only when an OTLP
/// endpoint is configured).
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer> =
    std::sync::OnceLock::new();

/// Flushes and stops the span exporter when dropped (at the end of `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            TRACING.store(false, Ordering::Relaxed);
            let _ = p.shutdown_with_timeout(Duration::from_secs(3));
        }
    }
}

/// Installs the log subscriber; an invalid filter falls back to `info` with a warning.
fn init_logging(filter: &str, format: LogFormat) {
    let (env, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colours()).try_init(),
        // The innermost span's fields (a segment's `trace_id`) under "span".
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "invalid log filter, using info");
    }
}

/// ANSI colours only for a person at a terminal: never into a file or a pipe, nor with
/// `NO_COLOR` set.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `castwork_build_info{service, version} 1`, as Prometheus' own `*_build_info` gauges.
fn register_build_info(service: &str) {
    static BUILD_INFO: std::sync::OnceLock<Option<prometheus::IntGaugeVec>> =
        std::sync::OnceLock::new();
    let gauge = BUILD_INFO.get_or_init(|| {
        prometheus::register_int_gauge_vec!(
            "castwork_build_info",
            "Always 1: the version of this process (labels)",
            &["service", "version"]
        )
        .ok()
    });
    if let Some(g) = gauge {
        g.with_label_values(&[service, VERSION]).set(1);
    }
}

fn configured(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
}

/// Installs logging (`--log`, `--log-format`), the `castwork_build_info` metric, and spans,
/// exported when an OTLP endpoint is configured. `service` names the process unless
/// `OTEL_SERVICE_NAME` does. Call it inside the tokio runtime.
pub fn init(args: &LinkArgs, service: &str) -> Telemetry {
    init_logging(&args.log, args.log_format);
    register_build_info(service);
    let mut resource = opentelemetry_sdk::Resource::builder()
        .with_attribute(KeyValue::new("service.version", VERSION));
    if !configured("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.to_string());
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = configured("OTEL_EXPORTER_OTLP_ENDPOINT")
        || configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if exporting {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(e) => builder = builder.with_batch_exporter(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot export traces: OTLP exporter not built");
            }
        }
    }
    // Without an exporter the spans only give ids to the logs and the messages.
    let provider = builder.build();
    let _ = TRACER.set(provider.tracer("castwork"));
    TRACING.store(true, Ordering::Relaxed);
    if exporting {
        tracing::info!(service, version = VERSION, "exporting traces over OTLP");
    }
    Telemetry {
        provider: Some(provider),
    }
}

/// One span of a segment's trace; it ends when dropped. Before [`init`] (in tests) it is
/// inert and costs nothing.
pub struct Span(Option<Context>);

fn attributes(attrs: &[(&'static str, String)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

fn start(
    name: &'static str,
    parent: &Context,
    at: Option<SystemTime>,
    attrs: &[(&'static str, String)],
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let mut builder = tracer.span_builder(name).with_attributes(attributes(attrs));
    if let Some(at) = at {
        builder = builder.with_start_time(at);
    }
    let span = builder.start_with_context(tracer, parent);
    Some(parent.with_span(span))
}

impl Span {
    /// A span that does nothing.
    pub fn none() -> Span {
        Span(None)
    }

    /// The first span of a new trace, started at `at` (now if `None`).
    pub fn root(
        name: &'static str,
        at: Option<SystemTime>,
        attrs: &[(&'static str, String)],
    ) -> Span {
        if !TRACING.load(Ordering::Relaxed) {
            return Span(None);
        }
        Span(start(name, &Context::new(), at, attrs))
    }

    /// A span continuing the trace whose context came in a message's headers; a message
    /// without one starts a new trace.
    pub fn continued(
        name: &'static str,
        headers: Option<&FieldTable>,
        attrs: &[(&'static str, String)],
    ) -> Span {
        if !TRACING.load(Ordering::Relaxed) {
            return Span(None);
        }
        let mut carrier = HashMap::new();
        for (k, v) in headers.map(|h| h.inner().iter()).into_iter().flatten() {
            if let AMQPValue::LongString(s) = v {
                carrier.insert(k.to_string(), s.to_string());
            }
        }
        let parent = TraceContextPropagator::new().extract(&carrier);
        Span(start(name, &parent, None, attrs))
    }

    /// A child span, started now.
    pub fn child(&self, name: &'static str, attrs: &[(&'static str, String)]) -> Span {
        match &self.0 {
            Some(cx) => Span(start(name, cx, None, attrs)),
            None => Span(None),
        }
    }

    /// A child span that started at `at` (work timed elsewhere); end it with
    /// [`Span::end_at`] or by dropping it.
    pub fn child_at(
        &self,
        name: &'static str,
        at: SystemTime,
        attrs: &[(&'static str, String)],
    ) -> Span {
        match &self.0 {
            Some(cx) => Span(start(name, cx, Some(at), attrs)),
            None => Span(None),
        }
    }

    /// Ends the span at `at` instead of now.
    pub fn end_at(mut self, at: SystemTime) {
        if let Some(cx) = self.0.take() {
            cx.span().end_with_timestamp(at);
        }
    }

    /// A finished child span covering `from..to` (work timed elsewhere, such as inside a
    /// blocking transcode).
    pub fn record(
        &self,
        name: &'static str,
        from: SystemTime,
        to: SystemTime,
        attrs: &[(&'static str, String)],
    ) {
        self.child_at(name, from, attrs).end_at(to);
    }

    /// Adds an attribute.
    pub fn set(&self, key: &'static str, value: String) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// The trace's id (32 hex digits), when the span is real.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// A `tracing` span named `segment` with this trace's `trace_id`, to run the segment's
    /// work in (`.instrument(span.in_logs())`): every log line written inside carries the
    /// id. Disabled when the span is inert.
    pub fn in_logs(&self) -> tracing::Span {
        match self.trace_id() {
            Some(trace_id) => tracing::info_span!("segment", trace_id),
            None => tracing::Span::none(),
        }
    }

    /// Marks the span failed with a message.
    pub fn fail(&self, message: impl Into<String>) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message.into()));
        }
    }

    /// AMQP headers carrying this span's W3C trace context, for a message published in it.
    pub fn headers(&self) -> Option<FieldTable> {
        let cx = self.0.as_ref()?;
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        let mut table = FieldTable::default();
        for (k, v) in carrier {
            table.insert(
                ShortString::from(k),
                AMQPValue::LongString(LongString::from(v)),
            );
        }
        Some(table)
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}
