//! HTTP on the nameserver's own port, beside gRPC: the status page, a leader check for
//! load balancers (an HAProxy `httpchk` routes to the leader), a health check, and
//! Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::{Leadership, Nameserver};

/// The HTTP routes, merged into the gRPC router.
pub fn with_http(grpc: Router, state: Arc<Nameserver>) -> Router {
    let http = Router::new()
        .route("/", get(status_page))
        .route("/api/leader-check", get(leader_check))
        .route("/api/leader-check/503", get(leader_check_503))
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
    grpc.merge(http)
}

async fn status_page(State(ns): State<Arc<Nameserver>>) -> impl IntoResponse {
    axum::response::Html(crate::status_page::render(&ns).await)
}

/// 200 on the leader, 404 on a standby, 503 on a leader that lost touch with ZooKeeper.
async fn leader_check(State(ns): State<Arc<Nameserver>>) -> impl IntoResponse {
    match ns.leadership() {
        Leadership::Leading => (StatusCode::OK, "leader\n"),
        Leadership::Suspended => (StatusCode::SERVICE_UNAVAILABLE, SUSPENDED),
        Leadership::Standby => (StatusCode::NOT_FOUND, "standby\n"),
    }
}

const SUSPENDED: &str = "leader without ZooKeeper: suspended\n";

/// 200 on the leader, 503 elsewhere.
async fn leader_check_503(State(ns): State<Arc<Nameserver>>) -> impl IntoResponse {
    match ns.leadership() {
        Leadership::Leading => (StatusCode::OK, "leader\n"),
        Leadership::Suspended => (StatusCode::SERVICE_UNAVAILABLE, SUSPENDED),
        Leadership::Standby => (StatusCode::SERVICE_UNAVAILABLE, "standby\n"),
    }
}

async fn health(State(ns): State<Arc<Nameserver>>) -> impl IntoResponse {
    let role = match ns.leadership() {
        Leadership::Leading => "leader",
        Leadership::Suspended => "suspended",
        Leadership::Standby => "standby",
    };
    (StatusCode::OK, format!("ok {role}\n"))
}

/// Prometheus metrics (see [`crate::metrics`]).
async fn metrics(State(ns): State<Arc<Nameserver>>) -> impl IntoResponse {
    let text = crate::metrics::METRICS.render(&ns).await;
    (
        [(header::CONTENT_TYPE, tessera_common::metrics::CONTENT_TYPE)],
        text,
    )
}
