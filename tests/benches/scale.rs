//! Scale: `SCALE_TABLES` × `SCALE_PARTITIONS` partitions (100 × 100 by default), three
//! replicas each, on `SCALE_TABLETS` tablets (5), every setting at its default but the
//! daily snapshot (off, so that it cannot run into what is measured). It
//! writes a few rows to every partition, then measures what an operator waits for:
//! creating the tables, `showtable` of all of them, the nameserver's CPU and
//! ZooKeeper's disk writes at idle, the failover from `kill -9` of the tablet leading
//! the most partitions to every one of them taking a write again, and a whole-cluster
//! `recoverdata`. `scripts/bench-scale.sh` builds the binaries and runs it; `SCALE_DIR`
//! keeps the processes' logs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::auth::AuthChannel;
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::ShowTableRow;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_tests::bench::{self, env_or, Figures};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::table_rows;
use tessera_tests::{ops, workload, NameserverProcess};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Rows written to each partition before the measurements.
const ROWS_PER_PARTITION: u64 = 3;
/// Calls in flight at once for the writes and the failover probes.
const IN_FLIGHT: usize = 256;
/// How long the idle figures are taken over.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// Defaults but for the daily snapshot of every partition, which would otherwise
/// compete with what is measured whenever a run spans its hour.
const NAMESERVER_ARGS: &[&str] = &["--make_snapshot_time=-1"];
/// How long a stage may take before the benchmark gives up on it.
const STAGE_LIMIT: Duration = Duration::from_secs(1800);

fn table_name(t: u32) -> String {
    format!("s{t}")
}

/// Bytes a process has caused to be written to storage, if the kernel keeps the count.
fn bytes_written(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every table's `showtable` rows, read in parallel.
async fn all_rows(
    ns: &NameserverClient<AuthChannel>,
    tables: u32,
) -> BTreeMap<u32, Vec<ShowTableRow>> {
    let mut reads = JoinSet::new();
    let limit = Arc::new(Semaphore::new(16));
    for t in 0..tables {
        let (mut ns, limit) = (ns.clone(), limit.clone());
        reads.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (t, table_rows(&mut ns, &table_name(t)).await)
        });
    }
    let mut rows = BTreeMap::new();
    while let Some(read) = reads.join_next().await {
        let (t, table) = read.expect("showtable task");
        rows.insert(t, table);
    }
    rows
}

/// The alive leader of each partition as the stored metadata says, by (tid, pid).
async fn stored_leaders(zk: &zookeeper_client::Client, tables: u32) -> HashMap<(u32, u32), String> {
    let paths = (0..tables)
        .map(|t| format!("/tessera/table/table_data/default.{}", table_name(t)))
        .collect();
    bench::stored_leaders(zk, paths, 16).await
}

/// The leader of each partition as the metadata says, by (tid, pid).
fn leaders(rows: &BTreeMap<u32, Vec<ShowTableRow>>) -> HashMap<(u32, u32), String> {
    rows.values()
        .flatten()
        .filter(|r| r.role == "leader" && r.is_alive)
        .map(|r| ((r.tid, r.pid), r.endpoint.clone()))
        .collect()
}

/// Tablet clients shared by the tasks, one connection per endpoint.
#[derive(Clone, Default)]
struct Clients(Arc<parking_lot::Mutex<HashMap<String, TabletClient<AuthChannel>>>>);

impl Clients {
    async fn get(&self, endpoint: &str) -> Option<TabletClient<AuthChannel>> {
        if let Some(client) = self.0.lock().get(endpoint) {
            return Some(client.clone());
        }
        let client = tessera_tests::tablet_client(endpoint).await.ok()?;
        self.0.lock().insert(endpoint.to_string(), client.clone());
        Some(client)
    }

    fn forget(&self, endpoint: &str) {
        self.0.lock().remove(endpoint);
    }
}

/// One put of row `seq` by `writer` to partition (tid, pid) at `endpoint`.
async fn put(clients: &Clients, endpoint: &str, tid: u32, pid: u32, writer: u64, seq: u64) -> bool {
    let Some(mut client) = clients.get(endpoint).await else {
        return false;
    };
    let mut request = tonic::Request::new(workload::put_request(tid, pid, writer, seq));
    request.set_timeout(Duration::from_secs(2));
    match client.put(request).await {
        Ok(_) => true,
        Err(status) => {
            if status.code() == tonic::Code::Unavailable {
                clients.forget(endpoint);
            }
            false
        }
    }
}

