//! The binlog of a partition replica: an append-only sequence of segment files.
//!
//! A segment is named after the offset of its first record (`00000000000000000001.log`)
//! and holds records
//!
//! ```text
//! len u32 | crc32c u32 | term u64 | offset u64 | payload (len bytes)
//! ```
//!
//! all little-endian; the CRC covers term, offset and payload and is checked on every
//! read. Offsets are contiguous from 1. A new segment starts once the current one would
//! exceed the configured size; the old one is fsynced first, so only the last segment can
//! end in a torn record.
//!
//! Durability follows the [`FsyncPolicy`]. `append` hands back the offset; the caller
//! then waits on [`Durability::wait`] outside its locks, which is what lets `group`
//! cover many writers with one fsync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::crashsafe;
pub use super::durability::{Durability, FlushPool};
use super::error::{io_error, Result, StorageError};
use super::journal::Journal;

pub const RECORD_HEADER_LEN: usize = 24;
/// Records larger than this are taken for garbage when reading (a row is at most a few
/// tens of MiB); it bounds what a damaged length field can make us allocate.
pub const MAX_RECORD_LEN: u32 = 1 << 30;
const SEGMENT_SUFFIX: &str = ".log";

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync after every append, before it is acknowledged.
    EveryWrite,
    /// Group commit: a flusher thread fsyncs whatever has been appended; writes that
    /// arrive during one fsync are covered together by the next. Writers are
    /// acknowledged once their record is covered by an fsync. An optional interval makes
    /// the flusher wait to gather more (fewer fsyncs, more latency).
    #[default]
    Group,
    /// Never fsync explicitly (the OS writes back when it likes). Acknowledged once the
    /// record is in the page cache: survives a process crash, not a machine crash.
    None,
    /// Group commit through the tablet's journal ([`super::journal`]): records are also
    /// appended to one log shared by every binlog of the tablet, and acknowledged once
    /// that log is fsynced, so one fsync covers the writes of all its partitions. The
    /// binlogs themselves are fsynced later; a restart after a machine crash writes back
    /// from the journal what they lack.
    Journal,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "every_write" => Ok(FsyncPolicy::EveryWrite),
            "group" => Ok(FsyncPolicy::Group),
            "none" => Ok(FsyncPolicy::None),
            "journal" => Ok(FsyncPolicy::Journal),
            other => Err(format!(
                "unknown fsync policy `{other}` (expected journal, group, every_write or none)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BinlogOptions {
    pub fsync: FsyncPolicy,
    /// A segment is closed once it reaches this many bytes.
    pub segment_size: u64,
    /// `group`: the longest a record waits for others to share its fsync.
    pub group_commit_interval: Duration,
    /// `group`: fsync at once when this many records are waiting.
    pub group_commit_max_records: u64,
    /// `group`: the flusher threads, shared by every binlog given the same pool.
    pub flush_pool: FlushPool,
    /// `journal`: the tablet's journal (required by that policy).
    pub journal: Option<Journal>,
}

impl Default for BinlogOptions {
    fn default() -> Self {
        BinlogOptions {
            fsync: FsyncPolicy::Group,
            segment_size: 64 << 20,
            group_commit_interval: Duration::ZERO,
            group_commit_max_records: 256,
            flush_pool: FlushPool::default(),
            journal: None,
        }
    }
}

/// Appends one record to `out`.
pub fn encode_record(term: u64, offset: u64, payload: &[u8], out: &mut Vec<u8>) {
    encode_record_parts(term, offset, &[payload], out);
}

/// [`encode_record`] of a payload given in parts, laid end to end without copying them
/// together first.
pub(super) fn encode_record_parts(term: u64, offset: u64, parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32c::crc32c(&term.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &offset.to_le_bytes());
    for part in parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    out.reserve(RECORD_HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// One decoded record, borrowing its payload from the segment buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub term: u64,
    pub offset: u64,
    pub payload: &'a [u8],
}

/// Why the record at a position could not be read.
#[derive(Debug, PartialEq, Eq)]
enum RecordFault {
    /// Fewer bytes left than the record needs: the write of it never finished.
    Incomplete,
    /// The length field is absurd.
    BadLength(u32),
    /// The bytes are all there but the checksum does not match.
    BadChecksum,
}

/// Decodes the record at the start of `bytes`, returning it and its encoded length.
fn decode_record(bytes: &[u8]) -> std::result::Result<(Record<'_>, usize), RecordFault> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(RecordFault::Incomplete);
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let len = word(0);
    if len > MAX_RECORD_LEN {
        return Err(RecordFault::BadLength(len));
    }
    let total = RECORD_HEADER_LEN + len as usize;
    if bytes.len() < total {
        return Err(RecordFault::Incomplete);
    }
    let crc = crc32c::crc32c(&bytes[8..total]);
    if crc != word(4) {
        return Err(RecordFault::BadChecksum);
    }
    Ok((
        Record {
            term: long(8),
            offset: long(16),
            payload: &bytes[RECORD_HEADER_LEN..total],
        },
        total,
    ))
}

/// Whether the bad record at `pos` of a segment is a write that never finished (a torn
/// tail, safe to cut) rather than corruption. Only the last segment can end torn, and
/// only if nothing valid follows: the record runs past the end of the file or is
/// followed by zeros alone, and no later position holds a valid record of a later
/// offset (a damaged length field can make a record in the middle look cut short).
fn is_torn_tail(bytes: &[u8], pos: usize, fault: &RecordFault, expected: u64, last: bool) -> bool {
    if !last {
        return false;
    }
    let rest = &bytes[pos..];
    let looks_unfinished = rest.iter().all(|&b| b == 0)
        || match fault {
            RecordFault::Incomplete => true,
            RecordFault::BadChecksum => {
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                rest[RECORD_HEADER_LEN + len..].iter().all(|&b| b == 0)
            }
            RecordFault::BadLength(_) => false,
        };
    looks_unfinished && !valid_record_after(bytes, pos, expected)
}

/// Whether any position after `pos` starts a valid record with an offset above
/// `expected - 1`. Headers are screened by their offset field before the checksum is
/// computed, so the scan stays cheap.
fn valid_record_after(bytes: &[u8], pos: usize, expected: u64) -> bool {
    let limit = expected.saturating_add(bytes.len() as u64);
    (pos + 1..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1)).any(|at| {
        let offset = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().expect("8 bytes"));
        (expected..limit).contains(&offset) && decode_record(&bytes[at..]).is_ok()
    })
}

