//! The partition replicas a tablet holds, keyed by `(tid, pid)`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tessera_proto::common::TermPair;
use tessera_proto::tablet::{ReplicaState, TableMeta, TableRole, TableState, TableStatus};
use tracing::{error, info, warn};

use crate::error::{Result, TabletError};
use crate::replication::history;
use crate::storage::error::io_error;
use crate::storage::replica::write_replica_state;
use crate::storage::table::{now_ms, read_meta};
use crate::storage::{FsyncPolicy, StorageError, Table, TableOptions};

/// A replica that is on disk but could not be loaded; kept so status calls can say why.
#[derive(Debug, Clone)]
struct LoadFailure {
    meta: Option<TableMeta>,
    reason: String,
    /// Its binlog failed under the `journal` policy: records it may lack are in the
    /// journal, which only a restart writes back, so it is not loaded again before.
    needs_restart: bool,
}

/// Whether a replica in `current` must refuse a snapshot sent for `offered` (its term,
/// as a follower of its sender): it is in a later term, or leads that term, or follows
/// another leader in it or none (fenced): it must not go back to following a leader it
/// has left, nor stop leading for a snapshot.
pub fn refuses_snapshot(current: &ReplicaState, offered: &ReplicaState) -> bool {
    current.term > offered.term
        || (current.term == offered.term
            && (current.role() == TableRole::Leader || current.leader != offered.leader))
}

pub struct Catalog {
    root: PathBuf,
    options: TableOptions,
    tables: RwLock<HashMap<(u32, u32), Arc<Table>>>,
    failed: RwLock<HashMap<(u32, u32), LoadFailure>>,
    /// Replicas being reloaded (after a truncation or a snapshot install): requests get a
    /// retryable "unavailable", not "not found".
    reloading: RwLock<std::collections::HashSet<(u32, u32)>>,
    /// Serialises create, load and drop so two of them never race on one directory.
    admin: Mutex<()>,
    /// Numbers the directories snapshots are received in: two streams for one replica
    /// (an old leader's still running when the new leader's starts) never share one.
    incoming_seq: std::sync::atomic::AtomicU64,
}

/// What the name of a directory a snapshot is received in holds.
const INCOMING: &str = ".incoming";

/// A directory a stopped process was receiving a snapshot in. If its install had begun
/// (the snapshot's state written and synced, the old replica already moved to
/// `recycle/`) and not ended, it holds the only copy of the replica: kept, for an
/// operator, with a warning. Any other was never installed and is removed.
fn settle_leftover_incoming(root: &Path, name: &str, path: &Path) {
    let replica = name.split(INCOMING).next().unwrap_or_default();
    let mid_install =
        path.join(crate::storage::replica::STATE_FILE).exists() && !root.join(replica).exists();
    if mid_install {
        warn!(path = %path.display(), "a snapshot install was cut short after the old replica was moved to recycle/: kept for an operator");
    } else {
        let _ = fs::remove_dir_all(path);
    }
}

fn replica_dir_name(tid: u32, pid: u32) -> String {
    format!("{tid}_{pid}")
}

fn parse_replica_dir(name: &str) -> Option<(u32, u32)> {
    let (tid, pid) = name.split_once('_')?;
    Some((tid.parse().ok()?, pid.parse().ok()?))
}

