//! The tablet's journal: one log, shared by every binlog of the tablet, that makes
//! their records durable with one fsync for all of them (the `journal` fsync policy).
//!
//! A binlog under this policy hands its records to the OS as usual and then appends a
//! copy of them to the journal; a writer is acknowledged once the journal, not its
//! binlog, is fsynced. A busy tablet with many partitions therefore pays one
//! `fdatasync` per group of writes, where under `group` each dirty binlog pays its own.
//!
//! The binlogs are fsynced later: when they close, when they roll a segment, and before
//! a journal segment is deleted. After a machine crash a binlog may lack records the
//! journal holds; [`Journal::open`] writes them back into their binlogs before any
//! replica loads.
//!
//! A journal segment (`<first entry number>.jnl`) holds entries in the binlog's record
//! format (so a torn tail is found the same way), numbered from 1 in the `offset` field.
//! An entry's payload is
//!
//! ```text
//! kind u8 | id length u16 | id (the binlog's directory, relative to the data root) | body
//! ```
//!
//! where `kind` 1 carries encoded binlog records and `kind` 2 (a *reset*) says that the
//! binlog was closed with everything before durable in its own files: its records
//! before the reset are never written back, so a binlog cut back or replaced at the same
//! place after it closed cannot receive records of the one before.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tracing::{error, info, warn};

use super::binlog::{self, Binlog, BinlogOptions, FsyncPolicy};
use super::crashsafe;
use super::durability::Durability;
use super::error::{io_error, Result, StorageError};

const SEGMENT_SUFFIX: &str = ".jnl";
const KIND_RECORDS: u8 = 1;
const KIND_RESET: u8 = 2;
/// Where the journal lives under the data root (not a replica directory name, so the
/// catalog passes it by).
pub const JOURNAL_DIR: &str = "journal";
/// A replica directory holding this file lacks records the journal could not give back:
/// it is refused at load, with the file's text as the reason, until an operator deals
/// with it.
pub const RESTORE_FAILED: &str = "journal-restore-failed";
/// The file in a journaled binlog's directory holding its incarnation token.
const INCARNATION_FILE: &str = "incarnation";

/// Handle to the tablet's journal; clones share it. The flusher thread stops once the
/// last handle is gone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    _handle: Arc<Handle>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

struct Shared {
    /// The data root: binlog ids are their directories relative to it.
    root: PathBuf,
    dir: PathBuf,
    segment_size: u64,
    state: Mutex<State>,
    /// The flusher waits here for work.
    work: Condvar,
    /// Waiters for an entry's fsync (resets) wait here.
    synced: Condvar,
}

struct State {
    file: Arc<File>,
    file_len: u64,
    /// Number of the current segment, counted from 1 (binlogs remember the last one they
    /// were written in, see [`Durability::journal_segment`]).
    segment_number: u64,
    segment_path: PathBuf,
    next_entry: u64,
    written: u64,
    synced: u64,
    /// Binlog records waiting for the next fsync: (their binlog, its last offset).
    pending: Vec<(Arc<Durability>, u64)>,
    /// The binlogs written to in the current segment, to fsync before it may be deleted
    /// (held even once closed: a binlog whose close failed must keep its segments).
    segment_binlogs: Vec<Arc<Durability>>,
    /// Segments rolled away from and not fsynced yet, oldest first: the flusher fsyncs
    /// them (it alone fsyncs the journal, see `sync_and_tell`), then retires them.
    rolled: Vec<Rolled>,
    /// A segment could not be retired: no later one may be deleted before it (a later
    /// segment can hold the reset that keeps the earlier one's records out).
    retire_blocked: bool,
    failure: Option<String>,
    closed: bool,
}

struct Rolled {
    file: Arc<File>,
    path: PathBuf,
    /// Binlogs written in it, to fsync before it may be deleted.
    binlogs: Vec<Arc<Durability>>,
}

struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.work.notify_all();
    }
}

/// What [`Journal::open`] found and wrote back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalReport {
    pub entries: u64,
    /// Records written back into binlogs that lacked them.
    pub records_restored: u64,
    /// Binlogs that received records.
    pub binlogs_restored: u64,
    /// Binlogs named by the journal that are gone (their replica was dropped, or a
    /// snapshot replaced it).
    pub binlogs_gone: u64,
    /// Binlogs that could not take their records (named in the log; the journal's
    /// segments are then kept aside).
    pub binlogs_failed: u64,
    /// The journal ended before its last segment did (see `restore`): its segments are
    /// kept aside too.
    pub ended_early: bool,
    /// Bytes of a torn final entry that were ignored.
    pub torn_bytes: u64,
}