fn corruption(path: &Path, pos: usize, fault: &RecordFault) -> StorageError {
    StorageError::Corruption {
        file: path.to_path_buf(),
        position: pos as u64,
        reason: fault_reason(fault),
    }
}

fn fault_reason(fault: &RecordFault) -> String {
    match fault {
        RecordFault::Incomplete => "record is cut short".into(),
        RecordFault::BadLength(len) => format!("record length {len} is impossible"),
        RecordFault::BadChecksum => "record checksum mismatch".into(),
    }
}

/// A torn final record that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    /// Byte position the segment was truncated to.
    pub position: u64,
    pub bytes_dropped: u64,
}

/// What opening a binlog found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Offset of the last record, or `start - 1` when there is none.
    pub last_offset: u64,
    /// Term of the last record (0 when there is none).
    pub last_term: u64,
    pub records_replayed: u64,
    pub torn_tail: Option<TornTail>,
}

#[derive(Debug, Clone)]
struct Segment {
    first_offset: u64,
    path: PathBuf,
}

fn segment_path(dir: &Path, first_offset: u64) -> PathBuf {
    dir.join(format!("{first_offset:020}{SEGMENT_SUFFIX}"))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    Ok(numbered_files(dir, SEGMENT_SUFFIX)?
        .into_iter()
        .map(|(first_offset, path)| Segment { first_offset, path })
        .collect())
}

/// The files of `dir` named `<number><suffix>` (binlog and journal segments), in order
/// of their numbers. A name with the suffix but no number is corruption.
pub(super) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        let number = stem.parse().map_err(|_| StorageError::Corruption {
            file: entry.path(),
            position: 0,
            reason: format!("the name of a `{suffix}` file is not a number"),
        })?;
        files.push((number, entry.path()));
    }
    files.sort();
    Ok(files)
}

/// The writable binlog of one replica. Not internally locked for appends: the table
/// serialises writers, since offsets must be assigned and applied in order.
pub struct Binlog {
    dir: PathBuf,
    options: BinlogOptions,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    file: Arc<File>,
    file_len: u64,
    next_offset: u64,
    last_term: u64,
    durability: Arc<Durability>,
    /// Records staged but not written yet (encoded, in order).
    buf: Vec<u8>,
    /// (next offset, file length, last term) before the first staged record: where the
    /// binlog stands again if writing the staged records fails.
    unstaged: Option<(u64, u64, u64)>,
    /// `journal`: the tablet's journal and this binlog's id in it.
    journal: Option<(Journal, String)>,
}

