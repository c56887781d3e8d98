//! Failover time: from `kill -9` of a tablet leading partitions to the first acknowledged
//! write on each partition it led, with default settings (10 s ZooKeeper sessions),
//! over several runs. `scripts/bench-failover.sh` builds the binaries and runs it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{self, leaders, table_rows};
use tessera_tests::wait_until_async;

const PARTITIONS: u32 = 4;
const WAIT: Duration = Duration::from_secs(120);

/// One cluster, one failure; the failover time of each partition the victim led.
async fn one_run() -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    // Default settings: 10 s sessions everywhere.
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::defaults()).await;
    let mut ns = cluster.ns().await;
    let table = cluster.create_table("bench", PARTITIONS, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..PARTITIONS)
        .map(|pid| {
            routed::spawn(
                ns.clone(),
                "bench",
                table.tid,
                pid,
                stop.clone(),
                acked.clone(),
            )
        })
        .collect();
    let reached = |n: u64| {
        let acked = acked.clone();
        move || {
            let done = acked.load(Ordering::Relaxed) >= n;
            async move { done }
        }
    };
    wait_until_async(WAIT, "writes before the failure", reached(200)).await;

    let before = leaders(&table_rows(&mut ns, "bench").await);
    let victim = before[&0].clone();
    let led: Vec<u32> = before
        .iter()
        .filter(|(_, e)| **e == victim)
        .map(|(p, _)| *p)
        .collect();
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();
    let killed_at = Instant::now();
    wait_until_async(WAIT, "new leaders for the victim's partitions", || {
        let mut ns = ns.clone();
        let (victim, led) = (victim.clone(), led.clone());
        async move {
            let now = leaders(&table_rows(&mut ns, "bench").await);
            led.iter()
                .all(|pid| now.get(pid).is_some_and(|e| *e != victim))
        }
    })
    .await;
    let after = acked.load(Ordering::Relaxed);
    wait_until_async(WAIT, "writes after the failover", reached(after + 200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for (pid, writer) in writers.into_iter().enumerate() {
        let log = writer.await.unwrap();
        if led.contains(&(pid as u32)) {
            if let Some(first) = log.acked_at.iter().find(|t| **t > killed_at) {
                samples.push(first.duration_since(killed_at));
            }
        }
    }
    samples
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut samples = Vec::new();
    for run in 1..=runs {
        let got = runtime.block_on(one_run());
        eprintln!("run {run}/{runs}: {:?}", got);
        samples.extend(got);
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "failover (kill -9 of a leader tablet -> first acknowledged write per partition): \
         runs={runs} partitions={} median={:.2}s min={:.2}s max={:.2}s",
        samples.len(),
        median.as_secs_f64(),
        samples[0].as_secs_f64(),
        samples[samples.len() - 1].as_secs_f64()
    );
}
