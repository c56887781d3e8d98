//! HTTP on the nameserver's own port, beside gRPC: the status page, a leader check for
//! load balancers (an HAProxy `httpchk` routes to the leader), a health check, and
//! Prometheus metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
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

/// Prometheus text: leadership, tablets by state, ops by type and status, and
/// partitions without an alive leader.
async fn metrics(State(ns): State<Arc<Nameserver>>) -> impl IntoResponse {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP tessera_nameserver_is_leader 1 on the leader, 0 on a standby."
    );
    let _ = writeln!(out, "# TYPE tessera_nameserver_is_leader gauge");
    let _ = writeln!(
        out,
        "tessera_nameserver_is_leader {}",
        u8::from(ns.is_leader())
    );

    let tablets = ns.tablets();
    let healthy = tablets
        .iter()
        .filter(|t| t.state == "kTabletHealthy")
        .count();
    let _ = writeln!(
        out,
        "# HELP tessera_tablets Tablets known to the nameserver, by state."
    );
    let _ = writeln!(out, "# TYPE tessera_tablets gauge");
    let _ = writeln!(out, "tessera_tablets{{state=\"healthy\"}} {healthy}");
    let _ = writeln!(
        out,
        "tessera_tablets{{state=\"offline\"}} {}",
        tablets.len() - healthy
    );

    let reports = ns.report_counts();
    let _ = writeln!(
        out,
        "# HELP tessera_leader_reports_total Followers' reports of a silent leader, by what \
         the check of its tablet found (alive = a false alarm)."
    );
    let _ = writeln!(out, "# TYPE tessera_leader_reports_total counter");
    for (verdict, count) in [
        ("alive", reports.alive),
        ("gone", reports.gone),
        ("silent", reports.silent),
        ("known", reports.known),
    ] {
        let _ = writeln!(
            out,
            "tessera_leader_reports_total{{verdict=\"{verdict}\"}} {count}"
        );
    }

    let mut ops: BTreeMap<(String, String), u64> = BTreeMap::new();
    for op in ns.ops().await.unwrap_or_default() {
        *ops.entry((op.op_type, op.status)).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP tessera_ops Ops kept in ZooKeeper, by type and status."
    );
    let _ = writeln!(out, "# TYPE tessera_ops gauge");
    for ((op_type, status), count) in ops {
        let _ = writeln!(
            out,
            "tessera_ops{{type=\"{op_type}\",status=\"{status}\"}} {count}"
        );
    }

    let leaderless = ns
        .tables()
        .await
        .unwrap_or_default()
        .iter()
        .flat_map(|t| &t.partitions)
        .filter(|p| !p.replicas.iter().any(|r| r.is_leader && r.is_alive))
        .count();
    let _ = writeln!(
        out,
        "# HELP tessera_partitions_without_leader Partitions with no alive leader."
    );
    let _ = writeln!(out, "# TYPE tessera_partitions_without_leader gauge");
    let _ = writeln!(out, "tessera_partitions_without_leader {leaderless}");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
