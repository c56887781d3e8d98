//! `tessera-ops --cmd=recoverdata` after the whole cluster went down together: every
//! table comes back with every acknowledged row, every replica alive, and each leader on
//! a replica that had the largest (term, offset), including when the last leader was not
//! the most advanced one. A second run changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tessera_common::auth::AuthChannel;
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::ShowTableRow;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{GetTermPairRequest, TableRole};
use tessera_tests::cluster::{status, wait_in_sync};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows, RoutedWriters, WriterLog};
use tessera_tests::{ops, workload, NameserverProcess, TabletProcess};

const DEADLINE: Duration = Duration::from_secs(60);

async fn start(dir: &std::path::Path) -> NsCluster {
    NsCluster::start(
        dir,
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(2000),
            tablet_args: &["--quorum_timeout=2000"],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await
}

/// The endpoints holding the largest (term, offset) of each partition, asked of the
/// tablets directly.
async fn most_advanced(
    tablets: &[TabletProcess],
    tid: u32,
    partitions: u32,
) -> BTreeMap<u32, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for pid in 0..partitions {
        let mut pairs = Vec::new();
        for tablet in tablets {
            let pair = tablet
                .client()
                .await
                .get_term_pair(GetTermPairRequest { tid, pid })
                .await
                .expect("term pair")
                .into_inner();
            pairs.push((tablet.endpoint.clone(), (pair.last_term, pair.last_offset)));
        }
        let best = pairs.iter().map(|(_, p)| *p).max().unwrap();
        out.insert(
            pid,
            pairs
                .into_iter()
                .filter(|(_, p)| *p == best)
                .map(|(e, _)| e)
                .collect(),
        );
    }
    out
}

/// Every partition has one alive leader, serving as leader, and every replica is alive.
async fn assert_recovered(cluster: &NsCluster, rows: &[ShowTableRow], partitions: u32) {
    assert!(
        rows.iter().all(|r| r.is_alive),
        "every replica alive: {rows:?}"
    );
    let leaders = leaders(rows);
    assert_eq!(leaders.len(), partitions as usize, "{rows:?}");
    for (pid, endpoint) in &leaders {
        let tablet = &cluster.tablets[cluster.tablet_index(endpoint)];
        let state = status(tablet, rows[0].tid, *pid).await;
        assert_eq!(state.role(), TableRole::Leader, "pid {pid} on {endpoint}");
        assert_eq!(
            state.followers.len(),
            2,
            "pid {pid} has both followers back"
        );
    }
}