impl Binlog {
    /// Opens (or creates) the binlog in `dir`, verifying every record from the segment
    /// holding `start` on and passing each record at or after `start` to `apply`.
    ///
    /// `start` is the first offset the caller needs (snapshot offset + 1). Segments that
    /// end before it are not read. A torn record at the very end of the last segment is
    /// truncated and reported; any other bad record is an error naming file and byte.
    pub fn open(
        dir: &Path,
        options: BinlogOptions,
        start: u64,
        mut apply: impl FnMut(Record<'_>) -> Result<()>,
    ) -> Result<(Binlog, OpenReport)> {
        assert!(start >= 1, "binlog offsets start at 1");
        if options.fsync == FsyncPolicy::Journal && options.journal.is_none() {
            return Err(StorageError::InvalidArgument(
                "the journal fsync policy needs the tablet's journal".into(),
            ));
        }
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let journal = match (&options.fsync, &options.journal) {
            (FsyncPolicy::Journal, Some(journal)) => {
                Some((journal.clone(), journal.binlog_id(dir)?))
            }
            _ => None,
        };
        let mut segments = list_segments(dir)?;
        let mut report = OpenReport {
            last_offset: start - 1,
            ..OpenReport::default()
        };

        if segments.is_empty() {
            let path = segment_path(dir, start);
            File::create(&path).map_err(io_error(&path))?;
            crashsafe::fsync_dir(dir)?;
            segments.push(Segment {
                first_offset: start,
                path,
            });
        }
        if segments[0].first_offset > start {
            return Err(StorageError::Corruption {
                file: segments[0].path.clone(),
                position: 0,
                reason: format!(
                    "binlog starts at offset {} but offset {start} is needed",
                    segments[0].first_offset
                ),
            });
        }
        // The last segment that begins at or before `start` is where reading begins.
        let first_read = segments
            .iter()
            .rposition(|s| s.first_offset <= start)
            .expect("segments[0] begins at or before start");

        let mut expected = segments[first_read].first_offset;
        let last_index = segments.len() - 1;
        let mut last_len = 0;
        for (i, segment) in segments.iter().enumerate().skip(first_read) {
            if segment.first_offset != expected {
                return Err(StorageError::Corruption {
                    file: segment.path.clone(),
                    position: 0,
                    reason: format!(
                        "segment begins at offset {} but the previous one ends at {}",
                        segment.first_offset,
                        expected - 1
                    ),
                });
            }
            let bytes = fs::read(&segment.path).map_err(io_error(&segment.path))?;
            let mut pos = 0usize;
            while pos < bytes.len() {
                let record = match decode_record(&bytes[pos..]) {
                    Ok((record, len)) => (record, len),
                    Err(fault) => {
                        if is_torn_tail(&bytes, pos, &fault, expected, i == last_index) {
                            report.torn_tail = Some(truncate_torn_tail(
                                &segment.path,
                                pos as u64,
                                (bytes.len() - pos) as u64,
                            )?);
                            break;
                        }
                        return Err(corruption(&segment.path, pos, &fault));
                    }
                };
                let (record, len) = record;
                if record.offset != expected {
                    return Err(StorageError::Corruption {
                        file: segment.path.clone(),
                        position: pos as u64,
                        reason: format!("record has offset {}, expected {expected}", record.offset),
                    });
                }
                expected += 1;
                report.last_offset = record.offset;
                report.last_term = record.term;
                if record.offset >= start {
                    report.records_replayed += 1;
                    apply(record)?;
                }
                pos += len;
            }
            if i == last_index {
                last_len = report
                    .torn_tail
                    .as_ref()
                    .map_or(bytes.len() as u64, |t| t.position);
            }
            // What was read may still be only in the page cache (a process crash loses
            // nothing there, a machine crash does): make it durable before it is counted
            // durable and acknowledged to a leader.
            File::open(&segment.path)
                .and_then(|f| f.sync_all())
                .map_err(io_error(&segment.path))?;
        }
        if report.last_offset + 1 < start {
            // Every record ends before what the caller needs (its snapshot is newer than
            // the whole log, e.g. one received from another replica): start a fresh
            // segment at `start`; the old ones are collected later.
            let path = segment_path(dir, start);
            File::create(&path).map_err(io_error(&path))?;
            crashsafe::fsync_dir(dir)?;
            segments.push(Segment {
                first_offset: start,
                path,
            });
            last_len = 0;
            report.last_offset = start - 1;
            report.last_term = 0;
        }
        let last_index = segments.len() - 1;
        let last = &segments[last_index];
        let file = Arc::new(crashsafe::open_append(&last.path)?);
        let durability = Arc::new(Durability::new(
            report.last_offset,
            file.clone(),
            options.group_commit_interval,
            options.group_commit_max_records,
        ));
        let binlog = Binlog {
            dir: dir.to_path_buf(),
            options,
            segments,
            file,
            file_len: last_len,
            next_offset: report.last_offset + 1,
            last_term: report.last_term,
            durability,
            buf: Vec::new(),
            unstaged: None,
            journal,
        };
        if binlog.segments[last_index].first_offset > binlog.next_offset {
            return Err(StorageError::Corruption {
                file: binlog.segments[last_index].path.clone(),
                position: 0,
                reason: format!(
                    "segment begins after the next offset {}",
                    binlog.next_offset
                ),
            });
        }
        Ok((binlog, report))
    }

    /// Appends one record and returns its offset. The record is handed to the OS; wait
    /// on [`Binlog::durability`] for it to be durable.
    pub fn append(&mut self, term: u64, payload: &[u8]) -> Result<u64> {
        self.append_at(term, self.next_offset, payload)
    }

    /// Appends a record whose offset was assigned elsewhere (a follower taking its
    /// leader's records). The offset must be the next one.
    pub fn append_at(&mut self, term: u64, offset: u64, payload: &[u8]) -> Result<u64> {
        self.stage_at(term, offset, payload)?;
        self.write_staged()?;
        Ok(offset)
    }

    /// Encodes the next record into the write buffer without writing it, so that many
    /// records cost one `write`: [`Binlog::write_staged`] must follow before the writer
    /// lock is released (readers see only what is written). Returns its offset.
    pub fn stage(&mut self, term: u64, payload: &[u8]) -> Result<u64> {
        self.stage_at(term, self.next_offset, payload)
    }

    /// [`Binlog::stage`] at an offset assigned elsewhere, which must be the next one.
    pub fn stage_at(&mut self, term: u64, offset: u64, payload: &[u8]) -> Result<u64> {
        self.durability.check()?;
        if offset != self.next_offset {
            return Err(StorageError::InvalidArgument(format!(
                "record offset {offset} does not continue the binlog at {}",
                self.next_offset
            )));
        }
        let record_len = (RECORD_HEADER_LEN + payload.len()) as u64;
        if self.file_len > 0 && self.file_len + record_len > self.options.segment_size {
            self.write_staged()?;
            self.roll(offset)?;
        }
        self.unstaged
            .get_or_insert((self.next_offset, self.file_len, self.last_term));
        encode_record(term, offset, payload, &mut self.buf);
        self.file_len += record_len;
        self.next_offset += 1;
        self.last_term = term;
        Ok(offset)
    }

    /// Hands every staged record to the OS in one write (and, under `every_write`,
    /// fsyncs it).
    pub fn write_staged(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            // A write that failed earlier (say, before a roll) is still this one's news.
            return self.durability.check();
        }
        let written = (&*self.file).write_all(&self.buf);
        let staged = std::mem::take(&mut self.buf);
        let unstaged = self.unstaged.take();
        if let Err(e) = written {
            // The binlog says it ends where it did before the staging, so no one is told
            // of records that may not be there, and it refuses further writes.
            if let Some((next_offset, file_len, last_term)) = unstaged {
                (self.next_offset, self.file_len, self.last_term) =
                    (next_offset, file_len, last_term);
            }
            let reason = format!("write to {} failed: {e}", self.current_path().display());
            self.durability.fail(reason.clone());
            // A failed write may still have put whole records in the file (a short write,
            // then ENOSPC), which a reload would replay. Only once the file is cut back
            // to where the binlog ends is the write certainly not logged; otherwise its
            // outcome is unknown.
            let cut_back = self
                .file
                .set_len(self.file_len)
                .and_then(|()| self.file.sync_data());
            return Err(match cut_back {
                Ok(()) => StorageError::WriteFailed(reason),
                Err(cut) => {
                    self.durability.tail_uncertain();
                    StorageError::Failed(format!(
                        "{reason}; cutting the file back to {} bytes failed too: {cut}",
                        self.file_len
                    ))
                }
            });
        }
        let last = self.last_offset();
        let outcome = self.made_durable(&staged, last);
        // The buffer's allocation serves the next batch.
        self.buf = staged;
        self.buf.clear();
        outcome
    }

