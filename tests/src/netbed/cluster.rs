//! A whole cluster of separate hosts: a three-member ZooKeeper ensemble, two nameservers
//! and several tablets, each process in its own network namespace on the bed's bridge, and
//! hosts for client workers. The test process is the operator's host (`.1`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::{ShowTabletRequest, TableInfo};
use tessera_proto::tablet::GetTableStatusRequest;

use super::host::HostProcess;
use super::network::{run, Host, Network};
use crate::wait::poll_until_async;
use crate::{binary, wait_until_async};

const READY: Duration = Duration::from_secs(90);
const ZK_PORT: u16 = 2181;
const TABLET_PORT: u16 = 9527;
const NAMESERVER_PORT: u16 = 9622;
pub const ZOOKEEPERS: usize = 3;
pub const NAMESERVERS: usize = 2;

/// Which process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    ZooKeeper(usize),
    Nameserver(usize),
    Tablet(usize),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::ZooKeeper(i) => write!(f, "zk{i}"),
            Node::Nameserver(i) => write!(f, "ns{i}"),
            Node::Tablet(i) => write!(f, "t{i}"),
        }
    }
}

/// How to start it.
#[derive(Debug, Clone)]
pub struct NetClusterSpec {
    pub tablets: usize,
    pub clients: usize,
    pub tablet_session_ms: u64,
    pub nameserver_session_ms: u64,
    /// Bytes of the small filesystem under tablet 0's data, for full-disk faults; `None`
    /// keeps it on the test's disk.
    pub small_disk_bytes: Option<u64>,
}

impl Default for NetClusterSpec {
    fn default() -> Self {
        NetClusterSpec {
            tablets: 4,
            clients: 3,
            tablet_session_ms: 3000,
            nameserver_session_ms: 2000,
            small_disk_bytes: None,
        }
    }
}

/// A tmpfs of a fixed size; unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output();
    }
}

pub struct NetCluster {
    pub dir: PathBuf,
    pub zookeepers: Vec<HostProcess>,
    pub nameservers: Vec<HostProcess>,
    pub tablets: Vec<HostProcess>,
    pub clients: Vec<Host>,
    small_disk: Option<SmallDisk>,
    // Last: the processes must be gone before their namespaces are removed.
    pub network: Network,
}

fn reachable(endpoint: &str) -> Option<TcpStream> {
    let address: SocketAddr = endpoint.parse().ok()?;
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()
}

