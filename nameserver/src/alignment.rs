//! Bringing replicas in line with the metadata after they missed a change: a leader whose
//! schema is older than the table's is sent the change to log ([`crate::schema_change`]),
//! and a replica whose TTLs differ is sent the table's ([`crate::ttl`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::tablet::TableRole;
use tracing::{info, warn};

use crate::reconcile::TabletReport;
use crate::schema_change::push_schema;
use crate::state::Nameserver;
use crate::ttl::{push_ttls, ttls_of};

/// How long bringing one replica's TTLs in line may take.
const TTL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a leader may take to log and apply a schema change it missed (a new index is
/// built meanwhile; the change goes on if this runs out, and the next push finds it done).
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(10);

impl Nameserver {
    /// Sends the metadata's schema to every leader that reported an older one, and its
    /// TTLs to every replica (of the table's schema version) that reported others; all at
    /// once, in a task of its own so that the op pipeline never waits on a slow tablet;
    /// one such task at a time. Best effort: a replica that does not take them now is
    /// tried again at the next reconciliation. Followers with an older schema are left
    /// alone: they take the change from their leader's log.
    pub(crate) fn align_replicas(self: &Arc<Self>, reports: Arc<HashMap<String, TabletReport>>) {
        if self.aligning.swap(true, Ordering::AcqRel) {
            return;
        }
        let ns = self.clone();
        tokio::spawn(async move {
            if let Ok(tables) = ns.cached_tables().await {
                let mut pushes = tokio::task::JoinSet::new();
                for table in tables.iter() {
                    let ttls = ttls_of(table);
                    let schema = table.schema.clone().unwrap_or_default();
                    // Each replica's own tablet's report only: asking every tablet's
                    // report about every partition cost a hundred million lookups at a
                    // million partitions on a hundred tablets.
                    let replicas = table
                        .partitions
                        .iter()
                        .flat_map(|p| p.replicas.iter().map(move |r| (p, &r.endpoint)));
                    for (partition, endpoint) in replicas {
                        let Some(report) = reports.get(endpoint) else {
                            continue;
                        };
                        let Some(status) = report.get(&(table.tid, partition.pid)) else {
                            continue;
                        };
                        // Older tablets report neither (0 and empty).
                        let behind =
                            status.schema_version != 0 && status.schema_version < schema.version;
                        let leads = status.role() == TableRole::Leader;
                        let ttls_differ = !behind && !status.ttls.is_empty() && status.ttls != ttls;
                        let schema_missing = behind && leads;
                        if !schema_missing && !ttls_differ {
                            continue;
                        }
                        let (endpoint, table, ttls, schema, pid) = (
                            endpoint.clone(),
                            table.clone(),
                            ttls.clone(),
                            schema.clone(),
                            partition.pid,
                        );
                        pushes.spawn(async move {
                            let what = if behind { "schema" } else { "ttl" };
                            let limit = if behind { SCHEMA_TIMEOUT } else { TTL_TIMEOUT };
                            let pushed = tokio::time::timeout(limit, async {
                                if behind {
                                    push_schema(&endpoint, table.tid, pid, schema).await
                                } else {
                                    push_ttls(&endpoint, &table, pid, &ttls).await
                                }
                            })
                            .await;
                            match pushed {
                                Ok(Ok(())) => info!(table = %table.name, pid, %endpoint,
                                    what, "replica brought in line with the table"),
                                Ok(Err(e)) => warn!(table = %table.name, pid, %endpoint,
                                    what, error = %e, "replica differs and could not be changed"),
                                Err(_) => warn!(table = %table.name, pid, %endpoint,
                                    what, "replica differs and the tablet did not answer in time"),
                            }
                        });
                    }
                }
                while pushes.join_next().await.is_some() {}
            }
            ns.aligning.store(false, Ordering::Release);
        });
    }
}
