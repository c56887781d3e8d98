//! A call of the SDK ends at its deadline: a paused leader (nothing else to answer, with
//! auto_failover off) makes it fail at the deadline, not a connection or request timeout
//! later, whether the client already had a connection to the tablet or had to make one;
//! `Client::within` gives calls a deadline of their own.

use std::time::{Duration, Instant};

use tessera_common::Value;
use tessera_ns_client::ClientError;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::workload::sdk_row;

/// Slack for scheduling on a loaded machine; the bound checked is the deadline's, not a
/// speed.
const SLACK: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_end_at_their_deadline_while_the_leader_is_paused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::defaults()).await;
    cluster.create_table("t1", 1, 3).await;
    let confset = tessera_tests::credentials::ns_client_command()
        .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
        .arg("--zk_root_path=/tessera")
        .arg("--cmd=confset auto_failover false")
        .output()
        .expect("run ns_client");
    assert!(confset.status.success(), "{confset:?}");

    // The client's own deadline is long; the calls below set shorter ones.
    let warm = cluster.sdk(Duration::from_secs(120)).await;
    warm.put("default", "t1", sdk_row("a", 1)).await.unwrap();
    let leader = leaders(&table_rows(&mut cluster.ns().await, "t1").await)[&0].clone();
    let paused = &cluster.tablets[cluster.tablet_index(&leader)];
    paused.pause();

    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let put = warm
        .within(deadline, warm.put("default", "t1", sdk_row("a", 2)))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(put, Err(ClientError::Unavailable { .. })),
        "a put to a paused leader fails: {put:?}"
    );
    assert!(
        took >= deadline && took < deadline + SLACK,
        "the put ended at its deadline of {deadline:?}, after {took:?}"
    );

    // A client that never talked to the tablet must connect first: that too ends at the
    // deadline (its option, here).
    let cold = cluster.sdk(deadline).await;
    let started = Instant::now();
    let get = cold
        .get("default", "t1", vec![Value::String("a".into())])
        .await;
    let took = started.elapsed();
    assert!(
        matches!(get, Err(ClientError::Unavailable { .. })),
        "a get from a paused leader fails: {get:?}"
    );
    assert!(
        took < deadline + SLACK,
        "the get ended at its deadline of {deadline:?}, after {took:?}"
    );

    paused.resume();
    warm.put("default", "t1", sdk_row("a", 3)).await.unwrap();
}
