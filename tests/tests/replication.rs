//! Three real tablets in a real ZooKeeper cluster replicating one partition, wired
//! through the tablet RPCs the nameserver will use: quorum and async modes, failover by fence + ChangeRole,
//! divergence repair, snapshot catch-up and fencing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_common::Value;
use tessera_proto::tablet::*;
use tessera_tests::cluster::{
    change_role, create_replicas, create_replicated, fence_all, rows_checksum, status, wait_in_sync,
};
use tessera_tests::workload::{self, Writers};
use tessera_tests::{wait_until_async, TabletProcess, ZooKeeper};

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// A real ZooKeeper and the arguments that put tablets in its cluster.
fn zookeeper(dir: &std::path::Path, extra: &[&str]) -> (ZooKeeper, Vec<String>) {
    let zk = ZooKeeper::start(&dir.join("zk"));
    let mut args = vec![
        format!("--zk_cluster={}", zk.connect_string()),
        "--zk_root_path=/tessera".to_string(),
        "--zk_session_timeout=4000".to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    (zk, args)
}

async fn tablet(dir: &std::path::Path, name: &str, args: &[String]) -> TabletProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TabletProcess::start(&dir.join(name), &args).await
}

async fn three_tablets(
    dir: &std::path::Path,
    extra: &[&str],
) -> (ZooKeeper, TabletProcess, TabletProcess, TabletProcess) {
    let (zk, args) = zookeeper(dir, extra);
    (
        zk,
        tablet(dir, "a", &args).await,
        tablet(dir, "b", &args).await,
        tablet(dir, "c", &args).await,
    )
}

async fn wait_acked(writers: &Writers, at_least: u64, what: &str) {
    let progress = writers.acked_total.clone();
    wait_until_async(Duration::from_secs(120), what, || {
        let done = progress.load(Ordering::Relaxed) >= at_least;
        async move { done }
    })
    .await;
}

/// Puts `count` rows for `writer` starting at `seq`, all of which must be acknowledged.
async fn put_rows(tablet: &TabletProcess, writer: u64, seqs: std::ops::Range<u64>) {
    let mut client = tablet.client().await;
    for seq in seqs {
        client
            .put(workload::put_request(1, 0, writer, seq))
            .await
            .unwrap_or_else(|e| panic!("put w{writer}/{seq}: {}", e.message()));
    }
}

