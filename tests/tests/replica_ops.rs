//! The replica-changing commands of the nameserver with real processes: addreplica,
//! delreplica, migrate, updatetablealive, makesnapshot, and snapshots on a schedule.

use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::*;
use tessera_proto::tablet::{GetTableStatusRequest, ReplicationMode, TableStatus};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::wait_until_async;
use tessera_tests::workload;

const WAIT: Duration = Duration::from_secs(60);

async fn rows(ns: &mut NameserverClient<AuthChannel>, pid: u32) -> Vec<ShowTableRow> {
    ns.show_table(ShowTableRequest {
        db: String::new(),
        name: "t1".into(),
    })
    .await
    .map(|r| {
        r.into_inner()
            .rows
            .into_iter()
            .filter(|row| row.pid == pid)
            .collect()
    })
    .unwrap_or_default()
}

async fn wait_done(ns: &NameserverClient<AuthChannel>, started: Vec<OpInfo>, what: &str) {
    let ids: Vec<u64> = started.iter().map(|op| op.op_id).collect();
    wait_until_async(WAIT, what, || {
        let mut ns = ns.clone();
        let ids = ids.clone();
        async move {
            let ops = ns
                .show_op_status(ShowOpStatusRequest::default())
                .await
                .unwrap()
                .into_inner()
                .ops;
            let failed: Vec<_> = ops
                .iter()
                .filter(|op| ids.contains(&op.op_id) && op.status == "kFailed")
                .collect();
            assert!(failed.is_empty(), "ops failed: {failed:?}");
            ids.iter()
                .all(|id| ops.iter().any(|op| op.op_id == *id && op.status == "kDone"))
        }
    })
    .await;
}