impl Journal {
    /// Opens the journal under `root`, first writing back into their binlogs any records
    /// the journal holds and they lack (after a machine crash), then starting afresh.
    /// Must run before any binlog under `root` is opened.
    pub fn open(root: &Path, segment_size: u64) -> Result<(Journal, JournalReport)> {
        let report = recover(root, segment_size)?;
        let dir = root.join(JOURNAL_DIR);
        let segment_path = dir.join(format!("{:020}{SEGMENT_SUFFIX}", 1));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&segment_path)
            .map_err(io_error(&segment_path))?;
        crashsafe::fsync_dir(&dir)?;
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            dir,
            segment_size: segment_size.max(1 << 16),
            state: Mutex::new(State {
                file: Arc::new(file),
                file_len: 0,
                segment_number: 1,
                segment_path,
                next_entry: 1,
                written: 0,
                synced: 0,
                pending: Vec::new(),
                segment_binlogs: Vec::new(),
                rolled: Vec::new(),
                retire_blocked: false,
                failure: None,
                closed: false,
            }),
            work: Condvar::new(),
            synced: Condvar::new(),
        });
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal-flush".into())
                .spawn(move || run_flusher(&shared))
                .map_err(|e| {
                    StorageError::Failed(format!("cannot start the journal flusher: {e}"))
                })?;
        }
        Ok((
            Journal {
                _handle: Arc::new(Handle(shared.clone())),
                shared,
            },
            report,
        ))
    }

    /// The id under which the binlog in `dir` (which exists) is journaled: its place
    /// under the data root and its incarnation, a token made when the binlog is first
    /// journaled. A binlog made anew at the same place (a snapshot installed over the
    /// replica) has a new token, so the records of the one before never reach it.
    pub(super) fn binlog_id(&self, dir: &Path) -> Result<String> {
        let token_path = dir.join(INCARNATION_FILE);
        let token = match fs::read_to_string(&token_path) {
            Ok(token) => token.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = new_token();
                crashsafe::write_file(&token_path, token.as_bytes())?;
                // The binlog directory's own entry too: without it the token (and the
                // binlog) could vanish in a crash while the journal names them.
                crashsafe::fsync_parent(dir)?;
                token
            }
            Err(e) => return Err(io_error(&token_path)(e)),
        };
        let place = dir.strip_prefix(&self.shared.root).unwrap_or(dir);
        Ok(format!("{}#{token}", place.to_string_lossy()))
    }

    /// Appends records already written to binlog `id`, ending at offset `last`; once the
    /// journal is fsynced, `durability` counts them durable.
    pub(super) fn append_records(
        &self,
        id: &str,
        records: &[u8],
        durability: &Arc<Durability>,
        last: u64,
    ) -> Result<()> {
        let mut state = self.shared.state.lock();
        self.write_entry(&mut state, KIND_RECORDS, id, records)?;
        let segment = state.segment_number;
        if durability.journal_segment.swap(segment, Ordering::AcqRel) != segment {
            state.segment_binlogs.push(durability.clone());
        }
        state.pending.push((durability.clone(), last));
        drop(state);
        self.shared.work.notify_one();
        Ok(())
    }

    /// Records that binlog `id` closed with all its records durable in its own files,
    /// and waits until that is durable: none of its earlier entries is written back.
    pub(super) fn reset(&self, id: &str) -> Result<()> {
        let mut state = self.shared.state.lock();
        let entry = self.write_entry(&mut state, KIND_RESET, id, &[])?;
        self.shared.work.notify_one();
        loop {
            if let Some(failure) = &state.failure {
                return Err(StorageError::Failed(failure.clone()));
            }
            if state.synced >= entry {
                return Ok(());
            }
            self.shared.synced.wait(&mut state);
        }
    }

    /// Writes one entry to the current segment (rolling first if it is full); returns its
    /// number.
    fn write_entry(&self, state: &mut State, kind: u8, id: &str, body: &[u8]) -> Result<u64> {
        if let Some(failure) = &state.failure {
            return Err(StorageError::Failed(format!("journal: {failure}")));
        }
        let id_len = u16::try_from(id.len())
            .map_err(|_| StorageError::InvalidArgument(format!("binlog id too long: {id}")))?;
        let mut entry = Vec::new();
        let number = state.next_entry;
        let head = [kind, id_len.to_le_bytes()[0], id_len.to_le_bytes()[1]];
        binlog::encode_record_parts(0, number, &[&head, id.as_bytes(), body], &mut entry);
        if state.file_len > 0 && state.file_len + entry.len() as u64 > self.shared.segment_size {
            self.roll(state, number)?;
        }
        if let Err(e) = (&*state.file).write_all(&entry) {
            // The file's tail is of unknown content now: nothing more may be counted
            // durable through it.
            let reason = format!("write to {} failed: {e}", state.segment_path.display());
            fail(state, &reason);
            self.shared.synced.notify_all();
            return Err(StorageError::Failed(format!("journal: {reason}")));
        }
        state.file_len += entry.len() as u64;
        state.next_entry += 1;
        state.written = number;
        Ok(number)
    }

    /// Closes the current segment (durably: its entries are then all synced) and starts
    /// the next at entry `first`.
    fn roll(&self, state: &mut State, first: u64) -> Result<()> {
        let path = self.shared.dir.join(format!("{first:020}{SEGMENT_SUFFIX}"));
        let opened = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))
            .and_then(|file| crashsafe::fsync_dir(&self.shared.dir).map(|()| file));
        let file = match opened {
            Ok(file) => file,
            Err(e) => {
                fail(state, &format!("rolling the journal: {e}"));
                self.shared.synced.notify_all();
                return Err(StorageError::Failed(format!("journal: {e}")));
            }
        };
        // The old segment's entries are acknowledged once the flusher has fsynced it.
        let old = Rolled {
            file: std::mem::replace(&mut state.file, Arc::new(file)),
            path: std::mem::replace(&mut state.segment_path, path),
            binlogs: std::mem::take(&mut state.segment_binlogs),
        };
        state.rolled.push(old);
        state.file_len = 0;
        state.segment_number += 1;
        self.shared.work.notify_one();
        Ok(())
    }
}

