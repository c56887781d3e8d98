//! Two real nameservers and three real tablets in a real ZooKeeper: election and
//! failover, standbys redirecting, placement, tables created on the tablets with their
//! roles, the show commands, configuration, drop, and the tablet registry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::*;
use tessera_proto::tablet::{GetTableStatusRequest, ReplicationMode};
use tessera_tests::process::http_get;
use tessera_tests::workload;
use tessera_tests::{wait_until_async, NameserverProcess, TabletProcess, ZooKeeper};

const WAIT: Duration = Duration::from_secs(30);

async fn leader_of(ns: &NameserverProcess) -> Option<String> {
    let list = ns
        .client()
        .await
        .show_ns(ShowNsRequest {})
        .await
        .ok()?
        .into_inner();
    list.nameservers
        .into_iter()
        .find(|n| n.role == "leader")
        .map(|n| n.endpoint)
}

fn create_request(name: &str, partition_num: u32, replica_num: u32) -> CreateTableRequest {
    tessera_tests::nscluster::quorum_table_request(name, partition_num, replica_num)
}

async fn show_table(client: &mut NameserverClient<AuthChannel>, name: &str) -> Vec<ShowTableRow> {
    client
        .show_table(ShowTableRequest {
            db: String::new(),
            name: name.into(),
        })
        .await
        .expect("showtable")
        .into_inner()
        .rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nameservers_elect_place_create_show_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let tablet_args = [
        format!("--zk_cluster={}", zk.connect_string()),
        "--zk_root_path=/tessera".to_string(),
        "--zk_session_timeout=3000".to_string(),
    ];
    let tablet_args: Vec<&str> = tablet_args.iter().map(String::as_str).collect();
    let mut tablets = Vec::new();
    for name in ["t0", "t1", "t2"] {
        tablets.push(TabletProcess::start(&dir.path().join(name), &tablet_args).await);
    }
    let first = NameserverProcess::start(&dir.path().join("ns0"), &zk, 2000).await;
    let second = NameserverProcess::start(&dir.path().join("ns1"), &zk, 2000).await;

    // One leads, the other stands by, and both say so.
    wait_until_async(WAIT, "a nameserver leader", || async {
        leader_of(&first).await.is_some()
    })
    .await;
    let leader_endpoint = leader_of(&first).await.unwrap();
    // The standby answers once it has read the users the new leader just made.
    wait_until_async(WAIT, "the standby to name the same leader", || async {
        leader_of(&second).await.as_deref() == Some(leader_endpoint.as_str())
    })
    .await;
    let (mut leader, standby) = if leader_endpoint == first.endpoint {
        (first, second)
    } else {
        (second, first)
    };
    leader.wait_leader().await;
    let roles = leader
        .client()
        .await
        .show_ns(ShowNsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roles.nameservers.len(), 2);
    assert_eq!(
        roles
            .nameservers
            .iter()
            .filter(|n| n.role == "standby")
            .count(),
        1
    );

    let mut ns = leader.client().await;
    wait_until_async(WAIT, "three healthy tablets", || {
        let mut ns = ns.clone();
        async move {
            let tablets = ns
                .show_tablet(ShowTabletRequest {})
                .await
                .unwrap()
                .into_inner()
                .tablets;
            tablets.len() == 3 && tablets.iter().all(|t| t.state == "kTabletHealthy")
        }
    })
    .await;

    // HTTP on the same port: the leader check routes a load balancer to the leader.
    assert_eq!(http_get(&leader.endpoint, "/api/leader-check").0, 200);
    assert_eq!(http_get(&standby.endpoint, "/api/leader-check").0, 404);
    assert_eq!(http_get(&standby.endpoint, "/api/leader-check/503").0, 503);
    assert_eq!(http_get(&leader.endpoint, "/api/leader-check/503").0, 200);
    let (status, body) = http_get(&standby.endpoint, "/api/health");
    assert_eq!((status, body.trim()), (200, "ok standby"));

    // A standby refuses changes and names the leader.
    let refused = standby
        .client()
        .await
        .create_table(create_request("t1", 4, 3))
        .await
        .unwrap_err();
    let detail = detail_of(&refused).unwrap();
    assert_eq!(detail.code(), ErrorCode::NotLeader);
    assert_eq!(detail.leader, leader.endpoint);

    // Placement: distinct tablets per partition, leaders spread over all three.
    let table = ns
        .create_table(create_request("t1", 4, 3))
        .await
        .unwrap()
        .into_inner()
        .table
        .unwrap();
    assert_eq!((table.tid, table.partitions.len()), (1, 4));
    let mut leaders = BTreeMap::new();
    for partition in &table.partitions {
        let endpoints: BTreeSet<_> = partition
            .replicas
            .iter()
            .map(|r| r.endpoint.clone())
            .collect();
        assert_eq!(
            endpoints.len(),
            3,
            "partition {} on distinct tablets",
            partition.pid
        );
        let leader = partition.replicas.iter().find(|r| r.is_leader).unwrap();
        *leaders.entry(leader.endpoint.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        leaders.len(),
        3,
        "every tablet leads a partition: {leaders:?}"
    );

    // The replicas exist on the tablets with their roles: a quorum write to a leader works
    // and reaches its followers.
    let partition = &table.partitions[0];
    let leader_tablet = tablets
        .iter()
        .find(|t| {
            t.endpoint
                == partition
                    .replicas
                    .iter()
                    .find(|r| r.is_leader)
                    .unwrap()
                    .endpoint
        })
        .unwrap();
    leader_tablet
        .client()
        .await
        .put(workload::put_request(table.tid, 0, 0, 0))
        .await
        .expect("quorum put on the placed leader");
    wait_until_async(
        WAIT,
        "showtable to show offset 1 on every replica of pid 0",
        || {
            let mut ns = ns.clone();
            async move {
                let rows = show_table(&mut ns, "t1").await;
                rows.iter()
                    .filter(|r| r.pid == 0)
                    .all(|r| r.offset == 1 && r.record_cnt == 1)
            }
        },
    )
    .await;
    let rows = show_table(&mut ns, "t1").await;
    assert_eq!(rows.len(), 12);
    assert_eq!(rows.iter().filter(|r| r.role == "leader").count(), 4);
    let (status, metrics) = http_get(&leader.endpoint, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "tessera_nameserver_is_leader 1",
        "tessera_tablets{state=\"healthy\"} 3",
        "tessera_partitions_without_leader 0",
        "# TYPE tessera_nameserver_grpc_calls counter",
    ] {
        assert!(metrics.contains(line), "metrics lack `{line}`:\n{metrics}");
    }
    assert!(rows
        .iter()
        .all(|r| r.is_alive && r.mode == ReplicationMode::Quorum as i32 && r.memused >= 0));

    // Clear errors for what cannot be done.
    let too_many = ns
        .create_table(create_request("t2", 1, 4))
        .await
        .unwrap_err();
    assert!(
        too_many
            .message()
            .contains("replicanum 4 is more than the 3 healthy tablets"),
        "{}",
        too_many.message()
    );
    // A request that would make the nameserver allocate without bound is refused, and
    // the nameserver is still there to answer the next one.
    let huge = ns
        .create_table(create_request("t3", 4_000_000_000, 1))
        .await
        .unwrap_err();
    assert!(
        huge.message()
            .contains("partitionnum 4000000000 is more than the most a table may have"),
        "{}",
        huge.message()
    );
    let exists = ns
        .create_table(create_request("t1", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(detail_of(&exists).unwrap().code(), ErrorCode::TableExists);
    let bad_name = ns
        .create_table(create_request("no-dashes", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&bad_name).unwrap().code(),
        ErrorCode::InvalidArgument
    );
    let missing = ns
        .show_table(ShowTableRequest {
            db: String::new(),
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&missing).unwrap().code(),
        ErrorCode::TableNotFound
    );

    // Configuration.
    let conf = ns
        .conf_get(ConfGetRequest { key: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        conf.entries,
        vec![ConfEntry {
            key: "auto_failover".into(),
            value: "true".into()
        }]
    );
    ns.conf_set(ConfSetRequest {
        key: "auto_failover".into(),
        value: "false".into(),
    })
    .await
    .unwrap();
    let conf = ns
        .conf_get(ConfGetRequest {
            key: "auto_failover".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(conf.entries[0].value, "false");
    let bad = ns
        .conf_set(ConfSetRequest {
            key: "auto_failover".into(),
            value: "maybe".into(),
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("true or false"), "{}", bad.message());

    // The leader dies: the standby takes over with all the metadata.
    leader.kill9();
    wait_until_async(WAIT, "the standby to lead", || async {
        leader_of(&standby).await.as_deref() == Some(standby.endpoint.as_str())
    })
    .await;
    // First in the election order is not yet leading: it still has to take the lock.
    standby.wait_leader().await;
    let mut ns = standby.client().await;
    assert_eq!(show_table(&mut ns, "t1").await.len(), 12);
    let conf = ns
        .conf_get(ConfGetRequest { key: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        conf.entries[0].value, "false",
        "configuration survives the failover"
    );
    wait_until_async(WAIT, "the new leader to see the tablets", || {
        let mut ns = ns.clone();
        async move {
            ns.show_tablet(ShowTabletRequest {})
                .await
                .unwrap()
                .into_inner()
                .tablets
                .len()
                == 3
        }
    })
    .await;
    let second_table = ns
        .create_table(create_request("t2", 2, 2))
        .await
        .unwrap()
        .into_inner()
        .table
        .unwrap();
    assert_eq!(second_table.tid, 2, "the table id counter carries on");

    // Drop removes the metadata and the replicas.
    ns.drop_table(DropTableRequest {
        db: String::new(),
        name: "t1".into(),
    })
    .await
    .unwrap();
    let gone = ns
        .show_table(ShowTableRequest {
            db: String::new(),
            name: "t1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(detail_of(&gone).unwrap().code(), ErrorCode::TableNotFound);
    for tablet in &tablets {
        let left = tablet
            .client()
            .await
            .get_table_status(GetTableStatusRequest {
                tid: Some(1),
                pid: None,
            })
            .await
            .unwrap()
            .into_inner()
            .tables;
        assert!(left.is_empty(), "{} still holds table 1", tablet.endpoint);
    }

    // A tablet that dies is reported offline once its session expires.
    let dead = tablets[2].endpoint.clone();
    tablets[2].kill9();
    wait_until_async(WAIT, "the dead tablet to show offline", || {
        let mut ns = ns.clone();
        let dead = dead.clone();
        async move {
            let tablets = ns
                .show_tablet(ShowTabletRequest {})
                .await
                .unwrap()
                .into_inner()
                .tablets;
            tablets
                .iter()
                .any(|t| t.endpoint == dead && t.state == "kTabletOffline")
        }
    })
    .await;
    assert!(standby.log().contains("became the nameserver leader"));
}