/// Writes [`ROWS_PER_PARTITION`] rows to every partition through its leader, asking the
/// nameserver again after a refusal (a leader may have moved).
async fn write_rows(ns: &NameserverClient<AuthChannel>, rows: &BTreeMap<u32, Vec<ShowTableRow>>) {
    let clients = Clients::default();
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut writes = JoinSet::new();
    for (&(tid, pid), endpoint) in &leaders(rows) {
        let name = rows
            .values()
            .flatten()
            .find(|r| r.tid == tid)
            .map(|r| r.name.clone())
            .expect("a table of each leader");
        let (clients, limit, mut ns) = (clients.clone(), limit.clone(), ns.clone());
        let mut endpoint = endpoint.clone();
        writes.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let started = Instant::now();
            for seq in 0..ROWS_PER_PARTITION {
                while !put(&clients, &endpoint, tid, pid, u64::from(pid), seq).await {
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "{name}.{pid} takes no write"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let table = table_rows(&mut ns, &name).await;
                    if let Some(leader) = table
                        .iter()
                        .find(|r| r.pid == pid && r.role == "leader" && r.is_alive)
                    {
                        endpoint = leader.endpoint.clone();
                    }
                }
            }
        });
    }
    while let Some(write) = writes.join_next().await {
        write.expect("write task");
    }
}

/// How many failovers the nameserver has started so far by its log: of whole tablets
/// confirmed down, and of leaders taken for cut off from their followers.
fn failovers_started(cluster: &NsCluster) -> usize {
    let log = cluster.nameserver.log();
    log.matches("leader tablet confirmed down").count()
        + log
            .matches("no majority of its replicas answers it")
            .count()
}

struct Failover {
    partitions: usize,
    /// Until the metadata names a live leader elsewhere for each of them.
    metadata: Duration,
    /// Until each took a write: the median, and the last.
    median_write: Duration,
    last_write: Duration,
}

