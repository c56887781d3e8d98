//! Seeded fault schedules against a cluster of separate hosts (network namespaces on a
//! bridge of the test's own: a three-member ZooKeeper ensemble, two nameservers, four
//! tablets, three client hosts). Processes are killed and paused, hosts partitioned,
//! ZooKeeper's quorum lost, a disk filled, the whole cluster killed and recovered with
//! `recoverdata`, while SDK clients put, delete, scan (also from followers) and count.
//! Each history and the final state then go through the checker.
//!
//! `CHAOS_SEEDS=1,2,3` picks the schedules, `CHAOS_STEPS=<n>` their length,
//! `CHAOS_MINUTES=<m>` runs each for that long instead; each run's history, fault
//! record, report and process logs go to `CHAOS_OUT/seed-<n>` (default
//! `target/chaos/seed-<n>`). Needs root (scripts/test.sh and scripts/chaos.sh run as it).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_common::Value;
use tessera_ns_client::{Client, ClientOptions};
use tessera_proto::tablet::{GetTableStatusRequest, GetTermPairRequest, TableRole};
use tessera_tests::bench::env_or;
use tessera_tests::chaos::checker::check;
use tessera_tests::chaos::history::{write_history, FinalState, Op, OpKind, Outcome, PartitionEnd};
use tessera_tests::chaos::record::{summary, write_faults, writes_after, FaultRecord, RunSummary};
use tessera_tests::chaos::schedule::{schedule, Fault, Layout, Rng};
use tessera_tests::netbed::{NetCluster, NetClusterSpec, Node};
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::wait::poll_until_async;
use tessera_tests::workload::sdk_row;

const TABLE: &str = "chaos";
const KEYS: u64 = 8;
const PARTITIONS: u32 = 2;
const SESSION: Duration = Duration::from_secs(3);
const HEAL: Duration = Duration::from_secs(180);
const SMALL_DISK: u64 = 256 << 20;

fn values_of(rows: &[Vec<Value>]) -> Vec<i64> {
    rows.iter()
        .filter_map(|row| match row.get(1) {
            Some(Value::Int64(v)) => Some(*v),
            _ => None,
        })
        .collect()
}

fn key_value(key: &str) -> Vec<Value> {
    vec![Value::String(key.into())]
}

/// Shared by the clients of one run.
#[derive(Clone)]
struct Workload {
    zk: String,
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
    next_id: Arc<AtomicU64>,
}

impl Workload {
    fn micros(&self, at: Instant) -> u64 {
        at.duration_since(self.start).as_micros() as u64
    }
}

/// One client, on its own host: random operations until `stop`, each recorded.
async fn client(workload: Workload, id: u32) {
    let sdk = loop {
        let options = ClientOptions {
            deadline: SESSION,
            ..ClientOptions::default()
        };
        match Client::connect_with(&workload.zk, "/tessera", options).await {
            Ok(sdk) => break sdk,
            Err(_) if !workload.stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(_) => return,
        }
    };
    let mut rng = Rng::new(workload.seed ^ (u64::from(id) << 32));
    let mut written = 0i64;
    while !workload.stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.below(KEYS));
        let invoked = Instant::now();
        // The SDK cannot tell a write that never happened from one whose answer was lost:
        // a failed write is recorded as possibly applied.
        let written_outcome = |ok: bool| if ok { Outcome::Ok } else { Outcome::Unknown };
        // Deletes are rare: a row is only checked against the final state when no delete
        // of its key may have followed it.
        let (kind, outcome) = match rng.below(1000) {
            0..=549 => {
                written += 1;
                let value = i64::from(id + 1) * 1_000_000 + written;
                let result = sdk.put("default", TABLE, sdk_row(&key, value)).await;
                (OpKind::Put { key, value }, written_outcome(result.is_ok()))
            }
            550..=551 => {
                let result = sdk.delete("default", TABLE, key_value(&key)).await;
                (OpKind::Delete { key }, written_outcome(result.is_ok()))
            }
            552..=599 => match sdk.get("default", TABLE, key_value(&key)).await {
                Ok(row) => (
                    OpKind::Get {
                        key,
                        value: row.and_then(|r| values_of(&[r]).first().copied()),
                    },
                    Outcome::Ok,
                ),
                Err(_) => (OpKind::Get { key, value: None }, Outcome::Failed),
            },
            600..=799 => match sdk
                .scan("default", TABLE, key_value(&key), None, None, 0)
                .await
            {
                Ok(rows) => (
                    OpKind::Scan {
                        key,
                        rows: values_of(&rows),
                    },
                    Outcome::Ok,
                ),
                Err(_) => (OpKind::Scan { key, rows: vec![] }, Outcome::Failed),
            },
            800..=899 => match sdk
                .scan_from_follower("default", TABLE, key_value(&key))
                .await
            {
                Ok(Some(read)) => (
                    OpKind::FollowerScan {
                        key,
                        min_offset: read.min_offset,
                        offset: read.offset,
                        rows: values_of(&read.value),
                    },
                    Outcome::Ok,
                ),
                _ => (
                    OpKind::FollowerScan {
                        key,
                        min_offset: 0,
                        offset: 0,
                        rows: vec![],
                    },
                    Outcome::Failed,
                ),
            },
            _ => match sdk.count("default", TABLE, key_value(&key)).await {
                Ok(count) => (OpKind::Count { key, count }, Outcome::Ok),
                Err(_) => (OpKind::Count { key, count: 0 }, Outcome::Failed),
            },
        };
        let op = Op {
            id: workload.next_id.fetch_add(1, Ordering::Relaxed),
            client: id,
            invoked_us: workload.micros(invoked),
            completed_us: workload.micros(Instant::now()),
            outcome,
            kind,
        };
        workload.history.lock().push(op);
    }
}

