//! One partition replica on disk and in memory: its metadata, memtable, binlog and
//! snapshots, and the read and write paths over them.
//!
//! ```text
//! <dir>/table_meta        TableMeta (crash-safe)
//! <dir>/binlog/*.log      the binlog segments
//! <dir>/snapshot/         MANIFEST and the current <offset>.snap
//! ```
//!
//! Writes are serialised by the binlog lock: an entry is given its offset, appended and
//! applied to the memtable under it, so the memtable always reflects a prefix of the
//! log. The writer then waits for durability outside the lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prost::Message;
use tessera_common::{codec, key, Schema, Ttl, Value};
use tessera_proto::common::TermPair;
use tessera_proto::tablet::{
    ReplicaState, ReplicationMode, TableMeta, TableRole, TableState, TableStatus,
};
use tracing::info;

use super::apply::{apply_logged, note_request, Outcome, Pending, PendingEntry};
use super::binlog::{Binlog, BinlogOptions, Durability, FsyncPolicy, Record, TornTail};
use super::crashsafe;
use super::entry::{LogEntry, RequestId, TsRange};
use super::error::{io_error, Result, StorageError};
use super::memtable::{Found, Memtable, ReadView};
use super::page::{self, AsOf, Page, PageBuilder, PageLimit};
use super::replica::read_replica_state;
use super::sessions::{Applied, Seen, Sessions};
use super::snapshot;
use crate::replication::history;
use crate::replication::quorum::{Quorum, WaitError};

const META_FILE: &str = "table_meta";
const META_MAGIC: [u8; 4] = *b"TSMT";
const META_VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub struct TableOptions {
    pub binlog: BinlogOptions,
    /// Largest encoded row accepted by `put`.
    pub max_row_size: usize,
    /// How long a quorum write waits for a majority before it is answered with an error.
    pub quorum_timeout: Duration,
    /// Whether a replica that was leader before a restart is leader again on load. True
    /// for a standalone tablet; in a cluster a restarted replica waits to be told its
    /// role, since another may have been promoted meanwhile.
    pub restore_leadership: bool,
    /// A client whose writes this partition has not seen for this long is forgotten by
    /// the idempotence table (a retry from it after that may be applied again).
    pub client_expiry: Duration,
    /// Writes in flight per partition beyond which new ones are refused as overloaded.
    pub max_writes_in_flight: usize,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            binlog: BinlogOptions::default(),
            max_row_size: 16 << 20,
            quorum_timeout: Duration::from_secs(10),
            restore_leadership: true,
            client_expiry: Duration::from_secs(3600),
            max_writes_in_flight: 4096,
        }
    }
}

/// What loading a replica found.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub snapshot_offset: u64,
    pub snapshot_rows: u64,
    pub replayed: u64,
    pub torn_tail: Option<TornTail>,
}

/// The replica's log position at the time of a read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub term: u64,
    pub offset: u64,
}

/// A write in the log (durable on this replica), not yet known to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a logged write is acknowledged only once it is committed"]
pub struct Logged {
    /// Where the write is: its first application's term and offset (for a retried
    /// request, the original's).
    pub version: Version,
    /// The term this replica led in when it took the request: the commit must come in it.
    pub leading_term: u64,
    /// The request's id, if it carried one.
    pub request: Option<RequestId>,
    /// A retry of a request logged before: nothing new was written.
    pub duplicate: bool,
}

/// A write encoded and ready to log.
struct Prepared {
    request: Option<RequestId>,
    /// A writer's registration: (client id, epoch).
    register: Option<(u64, u64)>,
    write_time_ms: i64,
    payload: Vec<u8>,
    entry: PendingEntry,
}

/// The longest a consistent read may page: its moment's rows are kept from collection
/// only while it lasts.
const MAX_CONSISTENT_READ_MS: i64 = 60 * 60 * 1000;

/// A decoded row with its ts in the index it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct RowAt {
    pub ts: i64,
    pub values: Vec<Value>,
}

pub struct Table {
    /// The meta the replica was opened with: its identity (tid, pid, names, mode) never
    /// changes; its schema and TTLs may (see `persisted`).
    pub(super) meta: TableMeta,
    /// The meta as `table_meta` on disk holds it now (its TTLs change). Its lock makes
    /// TTL changes one at a time.
    persisted: Mutex<TableMeta>,
    dir: PathBuf,
    pub(super) options: TableOptions,
    pub(super) memtable: Memtable,
    /// The binlog; its lock serialises writers. Lock order: writer, then replica.
    pub(super) writer: Mutex<Binlog>,
    pub(super) durability: Arc<Durability>,
    /// Role, term and peers (persisted in `replica_state`), and whether the lease was lost.
    pub(super) replica: Mutex<ReplicaRuntime>,
    /// Mirror of the replica's term for lock-free reads of the version.
    pub(super) term: AtomicU64,
    /// The log's term history, derived from its records (and the snapshot's manifest).
    pub(super) history: Mutex<Vec<TermPair>>,
    /// Offset of the last logged entry, readable without the writer lock.
    pub(super) last_offset: AtomicU64,
    /// Offset of the last entry applied to the memtable (what reads see).
    pub(super) applied: AtomicU64,
    /// The entry being applied now (or `applied` between entries): set before the
    /// memtable changes, so no read can show an entry beyond it.
    pub(super) applying: AtomicU64,
    /// Logged entries waiting for their commit to be applied.
    pub(super) pending: Mutex<Pending>,
    /// Follower: the commit offset learned from the leader, bounded by the part of the
    /// log known to agree with the leader's.
    pub(super) follower_commit: AtomicU64,
    pub(super) snapshot_offset: AtomicU64,
    /// One snapshot at a time.
    pub(super) snapshot_lock: Mutex<()>,
    making_snapshot: AtomicBool,
    /// While a consistent read is paging (until this time, ms since the epoch), expired
    /// rows are hidden but not collected: the read may still need them.
    gc_paused_until_ms: std::sync::atomic::AtomicI64,
    /// When this replica last removed expired rows (the end of the collection), or was
    /// opened (what an earlier life removed is not known): a consistent read as of an
    /// earlier time may have lost rows, and is refused rather than answered short.
    rows_collected_at_ms: std::sync::atomic::AtomicI64,
    /// The last offset at which a delete removed rows here (at least the offset loaded
    /// when the replica was opened): a consistent read as of an earlier offset would miss
    /// the deleted rows, and is refused.
    pub(super) rows_deleted_at: AtomicU64,
    /// Non-zero while snapshots are paused (a snapshot is being sent to another tablet,
    /// or an operator paused them): no new snapshot, and no binlog collection.
    pub(super) snapshot_pauses: AtomicUsize,
    pub(super) quorum: Quorum,
    /// The last appended offset, for replicators waiting for new records.
    pub(super) appended: tokio::sync::watch::Sender<u64>,
    /// Results of clients' recent writes, to answer retries. Lock order: writer, then
    /// sessions.
    pub(super) sessions: Mutex<Sessions>,
    /// Bounds the writes waiting on this partition.
    write_slots: Arc<tokio::sync::Semaphore>,
}

