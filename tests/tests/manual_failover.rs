//! Failover by hand (auto_failover off) and the quorum rule when too many tablets are
//! down, with real processes.

use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::*;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::ops::set_auto_failover;
use tessera_tests::wait_until_async;
use tessera_tests::workload;

const WAIT: Duration = Duration::from_secs(60);

async fn rows(ns: &mut NameserverClient<AuthChannel>) -> Vec<ShowTableRow> {
    ns.show_table(ShowTableRequest {
        db: String::new(),
        name: "t1".into(),
    })
    .await
    .map(|r| r.into_inner().rows)
    .unwrap_or_default()
}

async fn ops(ns: &mut NameserverClient<AuthChannel>) -> Vec<OpInfo> {
    ns.show_op_status(ShowOpStatusRequest::default())
        .await
        .map(|r| r.into_inner().ops)
        .unwrap_or_default()
}

fn leader_of(rows: &[ShowTableRow], pid: u32) -> Option<String> {
    rows.iter()
        .find(|r| r.pid == pid && r.role == "leader" && r.is_alive)
        .map(|r| r.endpoint.clone())
}

async fn wait_ops_done(ns: &NameserverClient<AuthChannel>, what: &str) {
    wait_until_async(WAIT, what, || {
        let mut ns = ns.clone();
        async move {
            let ops = ops(&mut ns).await;
            !ops.is_empty() && ops.iter().all(|op| op.status == "kDone")
        }
    })
    .await;
}