/// Picks the replica with the largest (last term, last offset), as ChangeLeader does.
fn most_up_to_date(pairs: &[(u64, u64)]) -> usize {
    (0..pairs.len()).max_by_key(|&i| pairs[i]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_writes_survive_a_follower_and_then_the_leader_dying() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, mut a, b, mut c) = three_tablets(dir.path(), &[]).await;
    create_replicated(&[&a, &b, &c], workload::meta(1, 0, ReplicationMode::Quorum)).await;

    let clients = vec![a.client().await, a.client().await];
    let writers = Writers::start(&clients, 1, 0, 0, 6);
    wait_acked(&writers, 1000, "1000 writes with three replicas").await;

    // One follower dies: a majority (leader + the other follower) remains.
    c.kill9();
    let before = writers.acked();
    wait_acked(
        &writers,
        before + 1000,
        "writes to go on without one follower",
    )
    .await;

    // It comes back and catches up from the leader's binlog.
    c.restart().await;
    let before = writers.acked();
    wait_acked(&writers, before + 500, "writes after the follower returned").await;

    // The leader dies mid-stream.
    a.kill9();
    let acked = writers.finish().await;

    // Promote the follower with the most complete log, as ChangeLeader will.
    let pairs = fence_all(&[&b, &c], 1, 0, 2).await;
    let (new_leader, other) = if most_up_to_date(&pairs) == 0 {
        (&b, &c)
    } else {
        (&c, &b)
    };
    change_role(
        &mut other.client().await,
        1,
        0,
        TableRole::Follower,
        2,
        &[],
        Some(new_leader),
    )
    .await;
    change_role(
        &mut new_leader.client().await,
        1,
        0,
        TableRole::Leader,
        2,
        &[other],
        None,
    )
    .await;

    workload::assert_all_acked_present(&mut new_leader.client().await, 1, 0, 0, &acked).await;

    // The new pair takes quorum writes, and the two replicas agree.
    put_rows(new_leader, 100, 0..50).await;
    wait_in_sync(&[new_leader, other], 1, 0, SYNC_TIMEOUT).await;
    assert_eq!(
        rows_checksum(new_leader, 1, 0).await,
        rows_checksum(other, 1, 0).await
    );
    let leader_status = status(new_leader, 1, 0).await;
    assert_eq!(leader_status.term, 2);
    assert_eq!(leader_status.role, TableRole::Leader as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_mode_old_leader_tail_is_truncated_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, mut a, mut b, mut c) = three_tablets(dir.path(), &[]).await;
    create_replicated(&[&a, &b, &c], workload::meta(1, 0, ReplicationMode::Async)).await;

    put_rows(&a, 0, 0..300).await;
    wait_in_sync(&[&a, &b, &c], 1, 0, SYNC_TIMEOUT).await;

    // The followers die; the async leader goes on acknowledging writes alone, then dies
    // too, and the followers come back. (Killed rather than frozen: a frozen follower
    // would still take the request already in its socket when it thaws.)
    b.kill9();
    c.kill9();
    put_rows(&a, 1, 0..100).await;
    assert_eq!(status(&a, 1, 0).await.offset, 400);
    a.kill9();
    b.restart().await;
    c.restart().await;

    // B becomes leader in term 2 and writes different records at the same offsets.
    fence_all(&[&b, &c], 1, 0, 2).await;
    change_role(
        &mut c.client().await,
        1,
        0,
        TableRole::Follower,
        2,
        &[],
        Some(&b),
    )
    .await;
    change_role(
        &mut b.client().await,
        1,
        0,
        TableRole::Leader,
        2,
        &[&c],
        None,
    )
    .await;
    put_rows(&b, 2, 0..50).await;

    // The old leader returns; in a cluster it waits to be told its role, and is made a
    // follower of B.
    a.restart().await;
    change_role(
        &mut a.client().await,
        1,
        0,
        TableRole::Follower,
        2,
        &[],
        Some(&b),
    )
    .await;
    b.client()
        .await
        .add_replica(AddReplicaRequest {
            tid: 1,
            pid: 0,
            endpoint: a.endpoint.clone(),
        })
        .await
        .expect("add replica");
    wait_in_sync(&[&b, &c, &a], 1, 0, SYNC_TIMEOUT).await;

    let (count, sum) = rows_checksum(&b, 1, 0).await;
    assert_eq!(
        count, 350,
        "300 replicated rows and 50 of the new leader; the 100 unreplicated ones are gone"
    );
    assert_eq!(rows_checksum(&c, 1, 0).await, (count, sum));
    assert_eq!(
        rows_checksum(&a, 1, 0).await,
        (count, sum),
        "the old leader holds exactly the new leader's rows"
    );
    assert!(a.log().contains("binlog truncated at the divergence point"));
}