/// The bed's host indices of `nodes`.
fn hosts(cluster: &NetCluster, nodes: &[Node]) -> Vec<usize> {
    nodes.iter().map(|n| cluster.host_index(*n)).collect()
}

/// Injects `fault`, holds it, and lifts it. Returns when the fault was in place (a disk
/// takes a moment to fill) and the problems met (a repair that failed).
async fn inject(cluster: &mut NetCluster, fault: &Fault) -> (Instant, Vec<String>) {
    let mut problems = Vec::new();
    let mut in_place = Instant::now();
    let all = hosts(cluster, &cluster.nodes());
    match fault {
        Fault::Kill { node, hold } => {
            cluster.process(*node).kill9();
            tokio::time::sleep(*hold).await;
            cluster.process(*node).restart();
        }
        Fault::Pause { node, hold } => {
            cluster.process(*node).pause();
            tokio::time::sleep(*hold).await;
            cluster.process(*node).resume();
        }
        Fault::KillTwoTablets { tablets, hold } => {
            cluster.tablets[tablets.0].kill9();
            cluster.tablets[tablets.1].kill9();
            tokio::time::sleep(*hold).await;
            cluster.tablets[tablets.0].restart();
            cluster.tablets[tablets.1].restart();
        }
        Fault::Isolate { node, hold } => {
            let alone = cluster.host_index(*node);
            let rest: Vec<usize> = all.iter().copied().filter(|h| *h != alone).collect();
            cluster.network.split(&[alone], &rest);
            tokio::time::sleep(*hold).await;
            cluster.network.heal();
        }
        Fault::Split { minority, hold } => {
            let few = hosts(cluster, minority);
            let rest: Vec<usize> = all.iter().copied().filter(|h| !few.contains(h)).collect();
            cluster.network.split(&few, &rest);
            tokio::time::sleep(*hold).await;
            cluster.network.heal();
        }
        Fault::OneWay { from, to, hold } => {
            let pair = (cluster.host_index(*from), cluster.host_index(*to));
            cluster.network.block(&[pair]);
            tokio::time::sleep(*hold).await;
            cluster.network.heal();
        }
        Fault::Bridge {
            left, right, hold, ..
        } => {
            let (left, right) = (hosts(cluster, left), hosts(cluster, right));
            cluster.network.split(&left, &right);
            tokio::time::sleep(*hold).await;
            cluster.network.heal();
        }
        Fault::ZooKeeperQuorumLoss { hold } => {
            cluster.zookeepers[1].kill9();
            cluster.zookeepers[2].kill9();
            tokio::time::sleep(*hold).await;
            cluster.zookeepers[1].restart();
            cluster.zookeepers[2].restart();
        }
        Fault::FullDisk { hold } => {
            let filler = tokio::task::block_in_place(|| cluster.fill_small_disk());
            in_place = Instant::now();
            tokio::time::sleep(*hold).await;
            std::fs::remove_file(&filler).expect("free the disk");
        }
        Fault::WholeCluster => {
            // Tablets first: the data plane stops at once (ZooKeeper going first would
            // leave the tablets serving out their leases).
            for node in cluster.nodes().into_iter().rev() {
                cluster.process(node).kill9();
            }
            in_place = Instant::now();
            for node in cluster.nodes() {
                cluster.process(node).restart();
            }
            cluster.wait_zookeeper_quorum().await;
            cluster.wait_healthy().await;
            let (ok, output) = cluster.ops("recoverdata", &[]).await;
            if !ok {
                problems.push(format!("recoverdata failed:\n{output}"));
            }
        }
    }
    (in_place, problems)
}