async fn replica_status(endpoint: &str, tid: u32, pid: u32) -> Option<TableStatus> {
    let mut client = tessera_tests::tablet_client(endpoint).await.unwrap();
    client
        .get_table_status(GetTableStatusRequest {
            tid: Some(tid),
            pid: Some(pid),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().tables.into_iter().next())
}

fn request(pid: u32, endpoint: &str, source: &str) -> ReplicaRequest {
    ReplicaRequest {
        db: String::new(),
        name: "t1".into(),
        pids: vec![pid],
        endpoint: endpoint.into(),
        source: source.into(),
    }
}

async fn wait_equal_counts(
    ns: &NameserverClient<AuthChannel>,
    pid: u32,
    replicas: usize,
    count: i64,
) {
    wait_until_async(
        WAIT,
        &format!("{replicas} alive replicas of pid {pid} with {count} rows"),
        || {
            let mut ns = ns.clone();
            async move {
                let rows = rows(&mut ns, pid).await;
                rows.len() == replicas && rows.iter().all(|r| r.is_alive && r.record_cnt == count)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_are_added_removed_migrated_and_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &[],
            nameserver_session_ms: 2000,
            nameserver_args: &["--snapshot_interval=1"],
        },
    )
    .await;
    let mut ns = cluster.ns().await;
    tessera_tests::ops::set_auto_failover(&mut ns, false).await;
    let table = ns
        .create_table(CreateTableRequest {
            db: String::new(),
            name: "t1".into(),
            schema: Some(workload::schema().to_proto()),
            partition_num: 2,
            replica_num: 2,
            mode: ReplicationMode::Quorum as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .table
        .unwrap();
    let placed = rows(&mut ns, 0).await;
    let leader = placed
        .iter()
        .find(|r| r.role == "leader")
        .unwrap()
        .endpoint
        .clone();
    let follower = placed
        .iter()
        .find(|r| r.role == "follower")
        .unwrap()
        .endpoint
        .clone();
    let spare = cluster
        .tablets
        .iter()
        .map(|t| t.endpoint.clone())
        .find(|e| *e != leader && *e != follower)
        .unwrap();
    let mut writer = tessera_tests::tablet_client(&leader).await.unwrap();
    for seq in 0..30 {
        writer
            .put(workload::put_request(table.tid, 0, 0, seq))
            .await
            .unwrap();
    }

    // addreplica: a third copy, seeded from the leader.
    let started = ns
        .add_replica(request(0, &spare, ""))
        .await
        .unwrap()
        .into_inner()
        .ops;
    wait_done(&ns, started, "addreplica").await;
    wait_equal_counts(&ns, 0, 3, 30).await;

    // delreplica: gone from the metadata and from its tablet. A leader cannot be removed.
    let refused = ns.del_replica(request(0, &leader, "")).await.unwrap_err();
    assert!(
        refused.message().contains("leads partition 0"),
        "{}",
        refused.message()
    );
    let started = ns
        .del_replica(request(0, &spare, ""))
        .await
        .unwrap()
        .into_inner()
        .ops;
    wait_done(&ns, started, "delreplica").await;
    wait_equal_counts(&ns, 0, 2, 30).await;
    assert!(
        replica_status(&spare, table.tid, 0).await.is_none(),
        "the replica was dropped from {spare}"
    );

    // migrate: the follower moves to the spare tablet.
    let started = ns
        .migrate(request(0, &spare, &follower))
        .await
        .unwrap()
        .into_inner()
        .ops;
    wait_done(&ns, started, "migrate").await;
    wait_equal_counts(&ns, 0, 2, 30).await;
    let endpoints: Vec<String> = rows(&mut ns, 0)
        .await
        .into_iter()
        .map(|r| r.endpoint)
        .collect();
    assert!(
        endpoints.contains(&spare) && !endpoints.contains(&follower),
        "{endpoints:?}"
    );
    assert!(replica_status(&follower, table.tid, 0).await.is_none());
    writer
        .put(workload::put_request(table.tid, 0, 0, 30))
        .await
        .expect("quorum write with the migrated follower");

    // updatetablealive: metadata only.
    let updated = ns
        .update_table_alive(UpdateTableAliveRequest {
            db: String::new(),
            name: "t1".into(),
            pids: vec![0],
            endpoint: spare.clone(),
            alive: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.updated, 1);
    assert!(rows(&mut ns, 0)
        .await
        .iter()
        .any(|r| r.endpoint == spare && !r.is_alive));
    let unknown = ns
        .update_table_alive(UpdateTableAliveRequest {
            db: String::new(),
            name: "t1".into(),
            pids: vec![7],
            endpoint: spare.clone(),
            alive: true,
        })
        .await
        .unwrap_err();
    assert!(
        unknown.message().contains("no partition 7"),
        "{}",
        unknown.message()
    );

    // makesnapshot by hand, and on the schedule (every second here).
    let started = ns
        .make_snapshot(PartitionsRequest {
            db: String::new(),
            name: "t1".into(),
            pids: vec![0],
        })
        .await
        .unwrap()
        .into_inner()
        .ops;
    wait_done(&ns, started, "makesnapshot").await;
    assert_eq!(
        replica_status(&leader, table.tid, 0)
            .await
            .unwrap()
            .snapshot_offset,
        31
    );
    let pid1_leader = rows(&mut ns, 1)
        .await
        .into_iter()
        .find(|r| r.role == "leader")
        .unwrap()
        .endpoint;
    let mut writer = tessera_tests::tablet_client(&pid1_leader).await.unwrap();
    writer
        .put(workload::put_request(table.tid, 1, 1, 0))
        .await
        .unwrap();
    wait_until_async(WAIT, "a scheduled snapshot of partition 1", || {
        let pid1_leader = pid1_leader.clone();
        async move {
            replica_status(&pid1_leader, 1, 1)
                .await
                .is_some_and(|s| s.snapshot_offset == 1)
        }
    })
    .await;
    assert!(cluster
        .nameserver
        .log()
        .contains("scheduled snapshots started"));
}
