//! How far a binlog is durable, and the flushers that make it so.
//!
//! Under the `group` fsync policy a writer only hands its records to the OS and marks
//! its binlog dirty; a flusher fsyncs the binlog later, covering every record written in
//! the meantime, and wakes the writers waiting for them. The flushers are a small pool
//! ([`FlushPool`]) shared by every binlog of a tablet, so a tablet's threads do not grow
//! with its replica count, and on a busy tablet each fsync covers more records: a dirty
//! binlog waits its turn while the others are synced, gathering writes.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::error;

use super::error::{Result, StorageError};

/// Shared between writers, waiters and the flushers.
#[derive(Debug, Default)]
pub(super) struct DurableState {
    /// Last offset handed to the OS.
    pub(super) written: u64,
    /// Last offset known to be durable under the policy.
    pub(super) durable: u64,
    /// The segment a flusher must fsync to cover `written`.
    pub(super) file: Option<Arc<File>>,
    /// Set by a failed write or fsync; every later append and wait fails.
    pub(super) failure: Option<String>,
    /// The failed write may have left whole records in the file (it could not be cut
    /// back): a write refused now may share a buffer with them, so its fate is unknown.
    pub(super) tail_uncertain: bool,
    pub(super) shutdown: bool,
    /// Queued in (or being synced by) the flush pool: queued at most once.
    queued: bool,
}

/// Tracks how far the binlog is durable and lets writers wait for it, blocking a thread
/// or (on the async path, where a put should not cost a thread hand-off) as a future.
#[derive(Debug, Default)]
pub struct Durability {
    pub(super) state: Mutex<DurableState>,
    /// Signalled when `durable` advances or the binlog fails.
    advanced: Condvar,
    /// The same news for async waiters: bumped whenever `advanced` is signalled.
    advanced_async: tokio::sync::watch::Sender<u64>,
    /// Enough records wait for an fsync that a lingering flush should not wait longer.
    full: AtomicBool,
    /// `group`: how long a dirty binlog waits for more writes before its fsync, and how
    /// many waiting records end the wait early.
    linger: Duration,
    max_records: u64,
    /// `journal`: the journal segment this binlog was last written in (see
    /// [`super::journal`]), so each segment lists the binlogs to fsync before it goes.
    pub(super) journal_segment: AtomicU64,
    /// Held across each fsync of the binlog's files (see [`Durability::fsync`]).
    sync_lock: Mutex<()>,
}

impl DurableState {
    /// `Some` once waiting for `offset` is over: durable, or never going to be.
    fn reached(&self, offset: u64) -> Option<Result<()>> {
        if let Some(failure) = &self.failure {
            return Some(Err(StorageError::Failed(failure.clone())));
        }
        if self.durable >= offset {
            return Some(Ok(()));
        }
        if self.shutdown && self.written == self.durable {
            return Some(Err(StorageError::Failed("binlog closed".into())));
        }
        None
    }
}

impl Durability {
    pub(super) fn new(
        last_offset: u64,
        file: Arc<File>,
        linger: Duration,
        max_records: u64,
    ) -> Durability {
        let durability = Durability {
            linger,
            max_records: max_records.max(1),
            ..Durability::default()
        };
        {
            let mut state = durability.state.lock();
            state.written = last_offset;
            state.durable = last_offset;
            state.file = Some(file);
        }
        durability
    }

    /// Blocks until `offset` is durable under the binlog's policy.
    pub fn wait(&self, offset: u64) -> Result<()> {
        let mut state = self.state.lock();
        loop {
            if let Some(done) = state.reached(offset) {
                return done;
            }
            self.advanced.wait(&mut state);
        }
    }

    /// As [`Durability::wait`], without holding a thread.
    pub async fn wait_async(&self, offset: u64) -> Result<()> {
        // Subscribed before looking, so news after the look is not missed.
        let mut news = self.advanced_async.subscribe();
        loop {
            if let Some(done) = self.state.lock().reached(offset) {
                return done;
            }
            // The sender lives as long as `self`, so this cannot fail.
            let _ = news.changed().await;
        }
    }

