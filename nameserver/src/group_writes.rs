//! The metadata writes that many ops make at once, group-committed (see `combining`):
//! partition changes (one write of a chunk node for every change waiting on it, and one
//! `table_changed` announcement for them all) and counters (one write of the term or op
//! id counter for every fence or new op waiting on one).

use std::sync::Arc;

use prost::Message;
use tessera_common::table_layout;
use tessera_proto::nameserver::{PartitionMeta, TableInfo};
use zookeeper_client::{Client, Error as ZkError, OwnedLockClient};

use crate::combining::Combiner;
use crate::error::{NsError, Result};
use crate::metadata_cache::MetadataCache;
use crate::ops::table_name;
use crate::state::Nameserver;

/// A change of one partition, waiting for its chunk's next write.
pub(crate) struct PartitionChange {
    tid: u32,
    pid: u32,
    change: Arc<dyn Fn(&mut PartitionMeta) + Send + Sync>,
}

/// How a partition change ended.
pub(crate) enum Changed {
    Written,
    /// The table has no chunk nodes (stored inline, before chunks): written one at a time.
    Inline,
}

/// Queued by leadership (a writer keeps the election lock it started with: one left from
/// an earlier leadership fails its writes, and must not take a new leadership's) and
/// chunk path.
pub(crate) type ChunkWrites = Combiner<(u64, String), PartitionChange, Result<Changed>>;
/// Queued by leadership and counter path; a request is the floor its value must exceed.
pub(crate) type CounterWrites = Combiner<(u64, String), u64, Result<u64>>;

impl Nameserver {
    /// Changes one partition's metadata, fenced and with a version check: only the chunk
    /// node that holds it (see `table_layout`), written once for every change waiting on
    /// it, then `table_changed` is announced.
    pub(crate) async fn update_partition(
        &self,
        table: &TableInfo,
        pid: u32,
        change: impl Fn(&mut PartitionMeta) + Send + Sync + 'static,
    ) -> Result<()> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let client = self.client()?;
        let table_path = self.paths.table(&table.db, &table.name);
        let index = table_layout::chunk_of(pid);
        let chunk_path = table_layout::chunk_path(&table_path, index);
        let change: Arc<dyn Fn(&mut PartitionMeta) + Send + Sync> = Arc::new(change);
        let writer = ChunkWriter {
            lock: lock.clone(),
            client: client.clone(),
            metadata: self.metadata.clone(),
            table: table_name(table),
            chunk_path: chunk_path.clone(),
            index,
            table_changed: self.paths.table_changed(),
        };
        let request = PartitionChange {
            tid: table.tid,
            pid,
            change: change.clone(),
        };
        let changed = self
            .chunk_writes
            .submit((leadership, chunk_path), request, move |batch| {
                let writer = writer.clone();
                async move { writer.write(batch).await }
            })
            .await
            .unwrap_or_else(|| Err(NsError::Zk("the metadata write failed".into())))?;
        match changed {
            Changed::Written => Ok(()),
            Changed::Inline => {
                self.update_inline_partition(&lock, &client, table, pid, &*change)
                    .await
            }
        }
    }

    /// [`Nameserver::update_partition`] for a table stored inline (before chunks, not yet
    /// migrated): its header holds every partition.
    async fn update_inline_partition(
        &self,
        lock: &OwnedLockClient,
        client: &Client,
        table: &TableInfo,
        pid: u32,
        change: &(dyn Fn(&mut PartitionMeta) + Send + Sync),
    ) -> Result<()> {
        let path = self.paths.table(&table.db, &table.name);
        loop {
            let Some(stored) = table_layout::read_table(client, &path).await? else {
                return Err(NsError::TableNotFound(format!(
                    "{}.{}",
                    table.db, table.name
                )));
            };
            if !stored.is_inline() || stored.table.tid != table.tid {
                // Dropped and created again (with fewer partitions, or inline under
                // another tid): not this op's table.
                return Err(NsError::TableNotFound(format!(
                    "{}.{} (tid {}: dropped and created again, or no partition {pid})",
                    table.db, table.name, table.tid
                )));
            }
            let mut current = stored.table;
            if let Some(partition) = current.partitions.iter_mut().find(|p| p.pid == pid) {
                change(partition);
            }
            let data = table_layout::header_bytes(&current);
            let writing = self.metadata.write_guard(&table_name(table));
            let written = lock
                .set_data(&path, &data, Some(stored.header_version))
                .await;
            writing.settle_if_known(&written);
            match written {
                Ok(stat) => {
                    self.metadata
                        .note_header(&table_name(table), current, stat.mzxid);
                    crate::metrics::METRICS.metadata_written(data.len());
                    break;
                }
                Err(ZkError::BadVersion) => continue,
                // Not applied: the table was dropped meanwhile.
                Err(ZkError::NoNode) => return Err(NsError::TableNotFound(table_name(table))),
                // It may have landed: the guard made the table unsure.
                Err(e) => return Err(e.into()),
            }
        }
        self.announce_table_change(lock).await
    }

    /// A new term above `floor`, from the ZooKeeper counter: one write of the counter
    /// for every fence waiting on one, each given a term of its own.
    pub(crate) async fn take_term(&self, floor: u64) -> Result<u64> {
        self.take_counter(self.paths.term(), floor).await
    }

    /// The next value of the counter node at `path`, above `floor`, fenced by the
    /// election lock: one compare-and-set of the counter for every caller waiting on it
    /// (op ids during a mass failover, terms), each given a value of its own.
    pub(crate) async fn take_counter(&self, path: String, floor: u64) -> Result<u64> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let client = self.client()?;
        let key = (leadership, path.clone());
        let counter = path.clone();
        self.counter_writes
            .submit(key, floor, move |floors| {
                let (lock, client, path) = (lock.clone(), client.clone(), counter.clone());
                async move { take_values(&lock, &client, &path, &floors).await }
            })
            .await
            .unwrap_or_else(|| Err(NsError::Zk(format!("the write of counter {path} failed"))))
    }
}

