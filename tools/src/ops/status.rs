//! `showopstatus` and `showtablestatus`: read-only views for the operator.

use comfy_table::{presets, Table};
use tessera_proto::nameserver::ShowTableRequest;
use tessera_shell::commands::show::ops_table;

use super::{Ops, OpsError, Result};

/// The ops of the pipeline, optionally only those in one status (`kFailed`, `kDoing`, …).
pub async fn showopstatus(ops: &mut Ops, filter: Option<&str>) -> Result<String> {
    const STATUSES: [&str; 5] = ["kInited", "kDoing", "kDone", "kFailed", "kCanceled"];
    if let Some(filter) = filter {
        if !STATUSES.contains(&filter) {
            return Err(OpsError::InvalidArgument(format!(
                "unknown op status `{filter}` (one of {})",
                STATUSES.join(", ")
            )));
        }
    }
    let all = ops.ops().await?;
    let shown: Vec<_> = all
        .into_iter()
        .filter(|op| filter.is_none_or(|f| op.status == f))
        .collect();
    Ok(ops_table(shown))
}

/// One line per table: replicas alive, partitions with a leader, the largest follower
/// lag, and a verdict.
pub async fn showtablestatus(ops: &mut Ops) -> Result<String> {
    let tables = ops.tables().await?;
    let mut out = Table::new();
    out.load_style(presets::ASCII_FULL_CONDENSED)
        .set_header(vec![
            "db",
            "table",
            "tid",
            "partitions",
            "replicas",
            "alive",
            "leaders",
            "records",
            "max_lag",
            "status",
        ]);
    for table in &tables {
        let request = ShowTableRequest {
            db: table.db.clone(),
            name: table.name.clone(),
        };
        let rows = ops
            .nameserver()
            .call(|mut c| {
                let r = request.clone();
                async move { c.show_table(r).await }
            })
            .await
            .map_err(|s| OpsError::Nameserver(s.message().to_string()))?
            .into_inner()
            .rows;
        let replicas = rows.len();
        let alive = rows.iter().filter(|r| r.is_alive).count();
        let leaders = rows
            .iter()
            .filter(|r| r.role == "leader" && r.is_alive)
            .count();
        let records: i64 = rows
            .iter()
            .filter(|r| r.role == "leader" && r.record_cnt > 0)
            .map(|r| r.record_cnt)
            .sum();
        let mut max_lag = 0;
        for leader in rows.iter().filter(|r| r.role == "leader" && r.offset >= 0) {
            for follower in rows.iter().filter(|r| {
                r.pid == leader.pid && r.role == "follower" && r.is_alive && r.offset >= 0
            }) {
                max_lag = max_lag.max(leader.offset - follower.offset);
            }
        }
        let partitions = table.partitions.len();
        let status = if leaders < partitions {
            format!(
                "unavailable: {} partitions without a leader",
                partitions - leaders
            )
        } else if alive < replicas {
            format!("degraded: {} replicas down", replicas - alive)
        } else {
            "healthy".into()
        };
        out.add_row(vec![
            table.db.clone(),
            table.name.clone(),
            table.tid.to_string(),
            partitions.to_string(),
            replicas.to_string(),
            alive.to_string(),
            leaders.to_string(),
            records.to_string(),
            max_lag.to_string(),
            status,
        ]);
    }
    Ok(out.to_string())
}
