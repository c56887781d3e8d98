//! A seeded fault schedule against a real cluster on loopback (tablets killed, paused
//! shorter and longer than their sessions, ZooKeeper paused, two tablets killed at once)
//! while SDK clients put, delete, scan and count; the history and the final state then go
//! through the checker. `CHAOS_SEED=<n>` replays a schedule, `CHAOS_STEPS=<n>` lengthens
//! it, `CHAOS_OUT=<dir>` keeps the history and the report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_common::Value;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{GetTableStatusRequest, GetTermPairRequest, TableRole};
use tessera_tests::chaos::checker::check;
use tessera_tests::chaos::history::{write_history, FinalState, Op, OpKind, Outcome, PartitionEnd};
use tessera_tests::chaos::schedule::{schedule, Fault, Rng};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::wait_until_async;
use tessera_tests::workload::sdk_row;

const TABLE: &str = "chaos";
const KEYS: u64 = 6;
const CLIENTS: u32 = 3;
const PARTITIONS: u32 = 2;
const HEAL: Duration = Duration::from_secs(120);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn values_of(rows: &[Vec<Value>]) -> Vec<i64> {
    rows.iter()
        .filter_map(|row| match row.get(1) {
            Some(Value::Int64(v)) => Some(*v),
            _ => None,
        })
        .collect()
}

/// One client: random operations until `stop`, each recorded in `history`.
async fn client(
    cluster_sdk: tessera_ns_client::Client,
    id: u32,
    seed: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut rng = Rng::new(seed ^ (u64::from(id) << 32));
    let mut written = 0i64;
    let micros = |at: Instant| at.duration_since(start).as_micros() as u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.below(KEYS));
        let invoked = Instant::now();
        // Deletes are rare: a row is only checked against the final state when no delete
        // of its key may have followed it.
        let (kind, outcome) = match rng.below(1000) {
            0..=599 => {
                written += 1;
                let value = i64::from(id + 1) * 1_000_000 + written;
                let result = cluster_sdk
                    .put("default", TABLE, sdk_row(&key, value))
                    .await;
                let outcome = if result.is_ok() {
                    Outcome::Ok
                } else {
                    // The SDK cannot tell a write that never happened from one whose
                    // answer was lost: the checker treats it as possibly applied.
                    Outcome::Unknown
                };
                (OpKind::Put { key, value }, outcome)
            }
            600..=601 => {
                let result = cluster_sdk
                    .delete("default", TABLE, vec![Value::String(key.clone())])
                    .await;
                let outcome = if result.is_ok() {
                    Outcome::Ok
                } else {
                    Outcome::Unknown
                };
                (OpKind::Delete { key }, outcome)
            }
            602..=899 => {
                match cluster_sdk
                    .scan(
                        "default",
                        TABLE,
                        vec![Value::String(key.clone())],
                        None,
                        None,
                        0,
                    )
                    .await
                {
                    Ok(rows) => (
                        OpKind::Scan {
                            key,
                            rows: values_of(&rows),
                        },
                        Outcome::Ok,
                    ),
                    Err(_) => (
                        OpKind::Scan {
                            key,
                            rows: Vec::new(),
                        },
                        Outcome::Failed,
                    ),
                }
            }
            _ => match cluster_sdk
                .count("default", TABLE, vec![Value::String(key.clone())])
                .await
            {
                Ok(count) => (OpKind::Count { key, count }, Outcome::Ok),
                Err(_) => (OpKind::Count { key, count: 0 }, Outcome::Failed),
            },
        };
        let op = Op {
            id: next_id.fetch_add(1, Ordering::Relaxed),
            client: id,
            invoked_us: micros(invoked),
            completed_us: micros(Instant::now()),
            outcome,
            kind,
        };
        history.lock().push(op);
    }
}

/// Waits until every replica of the table is alive, agrees with the metadata, and every
/// partition has a leader; then until each partition's replicas end at the same record.
async fn wait_healed(cluster: &NsCluster) {
    cluster.wait_healthy(cluster.tablets.len()).await;
    let ns = cluster.ns().await;
    wait_until_async(HEAL, "every replica back and in agreement", || {
        let mut ns = ns.clone();
        async move {
            let rows = table_rows(&mut ns, TABLE).await;
            !rows.is_empty()
                && rows.iter().all(|r| r.is_alive && r.drift.is_empty())
                && leaders(&rows).len() == PARTITIONS as usize
        }
    })
    .await;
    wait_until_async(
        HEAL,
        "every partition's replicas to end at one record",
        || async {
            partition_ends(cluster).await.iter().all(|p| {
                p.log_ends
                    .iter()
                    .map(|e| (e.1, e.2))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == 1
            })
        },
    )
    .await;
}