impl Catalog {
    /// Opens the catalog and loads every replica found under `root`. A replica that fails
    /// to load is logged and reported by [`Catalog::statuses`]; the others still load.
    pub fn open(root: &Path, options: TableOptions) -> Result<Catalog> {
        fs::create_dir_all(root).map_err(io_error(root))?;
        let catalog = Catalog {
            root: root.to_path_buf(),
            options,
            tables: RwLock::default(),
            failed: RwLock::default(),
            reloading: RwLock::default(),
            admin: Mutex::new(()),
            incoming_seq: Default::default(),
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(root).map_err(io_error(root))? {
            let entry = entry.map_err(io_error(root))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            if is_dir && name.contains(INCOMING) {
                settle_leftover_incoming(root, name, &entry.path());
                continue;
            }
            if let Some(id) = parse_replica_dir(name) {
                if is_dir {
                    found.push(id);
                }
            }
        }
        found.sort_unstable();
        for (tid, pid) in found {
            let _ = catalog.load_locked(tid, pid);
        }
        Ok(catalog)
    }

    fn dir_of(&self, tid: u32, pid: u32) -> PathBuf {
        self.root.join(replica_dir_name(tid, pid))
    }

    pub fn get(&self, tid: u32, pid: u32) -> Result<Arc<Table>> {
        if let Some(table) = self.tables.read().get(&(tid, pid)) {
            return Ok(table.clone());
        }
        if self.reloading.read().contains(&(tid, pid)) {
            return Err(TabletError::Reloading { tid, pid });
        }
        match self.failed.read().get(&(tid, pid)) {
            Some(failure) => Err(TabletError::LoadFailed {
                tid,
                pid,
                reason: failure.reason.clone(),
            }),
            None => Err(TabletError::TableNotFound { tid, pid }),
        }
    }

    /// Changes a replica's TTLs (see [`Table::set_ttls`]) under the catalog's lock, so
    /// that a replica being dropped, reloaded or replaced by a snapshot is not written
    /// through a stale handle.
    pub fn set_ttls(
        &self,
        tid: u32,
        pid: u32,
        ttls: Vec<tessera_common::Ttl>,
        version: u64,
    ) -> Result<bool> {
        let _admin = self.admin.lock();
        let table = self.get(tid, pid)?;
        Ok(table.set_ttls(ttls, version)?)
    }

    /// Creates a new empty replica.
    pub fn create(&self, meta: TableMeta) -> Result<Arc<Table>> {
        let _admin = self.admin.lock();
        let (tid, pid) = (meta.tid, meta.pid);
        let dir = self.dir_of(tid, pid);
        if self.tables.read().contains_key(&(tid, pid)) || dir.exists() {
            return Err(TabletError::TableExists { tid, pid });
        }
        let created = Table::create(&dir, meta, self.options.clone());
        let (table, _) = match created {
            Ok(created) => created,
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let table = Arc::new(table);
        self.tables.write().insert((tid, pid), table.clone());
        info!(tid, pid, name = %table.meta().name, "table created");
        Ok(table)
    }

    /// Loads a replica that is on disk but not loaded (for example one that failed
    /// before and was repaired, or one whose files were put in place by hand).
    pub fn load(&self, tid: u32, pid: u32) -> Result<Arc<Table>> {
        let _admin = self.admin.lock();
        if self.tables.read().contains_key(&(tid, pid)) {
            return Err(TabletError::TableExists { tid, pid });
        }
        if let Some(failure) = self.failed.read().get(&(tid, pid)) {
            if failure.needs_restart {
                return Err(TabletError::LoadFailed {
                    tid,
                    pid,
                    reason: failure.reason.clone(),
                });
            }
        }
        self.load_locked(tid, pid)
    }

    fn load_locked(&self, tid: u32, pid: u32) -> Result<Arc<Table>> {
        self.load_locked_after(tid, pid, None)
    }

    /// Loads a replica; `closed_cleanly` names an earlier load of it in this process,
    /// closed with its whole log synced since. The reload then lost nothing (checked: its
    /// log ends where the old one did) and keeps that load's `term_at_load` instead of
    /// the term it holds now.
    fn load_locked_after(
        &self,
        tid: u32,
        pid: u32,
        closed_cleanly: Option<EarlierLoad>,
    ) -> Result<Arc<Table>> {
        let dir = self.dir_of(tid, pid);
        if !dir.is_dir() {
            return Err(TabletError::TableNotFound { tid, pid });
        }
        let marker = dir.join(crate::storage::journal::RESTORE_FAILED);
        let opened = match fs::read_to_string(&marker) {
            Ok(why) => Err(StorageError::Corruption {
                file: marker,
                position: 0,
                reason: format!(
                    "{why} (remove this file once the replica is repaired or replaced)"
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Table::open(&dir, self.options.clone())
            }
            Err(e) => Err(io_error(&marker)(e)),
        };
        match opened {
            Ok((mut table, report)) => {
                if let Some(earlier) =
                    closed_cleanly.filter(|earlier| table.term_pair() == earlier.term_pair)
                {
                    table.keep_term_at_load(earlier.term_at_load);
                }
                if let Some(torn) = &report.torn_tail {
                    warn!(tid, pid, file = %torn.file.display(), position = torn.position,
                        bytes = torn.bytes_dropped, "a torn record was cut from the binlog tail");
                }
                let table = Arc::new(table);
                self.failed.write().remove(&(tid, pid));
                self.tables.write().insert((tid, pid), table.clone());
                Ok(table)
            }
            Err(e) => {
                error!(tid, pid, error = %e, "table failed to load");
                let failure = LoadFailure {
                    meta: read_meta(&dir).ok().flatten(),
                    reason: e.to_string(),
                    needs_restart: false,
                };
                self.failed.write().insert((tid, pid), failure);
                Err(e.into())
            }
        }
    }

    /// Unloads a replica and moves its directory to `<root>/recycle/`, from where an
    /// operator can still restore it.
    pub fn drop_table(&self, tid: u32, pid: u32) -> Result<()> {
        let _admin = self.admin.lock();
        let table = self.tables.write().remove(&(tid, pid));
        let was_failed = self.failed.write().remove(&(tid, pid)).is_some();
        if table.is_none() && !was_failed {
            return Err(TabletError::TableNotFound { tid, pid });
        }
        if let Some(table) = table {
            self.close_or_keep_failed(tid, pid, &table)?;
        }
        let recycle = self.root.join("recycle");
        fs::create_dir_all(&recycle).map_err(io_error(&recycle))?;
        let target = recycle.join(format!("{}_{}", replica_dir_name(tid, pid), now_ms()));
        let dir = self.dir_of(tid, pid);
        fs::rename(&dir, &target).map_err(io_error(&dir))?;
        info!(tid, pid, recycled_to = %target.display(), "table dropped");
        Ok(())
    }

    /// Status of every replica (or the ones matching `tid` / `pid`), failed ones included.
    pub fn statuses(&self, tid: Option<u32>, pid: Option<u32>) -> Vec<TableStatus> {
        let wanted = |t: u32, p: u32| tid.is_none_or(|x| x == t) && pid.is_none_or(|x| x == p);
        let mut out: Vec<TableStatus> = self
            .tables
            .read()
            .iter()
            .filter(|((t, p), _)| wanted(*t, *p))
            .map(|(_, table)| table.status())
            .collect();
        for (&(t, p), failure) in self.failed.read().iter() {
            if wanted(t, p) {
                let meta = failure.meta.clone().unwrap_or_default();
                out.push(TableStatus {
                    tid: t,
                    pid: p,
                    db: meta.db,
                    name: meta.name,
                    state: TableState::LoadFailed as i32,
                    error: failure.reason.clone(),
                    ..TableStatus::default()
                });
            }
        }
        for &(t, p) in self.reloading.read().iter() {
            if wanted(t, p) && !out.iter().any(|s| (s.tid, s.pid) == (t, p)) {
                out.push(TableStatus {
                    tid: t,
                    pid: p,
                    state: TableState::Loading as i32,
                    ..TableStatus::default()
                });
            }
        }
        out.sort_by_key(|s| (s.tid, s.pid));
        out
    }

    /// Cuts a replica's binlog after `keep_through` and reloads it (divergence repair).
    pub fn truncate_and_reload(&self, tid: u32, pid: u32, keep_through: u64) -> Result<Arc<Table>> {
        let _admin = self.admin.lock();
        let _reloading = self.start_reload(tid, pid);
        let old = self.tables.write().remove(&(tid, pid));
        let Some(old) = old else {
            return Err(TabletError::TableNotFound { tid, pid });
        };
        self.close_or_keep_failed(tid, pid, &old)?;
        drop(old);
        let binlog_dir = self.dir_of(tid, pid).join("binlog");
        let removed = crate::storage::binlog::truncate_after(&binlog_dir, keep_through)?;
        info!(
            tid,
            pid, keep_through, removed, "binlog truncated at the divergence point"
        );
        self.load_locked(tid, pid)
    }

    /// Closes a replica taken out of the catalog before its files are cut, moved or
    /// replaced. If that fails (its binlog could not be made durable), the files stay as
    /// they are and the replica is listed as failed with the reason, rather than
    /// vanishing from the catalog.
    fn close_or_keep_failed(&self, tid: u32, pid: u32, table: &Table) -> Result<()> {
        table.close().map_err(|e| {
            error!(tid, pid, error = %e, "closing the replica failed; its files are left as they are");
            let needs_restart = self.options.binlog.fsync == FsyncPolicy::Journal;
            let failure = LoadFailure {
                meta: Some(table.meta().clone()),
                reason: if needs_restart {
                    format!("closing failed: {e}; restart the tablet, which writes back what the journal holds")
                } else {
                    format!("closing failed: {e}")
                },
                needs_restart,
            };
            self.failed.write().insert((tid, pid), failure);
            e.into()
        })
    }

    /// Marks a replica as reloading until the guard drops.
    fn start_reload(&self, tid: u32, pid: u32) -> ReloadGuard<'_> {
        self.reloading.write().insert((tid, pid));
        ReloadGuard {
            catalog: self,
            id: (tid, pid),
        }
    }

    /// A new directory name to assemble a snapshot received for `(tid, pid)` in: each
    /// stream its own, so a stream only ever creates, removes or installs its own files.
    pub fn new_incoming_dir(&self, tid: u32, pid: u32) -> PathBuf {
        let seq = self
            .incoming_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root
            .join(format!("{}{INCOMING}.{seq}", replica_dir_name(tid, pid)))
    }

    /// Replaces a replica (if any) with the snapshot assembled in `incoming`, as a
    /// follower in `state`'s term, and loads it.
    pub fn install_snapshot(
        &self,
        tid: u32,
        pid: u32,
        incoming: &Path,
        state: &ReplicaState,
    ) -> Result<Arc<Table>> {
        let _admin = self.admin.lock();
        let _reloading = self.start_reload(tid, pid);
        let dir = self.dir_of(tid, pid);
        // Taken out in a statement of its own: a guard in the `if let` below would hold
        // the map's lock through the block, and the reload there takes it again.
        let old = self.tables.write().remove(&(tid, pid));
        if let Some(old) = old {
            self.close_or_keep_failed(tid, pid, &old)?;
            // Checked once closed, when no fence can change it any more: a replica
            // fenced into a later term (or to nobody in this one) while the snapshot
            // came must not go back to following the leader that sent it.
            let current = old.replica_state();
            if refuses_snapshot(&current, state) {
                // Its fence may have chosen it to lead that later term: reloaded after a
                // clean close, it still may (a restart is what takes that away). Not if
                // its binlog had failed (a failed fsync may have lost pages, and the close
                // does not sync such a log), nor if it led meanwhile.
                let closed_cleanly = (old.binlog_failure().is_none()
                    && current.role() != TableRole::Leader)
                    .then(|| EarlierLoad {
                        term_at_load: old.term_at_load(),
                        term_pair: old.term_pair(),
                    });
                drop(old);
                // The refused snapshot's files are of no use to any later one.
                let _ = fs::remove_dir_all(incoming);
                self.load_locked_after(tid, pid, closed_cleanly)?;
                return Err(StorageError::StaleTerm {
                    current: current.term,
                    got: state.term,
                }
                .into());
            }
        }
        self.failed.write().remove(&(tid, pid));
        // The snapshot made whole and durable before the old replica is moved away: an
        // error here leaves the old one in place.
        write_replica_state(incoming, state)?;
        // The received files are fsynced one by one; their directory entries too, before
        // the replica is counted as holding the snapshot.
        crate::storage::crashsafe::fsync_dir(&incoming.join("snapshot"))?;
        crate::storage::crashsafe::fsync_dir(incoming)?;
        if dir.exists() {
            let recycle = self.root.join("recycle");
            fs::create_dir_all(&recycle).map_err(io_error(&recycle))?;
            let target = recycle.join(format!("{}_{}", replica_dir_name(tid, pid), now_ms()));
            fs::rename(&dir, &target).map_err(io_error(&dir))?;
        }
        fs::rename(incoming, &dir).map_err(io_error(incoming))?;
        crate::storage::crashsafe::fsync_dir(&self.root)?;
        info!(tid, pid, term = state.term, leader = %state.leader, "snapshot installed");
        self.load_locked(tid, pid)
    }

    /// (last term, last offset, term history) of a replica, read from its files when it
    /// is not loaded.
    pub fn term_pair(&self, tid: u32, pid: u32) -> Result<(u64, u64, bool, Vec<TermPair>)> {
        if let Ok(table) = self.get(tid, pid) {
            let (term, offset) = table.term_pair();
            return Ok((term, offset, true, table.term_history()));
        }
        let dir = self.dir_of(tid, pid);
        if !dir.is_dir() {
            return Err(TabletError::TableNotFound { tid, pid });
        }
        let (term, offset, history) = term_pair_on_disk(&dir)?;
        Ok((term, offset, false, history))
    }

    pub fn tables(&self) -> Vec<Arc<Table>> {
        self.tables.read().values().cloned().collect()
    }

    /// Makes every replica durable and stops their binlog flushers.
    pub fn close_all(&self) {
        for table in self.tables() {
            if let Err(e) = table.close() {
                let meta = table.meta();
                error!(tid = meta.tid, pid = meta.pid, error = %e, "closing table failed");
            }
        }
    }
}

/// What a reload carries over from the replica's earlier load in this process.
struct EarlierLoad {
    term_at_load: Option<u64>,
    /// Its log's last (term, offset) when it was closed, as it reported them to a fence.
    term_pair: (u64, u64),
}

/// (last term, last offset, term history) of a replica that is not loaded, from its
/// files: the snapshot's manifest, then the terms of the binlog's records after it.
pub fn term_pair_on_disk(dir: &Path) -> Result<(u64, u64, Vec<TermPair>)> {
    let manifest = crate::storage::snapshot::read_manifest(&dir.join("snapshot"))?;
    let (mut history, mut last) = match &manifest {
        Some(m) => {
            let mut history = m.term_history.clone();
            history::truncate(&mut history, m.offset);
            let last = (history::term_at(&history, m.offset), m.offset);
            (history, last)
        }
        None => (Vec::new(), (0, 0)),
    };
    // The terms of the records after the snapshot complete its history: a decision
    // from the manifest alone would miss every term change since.
    let after = last.1;
    crate::storage::binlog::scan_records(&dir.join("binlog"), |record| {
        if record.offset > after {
            history::note_record(&mut history, record.term, record.offset);
            last = (record.term, record.offset);
        }
    })?;
    Ok((last.0, last.1, history))
}

struct ReloadGuard<'a> {
    catalog: &'a Catalog,
    id: (u32, u32),
}

impl Drop for ReloadGuard<'_> {
    fn drop(&mut self) {
        self.catalog.reloading.write().remove(&self.id);
    }
}
