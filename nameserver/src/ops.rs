//! The op pipeline: persisted multi-task operations that repair the cluster.
//!
//! An op lives at `/op/op_data/<op_id>`; its progress (next task, status, times) is
//! written after every task through the election lock, so a new leader resumes it where
//! the old one stopped, and a deposed leader cannot write over it. Ops on one partition
//! run strictly one after another, ops on different partitions in parallel (bounded).
//! Every task has a timeout; a task that fails or times out fails its op with a reason.
//! Tasks are idempotent, since a resumed op may repeat the task that was running.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prost::Message;
use tessera_common::wire_error;
use tessera_proto::nameserver::{OpInfo, PartitionMeta, ReplicaMeta, TableInfo};
use tessera_proto::tablet::{self as tpb, TableRole};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};
use zookeeper_client::{Acls, CreateMode, Error as ZkError};

use crate::error::{NsError, Result};
use crate::planner::{
    self, Fenced, Recovery, ReplicaLog, ADD_REPLICA, CHANGE_LEADER, DEL_REPLICA, MAKE_SNAPSHOT,
    MIGRATE, OFFLINE_REPLICA, RECOVER_TABLE,
};
use crate::state::{call, tablet, Nameserver};

pub const INITED: &str = "kInited";
pub const DOING: &str = "kDoing";
pub const DONE: &str = "kDone";
pub const FAILED: &str = "kFailed";

