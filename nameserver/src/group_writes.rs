//! The metadata writes that many ops make at once, group-committed (see `combining`):
//! partition changes (one write of a chunk node for every change waiting on it, and one
//! `table_changed` announcement for them all) and counters (one write of the term or op
//! id counter for every fence or new op waiting on one).

use std::sync::Arc;

use prost::Message;
use tessera_common::table_layout;
use tessera_proto::nameserver::{PartitionMeta, TableInfo};
use zookeeper_client::{
    CheckWriteError, Client, Error as ZkError, MultiWriteResult, OwnedLockClient,
};

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
    /// The end of the op whose last task this change is, written in the same
    /// transaction.
    op_end: Option<OpEnd>,
}

/// An op node's write (its end), checked against the version the leader's copy holds.
pub(crate) struct OpEnd {
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
    pub(crate) version: i32,
}

/// How a partition change ended.
pub(crate) enum Changed {
    /// Written; with the op end's outcome when one came with it: the op node's new
    /// version, or why it was left out (nothing of it applied).
    Written(Option<std::result::Result<i32, ZkError>>),
    /// The table has no chunk nodes (stored inline, before chunks): written one at a time.
    Inline,
}

/// Queued by leadership (a writer keeps the election lock it started with: one left from
/// an earlier leadership fails its writes, and must not take a new leadership's) and
/// chunk path.
pub(crate) type ChunkWrites = Combiner<(u64, String), PartitionChange, Result<Changed>>;
/// Queued by leadership and counter path; a request is the floor its values must exceed
/// and how many consecutive values it takes; the answer is the first of them.
pub(crate) type CounterWrites = Combiner<(u64, String), (u64, u64), Result<u64>>;

/// Terms reserved from the counter at once. A failover of thousands of partitions takes
/// a term for each: from a reserved block, most fences take theirs with no ZooKeeper
/// write at all. A block is reserved (written) before any of its terms is handed out,
/// so no other leadership ever hands one out again; the rest of a block a leadership
/// did not use is skipped.
const TERM_BLOCK: u64 = 64;

/// The terms left in the block this nameserver reserved last.
#[derive(Debug, Default)]
pub(crate) struct TermBlock {
    /// The leadership that reserved it.
    leadership: u64,
    /// The next term to hand out, and the last of the block.
    next: u64,
    last: u64,
}

impl TermBlock {
    /// The next term of the block for `leadership`, if one is left above `floor`.
    fn take(&mut self, leadership: u64, floor: u64) -> Option<u64> {
        if self.leadership != leadership || self.next <= floor || self.next > self.last {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    /// Serves the next fences from `fresh`, just reserved, if it lies above this block
    /// (or this one is another leadership's). Fences that run out together each reserve
    /// a block and finish in any order: a lower block installed after a higher one would
    /// hand out terms below those already given, and a partition's later fence must
    /// always take a higher term than its earlier one (a replica left in the earlier
    /// term would otherwise refuse the new leader, or, unfenced, outrank it). Blocks
    /// never overlap, so a block not installed lies wholly below this one's next term.
    fn replace_if_above(&mut self, fresh: TermBlock) {
        if self.leadership != fresh.leadership || fresh.next > self.last {
            *self = fresh;
        }
    }
}

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
        self.update_partition_with(table, pid, Arc::new(change), None)
            .await
            .map(|_| ())
    }

