//! Applying committed entries: reads see only committed data.
//!
//! A live write (a leader's put or delete, a record a follower takes from its leader) is
//! appended to the binlog at once but reaches the memtable only when it is committed:
//! the leader's quorum commit offset (its own durable log end in `async` mode), or for a
//! follower the commit offset its leader sends, bounded by the part of its log known to
//! agree with the leader's. Until then it waits here, in offset order.
//!
//! A replica that loads from disk replays its whole log, committed or not (it cannot
//! know); it serves reads only once it learns that everything it applied is committed.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message;
use tessera_common::Schema;
use tessera_proto::common::TableSchema;
use tessera_proto::tablet::{ReplicationMode, TableRole};
use tracing::{error, info};

use super::entry::{LogEntry, RequestId};
use super::error::{Result, StorageError};
use super::memtable::{IndexEntries, Memtable};
use super::sessions::Sessions;
use super::table::{Table, Version};

/// Rows-removed results kept for writers that have not collected them, at most.
const KEPT_RESULTS: usize = 65_536;

/// What applying an entry did, beyond the rows it wrote.
pub(super) enum Outcome {
    Nothing,
    /// A delete: its request, if it carried one, and the rows it removed.
    Deleted(Option<RequestId>, u64),
    /// The memtable moved to a newer schema.
    Schema,
}

/// A logged entry waiting for its commit.
pub(super) enum PendingEntry {
    /// A leader's own put, with its index entries computed when it was checked.
    Put {
        write_time_ms: i64,
        data: Vec<u8>,
        entries: IndexEntries,
    },
    /// A leader's own delete.
    Delete {
        index: usize,
        key: Vec<u8>,
        request: Option<RequestId>,
        range: Option<super::entry::TsRange>,
    },
    /// An entry as logged (a follower's, or a new leader's no-op).
    Logged(Vec<u8>),
}

#[derive(Default)]
pub(super) struct Pending {
    /// Offset of the last entry applied to the memtable.
    applied: u64,
    /// The highest offset known to be committed.
    known_commit: u64,
    /// Entries above `applied`, by offset.
    entries: BTreeMap<u64, PendingEntry>,
    /// Rows each applied delete removed, until its writer collects the number.
    deleted: BTreeMap<u64, u64>,
}

impl Pending {
    /// After a load: everything in the log is applied; nothing is known committed yet.
    pub(super) fn replayed(applied: u64) -> Pending {
        Pending {
            applied,
            ..Pending::default()
        }
    }
}

/// Records in the idempotence table what a logged entry says about its request (the
/// result of a delete is filled in when it is applied).
pub(super) fn note_request(sessions: &mut Sessions, at: Version, payload: &[u8]) -> Result<()> {
    let request = match LogEntry::decode(payload)? {
        LogEntry::Put {
            write_time_ms,
            request,
            ..
        } => request.map(|id| (id, write_time_ms)),
        LogEntry::Delete { request, .. } => request,
        LogEntry::Noop | LogEntry::Schema { .. } => None,
        LogEntry::Register {
            client_id,
            epoch,
            write_time_ms,
        } => {
            sessions.register(client_id, epoch, write_time_ms);
            None
        }
    };
    if let Some((id, write_time_ms)) = request {
        let first = super::sessions::Applied {
            term: at.term,
            offset: at.offset,
            deleted: 0,
        };
        sessions.record(id, first, write_time_ms);
    }
    Ok(())
}

/// Applies an entry as logged to a memtable (replay, or a follower's committed entry).
pub(super) fn apply_logged(memtable: &Memtable, offset: u64, payload: &[u8]) -> Result<Outcome> {
    match LogEntry::decode(payload)? {
        LogEntry::Put {
            write_time_ms, row, ..
        } => {
            memtable
                .insert_encoded(offset, write_time_ms, row)
                .map_err(|e| {
                    StorageError::InvalidArgument(format!(
                        "entry at offset {offset} cannot be applied: {e}"
                    ))
                })?;
            Ok(Outcome::Nothing)
        }
        LogEntry::Delete {
            index,
            key,
            request,
            range,
        } => Ok(Outcome::Deleted(
            request.map(|(id, _)| id),
            match range {
                Some(r) => memtable.delete_key_range(usize::from(index), key, r.min, r.max, offset),
                None => memtable.delete_key(usize::from(index), key, offset),
            },
        )),
        LogEntry::Noop | LogEntry::Register { .. } => Ok(Outcome::Nothing),
        LogEntry::Schema { schema } => {
            let proto = TableSchema::decode(schema).map_err(|e| {
                StorageError::InvalidArgument(format!(
                    "the schema change at offset {offset} does not decode: {e}"
                ))
            })?;
            // Every replica meets the same entries in the same order and decides alike:
            // a change that does not fit is skipped everywhere, not retried forever.
            let next = match Schema::from_proto(&proto) {
                Ok(next) => next,
                Err(e) => {
                    error!(offset, error = %e, "a logged schema is invalid; it is skipped");
                    return Ok(Outcome::Nothing);
                }
            };
            match memtable.apply_schema(Arc::new(next), offset) {
                Ok(true) => Ok(Outcome::Schema),
                Ok(false) => Ok(Outcome::Nothing),
                Err(why) => {
                    error!(offset, error = %why, "a logged schema change does not fit; skipped");
                    Ok(Outcome::Nothing)
                }
            }
        }
    }
}

