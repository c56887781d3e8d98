//! The op pipeline: persisted multi-task operations that repair the cluster.
//!
//! An op lives at `/op/op_data/<op_id>`; its progress (next task, status, times) is
//! written after every task through the election lock, so a new leader resumes it where
//! the old one stopped, and a deposed leader cannot write over it. Ops on one partition
//! run strictly one after another, ops on different partitions in parallel (bounded).
//! Every task has a timeout; a task that fails or times out fails its op with a reason.
//! Tasks are idempotent, since a resumed op may repeat the task that was running.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prost::Message;
use tessera_common::zk_auth;
use tessera_proto::nameserver::{OpInfo, PartitionMeta, ReplicaMeta, TableInfo};
use tessera_proto::tablet::{self as tpb, TableRole};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};
use zookeeper_client::{CreateMode, Error as ZkError};

use crate::error::{NsError, Result};
use crate::metadata_cache::Tables;
use crate::planner::{
    self, Recovery, ReplicaLog, ADD_REPLICA, CHANGE_LEADER, DEL_REPLICA, MAKE_SNAPSHOT, MIGRATE,
    OFFLINE_REPLICA, RECOVER_TABLE,
};
use crate::state::{call, db_or_default, tablet, Leadership, Nameserver, Presence};
use crate::{reconcile, voting};

pub const INITED: &str = "kInited";
pub const DOING: &str = "kDoing";
pub const DONE: &str = "kDone";
pub const FAILED: &str = "kFailed";

/// Ops running at once, across partitions. An op spends most of its time waiting on
/// ZooKeeper and the tablets, so a dead tablet's thousands of partitions fail over as
/// fast as ops run side by side: at 8, a tablet leading 2,000 partitions took over
/// 100 s (`scripts/bench-scale.sh`). Not more: at 256 the tablets, busy with fences and
/// role changes, answered too late, and a loaded cluster failed live tablets over.
const MAX_PARALLEL_OPS: usize = 64;
/// New ops planned and persisted per pass of the pipeline before the ops start.
const MAX_PLANNED_PER_TICK: usize = 512;
/// How often the leader compares metadata with the registry and starts ops.
const TICK: Duration = Duration::from_millis(200);
/// Finished ops kept for `showopstatus`.
const KEEP_FINISHED: usize = 200;
/// Failed and cancelled ops kept besides, newest first, for `FAILED_KEPT_FOR` after they
/// end: a whole-cluster recovery ends tens of thousands of ops within minutes, and the
/// few that failed must still be there when the operator (or `recoverdata`, waiting for
/// its ops) looks. Not for ever: every pass of the pipeline goes through every op kept.
const KEEP_FAILED: usize = 2_000;
const FAILED_KEPT_FOR_MS: u64 = 60 * 60 * 1000;
/// Finished ops deleted in one ZooKeeper transaction when trimmed.
const DELETES_AT_ONCE: usize = 100;
/// `kWaitCatchUp` looks at the leader again after this, then twice as long each time up
/// to `CATCH_UP_LOOK_AT_MOST`: a follower of an idle partition has usually caught up
/// within milliseconds of being added, and a whole-cluster recovery runs twenty thousand
/// of these waits, so a fixed 100 ms pause was most of each RecoverTable.
const CATCH_UP_FIRST_LOOK: Duration = Duration::from_millis(5);
const CATCH_UP_LOOK_AT_MOST: Duration = Duration::from_millis(100);

/// The pauses between looks at a leader's followers: about `CATCH_UP_FIRST_LOOK`,
/// doubled each time up to about `CATCH_UP_LOOK_AT_MOST`, with a jitter so that the
/// waits of a mass recovery do not all ask at once.
fn look_again() -> impl Iterator<Item = Duration> + Send {
    tessera_common::retry::backoff(CATCH_UP_FIRST_LOOK, CATCH_UP_LOOK_AT_MOST)
}

/// The finished ops (oldest first) to delete, oldest first: all but the newest
/// `KEEP_FINISHED`, and the newest `KEEP_FAILED` of those that did not end well, ended
/// less than `FAILED_KEPT_FOR_MS` before `now_ms`.
fn ops_to_trim<'a>(finished: &[&'a OpInfo], now_ms: u64) -> Vec<&'a OpInfo> {
    let older = finished.len().saturating_sub(KEEP_FINISHED);
    let mut failed_kept = 0;
    let mut doomed: Vec<&OpInfo> = finished[..older]
        .iter()
        .rev()
        .filter(|op| {
            let recent = now_ms.saturating_sub(op.end_time_ms) < FAILED_KEPT_FOR_MS;
            if op.status != DONE && recent && failed_kept < KEEP_FAILED {
                failed_kept += 1;
                return false;
            }
            true
        })
        .copied()
        .collect();
    doomed.reverse();
    doomed
}

/// How a batch of op deletes ended.
enum Deleted {
    All,
    /// One of them was not there; none was deleted.
    NoneOneMissing,
    /// Not this nameserver's to finish now: leadership lost or the outcome unknown.
    Unknown,
}
/// auto_failover waits this long after a failed op before planning its partition again.
const RETRY_AFTER_FAILURE_MS: u64 = 5_000;
/// How long a tablet may take to report to the reconciler.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Housekeeping ops (snapshots, migrations, added and removed replicas) running at once,
/// at most: they never take the permits kept for failover.
const HOUSEKEEPING_AT_ONCE: usize = 16;
/// RecoverTables running at once, at most (within the failover permits).
const RECOVERIES_AT_ONCE: usize = 32;
/// Permits only failover ops take: failover always has room.
const PERMITS_KEPT_FOR_FAILOVER: usize = MAX_PARALLEL_OPS - HOUSEKEEPING_AT_ONCE;
/// The tasks that call the partition's leader, and give way when it stops answering.
const CALLS_THE_LEADER: &[&str] = &[
    "kPrepareReplica",
    "kAddReplica",
    "kWaitCatchUp",
    "kDelReplica",
    "kDelSourceReplica",
    "kMarkReplicaLeaving",
    "kMarkSourceLeaving",
    "kMakeSnapshot",
];
/// How often a running task looks whether its partition's leader still answers.
const LEADER_WATCH_EVERY: Duration = Duration::from_millis(20);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A partition: (db, table, pid).
type PartitionKey = (String, String, u32);
/// The partitions with an op running now.
type Running = Arc<Mutex<RunningOps>>;

/// The ops running: their partitions (one op each), and how many are RecoverTables.
#[derive(Default)]
struct RunningOps {
    partitions: HashSet<PartitionKey>,
    recoveries: usize,
}

impl RunningOps {
    fn contains(&self, key: &PartitionKey) -> bool {
        self.partitions.contains(key)
    }

    fn insert(&mut self, op: &OpInfo) {
        if self.partitions.insert(key_of(op)) && op.op_type == RECOVER_TABLE {
            self.recoveries += 1;
        }
    }

    fn remove(&mut self, op: &OpInfo) {
        if self.partitions.remove(&key_of(op)) && op.op_type == RECOVER_TABLE {
            self.recoveries -= 1;
        }
    }
}
/// Takes an op off the running ones when dropped: also when its execution panicked,
/// which would otherwise hold its partition (and a RecoverTable's place) for good.
struct RunningGuard {
    running: Running,
    op: OpInfo,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.lock().remove(&self.op);
    }
}

/// Ops waiting for a permit, in start order, one per partition; refilled at each pass.
type Queue = Arc<Mutex<VecDeque<Arc<OpInfo>>>>;

fn key_of(op: &OpInfo) -> PartitionKey {
    (op.db.clone(), op.name.clone(), op.pid)
}

/// Takes the first queued op whose partition has none running, and marks it running,
/// for a holder of a permit with `free` permits left besides: housekeeping never takes
/// the last `PERMITS_KEPT_FOR_FAILOVER`.
fn next_startable(queue: &Queue, running: &Running, free: usize) -> Option<Arc<OpInfo>> {
    let mut queue = queue.lock();
    let mut running = running.lock();
    let at = queue.iter().position(|op| {
        let room = match op.op_type.as_str() {
            // A returning replica catches up or takes a snapshot: a stream of data each.
            RECOVER_TABLE => running.recoveries < RECOVERIES_AT_ONCE,
            op_type if is_failover(op_type) => true,
            _ => free >= PERMITS_KEPT_FOR_FAILOVER,
        };
        room && !running.contains(&key_of(op))
    })?;
    let op = queue.remove(at)?;
    running.insert(&op);
    Some(op)
}

/// Runs ops with one permit: the one it was given, then queued ones while any can start.
struct Worker {
    ns: Arc<Nameserver>,
    queue: Queue,
    running: Running,
    permits: Arc<Semaphore>,
}

impl Worker {
    async fn run(self, permit: OwnedSemaphorePermit, mut op: OpInfo) {
        loop {
            let running = RunningGuard {
                running: self.running.clone(),
                op: op.clone(),
            };
            self.ns.execute(op).await;
            drop(running);
            if !self.ns.is_leader() {
                return;
            }
            match next_startable(&self.queue, &self.running, self.permits.available_permits()) {
                Some(next) => op = Arc::unwrap_or_clone(next),
                None => break,
            }
        }
        // Ops may wait that this permit could not take (housekeeping, with few permits
        // free): the next pass, at once, gives them a chance when it is free.
        drop(permit);
        if !self.queue.lock().is_empty() {
            self.ns.ops_kick.notify_one();
        }
    }
}

fn tasks_of(op_type: &str) -> Vec<String> {
    let names: &[&str] = match op_type {
        CHANGE_LEADER => &["kFenceReplicas", "kPromoteLeader", "kUpdateLeaderInfo"],
        OFFLINE_REPLICA => &["kDelReplica", "kUpdatePartitionStatus"],
        RECOVER_TABLE => &[
            "kPrepareReplica",
            "kAddReplica",
            "kWaitCatchUp",
            "kUpdatePartitionStatus",
        ],
        ADD_REPLICA => &[
            "kAddReplicaMeta",
            "kPrepareReplica",
            "kAddReplica",
            "kWaitCatchUp",
            "kUpdatePartitionStatus",
        ],
        DEL_REPLICA => &[
            "kMarkReplicaLeaving",
            "kDelReplica",
            "kDropReplica",
            "kDelReplicaMeta",
        ],
        MIGRATE => &[
            "kAddReplicaMeta",
            "kPrepareReplica",
            "kAddReplica",
            "kWaitCatchUp",
            "kUpdatePartitionStatus",
            "kMarkSourceLeaving",
            "kDelSourceReplica",
            "kDropSourceReplica",
            "kDelSourceReplicaMeta",
        ],
        MAKE_SNAPSHOT => &["kMakeSnapshot"],
        _ => &[],
    };
    names.iter().map(|n| n.to_string()).collect()
}