/// A four-letter command to a ZooKeeper member; `None` if it does not answer.
fn four_letter(endpoint: &str, command: &str) -> Option<String> {
    let mut stream = reachable(endpoint)?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(command.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// Whether the nameserver at `endpoint` leads (its HTTP leader check answers 200).
fn leads(endpoint: &str) -> bool {
    let Some(mut stream) = reachable(endpoint) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if write!(
        stream,
        "GET /api/leader-check HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

impl NetCluster {
    /// Creates the hosts and starts everything; returns once a nameserver leads and sees
    /// every tablet healthy.
    pub async fn start(dir: &Path, spec: NetClusterSpec) -> NetCluster {
        let mut names: Vec<String> = Vec::new();
        names.extend((0..ZOOKEEPERS).map(|i| Node::ZooKeeper(i).to_string()));
        names.extend((0..NAMESERVERS).map(|i| Node::Nameserver(i).to_string()));
        names.extend((0..spec.tablets).map(|i| Node::Tablet(i).to_string()));
        names.extend((0..spec.clients).map(|i| format!("c{i}")));
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let network = Network::create(&name_refs);
        let mut cluster = NetCluster {
            dir: dir.to_path_buf(),
            zookeepers: Vec::new(),
            nameservers: Vec::new(),
            tablets: Vec::new(),
            clients: (0..spec.clients)
                .map(|i| network.host(&format!("c{i}")).clone())
                .collect(),
            small_disk: None,
            network,
        };

        let peers: Vec<String> = (0..ZOOKEEPERS)
            .map(|i| cluster.host(Node::ZooKeeper(i)).ip.clone())
            .collect();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/zookeeper.sh");
        for i in 0..ZOOKEEPERS {
            let host = cluster.host(Node::ZooKeeper(i)).clone();
            let zk_dir = dir.join(format!("zk{i}"));
            std::fs::create_dir_all(&zk_dir).expect("create the ZooKeeper directory");
            let args = vec![
                script.display().to_string(),
                "member".into(),
                zk_dir.display().to_string(),
                (i + 1).to_string(),
                host.ip.clone(),
                peers.join(","),
            ];
            cluster.zookeepers.push(HostProcess::start(
                &host,
                "bash".into(),
                args,
                zk_dir.join("zookeeper.log"),
            ));
        }
        cluster.wait_zookeeper_quorum().await;

        let zk = cluster.zk_connect_string();
        for i in 0..spec.tablets {
            let host = cluster.host(Node::Tablet(i)).clone();
            let tablet_dir = dir.join(format!("t{i}"));
            let data = tablet_dir.join("disk");
            std::fs::create_dir_all(&data).expect("create the tablet's directory");
            if i == 0 {
                if let Some(bytes) = spec.small_disk_bytes {
                    run(
                        "mount",
                        &[
                            "-t",
                            "tmpfs",
                            "-o",
                            &format!("size={bytes}"),
                            &format!("tschaos-{}", std::process::id()),
                            &data.display().to_string(),
                        ],
                    );
                    cluster.small_disk = Some(SmallDisk { path: data.clone() });
                }
            }
            let args = vec![
                format!("--endpoint={}:{TABLET_PORT}", host.ip),
                format!("--db_root_path={}", data.join("db").display()),
                format!("--zk_cluster={zk}"),
                "--zk_root_path=/tessera".into(),
                format!("--zk_session_timeout={}", spec.tablet_session_ms),
                "--quorum_timeout=3000".into(),
                crate::credentials::secret_flag(),
            ];
            cluster.tablets.push(HostProcess::start(
                &host,
                binary("tessera-tablet"),
                args,
                tablet_dir.join("tablet.log"),
            ));
        }
        for i in 0..NAMESERVERS {
            let host = cluster.host(Node::Nameserver(i)).clone();
            let ns_dir = dir.join(format!("ns{i}"));
            std::fs::create_dir_all(&ns_dir).expect("create the nameserver's directory");
            let args = vec![
                format!("--endpoint={}:{NAMESERVER_PORT}", host.ip),
                format!("--zk_cluster={zk}"),
                "--zk_root_path=/tessera".into(),
                format!("--zk_session_timeout={}", spec.nameserver_session_ms),
            ];
            let mut args = args;
            args.extend(crate::credentials::nameserver_flags());
            cluster.nameservers.push(HostProcess::start(
                &host,
                binary("tessera-nameserver"),
                args,
                ns_dir.join("nameserver.log"),
            ));
        }
        cluster.wait_healthy().await;
        cluster
    }

    pub fn host(&self, node: Node) -> &Host {
        self.network.host(&node.to_string())
    }

    /// The bed's index of the node's host, for partitions.
    pub fn host_index(&self, node: Node) -> usize {
        self.network.index(&node.to_string())
    }

    pub fn process(&mut self, node: Node) -> &mut HostProcess {
        match node {
            Node::ZooKeeper(i) => &mut self.zookeepers[i],
            Node::Nameserver(i) => &mut self.nameservers[i],
            Node::Tablet(i) => &mut self.tablets[i],
        }
    }

    pub fn nodes(&self) -> Vec<Node> {
        (0..self.zookeepers.len())
            .map(Node::ZooKeeper)
            .chain((0..self.nameservers.len()).map(Node::Nameserver))
            .chain((0..self.tablets.len()).map(Node::Tablet))
            .collect()
    }

    pub fn zk_connect_string(&self) -> String {
        (0..ZOOKEEPERS)
            .map(|i| format!("{}:{ZK_PORT}", self.host(Node::ZooKeeper(i)).ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn tablet_endpoint(&self, i: usize) -> String {
        format!("{}:{TABLET_PORT}", self.host(Node::Tablet(i)).ip)
    }

    fn nameserver_endpoint(&self, i: usize) -> String {
        format!("{}:{NAMESERVER_PORT}", self.host(Node::Nameserver(i)).ip)
    }

    /// The directory that fills up in a full-disk fault (tablet 0's data), if any.
    pub fn small_disk(&self) -> Option<&Path> {
        self.small_disk.as_ref().map(|d| d.path.as_path())
    }

    /// Fills the small disk to the last byte; returns the file that does it (remove it
    /// to give the room back).
    pub fn fill_small_disk(&self) -> PathBuf {
        let dir = self.small_disk().expect("the cluster has a small disk");
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        for block in [1 << 20, 4096, 1] {
            let bytes = vec![0u8; block];
            while file.write_all(&bytes).is_ok() {}
        }
        path
    }

    /// Waits until a majority of the ensemble serves.
    pub async fn wait_zookeeper_quorum(&self) {
        let members: Vec<String> = (0..ZOOKEEPERS)
            .map(|i| format!("{}:{ZK_PORT}", self.host(Node::ZooKeeper(i)).ip))
            .collect();
        wait_until_async(READY, "a ZooKeeper quorum to serve", || {
            let members = members.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    members
                        .iter()
                        .filter(|m| {
                            four_letter(m, "srvr").is_some_and(|s| {
                                s.contains("Mode: leader") || s.contains("Mode: follower")
                            })
                        })
                        .count()
                        > ZOOKEEPERS / 2
                })
                .await
                .unwrap_or(false)
            }
        })
        .await;
    }

    /// The endpoint of the nameserver that leads now, if one does.
    pub async fn leader_endpoint(&self) -> Option<String> {
        let endpoints: Vec<String> = (0..self.nameservers.len())
            .map(|i| self.nameserver_endpoint(i))
            .collect();
        tokio::task::spawn_blocking(move || endpoints.into_iter().find(|e| leads(e)))
            .await
            .ok()
            .flatten()
    }

    /// A client of the leading nameserver (waiting for one to lead).
    pub async fn ns(&self) -> NameserverClient<AuthChannel> {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            if let Some(endpoint) = self.leader_endpoint().await {
                if let Ok(channel) = crate::channel(&endpoint).await {
                    return NameserverClient::new(tessera_common::auth::with_credentials(channel));
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no nameserver leads after {READY:?}:\n{}",
                self.nameservers
                    .iter()
                    .map(|n| n.log_tail(15))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every tablet serves and a leading nameserver sees them all healthy.
    pub async fn wait_healthy(&self) {
        for i in 0..self.tablets.len() {
            let endpoint = self.tablet_endpoint(i);
            let ok = poll_until_async(READY, || {
                let endpoint = endpoint.clone();
                async move {
                    match crate::tablet_client(&endpoint).await {
                        Ok(mut client) => client
                            .get_table_status(GetTableStatusRequest::default())
                            .await
                            .is_ok(),
                        Err(_) => false,
                    }
                }
            })
            .await;
            assert!(
                ok,
                "tablet {i} at {endpoint} does not serve:\n{}",
                self.tablets[i].log_tail(30)
            );
        }
        let count = self.tablets.len();
        wait_until_async(READY, &format!("{count} healthy tablets"), || async {
            let Some(endpoint) = self.leader_endpoint().await else {
                return false;
            };
            let Ok(channel) = crate::channel(&endpoint).await else {
                return false;
            };
            let mut ns = NameserverClient::new(tessera_common::auth::with_credentials(channel));
            ns.show_tablet(ShowTabletRequest {})
                .await
                .map(|r| {
                    r.into_inner()
                        .tablets
                        .iter()
                        .filter(|t| t.state == "kTabletHealthy")
                        .count()
                        == count
                })
                .unwrap_or(false)
        })
        .await;
    }

    /// Creates a quorum table of the workload's schema.
    pub async fn create_table(&self, name: &str, partitions: u32, replicas: u32) -> TableInfo {
        crate::nscluster::create_quorum_table(self.ns().await, name, partitions, replicas).await
    }

    /// Restarts every process that is not running (killed by a fault, or exited on its
    /// own), as a supervising daemon would; returns the ones that had exited on their own.
    pub fn restart_stopped(&mut self) -> Vec<(Node, String)> {
        let mut exited = Vec::new();
        for node in self.nodes() {
            let process = self.process(node);
            if let Some(status) = process.exited() {
                exited.push((node, format!("{status}: {}", process.log_tail(5))));
            }
            process.restart();
        }
        exited
    }

    /// `tessera-ops --cmd=<cmd>` from the operator's host; (succeeded, output).
    pub async fn ops(&self, cmd: &str, args: &[&str]) -> (bool, String) {
        crate::ops::run_against(&self.zk_connect_string(), cmd, args).await
    }

    /// Runs `work` on a thread inside the client host's network namespace, with a
    /// runtime of its own: every connection it opens leaves from that host.
    pub fn on_client_host<F, Fut>(&self, client: usize, work: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let host = self.clients[client].clone();
        std::thread::Builder::new()
            .name(format!("client-{client}"))
            .spawn(move || {
                host.enter();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a client runtime")
                    .block_on(work());
            })
            .expect("spawn a client thread")
    }

    /// Every process's log, concatenated under headers, for a failed run's folder.
    pub fn copy_logs(&self, to: &Path) {
        std::fs::create_dir_all(to).expect("create the log folder");
        let all = self
            .zookeepers
            .iter()
            .chain(&self.nameservers)
            .chain(&self.tablets);
        for process in all {
            let _ = std::fs::copy(
                &process.log_path,
                to.join(format!("{}.log", process.host.name)),
            );
        }
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for process in self
            .tablets
            .iter_mut()
            .chain(&mut self.nameservers)
            .chain(&mut self.zookeepers)
        {
            process.kill9();
        }
    }
}
