//! The nameserver's state: its ZooKeeper session, whether it leads (and the election
//! lock through which every metadata write is fenced), the tablet registry, and the
//! metadata operations.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tessera_common::coordination::{self, Lease, ZkSettings};
use tessera_common::table_layout::{self, LayoutError};
use tessera_common::zk_auth;
use tessera_common::Schema;
use tessera_proto::nameserver::*;
use tessera_proto::tablet::{self as tpb, TableRole};
use tokio::sync::watch;
use tracing::{error, info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError, OwnedLockClient};

use crate::detection::{Probe, ReportCounts, Suspicion};
use crate::error::{NsError, Result};
use crate::metadata_cache::Tables;
use crate::paths::Paths;
use crate::placement;
pub(crate) use crate::tablet_channels::{call, tablet, tablet_error};

pub use tessera_common::auth::{db_or_default, DEFAULT_DB};
pub const DEFAULT_PARTITION_NUM: u32 = 8;
pub const DEFAULT_REPLICA_NUM: u32 = 3;

/// What the registry knows of one tablet.
#[derive(Debug, Clone)]
pub struct TabletEntry {
    pub healthy: bool,
    /// When it registered (healthy) or disappeared (offline).
    pub since: Instant,
    /// The ZooKeeper session that owns its registration: a new one means the tablet
    /// restarted, even if it did so before its old session expired.
    pub session: i64,
    /// Registered, but found gone or silent after a follower's report (see `detection`).
    pub suspected: Option<Suspicion>,
}

impl TabletEntry {
    /// Registered and not suspected: a tablet the planner may use.
    fn is_healthy(&self) -> bool {
        self.healthy && self.suspected.is_none()
    }
}

/// The healthy tablets of a registry (see `TabletEntry::is_healthy`).
fn healthy_of(tablets: &BTreeMap<String, TabletEntry>) -> Vec<String> {
    tablets
        .iter()
        .filter(|(_, entry)| entry.is_healthy())
        .map(|(endpoint, _)| endpoint.clone())
        .collect()
}

/// Where a tablet stands for failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Registered and not suspected.
    Registered,
    /// Not registered: its session ended, so its ZooKeeper lease lapsed before.
    Absent,
    /// Registered, but a check found it gone (`Probe::Gone`) or silent.
    Suspected(Probe),
}

pub struct Nameserver {
    pub endpoint: String,
    pub paths: Paths,
    settings: ZkSettings,
    /// The current ZooKeeper session.
    client: RwLock<Option<Client>>,
    /// Held while this nameserver leads, with the number of that leadership (the count
    /// of `leaderships_won` when it was won); writes through it are fenced by the lock
    /// node.
    leader: RwLock<Option<(u64, Arc<OwnedLockClient>)>>,
    /// How many times this process has won the leadership (see `op_book`).
    leaderships_won: std::sync::atomic::AtomicU64,
    /// The leader's copy of every op (see `op_book`).
    pub(crate) op_book: crate::op_book::OpBook,
    /// The planner's last answer (see `Nameserver::plan_all`).
    pub(crate) plan_memo: parking_lot::Mutex<Option<crate::planner::PlanMemo>>,
    /// Partition changes waiting for their chunk's next write (see `group_writes`).
    pub(crate) chunk_writes: Arc<crate::group_writes::ChunkWrites>,
    /// Fences waiting for a term, new ops for an id (see `group_writes`).
    pub(crate) counter_writes: Arc<crate::group_writes::CounterWrites>,
    /// Terms reserved ahead for fences (see `group_writes`).
    pub(crate) term_block: parking_lot::Mutex<crate::group_writes::TermBlock>,
    tablets: RwLock<BTreeMap<String, TabletEntry>>,
    /// Whether `/nodes` has been read in the current session. Until then every tablet
    /// would look offline, so the failover planner waits.
    registry_ready: std::sync::atomic::AtomicBool,
    /// Tablets seen registering again under a new session since the op pipeline last
    /// looked: their replicas restarted as followers, whatever the metadata says.
    restarted: parking_lot::Mutex<Restarts>,
    /// Serialises metadata changes.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// A task is bringing replicas' TTLs in line (see `ttl.rs`).
    pub(crate) aligning: std::sync::atomic::AtomicBool,
    /// Every op task fails its op after this long.
    pub(crate) task_timeout: Duration,
    /// ChangeLeader: the replicas that accepted to follow, from kPromoteLeader to
    /// kUpdateLeaderInfo (after a leader change they count as alive).
    pub(crate) told_followers: parking_lot::Mutex<std::collections::HashMap<u64, Vec<String>>>,
    /// Fault injection for tests: the next run of one task fails or is delayed.
    task_fault: parking_lot::Mutex<Option<TaskFault>>,
    /// Valid while ZooKeeper answered within two thirds of the session timeout: a leader
    /// without it acts as no leader (no op task, no metadata write, 503 on the leader
    /// check), well before a standby can take over.
    lease: Arc<Lease>,
    /// Wakes the op pipeline before its next tick (a tablet was found down).
    pub(crate) ops_kick: tokio::sync::Notify,
    /// Every table, kept current by a watch (see `metadata_cache`).
    pub(crate) metadata: Arc<crate::metadata_cache::MetadataCache>,
    /// Until that copy is whole: the tables as last read, with the modification (zxid)
    /// of `table_changed` read just before, read again only once that moved.
    tables_seen: parking_lot::Mutex<Option<(i64, Tables)>>,
    /// Tablets being checked after a follower's report.
    pub(crate) probing: parking_lot::Mutex<std::collections::HashSet<String>>,
    pub(crate) report_counts: parking_lot::Mutex<ReportCounts>,
    /// From `--root_password_file`: the root user a new leader makes if the cluster has
    /// none.
    root_password_hash: parking_lot::Mutex<Option<String>>,
}

/// A fault injected into the next run of one op task, for tests (`--inject_task_fault`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFault {
    pub task: String,
    pub kind: TaskFaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFaultKind {
    /// The task fails without running.
    Fail,
    /// The task runs after this delay.
    Delay(Duration),
    /// The task runs, then this delay passes before its outcome is acted on or saved:
    /// a nameserver stopped between a task's calls and its write.
    DelayAfter(Duration),
}

impl std::str::FromStr for TaskFault {
    type Err = String;

