//! Writers that follow leadership through the nameserver: on any error they ask
//! `showtable` who leads their partition now and carry on. What an application will get
//! from the SDK, done by hand for the tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_common::auth::AuthChannel;

use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::{ShowTableRequest, ShowTableRow};
use tessera_proto::tablet::tablet_client::TabletClient;
use tokio::task::JoinHandle;

use crate::workload;

pub async fn table_rows(ns: &mut NameserverClient<AuthChannel>, name: &str) -> Vec<ShowTableRow> {
    ns.show_table(ShowTableRequest {
        db: String::new(),
        name: name.into(),
    })
    .await
    .map(|r| r.into_inner().rows)
    .unwrap_or_default()
}

/// The alive leader of each partition.
/// The endpoint of the first replica of `rows` in `role` (`leader` or `follower`).
pub fn endpoint_with_role(rows: &[ShowTableRow], role: &str) -> String {
    rows.iter()
        .find(|r| r.role == role)
        .unwrap_or_else(|| panic!("no {role} among {rows:?}"))
        .endpoint
        .clone()
}

pub fn leaders(rows: &[ShowTableRow]) -> BTreeMap<u32, String> {
    rows.iter()
        .filter(|r| r.role == "leader" && r.is_alive)
        .map(|r| (r.pid, r.endpoint.clone()))
        .collect()
}

/// The partitions `endpoint` leads, by `leaders`.
pub fn led_by(leaders: &BTreeMap<u32, String>, endpoint: &str) -> Vec<u32> {
    leaders
        .iter()
        .filter(|(_, leader)| *leader == endpoint)
        .map(|(pid, _)| *pid)
        .collect()
}

/// What a routed writer saw.
#[derive(Debug, Default)]
pub struct WriterLog {
    /// Acknowledged sequence numbers.
    pub acked: Vec<u64>,
    /// When each acknowledgement arrived.
    pub acked_at: Vec<Instant>,
}

/// Writes rows `(writer = pid, seq)` to one partition of table `name` (id `tid`) until
/// `stop`, through whichever replica the nameserver says leads it.
pub fn spawn(
    ns: NameserverClient<AuthChannel>,
    name: &'static str,
    tid: u32,
    pid: u32,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> JoinHandle<WriterLog> {
    tokio::spawn(async move {
        let mut ns = ns;
        let mut log = WriterLog::default();
        let mut leader: Option<TabletClient<tessera_common::auth::AuthChannel>> = None;
        let mut seq = 0;
        while !stop.load(Ordering::Relaxed) {
            if leader.is_none() {
                if let Some(endpoint) = leaders(&table_rows(&mut ns, name).await).get(&pid).cloned()
                {
                    leader = crate::tablet_client(&endpoint).await.ok();
                }
            }
            let Some(client) = leader.as_mut() else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match client
                .put(workload::put_request(tid, pid, u64::from(pid), seq))
                .await
            {
                Ok(_) => {
                    log.acked.push(seq);
                    log.acked_at.push(Instant::now());
                    acked_total.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // Not acknowledged: the row may or may not be there; either is fine.
                    leader = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seq += 1;
        }
        log
    })
}

/// Routed writers on partitions `0..partitions` of one table, writer id = pid.
pub struct RoutedWriters {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handles: Vec<JoinHandle<WriterLog>>,
}

impl RoutedWriters {
    pub fn start(
        ns: &NameserverClient<AuthChannel>,
        name: &'static str,
        tid: u32,
        partitions: u32,
    ) -> RoutedWriters {
        let (stop, acked) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let handles = (0..partitions)
            .map(|pid| spawn(ns.clone(), name, tid, pid, stop.clone(), acked.clone()))
            .collect();
        RoutedWriters {
            stop,
            acked,
            handles,
        }
    }

    /// Acknowledged writes so far, over all partitions.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `count` writes in all have been acknowledged.
    pub async fn wait_acked(&self, count: u64, timeout: Duration) {
        let acked = self.acked.clone();
        crate::wait_until_async(timeout, &format!("{count} acknowledged writes"), || {
            let acked = acked.clone();
            async move { acked.load(Ordering::Relaxed) >= count }
        })
        .await;
    }

    /// Tells the writers to stop and returns what each saw, indexed by pid.
    pub async fn finish(self) -> Vec<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for handle in self.handles {
            logs.push(handle.await.expect("writer task"));
        }
        logs
    }
}