    /// [`Nameserver::update_partition`], with an op's end (`op_end`) written in the same
    /// transaction as the chunk, if the chunk is stored apart and the op node still has
    /// the version given. Returns the end's outcome (`None` when it was not written).
    pub(crate) async fn update_partition_with(
        &self,
        table: &TableInfo,
        pid: u32,
        change: Arc<dyn Fn(&mut PartitionMeta) + Send + Sync>,
        op_end: Option<OpEnd>,
    ) -> Result<Option<std::result::Result<i32, ZkError>>> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let client = self.client()?;
        let table_path = self.paths.table(&table.db, &table.name);
        let index = table_layout::chunk_of(pid);
        let chunk_path = table_layout::chunk_path(&table_path, index);
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
            op_end,
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
            Changed::Written(op_end) => Ok(op_end),
            Changed::Inline => {
                self.update_inline_partition(&lock, &client, table, pid, &*change)
                    .await?;
                Ok(None)
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

    /// A new term above `floor`, never handed out before: from the block this
    /// leadership reserved, or the first of a new block reserved from the ZooKeeper
    /// counter (one write of the counter for every fence waiting on one).
    pub(crate) async fn take_term(&self, floor: u64) -> Result<u64> {
        let (leadership, _) = self.lock_and_leadership().await?;
        if let Some(term) = self.term_block.lock().take(leadership, floor) {
            return Ok(term);
        }
        // Stamped with the leadership whose lock wrote the reservation.
        let (leadership, first) = self
            .take_counter_values(self.paths.term(), floor, TERM_BLOCK)
            .await?;
        self.term_block.lock().replace_if_above(TermBlock {
            leadership,
            next: first + 1,
            last: first + TERM_BLOCK - 1,
        });
        Ok(first)
    }

    /// The next value of the counter node at `path`, above `floor`, fenced by the
    /// election lock: one compare-and-set of the counter for every caller waiting on it
    /// (op ids during a mass failover, terms), each given a value of its own.
    pub(crate) async fn take_counter(&self, path: String, floor: u64) -> Result<u64> {
        Ok(self.take_counter_values(path, floor, 1).await?.1)
    }

    /// The first of `count` consecutive values of the counter at `path`, all above
    /// `floor` and given to this caller alone (see `take_counter`), with the leadership
    /// whose lock wrote them.
    async fn take_counter_values(
        &self,
        path: String,
        floor: u64,
        count: u64,
    ) -> Result<(u64, u64)> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let client = self.client()?;
        let key = (leadership, path.clone());
        let counter = path.clone();
        self.counter_writes
            .submit(key, (floor, count), move |floors| {
                let (lock, client, path) = (lock.clone(), client.clone(), counter.clone());
                async move { take_values(&lock, &client, &path, &floors).await }
            })
            .await
            .unwrap_or_else(|| Err(NsError::Zk(format!("the write of counter {path} failed"))))
            .map(|first| (leadership, first))
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
    /// fresh read if the chunk moved meanwhile), with the op ends that came with the
    /// changes; an op end whose version check fails is left out and the rest written
    /// again. A change for a table dropped and created again since (another tid) is
    /// refused on its own.
    async fn write(&self, batch: Vec<PartitionChange>) -> Vec<Result<Changed>> {
        let all = |outcome: &dyn Fn() -> Result<Changed>| batch.iter().map(|_| outcome()).collect();
        // Why each op end was left out, by request.
        let mut ends_left_out: Vec<Option<ZkError>> = batch.iter().map(|_| None).collect();
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
            if refused.iter().all(|r| *r) {
                return (0..batch.len())
                    .map(|i| Err(self.refusal(&batch[i])))
                    .collect();
            }
            let data = chunk.encode_to_vec();
            // The chunk and the announcement in one transaction: one round trip fewer
            // for each of the thousands of changes a mass failover writes; and the ends
            // of the ops whose last task this is, one more for each.
            let mut writer = self.lock.new_check_writer();
            let mut added = writer
                .add_set_data(&self.chunk_path, &data, Some(stat.version))
                .and_then(|()| {
                    writer.add_set_data(&self.table_changed, &table_changed_mark(), None)
                });
            // The request each op end written belongs to: the transaction's operation
            // 2 + k is the end of request `end_of_request[k]`.
            let mut end_of_request = Vec::new();
            for (i, request) in batch.iter().enumerate() {
                let Some(end) = &request.op_end else { continue };
                if refused[i] || ends_left_out[i].is_some() || added.is_err() {
                    continue;
                }
                added = writer.add_set_data(&end.path, &end.data, Some(end.version));
                end_of_request.push(i);
            }
            if let Err(e) = added {
                return all(&|| Err(e.clone().into()));
            }
            let written = match writer.commit().await {
                Ok(results) => {
                    let mzxid = match results.first() {
                        Some(MultiWriteResult::SetData { stat }) => stat.mzxid,
                        _ => 0,
                    };
                    self.metadata
                        .note_chunk(&self.table, self.index, chunk, mzxid);
                    crate::metrics::METRICS.metadata_written(data.len());
                    Ok(results)
                }
                Err(CheckWriteError::OperationFailed {
                    source: ZkError::BadVersion,
                    index: 0,
                }) => continue,
                Err(CheckWriteError::OperationFailed { index, source }) if index >= 2 => {
                    // An op node moved (an operator's cancel) or went: nothing was
                    // applied; that end is left to the op's own write.
                    ends_left_out[end_of_request[index - 2]] = Some(source);
                    continue;
                }
                Err(e) => {
                    // It may have landed all the same: op tasks read the table from
                    // ZooKeeper until the copy is read whole again. (A failed check of
                    // the election lock applied nothing, but leadership is gone then.)
                    self.metadata.unsure(&self.table);
                    Err(ZkError::from(e))
                }
            };
            return (0..batch.len())
                .map(|i| {
                    if refused[i] {
                        return Err(self.refusal(&batch[i]));
                    }
                    let results = written.as_ref().map_err(|e| NsError::from(e.clone()))?;
                    let op_end = batch[i].op_end.as_ref().map(|_| {
                        if let Some(left_out) = &ends_left_out[i] {
                            return Err(left_out.clone());
                        }
                        let at = end_of_request.iter().position(|r| *r == i);
                        match at.and_then(|at| results.get(at + 2)) {
                            Some(MultiWriteResult::SetData { stat }) => Ok(stat.version),
                            _ => Err(ZkError::UnexpectedError(
                                "no answer for the op's end in the transaction".into(),
                            )),
                        }
                    });
                    Ok(Changed::Written(op_end))
                })
                .collect();
        }
    }

