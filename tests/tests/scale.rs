//! Many partitions: two thousand partitions on three tablets, one tablet killed, and every
//! partition it led has a leader again, in the metadata and on the tablets themselves.
//!
//! Before heartbeats were batched per tablet pair, the per-partition heartbeats of some
//! 1,500 partitions filled two cores, followers took their leaders for silent, and this
//! test could not pass. `SCALE_DIR=…` keeps the processes' logs.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_proto::tablet::{GetTableStatusRequest, TableRole};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::table_rows;
use tessera_tests::wait_until_async;

const TABLES: u32 = 20;
const PARTITIONS: u32 = 100;

/// Leaders by (tid, pid) that the tablets still running report.
async fn leading_replicas(cluster: &NsCluster, alive: &[usize]) -> BTreeMap<(u32, u32), usize> {
    let mut leading = BTreeMap::new();
    for &index in alive {
        let Ok(answer) = cluster.tablets[index]
            .client()
            .await
            .get_table_status(GetTableStatusRequest::default())
            .await
        else {
            continue;
        };
        for status in answer.into_inner().tables {
            if status.role() == TableRole::Leader && !status.fenced {
                *leading.entry((status.tid, status.pid)).or_insert(0) += 1;
            }
        }
    }
    leading
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_partitions_all_lead_again_after_a_tablet_dies() {
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("SCALE_DIR").map(std::path::PathBuf::from);
    let root = keep.as_deref().unwrap_or(dir.path());
    let mut cluster = NsCluster::start(root, NsClusterSpec::three_tablets()).await;
    let mut tids = Vec::new();
    for t in 0..TABLES {
        tids.push(
            cluster
                .create_table(&format!("s{t}"), PARTITIONS, 3)
                .await
                .tid,
        );
    }
    let dead = cluster.tablets[0].endpoint.clone();
    let mut ns = cluster.ns().await;
    let mut led_by_dead = 0;
    for t in 0..TABLES {
        let rows = table_rows(&mut ns, &format!("s{t}")).await;
        assert_eq!(rows.len(), (PARTITIONS * 3) as usize, "table s{t} is whole");
        led_by_dead += rows
            .iter()
            .filter(|r| r.role == "leader" && r.endpoint == dead)
            .count();
    }
    assert!(led_by_dead > 300, "the victim leads a share: {led_by_dead}");

    cluster.tablets[0].kill9();
    let total = (TABLES * PARTITIONS) as usize;
    wait_until_async(
        Duration::from_secs(600),
        "every partition to have a live leader on a running tablet",
        || async {
            let mut ns = cluster.ns().await;
            let mut led = 0;
            for t in 0..TABLES {
                let rows = table_rows(&mut ns, &format!("s{t}")).await;
                led += rows
                    .iter()
                    .filter(|r| r.role == "leader" && r.is_alive && r.endpoint != dead)
                    .count();
            }
            led == total
        },
    )
    .await;
    // Each op ran to its end once: a pass of the pipeline that read an op just before
    // it ended must not run it again from a stale task (a ChangeLeader run twice takes
    // another term and promotes again).
    let log = cluster.nameserver.log();
    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("op done")) {
        if let Some(id) = line.split_whitespace().find(|w| w.starts_with("op_id=")) {
            *ends.entry(id).or_default() += 1;
        }
    }
    let repeated: Vec<_> = ends.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "ops run to their end more than once: {repeated:?}"
    );
    assert!(ends.len() >= led_by_dead, "{} ops ended", ends.len());
    // The outage's ops were persisted together: their ids came from a few writes of the
    // id counter, not one each (a node's data version counts its writes).
    let zk = zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .unwrap();
    let (_, counter) = zk.get_data("/tessera/op/op_index").await.unwrap();
    assert!(
        (counter.version as usize) * 4 < ends.len(),
        "{} writes of the op id counter for {} ops",
        counter.version,
        ends.len()
    );
    wait_until_async(
        Duration::from_secs(120),
        "the running tablets to lead every partition, each exactly once",
        || async {
            let leading = leading_replicas(&cluster, &[1, 2]).await;
            leading.len() == total
                && leading.values().all(|&n| n == 1)
                && leading.keys().all(|(tid, _)| tids.contains(tid))
        },
    )
    .await;
}
