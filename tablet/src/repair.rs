//! Replicas whose binlog failed come back by themselves.
//!
//! A failed binlog write or fsync (a full or failing disk) leaves the file in an unknown
//! state, so the binlog refuses everything after it. Left alone, such a leader would hold
//! its partition forever: alive in ZooKeeper, taking no writes. Every second this loop
//! reloads each such replica from disk, without the records after its last durable
//! offset (and so without a torn tail); it comes back a follower
//! of nobody, as after a restart, and the nameserver's reconciler repairs that like any
//! other difference (a new leader, or the replica made to follow again). A reload that
//! fails (the disk still full) is tried again on the next tick.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::error::TabletError;
use crate::replication::leader::Replicators;

const EVERY: Duration = Duration::from_secs(1);

pub async fn repair_failed_replicas(
    replicators: Arc<Replicators>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Replicas whose reload failed: loaded again on later ticks.
    let mut unloaded: HashSet<(u32, u32)> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
        let catalog = replicators.catalog().clone();
        // What the failed binlog knew durable (or the snapshot covers) is kept; records
        // written after it are cut: a failed fsync leaves their fate unknown, and the page
        // cache that still shows them may never reach the disk. They were never counted
        // durable here, so nothing acknowledged rests on them alone.
        let failed: Vec<(u32, u32, u64, String)> = catalog
            .tables()
            .iter()
            .filter_map(|t| {
                let meta = t.meta();
                let keep = t.durable_offset().max(t.snapshot_offset());
                t.binlog_failure()
                    .map(|why| (meta.tid, meta.pid, keep, why))
            })
            .collect();
        for (tid, pid, keep, why) in failed {
            warn!(tid, pid, keep_through = keep, error = %why,
                "binlog failed: reloading the replica from disk");
            replicators.stop_table(tid, pid);
            let reload = {
                let catalog = catalog.clone();
                tokio::task::spawn_blocking(move || catalog.truncate_and_reload(tid, pid, keep))
                    .await
            };
            match reload {
                Ok(Ok(table)) => {
                    info!(tid, pid, "replica reloaded after its binlog failed");
                    replicators.sync_table(&table);
                }
                Ok(Err(e)) => {
                    warn!(tid, pid, error = %e, "reload failed; trying again");
                    // A sync of the failed copy may have started links after the stop.
                    replicators.stop_table_unless_loaded(tid, pid);
                    unloaded.insert((tid, pid));
                }
                Err(e) => {
                    warn!(tid, pid, error = %e, "reload panicked");
                    replicators.stop_table_unless_loaded(tid, pid);
                }
            }
        }
        for (tid, pid) in unloaded.clone() {
            let load = {
                let catalog = catalog.clone();
                tokio::task::spawn_blocking(move || catalog.load(tid, pid)).await
            };
            match load {
                Ok(Ok(table)) => {
                    info!(tid, pid, "replica loaded again");
                    replicators.sync_table(&table);
                    unloaded.remove(&(tid, pid));
                }
                // Loaded, dropped or recreated by a request meanwhile: not ours any more.
                Ok(Err(TabletError::TableExists { .. } | TabletError::TableNotFound { .. })) => {
                    unloaded.remove(&(tid, pid));
                }
                Ok(Err(_)) | Err(_) => {}
            }
        }
    }
}
