//! The nameserver alone at a million partitions: a real ZooKeeper and a real nameserver,
//! and `SIM_TABLETS` fake tablets (100; `tessera_tests::fake_tablet`, in this process)
//! that answer the control calls and hold no data. It creates `SIM_PARTITIONS` partitions
//! (1,000,000) in tables of `SIM_TABLE_PARTITIONS` (1,000), three replicas each; lists
//! every table with `showtable`; measures the idle nameserver; kills the fake tablet
//! leading the most partitions and waits until the metadata names a live leader for each
//! of them elsewhere, and every fake tablet agrees. Then it reports ZooKeeper's node
//! count, data size and largest node, against ZooKeeper's limits.
//!
//! `scripts/bench-scale.sh` runs it after the ten-thousand-partition benchmark
//! (`SIM=0` skips it); `SIM_DIR` keeps the processes' logs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_proto::nameserver::LeaderTroubleRequest;
use tessera_tests::bench::{self, env_or, Figures};
use tessera_tests::fake_tablet::FakeTablet;
use tessera_tests::nscluster::NsCluster;
use tessera_tests::routed::table_rows;
use tessera_tests::{NameserverProcess, ZooKeeper};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Defaults but for the daily snapshot, which would otherwise run into what is measured.
const NAMESERVER_ARGS: &[&str] = &["--make_snapshot_time=-1"];
/// The fake tablets' ZooKeeper sessions: the tablets' default.
const TABLET_SESSION: Duration = Duration::from_secs(10);
/// How long a stage may take before the benchmark gives up on it.
const STAGE_LIMIT: Duration = Duration::from_secs(3600);
/// How long the idle figure is taken over.
const IDLE_WINDOW: Duration = Duration::from_secs(20);
/// ZooKeeper's limit on one request or node (`jute.maxbuffer`).
const ZK_NODE_LIMIT: u64 = 1 << 20;
/// `showtable` calls in flight at once.
const LISTING_AT_ONCE: usize = 16;

fn table_name(t: u64) -> String {
    format!("m{t}")
}

fn table_path(t: u64) -> String {
    format!("/tessera/table/table_data/default.{}", table_name(t))
}

/// Resident memory of a process, in MiB.
fn resident_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// A figure from ZooKeeper's `mntr`.
fn mntr(zk: &ZooKeeper, key: &str) -> Option<u64> {
    zk.four_letter("mntr")?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// The largest node of the tables' metadata, header or chunk, in bytes: every node's
/// size is asked, `LISTING_AT_ONCE` tables at a time.
async fn largest_node(zk: &zookeeper_client::Client, tables: u64) -> u64 {
    let mut sizes = JoinSet::new();
    let limit = Arc::new(Semaphore::new(LISTING_AT_ONCE));
    for t in 0..tables {
        let (zk, limit) = (zk.clone(), limit.clone());
        sizes.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let path = table_path(t);
            let mut nodes = vec![path.clone()];
            if let Ok(children) = zk.list_children(&path).await {
                nodes.extend(children.iter().map(|c| format!("{path}/{c}")));
            }
            let mut largest = 0u64;
            for node in nodes {
                if let Ok(Some(stat)) = zk.check_stat(&node).await {
                    largest = largest.max(stat.data_length as u64);
                }
            }
            largest
        });
    }
    let mut largest = 0;
    while let Some(size) = sizes.join_next().await {
        largest = largest.max(size.expect("a size read"));
    }
    largest
}

/// The alive leader of each partition as the stored metadata says, by (tid, pid).
async fn stored_leaders(zk: &zookeeper_client::Client, tables: u64) -> HashMap<(u32, u32), String> {
    bench::stored_leaders(zk, (0..tables).map(table_path).collect(), LISTING_AT_ONCE).await
}