/// Ops running at once, across partitions.
const MAX_PARALLEL_OPS: usize = 8;
/// How often the leader compares metadata with the registry and starts ops.
const TICK: Duration = Duration::from_millis(200);
/// A follower this close to its leader counts as caught up.
const CATCH_UP_LAG: u64 = 16;
/// Finished ops kept for `showopstatus`.
const KEEP_FINISHED: usize = 200;
/// auto_failover waits this long after a failed op before planning its partition again.
const RETRY_AFTER_FAILURE_MS: u64 = 5_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A partition: (db, table, pid).
type PartitionKey = (String, String, u32);
/// The partitions with an op running now.
type Running = Arc<Mutex<HashSet<PartitionKey>>>;

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
        DEL_REPLICA => &["kDelReplica", "kDropReplica", "kDelReplicaMeta"],
        MIGRATE => &[
            "kAddReplicaMeta",
            "kPrepareReplica",
            "kAddReplica",
            "kWaitCatchUp",
            "kUpdatePartitionStatus",
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
    /// Every op, oldest first.
    pub async fn ops(&self) -> Result<Vec<OpInfo>> {
        let client = self.client()?;
        let mut ops = Vec::new();
        for child in client.list_children(&self.paths.op_data()).await? {
            match client
                .get_data(&format!("{}/{child}", self.paths.op_data()))
                .await
            {
                Ok((data, _)) => ops
                    .push(OpInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?),
                Err(ZkError::NoNode) => {}
                Err(e) => return Err(e.into()),
            }
        }
        ops.sort_by_key(|op| op.op_id);
        Ok(ops)
    }

    pub(crate) async fn op(&self, op_id: u64) -> Result<OpInfo> {
        let client = self.client()?;
        match client.get_data(&self.paths.op(op_id)).await {
            Ok((data, _)) => {
                OpInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))
            }
            Err(ZkError::NoNode) => {
                Err(NsError::InvalidArgument(format!("there is no op {op_id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn save_op(&self, op: &OpInfo) -> Result<()> {
        let lock = self.lock().await?;
        lock.set_data(&self.paths.op(op.op_id), &op.encode_to_vec(), None)
            .await?;
        Ok(())
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
        let lock = self.lock().await?;
        let op_id = self.bump_counter(&lock, &self.paths.op_index()).await?;
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
            ..OpInfo::default()
        };
        configure(&mut op);
        lock.create(
            &self.paths.op(op_id),
            &op.encode_to_vec(),
            &CreateMode::Persistent.with_acls(Acls::anyone_all()),
        )
        .await?;
        info!(op_id, op_type, table = %table.name, pid, endpoint, "op added");
        Ok(op)
    }

    /// The leader's loop: plan ops from the registry (when auto_failover is on), then run
    /// every unfinished op whose partition is free.
    pub async fn run_ops(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let running: Running = Arc::default();
        let permits = Arc::new(Semaphore::new(MAX_PARALLEL_OPS));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
            if !self.is_leader() {
                // Restarts seen while standing by are not this nameserver's to repair
                // later: by the time it leads, they may be long settled.
                self.take_restarted();
                continue;
            }
            if let Err(e) = self.clone().tick(&running, &permits).await {
                warn!(error = %e, "op pipeline tick failed");
            }
        }
    }

    async fn tick(self: Arc<Self>, running: &Running, permits: &Arc<Semaphore>) -> Result<()> {
        let mut ops = self.ops().await?;
        let restarted = self.take_restarted();
        if self.registry_ready() && self.auto_failover().await? {
            self.mark_restarted_replicas_dead(&restarted).await?;
            // Partitions with an op under way, or one that failed moments ago (so a
            // partition that cannot be repaired yet is not retried in a tight loop).
            let now = now_ms();
            let busy: HashSet<PartitionKey> = ops
                .iter()
                .filter(|op| {
                    !is_finished(op)
                        || (op.status == FAILED && now - op.end_time_ms < RETRY_AFTER_FAILURE_MS)
                })
                .map(|op| (op.db.clone(), op.name.clone(), op.pid))
                .collect();
            for table in self.tables().await? {
                for planned in planner::plan(&table, |e| self.is_healthy(e)) {
                    if !busy.contains(&(table.db.clone(), table.name.clone(), planned.pid)) {
                        ops.push(
                            self.add_op(
                                planned.op_type,
                                &table,
                                planned.pid,
                                &planned.endpoint,
                                |_| {},
                            )
                            .await?,
                        );
                    }
                }
            }
        }
        self.trim_finished(&ops).await;
        // The oldest unfinished op of each free partition starts.
        let mut seen = HashSet::new();
        for op in ops.into_iter().filter(|op| !is_finished(op)) {
            let key = (op.db.clone(), op.name.clone(), op.pid);
            if !seen.insert(key.clone()) || running.lock().contains(&key) {
                continue;
            }
            running.lock().insert(key.clone());
            let (ns, running, permits) = (self.clone(), running.clone(), permits.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                ns.execute(op).await;
                running.lock().remove(&key);
            });
        }
        Ok(())
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
                    self.update_partition(&table, partition.pid, |p| {
                        for replica in p.replicas.iter_mut().filter(|r| on_restarted(r)) {
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

    async fn trim_finished(&self, ops: &[OpInfo]) {
        let finished: Vec<&OpInfo> = ops.iter().filter(|op| is_finished(op)).collect();
        if finished.len() <= KEEP_FINISHED {
            return;
        }
        let Ok(lock) = self.lock().await else { return };
        for op in &finished[..finished.len() - KEEP_FINISHED] {
            let _ = lock.delete(&self.paths.op(op.op_id), None).await;
        }
    }

    async fn was_cancelled(&self, op_id: u64) -> bool {
        let cancelled = self
            .op(op_id)
            .await
            .is_ok_and(|stored| stored.status == CANCELED);
        if cancelled {
            info!(op_id, "op cancelled");
        }
        cancelled
    }

    async fn execute(&self, mut op: OpInfo) {
        op.status = DOING.into();
        if self.save_op(&op).await.is_err() {
            return;
        }
        while (op.task_index as usize) < op.tasks.len() {
            // An operator may have cancelled it between two tasks.
            if self.was_cancelled(op.op_id).await {
                return;
            }
            let task = op.tasks[op.task_index as usize].clone();
            let outcome =
                tokio::time::timeout(self.task_timeout, self.run_task(&mut op, &task)).await;
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{task}: {e}")),
                Err(_) => Some(format!("{task} timed out after {:?}", self.task_timeout)),
            };
            if let Some(reason) = failure {
                warn!(op_id = op.op_id, op_type = %op.op_type, reason = %reason, "op failed");
                op.status = FAILED.into();
                op.reason = reason;
                op.end_time_ms = now_ms();
                let _ = self.save_op(&op).await;
                return;
            }
            op.task_index += 1;
            // A cancel that arrived while the task ran must not be written over.
            if self.was_cancelled(op.op_id).await {
                return;
            }
            if self.save_op(&op).await.is_err() {
                // Leadership lost: the next leader resumes from the last saved task.
                return;
            }
        }
        op.status = DONE.into();
        op.end_time_ms = now_ms();
        info!(op_id = op.op_id, op_type = %op.op_type, table = %op.name, pid = op.pid, "op done");
        let _ = self.save_op(&op).await;
    }

    async fn run_task(&self, op: &mut OpInfo, task: &str) -> Result<()> {
        let table = self.table(&op.db, &op.name).await?;
        let partition = table
            .partitions
            .iter()
            .find(|p| p.pid == op.pid)
            .cloned()
            .ok_or_else(|| {
                NsError::InvalidArgument(format!("table {} has no partition {}", op.name, op.pid))
            })?;
        match task {
            "kFenceReplicas" => self.fence_replicas(op, &table, &partition).await,
            "kPromoteLeader" => self.promote_leader(op, &table, &partition).await,
            "kUpdateLeaderInfo" => {
                let (chosen, term, failed) = (op.chosen.clone(), op.term, op.endpoint.clone());
                let told = self.told_followers.lock().remove(&op.op_id);
                self.update_partition(&table, op.pid, move |p| {
                    p.term = term;
                    p.unavailable_reason.clear();
                    for replica in &mut p.replicas {
                        replica.is_leader = replica.endpoint == chosen;
                        // It answered the fence and took the lead: alive, whatever the
                        // metadata said before (a restarted tablet's replica).
                        if replica.endpoint == chosen {
                            replica.is_alive = true;
                        }
                        if replica.endpoint == failed {
                            replica.is_alive = false;
                        }
                        if let Some(told) = &told {
                            if replica.endpoint != chosen && !told.contains(&replica.endpoint) {
                                replica.is_alive = false;
                            }
                        }
                    }
                })
                .await
            }
            "kDelReplica" => {
                // OfflineReplica stops shipping to the replica but keeps its vote;
                // DelReplica takes it out of the voting set.
                let keep_vote = op.op_type == OFFLINE_REPLICA;
                self.del_from_leader(&table, &partition, op.pid, &op.endpoint, keep_vote)
                    .await
            }
            "kDelSourceReplica" => {
                self.del_from_leader(&table, &partition, op.pid, &op.source, false)
                    .await
            }
            "kDropReplica" => {
                drop_replica(&table, op.pid, &op.endpoint).await;
                Ok(())
            }
            "kDropSourceReplica" => {
                drop_replica(&table, op.pid, &op.source).await;
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
                    }
                })
                .await
            }
            "kPrepareReplica" => self.prepare_replica(op, &table, &partition).await,
            "kAddReplica" => {
                let leader = leader_of(&partition)?;
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

    /// Raises the term on every reachable replica but the failed leader and picks the
    /// new leader from their answers.
    async fn fence_replicas(
        &self,
        op: &mut OpInfo,
        table: &TableInfo,
        partition: &PartitionMeta,
    ) -> Result<()> {
        if op.term == 0 {
            // A term of its own, from the fenced counter, recorded before any RPC: a
            // resumed op reuses it, and no other attempt can ever take it.
            op.term = self.take_term(partition.term).await?;
            self.save_op(op).await?;
        }
        let (mut answered, ahead) = fence_all(table, partition, op).await;
        if let Some(ahead) = ahead.filter(|t| *t >= op.term) {
            // Some replica is already in a term at least this high (taken before the
            // counter existed, or by an attempt that failed): take one above it.
            op.term = self.take_term(ahead).await?;
            self.save_op(op).await?;
            answered = fence_all(table, partition, op).await.0;
        }
        let candidate = (!op.chosen.is_empty()).then(|| op.chosen.clone());
        // The answers must meet every majority of the voting set, which is every replica
        // the metadata lists (an AddReplica or Migrate in progress makes it larger than
        // replicanum).
        let voters = voting_set_size(partition, table.replica_num);
        let chosen = planner::choose_leader(
            &answered,
            voters,
            table.mode(),
            candidate.as_deref(),
            op.force,
        );
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
        Ok(())
    }

    /// A new term above `floor`, from the ZooKeeper counter.
    async fn take_term(&self, floor: u64) -> Result<u64> {
        let lock = self.lock().await?;
        self.bump_counter_above(&lock, &self.paths.term(), floor)
            .await
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
            (told.clone(), Vec::new())
        } else {
            voting_members(partition, &op.chosen, &told)
        };
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
        let own = client
            .get_term_pair(tpb::GetTermPairRequest {
                tid: table.tid,
                pid: op.pid,
            })
            .await
            .ok()
            .map(|r| r.into_inner());
        let status = client
            .get_table_status(tpb::GetTableStatusRequest {
                tid: Some(table.tid),
                pid: Some(op.pid),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().tables.into_iter().next());
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
        if decision == Recovery::Create {
            // The tablet lost its copy: an empty replica, seeded by a snapshot on AddReplica.
            let meta = tpb::TableMeta {
                tid: table.tid,
                pid: op.pid,
                db: table.db.clone(),
                name: table.name.clone(),
                schema: table.schema.clone(),
                partition_num: table.partition_num,
                term: partition.term,
                mode: table.mode,
                role: TableRole::Follower as i32,
                leader: leader.clone(),
            };
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

    async fn wait_catch_up(
        &self,
        op: &OpInfo,
        table: &TableInfo,
        partition: &PartitionMeta,
    ) -> Result<()> {
        let leader = leader_of(partition)?;
        loop {
            let mut client = tablet(&leader).await?;
            let status = call(
                &leader,
                client.get_follower_status(tpb::GetFollowerStatusRequest {
                    tid: table.tid,
                    pid: op.pid,
                }),
            )
            .await?;
            let acked = status
                .followers
                .iter()
                .find(|f| f.endpoint == op.endpoint)
                .map_or(0, |f| f.acked_offset);
            if acked + CATCH_UP_LAG >= status.leader_offset {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rewrites one partition's metadata, fenced and with a version check.
    pub(crate) async fn update_partition(
        &self,
        table: &TableInfo,
        pid: u32,
        change: impl Fn(&mut PartitionMeta),
    ) -> Result<()> {
        let lock = self.lock().await?;
        let client = self.client()?;
        let path = self.paths.table(&table.db, &table.name);
        loop {
            let (data, stat) = client.get_data(&path).await?;
            let mut current =
                TableInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?;
            if let Some(partition) = current.partitions.iter_mut().find(|p| p.pid == pid) {
                change(partition);
            }
            match lock
                .set_data(&path, &current.encode_to_vec(), Some(stat.version))
                .await
            {
                Ok(_) => break,
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.bump_counter(&lock, &self.paths.table_changed())
            .await?;
        Ok(())
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

/// Fences every replica but the failed leader at the op's term. Returns the answers and
/// the highest term a refusal named (a replica already in that term).
async fn fence_all(
    table: &TableInfo,
    partition: &PartitionMeta,
    op: &OpInfo,
) -> (Vec<Fenced>, Option<u64>) {
    let mut answered = Vec::new();
    let mut ahead = None;
    for replica in partition
        .replicas
        .iter()
        .filter(|r| r.endpoint != op.endpoint)
    {
        let Ok(mut client) = tablet(&replica.endpoint).await else {
            warn!(op_id = op.op_id, endpoint = %replica.endpoint, "fence failed: unreachable");
            continue;
        };
        let fenced = client
            .fence(tpb::FenceRequest {
                tid: table.tid,
                pid: op.pid,
                term: op.term,
            })
            .await;
        match fenced {
            Ok(f) => {
                let f = f.into_inner();
                answered.push(Fenced {
                    endpoint: replica.endpoint.clone(),
                    last_term: f.last_term,
                    last_offset: f.last_offset,
                })
            }
            Err(status) => {
                if let Some(detail) = wire_error::detail_of(&status)
                    .filter(|d| d.code() == wire_error::ErrorCode::StaleTerm)
                {
                    ahead = ahead.max(Some(detail.term));
                }
                warn!(op_id = op.op_id, endpoint = %replica.endpoint, error = %status.message(), "fence failed")
            }
        }
    }
    (answered, ahead)
}

/// The voting members a new leader `chosen` is given: every other replica of the
/// partition, and among them the ones not shipped to (those that did not follow it).
fn voting_members(
    partition: &PartitionMeta,
    chosen: &str,
    following: &[String],
) -> (Vec<String>, Vec<String>) {
    let followers: Vec<String> = partition
        .replicas
        .iter()
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

/// How many voting members a failover must reckon with: the replicas the metadata lists
/// (never fewer than `replicanum`, which only makes the rule stricter).
fn voting_set_size(partition: &PartitionMeta, replica_num: u32) -> u32 {
    (partition.replicas.len() as u32).max(replica_num)
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

    fn partition(endpoints: &[&str]) -> PartitionMeta {
        PartitionMeta {
            pid: 0,
            replicas: endpoints
                .iter()
                .map(|e| ReplicaMeta {
                    endpoint: e.to_string(),
                    is_leader: *e == "a",
                    is_alive: true,
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

    /// With replicas being added (five listed for replicanum 3) a failover needs answers
    /// from three, not two: a write may have been acknowledged by three of the five.
    #[test]
    fn the_failover_rule_counts_every_listed_replica() {
        let five = partition(&["a", "b", "c", "d", "e"]);
        assert_eq!(voting_set_size(&five, 3), 5);
        let answered: Vec<Fenced> = ["b", "c"]
            .iter()
            .map(|e| Fenced {
                endpoint: e.to_string(),
                last_term: 1,
                last_offset: 5,
            })
            .collect();
        let refused = planner::choose_leader(
            &answered,
            voting_set_size(&five, 3),
            tpb::ReplicationMode::Quorum,
            None,
            false,
        );
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(voting_set_size(&partition(&["a", "b"]), 3), 3);
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
