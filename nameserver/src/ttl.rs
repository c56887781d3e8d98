//! TTL changes (`setttl`): the metadata first, then every replica that answers. A
//! replica that misses the change (its tablet down or cut off) reports its TTLs with its
//! status, and the nameserver brings it in line when it next sees it ([`align_ttls`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message;
use tessera_common::Ttl;
use tessera_proto::common::TtlDesc;
use tessera_proto::nameserver::TableInfo;
use tessera_proto::tablet as tpb;
use tracing::{info, warn};
use zookeeper_client::Error as ZkError;

use crate::error::{NsError, Result};
use crate::reconcile::TabletReport;
use crate::state::{call, db_or_default, tablet, Nameserver};

/// What a TTL change did: replicas updated, and those left for later (`endpoint pid N:
/// why`).
#[derive(Debug, Default)]
pub struct TtlChange {
    pub updated: u32,
    pub pending: Vec<String>,
}

/// The TTL of each index of `table`, in the schema's order, as the metadata says.
pub fn ttls_of(table: &TableInfo) -> Vec<TtlDesc> {
    table
        .schema
        .as_ref()
        .map(|s| {
            s.indexes
                .iter()
                .map(|ix| ix.ttl.unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

impl Nameserver {
    /// Sets the TTL of index `index` (empty: every index) of a table.
    pub async fn set_ttl(
        &self,
        db: &str,
        name: &str,
        index: &str,
        ttl: &TtlDesc,
    ) -> Result<TtlChange> {
        // Validated as the tablets will read it.
        let ttl = Ttl::from_proto(Some(ttl))
            .map_err(|e| NsError::InvalidArgument(e.to_string()))?
            .to_proto();
        let lock = self.lock().await?;
        let db = db_or_default(db);
        let path = self.paths.table(db, name);
        let client = self.client()?;
        let table = loop {
            let (data, stat) = match client.get_data(&path).await {
                Ok(found) => found,
                Err(ZkError::NoNode) => return Err(NsError::TableNotFound(format!("{db}.{name}"))),
                Err(e) => return Err(e.into()),
            };
            let mut table =
                TableInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?;
            let schema = table.schema.get_or_insert_with(Default::default);
            let mut changed = 0;
            for ix in schema
                .indexes
                .iter_mut()
                .filter(|ix| index.is_empty() || ix.name == index)
            {
                ix.ttl = Some(ttl);
                changed += 1;
            }
            table.ttl_version += 1;
            if changed == 0 {
                let names: Vec<&str> = schema.indexes.iter().map(|ix| ix.name.as_str()).collect();
                return Err(NsError::InvalidArgument(format!(
                    "table `{name}` has no index `{index}` (its indexes: {})",
                    names.join(", ")
                )));
            }
            match lock
                .set_data(&path, &table.encode_to_vec(), Some(stat.version))
                .await
            {
                Ok(_) => break table,
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        self.bump_counter(&lock, &self.paths.table_changed())
            .await?;
        info!(db = %db, table = %name, index = %index, ?ttl, "ttl changed");
        let ttls = ttls_of(&table);
        let mut change = TtlChange::default();
        for partition in &table.partitions {
            for replica in &partition.replicas {
                let endpoint = &replica.endpoint;
                let pushed = if self.is_healthy(endpoint) {
                    push_ttls(endpoint, &table, partition.pid, &ttls).await
                } else {
                    Err(NsError::Tablet {
                        endpoint: endpoint.clone(),
                        message: "the tablet is offline".into(),
                    })
                };
                match pushed {
                    Ok(()) => change.updated += 1,
                    Err(e) => change
                        .pending
                        .push(format!("{endpoint} pid {}: {e}", partition.pid)),
                }
            }
        }
        Ok(change)
    }

    /// Sends the metadata's TTLs to every replica whose status reported others (it
    /// missed a `setttl`), all at once, in a task of its own so that the op pipeline
    /// never waits on a slow tablet; one such task at a time. Best effort: a replica that
    /// does not take them now is tried again at the next reconciliation.
    pub(crate) fn align_ttls(self: &Arc<Self>, reports: HashMap<String, TabletReport>) {
        if self.aligning_ttls.swap(true, Ordering::AcqRel) {
            return;
        }
        let ns = self.clone();
        tokio::spawn(async move {
            if let Ok(tables) = ns.tables().await {
                let mut pushes = tokio::task::JoinSet::new();
                for table in tables {
                    let ttls = ttls_of(&table);
                    for (endpoint, report) in &reports {
                        for partition in &table.partitions {
                            let Some(status) = report.get(&(table.tid, partition.pid)) else {
                                continue;
                            };
                            // Older tablets report no TTLs.
                            if status.ttls.is_empty() || status.ttls == ttls {
                                continue;
                            }
                            let (endpoint, table, ttls, pid) =
                                (endpoint.clone(), table.clone(), ttls.clone(), partition.pid);
                            pushes.spawn(async move {
                                let pushed = tokio::time::timeout(
                                    ALIGN_TIMEOUT,
                                    push_ttls(&endpoint, &table, pid, &ttls),
                                )
                                .await;
                                match pushed {
                                    Ok(Ok(())) => info!(table = %table.name, pid, %endpoint,
                                        "replica brought in line with the table's ttl"),
                                    Ok(Err(e)) => warn!(table = %table.name, pid, %endpoint,
                                        error = %e, "replica's ttl differs and could not be changed"),
                                    Err(_) => warn!(table = %table.name, pid, %endpoint,
                                        "replica's ttl differs and the tablet did not answer in time"),
                                }
                            });
                        }
                    }
                }
                while pushes.join_next().await.is_some() {}
            }
            ns.aligning_ttls.store(false, Ordering::Release);
        });
    }
}

/// How long bringing one replica's TTL in line may take.
const ALIGN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn push_ttls(endpoint: &str, table: &TableInfo, pid: u32, ttls: &[TtlDesc]) -> Result<()> {
    let mut client = tablet(endpoint).await?;
    call(
        endpoint,
        client.set_ttl(tpb::SetTtlRequest {
            tid: table.tid,
            pid,
            ttls: ttls.to_vec(),
            version: table.ttl_version,
        }),
    )
    .await
    .map(|_| ())
}