/// Leader A and follower B; B misses A's last records; A dies; B leads term 2 at once
/// and writes at the very offsets A had used. Offsets alone cannot tell the logs apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kip101_truncation_then_immediate_leader_change() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, args) = zookeeper(dir.path(), &[]);
    let mut a = tablet(dir.path(), "a", &args).await;
    let mut b = tablet(dir.path(), "b", &args).await;
    create_replicated(&[&a, &b], workload::meta(1, 0, ReplicationMode::Async)).await;
    put_rows(&a, 0, 0..20).await;
    wait_in_sync(&[&a, &b], 1, 0, SYNC_TIMEOUT).await;
    b.kill9();
    put_rows(&a, 1, 0..3).await;
    a.kill9();
    b.restart().await;

    fence_all(&[&b], 1, 0, 2).await;
    change_role(
        &mut b.client().await,
        1,
        0,
        TableRole::Leader,
        2,
        &[&a],
        None,
    )
    .await;
    put_rows(&b, 2, 0..3).await;
    assert_eq!(
        status(&b, 1, 0).await.offset,
        24,
        "B logged its term's no-op at 21 and rows at 22..=24, over A's 21..=23"
    );

    a.restart().await;
    change_role(
        &mut a.client().await,
        1,
        0,
        TableRole::Follower,
        2,
        &[],
        Some(&b),
    )
    .await;
    wait_until_async(SYNC_TIMEOUT, "A to take B's records", || async {
        rows_checksum(&a, 1, 0).await == rows_checksum(&b, 1, 0).await
    })
    .await;
    assert_eq!(rows_checksum(&a, 1, 0).await.0, 23);
}

/// Both replicas die together while the follower lags; the follower returns first and
/// leads; the old leader's extra records must not survive its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kip101_replicas_restarting_together() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, args) = zookeeper(dir.path(), &[]);
    let mut a = tablet(dir.path(), "a", &args).await;
    let mut b = tablet(dir.path(), "b", &args).await;
    create_replicated(&[&a, &b], workload::meta(1, 0, ReplicationMode::Async)).await;
    put_rows(&a, 0, 0..30).await;
    wait_in_sync(&[&a, &b], 1, 0, SYNC_TIMEOUT).await;
    b.kill9();
    put_rows(&a, 1, 0..10).await;
    a.kill9();

    // B is back first and is fenced before A returns (else A, restored as the leader of
    // term 1, would simply ship it the missing records).
    b.restart().await;
    let pairs = fence_all(&[&b], 1, 0, 2).await;
    assert_eq!(pairs[0], (1, 30));
    change_role(
        &mut b.client().await,
        1,
        0,
        TableRole::Leader,
        2,
        &[&a],
        None,
    )
    .await;
    put_rows(&b, 2, 0..5).await;
    a.restart().await;
    change_role(
        &mut a.client().await,
        1,
        0,
        TableRole::Follower,
        2,
        &[],
        Some(&b),
    )
    .await;

    wait_until_async(SYNC_TIMEOUT, "A to match B", || async {
        rows_checksum(&a, 1, 0).await == rows_checksum(&b, 1, 0).await
    })
    .await;
    assert_eq!(rows_checksum(&a, 1, 0).await.0, 35);
    assert_eq!(
        status(&a, 1, 0).await.offset,
        36,
        "30 rows, B's no-op of term 2, 5 rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_retained_binlog_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, a, b, c) = three_tablets(dir.path(), &["--binlog_segment_size=4096"]).await;
    create_replicated(&[&a, &b, &c], workload::meta(1, 0, ReplicationMode::Quorum)).await;
    put_rows(&a, 0, 0..100).await;
    wait_in_sync(&[&a, &b, &c], 1, 0, SYNC_TIMEOUT).await;

    // C leaves the replica set, so it no longer holds back binlog collection.
    let mut leader = a.client().await;
    leader
        .del_replica(DelReplicaRequest {
            tid: 1,
            pid: 0,
            endpoint: c.endpoint.clone(),
            keep_vote: true,
        })
        .await
        .unwrap();
    put_rows(&a, 1, 0..600).await;
    wait_in_sync(&[&a, &b], 1, 0, SYNC_TIMEOUT).await;
    let snapshot = leader
        .make_snapshot(MakeSnapshotRequest { tid: 1, pid: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snapshot.offset, 700);
    assert_eq!(status(&c, 1, 0).await.offset, 100);

    leader
        .add_replica(AddReplicaRequest {
            tid: 1,
            pid: 0,
            endpoint: c.endpoint.clone(),
        })
        .await
        .unwrap();
    put_rows(&a, 2, 0..10).await;
    wait_in_sync(&[&a, &b, &c], 1, 0, SYNC_TIMEOUT).await;
    assert_eq!(rows_checksum(&c, 1, 0).await, rows_checksum(&a, 1, 0).await);
    assert!(
        a.log().contains("sending a snapshot"),
        "the catch-up went through a snapshot"
    );
    assert!(c.log().contains("snapshot installed"));
    let c_status = status(&c, 1, 0).await;
    // The snapshot is taken when it is sent, so it covers at least what was collected.
    assert!(c_status.snapshot_offset >= 700, "{c_status:?}");
    assert_eq!(c_status.role, TableRole::Follower as i32);
    wait_until_async(
        SYNC_TIMEOUT,
        "both followers to acknowledge offset 710",
        || {
            let mut leader = leader.clone();
            async move {
                let status = leader
                    .get_follower_status(GetFollowerStatusRequest { tid: 1, pid: 0 })
                    .await
                    .unwrap()
                    .into_inner();
                status.followers.len() == 2
                    && status
                        .followers
                        .iter()
                        .all(|f| f.acked_offset == 710 && f.connected)
                    && status.commit_offset == 710
            }
        },
    )
    .await;
}

/// Tablets A and B replicating partition 0 of table 1 (quorum, A leading in term 1),
/// five rows written.
async fn leader_and_follower(dir: &std::path::Path) -> (ZooKeeper, TabletProcess, TabletProcess) {
    let (zk, args) = zookeeper(dir, &[]);
    let a = tablet(dir, "a", &args).await;
    let b = tablet(dir, "b", &args).await;
    create_replicated(&[&a, &b], workload::meta(1, 0, ReplicationMode::Quorum)).await;
    put_rows(&a, 0, 0..5).await;
    (zk, a, b)
}

/// Sends `tablet` a snapshot stream of one chunk for partition `pid` in term 1, from a
/// leader that is not in the cluster, and returns how it was refused.
async fn refused_snapshot(
    tablet: &TabletProcess,
    pid: u32,
    file: &str,
    data: &[u8],
    last_of_file: bool,
) -> tonic::Status {
    let chunk = SnapshotChunk {
        meta: Some(workload::meta(1, pid, ReplicationMode::Quorum)),
        term: 1,
        leader: "127.0.0.1:1".into(),
        file: file.into(),
        data: data.to_vec(),
        last_of_file,
        ..Default::default()
    };
    tablet
        .client()
        .await
        .receive_snapshot(tokio_stream::iter(vec![chunk]))
        .await
        .expect_err("the snapshot is refused")
}

/// A snapshot stream that ends in the middle of a file (its sender gone mid-transfer) is
/// refused and leaves none of its files behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_short_leaves_no_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, args) = zookeeper(dir.path(), &[]);
    let b = tablet(dir.path(), "b", &args).await;
    let refused = refused_snapshot(&b, 5, "snapshot/MANIFEST", b"half a file", false).await;
    assert!(
        refused.message().contains("middle of a file"),
        "{}",
        refused.message()
    );
    let left: Vec<_> = std::fs::read_dir(&b.db_root_path)
        .unwrap()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".incoming"))
        .collect();
    assert!(
        left.is_empty(),
        "the cut-short snapshot's files stayed: {left:?}"
    );
}

