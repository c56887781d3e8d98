//! `tessera-ops`: cluster-wide operations built on the nameserver's op pipeline.
//!
//! Every command that changes replicas turns `auto_failover` off while it works (the
//! nameserver refuses hand-made ops otherwise, and would be repairing the same
//! partitions at the same time) and puts back the setting it found, also when it fails
//! or is interrupted; a run killed outright is found and undone by the next (`pause`).

pub mod balance;
pub mod leaders;
pub mod pause;
pub mod recoverdata;
pub mod status;
mod survey;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tessera_common::cluster_secret;
use tessera_ns_client::nameserver::NameserverConnection;
use tessera_proto::nameserver::{
    ConfGetRequest, ConfSetRequest, OpInfo, ShowOpStatusRequest, ShowSchemaRequest,
    ShowTabletRequest, TableInfo,
};
use tessera_proto::tablet::tablet_client::TabletClient;

/// Errors of `tessera-ops`.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot connect to the cluster: {0}")]
    Connect(String),
    /// The nameserver answered with an error; what the call asked may or may not have
    /// been done (a timeout in ZooKeeper, a leader that changed meanwhile).
    #[error("the nameserver refused: {0}")]
    Nameserver(String),
    /// The nameserver turned the request down (not allowed, or not valid): nothing was
    /// done.
    #[error("the nameserver refused: {0}")]
    Denied(String),
    /// No answer of the nameserver's own (a lost connection, a timeout): what the call
    /// asked may or may not have been done.
    #[error("no answer from the nameserver: {0}")]
    NoAnswer(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("ZooKeeper: {0}")]
    Zk(#[from] zookeeper_client::Error),
}

pub type Result<T> = std::result::Result<T, OpsError>;

fn refused(status: tonic::Status) -> OpsError {
    use tessera_common::wire_error::ErrorCode;
    let message = status.message().to_string();
    match tessera_common::wire_error::detail_of(&status).map(|d| d.code()) {
        Some(ErrorCode::PermissionDenied | ErrorCode::InvalidArgument) => OpsError::Denied(message),
        Some(_) => OpsError::Nameserver(message),
        None => OpsError::NoAnswer(message),
    }
}

/// A client of the nameserver leader, as calls are given it.
pub type NsClient = tessera_proto::nameserver::nameserver_client::NameserverClient<
    tessera_common::auth::AuthChannel,
>;
/// The answer of a request that starts ops.
pub type OpsAnswer =
    std::result::Result<tonic::Response<tessera_proto::nameserver::OpsResponse>, tonic::Status>;

/// Starts ops through `ns` (`call` sends the request) and returns them.
pub async fn start_with<F, Fut>(ns: &mut NameserverConnection, call: F) -> Result<Vec<OpInfo>>
where
    F: Fn(NsClient) -> Fut,
    Fut: std::future::Future<Output = OpsAnswer>,
{
    Ok(ns.call(call).await.map_err(refused)?.into_inner().ops)
}

/// Runs `work` on every item, at most `at_once` at a time, and returns the outputs in the
/// order they end.
pub async fn side_by_side<I, F, Fut>(items: Vec<I>, at_once: usize, work: F) -> Vec<Fut::Output>
where
    F: FnMut(I) -> Fut,
    Fut: std::future::Future,
{
    use futures_util::stream::{self, StreamExt};
    stream::iter(items)
        .map(work)
        .buffer_unordered(at_once.max(1))
        .collect()
        .await
}

/// A partition: (db, table, pid).
pub type PartitionId = (String, String, u32);

/// A connection to the cluster and how long to wait for ops.
pub struct Ops {
    ns: NameserverConnection,
    pub zk_cluster: String,
    pub zk_root_path: String,
    /// How long a command waits for the ops it started.
    pub timeout: Duration,
    /// The command being run, as recorded when it turns auto_failover off.
    pub command: String,
    /// This run's own ZooKeeper session (see `pause`), once opened.
    zk_session: Option<zookeeper_client::Client>,
}

pub use tessera_ns_client::nameserver::op_ended as is_finished;

impl Ops {
    pub async fn connect(zk_cluster: &str, zk_root_path: &str, timeout: Duration) -> Result<Ops> {
        let ns = NameserverConnection::connect(zk_cluster, zk_root_path)
            .await
            .map_err(|e| OpsError::Connect(e.to_string()))?;
        Ok(Ops {
            ns,
            zk_cluster: zk_cluster.to_string(),
            zk_root_path: zk_root_path.trim_end_matches('/').to_string(),
            timeout,
            command: "tessera-ops".into(),
            zk_session: None,
        })
    }

    pub fn nameserver(&mut self) -> &mut NameserverConnection {
        &mut self.ns
    }

    /// A connection to the nameserver leader for calls made beside this one's.
    pub fn nameserver_clone(&self) -> NameserverConnection {
        self.ns.clone()
    }