/// Every partition's leaders and log ends, as the tablets report them.
async fn partition_ends(cluster: &NetCluster) -> Vec<PartitionEnd> {
    let mut ns = cluster.ns().await;
    let rows = table_rows(&mut ns, TABLE).await;
    let mut ends: Vec<PartitionEnd> = (0..PARTITIONS)
        .map(|pid| PartitionEnd {
            pid,
            ..Default::default()
        })
        .collect();
    for row in rows {
        let Ok(mut client) = tessera_tests::tablet_client(&row.endpoint).await else {
            continue;
        };
        let end = &mut ends[row.pid as usize];
        if let Ok(status) = client
            .get_table_status(GetTableStatusRequest {
                tid: Some(row.tid),
                pid: Some(row.pid),
            })
            .await
        {
            if status
                .into_inner()
                .tables
                .first()
                .is_some_and(|s| s.role() == TableRole::Leader && !s.fenced)
            {
                end.leaders.push(row.endpoint.clone());
            }
        }
        if let Ok(pair) = client
            .get_term_pair(GetTermPairRequest {
                tid: row.tid,
                pid: row.pid,
            })
            .await
        {
            let pair = pair.into_inner();
            end.log_ends
                .push((row.endpoint.clone(), pair.last_term, pair.last_offset));
        }
    }
    ends
}

/// Waits until every replica is alive and agrees with the metadata, every partition has
/// a leader, and each partition's replicas end at the same record. `Err` says what is
/// still wrong after [`HEAL`].
async fn wait_healed(cluster: &NetCluster) -> Result<(), String> {
    cluster.wait_zookeeper_quorum().await;
    cluster.wait_healthy().await;
    let healed = poll_until_async(HEAL, || async {
        let mut ns = cluster.ns().await;
        let rows = table_rows(&mut ns, TABLE).await;
        let agreed = !rows.is_empty()
            && rows.iter().all(|r| r.is_alive && r.drift.is_empty())
            && leaders(&rows).len() == PARTITIONS as usize;
        agreed
            && partition_ends(cluster).await.iter().all(|p| {
                p.log_ends
                    .iter()
                    .map(|e| (e.1, e.2))
                    .collect::<BTreeSet<_>>()
                    .len()
                    == 1
            })
    })
    .await;
    if healed {
        return Ok(());
    }
    let mut ns = cluster.ns().await;
    Err(format!(
        "not healed after {HEAL:?}: showtable {:#?}\nends {:#?}",
        table_rows(&mut ns, TABLE).await,
        partition_ends(cluster).await
    ))
}