    /// After the records up to `last` (`staged`) were handed to the OS: makes them durable
    /// under the policy, or has them made so.
    fn made_durable(&mut self, staged: &[u8], last: u64) -> Result<()> {
        match self.options.fsync {
            FsyncPolicy::EveryWrite => {
                self.durability.fsync(&self.file, self.current_path())?;
                self.durability.written_durably(last);
            }
            FsyncPolicy::Group => self.durability.written(last, &self.options.flush_pool)?,
            FsyncPolicy::None => self.durability.written_durably(last),
            FsyncPolicy::Journal => {
                let (journal, id) = self.journal.as_ref().expect("checked at open");
                self.durability.written_to_journal(last);
                if let Err(e) = journal.append_records(id, staged, &self.durability, last) {
                    // In the binlog but maybe not in the journal: the fate of these
                    // records is unknown, and the binlog takes nothing more.
                    self.durability.fail(e.to_string());
                    self.durability.tail_uncertain();
                    return Err(StorageError::Failed(e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Closes the current segment (durably) and starts a new one at `first_offset`.
    fn roll(&mut self, first_offset: u64) -> Result<()> {
        if let Err(e) = self.durability.fsync(&self.file, self.current_path()) {
            // What the old segment holds is of unknown fate: no later fsync may count
            // it durable (its writers hear so, as an outcome not known); the write that
            // needed the roll was not logged.
            let StorageError::Failed(reason) = e else {
                return Err(e);
            };
            return Err(StorageError::WriteFailed(reason));
        }
        let path = segment_path(&self.dir, first_offset);
        let opened = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path));
        // Without its next segment the binlog cannot go on (a retry would find the file
        // already there): refuse further writes, as after a failed write.
        let file = match opened.and_then(|file| crashsafe::fsync_dir(&self.dir).map(|()| file)) {
            Ok(file) => file,
            Err(e) => {
                self.durability
                    .fail(format!("starting segment {}: {e}", path.display()));
                return Err(e);
            }
        };
        self.file = Arc::new(file);
        self.file_len = 0;
        self.segments.push(Segment {
            first_offset,
            path: path.clone(),
        });
        {
            // Everything in the old segment is durable now; the flusher moves on to the
            // new file.
            let mut state = self.durability.state.lock();
            if self.own_fsync_counts() {
                state.durable = state.written;
            }
            state.file = Some(self.file.clone());
            self.durability.announce();
        }
        info!(segment = %path.display(), first_offset, "binlog segment rolled");
        Ok(())
    }

    fn current_path(&self) -> &Path {
        &self.segments.last().expect("a binlog has a segment").path
    }

    pub fn durability(&self) -> Arc<Durability> {
        self.durability.clone()
    }

    /// Offset of the last appended record (0 if none).
    pub fn last_offset(&self) -> u64 {
        self.next_offset - 1
    }

    pub fn last_term(&self) -> u64 {
        self.last_term
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Forces everything appended so far to disk, whatever the policy.
    pub fn sync(&self) -> Result<()> {
        // Refused after an earlier failure (see `Durability::fsync`).
        self.durability.fsync(&self.file, self.current_path())?;
        if self.own_fsync_counts() {
            let mut state = self.durability.state.lock();
            state.durable = state.written;
            self.durability.announce();
        }
        Ok(())
    }

    /// Whether an fsync of the binlog's own files makes its records count durable. Not
    /// under `journal`: there a record counts durable once the journal's copy is, since a
    /// restart rewrites each binlog from the first record the journal holds for it on,
    /// so a record durable in its binlog but not yet in the journal could be cut.
    fn own_fsync_counts(&self) -> bool {
        self.options.fsync != FsyncPolicy::Journal
    }

    /// Deletes the segments whose records all lie at or below `offset` (the current
    /// segment always stays). Returns how many were deleted.
    pub fn remove_segments_through(&mut self, offset: u64) -> Result<usize> {
        let mut removable = 0;
        while removable + 1 < self.segments.len()
            && self.segments[removable + 1].first_offset <= offset + 1
        {
            removable += 1;
        }
        for segment in self.segments.drain(..removable) {
            fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
        }
        if removable > 0 {
            crashsafe::fsync_dir(&self.dir)?;
        }
        Ok(removable)
    }

    /// Whether [`Binlog::close`] ran: the replica is being reloaded or replaced.
    pub fn is_closed(&self) -> bool {
        self.durability.state.lock().shutdown
    }

    /// Refuses further writes after a last fsync. Idempotent.
    pub fn close(&mut self) -> Result<()> {
        // Nothing is staged between calls, but a record staged is a record promised.
        let _ = self.write_staged();
        let was_open = !self.durability.state.lock().shutdown;
        let failure = self.durability.state.lock().failure.clone();
        let mut synced = match &failure {
            None => self.sync(),
            Some(_) => Ok(()),
        };
        if let (Some((journal, id)), true) = (&self.journal, was_open) {
            // Only once its records are durable here may the journal forget them: a
            // binlog cut back or replaced at this place later must not get them back.
            // A failed binlog's records may be only in the journal: it keeps them (the
            // caller hears of it and must not cut or replace the binlog).
            synced = match failure {
                None => synced.and_then(|()| journal.reset(id)),
                Some(failure) => Err(StorageError::Failed(format!(
                    "{failure}; the journal keeps this binlog's records until the next start"
                ))),
            };
        }
        {
            let mut state = self.durability.state.lock();
            state.shutdown = true;
            self.durability.announce();
        }
        synced
    }
}

impl Drop for Binlog {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            warn!(error = %e, "binlog close failed");
        }
    }
}

fn truncate_torn_tail(path: &Path, position: u64, bytes_dropped: u64) -> Result<TornTail> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    file.set_len(position).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    warn!(
        file = %path.display(),
        position,
        bytes_dropped,
        "truncated a torn record at the end of the binlog"
    );
    Ok(TornTail {
        file: path.to_path_buf(),
        position,
        bytes_dropped,
    })
}

/// Cuts a closed binlog after `offset`: later segments are deleted and the segment
/// holding `offset` is truncated right after its record. Returns how many records were
/// removed.
pub fn truncate_after(dir: &Path, offset: u64) -> Result<u64> {
    let mut removed = 0;
    let segments = list_segments(dir)?;
    for segment in segments.iter().rev() {
        if segment.first_offset > offset {
            // Counted up to its first bad record, if any: it goes whole either way (an
            // unsynced tail may hold a hole).
            let bytes = fs::read(&segment.path).map_err(io_error(&segment.path))?;
            let mut pos = 0;
            while let Ok((_, len)) = decode_record(&bytes[pos..]) {
                removed += 1;
                pos += len;
            }
            fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            continue;
        }
        let bytes = fs::read(&segment.path).map_err(io_error(&segment.path))?;
        let mut pos = 0;
        let mut expected = segment.first_offset;
        while pos < bytes.len() && expected <= offset {
            // A bad record before `offset` is corruption: cutting there would remove
            // records the caller means to keep.
            let (_, len) = decode_record(&bytes[pos..])
                .map_err(|fault| corruption(&segment.path, pos, &fault))?;
            pos += len;
            expected += 1;
        }
        if pos < bytes.len() {
            let mut rest = pos;
            while let Ok((_, len)) = decode_record(&bytes[rest..]) {
                removed += 1;
                rest += len;
                if rest >= bytes.len() {
                    break;
                }
            }
            let file = OpenOptions::new()
                .write(true)
                .open(&segment.path)
                .map_err(io_error(&segment.path))?;
            file.set_len(pos as u64).map_err(io_error(&segment.path))?;
            file.sync_all().map_err(io_error(&segment.path))?;
        }
        break;
    }
    crashsafe::fsync_dir(dir)?;
    Ok(removed)
}

/// Reads the records of `bytes` (a segment's contents, its first record `first`) in
/// order, passing each to `each`. A torn tail (only if `last`) ends the reading and its
/// length is returned; a bad record, or an error from `each`, is `(position, reason)`.
pub(super) fn scan_buffer(
    bytes: &[u8],
    first: u64,
    last: bool,
    mut each: impl FnMut(Record<'_>) -> std::result::Result<(), String>,
) -> std::result::Result<u64, (u64, String)> {
    let mut pos = 0;
    let mut expected = first;
    while pos < bytes.len() {
        match decode_record(&bytes[pos..]) {
            Ok((record, len)) => {
                expected = record.offset + 1;
                each(record).map_err(|reason| (pos as u64, reason))?;
                pos += len;
            }
            Err(fault) if is_torn_tail(bytes, pos, &fault, expected, last) => {
                return Ok((bytes.len() - pos) as u64)
            }
            Err(fault) => return Err((pos as u64, fault_reason(&fault))),
        }
    }
    Ok(0)
}

/// The first offset of the oldest segment of the binlog in `dir`, if it has one.
pub(super) fn first_segment_start(dir: &Path) -> Result<Option<u64>> {
    Ok(list_segments(dir)?.first().map(|s| s.first_offset))
}

/// Whether the binlog in `dir` holds every record up to `offset` that it has not
/// collected: the segment that should hold `offset` (none, if it is below the oldest
/// segment) reaches it. A bad record before it is corruption.
pub(super) fn holds_through(dir: &Path, offset: u64) -> Result<bool> {
    let segments = list_segments(dir)?;
    if segments.iter().any(|s| s.first_offset == offset + 1) {
        // Begun afresh after `offset` (a snapshot newer than the log): what came before
        // is the snapshot's.
        return Ok(true);
    }
    let Some(segment) = segments.iter().rev().find(|s| s.first_offset <= offset) else {
        return Ok(true);
    };
    let bytes = fs::read(&segment.path).map_err(io_error(&segment.path))?;
    let mut pos = 0;
    let mut next = segment.first_offset;
    while next <= offset {
        if pos == bytes.len() {
            return Ok(false);
        }
        let (record, len) =
            decode_record(&bytes[pos..]).map_err(|fault| corruption(&segment.path, pos, &fault))?;
        if record.offset != next {
            return Err(StorageError::Corruption {
                file: segment.path.clone(),
                position: pos as u64,
                reason: format!("record has offset {}, expected {next}", record.offset),
            });
        }
        pos += len;
        next += 1;
    }
    Ok(true)
}

/// The last segment of the binlog in `dir`, if it has one: its path, the length of the
/// run of good records it starts with, and the offset after them.
pub(super) fn last_segment_prefix(dir: &Path) -> Result<Option<(PathBuf, u64, u64)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let Some(last) = list_segments(dir)?.pop() else {
        return Ok(None);
    };
    let bytes = fs::read(&last.path).map_err(io_error(&last.path))?;
    let mut pos = 0;
    let mut next = last.first_offset;
    while let Ok((record, len)) = decode_record(&bytes[pos..]) {
        if record.offset != next {
            break;
        }
        next += 1;
        pos += len;
    }
    Ok(Some((last.path, pos as u64, next)))
}

/// (term, offset) of the last complete record in a binlog directory, read without
/// modifying anything; `None` when it holds no record.
pub fn last_record(dir: &Path) -> Result<Option<(u64, u64)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut last = None;
    scan_records(dir, |record| last = Some((record.term, record.offset)))?;
    Ok(last)
}

/// Reads every record of a closed binlog directory in order, without modifying
/// anything. A torn tail ends the scan as it would end a load; any other bad record is
/// an error naming file and byte.
pub fn scan_records(dir: &Path, mut each: impl FnMut(Record<'_>)) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let segments = list_segments(dir)?;
    for (i, segment) in segments.iter().enumerate() {
        let bytes = fs::read(&segment.path).map_err(io_error(&segment.path))?;
        let last = i + 1 == segments.len();
        scan_buffer(&bytes, segment.first_offset, last, |record| {
            each(record);
            Ok(())
        })
        .map_err(|(position, reason)| StorageError::Corruption {
            file: segment.path.clone(),
            position,
            reason,
        })?;
    }
    Ok(())
}

/// One record read back for shipping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub term: u64,
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// Reads records in offset order from a binlog that may be growing, with its own file
/// handle (so the writer is never blocked). Every record's CRC is checked.
pub struct BinlogReader {
    dir: PathBuf,
    next: u64,
    /// The open segment, positioned at the record `next`.
    file: Option<std::io::BufReader<File>>,
}

/// Why a reader cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The binlog no longer holds the wanted offset (collected after a snapshot).
    NotRetained { wanted: u64 },
}

impl BinlogReader {
    /// A reader whose first record will be `next`.
    pub fn new(dir: &Path, next: u64) -> BinlogReader {
        BinlogReader {
            dir: dir.to_path_buf(),
            next,
            file: None,
        }
    }

    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Whether a segment is open at `next`, so a read starts without scanning to it.
    pub fn is_positioned(&self) -> bool {
        self.file.is_some()
    }