    pub async fn auto_failover(&mut self) -> Result<bool> {
        let entries = self
            .ns
            .call(|mut c| async move {
                c.conf_get(ConfGetRequest {
                    key: "auto_failover".into(),
                })
                .await
            })
            .await
            .map_err(refused)?
            .into_inner()
            .entries;
        Ok(entries
            .iter()
            .any(|e| e.key == "auto_failover" && e.value == "true"))
    }

    pub async fn set_auto_failover(&mut self, on: bool) -> Result<()> {
        self.ns
            .call(|mut c| async move {
                c.conf_set(ConfSetRequest {
                    key: "auto_failover".into(),
                    value: on.to_string(),
                })
                .await
            })
            .await
            .map_err(refused)?;
        Ok(())
    }

    /// Every table of every database, with its partitions' metadata.
    pub async fn tables(&mut self) -> Result<Vec<TableInfo>> {
        let mut tables = Vec::new();
        for (db, name) in self.ns.table_names().await.map_err(refused)? {
            let table = self
                .ns
                .call(|mut c| {
                    let (db, name) = (db.clone(), name.clone());
                    async move { c.show_schema(ShowSchemaRequest { db, name }).await }
                })
                .await
                .map_err(refused)?
                .into_inner()
                .table;
            tables.extend(table);
        }
        Ok(tables)
    }

    /// Endpoints of the healthy tablets.
    pub async fn healthy_tablets(&mut self) -> Result<Vec<String>> {
        let tablets = self
            .ns
            .call(|mut c| async move { c.show_tablet(ShowTabletRequest {}).await })
            .await
            .map_err(refused)?
            .into_inner()
            .tablets;
        Ok(tablets
            .into_iter()
            .filter(|t| t.state == "kTabletHealthy")
            .map(|t| t.endpoint)
            .collect())
    }

    pub async fn ops(&mut self) -> Result<Vec<OpInfo>> {
        Ok(self
            .ns
            .call(|mut c| async move { c.show_op_status(ShowOpStatusRequest::default()).await })
            .await
            .map_err(refused)?
            .into_inner()
            .ops)
    }

    /// Calls the nameserver leader with a request that starts ops; returns them.
    pub async fn start<F, Fut>(&mut self, call: F) -> Result<Vec<OpInfo>>
    where
        F: Fn(NsClient) -> Fut,
        Fut: std::future::Future<Output = OpsAnswer>,
    {
        start_with(&mut self.ns, call).await
    }

    /// Starts one op per request (`call` sends it), waits for them all, and returns the
    /// partitions whose op could not start or did not end `kDone`, with the reason.
    pub async fn start_and_wait<R, F, Fut>(
        &mut self,
        requests: Vec<(PartitionId, R)>,
        what: &str,
        call: F,
    ) -> Result<Vec<(PartitionId, String)>>
    where
        R: Clone,
        F: Fn(NsClient, R) -> Fut,
        Fut: std::future::Future<Output = OpsAnswer>,
    {
        let mut failed = Vec::new();
        let mut started = Vec::new();
        for (partition, request) in requests {
            match self.start(|c| call(c, request.clone())).await {
                Ok(ops) => started.extend(ops),
                Err(e) => failed.push((partition, e.to_string())),
            }
        }
        for op in self
            .wait_ops(&started, what)
            .await?
            .into_iter()
            .filter(|op| op.status != "kDone")
        {
            failed.push((
                (op.db.clone(), op.name.clone(), op.pid),
                format!("{} {}: {}", op.op_type, op.status, op.reason),
            ));
        }
        Ok(failed)
    }

    /// Waits for the ops to finish, printing progress; returns them as they ended.
    pub async fn wait_ops(&mut self, started: &[OpInfo], what: &str) -> Result<Vec<OpInfo>> {
        if started.is_empty() {
            return Ok(Vec::new());
        }
        let ids: HashSet<u64> = started.iter().map(|op| op.op_id).collect();
        let deadline = Instant::now() + self.timeout;
        let mut reported = None;
        // Each op as last seen: a finished op may be trimmed away between two looks
        // (the nameserver keeps the newest 200, and failed ones longer), and an end once
        // seen is still reported.
        let mut last_seen: HashMap<u64, OpInfo> = HashMap::new();
        loop {
            let listed: HashSet<u64> = self
                .ops()
                .await?
                .into_iter()
                .filter(|op| ids.contains(&op.op_id))
                .map(|op| {
                    let id = op.op_id;
                    last_seen.insert(id, op);
                    id
                })
                .collect();
            let mut ours: Vec<OpInfo> = last_seen
                .values()
                .filter(|op| listed.contains(&op.op_id) || is_finished(op))
                .cloned()
                .collect();
            ours.sort_by_key(|op| op.op_id);
            let finished = ours.iter().filter(|op| is_finished(op)).count();
            let failed = ours
                .iter()
                .filter(|op| op.status != "kDone" && is_finished(op))
                .count();
            if reported != Some((finished, failed)) {
                println!(
                    "  {what}: {finished}/{} ops finished{}",
                    ids.len(),
                    if failed > 0 {
                        format!(", {failed} failed")
                    } else {
                        String::new()
                    }
                );
                reported = Some((finished, failed));
            }
            // An op that disappeared unseen to end was deleted once it ended, and most
            // likely ended well (failed ones are kept longer): it is finished for us, and
            // callers that must know (recoverdata) confirm the outcome in the metadata.
            if finished + (ids.len() - ours.len()) == ids.len() {
                return Ok(ours);
            }
            if Instant::now() >= deadline {
                let waiting: Vec<String> = ours
                    .iter()
                    .filter(|op| !is_finished(op))
                    .map(|op| format!("{} ({} {} pid {})", op.op_id, op.op_type, op.name, op.pid))
                    .collect();
                return Err(OpsError::Timeout {
                    what: format!("{what}: ops {} still running", waiting.join(", ")),
                    after: self.timeout,
                });
            }
            tokio::time::sleep(poll_interval(ids.len())).await;
        }
    }
}