async fn run_schedule(seed: u64, out: &Path) -> RunSummary {
    let steps = env_or::<usize>("CHAOS_STEPS", 6);
    let minutes: u64 = env_or("CHAOS_MINUTES", 0);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NetCluster::start(
        dir.path(),
        NetClusterSpec {
            small_disk_bytes: Some(SMALL_DISK),
            ..NetClusterSpec::default()
        },
    )
    .await;
    cluster.create_table(TABLE, PARTITIONS, 3).await;
    let layout = Layout {
        zookeepers: cluster.zookeepers.len(),
        nameservers: cluster.nameservers.len(),
        tablets: cluster.tablets.len(),
        small_disk: cluster.small_disk().is_some(),
    };
    // A timed run draws from a schedule long enough to outlast it.
    let plan = schedule(
        seed,
        if minutes > 0 { 10_000 } else { steps },
        layout,
        SESSION,
    );
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    println!(
        "chaos seed {seed}: {}",
        if minutes > 0 {
            format!("{minutes} minutes")
        } else {
            format!("{steps} steps")
        }
    );

    let operator = Client::connect(&cluster.zk_connect_string(), "/tessera")
        .await
        .expect("connect the operator's SDK");
    let mut partition_of = HashMap::new();
    for k in 0..KEYS {
        let key = format!("k{k}");
        let pid = operator
            .partition_of("default", TABLE, &sdk_row(&key, 0))
            .await
            .expect("partition of a key");
        partition_of.insert(key, pid);
    }

    let workload = Workload {
        zk: cluster.zk_connect_string(),
        seed,
        start: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
        history: Arc::new(Mutex::new(Vec::new())),
        next_id: Arc::new(AtomicU64::new(1)),
    };
    let clients: Vec<_> = (0..cluster.clients.len())
        .map(|id| {
            let workload = workload.clone();
            cluster.on_client_host(id, move || client(workload, id as u32))
        })
        .collect();

    let mut records = Vec::new();
    let mut problems = Vec::new();
    for (i, step) in plan.iter().enumerate() {
        if minutes > 0 && Instant::now() >= deadline {
            break;
        }
        println!("  {i}: {}, then {:?} of calm", step.fault, step.settle);
        let (in_place, met) = inject(&mut cluster, &step.fault).await;
        let injected = workload.micros(in_place);
        problems.extend(met);
        for (node, how) in cluster.restart_stopped() {
            problems.push(format!("step {i}: {node} exited on its own ({how})"));
        }
        records.push(FaultRecord {
            seed,
            step: i,
            kind: step.fault.name().into(),
            description: step.fault.to_string(),
            injected_us: injected,
            healed_us: workload.micros(Instant::now()),
            writes_after_us: None,
        });
        tokio::time::sleep(step.settle).await;
    }
    let faults_over = Instant::now();
    let healed = wait_healed(&cluster).await;
    println!("healed {:?} after the last fault", faults_over.elapsed());
    // A few seconds of writes on the healed cluster, so the last fault's time to writes
    // is measured.
    tokio::time::sleep(Duration::from_secs(3)).await;
    workload.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client thread panicked");
    }
    if let Err(why) = healed {
        problems.push(why);
    }

    let history = std::mem::take(&mut *workload.history.lock());
    for record in &mut records {
        record.writes_after_us =
            writes_after(&history, record.injected_us, &partition_of, PARTITIONS);
    }
    let mut end = FinalState {
        partitions: partition_ends(&cluster).await,
        ..Default::default()
    };
    let reader = Client::connect_with(
        &cluster.zk_connect_string(),
        "/tessera",
        ClientOptions {
            deadline: Duration::from_secs(30),
            ..ClientOptions::default()
        },
    )
    .await
    .expect("connect the final reader");
    for k in 0..KEYS {
        let key = format!("k{k}");
        match reader
            .scan("default", TABLE, key_value(&key), None, None, 0)
            .await
        {
            Ok(rows) => {
                end.rows.insert(key, values_of(&rows));
            }
            Err(e) => problems.push(format!("final scan of {key}: {e}")),
        }
    }

    let report = check(&history, &end);
    std::fs::create_dir_all(out).unwrap();
    write_history(&out.join("history.jsonl"), &history).unwrap();
    write_faults(&out.join("faults.jsonl"), &records).unwrap();
    std::fs::write(
        out.join("final.json"),
        serde_json::to_string_pretty(&end).unwrap(),
    )
    .unwrap();
    let mut text = format!(
        "seed {seed}: {} faults, {} operations\n\n{}\n\n{}\n",
        records.len(),
        history.len(),
        report.render(),
        summary(&records)
    );
    for problem in &problems {
        text.push_str(&format!("\nproblem: {problem}\n"));
    }
    std::fs::write(out.join("report.txt"), &text).unwrap();
    cluster.copy_logs(&out.join("logs"));
    println!("{text}");

    let acked_puts = history
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Put { .. }) && op.outcome == Outcome::Ok)
        .count();
    if acked_puts == 0 {
        problems.push("the workload wrote nothing".into());
    }
    let result = RunSummary {
        seed,
        faults: records.len(),
        operations: history.len(),
        anomalies: report.anomalies.len(),
        problems,
    };
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .unwrap();
    result
}

/// The suite runs seeds 1 to 3 (six faults each); `scripts/chaos.sh` runs more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_fault_schedules_break_no_promise() {
    let seeds: Vec<u64> = std::env::var("CHAOS_SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let root = std::env::var("CHAOS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos"));
    let mut failed = Vec::new();
    for seed in seeds {
        let out = root.join(format!("seed-{seed}"));
        let result = run_schedule(seed, &out).await;
        println!(
            "seed {}: {} faults, {} operations, {} anomalies, {} problems ({})",
            result.seed,
            result.faults,
            result.operations,
            result.anomalies,
            result.problems.len(),
            out.display()
        );
        if !result.passed() {
            failed.push((result, out));
        }
    }
    assert!(
        failed.is_empty(),
        "{}",
        failed
            .iter()
            .map(|(r, out)| format!(
                "seed {} (replay with CHAOS_SEEDS={}): {} anomalies, problems: {:?}; see {}/report.txt",
                r.seed,
                r.seed,
                r.anomalies,
                r.problems,
                out.display()
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
