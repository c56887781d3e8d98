//! The promises of quorum mode under double failures, with real processes: a write that
//! was acknowledged survives the loss of any minority of the replicas, and a retried
//! write is applied once.

use std::time::Duration;

use tessera_common::Value;
use tessera_ns_client::ClientError;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::wait_until_async;
use tessera_tests::workload::sdk_row;

const WAIT: Duration = Duration::from_secs(90);

/// Both followers die one after the other and are taken offline; the leader must not
/// acknowledge writes alone (before, it did, and all of them were lost when it died and
/// a follower was promoted). Every write acknowledged at any point survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_two_of_three_replicas_stops_writes_instead_of_losing_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 1, 3).await;
    let mut ns = cluster.ns().await;
    let rows = table_rows(&mut ns, "t1").await;
    let leader = leaders(&rows)[&0].clone();
    let followers: Vec<String> = rows
        .iter()
        .map(|r| r.endpoint.clone())
        .filter(|e| *e != leader)
        .collect();
    assert_eq!(followers.len(), 2, "{rows:?}");

    let writer = cluster.sdk(Duration::from_secs(2)).await;
    let mut acked = Vec::new();
    let put = |key: String, i: i64| {
        let writer = &writer;
        async move {
            writer
                .put("default", "t1", sdk_row(&key, i))
                .await
                .map(|_| key)
        }
    };
    for i in 0..20 {
        acked.push(
            put(format!("all-{i}"), i)
                .await
                .expect("write with every replica"),
        );
    }

    let first = cluster.tablet_index(&followers[0]);
    cluster.tablets[first].kill9();
    cluster.wait_marked_dead("t1", &followers[0]).await;
    for i in 0..10 {
        acked.push(
            put(format!("two-{i}"), i)
                .await
                .expect("two of three replicas still make a majority"),
        );
    }

    let second = cluster.tablet_index(&followers[1]);
    cluster.tablets[second].kill9();
    cluster.wait_marked_dead("t1", &followers[1]).await;
    let mut refusals = Vec::new();
    for i in 0..30 {
        match put(format!("alone-{i}"), i).await {
            Ok(key) => acked.push(key),
            Err(e) => refusals.push(e),
        }
    }
    assert_eq!(
        refusals.len(),
        30,
        "a leader alone acknowledged {} writes",
        30 - refusals.len()
    );
    assert!(
        refusals
            .iter()
            .all(|e| matches!(e, ClientError::Unavailable { last, .. }
            if last.contains("not enough replicas: 1 of 3 hold the partition, 2 needed"))),
        "the refusal says why: {}",
        refusals[0]
    );

    // The leader dies too; the two followers come back and one of them is promoted.
    let leader_index = cluster.tablet_index(&leader);
    cluster.tablets[leader_index].kill9();
    cluster.tablets[first].restart().await;
    cluster.tablets[second].restart().await;
    wait_until_async(WAIT, "a returning follower to lead", || {
        let mut ns = ns.clone();
        let leader = leader.clone();
        async move {
            leaders(&table_rows(&mut ns, "t1").await)
                .get(&0)
                .is_some_and(|now| *now != leader)
        }
    })
    .await;

    let reader = cluster.sdk(Duration::from_secs(60)).await;
    for (i, key) in acked.iter().enumerate() {
        let found = reader
            .get("default", "t1", vec![Value::String(key.clone())])
            .await
            .unwrap_or_else(|e| panic!("read {key}: {e}"));
        assert!(
            found.is_some(),
            "acknowledged row {key} (#{i}) was lost; {} were acknowledged",
            acked.len()
        );
    }
    // The new pair takes writes again.
    reader
        .put("default", "t1", sdk_row("after", 1))
        .await
        .expect("a majority is back");
}

/// One put is in flight while both followers are frozen longer than the quorum timeout:
/// the SDK retries it (same client id and sequence number) until the followers thaw and
/// rejoin. The row is stored once (before, every retry appended another copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_retried_while_followers_are_frozen_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 1, 3).await;
    let mut ns = cluster.ns().await;
    let rows = table_rows(&mut ns, "t1").await;
    let leader = leaders(&rows)[&0].clone();
    let followers: Vec<usize> = rows
        .iter()
        .filter(|r| r.endpoint != leader)
        .map(|r| cluster.tablet_index(&r.endpoint))
        .collect();
    let sdk = std::sync::Arc::new(cluster.sdk(Duration::from_secs(90)).await);
    sdk.put("default", "t1", sdk_row("warm-up", 0))
        .await
        .expect("a write with every replica up");

    for &f in &followers {
        cluster.tablets[f].pause();
    }
    let in_flight = tokio::spawn({
        let sdk = sdk.clone();
        async move { sdk.put("default", "t1", sdk_row("retried", 1)).await }
    });
    // Frozen past their sessions: the nameserver takes them offline meanwhile, and the
    // SDK retries the put after each quorum timeout.
    for r in rows.iter().filter(|r| r.endpoint != leader) {
        cluster.wait_marked_dead("t1", &r.endpoint).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the put cannot be acknowledged while both followers are frozen"
    );
    for &f in &followers {
        cluster.tablets[f].resume();
    }
    in_flight
        .await
        .unwrap()
        .expect("the retried put is acknowledged once the followers are back");

    let copies = sdk
        .count("default", "t1", vec![Value::String("retried".into())])
        .await
        .expect("count");
    assert_eq!(copies, 1, "the retried put was stored {copies} times");
}