/// How long `wait_ops` waits between two looks at the ops: each look lists every op,
/// tens of thousands during a whole-cluster recovery, so the more ops are waited for,
/// the less often.
fn poll_interval(waited_for: usize) -> Duration {
    let step = Duration::from_millis(300);
    (step + step * (waited_for / 1_000) as u32).min(Duration::from_secs(2))
}

/// A tablet's client, or why it cannot be reached (quickly: an operator waits).
pub async fn tablet(
    endpoint: &str,
) -> std::result::Result<TabletClient<cluster_secret::InternalChannel>, String> {
    Ok(TabletClient::new(cluster_secret::internal(
        tablet_channel(endpoint).await?,
    )))
}

/// One channel per tablet for the whole run, shared by every call: `recoverdata` makes
/// tens of thousands of calls, side by side, and a connection each would cost a
/// handshake each and could run the process out of file descriptors.
async fn tablet_channel(endpoint: &str) -> std::result::Result<tonic::transport::Channel, String> {
    type Slot = std::sync::Arc<tokio::sync::OnceCell<tonic::transport::Channel>>;
    static CHANNELS: std::sync::OnceLock<
        parking_lot::Mutex<std::collections::HashMap<String, Slot>>,
    > = std::sync::OnceLock::new();
    let slot = CHANNELS
        .get_or_init(Default::default)
        .lock()
        .entry(endpoint.to_string())
        .or_default()
        .clone();
    // Calls started together wait for the first connection to this tablet (and only
    // this one); one that failed is tried again by the next call.
    slot.get_or_try_init(|| async {
        tessera_common::tls::endpoint(endpoint, Duration::from_secs(3))
            .map_err(|e| e.to_string())?
            .timeout(Duration::from_secs(30))
            // A tablet that vanished without closing the connection is found in seconds.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("unreachable ({e})"))
    })
    .await
    .cloned()
}

/// The replicas of each partition, per endpoint: how many each tablet holds and leads.
pub fn load_by_endpoint(tables: &[TableInfo]) -> BTreeMap<String, (usize, usize)> {
    let mut load: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for table in tables {
        for partition in &table.partitions {
            for replica in &partition.replicas {
                let entry = load.entry(replica.endpoint.clone()).or_default();
                entry.0 += 1;
                if replica.is_leader {
                    entry.1 += 1;
                }
            }
        }
    }
    load
}

/// `(db, table, pid)` of a failed or unfinished op, for summaries.
pub fn op_label(op: &OpInfo) -> String {
    format!("{}.{} pid {}", op.db, op.name, op.pid)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use tessera_proto::nameserver::{PartitionMeta, ReplicaMeta, TableInfo};

    /// Table `default.t`: one partition per entry, its replicas as (endpoint, leads),
    /// all alive.
    pub fn table(partitions: &[&[(&str, bool)]]) -> TableInfo {
        TableInfo {
            db: "default".into(),
            name: "t".into(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(pid, replicas)| PartitionMeta {
                    pid: pid as u32,
                    replicas: replicas
                        .iter()
                        .map(|(endpoint, leads)| ReplicaMeta {
                            endpoint: endpoint.to_string(),
                            is_leader: *leads,
                            is_alive: true,
                            joining: false,
                            leaving: false,
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Work on many partitions runs side by side, up to the bound and no further.
    #[tokio::test]
    async fn work_runs_side_by_side_up_to_the_bound() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<usize> = (0..200).collect();
        let outputs = side_by_side(items, 64, |item| {
            let (now, most) = (&now, &most);
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                now.fetch_sub(1, Ordering::SeqCst);
                item * 2
            }
        })
        .await;
        assert_eq!(
            most.load(Ordering::SeqCst),
            64,
            "at most 64, and 64 at once"
        );
        let mut outputs = outputs;
        outputs.sort();
        assert_eq!(outputs, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    }
}
