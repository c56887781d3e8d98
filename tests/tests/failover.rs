//! auto_failover with real processes: a nameserver, three tablets and ZooKeeper. A
//! tablet leading partitions dies under continuous quorum writes; the op pipeline gives
//! every partition a new leader and loses no acknowledged write; the tablet returns and
//! RecoverTable brings its replicas back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::*;
use tessera_proto::tablet::ReplicationMode;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{self, leaders};
use tessera_tests::workload;
use tessera_tests::{wait_until_async, NameserverProcess, TabletProcess, ZooKeeper};

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 4;

async fn rows(ns: &mut NameserverClient<AuthChannel>) -> Vec<ShowTableRow> {
    routed::table_rows(ns, "t1").await
}

async fn ops(ns: &mut NameserverClient<AuthChannel>) -> Vec<OpInfo> {
    ns.show_op_status(ShowOpStatusRequest::default())
        .await
        .map(|r| r.into_inner().ops)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_leader_tablet_is_replaced_and_recovered_without_losing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    let mut ns = cluster.ns().await;
    let table = cluster.create_table("t1", PARTITIONS, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..PARTITIONS)
        .map(|pid| {
            routed::spawn(
                ns.clone(),
                "t1",
                table.tid,
                pid,
                stop.clone(),
                acked_total.clone(),
            )
        })
        .collect();
    let progress = |target: u64| {
        let acked_total = acked_total.clone();
        move || {
            let done = acked_total.load(Ordering::Relaxed) >= target;
            async move { done }
        }
    };
    wait_until_async(WAIT, "400 writes before the failure", progress(400)).await;

    // Kill the tablet leading partition 0.
    let before = leaders(&rows(&mut ns).await);
    let victim = before[&0].clone();
    let led_by_victim: Vec<u32> = before
        .iter()
        .filter(|(_, e)| **e == victim)
        .map(|(p, _)| *p)
        .collect();
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();

    wait_until_async(
        WAIT,
        "every partition to have an alive leader on a live tablet",
        || {
            let mut ns = ns.clone();
            let victim = victim.clone();
            async move {
                let now = leaders(&rows(&mut ns).await);
                now.len() == PARTITIONS as usize && now.values().all(|e| *e != victim)
            }
        },
    )
    .await;
    let after = acked_total.load(Ordering::Relaxed);
    wait_until_async(
        WAIT,
        "writes to go on after the failover",
        progress(after + 400),
    )
    .await;
    let all_ops = ops(&mut ns).await;
    for pid in &led_by_victim {
        assert!(
            all_ops
                .iter()
                .any(|op| op.op_type == "kChangeLeader" && op.pid == *pid && op.status == "kDone"),
            "partition {pid} got a finished ChangeLeader: {all_ops:?}"
        );
    }
    let rows_now = rows(&mut ns).await;
    assert!(
        rows_now
            .iter()
            .filter(|r| r.endpoint == victim)
            .all(|r| !r.is_alive && r.role == "follower"),
        "the dead tablet's replicas are marked dead and none of them leads"
    );

    // It returns: RecoverTable makes its replicas alive followers again.
    cluster.tablets[index].restart().await;
    wait_until_async(WAIT, "every replica to be alive again", || {
        let mut ns = ns.clone();
        async move {
            let rows = rows(&mut ns).await;
            rows.len() == (PARTITIONS * 3) as usize && rows.iter().all(|r| r.is_alive)
        }
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.push(writer.await.unwrap().acked);
    }
    // Every acknowledged write is on every partition's leader...
    let leaders_now = leaders(&rows(&mut ns).await);
    for pid in 0..PARTITIONS {
        let mut client = tessera_tests::tablet_client(&leaders_now[&pid])
            .await
            .unwrap();
        let mine = vec![Vec::new(); pid as usize]
            .into_iter()
            .chain([acked[pid as usize].clone()])
            .collect::<Vec<_>>();
        workload::assert_all_acked_present(&mut client, table.tid, pid, 0, &mine).await;
    }
    // ...and the replicas of each partition converge.
    wait_until_async(WAIT, "equal record counts on every replica", || {
        let mut ns = ns.clone();
        async move {
            let rows = rows(&mut ns).await;
            (0..PARTITIONS).all(|pid| {
                let counts: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.pid == pid)
                    .map(|r| r.record_cnt)
                    .collect();
                counts.len() == 3 && counts[0] >= 0 && counts.iter().all(|c| *c == counts[0])
            })
        }
    })
    .await;
    let all_ops = ops(&mut ns).await;
    assert!(all_ops.iter().all(|op| op.status == "kDone"), "{all_ops:?}");
    assert!(all_ops.iter().any(|op| op.op_type == "kRecoverTable"));
}