/// Checks that `leader` holds every row its writer saw acknowledged on `pid`; returns a
/// client of it.
async fn acked_rows_at_leader(
    cluster: &NsCluster,
    leader: &str,
    tid: u32,
    pid: u32,
    logs: &[WriterLog],
) -> TabletClient<AuthChannel> {
    let mut client = cluster.tablets[cluster.tablet_index(leader)].client().await;
    workload::assert_all_acked_present(
        &mut client,
        tid,
        pid,
        u64::from(pid),
        &[logs[pid as usize].acked.clone()],
    )
    .await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recoverdata_brings_back_every_acknowledged_row_after_a_whole_cluster_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path()).await;
    let table = cluster.create_table("t1", 4, 3).await;
    let ns = cluster.ns().await;

    // Writers on every partition, killed in the middle of their work.
    let writers = RoutedWriters::start(&ns, "t1", table.tid, 4);
    writers.wait_acked(800, DEADLINE).await;
    for tablet in &mut cluster.tablets {
        tablet.kill9();
    }
    cluster.nameserver.kill9();
    let logs = writers.finish().await;

    // Everything comes back: tablets first, then a nameserver (auto_failover still on).
    for tablet in &mut cluster.tablets {
        tablet.restart().await;
    }
    let best = most_advanced(&cluster.tablets, table.tid, 4).await;
    cluster.nameserver =
        NameserverProcess::start_with(&dir.path().join("ns2"), &cluster.zk, 2000, &[]).await;
    cluster.nameserver.wait_leader().await;
    cluster.wait_healthy(3).await;

    let out = ops::run_ok(&cluster.zk, "recoverdata", &[]).await;
    eprintln!("{out}");
    assert!(
        out.contains("default.t1"),
        "a summary line for the table:\n{out}"
    );
    let mut ns = cluster.ns().await;
    assert!(
        ops::auto_failover(&mut ns).await,
        "auto_failover is back on, as recoverdata found it"
    );
    let rows = table_rows(&mut ns, "t1").await;
    assert_recovered(&cluster, &rows, 4).await;
    for (pid, leader) in leaders(&rows) {
        assert!(
            best[&pid].contains(&leader),
            "pid {pid} is led by {leader}, not by one of the most advanced {:?}",
            best[&pid]
        );
        acked_rows_at_leader(&cluster, &leader, table.tid, pid, &logs).await;
    }

    // Running it again finds nothing to do.
    let ops_before = ops::op_count(&mut ns).await;
    let again = ops::run_ok(&cluster.zk, "recoverdata", &[]).await;
    assert_eq!(
        again.matches(": healthy").count(),
        4,
        "every partition healthy:\n{again}"
    );
    assert_eq!(
        ops::op_count(&mut ns).await,
        ops_before,
        "no op started:\n{again}"
    );
    assert_eq!(leaders(&table_rows(&mut ns, "t1").await), leaders(&rows));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recoverdata_prefers_the_most_advanced_replica_over_the_last_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path()).await;
    let table = cluster.create_table("t2", 2, 3).await;
    let mut ns = cluster.ns().await;
    tessera_tests::ops::set_auto_failover(&mut ns, false).await;

    const ROWS: u64 = 50;
    let before = leaders(&table_rows(&mut ns, "t2").await);
    for (pid, leader) in &before {
        let mut client = cluster.tablets[cluster.tablet_index(leader)].client().await;
        for seq in 0..ROWS {
            client
                .put(workload::put_request(table.tid, *pid, u64::from(*pid), seq))
                .await
                .expect("put");
        }
        let all: Vec<&TabletProcess> = cluster.tablets.iter().collect();
        wait_in_sync(&all, table.tid, *pid, DEADLINE).await;
    }

    // The power goes out; partition 0's leader loses the end of its last write (a torn
    // record), while its followers have it: they are now the most advanced.
    for tablet in &mut cluster.tablets {
        tablet.kill9();
    }
    let old_leader = before[&0].clone();
    let binlog = cluster.tablets[cluster.tablet_index(&old_leader)]
        .db_root_path
        .join(format!("{}_0", table.tid))
        .join("binlog");
    let last_segment = std::fs::read_dir(&binlog)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .expect("a binlog segment");
    let len = std::fs::metadata(&last_segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last_segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    for tablet in &mut cluster.tablets {
        tablet.restart().await;
    }
    cluster.wait_healthy(3).await;
    let best = most_advanced(&cluster.tablets, table.tid, 2).await;
    assert!(
        !best[&0].contains(&old_leader),
        "the torn tail left the old leader behind: {best:?}"
    );

    // The dry run names the plan and changes nothing.
    let ops_before = ops::op_count(&mut ns).await;
    let plan = ops::run_ok(&cluster.zk, "recoverdata", &["--dry_run"]).await;
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    let chosen = best[&0].iter().next().unwrap();
    assert!(
        plan.contains(&format!(
            "default.t2 pid 0: load {chosen} as leader (term 1, offset {ROWS})"
        )),
        "the plan promotes the most advanced replica:\n{plan}"
    );
    assert_eq!(
        ops::op_count(&mut ns).await,
        ops_before,
        "a dry run starts no op"
    );
    assert_eq!(leaders(&table_rows(&mut ns, "t2").await), before);

    let out = ops::run_ok(&cluster.zk, "recoverdata", &[]).await;
    eprintln!("{out}");
    assert!(
        !ops::auto_failover(&mut ns).await,
        "auto_failover stays off, as found"
    );
    let rows = table_rows(&mut ns, "t2").await;
    assert_recovered(&cluster, &rows, 2).await;
    let after = leaders(&rows);
    assert!(best[&0].contains(&after[&0]), "{out}");
    assert_ne!(after[&0], old_leader);
    for (pid, leader) in &after {
        let mut client = cluster.tablets[cluster.tablet_index(leader)].client().await;
        let every_row: Vec<u64> = (0..ROWS).collect();
        workload::assert_all_acked_present(
            &mut client,
            table.tid,
            *pid,
            u64::from(*pid),
            &[every_row],
        )
        .await;
    }
    // The old leader follows and gets its lost record back.
    let all: Vec<&TabletProcess> = cluster.tablets.iter().collect();
    wait_in_sync(&all, table.tid, 0, DEADLINE).await;

    let ops_before = ops::op_count(&mut ns).await;
    let again = ops::run_ok(&cluster.zk, "recoverdata", &[]).await;
    assert_eq!(again.matches(": healthy").count(), 2, "{again}");
    assert_eq!(ops::op_count(&mut ns).await, ops_before, "{again}");
}

