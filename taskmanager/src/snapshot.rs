//! Snapshotting every table: a MakeSnapshot op per table through the nameserver, then
//! waiting for the ops to end. Progress counts tables.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_ns_client::nameserver::{op_ended, NameserverConnection};
use tessera_proto::nameserver::{PartitionsRequest, ShowOpStatusRequest};
use tessera_proto::taskmanager::JobInfo;

use crate::error::{Result, TmError};
use crate::state::TaskManager;

const WAIT: Duration = Duration::from_secs(600);

fn refused(status: tonic::Status) -> TmError {
    TmError::Cluster(format!("the nameserver refused: {}", status.message()))
}

pub async fn run(tm: &Arc<TaskManager>, job: &mut JobInfo, stop: &Arc<AtomicBool>) -> Result<()> {
    let mut ns = NameserverConnection::connect(&tm.settings.cluster, &tm.settings.root).await?;
    let tables = ns.table_names().await.map_err(refused)?;
    job.total = tables.len() as u64;
    job.done = 0;
    tm.save_job(job).await?;

    let mut ops = HashSet::new();
    for (db, name) in &tables {
        let request = PartitionsRequest {
            db: db.clone(),
            name: name.clone(),
            pids: Vec::new(),
        };
        let started = ns
            .call(|mut c| {
                let r = request.clone();
                async move { c.make_snapshot(r).await }
            })
            .await
            .map_err(refused)?
            .into_inner()
            .ops;
        ops.extend(started.into_iter().map(|op| op.op_id));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if stop.load(Ordering::Acquire) || !tm.is_leader() {
            return Ok(());
        }
        let all = ns
            .call(|mut c| async move { c.show_op_status(ShowOpStatusRequest::default()).await })
            .await
            .map_err(refused)?
            .into_inner()
            .ops;
        let ours: Vec<_> = all.iter().filter(|op| ops.contains(&op.op_id)).collect();
        if let Some(failed) = ours.iter().find(|op| op.status == "kFailed") {
            return Err(TmError::Cluster(format!(
                "snapshot of {} pid {} failed: {}",
                failed.name, failed.pid, failed.reason
            )));
        }
        let finished_tables: HashSet<(&str, &str)> = tables
            .iter()
            .filter(|(db, name)| {
                ours.iter()
                    .filter(|op| op.db == *db && op.name == *name)
                    .all(|op| op_ended(op))
            })
            .map(|(db, name)| (db.as_str(), name.as_str()))
            .collect();
        job.done = finished_tables.len() as u64;
        tm.save_job(job).await?;
        if job.done == job.total {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TmError::Cluster(format!(
                "snapshots not finished after {WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