    /// Wakes every waiter, blocking or async, to look at the state again.
    pub(super) fn announce(&self) {
        self.advanced.notify_all();
        self.advanced_async
            .send_modify(|bumps| *bumps = bumps.wrapping_add(1));
    }

    pub fn durable_offset(&self) -> u64 {
        self.state.lock().durable
    }

    /// Why the binlog refuses writes, if a write or fsync failed.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().failure.clone()
    }

    pub(super) fn fail(&self, reason: String) {
        let mut state = self.state.lock();
        state.failure.get_or_insert(reason);
        self.announce();
    }

    /// After [`Durability::fail`]: the file could not be cut back to where the binlog
    /// ends, so records of the failed write may be in it.
    pub(super) fn tail_uncertain(&self) {
        self.state.lock().tail_uncertain = true;
    }

    pub(super) fn check(&self) -> Result<()> {
        let state = self.state.lock();
        match &state.failure {
            Some(failure) if state.tail_uncertain => Err(StorageError::Failed(failure.clone())),
            // A write refused before anything of it is logged.
            Some(failure) => Err(StorageError::WriteFailed(failure.clone())),
            None if state.shutdown => Err(StorageError::Unavailable("binlog closed".into())),
            None => Ok(()),
        }
    }

    /// Records up to `offset` are in the OS and durable (policies that do not wait for
    /// a flusher).
    pub(super) fn written_durably(&self, offset: u64) {
        let mut state = self.state.lock();
        state.written = offset;
        state.durable = offset;
        self.announce();
    }

    /// `journal`: records up to `offset` are in the OS; the journal counts them durable
    /// once it has fsynced its copy ([`Durability::journaled`]).
    pub(super) fn written_to_journal(&self, offset: u64) {
        self.state.lock().written = offset;
    }

    /// `journal`: the journal's copy of the records up to `offset` is durable.
    pub(super) fn journaled(&self, offset: u64) {
        let mut state = self.state.lock();
        if state.failure.is_none() {
            state.durable = state.durable.max(offset);
        }
        self.announce();
    }

    /// Fsyncs `file`, one of this binlog's segments (`path`). One fsync of the binlog
    /// runs at a time, and none once one failed: the kernel reports a failed writeback to
    /// one fsync only, and may drop the pages it could not write, so a concurrent or
    /// later fsync can succeed without them being on disk. The failure is recorded before
    /// the next fsync may start.
    pub(super) fn fsync(&self, file: &File, path: &std::path::Path) -> Result<()> {
        let _one_at_a_time = self.sync_lock.lock();
        if let Some(failure) = self.failure() {
            return Err(StorageError::Failed(failure));
        }
        let started = Instant::now();
        let synced = file.sync_data();
        crate::metrics::FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
        synced.map_err(|e| {
            let reason = format!("fsync of {} failed: {e}", path.display());
            self.fail(reason.clone());
            StorageError::Failed(reason)
        })
    }

    /// Fsyncs the binlog's current segment (its earlier ones were fsynced when it rolled
    /// on), so the journal's copy of what it holds is no longer needed.
    pub(super) fn sync_file(&self) -> Result<()> {
        let file = self.state.lock().file.clone();
        match file {
            Some(file) => self.fsync(&file, std::path::Path::new("the binlog's segment")),
            None => Ok(()),
        }
    }

    /// Records up to `offset` are in the OS: has the pool fsync them after the linger
    /// (or sooner, once `max_records` wait).
    pub(super) fn written(self: &Arc<Self>, offset: u64, pool: &FlushPool) -> Result<()> {
        let mut state = self.state.lock();
        state.written = offset;
        let full = state.written - state.durable >= self.max_records;
        if state.queued {
            drop(state);
            if full && !self.linger.is_zero() && !self.full.swap(true, Ordering::AcqRel) {
                pool.hurry();
            }
            return Ok(());
        }
        state.queued = true;
        drop(state);
        self.full.store(full, Ordering::Release);
        pool.push(self.clone(), self.due(full))
            .inspect_err(|e| self.fail(e.to_string()))
    }

    fn due(&self, full: bool) -> Instant {
        if full {
            Instant::now()
        } else {
            Instant::now() + self.linger
        }
    }

    /// One flusher's turn: fsyncs what is written so far and wakes its waiters. Returns
    /// whether more was written meanwhile, in which case the binlog stays queued and the
    /// caller puts it back in line.
    fn flush(&self) -> bool {
        let mut state = self.state.lock();
        if state.failure.is_some() || state.written == state.durable {
            state.queued = false;
            return false;
        }
        let target = state.written;
        let Some(file) = state.file.clone() else {
            state.queued = false;
            return false;
        };
        drop(state);
        // A failure is recorded (and announced) by `fsync` itself.
        let synced = self.fsync(&file, std::path::Path::new("the binlog's segment"));
        let mut state = self.state.lock();
        // Not once the binlog failed meanwhile: its failed fsync may have taken the
        // error this one would have seen.
        if synced.is_ok() && state.failure.is_none() {
            state.durable = state.durable.max(target);
        }
        self.announce();
        let again = state.failure.is_none() && state.written > state.durable;
        state.queued = again;
        let full = again && state.written - state.durable >= self.max_records;
        self.full.store(full, Ordering::Release);
        again
    }
}

