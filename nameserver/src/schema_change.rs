//! Schema changes (`addindex`, `deleteindex`, `addtablefield`): the metadata first, then
//! every partition's leader, which logs the change so that its followers apply it in log
//! order. A leader that misses the change (down, or cut off) reports its schema version
//! with its status, and the nameserver sends it the change when it next sees it
//! ([`crate::alignment`]).

use prost::Message;
use tessera_common::{table_layout, Schema, SchemaError};
use tessera_proto::common::{ColumnDesc, IndexDesc, TableSchema};
use tessera_proto::nameserver::TableInfo;
use tessera_proto::tablet as tpb;
use tracing::info;
use zookeeper_client::Error as ZkError;

use crate::error::{NsError, Result};
use crate::state::{call, db_or_default, tablet, Nameserver};

/// One change to a table's schema.
#[derive(Debug, Clone)]
pub enum Change {
    AddIndex(IndexDesc),
    DeleteIndex(String),
    AddColumn(ColumnDesc),
}

/// What a schema change did: the version now, partitions whose leader applied it, and
/// those left for later (`pid N endpoint: why`).
#[derive(Debug, Default)]
pub struct SchemaChange {
    pub version: u32,
    pub updated: u32,
    pub pending: Vec<String>,
}

impl Change {
    /// The schema after this change.
    fn apply_to(&self, schema: &Schema) -> std::result::Result<Schema, SchemaError> {
        match self {
            Change::AddIndex(index) => {
                let mut index = index.clone();
                if index.ttl.is_none() {
                    // An index given no TTL keeps rows as long as the first one does.
                    index.ttl = Some(schema.indexes[0].ttl.to_proto());
                }
                schema.with_index_added(&index)
            }
            Change::DeleteIndex(name) => {
                if schema
                    .index(name)
                    .is_some_and(|(position, _)| position == 0)
                {
                    return Err(SchemaError::FirstIndexDeleted);
                }
                schema.with_index_deleted(name)
            }
            Change::AddColumn(column) => schema.with_column_added(column),
        }
    }
}

/// The schema of a table's metadata.
pub fn schema_of(table: &TableInfo) -> Result<Schema> {
    Schema::from_proto(table.schema.as_ref().unwrap_or(&TableSchema::default()))
        .map_err(|e| NsError::Zk(format!("table `{}` has a bad schema: {e}", table.name)))
}

impl Nameserver {
    /// Rewrites table `db.name`'s header with `update` (compare-and-set, retried when
    /// another change came in between) and announces the change. Returns the new
    /// metadata.
    pub(crate) async fn update_table(
        &self,
        lock: &zookeeper_client::OwnedLockClient,
        db: &str,
        name: &str,
        mut update: impl FnMut(&mut TableInfo) -> Result<()>,
    ) -> Result<TableInfo> {
        let path = self.paths.table(db, name);
        let client = self.client()?;
        let table = loop {
            let Some(stored) = table_layout::read_table(&client, &path).await? else {
                return Err(NsError::TableNotFound(format!("{db}.{name}")));
            };
            let mut table = stored.table.clone();
            update(&mut table)?;
            // Only the header is written: a change to partitions goes through
            // `update_partition`, one chunk at a time.
            if table.partitions != stored.table.partitions {
                return Err(NsError::Zk(format!(
                    "internal: a change to {db}.{name}'s header also changed its partitions"
                )));
            }
            let header = if stored.is_inline() {
                table.clone()
            } else {
                table_layout::header_of(&table)
            };
            let writing = self.metadata.write_guard(&format!("{db}.{name}"));
            let written = lock
                .set_data(&path, &header.encode_to_vec(), Some(stored.header_version))
                .await;
            writing.settle_if_known(&written);
            match written {
                Ok(stat) => {
                    self.metadata
                        .note_header(&format!("{db}.{name}"), header, stat.mzxid);
                    break table;
                }
                Err(ZkError::BadVersion) => continue,
                // Not applied: the table was dropped meanwhile.
                Err(ZkError::NoNode) => return Err(NsError::TableNotFound(format!("{db}.{name}"))),
                // It may have landed: the guard made the table unsure (see
                // `MetadataCache::unsure`).
                Err(e) => return Err(e.into()),
            }
        };
        self.announce_table_change(lock).await?;
        Ok(table)
    }

    /// Applies `change` to table `db.name`: a new schema version in the metadata, then
    /// logged by every partition's leader.
    pub async fn change_schema(
        &self,
        db: &str,
        name: &str,
        change: Change,
    ) -> Result<SchemaChange> {
        let lock = self.lock().await?;
        let db = db_or_default(db);
        let table = self
            .update_table(&lock, db, name, |table| {
                let next = change
                    .apply_to(&schema_of(table)?)
                    .map_err(|e| NsError::InvalidArgument(e.to_string()))?;
                table.schema = Some(next.to_proto());
                Ok(())
            })
            .await?;
        let schema = table.schema.clone().unwrap_or_default();
        info!(db = %db, table = %name, version = schema.version, ?change, "schema changed");
        let mut pushes = tokio::task::JoinSet::new();
        for partition in &table.partitions {
            let pid = partition.pid;
            let Some(leader) = partition
                .replicas
                .iter()
                .find(|r| r.is_leader && r.is_alive)
            else {
                pushes.spawn(async move { (pid, Err("the partition has no leader".to_string())) });
                continue;
            };
            let endpoint = leader.endpoint.clone();
            if !self.is_healthy(&endpoint) {
                pushes
                    .spawn(async move { (pid, Err(format!("{endpoint}: the tablet is offline"))) });
                continue;
            }
            let (tid, schema) = (table.tid, schema.clone());
            pushes.spawn(async move {
                let pushed = push_schema(&endpoint, tid, pid, schema).await;
                (pid, pushed.map_err(|e| format!("{endpoint}: {e}")))
            });
        }
        let mut outcome = SchemaChange {
            version: schema.version,
            ..SchemaChange::default()
        };
        while let Some(joined) = pushes.join_next().await {
            match joined {
                Ok((_, Ok(()))) => outcome.updated += 1,
                Ok((pid, Err(why))) => outcome.pending.push(format!("pid {pid} {why}")),
                Err(e) => outcome.pending.push(format!("a push failed: {e}")),
            }
        }
        outcome.pending.sort();
        Ok(outcome)
    }
}

/// Sends a partition's leader the table's schema, to log and apply (within the tablet
/// call timeout; a leader still building a large index then answers the next push).
pub(crate) async fn push_schema(
    endpoint: &str,
    tid: u32,
    pid: u32,
    schema: TableSchema,
) -> Result<()> {
    let mut client = tablet(endpoint).await?;
    call(
        endpoint,
        client.change_schema(tpb::ChangeSchemaRequest {
            tid,
            pid,
            schema: Some(schema),
        }),
    )
    .await
    .map(|_| ())
}
