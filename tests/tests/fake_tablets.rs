//! The nameserver on fake tablets (`tessera_tests::fake_tablet`), which the
//! million-partition simulation of `scripts/bench-scale.sh` runs on: a table is created
//! on them, and when one is killed and a follower reports its leader gone, every
//! partition it led gets a new leader, in the metadata and on the fake tablets. The
//! leading nameserver answers for a table from its copy, not from ZooKeeper.

use std::time::Duration;

use tessera_proto::nameserver::{LeaderTroubleRequest, ShowSchemaRequest};
use tessera_tests::fake_tablet::FakeTablet;
use tessera_tests::nscluster::NsCluster;
use tessera_tests::routed::table_rows;
use tessera_tests::{wait_until_async, NameserverProcess, ZooKeeper};

const PARTITIONS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fake_tablets_partitions_are_led_again() {
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let nameserver = NameserverProcess::start(&dir.path().join("ns"), &zk, 2000).await;
    nameserver.wait_leader().await;
    let (cluster, mut fakes) =
        NsCluster::on_fake_tablets(zk, nameserver, 4, Duration::from_secs(3)).await;
    cluster.create_table("f", PARTITIONS as u32, 3).await;
    let held: usize = fakes.iter().map(FakeTablet::replica_count).sum();
    assert_eq!(
        held,
        PARTITIONS * 3,
        "every replica was created on a fake tablet"
    );
    let leading: usize = fakes.iter().map(FakeTablet::leading).sum();
    assert_eq!(leading, PARTITIONS, "one leader per partition");

    let mut ns = cluster.ns().await;
    let victim = fakes[0].endpoint.clone();
    let led = table_rows(&mut ns, "f")
        .await
        .iter()
        .filter(|r| r.role == "leader" && r.endpoint == victim)
        .count();
    assert!(led > 0, "the victim leads some partitions");
    fakes[0].kill();
    let verdict = ns
        .report_leader_trouble(LeaderTroubleRequest {
            reporter: fakes[1].endpoint.clone(),
            leader: victim.clone(),
            reason: "replication stream ended: connection reset".into(),
        })
        .await
        .expect("the report is taken")
        .into_inner()
        .verdict;
    assert!(
        ["gone", "known", "checking"].contains(&verdict.as_str()),
        "a killed fake tablet refuses the nameserver's probe: {verdict}"
    );

    wait_until_async(
        Duration::from_secs(60),
        "every partition to be led by a live fake tablet",
        || {
            let mut ns = ns.clone();
            let victim = victim.clone();
            async move {
                table_rows(&mut ns, "f")
                    .await
                    .iter()
                    .filter(|r| r.role == "leader" && r.is_alive && r.endpoint != victim)
                    .count()
                    == PARTITIONS
            }
        },
    )
    .await;
    let leading: usize = fakes[1..].iter().map(FakeTablet::leading).sum();
    assert_eq!(
        leading, PARTITIONS,
        "the surviving fake tablets lead every partition, once each"
    );
    assert_change_leaders_written_twice(&cluster.zk, led).await;
    // Counted just after the metadata copy sees the write: waited for, not read at once.
    let endpoint = cluster.nameserver.endpoint.clone();
    wait_until_async(
        Duration::from_secs(10),
        "every ChangeLeader's end to go in the transaction that recorded its leader",
        || {
            let endpoint = endpoint.clone();
            async move { tessera_tests::process::op_ends_written_with_metadata(&endpoint) >= led as f64 }
        },
    )
    .await;
}

/// Each ChangeLeader's op node is written twice after its creation (three times before):
/// with the leader its fence chose (and the term), and with its end, in the transaction
/// that records the new leader.
async fn assert_change_leaders_written_twice(zk: &ZooKeeper, expected: usize) {
    use tessera_proto::nameserver::OpInfo;
    let client = zookeeper_client::Client::connect(&zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let ops_dir = "/tessera/op/op_data";
    let mut change_leaders = 0;
    for child in client.list_children(ops_dir).await.expect("list the ops") {
        let (data, stat) = client
            .get_data(&format!("{ops_dir}/{child}"))
            .await
            .expect("read an op");
        let op = <OpInfo as prost::Message>::decode(data.as_slice()).expect("an op");
        if op.op_type != "kChangeLeader" {
            continue;
        }
        change_leaders += 1;
        assert_eq!(op.status, "kDone", "op {} ended: {op:?}", op.op_id);
        assert_eq!(
            stat.version, 2,
            "op {} written with its chosen leader, then its end with the metadata",
            op.op_id
        );
    }
    assert_eq!(
        change_leaders, expected,
        "one ChangeLeader per partition led"
    );
}

/// Requests ZooKeeper has received so far, by its `mntr` report.
fn zookeeper_requests(zk: &ZooKeeper) -> u64 {
    let report = zk.four_letter("mntr").expect("mntr answers");
    report
        .lines()
        .find_map(|line| line.strip_prefix("zk_packets_received"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no zk_packets_received in:\n{report}"))
}

/// Commands that look a table up (`recoverdata` sends tens of thousands: ChangeLeader,
/// RecoverTable, UpdateTableAlive) are answered from the leader's copy: each read every
/// node of its table from ZooKeeper before, seventeen for a thousand partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_answers_for_a_table_from_its_copy() {
    const CALLS: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let zk = ZooKeeper::start(&dir.path().join("zk"));
    let nameserver = NameserverProcess::start(&dir.path().join("ns"), &zk, 2000).await;
    nameserver.wait_leader().await;
    let (cluster, _fakes) =
        NsCluster::on_fake_tablets(zk, nameserver, 3, Duration::from_secs(3)).await;
    cluster.create_table("wide", 1000, 3).await;
    let ns = cluster.ns().await;
    let schema = || {
        let mut ns = ns.clone();
        async move {
            ns.show_schema(ShowSchemaRequest {
                db: String::new(),
                name: "wide".into(),
            })
            .await
            .expect("showschema")
            .into_inner()
            .table
            .expect("a table")
        }
    };
    // Once the copy holds the table (the create's own write puts it there).
    wait_until_async(Duration::from_secs(30), "the table in full", || async {
        schema().await.partitions.len() == 1000
    })
    .await;

    let before = zookeeper_requests(&cluster.zk);
    for _ in 0..CALLS {
        let table = schema().await;
        assert_eq!(table.partitions.len(), 1000);
    }
    let requests = zookeeper_requests(&cluster.zk) - before;
    // The nameserver's and the fakes' lease renewals go on meanwhile, a few dozen a
    // second. The table's own seventeen nodes would be 1,700 more.
    assert!(
        requests < CALLS * 5,
        "{requests} ZooKeeper requests for {CALLS} lookups of a 1,000-partition table"
    );
}