/// A tablet that does not answer (paused) costs the survey one timeout, not one per
/// partition: the dry run over a table of many partitions finishes, says once that the
/// tablet did not answer, and counts its replicas as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_tablet_costs_the_survey_one_timeout() {
    const PARTITIONS: u32 = 24;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start(dir.path()).await;
    cluster.create_table("many", PARTITIONS, 3).await;
    let mut ns = cluster.ns().await;
    tessera_tests::ops::set_auto_failover(&mut ns, false).await;
    let silent = &cluster.tablets[2];
    silent.pause();
    // Asked a replica at a time, each call waiting for its timeout, this would take
    // minutes; asked a tablet at a time, it takes one timeout.
    let (ok, plan) = tokio::time::timeout(
        Duration::from_secs(60),
        ops::run(&cluster.zk, "recoverdata", &["--dry_run"]),
    )
    .await
    .expect("the survey waits for a silent tablet once, not once per partition");
    silent.resume();
    assert!(ok, "{plan}");
    let silent_lines: Vec<&str> = plan
        .lines()
        .filter(|l| l.contains(&silent.endpoint) && l.contains("did not answer"))
        .collect();
    assert_eq!(
        silent_lines.len(),
        1,
        "one line for the silent tablet:\n{plan}"
    );
    for other in &cluster.tablets[..2] {
        assert!(
            plan.contains(&format!("{}: {} replicas", other.endpoint, PARTITIONS)),
            "{} answered for each of its replicas:\n{plan}",
            other.endpoint
        );
    }
    let partition_lines = plan
        .lines()
        .filter(|l| l.starts_with("default.many pid "))
        .count();
    assert_eq!(
        partition_lines, PARTITIONS as usize,
        "a plan per partition:\n{plan}"
    );
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
}

/// After a whole-cluster restart of a cluster at rest, every replica ends where its
/// leader does: recoverdata loads them and they follow the new leaders from the
/// ChangeLeader on, with no RecoverTable, and they replicate what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_in_step_follow_the_new_leader_without_rejoining() {
    const PARTITIONS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = start(dir.path()).await;
    let table = cluster.create_table("t1", PARTITIONS, 3).await;
    let mut ns = cluster.ns().await;
    let writers = RoutedWriters::start(&ns, "t1", table.tid, PARTITIONS);
    writers.wait_acked(150, DEADLINE).await;
    let logs = writers.finish().await;
    {
        let all: Vec<&TabletProcess> = cluster.tablets.iter().collect();
        for pid in 0..PARTITIONS {
            wait_in_sync(&all, table.tid, pid, DEADLINE).await;
        }
    }
    // The nameserver that comes back repairs nothing before recoverdata does.
    ops::set_auto_failover(&mut ns, false).await;
    for tablet in &mut cluster.tablets {
        tablet.kill9();
    }
    cluster.nameserver.kill9();
    for tablet in &mut cluster.tablets {
        tablet.restart().await;
    }
    cluster.nameserver =
        NameserverProcess::start_with(&dir.path().join("ns2"), &cluster.zk, 2000, &[]).await;
    cluster.nameserver.wait_leader().await;
    cluster.wait_healthy(3).await;

    let mut ns = cluster.ns().await;
    let ops_now = |mut ns: NameserverClient<AuthChannel>| async move {
        ns.show_op_status(tessera_proto::nameserver::ShowOpStatusRequest::default())
            .await
            .expect("showopstatus")
            .into_inner()
            .ops
    };
    let last_op_before = ops_now(ns.clone())
        .await
        .iter()
        .map(|op| op.op_id)
        .max()
        .unwrap_or(0);
    let out = ops::run_ok(&cluster.zk, "recoverdata", &[]).await;
    eprintln!("{out}");
    assert_eq!(
        out.matches("; recover nothing").count(),
        PARTITIONS as usize,
        "every partition's other replicas in step:\n{out}"
    );
    let recoveries: Vec<_> = ops_now(ns.clone())
        .await
        .into_iter()
        .filter(|op| op.op_id > last_op_before && op.op_type == "kRecoverTable")
        .collect();
    assert!(
        recoveries.is_empty(),
        "no replica had to rejoin: {recoveries:?}\n{out}"
    );
    let rows = table_rows(&mut ns, "t1").await;
    assert_recovered(&cluster, &rows, PARTITIONS).await;
    for (pid, leader) in leaders(&rows) {
        let mut client = acked_rows_at_leader(&cluster, &leader, table.tid, pid, &logs).await;
        // A new write is acknowledged by a majority, and every follower takes it.
        client
            .put(workload::put_request(table.tid, pid, 99, 1))
            .await
            .unwrap_or_else(|e| panic!("a write to pid {pid} after recoverdata: {}", e.message()));
        let all: Vec<&TabletProcess> = cluster.tablets.iter().collect();
        wait_in_sync(&all, table.tid, pid, DEADLINE).await;
    }
    // Running it again finds nothing to do.
    let again = ops::run_ok(&cluster.zk, "recoverdata", &[]).await;
    assert_eq!(
        again.matches(": healthy").count(),
        PARTITIONS as usize,
        "every partition healthy:\n{again}"
    );
}