    /// Opens the segment holding `next` and skips to it.
    fn position(&mut self) -> Result<std::result::Result<(), ReadError>> {
        use std::io::Read;
        let segments = list_segments(&self.dir)?;
        let Some(segment) = segments.iter().rev().find(|s| s.first_offset <= self.next) else {
            return Ok(Err(ReadError::NotRetained { wanted: self.next }));
        };
        if segments.first().is_some_and(|s| s.first_offset > self.next) {
            return Ok(Err(ReadError::NotRetained { wanted: self.next }));
        }
        let file = File::open(&segment.path).map_err(io_error(&segment.path))?;
        let mut reader = std::io::BufReader::with_capacity(256 << 10, file);
        let mut offset = segment.first_offset;
        let mut header = [0u8; RECORD_HEADER_LEN];
        while offset < self.next {
            reader
                .read_exact(&mut header)
                .map_err(io_error(&segment.path))?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            // Relative to the buffer, so skipping a record is no system call: finding a
            // record near the end of a full segment reads the file once, sequentially
            // (a failover opens readers at the log's end).
            reader
                .seek_relative(i64::from(len))
                .map_err(io_error(&segment.path))?;
            offset += 1;
        }
        self.file = Some(reader);
        Ok(Ok(()))
    }

    /// Reads the records from `next` through `upto` (which must already be written),
    /// stopping after about `max_bytes` of payload.
    pub fn read(
        &mut self,
        upto: u64,
        max_bytes: usize,
    ) -> Result<std::result::Result<Vec<OwnedRecord>, ReadError>> {
        use std::io::Read;
        let mut out = Vec::new();
        let mut bytes = 0;
        // Set when a segment was just opened at `next`: an end of file there means the
        // record is not written yet, and looking again would spin.
        let mut fresh = false;
        while self.next <= upto && bytes < max_bytes {
            if self.file.is_none() {
                if let Err(e) = self.position()? {
                    return Ok(Err(e));
                }
                fresh = true;
            }
            let reader = self.file.as_mut().expect("positioned");
            let mut header = [0u8; RECORD_HEADER_LEN];
            match reader.read_exact(&mut header) {
                Ok(()) => fresh = false,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && fresh => {
                    self.file = None;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // End of this segment: the record lives in the next one.
                    self.file = None;
                    continue;
                }
                Err(e) => return Err(io_error(&self.dir)(e)),
            }
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            if len > MAX_RECORD_LEN {
                return Err(StorageError::Corruption {
                    file: self.dir.clone(),
                    position: 0,
                    reason: format!("record {} claims {len} bytes", self.next),
                });
            }
            let len = len as usize;
            // Grown as the bytes come, so a damaged length cannot make us allocate
            // more than the segment holds.
            let mut record = header.to_vec();
            (&mut *reader)
                .take(len as u64)
                .read_to_end(&mut record)
                .map_err(io_error(&self.dir))?;
            if record.len() != RECORD_HEADER_LEN + len {
                return Err(StorageError::Corruption {
                    file: self.dir.clone(),
                    position: 0,
                    reason: format!(
                        "record {} claims {len} bytes; the segment ends first",
                        self.next
                    ),
                });
            }
            let (decoded, _) =
                decode_record(&record).map_err(|fault| StorageError::Corruption {
                    file: self.dir.clone(),
                    position: 0,
                    reason: format!("record {} while shipping: {fault:?}", self.next),
                })?;
            if decoded.offset != self.next {
                return Err(StorageError::Corruption {
                    file: self.dir.clone(),
                    position: 0,
                    reason: format!("expected record {}, found {}", self.next, decoded.offset),
                });
            }
            bytes += len;
            out.push(OwnedRecord {
                term: decoded.term,
                offset: decoded.offset,
                payload: decoded.payload.to_vec(),
            });
            self.next += 1;
        }
        Ok(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    fn options(fsync: FsyncPolicy, segment_size: u64) -> BinlogOptions {
        BinlogOptions {
            fsync,
            segment_size,
            ..BinlogOptions::default()
        }
    }

    /// A record seen during open: offset and payload.
    type Seen = (u64, Vec<u8>);

    fn open_collect(
        dir: &Path,
        opts: BinlogOptions,
        start: u64,
    ) -> Result<(Binlog, OpenReport, Vec<Seen>)> {
        let mut seen = Vec::new();
        let (binlog, report) = Binlog::open(dir, opts, start, |r| {
            seen.push((r.offset, r.payload.to_vec()));
            Ok(())
        })?;
        Ok((binlog, report, seen))
    }

    fn write_n(binlog: &mut Binlog, n: u64) {
        for i in 0..n {
            let offset = binlog.append(1, format!("payload-{i}").as_bytes()).unwrap();
            binlog.durability().wait(offset).unwrap();
        }
    }

    #[test]
    fn append_and_reopen_under_each_policy() {
        for policy in [
            FsyncPolicy::EveryWrite,
            FsyncPolicy::Group,
            FsyncPolicy::None,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut binlog, report, _) =
                open_collect(dir.path(), options(policy, 1 << 20), 1).unwrap();
            assert_eq!(report.last_offset, 0);
            write_n(&mut binlog, 50);
            assert_eq!(binlog.durability().durable_offset(), 50, "{policy:?}");
            drop(binlog);
            let (binlog, report, seen) =
                open_collect(dir.path(), options(policy, 1 << 20), 1).unwrap();
            assert_eq!(report.last_offset, 50);
            assert_eq!(seen.len(), 50);
            assert_eq!(seen[49], (50, b"payload-49".to_vec()));
            assert_eq!(binlog.last_offset(), 50);
        }
    }

    /// Staged records cost one write: readers see none of them before it, all after,
    /// in order, across a segment roll, and they survive a reopen.
    #[test]
    fn staged_records_are_written_together_across_a_roll() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::Group, 200), 1).unwrap();
        binlog.append(1, b"first").unwrap();
        for i in 0..6 {
            binlog.stage(1, format!("staged-{i}").as_bytes()).unwrap();
        }
        assert_eq!(binlog.last_offset(), 7, "offsets are assigned when staged");
        // A roll writes what was staged before it; what was staged after is not in a
        // file yet.
        let last_segment_len = || {
            let segments = list_segments(dir.path()).unwrap();
            std::fs::metadata(&segments.last().unwrap().path)
                .unwrap()
                .len()
        };
        assert_eq!(last_segment_len(), 0, "nothing written since the roll");
        // A reader asked for more than is written returns what there is, not spinning.
        let before = BinlogReader::new(dir.path(), 2)
            .read(7, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(
            before.len() < 6,
            "staged records are not visible: {before:?}"
        );
        binlog.write_staged().unwrap();
        assert!(last_segment_len() > 0);
        binlog.durability().wait(7).unwrap();
        let mut reader = BinlogReader::new(dir.path(), 2);
        let read = reader.read(7, 1 << 20).unwrap().unwrap();
        let offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (2..=7).collect::<Vec<_>>());
        assert!(
            binlog.segment_count() > 1,
            "the batch crossed a segment roll"
        );
        drop(binlog);
        let (_, report, seen) =
            open_collect(dir.path(), options(FsyncPolicy::Group, 200), 1).unwrap();
        assert_eq!(report.last_offset, 7);
        assert_eq!(seen[6], (7, b"staged-5".to_vec()));
    }

    /// The async wait ends when the flusher makes the record durable, and with an error
    /// when the binlog closes before it could.
    #[test]
    fn the_async_wait_follows_the_flusher() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::Group, 1 << 20), 1).unwrap();
        let offset = binlog.append(1, b"x").unwrap();
        let durability = binlog.durability();
        runtime
            .block_on(durability.wait_async(offset))
            .expect("durable once the flusher synced");
        assert!(durability.durable_offset() >= offset);
        binlog.close().unwrap();
        let err = runtime
            .block_on(durability.wait_async(offset + 1))
            .unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }

    #[test]
    fn group_commit_acknowledges_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::Group, 1 << 20), 1).unwrap();
        let binlog = Arc::new(Mutex::new(binlog));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let binlog = binlog.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let (offset, durability) = {
                            let mut b = binlog.lock();
                            (
                                b.append(1, format!("{t}-{i}").as_bytes()).unwrap(),
                                b.durability(),
                            )
                        };
                        durability.wait(offset).unwrap();
                        assert!(durability.durable_offset() >= offset);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(binlog.lock().last_offset(), 400);
    }

    #[test]
    fn segments_roll_by_size_and_read_back_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 1).unwrap();
        write_n(&mut binlog, 40);
        let segments = binlog.segment_count();
        assert!(
            segments >= 5,
            "40 records of ~34 bytes in 200-byte segments: got {segments}"
        );
        drop(binlog);
        let names: Vec<_> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.first_offset)
            .collect();
        assert_eq!(names[0], 1);
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        // Reading from the middle skips whole segments before it but yields every record after.
        let (_, report, seen) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 17).unwrap();
        assert_eq!(report.last_offset, 40);
        assert_eq!(seen.first().unwrap().0, 17);
        assert_eq!(seen.len(), 24);
    }

    #[test]
    fn removing_segments_keeps_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 1).unwrap();
        write_n(&mut binlog, 40);
        let before = binlog.segment_count();
        let removed = binlog.remove_segments_through(20).unwrap();
        assert!(removed > 0 && removed < before);
        drop(binlog);
        // Offsets from 21 on are all still there.
        let (_, report, seen) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 21).unwrap();
        assert_eq!(seen.first().unwrap().0, 21);
        assert_eq!(report.last_offset, 40);
        // Offset 1 is gone, and asking for it is an error, not silence.
        let err = open_collect(dir.path(), options(FsyncPolicy::None, 200), 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("is needed"), "{err}");
    }

    fn last_segment(dir: &Path) -> PathBuf {
        list_segments(dir).unwrap().pop().unwrap().path
    }

    #[test]
    fn crc_failure_in_the_middle_names_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
        write_n(&mut binlog, 10);
        drop(binlog);
        let path = last_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        // Flip one payload byte of the third record.
        let record_len = RECORD_HEADER_LEN + "payload-0".len();
        bytes[2 * record_len + RECORD_HEADER_LEN] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1)
            .err()
            .unwrap();
        match &err {
            StorageError::Corruption {
                file,
                position,
                reason,
            } => {
                assert_eq!(file, &path);
                assert_eq!(*position, 2 * record_len as u64);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected corruption, got {other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("byte 66"),
            "{text}"
        );
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_an_error_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 1).unwrap();
        write_n(&mut binlog, 20);
        drop(binlog);
        let first = list_segments(dir.path()).unwrap()[0].path.clone();
        let mut bytes = fs::read(&first).unwrap();
        bytes.truncate(bytes.len() - 3);
        fs::write(&first, &bytes).unwrap();
        let err = open_collect(dir.path(), options(FsyncPolicy::None, 200), 1)
            .err()
            .unwrap();
        assert!(
            matches!(err, StorageError::Corruption { ref file, .. } if file == &first),
            "{err}"
        );
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        for cut in [1usize, 5, RECORD_HEADER_LEN + 2] {
            let dir = tempfile::tempdir().unwrap();
            let (mut binlog, _, _) =
                open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
            write_n(&mut binlog, 10);
            drop(binlog);
            let path = last_segment(dir.path());
            let full = fs::read(&path).unwrap();
            let record_len = RECORD_HEADER_LEN + "payload-9".len();
            // Keep 9 records and `cut` bytes of the 10th.
            let keep = full.len() - record_len + cut;
            fs::write(&path, &full[..keep]).unwrap();

            let (mut binlog, report, seen) =
                open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
            assert_eq!(seen.len(), 9);
            assert_eq!(report.last_offset, 9);
            let torn = report.torn_tail.unwrap();
            assert_eq!(torn.position, (full.len() - record_len) as u64);
            assert_eq!(torn.bytes_dropped, cut as u64);
            // Appending resumes cleanly at offset 10.
            assert_eq!(binlog.append(1, b"again").unwrap(), 10);
            drop(binlog);
            let (_, report, seen) =
                open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
            assert!(report.torn_tail.is_none());
            assert_eq!(seen.last().unwrap(), &(10, b"again".to_vec()));
        }
    }

    #[test]
    fn garbled_final_record_and_zero_fill_count_as_torn() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
        write_n(&mut binlog, 3);
        drop(binlog);
        let path = last_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        bytes.extend_from_slice(&[0u8; 100]);
        fs::write(&path, &bytes).unwrap();
        // The last record's checksum fails and zeros follow it: only a write in progress
        // looks like this, so it is cut, not reported as corruption.
        let (_, report, seen) =
            open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
        assert_eq!(seen.len(), 2);
        assert!(report.torn_tail.is_some());
    }

    #[test]
    fn offsets_must_be_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bytes = Vec::new();
        encode_record(1, 1, b"a", &mut bytes);
        encode_record(1, 3, b"b", &mut bytes);
        encode_record(1, 4, b"c", &mut bytes);
        fs::write(&path, &bytes).unwrap();
        let err = open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("expected 2"), "{err}");
    }

    /// A damaged length field makes the shipping reader report corruption, without
    /// first allocating what the field claims (up to 4 GiB).
    #[test]
    fn a_reader_does_not_trust_a_damaged_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode_record(1, 1, b"first", &mut bytes);
        let second = bytes.len();
        encode_record(1, 2, b"second", &mut bytes);
        for claimed in [u32::MAX, MAX_RECORD_LEN - 1] {
            bytes[second..second + 4].copy_from_slice(&claimed.to_le_bytes());
            fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
            let mut reader = BinlogReader::new(dir.path(), 1);
            let err = reader.read(u64::MAX, 1 << 20).unwrap_err();
            assert!(
                matches!(&err, StorageError::Corruption { reason, .. } if reason.contains("claims")),
                "{err}"
            );
        }
    }

    #[test]
    fn reader_follows_a_growing_log_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 1).unwrap();
        write_n(&mut binlog, 10);
        let mut reader = BinlogReader::new(dir.path(), 3);
        let first = reader.read(10, usize::MAX).unwrap().unwrap();
        assert_eq!(
            first.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (3..=10).collect::<Vec<_>>()
        );
        assert_eq!(first[0].payload, b"payload-2");
        write_n(&mut binlog, 30);
        let rest = reader.read(40, usize::MAX).unwrap().unwrap();
        assert_eq!(rest.first().unwrap().offset, 11);
        assert_eq!(rest.last().unwrap().offset, 40);
        // A byte budget bounds a batch.
        let mut small = BinlogReader::new(dir.path(), 1);
        assert!(small.read(40, 20).unwrap().unwrap().len() < 5);
        // Collected offsets are reported, not invented.
        binlog.remove_segments_through(20).unwrap();
        let mut gone = BinlogReader::new(dir.path(), 1);
        assert_eq!(
            gone.read(40, usize::MAX).unwrap(),
            Err(ReadError::NotRetained { wanted: 1 })
        );
    }

    #[test]
    fn truncate_after_cuts_records_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, _, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 1).unwrap();
        write_n(&mut binlog, 40);
        drop(binlog);
        assert_eq!(truncate_after(dir.path(), 23).unwrap(), 17);
        let (mut binlog, report, seen) =
            open_collect(dir.path(), options(FsyncPolicy::None, 200), 1).unwrap();
        assert_eq!(report.last_offset, 23);
        assert_eq!(seen.len(), 23);
        assert!(report.torn_tail.is_none());
        assert_eq!(binlog.append(2, b"new").unwrap(), 24);
        assert!(binlog.append_at(2, 26, b"gap").is_err());
    }

    #[test]
    fn empty_log_after_snapshot_resumes_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (mut binlog, report, _) =
            open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 101).unwrap();
        assert_eq!(report.last_offset, 100);
        assert_eq!(binlog.append(2, b"x").unwrap(), 101);
    }

    /// Ten records of 33 bytes each in one segment (payloads `payload-0` … `payload-9`).
    fn ten_records(dir: &Path) -> PathBuf {
        let (mut binlog, _, _) = open_collect(dir, options(FsyncPolicy::None, 1 << 20), 1).unwrap();
        write_n(&mut binlog, 10);
        drop(binlog);
        segment_path(dir, 1)
    }

    fn damage(path: &Path, at: usize, bytes: &[u8]) {
        let mut contents = fs::read(path).unwrap();
        contents[at..at + bytes.len()].copy_from_slice(bytes);
        fs::write(path, contents).unwrap();
    }

    /// Point 7: a damaged length field makes a record in the middle look cut short;
    /// before, the load cut it and the seven valid records after it as a torn tail.
    #[test]
    fn a_damaged_length_in_the_middle_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let segment = ten_records(dir.path());
        let size = fs::metadata(&segment).unwrap().len();
        damage(&segment, 2 * 33, &4096u32.to_le_bytes());
        let err = open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1)
            .err()
            .expect("the load is refused");
        match err {
            StorageError::Corruption { file, position, .. } => {
                assert_eq!((file, position), (segment.clone(), 66));
            }
            other => panic!("expected corruption, got {other}"),
        }
        assert_eq!(
            fs::metadata(&segment).unwrap().len(),
            size,
            "nothing was cut"
        );
        assert!(matches!(
            last_record(dir.path()),
            Err(StorageError::Corruption { position: 66, .. })
        ));
    }

    /// Point 7: `truncate_after` and `last_record` stop with an error at a bad record
    /// instead of cutting there or reporting a shorter log.
    #[test]
    fn truncation_and_last_record_refuse_a_corrupt_log() {
        let dir = tempfile::tempdir().unwrap();
        let segment = ten_records(dir.path());
        let size = fs::metadata(&segment).unwrap().len();
        damage(&segment, 2 * 33 + 30, b"X");
        assert!(matches!(
            last_record(dir.path()),
            Err(StorageError::Corruption { position: 66, .. })
        ));
        assert!(matches!(
            truncate_after(dir.path(), 8),
            Err(StorageError::Corruption { position: 66, .. })
        ));
        assert_eq!(
            fs::metadata(&segment).unwrap().len(),
            size,
            "nothing was cut"
        );
    }

    /// A real torn tail (the last record half written) is still cut, and reading tools
    /// see the log as a load would.
    #[test]
    fn a_half_written_last_record_is_still_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let segment = ten_records(dir.path());
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(9 * 33 + 20).unwrap();
        assert_eq!(last_record(dir.path()).unwrap(), Some((1, 9)));
        let (_, report, seen) =
            open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1).unwrap();
        assert_eq!(seen.len(), 9);
        assert_eq!(report.torn_tail.unwrap().position, 9 * 33);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// A segment damaged anywhere (bytes changed, cut short, garbage after it)
            /// is read, truncated or refused by every reader: never a panic, never a
            /// record whose checksum does not hold. Undamaged, it reads back whole.
            #[test]
            fn any_damaged_segment_is_read_or_refused(
                payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 1..16),
                flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
                cut in prop::option::of(any::<prop::sample::Index>()),
                garbage in prop::collection::vec(any::<u8>(), 0..40),
            ) {
                let mut bytes = Vec::new();
                for (i, payload) in payloads.iter().enumerate() {
                    encode_record(1, i as u64 + 1, payload, &mut bytes);
                }
                let intact = flips.is_empty() && cut.is_none() && garbage.is_empty();
                for (at, mask) in &flips {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
                bytes.extend_from_slice(&garbage);

                let mut pos = 0;
                while let Ok((record, used)) = decode_record(&bytes[pos..]) {
                    prop_assert!(used > 0);
                    prop_assert!(record.payload.len() <= bytes.len());
                    pos += used;
                }
                let dir = tempfile::tempdir().unwrap();
                fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
                let _ = last_record(dir.path());
                let mut scanned = 0u64;
                let _ = scan_records(dir.path(), |_| scanned += 1);
                let mut reader = BinlogReader::new(dir.path(), 1);
                if let Ok(Ok(records)) = reader.read(u64::MAX, 1 << 20) {
                    for (i, record) in records.iter().enumerate() {
                        prop_assert_eq!(record.offset, i as u64 + 1);
                    }
                }
                let opened = open_collect(dir.path(), options(FsyncPolicy::None, 1 << 20), 1);
                if intact {
                    let (_, report, seen) = opened.expect("an undamaged segment opens");
                    prop_assert_eq!(report.last_offset, payloads.len() as u64);
                    prop_assert_eq!(seen.len(), payloads.len());
                    prop_assert_eq!(scanned, payloads.len() as u64);
                }
            }
        }
    }
}
