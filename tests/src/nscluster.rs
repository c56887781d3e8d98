//! A whole cluster for nameserver tests: ZooKeeper, tablets and one nameserver, ready to
//! take tables.

use std::path::Path;
use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::{CreateTableRequest, ShowTabletRequest, TableInfo};
use tessera_proto::tablet::ReplicationMode;

use crate::fake_tablet::FakeTablet;
use crate::ElectedProcess;
use crate::{wait_until_async, workload, NameserverProcess, TabletProcess, ZooKeeper};

const READY: Duration = Duration::from_secs(60);

pub struct NsCluster {
    pub zk: ZooKeeper,
    pub tablets: Vec<TabletProcess>,
    pub nameserver: NameserverProcess,
}

/// How to start it. Session timeouts are in milliseconds; `None` keeps the default.
#[derive(Debug, Clone, Default)]
pub struct NsClusterSpec<'a> {
    pub tablets: usize,
    pub tablet_session_ms: Option<u64>,
    pub tablet_args: &'a [&'a str],
    pub nameserver_session_ms: u64,
    pub nameserver_args: &'a [&'a str],
}

impl NsClusterSpec<'static> {
    /// Three tablets and a nameserver with every setting at its default (10 s ZooKeeper
    /// sessions), as a new user runs them: for benchmarks.
    pub fn defaults() -> NsClusterSpec<'static> {
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: None,
            tablet_args: &[],
            nameserver_session_ms: 10_000,
            nameserver_args: &[],
        }
    }

    /// Three tablets with 3 s sessions and a nameserver with 2 s sessions, every other
    /// setting at its default: what most process tests run.
    pub fn three_tablets() -> NsClusterSpec<'static> {
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &[],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        }
    }

    /// Three tablets with 3 s sessions and 3 s quorum timeouts, and a nameserver with
    /// 2 s sessions, so failures are seen fast.
    pub fn fast_failover() -> NsClusterSpec<'static> {
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &["--quorum_timeout=3000"],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        }
    }
}

impl NsCluster {
    /// Starts everything and waits until the nameserver leads and sees every tablet healthy.
    pub async fn start(dir: &Path, spec: NsClusterSpec<'_>) -> NsCluster {
        let zk = ZooKeeper::start(&dir.join("zk"));
        let mut args = vec![
            format!("--zk_cluster={}", zk.connect_string()),
            "--zk_root_path=/tessera".to_string(),
        ];
        if let Some(ms) = spec.tablet_session_ms {
            args.push(format!("--zk_session_timeout={ms}"));
        }
        args.extend(spec.tablet_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut tablets = Vec::new();
        for i in 0..spec.tablets {
            tablets.push(TabletProcess::start(&dir.join(format!("t{i}")), &args).await);
        }
        let nameserver = NameserverProcess::start_with(
            &dir.join("ns"),
            &zk,
            spec.nameserver_session_ms,
            spec.nameserver_args,
        )
        .await;
        nameserver.wait_leader().await;
        let cluster = NsCluster {
            zk,
            tablets,
            nameserver,
        };
        cluster.wait_healthy(spec.tablets).await;
        cluster
    }

    /// `nameserver` (leading, on `zk`) with `count` fake tablets (see `fake_tablet`) of
    /// ZooKeeper sessions of `session`, once it sees them all healthy.
    pub async fn on_fake_tablets(
        zk: ZooKeeper,
        nameserver: NameserverProcess,
        count: usize,
        session: Duration,
    ) -> (NsCluster, Vec<FakeTablet>) {
        let fakes = (0..count)
            .map(|_| FakeTablet::start(&zk.connect_string(), "/tessera", session))
            .collect();
        let cluster = NsCluster {
            zk,
            tablets: Vec::new(),
            nameserver,
        };
        cluster.wait_healthy(count).await;
        (cluster, fakes)
    }

    /// An SDK client of this cluster whose calls give up after `deadline`.
    pub async fn sdk(&self, deadline: Duration) -> tessera_ns_client::Client {
        tessera_ns_client::Client::connect_with(
            &self.zk.connect_string(),
            "/tessera",
            tessera_ns_client::ClientOptions {
                deadline,
                ..tessera_ns_client::ClientOptions::default()
            },
        )
        .await
        .expect("connect the SDK")
    }

    pub async fn ns(&self) -> NameserverClient<AuthChannel> {
        self.nameserver.client().await
    }

    /// Waits until the nameserver sees `count` healthy tablets.
    pub async fn wait_healthy(&self, count: usize) {
        let ns = self.ns().await;
        wait_until_async(READY, &format!("{count} healthy tablets"), || {
            let mut ns = ns.clone();
            async move {
                let tablets = ns
                    .show_tablet(ShowTabletRequest {})
                    .await
                    .map(|r| r.into_inner().tablets)
                    .unwrap_or_default();
                tablets
                    .iter()
                    .filter(|t| t.state == "kTabletHealthy")
                    .count()
                    == count
            }
        })
        .await;
    }

    /// Creates a quorum table of the workload's schema through the nameserver.
    pub async fn create_table(
        &self,
        name: &str,
        partition_num: u32,
        replica_num: u32,
    ) -> TableInfo {
        create_quorum_table(self.ns().await, name, partition_num, replica_num).await
    }

    /// Waits until `showtable` marks the replica of `table` on `endpoint` dead.
    pub async fn wait_marked_dead(&self, table: &str, endpoint: &str) {
        let ns = self.ns().await;
        wait_until_async(READY, &format!("{endpoint} to be marked dead"), || {
            let mut ns = ns.clone();
            async move {
                crate::routed::table_rows(&mut ns, table)
                    .await
                    .iter()
                    .any(|r| r.endpoint == endpoint && !r.is_alive)
            }
        })
        .await;
    }

    /// A taskmanager of this cluster with `extra` flags, its job data under `dir`, once
    /// it leads.
    pub async fn start_taskmanager(&self, dir: &Path, extra: &[&str]) -> ElectedProcess {
        let job_data = dir.join("job_data");
        std::fs::create_dir_all(&job_data).expect("create the job data directory");
        let taskmanager = ElectedProcess::start_taskmanager_with(
            &dir.join("tm"),
            &self.zk,
            2000,
            &job_data,
            extra,
        )
        .await;
        taskmanager.wait_leader().await;
        taskmanager
    }

    pub fn tablet_index(&self, endpoint: &str) -> usize {
        self.tablets
            .iter()
            .position(|t| t.endpoint == endpoint)
            .unwrap_or_else(|| panic!("no tablet at {endpoint}"))
    }
}

/// The request for a quorum table of the workload's schema.
pub fn quorum_table_request(
    name: &str,
    partition_num: u32,
    replica_num: u32,
) -> CreateTableRequest {
    CreateTableRequest {
        db: String::new(),
        name: name.into(),
        schema: Some(workload::schema().to_proto()),
        partition_num,
        replica_num,
        mode: ReplicationMode::Quorum as i32,
    }
}

/// Creates a quorum table of the workload's schema through `ns`.
pub async fn create_quorum_table(
    mut ns: NameserverClient<AuthChannel>,
    name: &str,
    partition_num: u32,
    replica_num: u32,
) -> TableInfo {
    ns.create_table(quorum_table_request(name, partition_num, replica_num))
        .await
        .unwrap_or_else(|e| panic!("create table {name}: {}", e.message()))
        .into_inner()
        .table
        .expect("created table")
}
