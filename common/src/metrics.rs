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
}

impl GrpcMetrics {
    /// Registers `<prefix>_grpc_calls_total`, `<prefix>_grpc_call_duration_seconds` and
    /// `<prefix>_grpc_calls_in_flight`.
    pub fn register(registry: &mut Registry, prefix: &str) -> GrpcMetrics {
        let metrics = GrpcMetrics {
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Gauge::default(),
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
        let method = path.rsplit('/').next().unwrap_or(path).to_string();
        let started = Instant::now();
        self.in_flight.inc();
        let response = next.run(request).await;
        self.in_flight.dec();
        // An error answered at once carries its status in the headers; an answer with a
        // body carries it in the trailers, which this does not wait for: counted as OK.
        let status = response
            .headers()
            .get("grpc-status")
            .and_then(|s| s.to_str().ok())
            .and_then(|s| s.parse::<i32>().ok())
            .map_or_else(
                || "Ok".to_string(),
                |code| format!("{:?}", tonic::Code::from(code)),
            );
        self.latency
            .get_or_create(&MethodLabel {
                method: method.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.calls
            .get_or_create(&CallLabels { method, status })
            .inc();
        response
    }
}
