//! Operator commands that change replicas by hand. They start ops through the same
//! pipeline auto_failover uses, and are refused while auto_failover is on (the
//! nameserver would be repairing the same partitions at the same time).

use prost::Message;
use tessera_proto::nameserver::{OpInfo, TableInfo};
use zookeeper_client::Error as ZkError;

use crate::error::{NsError, Result};
use crate::ops::{is_finished, now_ms, CANCELED};
use crate::planner::{
    ADD_REPLICA, CHANGE_LEADER, DEL_REPLICA, MAKE_SNAPSHOT, MIGRATE, OFFLINE_REPLICA, RECOVER_TABLE,
};
use crate::state::Nameserver;

impl Nameserver {
    async fn refuse_if_auto_failover(&self, command: &str) -> Result<()> {
        self.lock().await?;
        if self.auto_failover().await? {
            return Err(NsError::InvalidArgument(format!(
                "{command} is refused while auto_failover is on: the nameserver repairs replicas itself \
                 (`confset auto_failover false` to take over by hand)"
            )));
        }
        Ok(())
    }

    /// The partitions with a replica on `endpoint`, per table.
    async fn replicas_on(&self, endpoint: &str) -> Result<Vec<(TableInfo, u32, bool, bool)>> {
        let mut out = Vec::new();
        for table in self.tables().await? {
            for partition in &table.partitions {
                if let Some(replica) = partition.replicas.iter().find(|r| r.endpoint == endpoint) {
                    out.push((
                        table.clone(),
                        partition.pid,
                        replica.is_leader,
                        replica.is_alive,
                    ));
                }
            }
        }
        if out.is_empty() {
            return Err(NsError::InvalidArgument(format!(
                "no replica is on endpoint {endpoint}"
            )));
        }
        Ok(out)
    }