/// A dirty binlog waiting for a flusher, and when it is due.
struct Queued {
    due: Instant,
    durability: Arc<Durability>,
}

#[derive(Default)]
struct Line {
    dirty: VecDeque<Queued>,
    /// Flusher threads running.
    started: usize,
    /// Every handle to the pool is gone: flush what is queued, then stop.
    closed: bool,
}

struct PoolInner {
    threads: usize,
    line: Mutex<Line>,
    ready: Condvar,
}

/// The flusher threads shared by the binlogs of one tablet (see the module comment).
/// Threads start on first use and stop once every handle is dropped.
#[derive(Clone)]
pub struct FlushPool {
    inner: Arc<PoolInner>,
    _handle: Arc<PoolHandle>,
}

/// Closes the pool when the last [`FlushPool`] clone goes (the threads hold only
/// `PoolInner`).
struct PoolHandle(Arc<PoolInner>);

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.0.line.lock().closed = true;
        self.0.ready.notify_all();
    }
}

impl fmt::Debug for FlushPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushPool")
            .field("threads", &self.inner.threads)
            .finish()
    }
}

impl Default for FlushPool {
    /// One thread: enough for a test or a tool with a few binlogs.
    fn default() -> Self {
        FlushPool::new(1)
    }
}

impl FlushPool {
    pub fn new(threads: usize) -> FlushPool {
        let inner = Arc::new(PoolInner {
            threads: threads.max(1),
            line: Mutex::new(Line::default()),
            ready: Condvar::new(),
        });
        FlushPool {
            _handle: Arc::new(PoolHandle(inner.clone())),
            inner,
        }
    }

    /// Flusher threads started so far (at most the configured number).
    pub fn threads_started(&self) -> usize {
        self.inner.line.lock().started
    }

    fn push(&self, durability: Arc<Durability>, due: Instant) -> Result<()> {
        let mut line = self.inner.line.lock();
        // One more thread while the line is longer than the threads serving it.
        if line.started < self.inner.threads && line.dirty.len() >= line.started {
            let inner = self.inner.clone();
            match std::thread::Builder::new()
                .name("binlog-flush".into())
                .spawn(move || run_flusher(inner))
            {
                Ok(_) => line.started += 1,
                Err(e) if line.started == 0 => {
                    return Err(StorageError::Failed(format!(
                        "cannot start a binlog flusher thread: {e}"
                    )))
                }
                // The threads already running serve the line.
                Err(e) => error!(error = %e, "cannot start another binlog flusher thread"),
            }
        }
        line.dirty.push_back(Queued { due, durability });
        drop(line);
        self.inner.ready.notify_one();
        Ok(())
    }

    /// A queued binlog became full: wake the flushers to look again.
    fn hurry(&self) {
        let _line = self.inner.line.lock();
        self.inner.ready.notify_all();
    }
}

