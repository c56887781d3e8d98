//! HTTP on the taskmanager's own port, beside gRPC, as on the nameserver: a leader check
//! for load balancers, a health check, and Prometheus metrics.

use std::fmt::Write;
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

/// Leadership, and jobs by type and state.
async fn metrics(State(tm): State<Arc<TaskManager>>) -> impl IntoResponse {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tessera_taskmanager_is_leader 1 on the leader, 0 on a standby."
    );
    let _ = writeln!(out, "# TYPE tessera_taskmanager_is_leader gauge");
    let _ = writeln!(
        out,
        "tessera_taskmanager_is_leader {}",
        u8::from(tm.is_leader())
    );
    let mut counts = std::collections::BTreeMap::new();
    for job in tm.jobs().await.unwrap_or_default() {
        *counts.entry((job.job_type, job.state)).or_insert(0u64) += 1;
    }
    let _ = writeln!(
        out,
        "# HELP tessera_taskmanager_jobs Jobs by type and state."
    );
    let _ = writeln!(out, "# TYPE tessera_taskmanager_jobs gauge");
    for ((job_type, state), count) in counts {
        let _ = writeln!(
            out,
            "tessera_taskmanager_jobs{{type=\"{job_type}\",state=\"{state}\"}} {count}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