async fn wait_offline(ns: &NameserverClient<AuthChannel>, endpoint: &str) {
    wait_until_async(WAIT, &format!("{endpoint} to show offline"), || {
        let mut ns = ns.clone();
        let endpoint = endpoint.to_string();
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
}

async fn put(endpoint: &str, pid: u32, seq: u64) -> Result<(), tonic::Status> {
    let mut client = tessera_tests::tablet_client(endpoint)
        .await
        .expect("connect");
    client
        .put(workload::put_request(1, pid, 0, seq))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_fail_over_by_hand_and_quorum_refuses_to_guess() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &["--quorum_timeout=2000"],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await;
    let mut ns = cluster.ns().await;
    let table = cluster.create_table("t1", 1, 3).await;
    let leader = leader_of(&rows(&mut ns).await, 0).unwrap();
    for seq in 0..20 {
        put(&leader, 0, seq).await.unwrap();
    }

    // While auto_failover is on, changing replicas by hand is refused, with the reason.
    let refused = ns
        .offline_endpoint(EndpointRequest {
            endpoint: leader.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("auto_failover is on"),
        "{}",
        refused.message()
    );

    // Off: a dead leader changes nothing by itself.
    set_auto_failover(&mut ns, false).await;
    let victim = cluster.tablet_index(&leader);
    cluster.tablets[victim].kill9();
    wait_offline(&ns, &leader).await;
    for _ in 0..10 {
        assert!(
            ops(&mut ns).await.is_empty(),
            "no op starts while auto_failover is off"
        );
        assert_eq!(
            leader_of(&rows(&mut ns).await, 0).as_deref(),
            Some(leader.as_str())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // offlineendpoint: a new leader from the two survivors, and writes go on.
    let started = ns
        .offline_endpoint(EndpointRequest {
            endpoint: leader.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .ops;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].op_type, "kChangeLeader");
    wait_ops_done(&ns, "offlineendpoint's ops to finish").await;
    let new_leader = leader_of(&rows(&mut ns).await, 0).unwrap();
    assert_ne!(new_leader, leader);
    put(&new_leader, 0, 20)
        .await
        .expect("quorum write with two of three replicas");

    // recoverendpoint: the old leader returns as a follower and catches up.
    cluster.tablets[victim].restart().await;
    wait_until_async(WAIT, "the returned tablet to be healthy", || {
        let mut ns = ns.clone();
        let endpoint = leader.clone();
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
    let recovering = ns
        .recover_endpoint(EndpointRequest {
            endpoint: leader.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .ops;
    assert_eq!(recovering[0].op_type, "kRecoverTable");
    wait_ops_done(&ns, "recoverendpoint's ops to finish").await;
    wait_until_async(WAIT, "three alive replicas with equal counts", || {
        let mut ns = ns.clone();
        async move {
            let rows = rows(&mut ns).await;
            rows.len() == 3 && rows.iter().all(|r| r.is_alive && r.record_cnt == 21)
        }
    })
    .await;

    // RecoverTable on the partition's leader is refused, saying why.
    let current = leader_of(&rows(&mut ns).await, 0).unwrap();
    let refused = ns
        .recover_table(RecoverTableRequest {
            db: String::new(),
            name: "t1".into(),
            pid: 0,
            endpoint: current.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        refused
            .message()
            .contains(&format!("{current} leads partition 0")),
        "{}",
        refused.message()
    );

    // Finished ops can be deleted, not cancelled; unknown ops are named.
    let first = ops(&mut ns).await[0].op_id;
    let err = ns
        .cancel_op(OpIdRequest { op_id: first })
        .await
        .unwrap_err();
    assert!(err.message().contains("already ended"), "{}", err.message());
    ns.delete_op(OpIdRequest { op_id: first }).await.unwrap();
    assert!(ops(&mut ns).await.iter().all(|op| op.op_id != first));
    let err = ns.delete_op(OpIdRequest { op_id: 999 }).await.unwrap_err();
    assert!(err.message().contains("no op 999"), "{}", err.message());

    // Two of three tablets down in quorum mode: no replica can be promoted safely, so the
    // partition stays without a leader and showtable says why.
    set_auto_failover(&mut ns, true).await;
    let leader = leader_of(&rows(&mut ns).await, 0).unwrap();
    let follower = rows(&mut ns)
        .await
        .into_iter()
        .find(|r| r.endpoint != leader)
        .unwrap()
        .endpoint;
    let survivor = rows(&mut ns)
        .await
        .into_iter()
        .find(|r| r.endpoint != leader && r.endpoint != follower)
        .unwrap()
        .endpoint;
    for endpoint in [&leader, &follower] {
        let index = cluster.tablet_index(endpoint);
        cluster.tablets[index].kill9();
    }
    wait_until_async(WAIT, "a failed ChangeLeader that says why", || {
        let mut ns = ns.clone();
        async move {
            let rows = rows(&mut ns).await;
            ops(&mut ns)
                .await
                .iter()
                .any(|op| op.op_type == "kChangeLeader" && op.status == "kFailed")
                && rows
                    .iter()
                    .any(|r| r.note.contains("only 1 of the 3 replicas that may vote"))
                && leader_of(&rows, 0).is_none()
        }
    })
    .await;
    let failed = ops(&mut ns)
        .await
        .into_iter()
        .find(|op| op.op_type == "kChangeLeader" && op.status == "kFailed")
        .unwrap();
    assert!(failed.reason.contains("force"), "{}", failed.reason);
    let refused = put(&survivor, 0, 21).await.unwrap_err();
    assert_eq!(
        detail_of(&refused).unwrap().code(),
        ErrorCode::NotLeader,
        "the survivor does not lead"
    );

    // force: the operator accepts the risk; the survivor leads and takes writes.
    set_auto_failover(&mut ns, false).await;
    ns.change_leader(ChangeLeaderRequest {
        db: String::new(),
        name: "t1".into(),
        pid: 0,
        candidate: String::new(),
        force: true,
    })
    .await
    .unwrap();
    wait_until_async(WAIT, "the forced leader", || {
        let mut ns = ns.clone();
        let survivor = survivor.clone();
        async move { leader_of(&rows(&mut ns).await, 0).as_deref() == Some(survivor.as_str()) }
    })
    .await;
    put(&survivor, 0, 22)
        .await
        .expect("writes after a forced change of leader");
    assert!(
        rows(&mut ns).await.iter().all(|r| r.note.is_empty()),
        "the reason is cleared"
    );
    assert_eq!(table.tid, 1);
}