/// The nameserver leader dies in the middle of a RecoverTable (ReAddReplica) op: the
/// standby takes over, resumes the op from its last saved task, and finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_nameserver_leader_resumes_an_unfinished_op() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let args = [
        format!("--zk_cluster={}", zk.connect_string()),
        "--zk_root_path=/tessera".to_string(),
        "--zk_session_timeout=3000".to_string(),
        "--quorum_timeout=3000".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tablets = Vec::new();
    for name in ["t0", "t1", "t2"] {
        tablets.push(TabletProcess::start(&dir.path().join(name), &args).await);
    }
    let first = NameserverProcess::start(&dir.path().join("ns0"), &zk, 2000).await;
    let second = NameserverProcess::start(&dir.path().join("ns1"), &zk, 2000).await;
    let leader_endpoint = {
        let mut ns = first.client().await;
        let mut found = None;
        wait_until_async(WAIT, "a nameserver leader that sees three tablets", || {
            let mut probe = ns.clone();
            async move {
                let leads = probe.show_ns(ShowNsRequest {}).await.is_ok_and(|r| {
                    r.into_inner()
                        .nameservers
                        .iter()
                        .any(|n| n.role == "leader")
                });
                leads
            }
        })
        .await;
        for n in ns
            .show_ns(ShowNsRequest {})
            .await
            .unwrap()
            .into_inner()
            .nameservers
        {
            if n.role == "leader" {
                found = Some(n.endpoint);
            }
        }
        found.unwrap()
    };
    let (mut leader, standby) = if leader_endpoint == first.endpoint {
        (first, second)
    } else {
        (second, first)
    };
    leader.wait_leader().await;
    let mut ns = leader.client().await;
    wait_until_async(WAIT, "three healthy tablets", || {
        let mut ns = ns.clone();
        async move {
            let tablets = ns
                .show_tablet(ShowTabletRequest {})
                .await
                .map(|r| r.into_inner().tablets)
                .unwrap_or_default();
            tablets
                .iter()
                .filter(|t| t.state == "kTabletHealthy")
                .count()
                == 3
        }
    })
    .await;
    ns.conf_set(ConfSetRequest {
        key: "auto_failover".into(),
        value: "false".into(),
    })
    .await
    .unwrap();
    let table = ns
        .create_table(CreateTableRequest {
            db: String::new(),
            name: "t1".into(),
            schema: Some(workload::schema().to_proto()),
            partition_num: 1,
            replica_num: 3,
            mode: ReplicationMode::Quorum as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .table
        .unwrap();
    let partition_leader = leaders(&rows(&mut ns).await)[&0].clone();
    let mut writer = tessera_tests::tablet_client(&partition_leader)
        .await
        .unwrap();
    for seq in 0..50 {
        writer
            .put(workload::put_request(table.tid, 0, 0, seq))
            .await
            .unwrap();
    }

    // A follower goes away and is taken out by hand; more writes follow.
    let follower = tablets
        .iter()
        .position(|t| t.endpoint != partition_leader)
        .unwrap();
    let follower_endpoint = tablets[follower].endpoint.clone();
    tablets[follower].kill9();
    wait_until_async(WAIT, "the follower to show offline", || {
        let mut ns = ns.clone();
        let endpoint = follower_endpoint.clone();
        async move {
            let tablets = ns
                .show_tablet(ShowTabletRequest {})
                .await
                .unwrap()
                .into_inner()
                .tablets;
            tablets
                .iter()
                .any(|t| t.endpoint == endpoint && t.state == "kTabletOffline")
        }
    })
    .await;
    ns.offline_endpoint(EndpointRequest {
        endpoint: follower_endpoint.clone(),
    })
    .await
    .unwrap();
    wait_until_async(WAIT, "the OfflineReplica op to finish", || {
        let mut ns = ns.clone();
        async move { ops(&mut ns).await.iter().all(|op| op.status == "kDone") }
    })
    .await;
    for seq in 50..100 {
        writer
            .put(workload::put_request(table.tid, 0, 0, seq))
            .await
            .unwrap();
    }

    // It returns but freezes, so RecoverTable's first task hangs on it...
    tablets[follower].restart().await;
    wait_until_async(WAIT, "the follower to be healthy again", || {
        let mut ns = ns.clone();
        let endpoint = follower_endpoint.clone();
        async move {
            let tablets = ns
                .show_tablet(ShowTabletRequest {})
                .await
                .unwrap()
                .into_inner()
                .tablets;
            tablets
                .iter()
                .any(|t| t.endpoint == endpoint && t.state == "kTabletHealthy")
        }
    })
    .await;
    tablets[follower].pause();
    let recover = ns
        .recover_endpoint(EndpointRequest {
            endpoint: follower_endpoint.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .ops;
    let op_id = recover[0].op_id;
    wait_until_async(WAIT, "the RecoverTable op to be under way", || {
        let mut ns = ns.clone();
        async move {
            ops(&mut ns)
                .await
                .iter()
                .any(|op| op.op_id == op_id && op.status == "kDoing")
        }
    })
    .await;

    // ...and the nameserver leader dies mid-op.
    leader.kill9();
    tablets[follower].resume();
    let ns = standby.client().await;
    wait_until_async(WAIT, "the standby to resume and finish the op", || {
        let mut ns = ns.clone();
        async move {
            ops(&mut ns)
                .await
                .iter()
                .any(|op| op.op_id == op_id && op.status == "kDone")
        }
    })
    .await;
    wait_until_async(WAIT, "all replicas alive with 100 rows", || {
        let mut ns = ns.clone();
        async move {
            let rows = rows(&mut ns).await;
            rows.len() == 3 && rows.iter().all(|r| r.is_alive && r.record_cnt == 100)
        }
    })
    .await;
    let log = standby.log();
    assert!(log.contains("became the nameserver leader"));
    assert!(
        log.lines()
            .any(|l| l.contains("op done") && l.contains(&format!("op_id={op_id}"))),
        "the standby finished op {op_id} itself"
    );
}

/// A supervising daemon restarts a crashed tablet within a second or two, before its
/// ZooKeeper session expires: the nameserver never sees it offline, yet its replicas came
/// back as followers of nobody. The new registration session gives the restart away, and
/// the partitions it led get a leader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tablet_restarted_before_its_session_expired_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 3,
            // Long sessions: the restart below is over well before one expires.
            tablet_session_ms: Some(15_000),
            tablet_args: &["--quorum_timeout=3000"],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await;
    let table = cluster.create_table("t1", PARTITIONS, 3).await;
    let mut ns = cluster.ns().await;
    let before = leaders(&rows(&mut ns).await);
    let victim = before[&0].clone();
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();
    cluster.tablets[index].restart().await;

    // Every partition ends with an alive leader that really leads, and all replicas alive.
    let what = "every partition led by a serving leader, every replica alive";
    let repaired = tessera_tests::wait::poll_until_async(WAIT, || {
        let mut ns = ns.clone();
        async move {
            let rows = rows(&mut ns).await;
            if rows.len() != 3 * PARTITIONS as usize || !rows.iter().all(|r| r.is_alive) {
                return false;
            }
            let leaders = leaders(&rows);
            for (pid, leader) in &leaders {
                let Ok(mut client) = tessera_tests::tablet_client(leader).await else {
                    return false;
                };
                let role = client
                    .get_table_status(tessera_proto::tablet::GetTableStatusRequest {
                        tid: Some(table.tid),
                        pid: Some(*pid),
                    })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().tables.into_iter().next())
                    .map(|s| s.role());
                if role != Some(tessera_proto::tablet::TableRole::Leader) {
                    return false;
                }
            }
            leaders.len() == PARTITIONS as usize
        }
    })
    .await;
    assert!(
        repaired,
        "timed out waiting for {what}:\n{:?}\n{:?}\n{}",
        rows(&mut ns).await,
        ops(&mut ns).await,
        cluster.nameserver.log()
    );
    let log = cluster.nameserver.log();
    assert!(
        log.contains("tablet restarted (registered under a new session)"),
        "{log}"
    );

    // And partition 0 takes writes again.
    let leader = leaders(&rows(&mut ns).await)[&0].clone();
    let mut client = tessera_tests::tablet_client(&leader).await.unwrap();
    client
        .put(workload::put_request(table.tid, 0, 0, 1))
        .await
        .expect("a write to the repaired partition");
}