/// A token no earlier incarnation of a binlog at the same place has had: the time in
/// nanoseconds, made unique within the process by a counter (two incarnations at one
/// place are made one after the other, never in the same nanosecond and process).
fn new_token() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{count:x}")
}

fn fail(state: &mut State, reason: &str) {
    state.failure.get_or_insert_with(|| reason.to_string());
    for (durability, _) in state.pending.drain(..) {
        durability.fail(format!("journal: {reason}"));
    }
}

/// The journal's group commit: fsyncs what is written (segments rolled away from first),
/// tells the binlogs, and retires the rolled segments once their binlogs are fsynced.
fn run_flusher(shared: &Shared) {
    loop {
        let mut state = shared.state.lock();
        while state.written == state.synced && state.rolled.is_empty() && !state.closed {
            shared.work.wait(&mut state);
        }
        if state.closed && state.written == state.synced && state.rolled.is_empty() {
            return;
        }
        let target = state.written;
        let waiting = std::mem::take(&mut state.pending);
        let rolled = std::mem::take(&mut state.rolled);
        let current = (state.file.clone(), state.segment_path.clone());
        drop(state);

        if sync_and_tell(shared, &rolled, &current, target, waiting) {
            for segment in rolled {
                retire(shared, segment);
            }
        }
    }
}

/// Fsyncs the rolled segments and the current one, then acknowledges `waiting` (outside
/// the journal's lock, so appends go on meanwhile). Only this thread fsyncs the journal:
/// a failed writeback is reported to one fsync only, so two at once could see one fail
/// and the other succeed. Returns whether all went well.
fn sync_and_tell(
    shared: &Shared,
    rolled: &[Rolled],
    current: &(Arc<File>, PathBuf),
    target: u64,
    waiting: Vec<(Arc<Durability>, u64)>,
) -> bool {
    let files = rolled
        .iter()
        .map(|r| (&r.file, &r.path))
        .chain(std::iter::once((&current.0, &current.1)));
    let mut result = Ok(());
    for (file, path) in files {
        let started = std::time::Instant::now();
        let synced = file.sync_data();
        crate::metrics::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
        if let Err(e) = synced {
            result = Err(format!("fsync of {} failed: {e}", path.display()));
            break;
        }
    }
    let mut state = shared.state.lock();
    if let (Ok(()), Some(failure)) = (&result, &state.failure) {
        // Failed meanwhile (a write): nothing more is acknowledged.
        result = Err(failure.clone());
    }
    match result {
        Ok(()) => {
            state.synced = state.synced.max(target);
            drop(state);
            shared.synced.notify_all();
            for (durability, last) in waiting {
                durability.journaled(last);
            }
            true
        }
        Err(reason) => {
            for (durability, _) in waiting {
                durability.fail(format!("journal: {reason}"));
            }
            fail(&mut state, &reason);
            // Nothing more can be synced: stop waiting for it.
            state.synced = state.written;
            drop(state);
            shared.synced.notify_all();
            false
        }
    }
}