/// Every partition's leaders and log ends, as the tablets report them.
async fn partition_ends(cluster: &NsCluster) -> Vec<PartitionEnd> {
    let mut ns = cluster.ns().await;
    let rows = table_rows(&mut ns, TABLE).await;
    let mut ends: Vec<PartitionEnd> = (0..PARTITIONS)
        .map(|pid| PartitionEnd {
            pid,
            ..Default::default()
        })
        .collect();
    for row in rows {
        let Ok(mut client) = TabletClient::connect(format!("http://{}", row.endpoint)).await else {
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
                .is_some_and(|s| s.role() == TableRole::Leader)
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

/// The suite runs seed 1 (six steps, under a minute); `scripts/chaos.sh` runs more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_fault_schedule_breaks_no_promise() {
    let seed = env_or("CHAOS_SEED", 1);
    let steps = env_or("CHAOS_STEPS", 6) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 4,
            ..NsClusterSpec::fast_failover()
        },
    )
    .await;
    cluster.create_table(TABLE, PARTITIONS, 3).await;
    let plan = schedule(seed, steps, cluster.tablets.len(), Duration::from_secs(3));
    println!("chaos seed {seed}, {steps} steps:");
    for (i, step) in plan.iter().enumerate() {
        println!("  {i}: {}, then {:?} of calm", step.fault, step.settle);
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let sdk = cluster.sdk(Duration::from_secs(3)).await;
        clients.push(tokio::spawn(client(
            sdk,
            id,
            seed,
            start,
            stop.clone(),
            history.clone(),
            next_id.clone(),
        )));
    }

    for step in &plan {
        match &step.fault {
            Fault::KillTablet { tablet, hold } => {
                cluster.tablets[*tablet].kill9();
                tokio::time::sleep(*hold).await;
                cluster.tablets[*tablet].restart().await;
            }
            Fault::PauseTablet { tablet, hold } => {
                cluster.tablets[*tablet].pause();
                tokio::time::sleep(*hold).await;
                cluster.tablets[*tablet].resume();
            }
            Fault::PauseZooKeeper { hold } => {
                cluster.zk.pause();
                tokio::time::sleep(*hold).await;
                cluster.zk.resume();
            }
            Fault::KillTwoTablets { tablets, hold } => {
                cluster.tablets[tablets.0].kill9();
                cluster.tablets[tablets.1].kill9();
                tokio::time::sleep(*hold).await;
                cluster.tablets[tablets.0].restart().await;
                cluster.tablets[tablets.1].restart().await;
            }
        }
        tokio::time::sleep(step.settle).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let faults_over = Instant::now();
    wait_healed(&cluster).await;
    println!("healed {:?} after the last fault", faults_over.elapsed());
    let reader = cluster.sdk(Duration::from_secs(30)).await;
    let mut end = FinalState {
        partitions: partition_ends(&cluster).await,
        ..Default::default()
    };
    for k in 0..KEYS {
        let key = format!("k{k}");
        let rows = reader
            .scan(
                "default",
                TABLE,
                vec![Value::String(key.clone())],
                None,
                None,
                0,
            )
            .await
            .unwrap_or_else(|e| panic!("final scan of {key}: {e}"));
        end.rows.insert(key, values_of(&rows));
    }

    let history = std::mem::take(&mut *history.lock());
    let report = check(&history, &end);
    let out = std::env::var("CHAOS_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("chaos"));
    std::fs::create_dir_all(&out).unwrap();
    write_history(&out.join("history.jsonl"), &history).unwrap();
    std::fs::write(out.join("report.txt"), report.render()).unwrap();
    println!("{}", report.render());
    let acked_puts = history
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Put { .. }) && op.outcome == Outcome::Ok)
        .count();
    assert!(acked_puts > 0, "the workload wrote nothing");
    assert!(
        report.is_clean(),
        "seed {seed}: {} anomalies (replay with CHAOS_SEED={seed}):\n{}",
        report.anomalies.len(),
        report.render()
    );
}