    /// `<task>:fail`, `<task>:delay_ms=<n>` or `<task>:delay_after_ms=<n>`.
    fn from_str(text: &str) -> std::result::Result<TaskFault, String> {
        let usage = || {
            format!(
                "`{text}`: expected <task>:fail, <task>:delay_ms=<n> or <task>:delay_after_ms=<n>"
            )
        };
        let millis = |ms: &str| ms.parse().map(Duration::from_millis).map_err(|_| usage());
        let (task, kind) = text.split_once(':').ok_or_else(usage)?;
        let kind = match kind.split_once('=') {
            None if kind == "fail" => TaskFaultKind::Fail,
            Some(("delay_ms", ms)) => TaskFaultKind::Delay(millis(ms)?),
            Some(("delay_after_ms", ms)) => TaskFaultKind::DelayAfter(millis(ms)?),
            _ => return Err(usage()),
        };
        Ok(TaskFault {
            task: task.to_string(),
            kind,
        })
    }
}

/// Tablets seen restarting, not yet acted on, with the number of the election session
/// they belong to (moved on when a session ends, so that restarts taken in one are never
/// given back into the next).
#[derive(Default)]
pub(crate) struct Restarts {
    generation: u64,
    tablets: std::collections::BTreeSet<String>,
}

/// Restarts taken for a pass of the op pipeline (see `Nameserver::take_restarted`).
pub(crate) struct TakenRestarts {
    generation: u64,
    pub tablets: Vec<String>,
}

/// Where this nameserver stands in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    Leading,
    /// Holds the election lock but lost touch with ZooKeeper: it may be replaced any
    /// moment, so it does nothing until ZooKeeper answers again.
    Suspended,
    Standby,
}

impl Leadership {
    /// Whether what this nameserver learned while leading (a tablet found gone or silent,
    /// a restart seen) still stands. A lapse of the ZooKeeper lease (`Suspended`) ends
    /// either in leading again under the same lock, when that evidence is still this
    /// leadership's to act on, or in standing by, when it is dropped. Dropped at the
    /// lapse, a dead tablet whose session still stands would be taken for back.
    pub fn keeps_evidence(self) -> bool {
        self != Leadership::Standby
    }
}

pub(crate) fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(zk_auth::acls())
}

impl Nameserver {
    pub fn new(endpoint: String, settings: ZkSettings, task_timeout: Duration) -> Arc<Nameserver> {
        Arc::new(Nameserver {
            task_timeout,
            task_fault: parking_lot::Mutex::default(),
            lease: Lease::for_session(settings.session_timeout),
            told_followers: parking_lot::Mutex::default(),
            endpoint,
            paths: Paths::new(&settings.root),
            settings,
            client: RwLock::new(None),
            leader: RwLock::new(None),
            leaderships_won: std::sync::atomic::AtomicU64::new(0),
            op_book: Default::default(),
            plan_memo: Default::default(),
            chunk_writes: Default::default(),
            counter_writes: Default::default(),
            term_block: Default::default(),
            tablets: RwLock::new(BTreeMap::new()),
            registry_ready: std::sync::atomic::AtomicBool::new(false),
            restarted: Default::default(),
            admin: tokio::sync::Mutex::new(()),
            aligning: std::sync::atomic::AtomicBool::new(false),
            ops_kick: tokio::sync::Notify::new(),
            metadata: Default::default(),
            tables_seen: Default::default(),
            probing: Default::default(),
            report_counts: Default::default(),
            root_password_hash: Default::default(),
        })
    }

    /// The hash of the password `root` gets on the cluster's first start.
    pub fn set_root_password_hash(&self, hash: String) {
        *self.root_password_hash.lock() = Some(hash);
    }

    /// Arms a fault for the next run of an op task (fault injection for tests).
    pub fn inject_task_fault(&self, fault: TaskFault) {
        *self.task_fault.lock() = Some(fault);
    }

    /// Takes the armed fault if it is for `task` and `when` picks its kind (once).
    fn take_fault(&self, task: &str, when: fn(TaskFaultKind) -> bool) -> Option<TaskFaultKind> {
        let mut armed = self.task_fault.lock();
        if armed
            .as_ref()
            .is_none_or(|f| f.task != task || !when(f.kind))
        {
            return None;
        }
        let kind = armed.take()?.kind;
        warn!(task, fault = ?kind, "injecting a fault (--inject_task_fault)");
        Some(kind)
    }