/// Deletes a rolled segment once every binlog written in it is fsynced.
fn retire(shared: &Shared, segment: Rolled) {
    {
        let mut state = shared.state.lock();
        if state.retire_blocked {
            return;
        }
        if let Some(failure) = state.failure.clone() {
            state.retire_blocked = true;
            drop(state);
            error!(segment = %segment.path.display(), failure, "the journal failed: its segments are kept");
            return;
        }
    }
    // A binlog that failed refuses `sync_file`: its records may be only here.
    let synced = segment
        .binlogs
        .iter()
        .try_for_each(|durability| durability.sync_file());
    let removed = synced.and_then(|()| {
        fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
        crashsafe::fsync_dir(&shared.dir)
    });
    if let Err(e) = removed {
        // Kept: it is read back at the next start. Later segments are kept too.
        error!(segment = %segment.path.display(), error = %e, "cannot retire a journal segment");
        shared.state.lock().retire_blocked = true;
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    binlog::numbered_files(dir, SEGMENT_SUFFIX)
}

/// Writes back into their binlogs the records a journal left under `root` holds and they
/// lack, then removes the journal's segments. Runs at every start, whatever the fsync
/// policy now, so that a tablet moved off `journal` after a crash loses nothing (and a
/// later move back does not find stale records). A binlog that cannot take its records
/// is named in the log and the segments are kept aside in `journal.kept-<ms>` for the
/// operator; the other binlogs are restored.
pub fn recover(root: &Path, segment_size: u64) -> Result<JournalReport> {
    let dir = root.join(JOURNAL_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        crashsafe::fsync_dir(root)?;
    }
    let segments = list_segments(&dir)?;
    let report = restore(root, &segments, segment_size)?;
    // Every binlog now holds (durably) what the journal held: the old segments can go,
    // oldest first (see `retire_blocked`).
    if report.binlogs_failed == 0 && !report.ended_early {
        // Each removal durable before the next: a later segment may hold the reset that
        // keeps an earlier one's records out, so it must never outlive it.
        for (_, path) in &segments {
            fs::remove_file(path).map_err(io_error(path))?;
            crashsafe::fsync_dir(&dir)?;
        }
    } else {
        let kept = root.join(format!("{JOURNAL_DIR}.kept-{}", super::table::now_ms()));
        fs::create_dir_all(&kept).map_err(io_error(&kept))?;
        crashsafe::fsync_dir(root)?;
        // Oldest first, each move durable before the next, as when deleting.
        for (_, path) in &segments {
            let target = kept.join(path.file_name().unwrap_or_default());
            fs::rename(path, &target).map_err(io_error(path))?;
            crashsafe::fsync_dir(&kept)?;
            crashsafe::fsync_dir(&dir)?;
        }
        error!(kept = %kept.display(), failed = report.binlogs_failed, ended_early = report.ended_early,
            "the journal's segments are kept for the operator");
    }
    crashsafe::fsync_dir(&dir)?;
    if report.entries > 0 {
        info!(
            entries = report.entries,
            records_restored = report.records_restored,
            binlogs_restored = report.binlogs_restored,
            binlogs_gone = report.binlogs_gone,
            binlogs_failed = report.binlogs_failed,
            torn_bytes = report.torn_bytes,
            "journal read back"
        );
    }
    Ok(report)
}

/// Reads every entry and writes back into each binlog the records it lacks.
fn restore(root: &Path, segments: &[(u64, PathBuf)], segment_size: u64) -> Result<JournalReport> {
    let mut report = JournalReport::default();
    // Per binlog, the record bodies after its last reset, in order.
    let mut bodies: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut expected: Option<u64> = None;
    for (i, (first, path)) in segments.iter().enumerate() {
        let bytes = fs::read(path).map_err(io_error(path))?;
        let is_last = i + 1 == segments.len();
        // An entry that decodes but makes no sense: damage, never the journal's end.
        let mut nonsense = false;
        // The segment's first entry is not the one due: the segment before ended short.
        let mut short_before = false;
        let mut first_in_segment = true;
        let scanned = binlog::scan_buffer(&bytes, *first, true, |record| {
            let starts_segment = std::mem::replace(&mut first_in_segment, false);
            if starts_segment && record.offset != *first {
                nonsense = true;
                return Err(format!(
                    "the segment's first entry is {}, its name says {first}",
                    record.offset
                ));
            }
            if let Some(want) = expected {
                if record.offset != want {
                    // Within a segment entries are written in order to a fresh file: a
                    // wrong number there is damage, not a power loss.
                    nonsense = !starts_segment;
                    short_before = starts_segment;
                    return Err(format!(
                        "entry {} where entry {want} was due",
                        record.offset
                    ));
                }
            }
            let entry = split_entry(record.payload);
            nonsense = entry.is_err();
            let (kind, id, body) = entry?;
            match kind {
                KIND_RECORDS => bodies.entry(id).or_default().push(body.to_vec()),
                KIND_RESET => {
                    bodies.remove(&id);
                }
                other => {
                    nonsense = true;
                    return Err(format!("unknown entry kind {other}"));
                }
            }
            expected = Some(record.offset + 1);
            report.entries += 1;
            Ok(())
        });
        // Where the journal ends: a torn or bad entry, or a missing one. The flusher
        // fsyncs a segment whole, and every segment before it, before it acknowledges
        // anything in it, so no entry from there on was acknowledged; the OS may have
        // written back later pages or a later segment before an earlier one.
        let end = match scanned {
            Ok(0) => continue,
            Ok(torn) => (bytes.len() as u64 - torn, "a torn entry".to_string()),
            Err((position, reason)) if !nonsense => (position, reason),
            Err((position, reason)) => {
                return Err(StorageError::Corruption {
                    file: path.clone(),
                    position,
                    reason,
                })
            }
        };
        report.torn_bytes += bytes.len() as u64 - end.0;
        if is_last && !short_before {
            warn!(segment = %path.display(), position = end.0, reason = end.1,
                "the journal ends in entries never acknowledged; they are left out");
        } else {
            // Normal after a power loss between a roll and the flusher's fsync of the
            // segment rolled away from; but it is also what a damaged segment would
            // look like, so the segments are kept for the operator.
            error!(segment = %path.display(), position = end.0, reason = end.1,
                later_segments = segments.len() - i - 1,
                "the journal ends before its last segment: entries from here on are left out (never acknowledged, if a power loss cut them)");
            report.ended_early = true;
        }
        break;
    }
    for (id, bodies) in bodies {
        let (dir, token) = binlog_dir(root, &id)?;
        let restored = match fs::read_to_string(dir.join(INCARNATION_FILE)) {
            Ok(current) if current.trim() == token => {
                restore_binlog(&dir, &bodies, segment_size, !report.ended_early)
            }
            // Dropped, or replaced by another incarnation (a snapshot installed over it).
            Ok(_) => {
                report.binlogs_gone += 1;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.binlogs_gone += 1;
                continue;
            }
            Err(e) => Err(io_error(&dir.join(INCARNATION_FILE))(e)),
        };
        let restored = match restored {
            Ok(restored) => restored,
            Err(e) => {
                error!(binlog = %dir.display(), error = %e,
                    "cannot write back the journal's records into this binlog");
                report.binlogs_failed += 1;
                // It may lack acknowledged records: it must not load and serve as if
                // whole (the catalog refuses a replica with this file).
                if let Some(replica) = dir.parent() {
                    let why = format!(
                        "the journal's records could not be written back into its binlog ({e}); they are kept in journal.kept-*"
                    );
                    crashsafe::write_file(&replica.join(RESTORE_FAILED), why.as_bytes())?;
                }
                continue;
            }
        };
        if restored > 0 {
            warn!(binlog = %dir.display(), records = restored,
                "records lost from the binlog were written back from the journal");
            report.records_restored += restored;
            report.binlogs_restored += 1;
        }
    }
    Ok(report)
}

fn split_entry(payload: &[u8]) -> std::result::Result<(u8, String, &[u8]), String> {
    if payload.len() < 3 {
        return Err("journal entry too short".into());
    }
    let id_len = u16::from_le_bytes([payload[1], payload[2]]) as usize;
    let Some(id) = payload.get(3..3 + id_len) else {
        return Err("journal entry's id runs past its end".into());
    };
    let id = String::from_utf8(id.to_vec()).map_err(|_| "journal entry's id is not UTF-8")?;
    Ok((payload[0], id, &payload[3 + id_len..]))
}

/// The directory and incarnation of binlog `id`; the directory must be under `root`.
fn binlog_dir<'a>(root: &Path, id: &'a str) -> Result<(PathBuf, &'a str)> {
    let Some((place, token)) = id.rsplit_once('#') else {
        return Err(StorageError::Corruption {
            file: root.join(JOURNAL_DIR),
            position: 0,
            reason: format!("journal names binlog `{id}` without its incarnation"),
        });
    };
    let relative = Path::new(place);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(StorageError::Corruption {
            file: root.join(JOURNAL_DIR),
            position: 0,
            reason: format!("journal names binlog `{id}` outside the data directory"),
        });
    }
    Ok((root.join(relative), token))
}