pub const CANCELED: &str = "kCanceled";

pub(crate) fn is_finished(op: &OpInfo) -> bool {
    op.status == DONE || op.status == FAILED || op.status == CANCELED
}

impl Nameserver {
    /// Every op, oldest first: from the leader's copy (see `op_book`), read from the
    /// store when this nameserver does not lead or its copy is not read yet.
    pub async fn ops(&self) -> Result<Vec<OpInfo>> {
        Ok(self
            .shared_ops()
            .await?
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect())
    }

    /// Every op, oldest first, shared with the leader's copy where it serves them.
    pub(crate) async fn shared_ops(&self) -> Result<Vec<Arc<OpInfo>>> {
        let Some(leadership) = self.leadership_number() else {
            return Ok(self
                .read_ops()
                .await?
                .into_iter()
                .map(|(_, op)| Arc::new(op))
                .collect());
        };
        if let Some(ops) = self.op_book.ops(leadership) {
            return Ok(ops);
        }
        // No op write runs while the store is read.
        let _quiet = self.op_book.gate.write().await;
        if let Some(ops) = self.op_book.ops(leadership) {
            return Ok(ops);
        }
        // A write given up on may still be on its way through ZooKeeper: settled first.
        self.client()?.sync(&self.paths.op_data()).await?;
        let stored = self.read_ops().await?;
        Ok(self.op_book.load(leadership, stored))
    }

    /// Every stored op with its data version, oldest first.
    async fn read_ops(&self) -> Result<Vec<(i32, OpInfo)>> {
        let mut ops = Vec::new();
        for (_, data, version) in self
            .read_children_with_versions(&self.paths.op_data())
            .await?
        {
            let op = OpInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?;
            ops.push((version, op));
        }
        ops.sort_by_key(|(_, op)| op.op_id);
        Ok(ops)
    }