/// A replica's role as it stands now.
#[derive(Debug, Clone)]
pub struct ReplicaRuntime {
    pub state: ReplicaState,
    /// The tablet lost its ZooKeeper lease while leading: it serves nothing as leader
    /// until it is told its role again.
    pub fenced: bool,
    /// Fenced, and the lease is valid again in a later session: nobody will lift the
    /// fence but a new role (reported as `fenced`, for the reconciler).
    pub awaiting_role: bool,
    /// Follower: when it last answered its leader without refusing its term (or became
    /// a follower, or was loaded), for silence detection.
    pub leader_contact: std::time::Instant,
    /// In a cluster, the term its stored state held when it was loaded: it never leads
    /// that term (see `change_role`).
    pub term_at_load: Option<u64>,
    /// Until when (this clock, drift margin included) a lease this replica helped a
    /// leader renew may last; a loaded replica may have helped just before its restart.
    pub granted_until: std::time::Instant,
    /// Follower: the grant to its leader's tablet it belongs to, renewed by every beat
    /// of that tablet (see `replication::pair_lease`); left before it stops following.
    pub pair: Option<std::sync::Arc<crate::replication::pair_lease::PairGrant>>,
    /// The number of the state's latest change (or of the load), from one counter for
    /// every replica of the process: a later change, of this copy or of a copy loaded
    /// after it, has a larger number.
    pub state_seq: u64,
}

/// How many trailing columns a row leaves out that schema changes added (and that it may
/// leave out, NULL); 0 when it has every column or leaves out others (the encoder then
/// reports the count).
fn missing_added_columns(schema: &Schema, values: &[Value]) -> usize {
    let missing = schema.columns.len().saturating_sub(values.len());
    let added = schema.columns[values.len().min(schema.columns.len())..]
        .iter()
        .all(|c| c.added_in_version > 0 && c.nullable);
    if added {
        missing
    } else {
        0
    }
}

/// What a replica logs when it starts leading a term with no record of it yet: a no-op,
/// so that the records of earlier terms can commit without waiting for a client's write
/// (none when the log is empty), and the schema in force when it is not the first: a
/// replica created from the metadata after a schema change has the change without any
/// entry of it, and its followers must meet the schema in the log before its rows.
pub(super) fn term_start_entries(last_offset: u64, memtable: &Memtable) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    if last_offset > 0 {
        entries.push(LogEntry::Noop.encode());
    }
    let schema = memtable.schema();
    if schema.version > 1 {
        // With the TTLs now, which may have been set since the schema came.
        let mut proto = schema.to_proto();
        for (index, ttl) in proto.indexes.iter_mut().zip(memtable.ttls()) {
            index.ttl = Some(ttl.to_proto());
        }
        entries.push(
            LogEntry::Schema {
                schema: &proto.encode_to_vec(),
            }
            .encode(),
        );
    }
    entries
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join(META_FILE)
}

/// Reads a replica's `table_meta`; `None` when the directory holds no replica.
pub fn read_meta(dir: &Path) -> Result<Option<TableMeta>> {
    let path = meta_path(dir);
    let Some((_version, body)) = crashsafe::read_framed(&path, META_MAGIC)? else {
        return Ok(None);
    };
    TableMeta::decode(body.as_slice())
        .map(Some)
        .map_err(|e| StorageError::Corruption {
            file: path,
            position: 16,
            reason: format!("table meta does not decode: {e}"),
        })
}

fn write_meta(dir: &Path, meta: &TableMeta) -> Result<()> {
    crashsafe::write_framed(
        &meta_path(dir),
        META_MAGIC,
        META_VERSION,
        &meta.encode_to_vec(),
    )
}

impl Table {
    /// Creates a new, empty replica in `dir` (which must not hold one already).
    pub fn create(
        dir: &Path,
        mut meta: TableMeta,
        options: TableOptions,
    ) -> Result<(Table, LoadReport)> {
        let schema = meta
            .schema
            .as_ref()
            .ok_or_else(|| StorageError::InvalidArgument("table has no schema".into()))?;
        // Validate before touching the disk, and store the normalised form.
        let schema = Schema::from_proto(schema)?;
        meta.schema = Some(schema.to_proto());
        if meta.partition_num == 0 {
            meta.partition_num = 1;
        }
        if meta.pid >= meta.partition_num {
            return Err(StorageError::InvalidArgument(format!(
                "pid {} is not below partition_num {}",
                meta.pid, meta.partition_num
            )));
        }
        if meta.term == 0 {
            meta.term = 1;
        }
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        crashsafe::fsync_parent(dir)?;
        write_meta(dir, &meta)?;
        Table::open(dir, options)
    }