/// What one chunk's writer needs, owned: it runs on a task of its own.
#[derive(Clone)]
struct ChunkWriter {
    lock: Arc<OwnedLockClient>,
    client: Client,
    metadata: Arc<MetadataCache>,
    table: String,
    chunk_path: String,
    index: u32,
    table_changed: String,
}

impl ChunkWriter {
    /// Applies every change of `batch` to the chunk and writes it once (again from a
    /// fresh read if the chunk moved meanwhile). A change for a table dropped and created
    /// again since (another tid) is refused on its own.
    async fn write(&self, batch: Vec<PartitionChange>) -> Vec<Result<Changed>> {
        let all = |outcome: &dyn Fn() -> Result<Changed>| batch.iter().map(|_| outcome()).collect();
        loop {
            let (data, stat) = match self.client.get_data(&self.chunk_path).await {
                Ok(read) => read,
                Err(ZkError::NoNode) => return all(&|| Ok(Changed::Inline)),
                Err(e) => return all(&|| Err(e.clone().into())),
            };
            let mut chunk = match table_layout::decode_chunk(&self.chunk_path, self.index, &data) {
                Ok(chunk) => chunk,
                Err(e) => {
                    let e = e.to_string();
                    return all(&|| Err(NsError::Zk(e.clone())));
                }
            };
            let mut refused = vec![false; batch.len()];
            for (request, refused) in batch.iter().zip(refused.iter_mut()) {
                if chunk.tid != request.tid {
                    *refused = true;
                    continue;
                }
                if let Some(partition) = chunk.partitions.iter_mut().find(|p| p.pid == request.pid)
                {
                    (request.change)(partition);
                    table_layout::clip_reason(partition);
                }
            }
            let outcome_of = |i: usize, written: &Result<(), ZkError>| {
                if refused[i] {
                    return Err(NsError::TableNotFound(format!(
                        "{} (tid {}: dropped and created again)",
                        self.table, batch[i].tid
                    )));
                }
                match written {
                    Ok(()) => Ok(Changed::Written),
                    Err(e) => Err(e.clone().into()),
                }
            };
            if refused.iter().all(|r| *r) {
                return (0..batch.len()).map(|i| outcome_of(i, &Ok(()))).collect();
            }
            let data = chunk.encode_to_vec();
            let written = match self
                .lock
                .set_data(&self.chunk_path, &data, Some(stat.version))
                .await
            {
                Ok(stat) => {
                    self.metadata
                        .note_chunk(&self.table, self.index, chunk, stat.mzxid);
                    crate::metrics::METRICS.metadata_written(data.len());
                    write_table_changed(&self.lock, &self.table_changed).await
                }
                Err(ZkError::BadVersion) => continue,
                Err(e) => {
                    // It may have landed all the same: op tasks read the table from
                    // ZooKeeper until the copy is read whole again.
                    self.metadata.unsure(&self.table);
                    Err(e)
                }
            };
            return (0..batch.len()).map(|i| outcome_of(i, &written)).collect();
        }
    }
}

/// Moves `/notify/table_changed` (see [`Nameserver::announce_table_change`]).
pub(crate) async fn write_table_changed(lock: &OwnedLockClient, path: &str) -> Result<(), ZkError> {
    let now = crate::ops::now_ms().to_string();
    lock.set_data(path, now.as_bytes(), None).await.map(|_| ())
}

/// Takes one value for each of `floors` from the counter at `path`, in one
/// compare-and-set: the counter moves to the larger of its value and every floor, plus
/// one per value, and each gets one of the values above that base (above its own floor).
async fn take_values(
    lock: &OwnedLockClient,
    client: &Client,
    path: &str,
    floors: &[u64],
) -> Vec<Result<u64>> {
    loop {
        let read = client.get_data(path).await;
        let (data, stat) = match read {
            Ok(read) => read,
            Err(e) => return floors.iter().map(|_| Err(e.clone().into())).collect(),
        };
        let counter = String::from_utf8_lossy(&data)
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        let (top, values) = values_above(counter, floors);
        match lock
            .set_data(path, top.to_string().as_bytes(), Some(stat.version))
            .await
        {
            Ok(_) => return values.into_iter().map(Ok).collect(),
            Err(ZkError::BadVersion) => continue,
            Err(e) => return floors.iter().map(|_| Err(e.clone().into())).collect(),
        }
    }
}

/// The counter's new value and one value for each of `floors`: distinct, each above the
/// counter and above its own floor.
fn values_above(counter: u64, floors: &[u64]) -> (u64, Vec<u64>) {
    let base = floors.iter().copied().fold(counter, u64::max);
    let terms: Vec<u64> = (1..=floors.len() as u64).map(|n| base + n).collect();
    (base + floors.len() as u64, terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_taken_together_are_distinct_and_above_every_floor() {
        let floors = [3, 40, 7];
        let (top, terms) = values_above(10, &floors);
        assert_eq!(terms, vec![41, 42, 43]);
        assert_eq!(top, 43, "the counter moves past every term handed out");
        for (term, floor) in terms.iter().zip(floors) {
            assert!(*term > floor && *term > 10);
        }
        assert_eq!(values_above(50, &[1]), (51, vec![51]));
    }
}
