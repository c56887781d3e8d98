//! HTTP on the taskmanager's own port, beside gRPC, as on the nameserver: a leader check
//! for load balancers, a health check, and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::TaskManager;

pub fn with_http(grpc: Router, state: Arc<TaskManager>) -> Router {
    let http = Router::new()
        .route("/api/leader-check", get(leader_check))
        .route("/api/leader-check/503", get(leader_check_503))
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
    grpc.merge(http)
}

fn leader_answer(tm: &TaskManager, standby: StatusCode) -> (StatusCode, &'static str) {
    if tm.is_leader() {
        (StatusCode::OK, "leader\n")
    } else {
        (standby, "standby\n")
    }
}

/// 200 on the leader, 404 elsewhere.
async fn leader_check(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    leader_answer(&tm, StatusCode::NOT_FOUND)
}

/// 200 on the leader, 503 elsewhere.
async fn leader_check_503(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    leader_answer(&tm, StatusCode::SERVICE_UNAVAILABLE)
}

async fn health(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    let role = if tm.is_leader() { "leader" } else { "standby" };
    (StatusCode::OK, format!("ok {role}\n"))
}

/// Prometheus metrics (see [`crate::metrics`]).
async fn metrics(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    let text = crate::metrics::METRICS.render(&tm).await;
    (
        [(header::CONTENT_TYPE, tessera_common::metrics::CONTENT_TYPE)],
        text,
    )
}