    /// Loads a replica: its latest snapshot, then the binlog from the snapshot's offset.
    pub fn open(dir: &Path, options: TableOptions) -> Result<(Table, LoadReport)> {
        let meta = read_meta(dir)?.ok_or_else(|| StorageError::Corruption {
            file: meta_path(dir),
            position: 0,
            reason: "missing table meta".into(),
        })?;
        let snapshot_dir = dir.join("snapshot");
        let manifest = snapshot::read_manifest(&snapshot_dir)?;
        // The schema in force at the snapshot's offset (older snapshots have none: the
        // schema never changed before them); the binlog's schema entries follow from it.
        let schema = manifest
            .as_ref()
            .and_then(|m| m.schema.as_ref())
            .or(meta.schema.as_ref())
            .cloned()
            .unwrap_or_default();
        let memtable = Memtable::new(Arc::new(Schema::from_proto(&schema)?));
        let mut sessions = Sessions::new(options.client_expiry.as_millis() as i64);
        let mut report = LoadReport::default();

        let mut term = meta.term.max(1);
        let mut term_history: Vec<TermPair> = Vec::new();
        if let Some(manifest) = &manifest {
            snapshot::load(&snapshot_dir, manifest, |offset, write_time, row| {
                memtable
                    .insert_encoded(offset, write_time, row)
                    .map_err(|e| StorageError::Corruption {
                        file: snapshot_dir.join(&manifest.data_file),
                        position: 0,
                        reason: format!("row at offset {offset} does not decode: {e}"),
                    })
            })?;
            report.snapshot_offset = manifest.offset;
            report.snapshot_rows = manifest.record_count;
            term = term.max(manifest.term);
            term_history = manifest.term_history.clone();
            history::truncate(&mut term_history, manifest.offset);
            sessions.load_proto(&manifest.client_sessions);
        }

        let binlog_dir = dir.join("binlog");
        let (binlog, open_report) = Binlog::open(
            &binlog_dir,
            options.binlog.clone(),
            report.snapshot_offset + 1,
            |record: Record<'_>| {
                history::note_record(&mut term_history, record.term, record.offset);
                let at = Version {
                    term: record.term,
                    offset: record.offset,
                };
                let corrupt = |e: StorageError| StorageError::Corruption {
                    file: binlog_dir.clone(),
                    position: 0,
                    reason: format!("entry at offset {} cannot be applied: {e}", record.offset),
                };
                note_request(&mut sessions, at, record.payload).map_err(corrupt)?;
                if let Outcome::Deleted(Some(id), removed) =
                    apply_logged(&memtable, record.offset, record.payload).map_err(corrupt)?
                {
                    sessions.set_deleted(id, removed);
                }
                Ok(())
            },
        )?;
        if !meta.ttls.is_empty() {
            // TTLs set since (they are not in the log).
            let mut ttls = memtable.ttls();
            for (ttl, set) in ttls.iter_mut().zip(&meta.ttls) {
                *ttl = Ttl::from_proto(Some(set))?;
            }
            memtable.set_ttls(ttls);
        }
        report.replayed = open_report.records_replayed;
        report.torn_tail = open_report.torn_tail;
        term = term.max(open_report.last_term);

        let stored = read_replica_state(dir)?;
        // A replica created as leader has led nothing yet; one with a stored state lived
        // in its term before this load, and may have lost records of it.
        let had_a_term = stored.is_some() && !options.restore_leadership;
        let mut state = stored.unwrap_or_else(|| ReplicaState {
            term,
            role: meta.role,
            followers: Vec::new(),
            leader: meta.leader.clone(),
            offline: Vec::new(),
        });
        state.term = state.term.max(term);
        let term_at_load = had_a_term.then_some(state.term);
        if state.role() == TableRole::Leader && !options.restore_leadership {
            // Someone else may lead by now: wait to be told.
            state.role = TableRole::Follower as i32;
            state.leader.clear();
            state.followers.clear();
        }
        let quorum = Quorum::default();
        let mut binlog = binlog;
        let mut noop = Vec::new();
        if state.role() == TableRole::Leader {
            // A standalone leader comes back leading: it starts its term again.
            let term_start = match history::first_offset_of(&term_history, state.term) {
                Some(start) => start,
                None => {
                    let mut start = None;
                    for payload in term_start_entries(binlog.last_offset(), &memtable) {
                        let offset = binlog.append(state.term, &payload)?;
                        history::note_record(&mut term_history, state.term, offset);
                        start.get_or_insert(offset);
                        noop.push((offset, payload));
                    }
                    start.unwrap_or(1)
                }
            };
            quorum.lead(state.term, term_start, &state.followers);
        }
        quorum.set_local(binlog.durability().durable_offset());
        let replayed = noop
            .first()
            .map_or(binlog.last_offset(), |(first, _)| first - 1);

