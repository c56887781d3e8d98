//! Prometheus metrics of the servers (prometheus-client): every gRPC call counted by
//! method and status with its latency, calls in flight, and the text a `/metrics` scrape
//! gets. Each server registers its own metrics beside these.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What a scrape answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String does not fail");
    out
}

/// Latency buckets from 100 µs to about 3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    /// `Ok`, or the gRPC code's name (`Unavailable`, `InvalidArgument`, …).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// Every gRPC call of a server.
#[derive(Clone)]
pub struct GrpcMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabel, Histogram>,
    in_flight: Gauge,
    /// Methods the service answered (see [`GrpcMetrics::method_label`]).
    methods: Arc<parking_lot::RwLock<std::collections::HashSet<String>>>,
}

impl GrpcMetrics {
    /// Registers `<prefix>_grpc_calls_total`, `<prefix>_grpc_call_duration_seconds` and
    /// `<prefix>_grpc_calls_in_flight`.
    pub fn register(registry: &mut Registry, prefix: &str) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
            methods: Arc::default(),
        };
        registry.register(
            format!("{prefix}_grpc_calls"),
            "gRPC calls answered, by method and status",
            metrics.calls.clone(),
        );
        registry.register(
            format!("{prefix}_grpc_call_duration_seconds"),
            "Time from a call's arrival to its answer, by method (streams: to their start)",
            metrics.latency.clone(),
        );
        registry.register(
            format!("{prefix}_grpc_calls_in_flight"),
            "gRPC calls being answered now",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// `router` with every gRPC call through it counted.
    pub fn instrument(self, router: axum::Router) -> axum::Router {
        let metrics = Arc::new(self);
        router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move { metrics.observe(request, next).await }
            },
        ))
    }

    async fn observe(
        &self,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        // `/tessera.tablet.Tablet/Put` → `Put`; plain HTTP paths are not counted.
        let path = request.uri().path();
        let grpc = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
        if !grpc {
            return next.run(request).await;
        }
        let mut call = Call {
            metrics: self,
            method: path.rsplit('/').next().unwrap_or(path).to_string(),
            started: Instant::now(),
            status: None,
        };
        self.in_flight.inc();
        let response = next.run(request).await;
        // An error answered at once carries its status in the headers; an answer with a
        // body carries it in the trailers, which this does not wait for: counted as Ok.
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|s| s.to_str().ok())
            .and_then(|s| s.parse::<i32>().ok())
            .map_or(tonic::Code::Ok, tonic::Code::from);
        call.status = Some(code);
        response
    }

    /// The label of a call to `method`: its name once a call of it was answered by the
    /// service (not `Unimplemented`), else `unknown`, so that requests to made-up paths
    /// cannot create series without end.
    fn method_label(&self, method: &str, code: Option<tonic::Code>) -> String {
        if self.methods.read().contains(method) {
            return method.to_string();
        }
        match code {
            Some(code) if code != tonic::Code::Unimplemented && method.len() <= 64 => {
                self.methods.write().insert(method.to_string());
                method.to_string()
            }
            _ => "unknown".to_string(),
        }
    }
}

/// A call being answered: counted when it ends, also when it is dropped unanswered (the
/// client went away or its deadline passed), as `Cancelled`.
struct Call<'a> {
    metrics: &'a GrpcMetrics,
    method: String,
    started: Instant,
    status: Option<tonic::Code>,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        let metrics = self.metrics;
        metrics.in_flight.dec();
        let method = metrics.method_label(&self.method, self.status);
        let status = format!("{:?}", self.status.unwrap_or(tonic::Code::Cancelled));
        metrics
            .latency
            .get_or_create(&MethodLabel {
                method: method.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
        metrics
            .calls
            .get_or_create(&CallLabels { method, status })
            .inc();
    }
}
