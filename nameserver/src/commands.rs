//! Operator commands that change replicas by hand. They start ops through the same
//! pipeline auto_failover uses, and are refused while auto_failover is on (the
//! nameserver would be repairing the same partitions at the same time).

use tessera_proto::nameserver::{OpInfo, TableInfo};

use crate::error::{NsError, Result};
use crate::ops::{is_finished, CANCELED};
use crate::planner::{CHANGE_LEADER, OFFLINE_REPLICA, RECOVER_TABLE};
use crate::state::{Nameserver, DEFAULT_DB};

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
        let table = self
            .table(if db.is_empty() { DEFAULT_DB } else { db }, name)
            .await?;
        let partition = table
            .partitions
            .iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| {
                NsError::InvalidArgument(format!("table {name} has no partition {pid}"))
            })?;
        if !partition.replicas.iter().any(|r| r.endpoint == endpoint) {
            return Err(NsError::InvalidArgument(format!(
                "partition {pid} of {name} has no replica on {endpoint}"
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
        let table = self
            .table(if db.is_empty() { DEFAULT_DB } else { db }, name)
            .await?;
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

    pub async fn cancel_op(&self, op_id: u64) -> Result<Vec<OpInfo>> {
        self.lock().await?;
        let mut op = self.op(op_id).await?;
        if is_finished(&op) {
            return Err(NsError::InvalidArgument(format!(
                "op {op_id} already ended ({})",
                op.status
            )));
        }
        op.status = CANCELED.into();
        self.save_op(&op).await?;
        Ok(vec![op])
    }

    pub async fn delete_op(&self, op_id: u64) -> Result<Vec<OpInfo>> {
        let lock = self.lock().await?;
        let op = self.op(op_id).await?;
        if !is_finished(&op) {
            return Err(NsError::InvalidArgument(format!(
                "op {op_id} is {}; cancel it before deleting it",
                op.status
            )));
        }
        lock.delete(&self.paths.op(op_id), None).await?;
        Ok(vec![op])
    }
}