    /// Applies the armed fault if it is for `task` and acts before it runs (once): a
    /// failure to report, or a delay before the task runs.
    pub(crate) async fn injected_fault(&self, task: &str) -> Option<NsError> {
        let before = |kind| matches!(kind, TaskFaultKind::Fail | TaskFaultKind::Delay(_));
        match self.take_fault(task, before)? {
            TaskFaultKind::Fail => Some(NsError::InvalidArgument(format!(
                "{task} failed by injection"
            ))),
            TaskFaultKind::Delay(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            TaskFaultKind::DelayAfter(_) => None,
        }
    }

    /// Waits out the armed fault if it is for `task` and acts after it ran (once).
    pub(crate) async fn injected_delay_after(&self, task: &str) {
        let after = |kind| matches!(kind, TaskFaultKind::DelayAfter(_));
        if let Some(TaskFaultKind::DelayAfter(delay)) = self.take_fault(task, after) {
            tokio::time::sleep(delay).await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leadership() == Leadership::Leading
    }

    /// Refuses unless this nameserver leads with a valid lease: checked before each
    /// tablet RPC of a failover, so a leader that stalled (a pause, a lost network) sends
    /// nothing more once it may have been replaced.
    pub(crate) fn check_leading(&self) -> Result<()> {
        match self.leadership() {
            Leadership::Leading => Ok(()),
            Leadership::Suspended => Err(NsError::Zk(
                "lost touch with ZooKeeper mid-op; whoever leads resumes it".into(),
            )),
            Leadership::Standby => Err(NsError::NotLeader {
                leader: String::new(),
            }),
        }
    }

    pub fn leadership(&self) -> Leadership {
        match (self.leader.read().is_some(), self.lease.is_valid()) {
            (true, true) => Leadership::Leading,
            (true, false) => Leadership::Suspended,
            (false, _) => Leadership::Standby,
        }
    }

    pub(crate) fn client(&self) -> Result<Client> {
        self.client
            .read()
            .clone()
            .ok_or_else(|| NsError::Zk("not connected to ZooKeeper".into()))
    }

    /// The election lock, or `NotLeader` naming whoever leads.
    pub(crate) async fn lock(&self) -> Result<Arc<OwnedLockClient>> {
        self.lock_and_leadership().await.map(|(_, lock)| lock)
    }

    /// The number of the leadership this nameserver holds now, if it leads (see
    /// `op_book`).
    pub(crate) fn leadership_number(&self) -> Option<u64> {
        self.leader.read().as_ref().map(|(number, _)| *number)
    }

    /// The election lock with the number of the leadership it belongs to.
    pub(crate) async fn lock_and_leadership(&self) -> Result<(u64, Arc<OwnedLockClient>)> {
        if let Some(lock) = self.leader.read().clone() {
            if !self.lease.is_valid() {
                return Err(NsError::Zk(
                    "this nameserver lost touch with ZooKeeper and may be replaced; it acts \
                     again once ZooKeeper answers"
                        .into(),
                ));
            }
            return Ok(lock);
        }
        let leader = self
            .nameservers()
            .await
            .ok()
            .and_then(|list| list.into_iter().find(|(_, leads)| *leads))
            .map(|(endpoint, _)| endpoint)
            .unwrap_or_default();
        Err(NsError::NotLeader { leader })
    }

    /// Runs the election until `stop`: contend, lead until the session ends, contend again.
    /// On a clean stop: gives leadership up and closes the session at once, so a standby
    /// takes over now rather than after the session times out.
    async fn release(&self) {
        let lock = self.leader.write().take();
        let client = self.client.write().take();
        if lock.is_some() || client.is_some() {
            // The lock deletes its node and the last client handle closes the session,
            // both from background tasks: give them a moment before the process exits.
            drop(lock);
            drop(client);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn run_election(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let session = tokio::select! {
                s = self.clone().lead_one_session() => s,
                _ = stop.changed() => break,
            };
            {
                // One step, so that a judgement checking its leadership under the read
                // lock (`suspect_for`) plants its suspicion before the forgetting or not
                // at all.
                let mut leader = self.leader.write();
                leader.take();
                self.forget_leaderships_evidence();
            }
            if let Err(e) = session {
                warn!(error = %e, "nameserver session ended");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => break,
            }
        }
        self.release().await;
    }

    async fn lead_one_session(self: Arc<Self>) -> Result<()> {
        let client =
            coordination::connect_elected(&self.settings, &self.paths.directories()).await?;
        *self.client.write() = Some(client.clone());
        // The lease is renewed for as long as this session lasts (until this function
        // returns and drops `_renewing`).
        let _renewing =
            coordination::renew_for_session(&client, self.paths.leader_dir(), self.lease.clone());
        self.registry_ready
            .store(false, std::sync::atomic::Ordering::Release);
        tokio::spawn(self.clone().watch_tablets(client.clone()));
        tokio::spawn(crate::metadata_cache::follow(
            self.metadata.clone(),
            client.clone(),
            self.paths.table_data(),
        ));

        let lock = Arc::new(
            coordination::contend(&client, &self.paths.leader_dir(), &self.endpoint).await?,
        );
        for (path, initial) in [
            (self.paths.table_index(), "0"),
            (self.paths.term(), "0"),
            (self.paths.table_changed(), "0"),
            (self.paths.auto_failover(), "true"),
            (self.paths.op_index(), "0"),
        ] {
            match lock.create(&path, initial.as_bytes(), &persistent()).await {
                Ok(_) | Err(ZkError::NodeExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let root_password_hash = self.root_password_hash.lock().clone();
        self.ensure_root(&lock, root_password_hash.as_deref())
            .await?;
        // Nodes made before ZooKeeper authentication was turned on are still open to
        // anyone: the leader closes them.
        let restricted = zk_auth::restrict_open_nodes(&client, &self.settings.root).await?;
        if restricted > 0 {
            info!(
                nodes = restricted,
                "ZooKeeper nodes made writable by this cluster's identity only"
            );
        }
        self.migrate_inline_tables(&lock).await?;
        let number = self
            .leaderships_won
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        *self.leader.write() = Some((number, lock));
        info!(endpoint = %self.endpoint, "became the nameserver leader");

        coordination::until_session_ends(&client).await;
        warn!("ZooKeeper session lost: no longer the leader");
        Ok(())
    }

    /// Moves every table still stored in one node (the layout before chunks) to chunk
    /// nodes, before this nameserver acts as leader (see `table_layout`).
    async fn migrate_inline_tables(&self, lock: &OwnedLockClient) -> Result<()> {
        let dir = self.paths.table_data();
        // The copy kept as a standby may still be taking in the old leader's last
        // writes: read it whole before acting on it. The read also finds the tables
        // still in one node.
        crate::metadata_cache::reload(&self.metadata, lock.client(), &dir).await?;
        let mut moved = 0;
        for child in self.metadata.inline_tables() {
            let path = format!("{dir}/{child}");
            match table_layout::migrate_inline(lock, &path, &persistent()).await {
                Ok(true) => {
                    info!(table = %child, "table metadata moved to chunk nodes");
                    moved += 1;
                }
                Ok(false) | Err(LayoutError::Incomplete { .. }) => {}
                // One damaged table must not keep the cluster without a leader.
                Err(LayoutError::Decode { path, reason }) => {
                    error!(table = %path, reason, "a table's metadata does not decode; left in the old layout");
                }
                Err(LayoutError::Zk(e)) => return Err(e.into()),
            }
        }
        if moved > 0 {
            self.announce_table_change(lock).await?;
            info!(
                tables = moved,
                "table metadata migrated to the chunked layout"
            );
            crate::metadata_cache::reload(&self.metadata, lock.client(), &dir).await?;
        }
        Ok(())
    }

    /// Follows `/nodes`: present tablets are healthy, vanished ones offline.
    async fn watch_tablets(self: Arc<Self>, client: Client) {
        let nodes = self.paths.nodes();
        loop {
            match client.list_and_watch_children(&nodes).await {
                Ok((children, watcher)) => {
                    let mut present = Vec::with_capacity(children.len());
                    let mut unread = None;
                    for child in children {
                        match client.check_stat(&format!("{nodes}/{child}")).await {
                            Ok(Some(stat)) => present.push((child, stat.ephemeral_owner)),
                            // Gone meanwhile: the next round sees it absent.
                            Ok(None) => {}
                            Err(e) => unread = Some(e),
                        }
                    }
                    if let Some(e) = unread {
                        // An error proves nothing about the tablet: absent is taken as
                        // proof that its lease lapsed, so list again rather than guess.
                        warn!(error = %e, "reading a tablet's registration failed; listing again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    self.update_tablets(&present);
                    self.registry_ready
                        .store(true, std::sync::atomic::Ordering::Release);
                    watcher.changed().await;
                }
                Err(ZkError::SessionExpired) | Err(ZkError::ClientClosed) => return,
                Err(e) => {
                    warn!(error = %e, "listing tablets failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Takes the registered tablets with the session owning each registration.
    fn update_tablets(&self, present: &[(String, i64)]) {
        let now = Instant::now();
        let mut tablets = self.tablets.write();
        for (endpoint, session) in present {
            let entry = tablets.entry(endpoint.clone()).or_insert(TabletEntry {
                healthy: false,
                since: now,
                session: *session,
                suspected: None,
            });
            // Also after a moment seen offline: the old node may vanish and the new one
            // appear between two listings, too quickly for any op to have run.
            if entry.session != *session {
                warn!(endpoint = %endpoint, "tablet restarted (registered under a new session)");
                self.restarted.lock().tablets.insert(endpoint.clone());
                entry.since = now;
                // A new process: what was suspected of the old one no longer holds.
                entry.suspected = None;
            }
            if !entry.healthy || entry.session != *session {
                // A process that registered afresh: what the pool knew of the old one
                // (its connection, or that it could not be reached) no longer holds.
                crate::tablet_channels::registered(endpoint);
            }
            if !entry.healthy {
                info!(endpoint = %endpoint, "tablet healthy");
                entry.healthy = true;
                entry.since = now;
            }
            entry.session = *session;
        }
        for (endpoint, entry) in tablets.iter_mut() {
            if entry.healthy && !present.iter().any(|(e, _)| e == endpoint) {
                warn!(endpoint = %endpoint, "tablet offline");
                entry.healthy = false;
                entry.since = now;
                // Absent says more than any suspicion.
                entry.suspected = None;
            }
        }
    }

    /// The tablets that restarted since the last call.
    pub(crate) fn take_restarted(&self) -> TakenRestarts {
        let mut restarts = self.restarted.lock();
        TakenRestarts {
            generation: restarts.generation,
            tablets: std::mem::take(&mut restarts.tablets).into_iter().collect(),
        }
    }

    /// The restarts not yet acted on, taken, and the healthy tablets, read together. A
    /// pass plans with this view: a tablet whose restart the registry records after it
    /// (a new session makes it healthy again) is planned for by the next pass, after that
    /// pass marks its replicas dead. Read apart, a pass could plan a RecoverTable for the
    /// returning tablet, and the next one mark the replica it recovered meanwhile dead
    /// again, for a second RecoverTable.
    pub(crate) fn take_restarted_with_healthy(&self) -> (TakenRestarts, Vec<String>) {
        let tablets = self.tablets.read();
        // The registry records a restart and the tablet's new state under its write
        // lock: both or neither are seen here.
        let taken = self.take_restarted();
        (taken, healthy_of(&tablets))
    }

    /// Restarts taken by a pass that could not act on them, for the next pass, unless
    /// the election session they were taken in has ended meanwhile.
    pub(crate) fn give_back_restarted(&self, taken: TakenRestarts) {
        let mut restarts = self.restarted.lock();
        if restarts.generation == taken.generation {
            restarts.tablets.extend(taken.tablets);
        }
    }

    /// What a leadership learned of the tablets (suspicions, restarts seen) goes with
    /// it: a later leadership of this nameserver finds out for itself.
    fn forget_leaderships_evidence(&self) {
        for entry in self.tablets.write().values_mut() {
            entry.suspected = None;
        }
        let mut restarts = self.restarted.lock();
        restarts.generation += 1;
        restarts.tablets.clear();
    }

    pub fn tablets(&self) -> Vec<TabletInfo> {
        self.tablets
            .read()
            .iter()
            .map(|(endpoint, entry)| TabletInfo {
                endpoint: endpoint.clone(),
                state: if entry.is_healthy() {
                    "kTabletHealthy"
                } else {
                    "kTabletOffline"
                }
                .into(),
                age_ms: entry
                    .suspected
                    .map_or(entry.since, |s| s.since)
                    .elapsed()
                    .as_millis() as u64,
            })
            .collect()
    }

    pub fn registry_ready(&self) -> bool {
        self.registry_ready
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_healthy(&self, endpoint: &str) -> bool {
        self.presence(endpoint) == Presence::Registered
    }

    pub fn presence(&self, endpoint: &str) -> Presence {
        match self.tablets.read().get(endpoint) {
            Some(entry) if entry.healthy => match entry.suspected {
                Some(suspicion) => Presence::Suspected(suspicion.probe),
                None => Presence::Registered,
            },
            _ => Presence::Absent,
        }
    }

    /// Takes a registered tablet for gone or silent; false if it was not registered or
    /// already suspected.
    pub(crate) fn suspect(&self, endpoint: &str, probe: Probe) -> bool {
        let mut tablets = self.tablets.write();
        match tablets.get_mut(endpoint) {
            Some(entry) if entry.healthy && entry.suspected.is_none() => {
                entry.suspected = Some(Suspicion {
                    probe,
                    since: Instant::now(),
                });
                true
            }
            _ => false,
        }
    }

    /// `suspect`, if this nameserver still holds leadership number `leadership`: a
    /// judgement that outlived its leadership plants nothing in the next.
    pub(crate) fn suspect_for(&self, leadership: u64, endpoint: &str, probe: Probe) -> bool {
        let leader = self.leader.read();
        leader
            .as_ref()
            .is_some_and(|(number, _)| *number == leadership)
            && self.suspect(endpoint, probe)
    }

    pub(crate) fn suspicion(&self, endpoint: &str) -> Option<Suspicion> {
        self.tablets.read().get(endpoint).and_then(|e| e.suspected)
    }

    /// The ZooKeeper session holding `endpoint`'s registration, while it is registered.
    pub(crate) fn registered_session(&self, endpoint: &str) -> Option<i64> {
        self.tablets
            .read()
            .get(endpoint)
            .filter(|entry| entry.healthy)
            .map(|entry| entry.session)
    }

    pub(crate) fn clear_suspicion(&self, endpoint: &str) {
        if let Some(entry) = self.tablets.write().get_mut(endpoint) {
            entry.suspected = None;
        }
    }

    pub fn report_counts(&self) -> ReportCounts {
        *self.report_counts.lock()
    }

    pub async fn auto_failover(&self) -> Result<bool> {
        Ok(self
            .conf_get()
            .await?
            .iter()
            .any(|e| e.key == "auto_failover" && e.value == "true"))
    }

    pub(crate) fn healthy_tablets(&self) -> Vec<String> {
        healthy_of(&self.tablets.read())
    }

    /// Every nameserver in the election, in order; the first leads.
    pub async fn nameservers(&self) -> Result<Vec<(String, bool)>> {
        let order = coordination::election_order(&self.client()?, &self.paths.leader_dir()).await?;
        Ok(order
            .into_iter()
            .enumerate()
            .map(|(i, endpoint)| (endpoint, i == 0))
            .collect())
    }

    /// Every table's metadata, read from ZooKeeper (all tables at once, each with its
    /// chunks at once). A table being created or dropped is left out.
    pub async fn tables(&self) -> Result<Vec<TableInfo>> {
        crate::metrics::METRICS.tables_read();
        let client = self.client()?;
        let nodes = crate::metadata_cache::read_all(&client, &self.paths.table_data()).await?;
        Ok(crate::metadata_cache::assemble_all(&nodes))
    }

    /// Every table, from the nameserver's copy (see `metadata_cache`): no ZooKeeper read
    /// at all. Until that copy is whole (the first moments of a session), as
    /// [`Nameserver::tables`] reads them, but read again only when
    /// `/notify/table_changed` moved since the last read (every metadata write moves
    /// it, after the write). The mark is read before the tables, so a write it misses
    /// moves it again for the next pass.
    pub(crate) async fn cached_tables(&self) -> Result<Tables> {
        if let Some(tables) = self.metadata.tables() {
            return Ok(tables);
        }
        let client = self.client()?;
        let (_, mark) = client.get_data(&self.paths.table_changed()).await?;
        if let Some((seen, tables)) = &*self.tables_seen.lock() {
            if *seen == mark.mzxid {
                return Ok(tables.clone());
            }
        }
        let tables: Tables = Arc::new(self.tables().await?.into_iter().map(Arc::new).collect());
        *self.tables_seen.lock() = Some((mark.mzxid, tables.clone()));
        Ok(tables)
    }

    /// Every child of `dir` with its data, read all at once (one round trip's wait, not
    /// one per child: the op pipeline reads them on every tick and before a failover).
    /// A child gone between the listing and its read is left out.
    pub(crate) async fn read_children(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .read_children_with_versions(dir)
            .await?
            .into_iter()
            .map(|(path, data, _)| (path, data))
            .collect())
    }

    /// As [`Nameserver::read_children`], with each child's data version.
    pub(crate) async fn read_children_with_versions(
        &self,
        dir: &str,
    ) -> Result<Vec<(String, Vec<u8>, i32)>> {
        let client = self.client()?;
        let mut reads = tokio::task::JoinSet::new();
        for (i, child) in client.list_children(dir).await?.into_iter().enumerate() {
            let (client, path) = (client.clone(), format!("{dir}/{child}"));
            reads.spawn(async move {
                let read = client.get_data(&path).await;
                (i, path, read)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = reads.join_next().await {
            let (i, path, read) = joined.map_err(|e| NsError::Zk(e.to_string()))?;
            match read {
                Ok((data, stat)) => out.push((i, path, data, stat.version)),
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by_key(|(i, _, _, _)| *i);
        Ok(out
            .into_iter()
            .map(|(_, path, data, version)| (path, data, version))
            .collect())
    }

    /// A table's metadata; an empty `db` means the default database.
    pub async fn table(&self, db: &str, name: &str) -> Result<TableInfo> {
        let db = db_or_default(db);
        // The leader's copy, when it holds the table: only the leader writes tables, and
        // its copy holds its own writes the moment they succeed (one of unknown outcome
        // leaves the table unsure, read below until a whole read settles it). The
        // commands that start ops ask for a table each: `recoverdata` sends tens of
        // thousands of them, each of which read every node of its table before.
        if self.is_leader() {
            if let Some(table) = self.metadata.table(&format!("{db}.{name}")) {
                return Ok(TableInfo::clone(&table));
            }
        }
        let client = self.client()?;
        match table_layout::read_table(&client, &self.paths.table(db, name)).await {
            Ok(Some(stored)) => Ok(stored.table),
            Ok(None) => Err(NsError::TableNotFound(format!("{db}.{name}"))),
            Err(LayoutError::Incomplete { .. }) => Err(NsError::InvalidArgument(format!(
                "table `{db}.{name}` is incomplete: its creation or drop was cut short; drop \
                 it to remove what is left"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves `/notify/table_changed` after a metadata write. Clients and the other
    /// nameservers watch it and compare its modification, never its value, so it is
    /// written blind: no read, and no compare-and-set for concurrent ops to contend on.
    pub(crate) async fn announce_table_change(&self, lock: &OwnedLockClient) -> Result<()> {
        crate::group_writes::write_table_changed(lock, &self.paths.table_changed()).await?;
        Ok(())
    }

    pub async fn conf_get(&self) -> Result<Vec<ConfEntry>> {
        let client = self.client()?;
        let value = match client.get_data(&self.paths.auto_failover()).await {
            Ok((data, _)) => String::from_utf8_lossy(&data).into_owned(),
            Err(ZkError::NoNode) => "true".into(),
            Err(e) => return Err(e.into()),
        };
        Ok(vec![ConfEntry {
            key: "auto_failover".into(),
            value,
        }])
    }

    pub async fn conf_set(&self, key: &str, value: &str) -> Result<()> {
        if key != "auto_failover" {
            return Err(NsError::InvalidArgument(format!(
                "unknown configuration key `{key}` (known: auto_failover)"
            )));
        }
        let value = match value.to_ascii_lowercase().as_str() {
            "true" => "true",
            "false" => "false",
            other => {
                return Err(NsError::InvalidArgument(format!(
                    "auto_failover takes true or false, not `{other}`"
                )))
            }
        };
        let lock = self.lock().await?;
        lock.set_data(&self.paths.auto_failover(), value.as_bytes(), None)
            .await?;
        info!(value, "auto_failover set");
        Ok(())
    }

    /// Creates a table: places its replicas, creates them on the tablets with their roles,
    /// then records the metadata.
    pub async fn create_table(&self, request: CreateTableRequest) -> Result<TableInfo> {
        let lock = self.lock().await?;
        let _admin = self.admin.lock().await;
        let db = db_or_default(&request.db).to_string();
        check_name("database", &db)?;
        check_name("table", &request.name)?;
        let schema = request
            .schema
            .as_ref()
            .ok_or_else(|| NsError::InvalidArgument("a table needs a schema".into()))?;
        let schema =
            Schema::from_proto(schema).map_err(|e| NsError::InvalidArgument(e.to_string()))?;
        let client = self.client()?;
        if client
            .check_stat(&self.paths.table(&db, &request.name))
            .await?
            .is_some()
        {
            return Err(NsError::TableExists(format!("{db}.{}", request.name)));
        }
        let healthy = self.healthy_tablets();
        let partition_num = if request.partition_num == 0 {
            DEFAULT_PARTITION_NUM
        } else {
            request.partition_num
        };
        let replica_num = if request.replica_num == 0 {
            DEFAULT_REPLICA_NUM.min(healthy.len().max(1) as u32)
        } else {
            request.replica_num
        };
        // From the nameserver's copy: a read of every table from ZooKeeper per create
        // grew with the cluster (30,000 node reads at a million partitions).
        let tables = self.cached_tables().await?;
        let mut counted: HashMap<&str, usize> = HashMap::new();
        for table in tables.iter() {
            for partition in &table.partitions {
                for replica in partition.replicas.iter().filter(|r| r.is_leader) {
                    *counted.entry(replica.endpoint.as_str()).or_insert(0) += 1;
                }
            }
        }
        let leading: BTreeMap<String, usize> = counted
            .into_iter()
            .map(|(endpoint, n)| (endpoint.to_string(), n))
            .collect();
        drop(tables);
        let placed = placement::place(&healthy, partition_num, replica_num, &leading)?;
        let tid = self.take_counter(self.paths.table_index(), 0).await? as u32;
        let mode = request.mode();
        let table = TableInfo {
            ttl_version: 0,
            // Set when it is stored (`table_layout::split`).
            partition_chunks: 0,
            db: db.clone(),
            name: request.name.clone(),
            tid,
            schema: Some(schema.to_proto()),
            partition_num,
            replica_num,
            mode: mode as i32,
            partitions: placed
                .iter()
                .enumerate()
                .map(|(pid, replicas)| PartitionMeta {
                    pid: pid as u32,
                    term: 1,
                    unavailable_reason: String::new(),
                    replicas: replicas
                        .iter()
                        .enumerate()
                        .map(|(i, endpoint)| ReplicaMeta {
                            endpoint: endpoint.clone(),
                            is_leader: i == 0,
                            is_alive: true,
                            joining: false,
                            leaving: false,
                        })
                        .collect(),
                })
                .collect(),
        };
        // In a task of its own: if the caller hangs up, the creates under way still
        // finish, and a failure still drops what was made.
        let created = tokio::spawn({
            let table = table.clone();
            async move {
                let created = create_replicas(&table).await;
                if let Err(e) = &created {
                    warn!(table = %table.name, error = %e, "creating replicas failed; removing the ones made");
                    drop_replicas(&table).await;
                }
                created
            }
        })
        .await
        .unwrap_or_else(|e| Err(internal("creating the table's replicas", &e)));
        created?;
        self.record_database(&lock, &db).await?;
        let path = self.paths.table(&db, &request.name);
        table_layout::create_table(&lock, &path, &table, &persistent()).await?;
        if let Ok(Some(nodes)) = table_layout::read_nodes(lock.client(), &path).await {
            self.metadata
                .note_nodes(&format!("{db}.{}", request.name), nodes);
        }
        self.announce_table_change(&lock).await?;
        info!(db = %db, table = %request.name, tid, partition_num, replica_num, mode = ?mode, "table created");
        Ok(table)
    }

    pub async fn drop_table(&self, db: &str, name: &str) -> Result<()> {
        let lock = self.lock().await?;
        let _admin = self.admin.lock().await;
        let db = db_or_default(db);
        let path = self.paths.table(db, name);
        let tid = match table_layout::read_table(&self.client()?, &path).await {
            Ok(Some(stored)) => {
                drop_replicas(&stored.table).await;
                stored.table.tid
            }
            Ok(None) => return Err(NsError::TableNotFound(format!("{db}.{name}"))),
            // What a cut-short creation or drop left: drop the replicas its chunks name.
            Err(LayoutError::Incomplete { .. }) => {
                warn!(table = %path, "removing an incomplete table");
                match table_layout::read_nodes(&self.client()?, &path).await? {
                    Some(nodes) => {
                        let partial = nodes.partial_table();
                        drop_replicas(&partial).await;
                        partial.tid
                    }
                    None => return Err(NsError::TableNotFound(format!("{db}.{name}"))),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let writing = self.metadata.write_guard(&format!("{db}.{name}"));
        // On an error some of its nodes may be gone: the guard makes the table unsure
        // (see `MetadataCache::unsure`), as it does if this call is dropped meanwhile.
        table_layout::delete_table(&lock, &path).await?;
        self.metadata.forget(&format!("{db}.{name}"));
        writing.settle();
        self.announce_table_change(&lock).await?;
        info!(db = %db, table = %name, tid, "table dropped");
        Ok(())
    }

    /// One row per replica, with its live offset and size where the tablet answers.
    pub async fn show_table(&self, db: &str, name: &str) -> Result<Vec<ShowTableRow>> {
        let db = db_or_default(db);
        let (tables, tid) = if name.is_empty() {
            let tables: Vec<Arc<TableInfo>> = self
                .cached_tables()
                .await?
                .iter()
                .filter(|t| t.db == db)
                .cloned()
                .collect();
            (tables, None)
        } else {
            let table = self.table(db, name).await?;
            let tid = table.tid;
            (vec![Arc::new(table)], Some(tid))
        };
        // One question to each healthy tablet, all at once, of that table's replicas
        // only; replicas on tablets that do not answer show -1.
        let reports = self.tablet_reports_of(tid).await;
        Ok(replica_rows(&tables, &reports))
    }
}

/// One row per replica of `tables`, with what its tablet reported (-1 where it did not).
pub(crate) fn replica_rows<T: Borrow<TableInfo>>(
    tables: &[T],
    reports: &std::collections::HashMap<String, crate::reconcile::TabletReport>,
) -> Vec<ShowTableRow> {
    let mut rows = Vec::new();
    for table in tables {
        let table: &TableInfo = table.borrow();
        let drifts = crate::reconcile::drifts(table, reports);
        for partition in &table.partitions {
            for replica in &partition.replicas {
                let status = reports
                    .get(&replica.endpoint)
                    .and_then(|r| r.get(&(table.tid, partition.pid)));
                let drift = drifts
                    .iter()
                    .find(|d| d.pid == partition.pid && d.endpoint == replica.endpoint)
                    .map(|d| d.what.clone())
                    .unwrap_or_default();
                rows.push(ShowTableRow {
                    name: table.name.clone(),
                    db: table.db.clone(),
                    tid: table.tid,
                    pid: partition.pid,
                    endpoint: replica.endpoint.clone(),
                    role: if replica.is_leader {
                        "leader"
                    } else {
                        "follower"
                    }
                    .into(),
                    is_alive: replica.is_alive,
                    offset: status.map_or(-1, |s| s.offset as i64),
                    record_cnt: status.map_or(-1, |s| s.record_count as i64),
                    memused: status.map_or(-1, |s| s.memory_used_bytes as i64),
                    mode: table.mode,
                    note: partition.unavailable_reason.clone(),
                    drift,
                    ttl: first_index_ttl(table),
                });
            }
        }
    }
    rows
}

/// The TTL of a table's first index, which `showtable` reports.
fn first_index_ttl(table: &TableInfo) -> Option<tessera_proto::common::TtlDesc> {
    table
        .schema
        .as_ref()
        .and_then(|s| s.indexes.first())
        .and_then(|ix| ix.ttl)
}

/// Names of databases and tables: letters, digits and `_`, not starting with a digit.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(NsError::InvalidArgument(format!(
            "{what} name `{name}` must be letters, digits and _, not starting with a digit"
        )))
    }
}

/// Partitions whose replicas are created (or replicas dropped) at once, at least. A
/// tablet creates one replica at a time (its catalog lock), so this mostly spreads the
/// work over the tablets without queueing much on any one.
const PARTITIONS_AT_ONCE: usize = 8;
/// More partitions at once per tablet the table spans: a table on a hundred tablets
/// would otherwise be created at the pace of eight partitions in flight.
const PARTITIONS_AT_ONCE_PER_TABLET: usize = 2;

/// How many of `table`'s partitions are created (or dropped) at once: the work per
/// tablet stays about the same whatever the number of tablets.
fn partitions_at_once(table: &TableInfo) -> usize {
    let tablets: HashSet<&str> = table
        .partitions
        .iter()
        .flat_map(|p| p.replicas.iter().map(|r| r.endpoint.as_str()))
        .collect();
    PARTITIONS_AT_ONCE.max(PARTITIONS_AT_ONCE_PER_TABLET * tablets.len())
}

/// A task that panicked or was cancelled, as an error.
fn internal(what: &str, e: &tokio::task::JoinError) -> NsError {
    NsError::Tablet {
        endpoint: "(several)".into(),
        message: format!("{what} stopped: {e}"),
    }
}

/// Creates every replica of a new table, some partitions at a time
/// ([`partitions_at_once`]). After a failure no more partitions start, and those under
/// way finish before the error is returned, so that the caller's drop of what was
/// made comes after every create.
async fn create_replicas(table: &TableInfo) -> Result<()> {
    let at_once = partitions_at_once(table);
    // One copy for every partition's task: a copy each made creating a table of n
    // partitions cost n² replica copies.
    let shared = Arc::new(table.clone());
    let mut partitions = table.partitions.iter();
    let mut running = tokio::task::JoinSet::new();
    let mut failed = None;
    loop {
        while failed.is_none() && running.len() < at_once {
            let Some(partition) = partitions.next() else {
                break;
            };
            running.spawn(create_partition(shared.clone(), partition.clone()));
        }
        let outcome = match running.join_next().await {
            None => break,
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) => Err(internal("creating a partition", &e)),
        };
        if let Err(e) = outcome {
            failed.get_or_insert(e);
        }
    }
    failed.map_or(Ok(()), Err)
}

/// Best effort: drops every replica of the table, many at once; unreachable tablets
/// are logged.
async fn drop_replicas(table: &TableInfo) {
    let mut replicas = Vec::new();
    for partition in &table.partitions {
        for replica in &partition.replicas {
            replicas.push((partition.pid, replica.endpoint.clone()));
        }
    }
    let at_once = partitions_at_once(table);
    let mut replicas = replicas.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < at_once {
            let Some((pid, endpoint)) = replicas.next() else {
                break;
            };
            let tid = table.tid;
            running.spawn(async move {
                let dropped = async {
                    let mut client = tablet(&endpoint).await?;
                    call(
                        &endpoint,
                        client.drop_table(tpb::DropTableRequest { tid, pid }),
                    )
                    .await
                }
                .await;
                if let Err(e) = dropped {
                    warn!(tid, pid, endpoint = %endpoint, error = %e, "dropping a replica failed");
                }
            });
        }
        if running.join_next().await.is_none() {
            return;
        }
    }
}

/// The meta a new replica of `partition` is created with: the table's schema and TTLs as
/// the metadata holds them, in the partition's term.
pub(crate) fn replica_meta(
    table: &TableInfo,
    partition: &PartitionMeta,
    role: TableRole,
    leader: &str,
) -> tpb::TableMeta {
    tpb::TableMeta {
        tid: table.tid,
        pid: partition.pid,
        db: table.db.clone(),
        name: table.name.clone(),
        schema: table.schema.clone(),
        partition_num: table.partition_num,
        term: partition.term,
        mode: table.mode,
        role: role as i32,
        leader: leader.to_string(),
        ttl_version: table.ttl_version,
        ttls: Vec::new(),
    }
}

/// Creates a new partition's replicas (all at once), then makes the followers follow
/// and the leader lead.
async fn create_partition(table: Arc<TableInfo>, partition: PartitionMeta) -> Result<()> {
    let leader = &partition.replicas[0].endpoint;
    let followers: Vec<String> = partition.replicas[1..]
        .iter()
        .map(|r| r.endpoint.clone())
        .collect();
    let mut created = tokio::task::JoinSet::new();
    for replica in &partition.replicas {
        let meta = if replica.is_leader {
            replica_meta(&table, &partition, TableRole::Leader, "")
        } else {
            replica_meta(&table, &partition, TableRole::Follower, leader)
        };
        let endpoint = replica.endpoint.clone();
        created.spawn(async move {
            let mut tablet = tablet(&endpoint).await?;
            call(
                &endpoint,
                tablet.create_table(tpb::CreateTableRequest { meta: Some(meta) }),
            )
            .await
            .map(|_| ())
        });
    }
    // Every create is waited for, even after one failed (see `create_replicas`).
    let mut failed = None;
    while let Some(done) = created.join_next().await {
        let outcome = done.unwrap_or_else(|e| Err(internal("creating a replica", &e)));
        if let Err(e) = outcome {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    // Followers first, then the leader with its followers.
    for follower in &followers {
        let mut tablet = tablet(follower).await?;
        call(
            follower,
            tablet.change_role(tpb::ChangeRoleRequest {
                tid: table.tid,
                pid: partition.pid,
                role: TableRole::Follower as i32,
                term: partition.term,
                leader: leader.clone(),
                ..Default::default()
            }),
        )
        .await?;
    }
    let mut tablet = tablet(leader).await?;
    call(
        leader,
        tablet.change_role(tpb::ChangeRoleRequest {
            tid: table.tid,
            pid: partition.pid,
            role: TableRole::Leader as i32,
            term: partition.term,
            followers,
            ..Default::default()
        }),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tessera_proto::tablet::ReplicationMode;

    use super::*;

    #[test]
    fn names() {
        assert!(check_name("table", "t1_x").is_ok());
        assert!(check_name("table", "").is_err());
        assert!(check_name("table", "1t").is_err());
        assert!(check_name("table", "a.b").is_err());
        assert!(check_name("table", "a/b").is_err());
    }

    fn offline_nameserver() -> Arc<Nameserver> {
        let settings = ZkSettings {
            cluster: String::new(),
            root: "/tessera".into(),
            session_timeout: Duration::from_secs(10),
        };
        Nameserver::new("127.0.0.1:1".into(), settings, Duration::from_secs(10))
    }

    /// Restarts taken by a pass that failed go back for the next pass, but not into the
    /// next election session; suspicions end with the session too.
    #[test]
    fn what_a_leadership_learned_ends_with_its_session() {
        let ns = offline_nameserver();
        ns.update_tablets(&[("a".into(), 1)]);
        ns.update_tablets(&[("a".into(), 2)]);
        let taken = ns.take_restarted();
        assert_eq!(taken.tablets, vec!["a".to_string()]);
        ns.give_back_restarted(taken);
        let taken = ns.take_restarted();
        assert_eq!(taken.tablets, vec!["a".to_string()], "given back");

        assert!(ns.suspect("a", Probe::Gone));
        assert!(!ns.is_healthy("a"));
        ns.forget_leaderships_evidence();
        ns.give_back_restarted(taken);
        assert!(
            ns.take_restarted().tablets.is_empty(),
            "a pass of the ended session gives nothing back into the next"
        );
        assert!(ns.is_healthy("a"), "the suspicion ended with the session");
        assert!(
            !ns.suspect_for(2, "a", Probe::Gone),
            "a judgement of a leadership no longer held plants no suspicion"
        );
        assert!(ns.is_healthy("a"));
    }

    /// A pass's view of the healthy tablets goes with the restarts it takes: a tablet
    /// back under a new session is not healthy for a pass that has not taken (and acted
    /// on) its restart.
    #[test]
    fn a_pass_sees_a_restarted_tablet_healthy_only_with_its_restart() {
        let ns = offline_nameserver();
        ns.update_tablets(&[("a".into(), 1), ("b".into(), 1)]);
        assert!(ns.suspect("a", Probe::Gone));
        let (taken, healthy) = ns.take_restarted_with_healthy();
        assert!(taken.tablets.is_empty());
        assert_eq!(healthy, vec!["b".to_string()], "a is down");
        // a comes back under a new session while that pass runs.
        ns.update_tablets(&[("a".into(), 2), ("b".into(), 1)]);
        let (taken, mut healthy) = ns.take_restarted_with_healthy();
        healthy.sort();
        assert_eq!(taken.tablets, vec!["a".to_string()]);
        assert_eq!(healthy, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn a_lapse_of_the_lease_keeps_what_the_leader_learned() {
        assert!(Leadership::Leading.keeps_evidence());
        assert!(
            Leadership::Suspended.keeps_evidence(),
            "a lapse ends in leading again under the same lock, or in standing by"
        );
        assert!(!Leadership::Standby.keeps_evidence());
    }

    #[test]
    fn task_faults_parse() {
        let fail: TaskFault = "kPromoteLeader:fail".parse().unwrap();
        assert_eq!(fail.task, "kPromoteLeader");
        assert_eq!(fail.kind, TaskFaultKind::Fail);
        let delay: TaskFault = "kFenceReplicas:delay_ms=250".parse().unwrap();
        assert_eq!(delay.kind, TaskFaultKind::Delay(Duration::from_millis(250)));
        let after: TaskFault = "kFenceReplicas:delay_after_ms=9000".parse().unwrap();
        assert_eq!(
            after.kind,
            TaskFaultKind::DelayAfter(Duration::from_millis(9000))
        );
        for bad in [
            "kPromoteLeader",
            "x:sleep",
            "x:delay_ms=soon",
            "x:delay_after_ms=",
        ] {
            assert!(bad.parse::<TaskFault>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_table_over_more_tablets_creates_more_partitions_at_once() {
        let spread = |tablets: usize| TableInfo {
            partitions: (0..1000u32)
                .map(|pid| PartitionMeta {
                    pid,
                    replicas: (0..3u32)
                        .map(|r| ReplicaMeta {
                            endpoint: format!("t{}", (pid + r) as usize % tablets),
                            ..ReplicaMeta::default()
                        })
                        .collect(),
                    ..PartitionMeta::default()
                })
                .collect(),
            ..TableInfo::default()
        };
        assert_eq!(partitions_at_once(&spread(3)), PARTITIONS_AT_ONCE);
        assert_eq!(partitions_at_once(&spread(100)), 200);
    }

    #[test]
    fn default_mode_is_quorum() {
        assert_eq!(
            CreateTableRequest::default().mode(),
            ReplicationMode::Quorum
        );
    }
}