    /// Why a change for a table dropped and created again since is refused.
    fn refusal(&self, request: &PartitionChange) -> NsError {
        NsError::TableNotFound(format!(
            "{} (tid {}: dropped and created again)",
            self.table, request.tid
        ))
    }
}

/// Moves `/notify/table_changed` (see [`Nameserver::announce_table_change`]).
pub(crate) async fn write_table_changed(lock: &OwnedLockClient, path: &str) -> Result<(), ZkError> {
    lock.set_data(path, &table_changed_mark(), None)
        .await
        .map(|_| ())
}

/// What a move of `/notify/table_changed` writes: the time, so every write differs.
fn table_changed_mark() -> Vec<u8> {
    crate::ops::now_ms().to_string().into_bytes()
}

/// Takes values for each request (floor, count) from the counter at `path`, in one
/// compare-and-set: the counter moves to the larger of its value and every floor, plus
/// every value taken, and each request gets `count` consecutive values above that base
/// (above its own floor); its answer is the first.
async fn take_values(
    lock: &OwnedLockClient,
    client: &Client,
    path: &str,
    floors: &[(u64, u64)],
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

/// The counter's new value and, for each request (floor, count), the first of `count`
/// consecutive values: no value given twice, each above the counter and above its
/// request's floor.
fn values_above(counter: u64, requests: &[(u64, u64)]) -> (u64, Vec<u64>) {
    let base = requests
        .iter()
        .map(|(floor, _)| *floor)
        .fold(counter, u64::max);
    let mut top = base;
    let firsts = requests
        .iter()
        .map(|(_, count)| {
            let first = top + 1;
            top += (*count).max(1);
            first
        })
        .collect();
    (top, firsts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_taken_together_are_distinct_and_above_every_floor() {
        let floors = [(3, 1), (40, 1), (7, 1)];
        let (top, terms) = values_above(10, &floors);
        assert_eq!(terms, vec![41, 42, 43]);
        assert_eq!(top, 43, "the counter moves past every term handed out");
        for (term, (floor, _)) in terms.iter().zip(floors) {
            assert!(*term > floor && *term > 10);
        }
        assert_eq!(values_above(50, &[(1, 1)]), (51, vec![51]));
        // Blocks taken together do not overlap, and the counter passes them all.
        let (top, firsts) = values_above(10, &[(3, 64), (12, 1), (5, 64)]);
        assert_eq!(firsts, vec![13, 77, 78]);
        assert_eq!(top, 141);
    }

    #[test]
    fn a_term_block_hands_out_each_term_once_to_its_own_leadership() {
        let mut block = TermBlock {
            leadership: 2,
            next: 11,
            last: 13,
        };
        assert_eq!(block.take(1, 0), None, "another leadership's block");
        assert_eq!(block.take(2, 0), Some(11));
        assert_eq!(block.take(2, 11), Some(12), "above the floor");
        assert_eq!(block.take(2, 20), None, "the floor is past the block");
        assert_eq!(block.take(2, 0), Some(13));
        assert_eq!(block.take(2, 0), None, "used up");
        assert_eq!(
            TermBlock::default().take(0, 0),
            None,
            "nothing reserved yet"
        );
    }

    /// Two fences reserve blocks together and finish in either order: the terms handed
    /// out after both never fall below one handed out before.
    #[test]
    fn a_lower_block_reserved_at_the_same_time_does_not_replace_a_higher_one() {
        let (low, high) = ((13, 76), (77, 140));
        let block_of = |(first, last): (u64, u64)| TermBlock {
            leadership: 1,
            next: first + 1,
            last,
        };
        // The higher finishes first: its fence took 77, the next take 78; the lower
        // one's fence took 13 and its block is not installed.
        let mut block = TermBlock::default();
        block.replace_if_above(block_of(high));
        assert_eq!(block.take(1, 0), Some(78));
        block.replace_if_above(block_of(low));
        assert_eq!(block.take(1, 0), Some(79), "not 14, below 78 handed out");
        // The lower finishes first: the higher replaces it.
        let mut block = TermBlock::default();
        block.replace_if_above(block_of(low));
        assert_eq!(block.take(1, 0), Some(14));
        block.replace_if_above(block_of(high));
        assert_eq!(block.take(1, 0), Some(78));
        // A new leadership's block replaces the old one's, wherever it lies.
        block.replace_if_above(TermBlock {
            leadership: 2,
            next: 30,
            last: 40,
        });
        assert_eq!(block.take(2, 0), Some(30));
    }
}