/// A leader sent a snapshot of its own term by another leader refuses it at once,
/// untouched: it goes on leading, and its writes are still acknowledged by its follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_refuses_a_snapshot_goes_on_replicating() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, a, b) = leader_and_follower(dir.path()).await;
    // A leader of the same term that is not A: A must not follow it.
    let refused = refused_snapshot(&a, 0, "table_meta", b"", true).await;
    assert_eq!(
        detail_of(&refused).map(|d| d.code()),
        Some(ErrorCode::StaleTerm),
        "{refused:?}"
    );
    let leader = status(&a, 1, 0).await;
    assert_eq!(
        (leader.role(), leader.term),
        (TableRole::Leader, 1),
        "still the leader"
    );
    // Each put needs B's acknowledgement (two replicas, quorum).
    put_rows(&a, 0, 5..10).await;
    wait_in_sync(&[&a, &b], 1, 0, SYNC_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_terms_are_refused_and_followers_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, a, b) = leader_and_follower(dir.path()).await;
    let mut follower = b.client().await;

    // Raise B's term; anything from term 1 is now refused with a structured error.
    fence_all(&[&b], 1, 0, 3).await;
    let refused = follower
        .change_role(ChangeRoleRequest {
            tid: 1,
            pid: 0,
            role: TableRole::Leader as i32,
            term: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let detail = detail_of(&refused).unwrap();
    assert_eq!(detail.code(), ErrorCode::StaleTerm);
    assert_eq!(detail.term, 3);
    let refused = follower
        .fence(FenceRequest {
            tid: 1,
            pid: 0,
            term: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(detail_of(&refused).unwrap().code(), ErrorCode::StaleTerm);

    // The leader of term 1 learns from B that it was superseded, and stops taking writes.
    let mut leader = a.client().await;
    wait_until_async(SYNC_TIMEOUT, "the old leader to step down", || {
        let mut leader = leader.clone();
        async move {
            match leader.put(workload::put_request(1, 0, 9, 0)).await {
                Err(e) => detail_of(&e).is_some_and(|d| d.code() == ErrorCode::NotLeader),
                Ok(_) => false,
            }
        }
    })
    .await;
    assert_eq!(status(&a, 1, 0).await.term, 3);

    // Term 3: B leads, A follows; a write to A names the leader.
    // Followers first, then the leader, as in docs/OPERATIONS.md.
    change_role(&mut leader, 1, 0, TableRole::Follower, 3, &[], Some(&b)).await;
    change_role(
        &mut b.client().await,
        1,
        0,
        TableRole::Leader,
        3,
        &[&a],
        None,
    )
    .await;
    wait_in_sync(&[&b, &a], 1, 0, SYNC_TIMEOUT).await;
    let refused = leader
        .put(workload::put_request(1, 0, 9, 1))
        .await
        .unwrap_err();
    let detail = detail_of(&refused).unwrap();
    assert_eq!(detail.code(), ErrorCode::NotLeader);
    assert_eq!(detail.leader, b.endpoint);

    // Follower reads: served when caught up to min_offset, refused when behind.
    put_rows(&b, 1, 0..3).await;
    wait_in_sync(&[&b, &a], 1, 0, SYNC_TIMEOUT).await;
    let offset = status(&b, 1, 0).await.offset;
    let key = vec![Value::String("w1".into()).to_proto()];
    let read = leader
        .count(CountRequest {
            tid: 1,
            pid: 0,
            key: key.clone(),
            min_offset: offset,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((read.count, read.offset), (3, offset));
    let behind = leader
        .count(CountRequest {
            tid: 1,
            pid: 0,
            key,
            min_offset: offset + 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&behind).unwrap().code(),
        ErrorCode::PartitionUnavailable
    );
    // Every read refuses to go back in time, get included.
    let behind = leader
        .get(GetRequest {
            tid: 1,
            pid: 0,
            key: vec![Value::String("w1".into()).to_proto()],
            min_offset: offset + 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&behind).unwrap().code(),
        ErrorCode::PartitionUnavailable
    );

    // GetTermPair reports where each log ends, in which term.
    let pair = leader
        .get_term_pair(GetTermPairRequest { tid: 1, pid: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (pair.last_term, pair.last_offset, pair.loaded),
        (3, offset, true)
    );
}

/// Collection after a snapshot keeps every record a follower of the set still lacks, even
/// one that is down: when it returns it catches up from the binlog, with no snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binlog_collection_keeps_what_a_dead_follower_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (_zk, a, b, mut c) = three_tablets(dir.path(), &["--binlog_segment_size=4096"]).await;
    create_replicated(&[&a, &b, &c], workload::meta(1, 0, ReplicationMode::Quorum)).await;
    put_rows(&a, 0, 0..50).await;
    wait_in_sync(&[&a, &b, &c], 1, 0, SYNC_TIMEOUT).await;
    c.kill9();
    put_rows(&a, 1, 0..600).await;
    let mut leader = a.client().await;
    let snapshot = leader
        .make_snapshot(MakeSnapshotRequest { tid: 1, pid: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snapshot.offset, 650);

    // Paused snapshots are refused until recovered.
    leader
        .pause_snapshot(PauseSnapshotRequest { tid: 1, pid: 0 })
        .await
        .unwrap();
    put_rows(&a, 1, 600..610).await;
    let paused = leader
        .make_snapshot(MakeSnapshotRequest { tid: 1, pid: 0 })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&paused).unwrap().code(),
        ErrorCode::PartitionUnavailable
    );
    leader
        .recover_snapshot(RecoverSnapshotRequest { tid: 1, pid: 0 })
        .await
        .unwrap();
    leader
        .make_snapshot(MakeSnapshotRequest { tid: 1, pid: 0 })
        .await
        .unwrap();

    c.restart().await;
    wait_in_sync(&[&a, &b, &c], 1, 0, SYNC_TIMEOUT).await;
    assert_eq!(rows_checksum(&c, 1, 0).await, rows_checksum(&a, 1, 0).await);
    assert!(
        !a.log().contains("sending a snapshot"),
        "C caught up from the binlog"
    );

    // An explicit SendSnapshot re-seeds a replica, which then follows again.
    let sent = leader
        .send_snapshot(SendSnapshotRequest {
            tid: 1,
            pid: 0,
            endpoint: c.endpoint.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sent.offset >= 660);
    put_rows(&a, 2, 0..5).await;
    wait_in_sync(&[&a, &b, &c], 1, 0, SYNC_TIMEOUT).await;
    assert_eq!(rows_checksum(&c, 1, 0).await, rows_checksum(&a, 1, 0).await);
    assert_eq!(status(&c, 1, 0).await.snapshot_offset, sent.offset);
}

/// A counter or gauge of `tablet`'s `/metrics`: the sum of the samples of `metric`
/// whose labels include `label` (a `name="value"` pair), 0 when there are none.
fn metric(tablet: &TabletProcess, metric: &str, label: &str) -> f64 {
    let (code, body) = tessera_tests::process::http_get(&tablet.endpoint, "/metrics");
    assert_eq!(code, 200, "{}/metrics: {body}", tablet.endpoint);
    body.lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Idle partitions cost their follower tablet one batched heartbeat per leader tablet,
/// not a message per partition on each partition's stream, and once in step no beat of
/// their own either: the call renews the follower tablet's grant, which renews every
/// lease in it. The grants alone keep every leader's read lease, and a paused follower
/// stops renewing them until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_partitions_share_one_heartbeat_per_tablet_pair() {
    const PARTITIONS: u32 = 40;
    let dir = tempfile::tempdir().unwrap();
    let (_zk, a, b, mut c) = three_tablets(dir.path(), &[]).await;
    for tid in 1..=PARTITIONS {
        create_replicated(
            &[&a, &b, &c],
            workload::meta(tid, 0, ReplicationMode::Quorum),
        )
        .await;
        a.client()
            .await
            .put(workload::put_request(tid, 0, 1, 0))
            .await
            .unwrap_or_else(|e| panic!("put to {tid}: {}", e.message()));
    }
    let leases = "tessera_tablet_leases_held";
    let beats = "tessera_tablet_replication_messages_total";
    wait_until_async(SYNC_TIMEOUT, "every leader to hold its read lease", || {
        let held = metric(&a, leases, "") as u32;
        async move { held == PARTITIONS }
    })
    .await;

    // Heartbeat calls keep reaching B, one per round; once every partition answered in
    // step, they carry next to no beat of a partition (every partition's beat in every
    // round was the cost before grants), and the partitions' own streams carry next to
    // nothing either.
    let calls = "tessera_tablet_grpc_calls_total";
    let heartbeat_calls = "method=\"Heartbeat\"";
    let calls_at_b = || metric(&b, calls, heartbeat_calls);
    let wait_calls = |from: f64, rounds: f64, what: &'static str| {
        wait_until_async(SYNC_TIMEOUT, what, move || {
            let done = calls_at_b() - from >= rounds;
            async move { done }
        })
    };
    let settled = calls_at_b();
    wait_calls(settled, 3.0, "three Heartbeat calls at B").await;
    let empty_before = metric(&b, beats, "kind=\"empty\"");
    let beats_before = metric(&b, beats, "kind=\"beat\"");
    let calls_before = calls_at_b();
    wait_calls(calls_before, 10.0, "ten more Heartbeat calls at B").await;
    let empty = metric(&b, beats, "kind=\"empty\"") - empty_before;
    let partition_beats = metric(&b, beats, "kind=\"beat\"") - beats_before;
    let rounds = calls_at_b() - calls_before;
    assert!(
        empty < f64::from(PARTITIONS),
        "{empty} empty requests on idle streams during {rounds} heartbeat rounds"
    );
    assert!(
        partition_beats < f64::from(PARTITIONS),
        "{partition_beats} beats of idle partitions in {rounds} rounds: the grant renews them"
    );
    // A write moves its partition: its follower hears of it, and the leases hold.
    a.client()
        .await
        .put(workload::put_request(1, 0, 2, 0))
        .await
        .unwrap_or_else(|e| panic!("second put: {}", e.message()));
    assert_eq!(metric(&a, leases, "") as u32, PARTITIONS);

    // Fencing one partition's followers, as a change of its leader does, makes them
    // leave their grants: that partition's lease runs out, while every other partition
    // keeps its lease at every look (the grants' generations moved, and the others
    // count their last renewals until beats of their own join them again).
    const FENCED: u32 = 2;
    for follower in [&b, &c] {
        follower
            .client()
            .await
            .fence(FenceRequest {
                tid: FENCED,
                pid: 0,
                term: 2,
            })
            .await
            .unwrap_or_else(|e| panic!("fence at {}: {}", follower.endpoint, e.message()));
    }
    let kept = PARTITIONS - 1;
    let mut looks_at_kept = 0;
    // A lapse of the others lasted until their next beats, a round or two (several
    // looks in a row); a single late look on a loaded machine is not one.
    let mut short_in_a_row = 0;
    let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
    while looks_at_kept < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fenced partition's lease never ran out"
        );
        let held = metric(&a, leases, "") as u32;
        short_in_a_row = if held < kept { short_in_a_row + 1 } else { 0 };
        assert!(
            short_in_a_row < 3,
            "{held} leases held after fencing one partition of {PARTITIONS}, three looks in a row"
        );
        if held == kept {
            looks_at_kept += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let refused = a.client().await.get(get_request(FENCED)).await.unwrap_err();
    assert!(
        !refused.message().is_empty(),
        "a read of the fenced partition at A: {refused:?}"
    );

    // With C gone, B's beats alone keep the majority (once C's last grant has run out,
    // six rounds later); with B paused too, no lease holds, and reads at the leader are
    // refused; once B resumes, its beats renew them again.
    c.kill9();
    let calls_at_kill = calls_at_b();
    wait_calls(calls_at_kill, 6.0, "six rounds of beats at B after C died").await;
    assert_eq!(
        metric(&a, leases, "") as u32,
        kept,
        "leases kept by B alone"
    );
    for tid in [1, PARTITIONS] {
        let mut client = a.client().await;
        let got = client.get(get_request(tid)).await;
        assert!(got.is_ok(), "read at A with B answering: {got:?}");
    }
    b.pause();
    wait_until_async(SYNC_TIMEOUT, "every lease to lapse with B paused", || {
        let held = metric(&a, leases, "");
        async move { held == 0.0 }
    })
    .await;
    let refused = a.client().await.get(get_request(1)).await.unwrap_err();
    assert!(
        refused.message().contains("within its lease"),
        "a read at A without a majority: {refused:?}"
    );
    b.resume();
    wait_until_async(
        SYNC_TIMEOUT,
        "the leases to be renewed once B resumes",
        || {
            let held = metric(&a, leases, "") as u32;
            async move { held == kept }
        },
    )
    .await;
}

fn get_request(tid: u32) -> GetRequest {
    GetRequest {
        tid,
        pid: 0,
        key: vec![Value::String("w1".into()).to_proto()],
        ..Default::default()
    }
}

/// The links of many partitions to a follower tablet that is gone take turns to try it:
/// one link at a time, at growing intervals, instead of every link on its own backoff
/// (thousands of refused connections a second in a failover at scale). The follower
/// here is a port that accepts connections and drops them, as a process being killed
/// does; it counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_a_gone_follower_take_turns_to_try_it() {
    const PARTITIONS: u32 = 256;
    let dir = tempfile::tempdir().unwrap();
    let (_zk, args) = zookeeper(dir.path(), &[]);
    let a = tablet(dir.path(), "a", &args).await;
    let b = tablet(dir.path(), "b", &args).await;
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_endpoint = gone.local_addr().unwrap().to_string();
    let tried = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let tried = tried.clone();
        std::thread::spawn(move || {
            for connection in gone.incoming() {
                tried.fetch_add(1, Ordering::Relaxed);
                drop(connection);
            }
        });
    }
    for tid in 1..=PARTITIONS {
        create_replicas(&[&a, &b], &workload::meta(tid, 0, ReplicationMode::Quorum)).await;
        change_role(
            &mut b.client().await,
            tid,
            0,
            TableRole::Follower,
            1,
            &[],
            Some(&a),
        )
        .await;
        a.client()
            .await
            .change_role(ChangeRoleRequest {
                tid,
                pid: 0,
                role: TableRole::Leader as i32,
                term: 1,
                followers: vec![b.endpoint.clone(), gone_endpoint.clone()],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("leader of {tid}: {}", e.message()));
    }
    // Every link has tried the gone follower at least once by now, or soon: let the
    // first attempts pass, then count the connections over twenty heartbeat rounds at
    // B (about two seconds), the window paced by the tablets themselves.
    wait_until_async(SYNC_TIMEOUT, "the gone follower to be tried", || {
        let tried = tried.load(Ordering::Relaxed);
        async move { tried > 0 }
    })
    .await;
    let calls_at_b = || {
        metric(
            &b,
            "tessera_tablet_grpc_calls_total",
            "method=\"Heartbeat\"",
        )
    };
    let wait_rounds = |rounds: f64, what: &'static str| {
        let from = calls_at_b();
        wait_until_async(SYNC_TIMEOUT, what, move || {
            let done = calls_at_b() - from >= rounds;
            async move { done }
        })
    };
    wait_rounds(5.0, "five heartbeat rounds at B").await;
    let tried_before = tried.load(Ordering::Relaxed);
    wait_rounds(20.0, "twenty more heartbeat rounds at B").await;
    let tried_in_window = tried.load(Ordering::Relaxed) - tried_before;
    eprintln!("{tried_in_window} connections to the gone follower in twenty heartbeat rounds");
    // Each link retrying on its own tries at least once a second: more than
    // PARTITIONS connections. Taking turns, the window holds a few probes, besides
    // the heartbeat rounds' own calls to the gone follower (one a round of A's at
    // most, and A's rounds may outnumber those B answers on a loaded machine).
    assert!(
        tried_in_window < u64::from(PARTITIONS) / 2,
        "{tried_in_window} connections to the gone follower from the links of \
         {PARTITIONS} partitions in twenty heartbeat rounds"
    );
    // The partitions stay writable with B, and their links to B never waited for the
    // gone follower's turns.
    for tid in [1, PARTITIONS] {
        a.client()
            .await
            .put(workload::put_request(tid, 0, 1, 0))
            .await
            .unwrap_or_else(|e| panic!("put to {tid}: {}", e.message()));
    }
}