impl PoolInner {
    /// The next binlog to flush, once it is due (or full); `None` when the pool is closed
    /// and nothing is left.
    fn next(&self) -> Option<Arc<Durability>> {
        let mut line = self.line.lock();
        loop {
            let Some(front) = line.dirty.front() else {
                if line.closed {
                    return None;
                }
                self.ready.wait(&mut line);
                continue;
            };
            // The line is in order of due time: the linger is the same for all.
            let due = front.due;
            if due <= Instant::now() || line.closed {
                return line.dirty.pop_front().map(|q| q.durability);
            }
            if let Some(i) = line
                .dirty
                .iter()
                .position(|q| q.durability.full.load(Ordering::Acquire))
            {
                return line.dirty.remove(i).map(|q| q.durability);
            }
            self.ready.wait_until(&mut line, due);
        }
    }
}

fn run_flusher(inner: Arc<PoolInner>) {
    while let Some(durability) = inner.next() {
        if durability.flush() {
            // Written to again while syncing: back in line, behind the others.
            let due = durability.due(false);
            inner
                .line
                .lock()
                .dirty
                .push_back(Queued { due, durability });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::storage::binlog::{Binlog, BinlogOptions, FsyncPolicy};

    fn open(dir: &Path, options: &BinlogOptions) -> Binlog {
        Binlog::open(dir, options.clone(), 1, |_| Ok(())).unwrap().0
    }

    /// Waits for `offset` on another thread, so a flusher that never comes fails the
    /// test instead of hanging it.
    fn durable_within(durability: Arc<Durability>, offset: u64, limit: Duration) {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(durability.wait(offset));
        });
        match result.recv_timeout(limit) {
            Ok(waited) => waited.expect("durable"),
            Err(_) => panic!("offset {offset} not durable after {limit:?}"),
        }
    }

    /// Many binlogs written at once share the pool's threads, and every write becomes
    /// durable: threads are bounded by the pool, not by the number of binlogs.
    #[test]
    fn many_binlogs_share_a_bounded_pool() {
        let root = tempfile::tempdir().unwrap();
        let options = BinlogOptions {
            fsync: FsyncPolicy::Group,
            flush_pool: FlushPool::new(2),
            ..BinlogOptions::default()
        };
        let binlogs: Vec<Arc<Mutex<Binlog>>> = (0..40)
            .map(|i| {
                let dir = root.path().join(i.to_string());
                Arc::new(Mutex::new(open(&dir, &options)))
            })
            .collect();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let binlogs = binlogs.clone();
                std::thread::spawn(move || {
                    for round in 0..25 {
                        for (i, binlog) in binlogs.iter().enumerate() {
                            if (i + round) % 4 != w {
                                continue;
                            }
                            let (offset, durability) = {
                                let mut binlog = binlog.lock();
                                (binlog.append(1, b"row").unwrap(), binlog.durability())
                            };
                            durability.wait(offset).unwrap();
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        for binlog in &binlogs {
            let binlog = binlog.lock();
            assert_eq!(binlog.durability().durable_offset(), binlog.last_offset());
        }
        let total: u64 = binlogs.iter().map(|b| b.lock().last_offset()).sum();
        assert_eq!(total, 25 * 40, "each round writes each binlog once");
        let threads = options.flush_pool.threads_started();
        assert!((1..=2).contains(&threads), "{threads} flusher threads");
    }

    /// With a long linger, a binlog is synced once `max_records` wait, not after the
    /// linger; and closing one binlog of a pool leaves the others served.
    #[test]
    fn a_full_binlog_does_not_wait_out_the_linger() {
        let root = tempfile::tempdir().unwrap();
        let options = BinlogOptions {
            fsync: FsyncPolicy::Group,
            group_commit_interval: Duration::from_secs(3600),
            group_commit_max_records: 3,
            flush_pool: FlushPool::new(1),
            ..BinlogOptions::default()
        };
        let mut closed = open(&root.path().join("closed"), &options);
        closed.append(1, b"a").unwrap();
        closed.close().unwrap();

        let mut binlog = open(&root.path().join("open"), &options);
        for _ in 0..2 {
            binlog.append(1, b"row").unwrap();
        }
        assert_eq!(binlog.durability().durable_offset(), 0, "still lingering");
        let last = binlog.append(1, b"row").unwrap();
        durable_within(binlog.durability(), last, Duration::from_secs(30));
    }
}