    /// Takes a tablet out: ChangeLeader for what it leads, OfflineReplica for the rest.
    pub async fn offline_endpoint(&self, endpoint: &str) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("offlineendpoint").await?;
        let mut ops = Vec::new();
        for (table, pid, is_leader, is_alive) in self.replicas_on(endpoint).await? {
            if is_leader {
                ops.push(
                    self.add_op(CHANGE_LEADER, &table, pid, endpoint, |_| {})
                        .await?,
                );
            } else if is_alive {
                ops.push(
                    self.add_op(OFFLINE_REPLICA, &table, pid, endpoint, |_| {})
                        .await?,
                );
            }
        }
        Ok(ops)
    }

    /// Brings a returned tablet's dead replicas back.
    pub async fn recover_endpoint(&self, endpoint: &str) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("recoverendpoint").await?;
        let mut ops = Vec::new();
        for (table, pid, _, is_alive) in self.replicas_on(endpoint).await? {
            if !is_alive {
                ops.push(
                    self.add_op(RECOVER_TABLE, &table, pid, endpoint, |_| {})
                        .await?,
                );
            }
        }
        Ok(ops)
    }

    pub async fn recover_table(
        &self,
        db: &str,
        name: &str,
        pid: u32,
        endpoint: &str,
    ) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("recovertable").await?;
        let table = self.table(db, name).await?;
        let partition = table
            .partitions
            .iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| {
                NsError::InvalidArgument(format!("table {name} has no partition {pid}"))
            })?;
        let Some(replica) = partition.replicas.iter().find(|r| r.endpoint == endpoint) else {
            return Err(NsError::InvalidArgument(format!(
                "partition {pid} of {name} has no replica on {endpoint}"
            )));
        };
        if replica.is_leader && replica.is_alive {
            // Recovering the leader as a follower of itself would leave the partition
            // without a serving leader while the metadata still names one.
            return Err(NsError::InvalidArgument(format!(
                "{endpoint} leads partition {pid} of {name}: recovertable brings back a \
                 follower (move the leadership first with changeleader)"
            )));
        }
        Ok(vec![
            self.add_op(RECOVER_TABLE, &table, pid, endpoint, |_| {})
                .await?,
        ])
    }

    /// Changes a partition's leader: to `candidate`, or to the replica with the most
    /// complete log; `force` promotes even without enough answers to be sure no
    /// acknowledged write is lost.
    pub async fn change_leader(
        &self,
        db: &str,
        name: &str,
        pid: u32,
        candidate: &str,
        force: bool,
    ) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("changeleader").await?;
        let table = self.table(db, name).await?;
        let partition = table
            .partitions
            .iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| {
                NsError::InvalidArgument(format!("table {name} has no partition {pid}"))
            })?;
        if !candidate.is_empty() && !partition.replicas.iter().any(|r| r.endpoint == candidate) {
            return Err(NsError::InvalidArgument(format!(
                "{candidate} holds no replica of partition {pid} of {name}"
            )));
        }
        let candidate = candidate.to_string();
        let op = self
            // No replica is excluded: the current leader is fenced and told to follow
            // like the others (an op's endpoint names a replica that is gone).
            .add_op(CHANGE_LEADER, &table, pid, "", move |op| {
                op.chosen = candidate;
                op.force = force;
            })
            .await?;
        Ok(vec![op])
    }

    /// One op of `op_type` per partition in `pids`.
    async fn add_ops(
        &self,
        op_type: &str,
        table: &TableInfo,
        pids: &[u32],
        endpoint: &str,
        configure: impl Fn(&mut OpInfo),
    ) -> Result<Vec<OpInfo>> {
        let mut ops = Vec::with_capacity(pids.len());
        for &pid in pids {
            ops.push(
                self.add_op(op_type, table, pid, endpoint, &configure)
                    .await?,
            );
        }
        Ok(ops)
    }

    /// The partitions `pids` names (all when empty), checked against the table.
    fn partitions_of(table: &TableInfo, pids: &[u32]) -> Result<Vec<u32>> {
        if pids.is_empty() {
            return Ok(table.partitions.iter().map(|p| p.pid).collect());
        }
        for pid in pids {
            if !table.partitions.iter().any(|p| p.pid == *pid) {
                return Err(NsError::InvalidArgument(format!(
                    "table {} has no partition {pid} (it has {})",
                    table.name, table.partition_num
                )));
            }
        }
        Ok(pids.to_vec())
    }

    fn replica_of<'a>(
        table: &'a TableInfo,
        pid: u32,
        endpoint: &str,
    ) -> Option<&'a tessera_proto::nameserver::ReplicaMeta> {
        table
            .partitions
            .iter()
            .find(|p| p.pid == pid)
            .and_then(|p| p.replicas.iter().find(|r| r.endpoint == endpoint))
    }

    /// Only follower replicas are removed or moved: the leader must change first.
    fn require_follower(table: &TableInfo, pid: u32, endpoint: &str) -> Result<()> {
        match Self::replica_of(table, pid, endpoint) {
            None => Err(NsError::InvalidArgument(format!("partition {pid} has no replica on {endpoint}"))),
            Some(r) if r.is_leader => Err(NsError::InvalidArgument(format!(
                "{endpoint} leads partition {pid}; only followers can be removed or moved (change its leader first)"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Adds a follower replica on `endpoint` to each partition, seeded from its leader.
    pub async fn add_replica(
        &self,
        db: &str,
        name: &str,
        pids: &[u32],
        endpoint: &str,
    ) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("addreplica").await?;
        let table = self.table(db, name).await?;
        if !self.is_healthy(endpoint) {
            return Err(NsError::InvalidArgument(format!(
                "{endpoint} is not a healthy tablet"
            )));
        }
        let pids = Self::partitions_of(&table, pids)?;
        if let Some(pid) = pids
            .iter()
            .find(|pid| Self::replica_of(&table, **pid, endpoint).is_some())
        {
            return Err(NsError::InvalidArgument(format!(
                "partition {pid} already has a replica on {endpoint}"
            )));
        }
        self.add_ops(ADD_REPLICA, &table, &pids, endpoint, |_| {})
            .await
    }

    /// Removes a follower replica from each partition and drops it from its tablet.
    pub async fn del_replica(
        &self,
        db: &str,
        name: &str,
        pids: &[u32],
        endpoint: &str,
    ) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("delreplica").await?;
        let table = self.table(db, name).await?;
        let pids = Self::partitions_of(&table, pids)?;
        for pid in &pids {
            Self::require_follower(&table, *pid, endpoint)?;
        }
        self.add_ops(DEL_REPLICA, &table, &pids, endpoint, |_| {})
            .await
    }

    /// Moves follower replicas from `source` to `destination`: add, catch up, remove.
    pub async fn migrate(
        &self,
        db: &str,
        name: &str,
        pids: &[u32],
        source: &str,
        destination: &str,
    ) -> Result<Vec<OpInfo>> {
        self.refuse_if_auto_failover("migrate").await?;
        let table = self.table(db, name).await?;
        if !self.is_healthy(destination) {
            return Err(NsError::InvalidArgument(format!(
                "{destination} is not a healthy tablet"
            )));
        }
        let pids = Self::partitions_of(&table, pids)?;
        for pid in &pids {
            Self::require_follower(&table, *pid, source)?;
            if Self::replica_of(&table, *pid, destination).is_some() {
                return Err(NsError::InvalidArgument(format!(
                    "partition {pid} already has a replica on {destination}"
                )));
            }
        }
        self.add_ops(MIGRATE, &table, &pids, destination, |op| {
            op.source = source.to_string()
        })
        .await
    }

    /// Snapshots partitions (all when `pids` is empty). Allowed with auto_failover on.
    pub async fn make_snapshot(&self, db: &str, name: &str, pids: &[u32]) -> Result<Vec<OpInfo>> {
        self.lock().await?;
        let table = self.table(db, name).await?;
        let pids = Self::partitions_of(&table, pids)?;
        self.add_ops(MAKE_SNAPSHOT, &table, &pids, "", |_| {}).await
    }

    /// Sets replicas' `is_alive` in the metadata only.
    pub async fn update_table_alive(
        &self,
        db: &str,
        name: &str,
        pids: &[u32],
        endpoint: &str,
        alive: bool,
    ) -> Result<u32> {
        self.refuse_if_auto_failover("updatetablealive").await?;
        let table = self.table(db, name).await?;
        let mut updated = 0;
        for pid in Self::partitions_of(&table, pids)? {
            if Self::replica_of(&table, pid, endpoint).is_some() {
                let endpoint = endpoint.to_string();
                self.update_partition(&table, pid, move |p| {
                    for replica in p.replicas.iter_mut().filter(|r| r.endpoint == endpoint) {
                        replica.is_alive = alive;
                    }
                })
                .await?;
                updated += 1;
            }
        }
        if updated == 0 {
            return Err(NsError::InvalidArgument(format!(
                "no partition of {name} has a replica on {endpoint}"
            )));
        }
        Ok(updated)
    }

    /// Leader only: a MakeSnapshot op for every partition without an op under way.
    pub async fn snapshot_everything(&self) -> Result<usize> {
        let busy: std::collections::HashSet<(String, String, u32)> = self
            .ops()
            .await?
            .into_iter()
            .filter(|op| !is_finished(op))
            .map(|op| (op.db, op.name, op.pid))
            .collect();
        let mut started = 0;
        for table in self.tables().await? {
            for partition in &table.partitions {
                if !busy.contains(&(table.db.clone(), table.name.clone(), partition.pid)) {
                    self.add_op(MAKE_SNAPSHOT, &table, partition.pid, "", |_| {})
                        .await?;
                    started += 1;
                }
            }
        }
        Ok(started)
    }

    /// Cancels an unfinished op. The write is version-checked against the op as read,
    /// so an op that finishes at the same moment is reported as ended, not overwritten.
    pub async fn cancel_op(&self, op_id: u64) -> Result<Vec<OpInfo>> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let _writing = self.op_book.gate.read().await;
        let client = self.client()?;
        let path = self.paths.op(op_id);
        loop {
            let (data, stat) = match client.get_data(&path).await {
                Ok(found) => found,
                Err(ZkError::NoNode) => {
                    return Err(NsError::InvalidArgument(format!("there is no op {op_id}")))
                }
                Err(e) => return Err(e.into()),
            };
            let mut op = OpInfo::decode(data.as_slice()).map_err(|e| NsError::Zk(e.to_string()))?;
            if is_finished(&op) {
                return Err(NsError::InvalidArgument(format!(
                    "op {op_id} already ended ({})",
                    op.status
                )));
            }
            op.status = CANCELED.into();
            op.end_time_ms = now_ms();
            let unsettled = self.op_book.unsettled();
            let written = lock
                .set_data(&path, &op.encode_to_vec(), Some(stat.version))
                .await;
            self.note_op_write(leadership, &op, &written, |stat| stat.version);
            unsettled.settle();
            match written {
                Ok(_) => {
                    crate::metrics::METRICS.op_ended(&op);
                    return Ok(vec![op]);
                }
                Err(ZkError::BadVersion) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn delete_op(&self, op_id: u64) -> Result<Vec<OpInfo>> {
        let (leadership, lock) = self.lock_and_leadership().await?;
        let op = self.op(op_id).await?;
        if !is_finished(&op) {
            return Err(NsError::InvalidArgument(format!(
                "op {op_id} is {}; cancel it before deleting it",
                op.status
            )));
        }
        let _writing = self.op_book.gate.read().await;
        let unsettled = self.op_book.unsettled();
        let deleted = lock.delete(&self.paths.op(op_id), None).await;
        self.note_op_deleted(leadership, op_id, &deleted);
        unsettled.settle();
        deleted?;
        Ok(vec![op])
    }
}