/// Kills the tablet leading the most partitions and times their recovery.
async fn failover(cluster: &mut NsCluster, tables: u32) -> Failover {
    let ns = cluster.ns().await;
    let before = leaders(&all_rows(&ns, tables).await);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for endpoint in before.values() {
        *counts.entry(endpoint).or_default() += 1;
    }
    let victim = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(e, _)| e.to_string())
        .expect("some leader");
    let led: Vec<(u32, u32)> = before
        .iter()
        .filter(|(_, e)| **e == victim)
        .map(|(k, _)| *k)
        .collect();
    eprintln!("killing {victim}, which leads {} partitions", led.len());
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();
    let killed_at = Instant::now();

    // One reader follows the metadata for every probe, from ZooKeeper as the SDK does
    // (`showtable` would also ask every tablet, a load of its own on the failover).
    let current = Arc::new(parking_lot::Mutex::new(before.clone()));
    let metadata_done = Arc::new(parking_lot::Mutex::new(None::<Duration>));
    let zk = zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let follow = {
        let (current, metadata_done) = (current.clone(), metadata_done.clone());
        let (led, victim) = (led.clone(), victim.clone());
        tokio::spawn(async move {
            loop {
                let now = stored_leaders(&zk, tables).await;
                let moved = led.iter().all(|k| now.get(k).is_some_and(|e| *e != victim));
                if moved && metadata_done.lock().is_none() {
                    *metadata_done.lock() = Some(killed_at.elapsed());
                }
                *current.lock() = now;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let clients = Clients::default();
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut probes = JoinSet::new();
    for (tid, pid) in led.iter().copied() {
        let (clients, limit, current) = (clients.clone(), limit.clone(), current.clone());
        let victim = victim.clone();
        probes.spawn(async move {
            let mut seq = ROWS_PER_PARTITION;
            loop {
                let leader = current.lock().get(&(tid, pid)).cloned();
                if let Some(leader) = leader.filter(|l| *l != victim) {
                    let _permit = limit.acquire().await;
                    if put(&clients, &leader, tid, pid, u64::from(pid), seq).await {
                        return killed_at.elapsed();
                    }
                    seq += 1;
                }
                assert!(
                    killed_at.elapsed() < STAGE_LIMIT,
                    "{tid}.{pid} takes no write"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let mut took = Vec::with_capacity(led.len());
    while let Some(probe) = probes.join_next().await {
        took.push(probe.expect("failover probe"));
    }
    follow.abort();
    took.sort();
    let last_write = *took.last().expect("the victim led some partition");
    let metadata = metadata_done.lock().unwrap_or(last_write);
    Failover {
        partitions: led.len(),
        metadata,
        median_write: took[took.len() / 2],
        last_write,
    }
}

async fn run() -> Figures {
    let tables: u32 = env_or("SCALE_TABLES", 100);
    let partitions: u32 = env_or("SCALE_PARTITIONS", 100);
    let tablet_count = env_or::<usize>("SCALE_TABLETS", 5);
    let total = (tables * partitions) as usize;
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("SCALE_DIR").map(std::path::PathBuf::from);
    let root = keep.as_deref().unwrap_or(dir.path());
    let mut figures = Figures::default();
    figures.note(
        "layout",
        format!("{tables} tables x {partitions} partitions x 3 replicas on {tablet_count} tablets"),
    );

    // Extra tablet flags, to compare settings (`SCALE_TABLET_ARGS="--flag=value ..."`).
    let tablet_args = std::env::var("SCALE_TABLET_ARGS").unwrap_or_default();
    let tablet_args: Vec<&str> = tablet_args.split_whitespace().collect();
    if !tablet_args.is_empty() {
        figures.note("tablet flags", tablet_args.join(" "));
    }
    let mut cluster = NsCluster::start(
        root,
        NsClusterSpec {
            tablets: tablet_count,
            tablet_args: &tablet_args,
            nameserver_args: NAMESERVER_ARGS,
            ..NsClusterSpec::defaults()
        },
    )
    .await;
    let started = Instant::now();
    for t in 0..tables {
        cluster.create_table(&table_name(t), partitions, 3).await;
        if (t + 1) % 10 == 0 {
            eprintln!("created {} of {tables} tables", t + 1);
        }
    }
    let created = started.elapsed();
    figures.note(
        "create",
        format!(
            "{:.1} s ({:.1} ms per partition)",
            created.as_secs_f64(),
            created.as_secs_f64() * 1000.0 / total as f64
        ),
    );

    let ns = cluster.ns().await;
    let started = Instant::now();
    let rows = all_rows(&ns, tables).await;
    figures.note(
        "showtable, every table",
        format!("{:.2} s", started.elapsed().as_secs_f64()),
    );
    assert_eq!(leaders(&rows).len(), total, "every partition has a leader");
    let started = Instant::now();
    write_rows(&ns, &rows).await;
    figures.note(
        "writes",
        format!(
            "{} rows in {:.1} s",
            total as u64 * ROWS_PER_PARTITION,
            started.elapsed().as_secs_f64()
        ),
    );

    // Idle: nothing asked of the cluster.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (ns_pid, zk_pid) = (cluster.nameserver.pid(), cluster.zk.pid());
    let tablet_pids: Vec<u32> = cluster.tablets.iter().map(|t| t.pid()).collect();
    let tablets_cpu = |pids: &[u32]| -> Duration {
        pids.iter()
            .map(|pid| tessera_tests::process::cpu_time(*pid))
            .sum()
    };
    let (ns_cpu, zk_bytes, tablet_cpu) = (
        tessera_tests::process::cpu_time(ns_pid),
        bytes_written(zk_pid),
        tablets_cpu(&tablet_pids),
    );
    tokio::time::sleep(IDLE_WINDOW).await;
    let ns_busy = tessera_tests::process::cpu_time(ns_pid).saturating_sub(ns_cpu);
    let tablets_busy = tablets_cpu(&tablet_pids).saturating_sub(tablet_cpu);
    figures.note(
        "idle nameserver CPU",
        format!(
            "{:.2} % of a core",
            ns_busy.as_secs_f64() * 100.0 / IDLE_WINDOW.as_secs_f64()
        ),
    );
    // Heartbeats and the silence watch: their cost grows with the partitions a tablet
    // holds, not with the traffic.
    figures.note(
        "idle tablet CPU (mean of the tablets)",
        format!(
            "{:.1} % of a core",
            tablets_busy.as_secs_f64() * 100.0
                / IDLE_WINDOW.as_secs_f64()
                / tablet_pids.len().max(1) as f64
        ),
    );
    figures.note(
        "idle ZooKeeper writes",
        match (zk_bytes, bytes_written(zk_pid)) {
            (Some(before), Some(after)) => format!(
                "{:.1} KiB/s",
                after.saturating_sub(before) as f64 / 1024.0 / IDLE_WINDOW.as_secs_f64()
            ),
            _ => "not counted by this kernel".to_string(),
        },
    );

    figures.note(
        "false alarms before the kill (failovers of live leaders)",
        failovers_started(&cluster).to_string(),
    );
    let failed_over = failover(&mut cluster, tables).await;
    figures.note(
        "failover, partitions led by the killed tablet",
        failed_over.partitions.to_string(),
    );
    figures.note(
        "failover, metadata names new leaders",
        format!("{:.2} s", failed_over.metadata.as_secs_f64()),
    );
    figures.note(
        "failover, first write (median / last)",
        format!(
            "{:.2} s / {:.2} s",
            failed_over.median_write.as_secs_f64(),
            failed_over.last_write.as_secs_f64()
        ),
    );

    // The whole cluster goes down together and comes back.
    for tablet in &mut cluster.tablets {
        tablet.kill9();
    }
    cluster.nameserver.kill9();
    let started = Instant::now();
    for tablet in &mut cluster.tablets {
        tablet.restart().await;
    }
    figures.note(
        "tablet restarts, one after another",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    cluster.nameserver =
        NameserverProcess::start_with(&root.join("ns-after"), &cluster.zk, 10_000, NAMESERVER_ARGS)
            .await;
    cluster.nameserver.wait_leader().await;
    cluster.wait_healthy(tablet_count).await;
    let started = Instant::now();
    let (ok, out) = ops::run_within(
        &cluster.zk.connect_string(),
        "recoverdata",
        &[],
        STAGE_LIMIT.as_secs(),
    )
    .await;
    let recovered = started.elapsed();
    assert!(ok, "recoverdata failed:\n{out}");
    let led_again = leaders(&all_rows(&cluster.ns().await, tables).await).len();
    figures.note(
        "recoverdata, whole cluster",
        format!(
            "{:.1} s ({led_again} of {total} partitions led after it)",
            recovered.as_secs_f64()
        ),
    );
    figures
}

fn main() {
    tessera_tests::bench::run_and_print(run());
}