async fn run() -> Figures {
    let total: u64 = env_or("SIM_PARTITIONS", 1_000_000);
    let per_table = env_or("SIM_TABLE_PARTITIONS", 1_000).clamp(1, total.max(1));
    let tablet_count = env_or::<usize>("SIM_TABLETS", 100);
    let tables = total.div_ceil(per_table);
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("SIM_DIR").map(std::path::PathBuf::from);
    let root = keep.as_deref().unwrap_or(dir.path());
    let mut figures = Figures::default();
    figures.note(
        "layout",
        format!(
            "{tables} tables x {per_table} partitions x 3 replicas on {tablet_count} fake tablets"
        ),
    );

    let zk = ZooKeeper::start(&root.join("zk"));
    let nameserver =
        NameserverProcess::start_with(&root.join("ns"), &zk, 10_000, NAMESERVER_ARGS).await;
    nameserver.wait_leader().await;
    let (cluster, mut fakes) =
        NsCluster::on_fake_tablets(zk, nameserver, tablet_count, TABLET_SESSION).await;

    let started = Instant::now();
    let mut reported = 0;
    for t in 0..tables {
        let partitions = per_table.min(total - t * per_table) as u32;
        cluster.create_table(&table_name(t), partitions, 3).await;
        let done = (t + 1) * 20 / tables;
        if done > reported {
            reported = done;
            eprintln!(
                "created {} of {tables} tables in {:.0} s (nameserver: {} MiB resident)",
                t + 1,
                started.elapsed().as_secs_f64(),
                resident_mib(cluster.nameserver.pid())
            );
        }
        assert!(started.elapsed() < STAGE_LIMIT, "creating took too long");
    }
    let created = started.elapsed();
    figures.note(
        "create",
        format!(
            "{:.0} s ({:.0} partitions a second)",
            created.as_secs_f64(),
            total as f64 / created.as_secs_f64()
        ),
    );
    let held: usize = fakes.iter().map(FakeTablet::replica_count).sum();
    assert_eq!(held as u64, total * 3, "every replica is on a fake tablet");

    let ns = cluster.ns().await;
    let started = Instant::now();
    let mut listings = JoinSet::new();
    let limit = Arc::new(Semaphore::new(LISTING_AT_ONCE));
    for t in 0..tables {
        let (mut ns, limit) = (ns.clone(), limit.clone());
        listings.spawn(async move {
            let _permit = limit.acquire_owned().await;
            table_rows(&mut ns, &table_name(t)).await.len()
        });
    }
    let mut rows = 0;
    while let Some(listed) = listings.join_next().await {
        rows += listed.expect("a showtable task");
    }
    figures.note(
        "showtable, every table",
        format!("{:.1} s ({rows} rows)", started.elapsed().as_secs_f64()),
    );
    assert_eq!(rows as u64, total * 3, "showtable lists every replica");

    let ns_pid = cluster.nameserver.pid();
    let before = tessera_tests::process::cpu_time(ns_pid);
    tokio::time::sleep(IDLE_WINDOW).await;
    figures.note(
        "idle nameserver CPU",
        format!(
            "{:.1} % of a core",
            tessera_tests::process::cpu_time(ns_pid)
                .saturating_sub(before)
                .as_secs_f64()
                * 100.0
                / IDLE_WINDOW.as_secs_f64()
        ),
    );
    figures.note(
        "nameserver memory",
        format!("{} MiB resident", resident_mib(ns_pid)),
    );

    let zk_client = zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let leaders = stored_leaders(&zk_client, tables).await;
    assert_eq!(leaders.len() as u64, total, "every partition has a leader");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for endpoint in leaders.values() {
        *counts.entry(endpoint).or_default() += 1;
    }
    let (victim, led) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(e, n)| (e.to_string(), *n))
        .expect("some leader");
    let index = fakes
        .iter()
        .position(|f| f.endpoint == victim)
        .expect("the victim is a fake tablet");
    eprintln!("killing {victim}, which leads {led} partitions");
    fakes[index].kill();
    let killed_at = Instant::now();
    // What a follower's watchdog does the moment its leader's stream breaks (fake
    // tablets replicate nothing, so the benchmark says it for them): the nameserver
    // probes the leader, finds its port refusing, and fails it over without waiting for
    // its ZooKeeper session to expire.
    let reporter = fakes
        .iter()
        .find(|f| f.endpoint != victim)
        .expect("a surviving fake tablet")
        .endpoint
        .clone();
    let verdict = ns
        .clone()
        .report_leader_trouble(LeaderTroubleRequest {
            reporter,
            leader: victim.clone(),
            reason: "replication stream ended: connection reset".into(),
        })
        .await
        .map(|answer| answer.into_inner().verdict)
        .unwrap_or_else(|status| format!("not taken: {}", status.message()));
    eprintln!("the nameserver's verdict on the report: {verdict}");
    let moved = loop {
        let now = stored_leaders(&zk_client, tables).await;
        let elsewhere = now.values().filter(|e| **e != victim).count();
        if elsewhere as u64 == total {
            break killed_at.elapsed();
        }
        eprintln!(
            "{:.0} s after the kill: {} of {led} partitions still without a new leader",
            killed_at.elapsed().as_secs_f64(),
            total as usize - elsewhere
        );
        assert!(
            killed_at.elapsed() < STAGE_LIMIT,
            "the failover did not finish"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // After the failover: its writes are the ones that grow a chunk.
    let largest = largest_node(&zk_client, tables).await;
    figures.note(
        "failover, partitions led by the killed tablet",
        led.to_string(),
    );
    figures.note(
        "failover, metadata names new leaders",
        format!("{:.1} s", moved.as_secs_f64()),
    );
    // The fake tablets agree: every partition has exactly one leader among the living.
    let leading: usize = fakes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, f)| f.leading())
        .sum();
    assert_eq!(
        leading as u64, total,
        "one leader per partition on the tablets"
    );

    figures.note(
        "ZooKeeper nodes",
        mntr(&cluster.zk, "zk_znode_count").map_or("?".into(), |n| n.to_string()),
    );
    figures.note(
        "ZooKeeper data",
        mntr(&cluster.zk, "zk_approximate_data_size")
            .map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
    );
    figures.note(
        "largest metadata node",
        format!(
            "{:.1} KiB (limit {} KiB)",
            largest as f64 / 1024.0,
            ZK_NODE_LIMIT / 1024
        ),
    );
    figures.note(
        "ZooKeeper watches",
        mntr(&cluster.zk, "zk_watch_count").map_or("?".into(), |n| n.to_string()),
    );
    assert!(
        largest < ZK_NODE_LIMIT,
        "every node is under ZooKeeper's limit"
    );
    figures
}

fn main() {
    tessera_tests::bench::run_and_print(run());
}