impl Table {
    /// Queues a logged entry until it is committed. Called under the writer lock, in
    /// offset order.
    pub(super) fn queue(&self, offset: u64, entry: PendingEntry) {
        self.pending.lock().entries.insert(offset, entry);
    }

    /// A follower learned from its leader that everything through `offset` is committed
    /// (`offset` is already bounded by where its log agrees with the leader's).
    pub(super) fn learn_commit(&self, offset: u64) {
        self.follower_commit.fetch_max(offset, Ordering::AcqRel);
    }

    /// How far entries may be applied now.
    fn commit_target(&self) -> u64 {
        let role = self.replica.lock().state.role();
        match role {
            TableRole::Leader if self.mode() == ReplicationMode::Async => {
                self.durability.durable_offset()
            }
            TableRole::Leader => self.quorum.commit(),
            // A committed entry may be applied before it is durable here: a majority
            // holds it.
            TableRole::Follower => self.follower_commit.load(Ordering::Acquire),
        }
    }

    /// Applies every queued entry that is committed, in order.
    ///
    /// Lock order: pending, then sessions (a delete's result); the write paths take the
    /// writer lock and then sessions or pending one at a time, never one inside the other.
    pub fn advance(&self) -> Result<()> {
        let target = self.commit_target();
        let mut pending = self.pending.lock();
        pending.known_commit = pending.known_commit.max(target);
        while pending.applied < target {
            let offset = pending.applied + 1;
            let Some(entry) = pending.entries.remove(&offset) else {
                // Not queued here (replayed on load, or never durable): nothing to do.
                break;
            };
            self.applying.store(offset, Ordering::Release);
            let outcome = match entry {
                PendingEntry::Put {
                    write_time_ms,
                    data,
                    entries,
                } => {
                    self.memtable.insert(offset, write_time_ms, data, entries);
                    Outcome::Nothing
                }
                PendingEntry::Delete {
                    index,
                    key,
                    request,
                    range,
                } => Outcome::Deleted(
                    request,
                    match range {
                        Some(r) => self
                            .memtable
                            .delete_key_range(index, &key, r.min, r.max, offset),
                        None => self.memtable.delete_key(index, &key, offset),
                    },
                ),
                PendingEntry::Logged(payload) => {
                    match apply_logged(&self.memtable, offset, &payload) {
                        Ok(applied) => applied,
                        Err(e) => {
                            // Never skipped: the entry stays first in line, and reads wait.
                            pending
                                .entries
                                .insert(offset, PendingEntry::Logged(payload));
                            self.applying.store(pending.applied, Ordering::Release);
                            error!(tid = self.meta.tid, pid = self.meta.pid, offset, error = %e,
                            "a committed entry cannot be applied");
                            return Err(e);
                        }
                    }
                }
            };
            if let Outcome::Schema = outcome {
                info!(
                    tid = self.meta.tid,
                    pid = self.meta.pid,
                    offset,
                    version = self.memtable.schema().version,
                    "schema changed"
                );
            }
            if let Outcome::Deleted(request, removed) = outcome {
                if removed > 0 {
                    // A consistent read as of an earlier offset can no longer be whole.
                    self.rows_deleted_at.fetch_max(offset, Ordering::AcqRel);
                }
                pending.deleted.insert(offset, removed);
                while pending.deleted.len() > KEPT_RESULTS {
                    pending.deleted.pop_first();
                }
                if let Some(id) = request {
                    self.sessions.lock().set_deleted(id, removed);
                }
            }
            pending.applied = offset;
            self.applied.store(offset, Ordering::Release);
        }
        Ok(())
    }

    /// Offset of the last entry applied to the memtable: what reads see.
    pub fn applied_offset(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The highest offset this replica knows to be committed.
    pub fn known_commit(&self) -> u64 {
        self.pending.lock().known_commit
    }

    /// Rows a committed delete removed (collected once).
    pub(super) fn take_deleted(&self, offset: u64) -> u64 {
        self.pending
            .lock()
            .deleted
            .remove(&offset)
            .unwrap_or_default()
    }
}
