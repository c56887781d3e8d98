//! Tablets in a cluster: registration in a real ZooKeeper, the lease that stops an
//! isolated leader, and replicas that wait to be told their role after a restart.

use std::time::{Duration, Instant};

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_proto::tablet::*;
use tessera_tests::cluster::{change_role, create_replicated};
use tessera_tests::workload;
use tessera_tests::{wait_until_async, TabletProcess, ZooKeeper};

const SESSION_TIMEOUT_MS: u64 = 4000;

fn cluster_args(zk: &ZooKeeper, session_ms: u64) -> Vec<String> {
    vec![
        format!("--zk_cluster={}", zk.connect_string()),
        "--zk_root_path=/tessera".into(),
        format!("--zk_session_timeout={session_ms}"),
        "--quorum_timeout=2000".into(),
    ]
}

/// Two tablets registered in ZooKeeper with `session_ms` sessions, replicating one quorum
/// partition that A leads and that takes writes.
async fn leading_pair(
    dir: &std::path::Path,
    zk: &ZooKeeper,
    session_ms: u64,
) -> (TabletProcess, TabletProcess) {
    let args = cluster_args(zk, session_ms);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = TabletProcess::start(&dir.join("a"), &args).await;
    let b = TabletProcess::start(&dir.join("b"), &args).await;
    wait_until_async(
        Duration::from_secs(20),
        "both tablets under /nodes",
        || async {
            let nodes = registered(zk).await;
            nodes.contains(&a.endpoint) && nodes.contains(&b.endpoint)
        },
    )
    .await;
    create_replicated(&[&a, &b], workload::meta(1, 0, ReplicationMode::Quorum)).await;
    wait_until_async(
        Duration::from_secs(20),
        "the leader to take writes",
        || async { put_code(&a, 0).await.is_none() },
    )
    .await;
    (a, b)
}

async fn registered(zk: &ZooKeeper) -> Vec<String> {
    let client = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(5))
        .connect(&zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    client
        .list_children("/tessera/nodes")
        .await
        .unwrap_or_default()
}

async fn put_code(tablet: &TabletProcess, seq: u64) -> Option<ErrorCode> {
    match tablet
        .client()
        .await
        .put(workload::put_request(1, 0, 7, seq))
        .await
    {
        Ok(_) => None,
        Err(status) => Some(detail_of(&status).map_or(ErrorCode::Unspecified, |d| d.code())),
    }
}

/// Waits until the leader on `tablet` refuses writes for want of its lease.
async fn wait_fenced(tablet: &TabletProcess) {
    let mut seq = 1;
    wait_until_async(
        Duration::from_secs(30),
        "the leader to refuse writes",
        || {
            seq += 1;
            let seq = seq;
            async move { put_code(tablet, seq).await == Some(ErrorCode::PartitionUnavailable) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_hold_a_lease_and_wait_for_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let (a, mut b) = leading_pair(dir.path(), &zk, SESSION_TIMEOUT_MS).await;

    // ZooKeeper stops answering: the leader must stop serving before its session could
    // expire (and another replica could be promoted).
    zk.pause();
    let cut = Instant::now();
    wait_fenced(&a).await;
    let stopped_after = cut.elapsed();
    assert!(
        stopped_after < Duration::from_millis(SESSION_TIMEOUT_MS),
        "the leader served for {stopped_after:?}, longer than the session timeout"
    );
    let read = a
        .client()
        .await
        .count(CountRequest {
            tid: 1,
            pid: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&read).unwrap().code(),
        ErrorCode::PartitionUnavailable
    );
    assert!(a.log().contains("lease lapsed"));

    // ZooKeeper is back. The leader stays fenced until it is told its role again.
    zk.resume();
    wait_until_async(
        Duration::from_secs(30),
        "the leader to serve again once told its role",
        || async {
            change_role(
                &mut a.client().await,
                1,
                0,
                TableRole::Leader,
                1,
                &[&b],
                None,
            )
            .await;
            put_code(&a, 100).await.is_none()
        },
    )
    .await;

    // A tablet that dies leaves /nodes when its session expires.
    b.kill9();
    wait_until_async(
        Duration::from_secs(30),
        "the dead tablet's node to expire",
        || async { !registered(&zk).await.contains(&b.endpoint) },
    )
    .await;

    // In a cluster, a restarted replica does not resume leading on its own.
    b.restart().await;
    change_role(&mut b.client().await, 1, 0, TableRole::Leader, 2, &[], None).await;
    assert_eq!(put_code(&b, 0).await, None, "B leads term 2 alone");
    b.kill9();
    b.restart().await;
    let status = b
        .client()
        .await
        .get_table_status(GetTableStatusRequest {
            tid: Some(1),
            pid: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .tables
        .remove(0);
    assert_eq!(
        status.role,
        TableRole::Follower as i32,
        "waits to be told its role"
    );
    assert_eq!(status.term, 2, "but remembers its term");
    assert_eq!(put_code(&b, 1).await, Some(ErrorCode::NotLeader));
}

/// Point 6 of the replication-safety work: a ZooKeeper stall longer than the lease but
/// shorter than the session fences the leader, and once ZooKeeper answers again in the
/// same session the leader serves again by itself (before, it stayed fenced until an
/// operator or the nameserver told it its role again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_fenced_by_a_short_zookeeper_stall_serves_again_by_itself() {
    const SESSION_MS: u64 = 6000;
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let (a, _b) = leading_pair(dir.path(), &zk, SESSION_MS).await;

    zk.pause();
    let cut = Instant::now();
    wait_fenced(&a).await;
    zk.resume();
    assert!(
        cut.elapsed() < Duration::from_millis(SESSION_MS),
        "the stall must stay shorter than the session for this test to mean anything"
    );
    let mut seq = 1000;
    wait_until_async(
        Duration::from_secs(20),
        "the leader to serve again without being told its role",
        || {
            seq += 1;
            let seq = seq;
            let a = &a;
            async move { put_code(a, seq).await.is_none() }
        },
    )
    .await;
    assert!(a
        .log()
        .contains("leader serves again: ZooKeeper lease renewed in the same session"));
}
