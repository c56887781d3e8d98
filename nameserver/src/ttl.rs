//! TTL changes (`setttl`): the metadata first, then every replica that answers. A
//! replica that misses the change (its tablet down or cut off) reports its TTLs with its
//! status, and the nameserver brings it in line when it next sees it ([`crate::alignment`]).

use tessera_common::Ttl;
use tessera_proto::common::TtlDesc;
use tessera_proto::nameserver::TableInfo;
use tessera_proto::tablet as tpb;
use tracing::info;

use crate::error::{NsError, Result};
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
        let table = self
            .update_table(&lock, db, name, |table| {
                let schema = table.schema.get_or_insert_with(Default::default);
                let mut changed = 0;
                for ix in schema
                    .indexes
                    .iter_mut()
                    .filter(|ix| !ix.deleted && (index.is_empty() || ix.name == index))
                {
                    ix.ttl = Some(ttl);
                    changed += 1;
                }
                if changed == 0 {
                    let names: Vec<&str> = schema
                        .indexes
                        .iter()
                        .filter(|ix| !ix.deleted)
                        .map(|ix| ix.name.as_str())
                        .collect();
                    return Err(NsError::InvalidArgument(format!(
                        "table `{name}` has no index `{index}` (its indexes: {})",
                        names.join(", ")
                    )));
                }
                table.ttl_version += 1;
                Ok(())
            })
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
}

pub(crate) async fn push_ttls(
    endpoint: &str,
    table: &TableInfo,
    pid: u32,
    ttls: &[TtlDesc],
) -> Result<()> {
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
