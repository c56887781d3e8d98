//! `tessera-ops` moving replicas and leaders on a live cluster: scalein empties a tablet
//! while writes go on and loses no row, scaleout spreads replicas back, and
//! pre-upgrade / post-upgrade move a tablet's leaders away and back around a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tessera_tests::cluster::{rows_checksum, wait_in_sync};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows, RoutedWriters};
use tessera_tests::{ops, workload, TabletProcess};

const DEADLINE: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path, tablets: usize) -> NsCluster {
    NsCluster::start(
        dir,
        NsClusterSpec {
            tablets,
            tablet_session_ms: Some(2000),
            tablet_args: &["--quorum_timeout=2000"],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scalein_empties_a_tablet_under_writes_and_scaleout_fills_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path(), 4).await;
    let table = cluster.create_table("t3", 4, 3).await;
    let mut ns = cluster.ns().await;
    let leaving = cluster.tablets[0].endpoint.clone();
    let rows = table_rows(&mut ns, "t3").await;
    assert!(
        rows.iter().any(|r| r.endpoint == leaving),
        "the tablet holds replicas to move"
    );

    let writers = RoutedWriters::start(&ns, "t3", table.tid, 4);
    writers.wait_acked(200, DEADLINE).await;

    let out = ops::run_ok(&cluster.zk, "scalein", &[&format!("--endpoints={leaving}")]).await;
    assert!(out.contains("hold no replica"), "{out}");
    writers.wait_acked(writers.acked() + 100, DEADLINE).await;
    let logs = writers.finish().await;

    assert!(
        ops::auto_failover(&mut ns).await,
        "auto_failover is on again"
    );
    let rows = table_rows(&mut ns, "t3").await;
    assert!(
        rows.iter().all(|r| r.endpoint != leaving),
        "no replica left on {leaving}: {rows:?}"
    );
    assert!(rows.iter().all(|r| r.is_alive), "{rows:?}");
    assert_eq!(rows.len(), 12, "every partition keeps three replicas");
    for (pid, leader) in leaders(&rows) {
        let mut client = cluster.tablets[cluster.tablet_index(&leader)]
            .client()
            .await;
        workload::assert_all_acked_present(
            &mut client,
            table.tid,
            pid,
            u64::from(pid),
            &[logs[pid as usize].acked.clone()],
        )
        .await;
        // Every replica holds the same rows.
        let replicas: Vec<&TabletProcess> = rows
            .iter()
            .filter(|r| r.pid == pid)
            .map(|r| &cluster.tablets[cluster.tablet_index(&r.endpoint)])
            .collect();
        wait_in_sync(&replicas, table.tid, pid, DEADLINE).await;
        let sums: BTreeSet<(usize, u64)> = {
            let mut sums = BTreeSet::new();
            for replica in &replicas {
                sums.insert(rows_checksum(replica, table.tid, pid).await);
            }
            sums
        };
        assert_eq!(sums.len(), 1, "pid {pid}: replicas differ: {sums:?}");
    }

    // The emptied tablet is still healthy: scaleout spreads replicas back onto it.
    let out = ops::run_ok(&cluster.zk, "scaleout", &[]).await;
    let rows = table_rows(&mut ns, "t3").await;
    let mut per_tablet: BTreeMap<&str, usize> = BTreeMap::new();
    for row in &rows {
        *per_tablet.entry(row.endpoint.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_tablet.values().copied().collect::<Vec<_>>(),
        [3, 3, 3, 3],
        "12 replicas over 4 tablets:\n{out}"
    );
    assert!(rows.iter().all(|r| r.is_alive), "{rows:?}");
    let again = ops::run_ok(&cluster.zk, "scaleout", &[]).await;
    assert!(again.contains("balanced"), "{again}");

    // The read-only views.
    let status = ops::run_ok(&cluster.zk, "showtablestatus", &[]).await;
    let line = status
        .lines()
        .find(|l| l.contains("| t3"))
        .expect("a line for t3");
    assert!(
        line.contains("healthy") && line.contains("| 12 "),
        "{status}"
    );
    let done = ops::run_ok(&cluster.zk, "showopstatus", &["--filter=kDone"]).await;
    assert!(
        done.contains("kMigrate") && !done.contains("kFailed"),
        "{done}"
    );
    let (ok, bad) = ops::run(&cluster.zk, "showopstatus", &["--filter=kBogus"]).await;
    assert!(!ok && bad.contains("unknown op status `kBogus`"), "{bad}");
    let (ok, bad) = ops::run(&cluster.zk, "changeleader", &[]).await;
    assert!(!ok && bad.contains("exactly one of --from"), "{bad}");
    let (ok, bad) = ops::run(&cluster.zk, "scalein", &[]).await;
    assert!(!ok && bad.contains("needs --endpoints"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_upgrade_and_post_upgrade_move_leaders_away_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path(), 3).await;
    cluster.create_table("t4", 3, 3).await;
    let mut ns = cluster.ns().await;
    let before = leaders(&table_rows(&mut ns, "t4").await);
    let target = before[&0].clone();
    let led: BTreeSet<u32> = before
        .iter()
        .filter(|(_, e)| **e == target)
        .map(|(p, _)| *p)
        .collect();

    let out = ops::run_ok(
        &cluster.zk,
        "pre-upgrade",
        &[&format!("--endpoints={target}")],
    )
    .await;
    assert!(
        out.contains(&format!("no leader left on {target}")),
        "{out}"
    );
    let during = leaders(&table_rows(&mut ns, "t4").await);
    assert_eq!(during.len(), 3, "every partition has a leader: {during:?}");
    assert!(during.values().all(|e| *e != target), "{during:?}");

    // The upgrade: the tablet stops cleanly and starts again.
    let index = cluster.tablet_index(&target);
    cluster.tablets[index].terminate(DEADLINE);
    cluster.tablets[index].restart().await;

    let out = ops::run_ok(&cluster.zk, "post-upgrade", &[]).await;
    assert!(out.contains("upgrade finished"), "{out}");
    let rows = table_rows(&mut ns, "t4").await;
    assert!(rows.iter().all(|r| r.is_alive), "{rows:?}\n{out}");
    let after = leaders(&rows);
    let led_after: BTreeSet<u32> = after
        .iter()
        .filter(|(_, e)| **e == target)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(led_after, led, "{target} leads what it led before:\n{out}");
    let (_, nothing) = ops::run(&cluster.zk, "post-upgrade", &[]).await;
    assert!(nothing.contains("no pre-upgrade record"), "{nothing}");
}