        info!(
            tid = meta.tid,
            pid = meta.pid,
            snapshot_offset = report.snapshot_offset,
            replayed = report.replayed,
            offset = open_report.last_offset,
            "table loaded"
        );
        let table = Table {
            persisted: Mutex::new(meta.clone()),
            dir: dir.to_path_buf(),
            memtable,
            durability: binlog.durability(),
            last_offset: AtomicU64::new(binlog.last_offset()),
            applied: AtomicU64::new(replayed),
            applying: AtomicU64::new(replayed),
            pending: Mutex::new(Pending::replayed(replayed)),
            follower_commit: AtomicU64::new(0),
            appended: tokio::sync::watch::Sender::new(binlog.last_offset()),
            writer: Mutex::new(binlog),
            term: AtomicU64::new(state.term),
            replica: Mutex::new(ReplicaRuntime {
                state,
                fenced: false,
                leader_contact: std::time::Instant::now(),
                term_at_load,
                granted_until: std::time::Instant::now()
                    + tessera_common::failure_detection::stretched(
                        tessera_common::failure_detection::LEADER_LEASE,
                    ),
                awaiting_role: false,
                pair: None,
                state_seq: super::replica::next_state_seq(),
            }),
            history: Mutex::new(term_history),
            snapshot_offset: AtomicU64::new(report.snapshot_offset),
            snapshot_lock: Mutex::new(()),
            making_snapshot: AtomicBool::new(false),
            gc_paused_until_ms: std::sync::atomic::AtomicI64::new(0),
            // What an earlier life removed happened before now; a read begins after.
            rows_collected_at_ms: std::sync::atomic::AtomicI64::new(now_ms() - 1),
            rows_deleted_at: AtomicU64::new(replayed),
            snapshot_pauses: AtomicUsize::new(0),
            quorum,
            sessions: Mutex::new(sessions),
            write_slots: Arc::new(tokio::sync::Semaphore::new(options.max_writes_in_flight)),
            options,
            meta,
        };
        if let Some(&(last, _)) = noop.last() {
            for (offset, payload) in noop {
                table.queue(offset, PendingEntry::Logged(payload));
            }
            table.durability.wait(last)?;
            table.quorum.set_local(last);
        }
        table.advance()?;
        Ok((table, report))
    }

    /// The meta the replica was opened with (its schema is the one the replica was
    /// created with; see [`Table::schema`] for the one in force).
    pub fn meta(&self) -> &TableMeta {
        &self.meta
    }

    /// The schema rows are read and written with now.
    pub fn schema(&self) -> Arc<Schema> {
        self.memtable.schema()
    }

    /// Each index's TTL now (the schema's, unless changed since).
    pub fn ttls(&self) -> Vec<Ttl> {
        self.memtable.ttls()
    }

    /// Changes the TTLs, one per index in the schema's order: kept in the table meta
    /// (crash-safe, so a reload keeps them), then applied to reads at once; the next
    /// collection removes what they expire. Rows a shorter TTL already collected do not
    /// come back when it is lengthened again.
    ///
    /// `version` orders changes: TTLs older than the ones held are ignored (`Ok(false)`).
    /// Consistent reads under way when the TTL changes are refused and start again: their
    /// pages would otherwise expire rows by two different rules.
    pub fn set_ttls(&self, ttls: Vec<Ttl>, version: u64) -> Result<bool> {
        let mut persisted = self.persisted.lock();
        let indexes = self.memtable.schema().indexes.len();
        if ttls.len() != indexes {
            return Err(StorageError::InvalidArgument(format!(
                "the table has {indexes} indexes, {} ttls were given",
                ttls.len()
            )));
        }
        if version < persisted.ttl_version {
            return Ok(false);
        }
        let mut meta = persisted.clone();
        meta.ttl_version = version;
        meta.ttls = ttls.iter().map(|ttl| ttl.to_proto()).collect();
        // The memtable first: it refuses TTLs that no longer match its indexes (a schema
        // change came in between), and then nothing reaches the disk.
        let before = self.memtable.ttls();
        if !self.memtable.set_ttls(ttls) {
            return Err(StorageError::Unavailable(
                "the schema changed while the TTLs were set; try again".into(),
            ));
        }
        self.rows_collected_at_ms
            .fetch_max(now_ms(), Ordering::AcqRel);
        if let Err(e) = write_meta(&self.dir, &meta) {
            self.memtable.set_ttls(before);
            return Err(e);
        }
        *persisted = meta;
        Ok(true)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last offset durable on this replica under its fsync policy.
    pub fn durable_offset(&self) -> u64 {
        self.durability.durable_offset()
    }

    /// What a read sees: the term, and the offset of the last applied (committed)
    /// entry.
    /// The version a read answers with, taken after the read and counting the entry
    /// being applied: an entry reaches the memtable before the applied offset moves, so
    /// the applied offset (or one taken before the read) could be below a row the read
    /// showed, and a follower read asking for that offset could then miss it (a client's
    /// reads going back in time). Every entry being applied is committed.
    fn version_after_read(&self) -> Version {
        Version {
            term: self.term.load(Ordering::Acquire),
            offset: self.applying.load(Ordering::Acquire),
        }
    }

    pub fn version(&self) -> Version {
        Version {
            term: self.term.load(Ordering::Acquire),
            offset: self.applied.load(Ordering::Acquire),
        }
    }

    /// Appends an entry and queues it for applying; [`Table::commit`] waits until it is
    /// durable here and committed. A request logged before is answered with its first
    /// entry instead.
    fn write_payload(&self, prepared: Prepared) -> Result<Logged> {
        let mut binlog = self.writer.lock();
        let logged = self.stage_payload(&mut binlog, prepared)?;
        if logged.duplicate {
            // Nothing was staged.
            return Ok(logged);
        }
        binlog.write_staged()?;
        self.written(&binlog);
        Ok(logged)
    }

    /// [`Table::write_payload`] for many entries, under one hold of the writer lock and
    /// with one `write`. Each entry has its own outcome.
    fn write_payloads(&self, prepared: Vec<Result<Prepared>>) -> Vec<Result<Logged>> {
        let mut binlog = self.writer.lock();
        let mut logged: Vec<Result<Logged>> = prepared
            .into_iter()
            .map(|p| p.and_then(|p| self.stage_payload(&mut binlog, p)))
            .collect();
        if let Err(e) = binlog.write_staged() {
            // Every entry still in the write buffer shares the failed write, and the
            // binlog now ends before the first of them: none of those was logged. Those
            // written before a segment roll in the middle of the batch are in the log
            // but may not be durable, so their fate is unknown (a retry is deduplicated).
            let not_logged_from = binlog.last_offset() + 1;
            // Only a write the binlog took back entirely is certainly not logged.
            let not_logged = match &e {
                StorageError::WriteFailed(reason) => Some(reason.clone()),
                _ => None,
            };
            for outcome in logged
                .iter_mut()
                .filter(|l| l.as_ref().is_ok_and(|l| !l.duplicate))
            {
                let offset = outcome.as_ref().map_or(0, |l| l.version.offset);
                *outcome = Err(match &not_logged {
                    Some(reason) if offset >= not_logged_from => {
                        StorageError::WriteFailed(reason.clone())
                    }
                    _ => StorageError::OutcomeUnknown(format!(
                        "writing the batch failed ({e}); rows of it may have been logged"
                    )),
                });
            }
        } else {
            self.written(&binlog);
        }
        logged
    }

    /// Announces what the binlog holds once it is written: shippers read the file, so
    /// they must not look for records still in the write buffer.
    pub(super) fn written(&self, binlog: &Binlog) {
        let last = binlog.last_offset();
        self.last_offset.store(last, Ordering::Release);
        self.appended.send_replace(last);
    }

    /// Stages one entry in the binlog (the caller writes it before letting go of the
    /// writer lock), notes its request and queues it for applying.
    fn stage_payload(&self, binlog: &mut Binlog, prepared: Prepared) -> Result<Logged> {
        let Prepared {
            request,
            register,
            write_time_ms,
            payload,
            entry,
        } = prepared;
        // Checked under the writer lock, so once a fence or role change returns, no
        // record of the old term can follow.
        let term = self.writable_term()?;
        if let Some(id) = request {
            let seen = self.sessions.lock().check(id);
            match seen {
                Seen::New => {}
                Seen::Applied(first) => {
                    return Ok(Logged {
                        version: Version {
                            term: first.term,
                            offset: first.offset,
                        },
                        leading_term: term,
                        request,
                        duplicate: true,
                    });
                }
                Seen::TooOld { highest } => {
                    return Err(StorageError::OutcomeUnknown(format!(
                        "request {} of client {:x} is older than the {} requests this \
                         partition remembers (highest {highest}); it may have been applied",
                        id.seq,
                        id.client_id,
                        super::sessions::SEQ_WINDOW
                    )))
                }
                Seen::Fenced { registered } => {
                    return Err(StorageError::WriterFenced {
                        client_id: id.client_id,
                        epoch: id.epoch,
                        registered,
                    })
                }
            }
        }
        if let Some((client_id, epoch)) = register {
            self.sessions
                .lock()
                .check_register(client_id, epoch)
                .map_err(|registered| StorageError::WriterFenced {
                    client_id,
                    epoch,
                    registered,
                })?;
        }
        self.check_enough_replicas()?;
        let offset = binlog.stage(term, &payload)?;
        history::note_record(&mut self.history.lock(), term, offset);
        if let Some(id) = request {
            let first = Applied {
                term,
                offset,
                deleted: 0,
            };
            self.sessions.lock().record(id, first, write_time_ms);
        }
        if let Some((client_id, epoch)) = register {
            self.sessions
                .lock()
                .register(client_id, epoch, write_time_ms);
        }
        self.queue(offset, entry);
        Ok(Logged {
            version: Version { term, offset },
            leading_term: term,
            request,
            duplicate: false,
        })
    }

    /// Quorum mode refuses a write up front when too few voting members are shipped to
    /// for it to ever commit (nothing is logged then).
    fn check_enough_replicas(&self) -> Result<()> {
        if self.mode() == ReplicationMode::Async {
            return Ok(());
        }
        let replica = self.replica.lock();
        let voters = replica.state.followers.len() + 1;
        let live = voters - replica.state.offline.len();
        let needed = voters / 2 + 1;
        if live < needed {
            return Err(StorageError::NotEnoughReplicas {
                live,
                voters,
                needed,
            });
        }
        Ok(())
    }

    fn commit_error(&self, logged: &Logged, error: WaitError) -> StorageError {
        let offset = logged.version.offset;
        match error {
            WaitError::Timeout { commit } => StorageError::OutcomeUnknown(format!(
                "offset {offset} was not acknowledged by a majority within {:?} (committed: \
                 {commit}); it may still be applied",
                self.options.quorum_timeout
            )),
            WaitError::SteppedDown => StorageError::OutcomeUnknown(format!(
                "this replica stopped leading in term {} before offset {offset} was \
                 committed; it may or may not survive",
                logged.leading_term
            )),
        }
    }

    /// Waits until a logged write is durable here and committed (quorum mode), without
    /// holding a thread, and applies it. Returns the rows it removed (deletes).
    pub async fn commit(&self, logged: &Logged) -> Result<u64> {
        self.commit_within(logged, self.options.quorum_timeout)
            .await
    }

    /// [`Table::commit`] giving the quorum at most `quorum_wait` (the durability wait is
    /// not bounded: a write is not given up on while the local disk still has it).
    pub async fn commit_within(&self, logged: &Logged, quorum_wait: Duration) -> Result<u64> {
        self.durability.wait_async(logged.version.offset).await?;
        self.quorum.set_local(self.durability.durable_offset());
        if self.mode() == ReplicationMode::Quorum {
            self.quorum
                .wait(logged.version.offset, logged.leading_term, quorum_wait)
                .await
                .map_err(|e| self.commit_error(logged, e))?;
        }
        self.applied_result(logged)
    }

    /// As [`Table::commit`], blocking the calling thread.
    pub fn commit_blocking(&self, logged: &Logged) -> Result<u64> {
        self.durability.wait(logged.version.offset)?;
        self.quorum.set_local(self.durability.durable_offset());
        if self.mode() == ReplicationMode::Quorum {
            self.quorum
                .wait_blocking(
                    logged.version.offset,
                    logged.leading_term,
                    self.options.quorum_timeout,
                )
                .map_err(|e| self.commit_error(logged, e))?;
        }
        self.applied_result(logged)
    }

    /// Applies what is committed, then the rows the committed write removed.
    fn applied_result(&self, logged: &Logged) -> Result<u64> {
        self.advance()?;
        if !logged.duplicate {
            return Ok(self.take_deleted(logged.version.offset));
        }
        let first = logged.request.map(|id| self.sessions.lock().check(id));
        Ok(match first {
            Some(Seen::Applied(first)) => first.deleted,
            _ => 0,
        })
    }

    /// Slots for `writes` writes in flight, or an "overloaded" refusal the client may
    /// retry. A batch bigger than the whole bound takes all of it (its size is bounded
    /// by the request size anyway).
    pub fn write_slots(&self, writes: usize) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let limit = self.options.max_writes_in_flight;
        let wanted = u32::try_from(writes.clamp(1, limit.max(1))).unwrap_or(u32::MAX);
        self.write_slots
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| {
                StorageError::Unavailable(format!(
                    "overloaded: {limit} writes are in flight on this partition; retry shortly"
                ))
            })
    }

    /// How long a quorum write waits for its commit before its outcome is unknown.
    pub fn quorum_timeout(&self) -> Duration {
        self.options.quorum_timeout
    }

    /// Whether every write fsyncs inside its append (the `every_write` policy), so
    /// logging one may block for a disk flush.
    pub fn fsyncs_each_write(&self) -> bool {
        self.options.binlog.fsync == FsyncPolicy::EveryWrite
    }

    pub fn mode(&self) -> ReplicationMode {
        self.meta.mode()
    }

    /// Writes a whole row and waits until it is committed.
    pub fn put(&self, values: &[Value]) -> Result<Version> {
        let logged = self.log_put(values, None)?;
        self.commit_blocking(&logged)?;
        Ok(logged.version)
    }

    /// Logs a whole row (handed to the OS, not yet durable nor committed): see
    /// [`Table::commit`].
    pub fn log_put(&self, values: &[Value], request: Option<RequestId>) -> Result<Logged> {
        self.write_payload(self.prepare_put(values, request)?)
    }

    /// Logs many rows at once (one `write`), each with its own outcome: see
    /// [`Table::log_put`].
    pub fn log_puts(&self, rows: &[(&[Value], Option<RequestId>)]) -> Vec<Result<Logged>> {
        let prepared = rows
            .iter()
            .map(|(values, request)| self.prepare_put(values, *request))
            .collect();
        self.write_payloads(prepared)
    }

    /// Encodes a row and its log entry (outside the writer lock).
    fn prepare_put(&self, values: &[Value], request: Option<RequestId>) -> Result<Prepared> {
        let schema = self.memtable.schema();
        let padded;
        let values = match missing_added_columns(&schema, values) {
            0 => values,
            missing => {
                // A writer that does not know the columns added since leaves them NULL.
                padded = [values, &vec![Value::Null; missing]].concat();
                &padded[..]
            }
        };
        let data = codec::encode(&schema, values)?;
        if data.len() > self.options.max_row_size {
            return Err(StorageError::RowTooLarge {
                size: data.len(),
                limit: self.options.max_row_size,
            });
        }
        let write_time_ms = now_ms();
        // Keys are computed (and a NULL key refused) before anything is logged, under the
        // schema the row was encoded with (if it changes before the row is applied, the
        // memtable computes them again).
        let entries = super::memtable::entries_of(&schema, values, write_time_ms)?;
        let payload = LogEntry::Put {
            write_time_ms,
            row: &data,
            request,
        }
        .encode();
        let entry = PendingEntry::Put {
            write_time_ms,
            data,
            entries,
        };
        Ok(Prepared {
            request,
            register: None,
            write_time_ms,
            payload,
            entry,
        })
    }

    /// Deletes every row whose key in `index` is `key`. Returns the version and the
    /// number of rows removed.
    pub fn delete(&self, index: &str, key_values: &[Value]) -> Result<(Version, u64)> {
        let logged = self.log_delete(index, key_values, None, None)?;
        let removed = self.commit_blocking(&logged)?;
        Ok((logged.version, removed))
    }

    /// Logs a delete (handed to the OS, not yet durable nor committed): see
    /// [`Table::commit`].
    pub fn log_delete(
        &self,
        index: &str,
        key_values: &[Value],
        request: Option<RequestId>,
        range: Option<TsRange>,
    ) -> Result<Logged> {
        if range.is_some_and(|r| r.min > r.max) {
            return Err(StorageError::InvalidArgument(
                "the delete's min_ts is above its max_ts".into(),
            ));
        }
        let (position, key) = self.key_of(index, key_values)?;
        if range.is_some() && self.memtable.ttls()[position].rank_bound().is_some() {
            // Rows of the key past its newest N may not have been collected yet; taking
            // out newer ones would let them back in on one replica and not another.
            return Err(StorageError::InvalidArgument(format!(
                "index `{}` keeps the newest rows of each key (a latest TTL): a ts range \
                 cannot be deleted from it; delete the whole key, or through another index",
                self.memtable.schema().indexes[position].name
            )));
        }
        let write_time_ms = now_ms();
        let payload = LogEntry::Delete {
            index: position as u16,
            key: &key,
            request: request.map(|id| (id, write_time_ms)),
            range,
        }
        .encode();
        let entry = PendingEntry::Delete {
            index: position,
            key,
            request,
            range,
        };
        self.write_payload(Prepared {
            request,
            register: None,
            write_time_ms,
            payload,
            entry,
        })
    }

    /// Logs a writer's new epoch (see [`LogEntry::Register`]): once it is logged here,
    /// this leader refuses the writer's older epochs. Refused if a newer one is
    /// registered. Commit it like a write.
    pub fn log_register(&self, client_id: u64, epoch: u64) -> Result<Logged> {
        let write_time_ms = now_ms();
        let payload = LogEntry::Register {
            client_id,
            epoch,
            write_time_ms,
        }
        .encode();
        self.write_payload(Prepared {
            request: None,
            register: Some((client_id, epoch)),
            write_time_ms,
            entry: PendingEntry::Logged(payload.clone()),
            payload,
        })
    }

    /// Logs a move to schema `next` (see [`LogEntry::Schema`]), which must follow the
    /// schema applied now. Commit it like a write: once applied, rows are read and
    /// indexed by it. Changes are meant to come one at a time (the nameserver's lock); a
    /// second logged before the first applies is skipped by every replica if it does not
    /// follow the first.
    pub fn log_schema_change(&self, next: &Schema) -> Result<Logged> {
        self.memtable
            .schema()
            .check_successor(next)
            .map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
        let payload = LogEntry::Schema {
            schema: &next.to_proto().encode_to_vec(),
        }
        .encode();
        self.write_payload(Prepared {
            request: None,
            register: None,
            write_time_ms: now_ms(),
            entry: PendingEntry::Logged(payload.clone()),
            payload,
        })
    }

    /// The epoch a writer registered last on this replica (0: none, or forgotten).
    pub fn writer_epoch(&self, client_id: u64) -> u64 {
        self.sessions.lock().epoch(client_id)
    }

    /// The highest sequence number of a writer this replica remembers (0: none).
    pub fn writer_highest(&self, client_id: u64) -> u64 {
        self.sessions.lock().highest(client_id)
    }

    fn key_of(&self, index: &str, key_values: &[Value]) -> Result<(usize, Vec<u8>)> {
        let schema = self.memtable.schema();
        let (position, ix) = schema
            .index(index)
            .ok_or_else(|| StorageError::UnknownIndex(index.to_string()))?;
        Ok((position, key::key_from_values(&schema, ix, key_values)?))
    }

    /// A found row's values under `schema`, taken once per read: a schema change during
    /// the read only appends columns, which older rows read as NULL; a row applied after
    /// the change (with more columns) is read under the schema now.
    fn decode(&self, schema: &Schema, found: Found) -> Result<RowAt> {
        let values = match codec::decode(schema, &found.row.data) {
            Ok(values) => values,
            Err(e) => {
                let now = self.memtable.schema();
                if now.version == schema.version {
                    return Err(e.into());
                }
                codec::decode(&now, &found.row.data)?
            }
        };
        Ok(RowAt {
            ts: found.ts,
            values,
        })
    }

    /// The newest live row of a key, or the one at exactly `ts`.
    pub fn get(
        &self,
        index: &str,
        key_values: &[Value],
        ts: Option<i64>,
    ) -> Result<(Version, Option<RowAt>)> {
        let (position, key) = self.key_of(index, key_values)?;
        let found = self.memtable.get(position, &key, ts, now_ms());
        let schema = self.memtable.schema();
        Ok((
            self.version_after_read(),
            found.map(|f| self.decode(&schema, f)).transpose()?,
        ))
    }

    /// A page of the live rows of a key with `min_ts <= ts <= max_ts`, newest first,
    /// resuming after the cursor `after` (empty: from the newest). `convert` makes each
    /// row into what the caller sends and weighs it against `limit.bytes`.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_page<T>(
        &self,
        index: &str,
        key_values: &[Value],
        max_ts: Option<i64>,
        min_ts: Option<i64>,
        after: &[u8],
        limit: PageLimit,
        mut convert: impl FnMut(RowAt) -> (T, usize),
    ) -> Result<(Version, Page<T>)> {
        let (position, key) = self.key_of(index, key_values)?;
        let cursor = page::decode_cursor(after)?;
        if cursor.as_of.is_some() || cursor.at.as_ref().is_some_and(|at| at.key != key) {
            return Err(StorageError::InvalidArgument(
                "the paging cursor belongs to another read".into(),
            ));
        }
        let mut page = PageBuilder::new(limit, None);
        let schema = self.memtable.schema();
        let failed = self.memtable.scan_each(
            position,
            &key,
            max_ts,
            min_ts,
            cursor.at.as_ref(),
            now_ms(),
            |entry, found| page.offer(entry, || Ok(convert(self.decode(&schema, found)?))),
        );
        failed.transpose()?;
        Ok((self.version_after_read(), page.finish()))
    }

    /// Live entries of a key, or of the whole index when `key_values` is empty.
    pub fn count(&self, index: &str, key_values: &[Value]) -> Result<(Version, u64)> {
        if key_values.is_empty() {
            let (position, _) = self
                .memtable
                .schema()
                .index(index)
                .ok_or_else(|| StorageError::UnknownIndex(index.to_string()))?;
            let count = self.memtable.count_index(position, now_ms());
            return Ok((self.version_after_read(), count));
        }
        let (position, key) = self.key_of(index, key_values)?;
        let count = self.memtable.count_key(position, &key, now_ms());
        Ok((self.version_after_read(), count))
    }

    /// A page of the partition's live rows in first-index order, resuming after the
    /// cursor `after` (empty: from the first row); `convert` as in [`Table::scan_page`].
    /// A `consistent` first page fixes the moment every later page of the read shows (the
    /// applied offset and the clock now, carried in its cursors), and returns it.
    pub fn preview_page<T>(
        &self,
        after: &[u8],
        consistent: bool,
        limit: PageLimit,
        mut convert: impl FnMut(RowAt) -> (T, usize),
    ) -> Result<(Version, Page<T>, Option<AsOf>)> {
        let cursor = page::decode_cursor(after)?;
        let as_of = match (cursor.as_of, &cursor.at) {
            (Some(as_of), _) => Some(as_of),
            (None, None) if consistent => Some(AsOf {
                offset: self.version().offset,
                time_ms: now_ms(),
            }),
            (None, Some(_)) if consistent => {
                return Err(StorageError::InvalidArgument(
                    "a consistent read goes on with the cursors it was given".into(),
                ))
            }
            (None, _) => None,
        };
        let view = match as_of {
            Some(as_of) => {
                // Rows expired since the moment stay until the read is done (or gone a
                // minute): collecting them would take rows out of the read.
                self.gc_paused_until_ms
                    .fetch_max(now_ms().saturating_add(60_000), Ordering::AcqRel);
                self.check_consistent(as_of)?;
                ReadView {
                    now_ms: as_of.time_ms,
                    max_offset: as_of.offset,
                }
            }
            None => ReadView::latest(now_ms()),
        };
        let mut page = PageBuilder::new(limit, as_of);
        let schema = self.memtable.schema();
        let failed = self
            .memtable
            .preview_each(cursor.at.as_ref(), view, |entry, found| {
                page.offer(entry, || Ok(convert(self.decode(&schema, found)?)))
            });
        failed.transpose()?;
        // Checked again after the read: a collection or a delete may have run during it.
        if let Some(as_of) = as_of {
            self.check_consistent(as_of)?;
        }
        Ok((self.version_after_read(), page.finish(), as_of))
    }

    /// Whether this replica can still show the partition as of `as_of`: it has applied
    /// that far, and no collection of expired rows and no delete since the moment took
    /// rows out of it. A read that cannot be answered whole is refused (the reader starts
    /// a new one) rather than answered short.
    fn check_consistent(&self, as_of: AsOf) -> Result<()> {
        if self.version().offset < as_of.offset {
            return Err(StorageError::Unavailable(format!(
                "this replica has not applied offset {} yet",
                as_of.offset
            )));
        }
        let lost = |why: &str| {
            Err(StorageError::InvalidArgument(format!(
                "the consistent read as of offset {} can no longer be answered whole ({why}); \
                 start it again",
                as_of.offset
            )))
        };
        let now = now_ms();
        if as_of.time_ms > now || now.saturating_sub(as_of.time_ms) > MAX_CONSISTENT_READ_MS {
            return lost("it began more than an hour ago, or in the future");
        }
        if self.rows_collected_at_ms.load(Ordering::Acquire) >= as_of.time_ms {
            return lost("expired rows were collected since, or this replica was reloaded");
        }
        if self.rows_deleted_at.load(Ordering::Acquire) > as_of.offset {
            return lost("rows were deleted since");
        }
        Ok(())
    }

    /// Snapshots the memtable at the current offset and drops the binlog segments the
    /// snapshot covers. Returns the snapshot's offset and row count.
    pub fn make_snapshot(&self) -> Result<(u64, u64)> {
        let _one_at_a_time = self.snapshot_lock.lock();
        self.making_snapshot.store(true, Ordering::Release);
        let result = self.make_snapshot_locked();
        self.making_snapshot.store(false, Ordering::Release);
        result
    }

    fn make_snapshot_locked(&self) -> Result<(u64, u64)> {
        let snapshot_dir = self.dir.join("snapshot");
        // Every entry up to `offset` is applied: they are applied under the writer lock.
        // The snapshot is of the applied (committed) entries.
        let (offset, term, sessions) = {
            let _binlog = self.writer.lock();
            let offset = self.applied_offset();
            let sessions = self.sessions.lock().to_proto(offset);
            (offset, self.term.load(Ordering::Acquire), sessions)
        };
        if self.snapshot_pauses.load(Ordering::Acquire) > 0 {
            return Err(StorageError::Unavailable(
                "snapshots are paused (a snapshot is being sent, or PauseSnapshot was called)"
                    .into(),
            ));
        }
        if offset == self.snapshot_offset.load(Ordering::Acquire) {
            if let Some(manifest) = snapshot::read_manifest(&snapshot_dir)? {
                return Ok((manifest.offset, manifest.record_count));
            }
        }
        // Rows written after `offset` are left out; rows deleted after it may be missing
        // already, and replaying the log from `offset + 1` deletes them again anyway.
        let rows = self.memtable.rows_through(offset);
        let mut history = self.history.lock().clone();
        history::truncate(&mut history, offset);
        // The schema in force at `offset`, with the TTLs now: a schema change after it is
        // still in the log, and replayed after the snapshot.
        let mut schema = self.memtable.schema_at(offset).to_proto();
        for (index, ttl) in schema.indexes.iter_mut().zip(self.memtable.ttls()) {
            index.ttl = Some(ttl.to_proto());
        }
        let manifest = snapshot::write(
            &snapshot_dir,
            offset,
            term,
            history,
            sessions,
            schema,
            &rows,
        )?;
        self.snapshot_offset.store(offset, Ordering::Release);
        // Keep every record a follower shipped to still needs (an offline one catches up
        // from a snapshot if it must).
        let shipping = self.shipping_followers();
        let needed_by_followers = self
            .quorum
            .acked()
            .into_iter()
            .filter(|(f, _)| shipping.contains(f))
            .map(|(_, acked)| acked)
            .min()
            .unwrap_or(u64::MAX);
        let removed = self
            .writer
            .lock()
            .remove_segments_through(offset.min(needed_by_followers))?;
        info!(
            tid = self.meta.tid,
            pid = self.meta.pid,
            offset,
            rows = manifest.record_count,
            segments_removed = removed,
            "snapshot made"
        );
        Ok((offset, manifest.record_count))
    }

    /// Drops expired entries. Returns how many were removed.
    pub fn gc(&self, now_ms: i64) -> u64 {
        if now_ms < self.gc_paused_until_ms.load(Ordering::Acquire) {
            return 0;
        }
        let removed = self.memtable.gc(now_ms);
        if removed > 0 {
            // Taken after the pass: a consistent read that began while it ran may have
            // lost rows to it.
            self.rows_collected_at_ms
                .fetch_max(self::now_ms(), Ordering::AcqRel);
        }
        removed
    }

    /// Why this replica's binlog refuses writes (a failed write or fsync: a full or
    /// failing disk). Such a replica serves nothing new until it is reloaded from disk.
    pub fn binlog_failure(&self) -> Option<String> {
        self.durability.failure()
    }

    pub fn status(&self) -> TableStatus {
        let version = self.version();
        let failure = self.binlog_failure();
        let (replica, fenced) = {
            let replica = self.replica.lock();
            (
                replica.state.clone(),
                replica.fenced && replica.awaiting_role,
            )
        };
        let lease_lapsed_for = (replica.role() == TableRole::Leader
            && self.mode() == ReplicationMode::Quorum)
            .then(|| self.read_lease_lapsed_for())
            .flatten();
        TableStatus {
            mode: self.meta.mode,
            followers: replica.followers,
            offline: replica.offline,
            applied_offset: self.applied_offset(),
            leader: replica.leader,
            commit_offset: self.quorum.commit(),
            ttls: self.ttls().into_iter().map(Ttl::to_proto).collect(),
            schema_version: self.memtable.schema().version,
            tid: self.meta.tid,
            pid: self.meta.pid,
            db: self.meta.db.clone(),
            name: self.meta.name.clone(),
            offset: version.offset,
            term: version.term,
            role: replica.role,
            state: if failure.is_some() {
                TableState::WriteFailed
            } else if self.making_snapshot.load(Ordering::Acquire) {
                TableState::MakingSnapshot
            } else {
                TableState::Normal
            } as i32,
            record_count: self.memtable.record_count(),
            memory_used_bytes: self.memtable.memory_used(),
            snapshot_offset: self.snapshot_offset.load(Ordering::Acquire),
            error: failure.unwrap_or_default(),
            fenced,
            lease_lapsed: lease_lapsed_for.is_some(),
            // At least 1 when lapsed: 0 with `lease_lapsed` means an older tablet.
            lease_lapsed_ms: lease_lapsed_for.map_or(0, |d| (d.as_millis() as u64).max(1)),
        }
    }

    /// Makes everything written durable and stops the binlog's flusher.
    pub fn close(&self) -> Result<()> {
        let mut binlog = self.writer.lock();
        // A closed replica follows nobody: it leaves its leader's grant first.
        self.replica.lock().leave_pair();
        binlog.close()
    }
}