    pub(crate) async fn op(&self, op_id: u64) -> Result<OpInfo> {
        let client = self.client()?;
        let leadership = self.leadership_number();
        // Shared with writes: a read made before a reload is not noted after it.
        let _reading = self.op_book.gate.read().await;
        match client.get_data(&self.paths.op(op_id)).await {
            Ok((data, stat)) => {
                let op = OpInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?;
                if let Some(leadership) = leadership {
                    self.op_book.note(leadership, &op, stat.version);
                }
                Ok(op)
            }
            // Not forgotten: an op whose id is taken may not be created yet.
            Err(ZkError::NoNode) => {
                Err(NsError::InvalidArgument(format!("there is no op {op_id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An op as it stands: from the leader's copy, which every op write (this leader's
    /// own, an operator's cancel among them) keeps current; read from the store when
    /// this nameserver does not lead or its copy does not hold the op.
    async fn current_op(&self, op_id: u64) -> Result<OpInfo> {
        if let Some(kept) = self
            .leadership_number()
            .and_then(|leadership| self.op_book.get(leadership, op_id))
        {
            return Ok(kept.1);
        }
        self.op(op_id).await
    }

    /// Notes the outcome of an op write in the leader's copy: what was written, or, when
    /// ZooKeeper's answer does not say whether it was applied, that the copy is unsure.
    pub(crate) fn note_op_write<T>(
        &self,
        leadership: u64,
        op: &OpInfo,
        written: &std::result::Result<T, ZkError>,
        version_of: impl Fn(&T) -> i32,
    ) {
        match written {
            Ok(done) => self.op_book.note(leadership, op, version_of(done)),
            Err(ZkError::BadVersion | ZkError::NodeExists) => {}
            Err(ZkError::NoNode) => self.op_book.forget(leadership, op.op_id),
            Err(_) => self.op_book.distrust(),
        }
    }

    /// Notes the outcome of an op node's delete in the leader's copy.
    pub(crate) fn note_op_deleted(
        &self,
        leadership: u64,
        op_id: u64,
        deleted: &std::result::Result<(), ZkError>,
    ) {
        match deleted {
            Ok(()) | Err(ZkError::NoNode) => self.op_book.forget(leadership, op_id),
            Err(ZkError::BadVersion) => {}
            Err(_) => self.op_book.distrust(),
        }
    }

    /// Writes an op's progress, unless an operator cancelled it meanwhile or it already
    /// ended: the stored op is read and written back with a version check, so a cancel
    /// and a task finishing at the same moment cannot overwrite each other, and an
    /// execution left over from an earlier term of leadership (whose op another leader
    /// finished since) cannot bring a finished op back to life.
    pub(crate) async fn save_op(&self, op: &OpInfo) -> Result<()> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let _writing = self.op_book.gate.read().await;
        let client = self.client()?;
        let path = self.paths.op(op.op_id);
        // The copy's version first: if the store moved past it, the write is refused and
        // the op is read from the store.
        let mut kept = self.op_book.get(leadership, op.op_id);
        loop {
            let (version, stored) = match kept.take() {
                Some(kept) => kept,
                None => {
                    let (data, stat) = client.get_data(&path).await?;
                    let stored =
                        OpInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?;
                    self.op_book.note(leadership, &stored, stat.version);
                    (stat.version, stored)
                }
            };
            if stored.status == CANCELED && op.status != CANCELED {
                info!(op_id = op.op_id, "op cancelled");
                return Err(NsError::InvalidArgument(format!(
                    "op {} was cancelled",
                    op.op_id
                )));
            }
            if is_finished(&stored) {
                warn!(op_id = op.op_id, status = %stored.status, "an op that already ended is not written again");
                return Err(NsError::InvalidArgument(format!(
                    "op {} already ended ({})",
                    op.op_id, stored.status
                )));
            }
            let unsettled = self.op_book.unsettled();
            let written = lock
                .set_data(&path, &op.encode_to_vec(), Some(version))
                .await;
            self.note_op_write(leadership, op, &written, |stat| stat.version);
            unsettled.settle();
            match written {
                Ok(_) => {
                    crate::metrics::METRICS.op_written(false);
                    return Ok(());
                }
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Persists a new op.
    pub async fn add_op(
        &self,
        op_type: &str,
        table: &TableInfo,
        pid: u32,
        endpoint: &str,
        configure: impl FnOnce(&mut OpInfo),
    ) -> Result<OpInfo> {
        let tasks = tasks_of(op_type);
        if tasks.is_empty() {
            return Err(NsError::InvalidArgument(format!(
                "unknown op type {op_type}"
            )));
        }
        let (leadership, lock) = self.lock_and_leadership().await?;
        let op_id = self.take_counter(self.paths.op_index(), 0).await?;
        let mut op = OpInfo {
            op_id,
            op_type: op_type.into(),
            db: table.db.clone(),
            name: table.name.clone(),
            pid,
            status: INITED.into(),
            tasks,
            start_time_ms: now_ms(),
            endpoint: endpoint.into(),
            tid: table.tid,
            ..OpInfo::default()
        };
        configure(&mut op);
        let _writing = self.op_book.gate.read().await;
        let unsettled = self.op_book.unsettled();
        let created = lock
            .create(
                &self.paths.op(op_id),
                &op.encode_to_vec(),
                &CreateMode::Persistent.with_acls(zk_auth::acls()),
            )
            .await;
        // A new node's data version is 0.
        self.note_op_write(leadership, &op, &created, |_| 0);
        unsettled.settle();
        created?;
        info!(op_id, op_type, table = %table.name, pid, endpoint, "op added");
        Ok(op)
    }

    /// The leader's loop: plan ops from the registry (when auto_failover is on), then run
    /// every unfinished op whose partition is free.
    pub async fn run_ops(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let running: Running = Arc::default();
        let queue: Queue = Arc::default();
        let permits = Arc::new(Semaphore::new(MAX_PARALLEL_OPS));
        let mut confirmations = reconcile::Confirmations::default();
        let mut next_reconcile = tokio::time::Instant::now();
        // The reconciler's questions to the tablets run beside the loop: a tablet that
        // is slow to answer (paused, say) must not hold back the failover of another.
        let mut asking: Option<tokio::task::JoinHandle<HashMap<String, reconcile::TabletReport>>> =
            None;
        loop {
            // A tablet found down is planned for at once, not at the next tick.
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = self.ops_kick.notified() => {}
                _ = stop.changed() => return,
            }
            let leadership = self.leadership();
            if leadership != Leadership::Leading {
                // Whoever leads plans again from what is stored.
                queue.lock().clear();
                if !leadership.keeps_evidence() {
                    // Restarts seen while standing by are not this nameserver's to repair
                    // later: by the time it leads, they may be long settled. One seen in
                    // a lapse of the lease is repaired when it leads again.
                    self.take_restarted();
                }
                continue;
            }
            let mut reports = None;
            if asking.as_ref().is_some_and(|a| a.is_finished()) {
                reports = asking.take().expect("checked").await.ok();
            }
            let now = tokio::time::Instant::now();
            // By time, not ticks: kicks during a mass failover come faster than ticks.
            if now >= next_reconcile && asking.is_none() {
                let replicas = self.metadata.tables().map_or(0, |tables| {
                    tables
                        .iter()
                        .flat_map(|t| &t.partitions)
                        .map(|p| p.replicas.len())
                        .sum()
                });
                next_reconcile = now + reconcile::period(replicas);
                let ns = self.clone();
                asking = Some(tokio::spawn(async move { ns.tablet_reports().await }));
            }
            let reconcile = reports.map(|reports| (&mut confirmations, Arc::new(reports)));
            if let Err(e) = self
                .clone()
                .tick(&running, &queue, &permits, reconcile)
                .await
            {
                warn!(error = %e, "op pipeline tick failed");
            }
        }
    }

    async fn tick(
        self: Arc<Self>,
        running: &Running,
        queue: &Queue,
        permits: &Arc<Semaphore>,
        reconcile: Option<(
            &mut reconcile::Confirmations,
            Arc<HashMap<String, reconcile::TabletReport>>,
        )>,
    ) -> Result<()> {
        crate::metrics::METRICS.pipeline_pass();
        let mut ops = self.shared_ops().await?;
        if let Some((_, reports)) = &reconcile {
            // Whatever auto_failover says: TTLs and schemas are configuration, not repairs.
            if self.registry_ready() {
                self.align_replicas(reports.clone());
            }
        }
        // What the pass plans with: the healthy tablets as they were when it took the
        // restarts it acts on (see `take_restarted_with_healthy`).
        let (restarted, healthy) = self.take_restarted_with_healthy();
        // A pass cut short (ZooKeeper unreachable, the lease lapsing) leaves the restarts
        // it took for the next one.
        let failover = match self.auto_failover().await {
            Ok(failover) => failover,
            Err(e) => {
                self.give_back_restarted(restarted);
                return Err(e);
            }
        };
        if self.registry_ready() && failover {
            if let Err(e) = self.mark_restarted_replicas_dead(&restarted.tablets).await {
                self.give_back_restarted(restarted);
                return Err(e);
            }
            // Partitions with an op under way.
            let mut busy: HashSet<PartitionKey> = ops
                .iter()
                .filter(|op| {
                    // Queued housekeeping does not hold a failover back: both may be
                    // queued, and failover starts first.
                    let queued_housekeeping = op.status == INITED && !is_failover(&op.op_type);
                    !is_finished(op) && !queued_housekeeping
                })
                .map(|op| key_of(op))
                .collect();
            // Partitions with an op that failed moments ago, so that one that cannot be
            // repaired yet is not retried in a tight loop, and which failed a
            // ChangeLeader. A ChangeLeader waits only for a failed ChangeLeader: a repair
            // that gave way to it (or failed for any reason) must not hold it back.
            let now = now_ms();
            let mut cooling: HashMap<PartitionKey, bool> = HashMap::new();
            for op in ops
                .iter()
                .filter(|op| op.status == FAILED && now - op.end_time_ms < RETRY_AFTER_FAILURE_MS)
            {
                *cooling.entry(key_of(op)).or_default() |= op.op_type == CHANGE_LEADER;
            }
            let tables = self.cached_tables().await?;
            // Most urgent first; at most MAX_PLANNED_PER_TICK are persisted before the ops
            // start, and the next tick comes at once for the rest: a dead tablet of
            // thousands of partitions gets its first leaders in moments, not after
            // every op of the outage is written.
            let mut planned: Vec<(usize, planner::Planned)> =
                self.plan_all(&tables, healthy).to_vec();
            planned.sort_by_key(|(_, planned)| urgency(planned.op_type));
            // Persisted all at once: their ids share a write of the counter, and
            // ZooKeeper commits their nodes together (a dead tablet's thousands of
            // ChangeLeaders otherwise wait for three round trips each, one after another).
            let mut adding = tokio::task::JoinSet::new();
            for (index, planned) in planned {
                let table = &tables[index];
                let key = (table.db.clone(), table.name.clone(), planned.pid);
                let cooled = cooling.get(&key).is_some_and(|change_leader_failed| {
                    planned.op_type != CHANGE_LEADER || *change_leader_failed
                });
                if cooled || busy.contains(&key) {
                    continue;
                }
                busy.insert(key);
                if adding.len() == MAX_PLANNED_PER_TICK {
                    // Left for the next pass, which comes at once; still busy for this
                    // one, so the reconciler below plans nothing for it either.
                    self.ops_kick.notify_one();
                    continue;
                }
                let (ns, tables) = (self.clone(), tables.clone());
                adding.spawn(async move { ns.add_planned(&tables[index], &planned).await });
            }
            let mut failed = None;
            while let Some(added) = adding.join_next().await {
                match added {
                    Ok(Ok(op)) => ops.push(Arc::new(op)),
                    Ok(Err(e)) => failed = Some(e),
                    Err(e) => failed = Some(NsError::Zk(format!("adding an op failed: {e}"))),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some((confirmations, reports)) = reconcile {
                let mut pass = Vec::new();
                for table in tables.iter() {
                    for drift in reconcile::drifts(table, &reports) {
                        pass.push(((table.db.clone(), table.name.clone()), drift));
                    }
                }
                for ((db, name), drift) in confirmations.confirm(pass) {
                    let Some(table) = tables.iter().find(|t| t.db == db && t.name == name) else {
                        continue;
                    };
                    if busy.insert((db, name, drift.pid)) {
                        warn!(table = %table.name, pid = drift.pid, endpoint = %drift.endpoint, drift = %drift.what, repair = drift.repair, "the tablets differ from the metadata; repairing");
                        crate::metrics::METRICS.difference(drift.repair);
                        ops.push(Arc::new(self.add_planned(table, &drift.planned()).await?));
                    }
                }
            }
        }
        self.trim_finished(&ops).await;
        // One op of each free partition may start: one under way first (it is resumed),
        // then failover before the rest, oldest first; housekeeping leaves permits free
        // for failover. What cannot start now waits in the queue, where an op that ends
        // hands its permit to the next (so a thousand ops do not each wait for a pass).
        let unfinished = ops.into_iter().filter(|op| !is_finished(op)).collect();
        *queue.lock() = first_of_each_partition(in_start_order(unfinished));
        while let Ok(permit) = permits.clone().try_acquire_owned() {
            let Some(op) = next_startable(queue, running, permits.available_permits()) else {
                break;
            };
            let worker = Worker {
                ns: self.clone(),
                queue: queue.clone(),
                running: running.clone(),
                permits: permits.clone(),
            };
            tokio::spawn(worker.run(permit, Arc::unwrap_or_clone(op)));
        }
        Ok(())
    }

    /// What the planner wants for every table (by index in `tables`), against one view
    /// of the registry. `planner::plan` depends on nothing else, so while neither the
    /// tables (the same copy) nor the healthy tablets changed, the last pass's answer is
    /// reused: an idle pass plans 10,000 partitions five times a second otherwise. While
    /// only some tables changed, only those are planned again.
    fn plan_all(
        &self,
        tables: &Tables,
        mut healthy: Vec<String>,
    ) -> Arc<Vec<(usize, planner::Planned)>> {
        healthy.sort();
        let mut memo = self.plan_memo.lock();
        if let Some(seen) = &*memo {
            if Arc::ptr_eq(&seen.tables, tables) && seen.healthy == healthy {
                return seen.planned.clone();
            }
        }
        let fresh = planner::plan_tables(tables, healthy, memo.as_ref());
        let planned = fresh.planned.clone();
        *memo = Some(fresh);
        planned
    }

    async fn add_planned(&self, table: &TableInfo, planned: &planner::Planned) -> Result<OpInfo> {
        self.add_op(
            planned.op_type,
            table,
            planned.pid,
            &planned.endpoint,
            |_| {},
        )
        .await
    }

    /// What every healthy tablet holds, asked all at once; a tablet that does not answer
    /// in time is left out.
    pub(crate) async fn tablet_reports(&self) -> HashMap<String, reconcile::TabletReport> {
        self.tablet_reports_of(None).await
    }

    /// [`Nameserver::tablet_reports`] of the replicas of table `tid` only (all if
    /// `None`): `showtable` of one table need not have every tablet describe every
    /// replica it holds.
    pub(crate) async fn tablet_reports_of(
        &self,
        tid: Option<u32>,
    ) -> HashMap<String, reconcile::TabletReport> {
        let mut asked = tokio::task::JoinSet::new();
        for endpoint in self.healthy_tablets() {
            asked.spawn(async move {
                let report =
                    tokio::time::timeout(REPORT_TIMEOUT, tablet_report(&endpoint, tid)).await;
                (endpoint, report.ok().flatten())
            });
        }
        let mut reports = HashMap::new();
        while let Some(answer) = asked.join_next().await {
            if let Ok((endpoint, Some(report))) = answer {
                reports.insert(endpoint, report);
            }
        }
        reports
    }

    /// A tablet that restarted before its session expired was never seen offline, yet
    /// its replicas came back as followers of nobody. Marking them dead lets the planner
    /// treat it like any failure: ChangeLeader where it led, RecoverTable for the rest.
    async fn mark_restarted_replicas_dead(&self, restarted: &[String]) -> Result<()> {
        if restarted.is_empty() {
            return Ok(());
        }
        let on_restarted = |r: &ReplicaMeta| restarted.contains(&r.endpoint);
        for table in self.tables().await? {
            for partition in &table.partitions {
                if partition
                    .replicas
                    .iter()
                    .any(|r| on_restarted(r) && r.is_alive)
                {
                    let restarted = restarted.to_vec();
                    self.update_partition(&table, partition.pid, move |p| {
                        for replica in p
                            .replicas
                            .iter_mut()
                            .filter(|r| restarted.contains(&r.endpoint))
                        {
                            replica.is_alive = false;
                        }
                    })
                    .await?;
                }
            }
        }
        info!(endpoints = ?restarted, "replicas of restarted tablets marked dead for repair");
        Ok(())
    }

    async fn trim_finished(&self, ops: &[Arc<OpInfo>]) {
        let finished: Vec<&OpInfo> = ops
            .iter()
            .map(|op| op.as_ref())
            .filter(|op| is_finished(op))
            .collect();
        if finished.len() <= KEEP_FINISHED {
            return;
        }
        let doomed = ops_to_trim(&finished, now_ms());
        if doomed.is_empty() {
            return;
        }
        let Ok((leadership, lock)) = self.lock_and_leadership().await else {
            return;
        };
        // A batch at a time, each one ZooKeeper transaction: after a whole-cluster
        // recovery tens of thousands of ops end, and a write each would cost ZooKeeper
        // as much as the ops' own. A reload waiting for the gate, which holds back every
        // op write, waits for one transaction only.
        for batch in doomed.chunks(DELETES_AT_ONCE) {
            match self.delete_ops_together(leadership, &lock, batch).await {
                Deleted::All => {}
                // Nothing was applied: one was deleted meanwhile (an operator's
                // DeleteOp), so each is deleted on its own.
                Deleted::NoneOneMissing => {
                    for op in batch {
                        let _writing = self.op_book.gate.read().await;
                        let unsettled = self.op_book.unsettled();
                        let deleted = lock.delete(&self.paths.op(op.op_id), None).await;
                        self.note_op_deleted(leadership, op.op_id, &deleted);
                        unsettled.settle();
                    }
                }
                // Leadership lost, or the outcome unknown (the copy is distrusted and
                // read again): the next pass of whoever leads tries again.
                Deleted::Unknown => return,
            }
        }
    }

    /// Deletes `batch` in one transaction checked against the election lock.
    async fn delete_ops_together(
        &self,
        leadership: u64,
        lock: &zookeeper_client::OwnedLockClient,
        batch: &[&OpInfo],
    ) -> Deleted {
        let _writing = self.op_book.gate.read().await;
        let mut writer = lock.new_check_writer();
        for op in batch {
            if writer.add_delete(&self.paths.op(op.op_id), None).is_err() {
                return Deleted::Unknown;
            }
        }
        let unsettled = self.op_book.unsettled();
        match writer.commit().await {
            Ok(_) => {
                for op in batch {
                    self.note_op_deleted(leadership, op.op_id, &Ok(()));
                }
                unsettled.settle();
                Deleted::All
            }
            Err(zookeeper_client::CheckWriteError::OperationFailed {
                source: ZkError::NoNode,
                ..
            }) => {
                unsettled.settle();
                Deleted::NoneOneMissing
            }
            // The lock is gone: nothing was applied.
            Err(zookeeper_client::CheckWriteError::CheckFailed { .. }) => {
                unsettled.settle();
                Deleted::Unknown
            }
            // Dropped unsettled: the copy is read again.
            Err(_) => Deleted::Unknown,
        }
    }

    async fn was_cancelled(&self, op_id: u64) -> bool {
        let cancelled = self
            .current_op(op_id)
            .await
            .is_ok_and(|stored| stored.status == CANCELED);
        if cancelled {
            info!(op_id, "op cancelled");
        }
        cancelled
    }

    async fn execute(&self, op: OpInfo) {
        // The pass that started this op read it before now: an execution that ended
        // meanwhile (it leaves `running` only after saving its end) would be repeated
        // from a stale task. Go on from what is stored.
        let mut op = match self.current_op(op.op_id).await {
            Ok(stored) if !is_finished(&stored) => stored,
            _ => return,
        };
        let mut steps = StepTimes::default();
        let written_after_first_task = first_written_after_first_task(&op);
        op.status = DOING.into();
        if !written_after_first_task && self.save_op(&op).await.is_err() {
            return;
        }
        while (op.task_index as usize) < op.tasks.len() {
            // Without a valid ZooKeeper lease this nameserver may already be replaced:
            // stop here; whoever leads resumes from the last saved task.
            if !self.is_leader() {
                return;
            }
            // An operator may have cancelled it between two tasks.
            if self.was_cancelled(op.op_id).await {
                self.undo_half_done(&op).await;
                return;
            }
            let task = op.tasks[op.task_index as usize].clone();
            steps.start();
            let leader = self.leader_to_watch(&op, &task).await;
            // A last task that records a new leader writes the op's end with it.
            let ending = (task == "kUpdateLeaderInfo"
                && op.task_index as usize + 1 == op.tasks.len())
            .then(|| {
                let mut ended = op.clone();
                ended.task_index += 1;
                ended.status = DONE.into();
                ended
            });
            let work = async {
                match self.injected_fault(&task).await {
                    Some(failure) => Err(failure),
                    None if ending.is_some() => {
                        let table = self.table_of(&op).await?;
                        partition_of(&table, op.pid)?;
                        self.update_leader_info(&op, &table, ending).await
                    }
                    None => self.run_task(&mut op, &task).await.map(|()| None),
                }
            };
            let outcome = tokio::select! {
                ran = tokio::time::timeout(self.task_timeout, work) => ran,
                Some(leader) = self.stops_answering(leader) => Ok(Err(NsError::Tablet {
                    endpoint: leader,
                    message: "the partition's leader stopped answering; the op gives way to \
                              its failover"
                        .into(),
                })),
            };
            steps.done(&task);
            if matches!(outcome, Ok(Ok(_))) {
                // Fault injection for tests: a nameserver stopped between a task's calls
                // and the write of its outcome.
                self.injected_delay_after(&task).await;
            }
            let (failure, ended) = match outcome {
                Ok(Ok(ended)) => (None, ended),
                Ok(Err(e)) => (Some(format!("{task}: {e}")), None),
                Err(_) => (
                    Some(format!("{task} timed out after {:?}", self.task_timeout)),
                    None,
                ),
            };
            if let Some(reason) = failure {
                if !self.is_leader() {
                    // Not a failure of the op: whoever leads resumes it.
                    warn!(op_id = op.op_id, reason = %reason, "op paused: this nameserver no longer leads");
                    return;
                }
                warn!(op_id = op.op_id, op_type = %op.op_type, reason = %reason, "op failed");
                self.undo_half_done(&op).await;
                op.status = FAILED.into();
                op.reason = reason;
                op.end_time_ms = now_ms();
                crate::metrics::METRICS.op_ended(&op);
                let _ = self.save_op(&op).await;
                return;
            }
            if let Some(ended) = ended {
                // Its end went in the same transaction as the task's metadata.
                report_done(&ended, &steps);
                return;
            }
            op.task_index += 1;
            let last = op.task_index as usize == op.tasks.len();
            if !last && repeats_harmlessly(&op.op_type, &task) {
                // Its progress is written with the next task's: a leader that stops
                // before then runs it again.
                continue;
            }
            if last {
                // The end is written with the last task's progress, in one write: a
                // leader that stops before it resumes the last task, which is
                // idempotent like every task.
                op.status = DONE.into();
                op.end_time_ms = now_ms();
            }
            // Refused if an operator cancelled it while the task ran (the cancel stands),
            // or if leadership was lost (the next leader resumes from the last saved task).
            steps.start();
            if let Err(e) = self.save_op(&op).await {
                warn!(op_id = op.op_id, task = %task, error = %e, "op progress not written");
                if self.was_cancelled(op.op_id).await {
                    self.undo_half_done(&op).await;
                }
                return;
            }
            steps.done("saved");
            if last {
                report_done(&op, &steps);
            }
        }
        if op.status != DONE {
            // Every task had run before this execution (stored by a leader that wrote
            // the end apart from the last task's progress, and stopped between the two).
            op.status = DONE.into();
            op.end_time_ms = now_ms();
            if self.save_op(&op).await.is_ok() {
                report_done(&op, &steps);
            }
        }
    }

    /// After a failed or cancelled op: one that had the leader ship to a returning or new
    /// replica has it stop again (a replica that voted before keeps its vote; a joining
    /// one loses it, which the failover rule allows for); one that was removing a replica
    /// leaves it marked joining and dead, for RecoverTable. Best effort: if the leader
    /// cannot be told, the reconciler sees the difference and repairs it.
    async fn undo_half_done(&self, op: &OpInfo) {
        if !self.is_leader() {
            return;
        }
        let done = |name: &str| {
            op.tasks
                .iter()
                .take(op.task_index as usize)
                .any(|t| t == name)
        };
        let pending = |name: &str| {
            op.tasks
                .iter()
                .skip(op.task_index as usize)
                .any(|t| t == name)
        };
        if done("kAddReplica") && pending("kUpdatePartitionStatus") {
            self.stop_shipping_after_failure(op).await;
        }
        // A replica the op was removing, still listed and marked leaving (whether or not
        // the mark's own task was recorded as done): the leader may or may not have
        // dropped its vote. `joining` says exactly that (it may vote, it may lack
        // writes), and RecoverTable settles it again; `leaving` would be left to an op
        // that is over. A replica the op was bringing back and that is not back is
        // marked dead, so that the planner or the operator sees it is not.
        let removing = match op.op_type.as_str() {
            DEL_REPLICA if pending("kDelReplicaMeta") => Some(op.endpoint.clone()),
            MIGRATE if pending("kDelSourceReplicaMeta") => Some(op.source.clone()),
            _ => None,
        };
        let returning = (matches!(op.op_type.as_str(), RECOVER_TABLE | ADD_REPLICA | MIGRATE)
            && pending("kUpdatePartitionStatus"))
        .then(|| op.endpoint.clone());
        if removing.is_none() && returning.is_none() {
            return;
        }
        let settled = async {
            let table = self.table_of(op).await?;
            let (removing, returning) = (removing.clone(), returning.clone());
            self.update_partition(&table, op.pid, move |p| {
                for replica in p.replicas.iter_mut() {
                    if Some(&replica.endpoint) == removing.as_ref() && replica.leaving {
                        replica.leaving = false;
                        replica.joining = true;
                        replica.is_alive = false;
                    }
                    if Some(&replica.endpoint) == returning.as_ref() && !replica.is_leader {
                        replica.is_alive = false;
                    }
                }
            })
            .await
        }
        .await;
        if let Err(e) = settled {
            warn!(op_id = op.op_id, error = %e, "could not record what the op left half done; the reconciler will see it");
        }
    }

    async fn stop_shipping_after_failure(&self, op: &OpInfo) {
        let undone = async {
            let table = self.table_of(op).await?;
            let partition = partition_of(&table, op.pid)?;
            // A leader taken for gone or silent would only make this wait for a call
            // timeout, holding back the failover that replaces it; the new leader ships
            // to the replicas the metadata names, and the reconciler settles this one.
            let leader = leader_of(&partition)?;
            if self.presence(&leader) != Presence::Registered {
                return Err(NsError::Tablet {
                    endpoint: leader,
                    message: "the leader is gone or silent; not waiting for it".into(),
                });
            }
            // A joining replica stops voting too (the failover rule still counts it while
            // it is listed as joining); a member that voted before keeps its vote.
            let joining = partition
                .replicas
                .iter()
                .any(|r| r.endpoint == op.endpoint && r.joining);
            self.del_from_leader(&table, &partition, op.pid, &op.endpoint, !joining)
                .await
        }
        .await;
        match undone {
            Ok(()) => {
                info!(op_id = op.op_id, endpoint = %op.endpoint, "the leader no longer ships to the replica of the failed op")
            }
            Err(e) => {
                warn!(op_id = op.op_id, endpoint = %op.endpoint, error = %e, "could not undo the failed op; the reconciler will")
            }
        }
    }

    /// The leader whose failure should end `task` of `op` at once: the partition's, for
    /// the tasks that call it (ChangeLeader's replace it). A task waiting on a paused
    /// leader would otherwise hold the partition (ops on one partition run one at a
    /// time) until its call timed out, and the failover with it. Tasks that only write
    /// the metadata or call other tablets run to their end.
    async fn leader_to_watch(&self, op: &OpInfo, task: &str) -> Option<String> {
        if op.op_type == CHANGE_LEADER || !CALLS_THE_LEADER.contains(&task) {
            return None;
        }
        let table = self.table_of(op).await.ok()?;
        let partition = table.partitions.iter().find(|p| p.pid == op.pid)?;
        leader_of(partition).ok()
    }

    /// Resolves, with its endpoint, once `leader` is taken for gone or silent, or has
    /// left ZooKeeper; never without a leader to watch.
    async fn stops_answering(&self, leader: Option<String>) -> Option<String> {
        let Some(leader) = leader else {
            return std::future::pending().await;
        };
        while self.presence(&leader) == Presence::Registered || !self.registry_ready() {
            tokio::time::sleep(LEADER_WATCH_EVERY).await;
        }
        Some(leader)
    }

    /// The op's table, refused if it was dropped and created again since the op was made.
    /// From the leader's copy, which holds its own writes the moment they succeed and was
    /// read whole when it took office; from ZooKeeper while the copy does not hold it.
    /// (Every task of every op read the whole table from ZooKeeper before: at a thousand
    /// partitions a table, seventeen nodes per task, and ZooKeeper was the bottleneck of
    /// a mass failover.)
    async fn table_of(&self, op: &OpInfo) -> Result<Arc<TableInfo>> {
        let held = self
            .metadata
            .table(&format!("{}.{}", db_or_default(&op.db), op.name));
        let table = match held {
            Some(table) => table,
            None => Arc::new(self.table(&op.db, &op.name).await?),
        };
        if op.tid != 0 && table.tid != op.tid {
            return Err(NsError::InvalidArgument(format!(
                "table {} was dropped and created again (tid {} is now {}); the op was for \
                 the old one",
                op.name, op.tid, table.tid
            )));
        }
        Ok(table)
    }

    async fn run_task(&self, op: &mut OpInfo, task: &str) -> Result<()> {
        let table = self.table_of(op).await?;
        let partition = partition_of(&table, op.pid)?;
        match task {
            "kFenceReplicas" => self.fence_replicas(op, &table, &partition).await,
            "kPromoteLeader" => self.promote_leader(op, &table, &partition).await,
            "kUpdateLeaderInfo" => self.update_leader_info(op, &table, None).await.map(|_| ()),
            "kDelReplica" => {
                // OfflineReplica stops shipping to the replica but keeps its vote;
                // DelReplica takes it out of the voting set.
                let keep_vote = op.op_type == OFFLINE_REPLICA;
                self.del_from_leader(&table, &partition, op.pid, &op.endpoint, keep_vote)
                    .await?;
                if keep_vote || table.mode() != tpb::ReplicationMode::Quorum {
                    return Ok(());
                }
                self.wait_remaining_hold_commit(&table, &partition, &op.endpoint)
                    .await
            }
            "kDelSourceReplica" => {
                self.del_from_leader(&table, &partition, op.pid, &op.source, false)
                    .await?;
                if table.mode() != tpb::ReplicationMode::Quorum {
                    return Ok(());
                }
                self.wait_remaining_hold_commit(&table, &partition, &op.source)
                    .await
            }
            "kMarkReplicaLeaving" | "kMarkSourceLeaving" => {
                // Before the leader stops counting its vote: from now on the failover
                // rule reckons with both the voting sets with and without it.
                let endpoint = if task == "kMarkReplicaLeaving" {
                    op.endpoint.clone()
                } else {
                    op.source.clone()
                };
                self.check_writable_without(&table, &partition, &endpoint)
                    .await?;
                self.update_partition(&table, op.pid, move |p| {
                    for replica in p.replicas.iter_mut().filter(|r| r.endpoint == endpoint) {
                        replica.leaving = true;
                    }
                })
                .await
            }
            "kDropReplica" | "kDropSourceReplica" => {
                let endpoint = if task == "kDropReplica" {
                    &op.endpoint
                } else {
                    &op.source
                };
                if leader_of(&partition).is_ok_and(|leader| leader == *endpoint) {
                    return Err(NsError::InvalidArgument(format!(
                        "{endpoint} leads partition {} now; its replica is kept",
                        op.pid
                    )));
                }
                drop_replica(&table, op.pid, endpoint).await;
                Ok(())
            }
            "kAddReplicaMeta" => {
                let endpoint = op.endpoint.clone();
                self.update_partition(&table, op.pid, move |p| {
                    if !p.replicas.iter().any(|r| r.endpoint == endpoint) {
                        p.replicas.push(ReplicaMeta {
                            endpoint: endpoint.clone(),
                            is_leader: false,
                            is_alive: false,
                            joining: true,
                            leaving: false,
                        });
                    }
                })
                .await
            }
            "kDelReplicaMeta" | "kDelSourceReplicaMeta" => {
                let endpoint = if task == "kDelReplicaMeta" {
                    op.endpoint.clone()
                } else {
                    op.source.clone()
                };
                self.update_partition(&table, op.pid, move |p| {
                    p.replicas.retain(|r| r.endpoint != endpoint)
                })
                .await
            }
            "kMakeSnapshot" => self.snapshot_replicas(&table, &partition).await,
            "kUpdatePartitionStatus" => {
                let (endpoint, alive) = (op.endpoint.clone(), op.op_type != OFFLINE_REPLICA);
                self.update_partition(&table, op.pid, move |p| {
                    for replica in p.replicas.iter_mut().filter(|r| r.endpoint == endpoint) {
                        replica.is_alive = alive;
                        // kWaitCatchUp saw it hold everything the leader held once it
                        // voted: a settled member (also one a removal left marked).
                        if alive {
                            replica.joining = false;
                            replica.leaving = false;
                        }
                    }
                })
                .await
            }
            "kPrepareReplica" => self.prepare_replica(op, &table, &partition).await,
            "kAddReplica" => {
                let leader = leader_of(&partition)?;
                // A replica that does not vote yet (new, or left out of a forced change)
                // starts voting now but may lack acknowledged writes until it catches up.
                let status = leader_status(&leader, table.tid, op.pid).await?;
                if !status.followers.contains(&op.endpoint) {
                    let endpoint = op.endpoint.clone();
                    self.update_partition(&table, op.pid, move |p| {
                        for replica in p.replicas.iter_mut().filter(|r| r.endpoint == endpoint) {
                            replica.joining = true;
                        }
                    })
                    .await?;
                }
                let mut client = tablet(&leader).await?;
                call(
                    &leader,
                    client.add_replica(tpb::AddReplicaRequest {
                        tid: table.tid,
                        pid: op.pid,
                        endpoint: op.endpoint.clone(),
                    }),
                )
                .await
                .map(|_| ())
            }
            "kWaitCatchUp" => self.wait_catch_up(op, &table, &partition).await,
            other => Err(NsError::InvalidArgument(format!("unknown task {other}"))),
        }
    }

    /// Records the chosen replica as the partition's leader in the op's term. With
    /// `ending` (the op as it ends, when this is its last task), the op's end is written
    /// in the same transaction if the leader's copy of the op node is current; returns
    /// the op as written then, `None` when its end is still to be written.
    async fn update_leader_info(
        &self,
        op: &OpInfo,
        table: &TableInfo,
        ending: Option<OpInfo>,
    ) -> Result<Option<OpInfo>> {
        let (chosen, term, failed) = (op.chosen.clone(), op.term, op.endpoint.clone());
        let told = self.told_followers.lock().remove(&op.op_id);
        let forced = op.force;
        let change = Arc::new(move |p: &mut PartitionMeta| {
            p.term = term;
            p.unavailable_reason.clear();
            for replica in &mut p.replicas {
                replica.is_leader = replica.endpoint == chosen;
                // It answered the fence and took the lead: alive, whatever the metadata
                // said before (a restarted tablet's replica).
                if replica.endpoint == chosen {
                    replica.is_alive = true;
                }
                if replica.endpoint == failed {
                    replica.is_alive = false;
                }
                if let Some(told) = &told {
                    if replica.endpoint != chosen && !told.contains(&replica.endpoint) {
                        replica.is_alive = false;
                        // After a forced change only the replicas that listened vote;
                        // the others rejoin as new members.
                        if forced {
                            replica.joining = true;
                        }
                    }
                }
            }
        });
        let Some(mut ended) = ending else {
            self.update_partition_with(table, op.pid, change, None)
                .await?;
            return Ok(None);
        };
        // The end's write follows `save_op`'s rules: under the gate, checked against
        // the copy's version, never over a cancel or an end already stored.
        let (leadership, _) = self.lock_and_leadership().await?;
        let writing = self.op_book.gate.read().await;
        let kept = self
            .op_book
            .get(leadership, op.op_id)
            .filter(|(_, stored)| !is_finished(stored));
        let Some((version, _)) = kept else {
            // Not in the copy (being read again): the end goes apart, as before.
            drop(writing);
            self.update_partition_with(table, op.pid, change, None)
                .await?;
            return Ok(None);
        };
        ended.end_time_ms = now_ms();
        let op_end = crate::group_writes::OpEnd {
            path: self.paths.op(op.op_id),
            data: ended.encode_to_vec(),
            version,
        };
        let unsettled = self.op_book.unsettled();
        let written = self
            .update_partition_with(table, op.pid, change, Some(op_end))
            .await?;
        let Some(written) = written else {
            unsettled.settle();
            return Ok(None);
        };
        self.note_op_write(leadership, &ended, &written, |version| *version);
        unsettled.settle();
        if written.is_ok() {
            crate::metrics::METRICS.op_written(true);
        }
        Ok(written.ok().map(|_| ended))
    }

    /// Raises the term on every reachable replica but the failed leader and picks the
    /// new leader from their answers.
    async fn fence_replicas(
        &self,
        op: &mut OpInfo,
        table: &TableInfo,
        partition: &PartitionMeta,
    ) -> Result<()> {
        if op.term == 0 {
            // A term of its own, from the fenced counter: no other attempt can ever take
            // it. It is written with the leader chosen, when the fence ends; a leader
            // that stops before then leaves the op as planned, and the next one fences
            // again in a term of its own, above this one (its block of terms is reserved
            // above every term handed out before).
            op.term = self.take_term(partition.term).await?;
        }
        let mut round = self.fence_all(table, partition, op).await?;
        if let Some(ahead) = round.ahead.filter(|t| *t >= op.term) {
            // Some replica is already in a term at least this high (taken before the
            // counter existed, or by an attempt that failed): take one above it.
            op.term = self.take_term(ahead).await?;
            round = self.fence_all(table, partition, op).await?;
        }
        let answered = &round.answered;
        let candidate = (!op.chosen.is_empty()).then(|| op.chosen.clone());
        // In quorum mode the answers must meet every majority of the voting sets the
        // metadata records (see `voting`); in async mode any replica may lead.
        let sufficient = if table.mode() == tpb::ReplicationMode::Quorum {
            let heard: Vec<String> = answered.iter().map(|f| f.endpoint.clone()).collect();
            voting::answers_suffice(partition, table.replica_num, &heard)
        } else {
            Ok(())
        };
        let chosen = planner::choose_leader(answered, sufficient, candidate.as_deref(), op.force);
        op.chosen = match chosen {
            Ok(chosen) => chosen,
            Err(reason) => {
                // The partition stays without a leader (read-only); say why in the metadata.
                let (failed, note) = (op.endpoint.clone(), reason.clone());
                self.update_partition(table, op.pid, move |p| {
                    p.unavailable_reason = note.clone();
                    for replica in p.replicas.iter_mut().filter(|r| r.endpoint == failed) {
                        replica.is_leader = false;
                        replica.is_alive = false;
                    }
                })
                .await?;
                return Err(NsError::InvalidArgument(reason));
            }
        };
        if let Some(candidate) = candidate.filter(|c| *c != op.chosen) {
            op.reason = format!(
                "candidate {candidate} did not answer or was behind; {} leads instead",
                op.chosen
            );
            warn!(op_id = op.op_id, candidate = %candidate, chosen = %op.chosen, "the candidate cannot lead without losing records");
        }
        info!(op_id = op.op_id, table = %table.name, pid = op.pid, chosen = %op.chosen, term = op.term, "new leader chosen");
        // No replica that may still lead in an older term serves a read once the new
        // leader acknowledges a write: wait out what it may hold.
        self.wait_out_old_leaders(table, op, round).await
    }

    /// Tells the others to follow the chosen replica, then makes it leader of those that
    /// listened.
    async fn promote_leader(
        &self,
        op: &mut OpInfo,
        table: &TableInfo,
        partition: &PartitionMeta,
    ) -> Result<()> {
        let mut told = Vec::new();
        for replica in partition
            .replicas
            .iter()
            .filter(|r| r.endpoint != op.chosen && r.endpoint != op.endpoint && r.is_alive)
        {
            self.check_leading()?;
            let followed = async {
                let mut client = tablet(&replica.endpoint).await?;
                call(
                    &replica.endpoint,
                    client.change_role(tpb::ChangeRoleRequest {
                        tid: table.tid,
                        pid: op.pid,
                        role: TableRole::Follower as i32,
                        term: op.term,
                        leader: op.chosen.clone(),
                        ..Default::default()
                    }),
                )
                .await
            }
            .await;
            match followed {
                Ok(_) => told.push(replica.endpoint.clone()),
                Err(e) => {
                    warn!(op_id = op.op_id, endpoint = %replica.endpoint, error = %e, "could not make a follower")
                }
            }
        }
        // Every other replica the metadata lists stays a voting member, dead or not: the
        // majority a write needs never shrinks with the replicas that are up. The ones
        // that did not listen are not shipped to until RecoverTable brings them back.
        // A forced change (the operator accepted losing writes to get the partition
        // back) makes the replicas that listened the whole voting set, as an unclean
        // election must; the others rejoin as new members through RecoverTable.
        let (followers, offline) = if op.force {
            // Recorded before the new leader counts only these: the failover rule must
            // never take the others for voters.
            let (chosen, listened) = (op.chosen.clone(), told.clone());
            self.update_partition(table, op.pid, move |p| {
                for replica in p.replicas.iter_mut() {
                    if replica.endpoint != chosen && !listened.contains(&replica.endpoint) {
                        replica.joining = true;
                    }
                }
            })
            .await?;
            (told.clone(), Vec::new())
        } else {
            voting_members(partition, &op.chosen, &told)
        };
        self.check_leading()?;
        let mut client = tablet(&op.chosen).await?;
        call(
            &op.chosen,
            client.change_role(tpb::ChangeRoleRequest {
                tid: table.tid,
                pid: op.pid,
                role: TableRole::Leader as i32,
                term: op.term,
                followers,
                offline,
                ..Default::default()
            }),
        )
        .await?;
        self.told_followers.lock().insert(op.op_id, told);
        Ok(())
    }

    /// Makes sure the returning tablet holds a replica that follows the current leader,
    /// choosing how it rejoins from the term histories.
    async fn prepare_replica(
        &self,
        op: &mut OpInfo,
        table: &TableInfo,
        partition: &PartitionMeta,
    ) -> Result<()> {
        let leader = leader_of(partition)?;
        if leader == op.endpoint {
            // A failover since the op was queued made it the leader.
            return Err(NsError::InvalidArgument(format!(
                "{} leads partition {} now; there is nothing to recover",
                op.endpoint, op.pid
            )));
        }
        let mut leader_client = tablet(&leader).await?;
        let leader_pair = call(
            &leader,
            leader_client.get_term_pair(tpb::GetTermPairRequest {
                tid: table.tid,
                pid: op.pid,
            }),
        )
        .await?;
        let mut client = tablet(&op.endpoint).await?;
        // Only a tablet that says it has no such replica has none: a call that failed
        // (a connection broken on the way, say) fails the task, to be tried again,
        // rather than have a replica that holds data created afresh.
        let own = absent_if_not_found(
            &op.endpoint,
            client
                .get_term_pair(tpb::GetTermPairRequest {
                    tid: table.tid,
                    pid: op.pid,
                })
                .await,
        )?;
        let status = absent_if_not_found(
            &op.endpoint,
            client
                .get_table_status(tpb::GetTableStatusRequest {
                    tid: Some(table.tid),
                    pid: Some(op.pid),
                })
                .await,
        )?
        .and_then(|r| r.tables.into_iter().next());
        let decision = planner::recovery(
            own.as_ref().map(|o| ReplicaLog {
                history: &o.term_history,
                last_offset: o.last_offset,
                snapshot_offset: status.as_ref().map_or(0, |s| s.snapshot_offset),
            }),
            &leader_pair.term_history,
            leader_pair.last_offset,
        );
        info!(op_id = op.op_id, table = %table.name, pid = op.pid, endpoint = %op.endpoint, decision = decision.name(), "recovering a replica");
        op.chosen = decision.name().into();
        if matches!(decision, Recovery::Create | Recovery::Reseed) {
            // Its copy is gone or replaced: it may lack writes it once acknowledged, and
            // what the leader recorded of its acknowledgements no longer holds. It is
            // marked joining, and the leader stops shipping to it (keeping its vote)
            // until kAddReplica, from when only new acknowledgements count.
            let endpoint = op.endpoint.clone();
            self.update_partition(table, op.pid, move |p| {
                for replica in p.replicas.iter_mut().filter(|r| r.endpoint == endpoint) {
                    replica.joining = true;
                }
            })
            .await?;
            self.del_from_leader(table, partition, op.pid, &op.endpoint, true)
                .await?;
        }
        if decision == Recovery::Create {
            // The tablet lost its copy: an empty replica, seeded by a snapshot on AddReplica.
            let meta = crate::state::replica_meta(table, partition, TableRole::Follower, &leader);
            call(
                &op.endpoint,
                client.create_table(tpb::CreateTableRequest { meta: Some(meta) }),
            )
            .await?;
        } else if status.is_none_or(|s| s.state == tpb::TableState::LoadFailed as i32) {
            return Err(NsError::Tablet {
                endpoint: op.endpoint.clone(),
                message: "its replica is on disk but not loaded; repair it or drop it".into(),
            });
        }
        // Divergent records are cut and a snapshot is sent as needed by the tablets
        // themselves once the leader ships to it.
        call(
            &op.endpoint,
            client.change_role(tpb::ChangeRoleRequest {
                tid: table.tid,
                pid: op.pid,
                role: TableRole::Follower as i32,
                term: partition.term,
                leader,
                ..Default::default()
            }),
        )
        .await
        .map(|_| ())
    }

    /// Waits until the returning replica holds everything the leader held when the wait
    /// began, every acknowledged write among it (so it stands in for the replicas that
    /// acknowledged those writes).
    async fn wait_catch_up(
        &self,
        op: &OpInfo,
        table: &TableInfo,
        partition: &PartitionMeta,
    ) -> Result<()> {
        let leader = leader_of(partition)?;
        let mut committed_before = None;
        let mut pauses = look_again();
        loop {
            let status = follower_status(&leader, table.tid, op.pid).await?;
            // The leader's end, not its commit offset: after a change of leader the commit
            // offset may lag writes the old leader acknowledged, which this leader holds.
            let committed_before = *committed_before.get_or_insert(status.leader_offset);
            let acked = status
                .followers
                .iter()
                .find(|f| f.endpoint == op.endpoint)
                .map_or(0, |f| f.acked_offset);
            // Under a steady stream of writes the tail keeps moving; what matters for its
            // vote is that it holds what was committed without it.
            if acked >= committed_before {
                return Ok(());
            }
            tokio::time::sleep(pauses.next().unwrap_or(CATCH_UP_LOOK_AT_MOST)).await;
        }
    }

    /// Refuses to remove `endpoint` when the replicas the leader ships to without it
    /// would not make a majority of every possible voting set: writes would stop.
    async fn check_writable_without(
        &self,
        table: &TableInfo,
        partition: &PartitionMeta,
        endpoint: &str,
    ) -> Result<()> {
        let leader = leader_of(partition)?;
        if leader == endpoint {
            // A failover since the op was queued made it the leader.
            return Err(NsError::InvalidArgument(format!(
                "{endpoint} leads partition {} now; move the leader away first",
                partition.pid
            )));
        }
        if table.mode() != tpb::ReplicationMode::Quorum {
            return Ok(());
        }
        let status = leader_status(&leader, table.tid, partition.pid).await?;
        let in_step: Vec<&str> = std::iter::once(leader.as_str())
            .chain(
                status
                    .followers
                    .iter()
                    .filter(|f| !status.offline.contains(f) && *f != endpoint)
                    .map(String::as_str),
            )
            .collect();
        let remaining: Vec<ReplicaMeta> = partition
            .replicas
            .iter()
            .filter(|r| r.endpoint != endpoint)
            .cloned()
            .collect();
        if voting::majority_of_every_set_holds(&remaining, &in_step) {
            return Ok(());
        }
        Err(NsError::InvalidArgument(format!(
            "removing {endpoint} would leave partition {} unable to take writes: only {} \
             replicas are in step; bring the others back first (recovertable)",
            partition.pid,
            in_step.join(", ")
        )))
    }

    /// After the leader stopped counting `removed`'s vote: waits until the replicas
    /// holding everything the leader held then make a majority of every voting set
    /// possible without it, so that leaving the metadata does not leave an acknowledged
    /// write on a minority.
    async fn wait_remaining_hold_commit(
        &self,
        table: &TableInfo,
        partition: &PartitionMeta,
        removed: &str,
    ) -> Result<()> {
        let leader = leader_of(partition)?;
        let remaining: Vec<ReplicaMeta> = partition
            .replicas
            .iter()
            .filter(|r| r.endpoint != removed)
            .cloned()
            .collect();
        let mut committed_before = None;
        let mut pauses = look_again();
        loop {
            let status = follower_status(&leader, table.tid, partition.pid).await?;
            // The leader's end (see `wait_catch_up`).
            let committed_before = *committed_before.get_or_insert(status.leader_offset);
            // The leader holds all of it.
            let holders: Vec<&str> = std::iter::once(leader.as_str())
                .chain(
                    status
                        .followers
                        .iter()
                        .filter(|f| f.acked_offset >= committed_before)
                        .map(|f| f.endpoint.as_str()),
                )
                .collect();
            if voting::majority_of_every_set_holds(&remaining, &holders) {
                return Ok(());
            }
            tokio::time::sleep(pauses.next().unwrap_or(CATCH_UP_LOOK_AT_MOST)).await;
        }
    }
}

impl Nameserver {
    /// Stops the leader shipping to a follower; unless `keep_vote`, the follower also
    /// leaves the voting set.
    async fn del_from_leader(
        &self,
        table: &TableInfo,
        partition: &PartitionMeta,
        pid: u32,
        endpoint: &str,
        keep_vote: bool,
    ) -> Result<()> {
        let leader = leader_of(partition)?;
        let mut client = tablet(&leader).await?;
        call(
            &leader,
            client.del_replica(tpb::DelReplicaRequest {
                tid: table.tid,
                pid,
                endpoint: endpoint.to_string(),
                keep_vote,
            }),
        )
        .await
        .map(|_| ())
    }

    /// Snapshots every alive replica; the leader's must succeed.
    async fn snapshot_replicas(&self, table: &TableInfo, partition: &PartitionMeta) -> Result<()> {
        for replica in partition.replicas.iter().filter(|r| r.is_alive) {
            let made = async {
                let mut client = tablet(&replica.endpoint).await?;
                call(
                    &replica.endpoint,
                    client.make_snapshot(tpb::MakeSnapshotRequest {
                        tid: table.tid,
                        pid: partition.pid,
                    }),
                )
                .await
            }
            .await;
            match made {
                Err(e) if replica.is_leader => return Err(e),
                Err(e) => {
                    warn!(endpoint = %replica.endpoint, error = %e, "snapshot on a follower failed")
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// Best effort: drops a replica from its tablet (which may be gone for good).
async fn drop_replica(table: &TableInfo, pid: u32, endpoint: &str) {
    let dropped = async {
        let mut client = tablet(endpoint).await?;
        call(
            endpoint,
            client.drop_table(tpb::DropTableRequest {
                tid: table.tid,
                pid,
            }),
        )
        .await
    }
    .await;
    if let Err(e) = dropped {
        warn!(tid = table.tid, pid, endpoint, error = %e, "dropping a replica failed; its files stay on that tablet");
    }
}

async fn follower_status(
    leader: &str,
    tid: u32,
    pid: u32,
) -> Result<tpb::GetFollowerStatusResponse> {
    let mut client = tablet(leader).await?;
    call(
        leader,
        client.get_follower_status(tpb::GetFollowerStatusRequest { tid, pid }),
    )
    .await
}

/// The leader's own status of a partition: its voting followers and which are offline.
async fn leader_status(leader: &str, tid: u32, pid: u32) -> Result<tpb::TableStatus> {
    let mut client = tablet(leader).await?;
    call(
        leader,
        client.get_table_status(tpb::GetTableStatusRequest {
            tid: Some(tid),
            pid: Some(pid),
        }),
    )
    .await?
    .tables
    .into_iter()
    .next()
    .ok_or_else(|| NsError::Tablet {
        endpoint: leader.to_string(),
        message: format!("holds no replica of tid {tid} pid {pid}"),
    })
}

/// Every replica a tablet holds, by (tid, pid); None if it cannot be asked.
async fn tablet_report(endpoint: &str, tid: Option<u32>) -> Option<reconcile::TabletReport> {
    let mut client = tablet(endpoint).await.ok()?;
    let response = call(
        endpoint,
        client.get_table_status(tpb::GetTableStatusRequest { tid, pid: None }),
    )
    .await
    .ok()?;
    Some(
        response
            .tables
            .into_iter()
            .map(|s| ((s.tid, s.pid), s))
            .collect(),
    )
}

/// Counts and logs an op that ran to its end.
fn report_done(op: &OpInfo, steps: &StepTimes) {
    crate::metrics::METRICS.op_ended(op);
    info!(op_id = op.op_id, op_type = %op.op_type, table = %op.name, pid = op.pid, steps = %steps.taken, "op done");
}

/// How long each step of one execution of an op took (its tasks, and the writes of its
/// progress), for the log line of its end: where a failover's time goes, op by op.
#[derive(Default)]
struct StepTimes {
    started: Option<std::time::Instant>,
    /// "kFenceReplicas 41 ms, saved 12 ms, ...".
    taken: String,
}

impl StepTimes {
    fn start(&mut self) {
        self.started = Some(std::time::Instant::now());
    }

    fn done(&mut self, step: &str) {
        use std::fmt::Write;
        if let Some(started) = self.started.take() {
            if !self.taken.is_empty() {
                self.taken.push_str(", ");
            }
            let ms = started.elapsed().as_millis();
            let _ = write!(self.taken, "{step} {ms} ms");
        }
    }
}

/// Whether the op's first write may wait for its first task's end, so that starting it
/// needs no write of its own to mark it under way: a new ChangeLeader's fence takes a
/// term of its own and is written, with the leader it chose, when it ends; run again from
/// the start it takes a new term. One ZooKeeper write fewer for each of the thousands of
/// ChangeLeaders a dead tablet leaves.
fn first_written_after_first_task(op: &OpInfo) -> bool {
    op.op_type == CHANGE_LEADER && op.status == INITED && op.task_index == 0 && op.term == 0
}

/// Whether a task that ran may run again after it, its progress unwritten, with nothing
/// changed; its progress is then written with the next task's. Each is one ZooKeeper
/// write fewer for every partition of a failover or a whole-cluster recovery.
/// - A ChangeLeader's promotion tells the same replicas the same term and leader again,
///   which each takes as what it already holds (the term is the one the fence saved,
///   and a replica refuses that term from anyone else).
/// - A RecoverTable's preparation, run again before the leader was told to ship to the
///   replica, decides from the term histories as the first time; the wait for it to
///   catch up only reads. The re-add is written: a preparation run again on a replica
///   the leader already ships to could take a log that is ahead of the leader's read
///   for divergent, and a failed op's undo must know the leader ships to it.
/// - An OfflineReplica's leader is told again to stop shipping to the replica.
fn repeats_harmlessly(op_type: &str, task: &str) -> bool {
    matches!(
        (op_type, task),
        (CHANGE_LEADER, "kPromoteLeader")
            | (RECOVER_TABLE, "kPrepareReplica" | "kWaitCatchUp")
            | (OFFLINE_REPLICA, "kDelReplica")
    )
}

/// Ops that restore availability or redundancy after a failure.
fn is_failover(op_type: &str) -> bool {
    matches!(op_type, CHANGE_LEADER | OFFLINE_REPLICA | RECOVER_TABLE)
}

/// The order ops may start in: ops under way first (resumed where they stopped), then
/// failover (a leaderless partition before a missing follower), then the rest, snapshots
/// last, oldest first within each.
fn in_start_order(mut ops: Vec<Arc<OpInfo>>) -> Vec<Arc<OpInfo>> {
    ops.sort_by_key(|op| (op.status != DOING, urgency(&op.op_type), op.op_id));
    ops
}

/// The first op of each partition, in the order given (the keys borrowed, not copied:
/// a pass during a whole-cluster recovery goes through tens of thousands).
fn first_of_each_partition(ops: Vec<Arc<OpInfo>>) -> VecDeque<Arc<OpInfo>> {
    let first: Vec<bool> = {
        let mut seen = HashSet::new();
        ops.iter()
            .map(|op| seen.insert((op.db.as_str(), op.name.as_str(), op.pid)))
            .collect()
    };
    ops.into_iter()
        .zip(first)
        .filter_map(|(op, first)| first.then_some(op))
        .collect()
}

/// How soon an op of this type should run, most urgent first: a leaderless partition,
/// a missing follower, a returning replica, the rest, snapshots.
fn urgency(op_type: &str) -> u8 {
    match op_type {
        CHANGE_LEADER => 0,
        OFFLINE_REPLICA => 1,
        RECOVER_TABLE => 2,
        MAKE_SNAPSHOT => 4,
        _ => 3,
    }
}

/// The voting members a new leader `chosen` is given: every other settled replica of the
/// partition, and among them the ones not shipped to (those that did not follow it).
fn voting_members(
    partition: &PartitionMeta,
    chosen: &str,
    following: &[String],
) -> (Vec<String>, Vec<String>) {
    // Replicas joining or leaving do not vote for the new leader: they may lack writes
    // (they rejoin through RecoverTable) or are on their way out. The failover rule
    // still reckons with them until the metadata settles them.
    let followers: Vec<String> = partition
        .replicas
        .iter()
        .filter(|r| !r.joining && !r.leaving)
        .map(|r| r.endpoint.clone())
        .filter(|e| e != chosen)
        .collect();
    let offline = followers
        .iter()
        .filter(|e| !following.contains(e))
        .cloned()
        .collect();
    (followers, offline)
}

fn partition_of(table: &TableInfo, pid: u32) -> Result<PartitionMeta> {
    table
        .partitions
        .iter()
        .find(|p| p.pid == pid)
        .cloned()
        .ok_or_else(|| {
            NsError::InvalidArgument(format!("table {} has no partition {pid}", table.name))
        })
}

/// A tablet's answer, `None` if it says it has no such replica; any other failure is an
/// error (see [`call`]).
fn absent_if_not_found<T>(
    endpoint: &str,
    answer: std::result::Result<tonic::Response<T>, tonic::Status>,
) -> Result<Option<T>> {
    match answer {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status)
            if tessera_common::wire_error::detail_of(&status).is_some_and(|d| {
                d.code() == tessera_common::wire_error::ErrorCode::TableNotFound
            }) =>
        {
            Ok(None)
        }
        Err(status) => Err(crate::state::tablet_error(endpoint, status)),
    }
}

/// A table's node name under the table directory: `db.name`.
pub(crate) fn table_name(table: &TableInfo) -> String {
    format!("{}.{}", table.db, table.name)
}

fn leader_of(partition: &PartitionMeta) -> Result<String> {
    partition
        .replicas
        .iter()
        .find(|r| r.is_leader && r.is_alive)
        .map(|r| r.endpoint.clone())
        .ok_or_else(|| {
            NsError::InvalidArgument(format!("partition {} has no alive leader", partition.pid))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caught-up follower is seen within milliseconds; a slow one is looked at several
    /// times in its first 100 ms, then a few times a second.
    #[test]
    fn catch_up_looks_start_soon_and_slow_down() {
        let pauses: Vec<Duration> = look_again().take(8).collect();
        // Each pause is its step plus up to as much again of jitter.
        assert!(pauses[0] >= CATCH_UP_FIRST_LOOK && pauses[0] <= 2 * CATCH_UP_FIRST_LOOK);
        let first_four: Duration = pauses[..4].iter().sum();
        assert!(first_four <= Duration::from_millis(150), "{pauses:?}");
        for pause in &pauses {
            assert!(*pause <= 2 * CATCH_UP_LOOK_AT_MOST, "{pauses:?}");
        }
        assert!(pauses[7] >= CATCH_UP_LOOK_AT_MOST, "{pauses:?}");
    }

    fn partition(endpoints: &[&str]) -> PartitionMeta {
        PartitionMeta {
            pid: 0,
            replicas: endpoints
                .iter()
                .map(|e| ReplicaMeta {
                    endpoint: e.to_string(),
                    is_leader: *e == "a",
                    is_alive: true,
                    joining: false,
                    leaving: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A new leader votes with every other listed replica; the ones that did not follow
    /// it are offline (not shipped to) but keep their vote.
    #[test]
    fn a_new_leader_is_given_every_listed_replica_as_a_voter() {
        let (followers, offline) =
            voting_members(&partition(&["a", "b", "c"]), "b", &["c".to_string()]);
        assert_eq!(followers, vec!["a", "c"]);
        assert_eq!(offline, vec!["a"]);
    }

    /// Replicas joining or leaving are not given to a new leader as voters.
    #[test]
    fn a_new_leader_does_not_count_transitional_replicas() {
        let mut p = partition(&["a", "b", "c", "d"]);
        p.replicas[2].joining = true;
        p.replicas[3].leaving = true;
        let (followers, offline) = voting_members(&p, "b", &["c".to_string()]);
        assert_eq!(followers, vec!["a"]);
        assert_eq!(offline, vec!["a"]);
    }

    /// Thousands of snapshot ops queued first do not hold back a failover.
    #[test]
    fn failover_ops_start_before_housekeeping() {
        let op = |op_id: u64, op_type: &str| {
            Arc::new(OpInfo {
                op_id,
                op_type: op_type.into(),
                ..Default::default()
            })
        };
        let queued = vec![
            op(1, MAKE_SNAPSHOT),
            op(2, MAKE_SNAPSHOT),
            op(3, ADD_REPLICA),
            op(4, RECOVER_TABLE),
            op(5, CHANGE_LEADER),
            op(6, OFFLINE_REPLICA),
            op(7, CHANGE_LEADER),
        ];
        let order: Vec<u64> = in_start_order(queued.clone())
            .iter()
            .map(|o| o.op_id)
            .collect();
        assert_eq!(order, vec![5, 7, 6, 4, 3, 1, 2]);
        // An op under way is resumed before anything else.
        let mut resumed = queued;
        Arc::make_mut(&mut resumed[2]).status = DOING.into();
        assert_eq!(in_start_order(resumed)[0].op_id, 3);
        assert!(is_failover(RECOVER_TABLE) && !is_failover(MAKE_SNAPSHOT));
    }

    /// The queue holds one op per partition: the first in start order.
    #[test]
    fn the_queue_takes_the_first_op_of_each_partition() {
        let op = |op_id: u64, name: &str, pid: u32| {
            Arc::new(OpInfo {
                op_id,
                name: name.into(),
                pid,
                ..Default::default()
            })
        };
        let ops = vec![op(1, "t", 0), op(2, "t", 1), op(3, "t", 0), op(4, "u", 0)];
        let ids: Vec<u64> = first_of_each_partition(ops)
            .iter()
            .map(|op| op.op_id)
            .collect();
        assert_eq!(ids, vec![1, 2, 4]);
    }

    /// A permit freed by an op goes to the first queued op of a partition with none
    /// running, and housekeeping never takes the permits kept for failover.
    #[test]
    fn a_freed_permit_takes_the_first_op_that_may_start() {
        let op = |op_id: u64, op_type: &str, pid: u32| OpInfo {
            op_id,
            op_type: op_type.into(),
            name: "t".into(),
            pid,
            ..Default::default()
        };
        let queue: Queue = Arc::new(Mutex::new(VecDeque::from(vec![
            Arc::new(op(1, CHANGE_LEADER, 0)),
            Arc::new(op(2, MAKE_SNAPSHOT, 1)),
            Arc::new(op(3, OFFLINE_REPLICA, 2)),
        ])));
        let running: Running = Arc::default();
        running.lock().insert(&op(0, CHANGE_LEADER, 0));
        let few = PERMITS_KEPT_FOR_FAILOVER - 1;
        let next = next_startable(&queue, &running, few).map(|o| o.op_id);
        assert_eq!(next, Some(3), "partition 0 is busy; the snapshot waits");
        assert!(running.lock().contains(&key_of(&op(3, OFFLINE_REPLICA, 2))));
        assert!(next_startable(&queue, &running, few).is_none());
        let next = next_startable(&queue, &running, PERMITS_KEPT_FOR_FAILOVER);
        assert_eq!(next.map(|o| o.op_id), Some(2));
        running.lock().remove(&op(0, CHANGE_LEADER, 0));
        assert_eq!(
            next_startable(&queue, &running, 0).map(|o| o.op_id),
            Some(1)
        );
        assert!(queue.lock().is_empty());
    }

    /// A dead tablet's partitions fail over many at once (an op mostly waits on
    /// ZooKeeper and the tablets), while housekeeping stays within its share.
    #[test]
    fn failover_takes_every_permit_and_housekeeping_its_share() {
        let op = |op_id: u64, op_type: &str| OpInfo {
            op_id,
            op_type: op_type.into(),
            name: "t".into(),
            pid: op_id as u32,
            ..Default::default()
        };
        let started = |queued: Vec<OpInfo>| {
            let queued: VecDeque<_> = queued.into_iter().map(Arc::new).collect();
            let queue: Queue = Arc::new(Mutex::new(queued));
            let running: Running = Arc::default();
            let permits = Arc::new(Semaphore::new(MAX_PARALLEL_OPS));
            let mut held = Vec::new();
            while let Ok(permit) = permits.clone().try_acquire_owned() {
                if next_startable(&queue, &running, permits.available_permits()).is_none() {
                    break;
                }
                held.push(permit);
            }
            held.len()
        };
        let failovers = (0..1_000).map(|i| op(i, CHANGE_LEADER)).collect();
        assert_eq!(
            started(failovers),
            MAX_PARALLEL_OPS,
            "failover takes every permit"
        );
        let snapshots = (0..1_000).map(|i| op(i, MAKE_SNAPSHOT)).collect();
        assert_eq!(started(snapshots), HOUSEKEEPING_AT_ONCE);
        let recoveries = (0..1_000).map(|i| op(i, RECOVER_TABLE)).collect();
        assert_eq!(started(recoveries), RECOVERIES_AT_ONCE);
    }

    #[test]
    fn only_tasks_that_repeat_harmlessly_go_unwritten() {
        let unwritten = |op_type: &str| -> Vec<String> {
            tasks_of(op_type)
                .into_iter()
                .filter(|task| repeats_harmlessly(op_type, task))
                .collect()
        };
        // The fence's progress (its term and the chosen replica) is always written
        // before the promotion, which must tell only those.
        assert_eq!(unwritten(CHANGE_LEADER), ["kPromoteLeader"]);
        assert_eq!(
            unwritten(RECOVER_TABLE),
            ["kPrepareReplica", "kWaitCatchUp"],
            "the re-add is written: a failed op's undo stops the shipping it began"
        );
        assert_eq!(unwritten(OFFLINE_REPLICA), ["kDelReplica"]);
        // Housekeeping writes every step: a migration's steps change the metadata.
        for op_type in [ADD_REPLICA, DEL_REPLICA, MIGRATE, MAKE_SNAPSHOT] {
            assert!(unwritten(op_type).is_empty(), "{op_type}");
        }
        // The last task of each is always written: it carries the end.
        for op_type in [CHANGE_LEADER, OFFLINE_REPLICA, RECOVER_TABLE] {
            let last = tasks_of(op_type).pop().expect("tasks");
            assert!(!repeats_harmlessly(op_type, &last), "{op_type}");
        }
    }

    #[test]
    fn only_a_new_change_leader_starts_without_a_write_of_its_own() {
        let new = OpInfo {
            op_type: CHANGE_LEADER.into(),
            status: INITED.into(),
            tasks: tasks_of(CHANGE_LEADER),
            ..OpInfo::default()
        };
        assert!(first_written_after_first_task(&new));
        // Stored with a term (by an older version, which wrote the term before the
        // fence): marked under way first, as before.
        let resumed = OpInfo {
            term: 7,
            ..new.clone()
        };
        assert!(!first_written_after_first_task(&resumed));
        let under_way = OpInfo {
            status: DOING.into(),
            ..new.clone()
        };
        assert!(!first_written_after_first_task(&under_way));
        let recover = OpInfo {
            op_type: RECOVER_TABLE.into(),
            tasks: tasks_of(RECOVER_TABLE),
            ..new
        };
        assert!(!first_written_after_first_task(&recover));
    }

    #[test]
    fn trimming_keeps_the_newest_and_the_failed() {
        let now = 10 * FAILED_KEPT_FOR_MS;
        let op = |op_id: u64, status: &str| OpInfo {
            op_id,
            status: status.into(),
            end_time_ms: now - 1000,
            ..OpInfo::default()
        };
        let mut finished: Vec<OpInfo> = (1..=(KEEP_FINISHED as u64 + 500))
            .map(|id| op(id, if id % 100 == 0 { FAILED } else { DONE }))
            .collect();
        finished[7].status = CANCELED.into();
        let finished_refs: Vec<&OpInfo> = finished.iter().collect();
        let doomed: Vec<u64> = ops_to_trim(&finished_refs, now)
            .iter()
            .map(|op| op.op_id)
            .collect();
        // The 500 oldest go but the five failed and the cancelled one among them.
        assert_eq!(doomed.len(), 494);
        assert!(doomed.windows(2).all(|w| w[0] < w[1]), "oldest first");
        assert!(!doomed.contains(&8) && !doomed.contains(&100) && !doomed.contains(&500));
        assert!(doomed.iter().all(|id| *id <= 500), "the newest 200 stay");

        let many_failed: Vec<OpInfo> = (1..=(KEEP_FINISHED + KEEP_FAILED + 10) as u64)
            .map(|id| op(id, FAILED))
            .collect();
        let refs: Vec<&OpInfo> = many_failed.iter().collect();
        let doomed = ops_to_trim(&refs, now);
        assert_eq!(
            doomed.iter().map(|op| op.op_id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>(),
            "past the failed ones kept, the oldest failed go too"
        );
        // An hour after they ended, failed ops go like the rest.
        let doomed = ops_to_trim(&refs, now + FAILED_KEPT_FOR_MS);
        assert_eq!(doomed.len(), KEEP_FAILED + 10);
    }

    #[test]
    fn every_op_type_has_tasks() {
        for op_type in [
            CHANGE_LEADER,
            OFFLINE_REPLICA,
            RECOVER_TABLE,
            ADD_REPLICA,
            DEL_REPLICA,
            MIGRATE,
            MAKE_SNAPSHOT,
        ] {
            assert!(!tasks_of(op_type).is_empty(), "{op_type}");
        }
        assert!(tasks_of("kNoSuchOp").is_empty());
    }
}