/// Writes the records of `bodies` (the journal's copy of the binlog in `dir`, from some
/// offset on) into that binlog again, in place of what it holds from that offset on
/// (if `journal_whole`; else only after its last good record); returns how many of
/// them it lacked. A record that would leave a gap is corruption.
fn restore_binlog(
    dir: &Path,
    bodies: &[Vec<u8>],
    segment_size: u64,
    journal_whole: bool,
) -> Result<u64> {
    let mut records = Vec::new();
    for body in bodies {
        binlog::scan_buffer(body, 0, false, |record| {
            records.push((record.term, record.offset, record.payload.to_vec()));
            Ok(())
        })
        .map_err(|(position, reason)| StorageError::Corruption {
            file: dir.to_path_buf(),
            position,
            reason: format!("journal copy of its records: {reason}"),
        })?;
    }
    let Some(&(_, first_journaled, _)) = records.first() else {
        return Ok(0);
    };
    // Where the binlog's last segment stops holding good records in order.
    let good_end = match binlog::last_segment_prefix(dir)? {
        Some((path, good_len, next)) => {
            if first_journaled > next {
                return Err(StorageError::Corruption {
                    file: path,
                    position: good_len,
                    reason: format!(
                        "the binlog's good records end before offset {next} and the journal's begin at {first_journaled}: records are missing from both"
                    ),
                });
            }
            next
        }
        None => first_journaled,
    };
    // The journal holds every record of this binlog from `first_journaled` on. They are
    // all written again, whatever the binlog's files show: the OS may have written back
    // a later page and not an earlier one (a hole), and after a failed writeback the
    // page cache may still show records that never reached the disk.
    if !binlog::holds_through(dir, first_journaled - 1)? {
        return Err(StorageError::Corruption {
            file: dir.to_path_buf(),
            position: 0,
            reason: format!(
                "the binlog ends before offset {} and the journal's copy begins at {first_journaled}: records are missing from both",
                first_journaled - 1
            ),
        });
    }
    // Unless the journal ended early: it may be damaged rather than cut by a power loss,
    // and then the binlog's good records are worth more than its missing copy of them.
    let keep_through = if journal_whole {
        first_journaled - 1
    } else {
        good_end - 1
    };
    binlog::truncate_after(dir, keep_through)?;
    let start = first_journaled.max(binlog::first_segment_start(dir)?.unwrap_or(first_journaled));
    let options = BinlogOptions {
        fsync: FsyncPolicy::None,
        segment_size,
        ..BinlogOptions::default()
    };
    let (mut log, _) = Binlog::open(dir, options, start, |_| Ok(()))?;
    let mut missing = 0;
    for (term, offset, payload) in records {
        let last = log.last_offset();
        if offset <= last {
            continue;
        }
        if offset != last + 1 {
            return Err(StorageError::Corruption {
                file: dir.to_path_buf(),
                position: 0,
                reason: format!(
                    "the journal holds offset {offset} but the binlog ends at {last}: records are missing from both"
                ),
            });
        }
        log.append_at(term, offset, &payload)?;
        if offset >= good_end {
            missing += 1;
        }
    }
    log.close()?;
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const PAYLOAD: &[u8] = b"0123456789abcdef";
    const RECORD_LEN: u64 = (binlog::RECORD_HEADER_LEN + PAYLOAD.len()) as u64;

    fn journaled(journal: &Journal) -> BinlogOptions {
        BinlogOptions {
            fsync: FsyncPolicy::Journal,
            journal: Some(journal.clone()),
            ..BinlogOptions::default()
        }
    }

    /// Appends `count` records in `term`, waits until they are acknowledged durable, and
    /// returns the binlog still open.
    fn write_acknowledged(log: &mut Binlog, term: u64, count: u64) {
        let mut last = 0;
        for _ in 0..count {
            last = log.append(term, PAYLOAD).unwrap();
        }
        log.durability().wait(last).unwrap();
    }

    /// What a machine crash does to a binlog that was never fsynced after record
    /// `keep`: the page cache holding the rest is gone.
    fn lose_unsynced_records(dir: &Path, keep: u64) {
        let segment = dir.join(format!("{:020}.log", 1));
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(keep * RECORD_LEN).unwrap();
    }

    /// A journal of three entries (three acknowledged records of the binlog in `dir`),
    /// left as a crash leaves it: its segment, that segment's bytes and one entry's
    /// length.
    fn three_entries(root: &Path, dir: &Path) -> (PathBuf, Vec<u8>, usize) {
        let (journal, _) = Journal::open(root, 1 << 20).unwrap();
        let (mut log, _) = Binlog::open(dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 1, 3);
        std::mem::forget(log);
        drop(journal);
        let segment = root.join(JOURNAL_DIR).join(format!("{:020}.jnl", 1));
        let bytes = fs::read(&segment).unwrap();
        let entry_len =
            binlog::RECORD_HEADER_LEN + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        (segment, bytes, entry_len)
    }

    /// Writes the third of `bytes`' entries as a segment of its own, as a roll after
    /// the second would have.
    fn move_third_entry_to_its_own_segment(first: &Path, bytes: &[u8], entry_len: usize) {
        let third = first.with_file_name(format!("{:020}.jnl", 3));
        fs::write(third, &bytes[2 * entry_len..]).unwrap();
    }

    /// The directories the journal's segments were kept aside in.
    fn kept_dirs(root: &Path) -> Vec<PathBuf> {
        fs::read_dir(root)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("journal.kept-"))
            .map(|e| e.path())
            .collect()
    }

    fn records(dir: &Path) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        binlog::scan_records(dir, |r| out.push((r.term, r.offset))).unwrap();
        out
    }

    #[test]
    fn records_acknowledged_through_the_journal_survive_a_machine_crash() {
        let root = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        let dirs: Vec<PathBuf> = (0..3)
            .map(|p| root.path().join(format!("1_{p}/binlog")))
            .collect();
        for dir in &dirs {
            let (mut log, _) = Binlog::open(dir, journaled(&journal), 1, |_| Ok(())).unwrap();
            write_acknowledged(&mut log, 1, 20);
            // A crash: the binlog is never closed (closing would fsync it).
            std::mem::forget(log);
        }
        drop(journal);
        for dir in &dirs {
            lose_unsynced_records(dir, 7);
            assert_eq!(records(dir).len(), 7, "the crash took 13 records");
        }

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!(report.records_restored, 3 * 13);
        assert_eq!(report.binlogs_restored, 3);
        for dir in &dirs {
            let expected: Vec<(u64, u64)> = (1..=20).map(|o| (1, o)).collect();
            assert_eq!(records(dir), expected, "{}", dir.display());
        }
    }

    /// The OS wrote back a later page of the binlog but not an earlier one: a hole of
    /// zeros with good records after it. The journal holds them all, so the segment is
    /// cut at the hole and written again.
    #[test]
    fn a_hole_left_by_out_of_order_writeback_is_filled_from_the_journal() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("6_0/binlog");
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        let (mut log, _) = Binlog::open(&dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 3, 20);
        std::mem::forget(log);
        drop(journal);
        let segment = dir.join(format!("{:020}.log", 1));
        let mut bytes = fs::read(&segment).unwrap();
        let hole = (7 * RECORD_LEN) as usize..(10 * RECORD_LEN) as usize;
        bytes[hole].fill(0);
        fs::write(&segment, &bytes).unwrap();
        assert!(
            binlog::scan_records(&dir, |_| ()).is_err(),
            "the hole is damage"
        );

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!(report.records_restored, 13);
        let expected: Vec<(u64, u64)> = (1..=20).map(|o| (3, o)).collect();
        assert_eq!(records(&dir), expected);
    }

    /// A binlog closed, cut back (a diverged follower) and written again in a new term:
    /// the journal gives back the new term's records, never the cut ones.
    #[test]
    fn a_binlog_cut_back_after_closing_never_gets_the_cut_records_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("2_0/binlog");
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        let (mut log, _) = Binlog::open(&dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 1, 10);
        log.close().unwrap();
        drop(log);
        binlog::truncate_after(&dir, 5).unwrap();
        let (mut log, _) = Binlog::open(&dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 2, 3);
        std::mem::forget(log);
        drop(journal);
        lose_unsynced_records(&dir, 5);

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!(report.records_restored, 3);
        let expected: Vec<(u64, u64)> = (1..=5)
            .map(|o| (1, o))
            .chain((6..=8).map(|o| (2, o)))
            .collect();
        assert_eq!(records(&dir), expected);
    }

    #[test]
    fn a_dropped_replica_is_not_brought_back() {
        let root = tempfile::tempdir().unwrap();
        let replica = root.path().join("3_0");
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        let (mut log, _) =
            Binlog::open(&replica.join("binlog"), journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 1, 4);
        std::mem::forget(log);
        drop(journal);
        fs::remove_dir_all(&replica).unwrap();

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!((report.binlogs_gone, report.records_restored), (1, 0));
        assert!(!replica.exists());
    }

    #[test]
    fn a_torn_last_entry_is_left_out() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("4_0/binlog");
        let (segment, mut bytes, _) = three_entries(root.path(), &dir);
        // A write that never finished: the start of a fourth entry's header.
        bytes.extend_from_within(..10);
        fs::write(&segment, &bytes).unwrap();
        lose_unsynced_records(&dir, 0);
        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!(report.torn_bytes, 10);
        assert_eq!(report.records_restored, 3);
    }

    /// A power loss between a roll and the flusher's fsync of the segment rolled away
    /// from can leave that segment torn with a later one on disk. Nothing from the tear
    /// on was acknowledged: the journal is read up to it, the tablet starts, and the
    /// segments are kept aside (damage would look the same); the binlog keeps its good
    /// records beyond the journal's end.
    #[test]
    fn a_journal_torn_before_its_last_segment_is_read_up_to_the_tear_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("4_1/binlog");
        // Entries 1..=2 in one segment, 3 in the next, as a roll would leave them; then
        // entry 2 damaged.
        let (first, bytes, entry_len) = three_entries(root.path(), &dir);
        let mut head = bytes[..2 * entry_len].to_vec();
        move_third_entry_to_its_own_segment(&first, &bytes, entry_len);
        head[entry_len + binlog::RECORD_HEADER_LEN + 5] ^= 0xff;
        fs::write(&first, &head).unwrap();

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert!(report.ended_early);
        assert_eq!(report.entries, 1);
        let expected: Vec<(u64, u64)> = (1..=3).map(|o| (1, o)).collect();
        assert_eq!(records(&dir), expected, "the binlog keeps its good records");
        assert_eq!(
            kept_dirs(root.path()).len(),
            1,
            "the segments are kept aside"
        );
    }

    /// The same with the segment rolled away from cut short at an entry's end (entry 2
    /// lost whole): the next segment's first entry is not the one due.
    #[test]
    fn a_journal_segment_cut_short_before_the_last_is_read_up_to_the_cut_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("4_2/binlog");
        let (first, bytes, entry_len) = three_entries(root.path(), &dir);
        move_third_entry_to_its_own_segment(&first, &bytes, entry_len);
        fs::write(&first, &bytes[..entry_len]).unwrap();

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert!(report.ended_early);
        assert_eq!(report.entries, 1);
        let expected: Vec<(u64, u64)> = (1..=3).map(|o| (1, o)).collect();
        assert_eq!(records(&dir), expected, "the binlog keeps its good records");
        assert_eq!(
            kept_dirs(root.path()).len(),
            1,
            "the segments are kept aside"
        );
    }

    /// A binlog begun afresh after a snapshot newer than its records (a segment at the
    /// snapshot's next offset, older ones ending earlier) is no gap.
    #[test]
    fn a_binlog_begun_afresh_after_a_snapshot_is_restored() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("9_0/binlog");
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        let (mut log, _) = Binlog::open(&dir, BinlogOptions::default(), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 1, 3);
        log.close().unwrap();
        drop(log);
        let (mut log, _) = Binlog::open(&dir, journaled(&journal), 10, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 2, 2);
        std::mem::forget(log);
        drop(journal);
        let fresh = dir.join(format!("{:020}.log", 10));
        fs::File::options()
            .write(true)
            .open(&fresh)
            .unwrap()
            .set_len(0)
            .unwrap();

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!((report.binlogs_failed, report.records_restored), (0, 2));
        let expected = vec![(1, 1), (1, 2), (1, 3), (2, 10), (2, 11)];
        assert_eq!(records(&dir), expected);
    }

    /// A replica replaced by a snapshot at the same place while its old binlog's
    /// records were still only journaled (its close failed): the new binlog is another
    /// incarnation and gets none of them.
    #[test]
    fn a_replaced_binlog_gets_none_of_its_predecessors_records() {
        let root = tempfile::tempdir().unwrap();
        let replica = root.path().join("7_0");
        let dir = replica.join("binlog");
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        let (mut old, _) = Binlog::open(&dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut old, 1, 10);
        std::mem::forget(old);
        fs::rename(&replica, root.path().join("recycled")).unwrap();
        let (mut new, _) = Binlog::open(&dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut new, 2, 2);
        std::mem::forget(new);
        drop(journal);
        lose_unsynced_records(&dir, 0);

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!(report.binlogs_gone, 1, "the old incarnation");
        assert_eq!(records(&dir), vec![(2, 1), (2, 2)]);
    }

    /// A binlog that cannot take its records back (here the records just before the
    /// journal's copy begins are damaged) is marked so that its replica is refused at
    /// load, and the journal's segments are kept aside instead of deleted.
    #[test]
    fn a_binlog_that_cannot_take_its_records_is_marked_and_the_journal_kept() {
        let root = tempfile::tempdir().unwrap();
        let replica = root.path().join("8_0");
        let dir = replica.join("binlog");
        let (journal, _) = Journal::open(root.path(), 1 << 20).unwrap();
        // Records 1..=5 fill the first segment before the binlog is journaled.
        let unjournaled = BinlogOptions {
            segment_size: 5 * RECORD_LEN,
            ..BinlogOptions::default()
        };
        let (mut log, _) = Binlog::open(&dir, unjournaled, 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 1, 5);
        log.close().unwrap();
        drop(log);
        let options = BinlogOptions {
            segment_size: 5 * RECORD_LEN,
            ..journaled(&journal)
        };
        let (mut log, _) = Binlog::open(&dir, options, 1, |_| Ok(())).unwrap();
        write_acknowledged(&mut log, 1, 7);
        std::mem::forget(log);
        drop(journal);
        let first = dir.join(format!("{:020}.log", 1));
        let mut bytes = fs::read(&first).unwrap();
        bytes[binlog::RECORD_HEADER_LEN + 3] ^= 0xff;
        fs::write(&first, &bytes).unwrap();

        let (_journal, report) = Journal::open(root.path(), 1 << 20).unwrap();
        assert_eq!(report.binlogs_failed, 1);
        let why = fs::read_to_string(replica.join(RESTORE_FAILED)).unwrap();
        assert!(why.contains("could not be written back"), "{why}");
        let kept = kept_dirs(root.path());
        assert_eq!(kept.len(), 1, "the journal's segments are kept aside");
        assert_eq!(fs::read_dir(&kept[0]).unwrap().count(), 1);
    }

    /// The journal does not grow without bound: a full segment is deleted once the
    /// binlogs written in it are fsynced.
    #[test]
    fn full_segments_are_retired() {
        let root = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(root.path(), 1 << 16).unwrap();
        let dir = root.path().join("5_0/binlog");
        let (mut log, _) = Binlog::open(&dir, journaled(&journal), 1, |_| Ok(())).unwrap();
        // About 15 segments' worth.
        write_acknowledged(&mut log, 1, 15 * (1 << 16) / (RECORD_LEN + 30));
        let segments = || list_segments(&root.path().join(JOURNAL_DIR)).unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while segments() > 2 {
            assert!(
                Instant::now() < deadline,
                "{} journal segments remain",
                segments()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        log.close().unwrap();
    }

    #[test]
    fn the_policy_needs_the_journal() {
        let root = tempfile::tempdir().unwrap();
        let options = BinlogOptions {
            fsync: FsyncPolicy::Journal,
            ..BinlogOptions::default()
        };
        assert!(matches!(
            Binlog::open(&root.path().join("b"), options, 1, |_| Ok(())),
            Err(StorageError::InvalidArgument(_))
        ));
        assert_eq!("journal".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Journal));
    }
}
