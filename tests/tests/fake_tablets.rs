//! The nameserver on fake tablets (`tessera_tests::fake_tablet`), which the
//! million-partition simulation of `scripts/bench-scale.sh` runs on: a table is created
//! on them, and when one is killed and a follower reports its leader gone, every
//! partition it led gets a new leader, in the metadata and on the fake tablets.

use std::time::Duration;

use tessera_proto::nameserver::LeaderTroubleRequest;
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
}
