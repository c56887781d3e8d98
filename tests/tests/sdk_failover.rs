//! An application writing through the SDK in a plain loop while the leader tablet of
//! its partitions is killed: every write eventually succeeds with no retry code here,
//! and every one is readable afterwards.

use tessera_common::Value;
use tessera_ns_client::{Client, ClientOptions};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows};

fn row(i: i64) -> Vec<Value> {
    vec![
        Value::String(format!("key{i}")),
        Value::Int64(i),
        Value::Int64(i * 7),
        Value::String("application data".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_application_writes_straight_through_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 4, 3).await;
    let client = Client::connect(&cluster.zk.connect_string(), "/tessera")
        .await
        .unwrap();

    let mut ns = cluster.ns().await;
    let victim = leaders(&table_rows(&mut ns, "t1").await)[&0].clone();
    for i in 0..600 {
        if i == 200 {
            let index = cluster.tablet_index(&victim);
            cluster.tablets[index].kill9();
        }
        client
            .put("default", "t1", row(i))
            .await
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
    let now = leaders(&table_rows(&mut ns, "t1").await);
    assert!(
        now.values().all(|e| *e != victim),
        "the victim leads nothing any more: {now:?}"
    );

    for i in 0..600 {
        let found = client
            .get("default", "t1", vec![Value::String(format!("key{i}"))])
            .await
            .unwrap_or_else(|e| panic!("read {i} failed: {e}"));
        assert_eq!(found, Some(row(i)), "row {i}");
    }
    // Bad input is an error at once, not a retry until the deadline.
    let err = client
        .put("default", "t1", vec![Value::Int64(1)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("columns"), "{err}");
    let err = client
        .get("default", "nope", vec![Value::String("x".into())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Reads from followers never return older data than the client has seen: each read
/// right after a write finds that write (a follower that has not applied it yet refuses
/// the read's `min_offset`, and the leader answers), and followers do serve reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_reads_never_go_back_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &[],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await;
    cluster.create_table("t1", 1, 3).await;
    let options = ClientOptions {
        read_from_followers: true,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&cluster.zk.connect_string(), "/tessera", options)
        .await
        .unwrap();
    for i in 0..300 {
        client.put("default", "t1", row(i)).await.unwrap();
        let found = client
            .get("default", "t1", vec![Value::String(format!("key{i}"))])
            .await
            .unwrap();
        assert_eq!(found, Some(row(i)), "read {i} went back in time");
    }
    let stats = client.read_stats();
    assert_eq!(stats.from_followers + stats.from_leaders, 300);
    assert!(
        stats.from_followers > 0,
        "followers served reads: {stats:?}"
    );

    // A delete counts as seen too: a follower scan right after it never shows the rows
    // it removed (found by the fault-injection bed as a non-monotonic read).
    let mut served = 0;
    for i in 0..50 {
        let key = vec![Value::String(format!("key{i}"))];
        let (_, put_offset) = client.put("default", "t1", row(i)).await.unwrap();
        client.delete("default", "t1", key.clone()).await.unwrap();
        if let Some(read) = client
            .scan_from_follower("default", "t1", key)
            .await
            .unwrap()
        {
            served += 1;
            assert!(
                read.min_offset > put_offset,
                "the follower scan asked only for offset {}, before the delete",
                read.min_offset
            );
            assert!(
                read.value.is_empty(),
                "{} served deleted rows: {:?}",
                read.endpoint,
                read.value
            );
        }
    }
    assert!(served > 0, "followers served no scan");
}
