//! The SDK beyond the first index and beyond async programs: reads by any index and ts
//! range (a key of a second index may be in every partition: all are read and merged),
//! and the blocking client for programs without a Tokio runtime.

use std::time::Duration;

use tessera_common::Value;
use tessera_ns_client::{blocking, ClientError};
use tessera_tests::jobs::Jobs;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};

const CITIES: [&str; 2] = ["paris", "lyon"];

fn order(i: i64) -> Vec<Value> {
    vec![
        Value::String(format!("o{i}")),
        Value::String(CITIES[i as usize % 2].into()),
        Value::Timestamp(1_000 + i),
        Value::Double(i as f64),
    ]
}

fn city(name: &str) -> Vec<Value> {
    vec![Value::String(name.into())]
}

/// A cluster with the table `orders`: four partitions, indexed by id and by city.
async fn with_orders(dir: &std::path::Path) -> NsCluster {
    let cluster = NsCluster::start(dir, NsClusterSpec::defaults()).await;
    Jobs::connect(&cluster.zk.connect_string()).await.ok(
        "create table orders (id string not null, city string not null, ts timestamp, \
         amount double, index(key=id, ts=ts), index(key=city, ts=ts)) \
         options (partitionnum=4, replicanum=3);",
    );
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_by_any_index_and_from_a_blocking_client() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = with_orders(dir.path()).await;
    let zk = cluster.zk.connect_string();
    let client = cluster.sdk(Duration::from_secs(30)).await;
    client
        .put_batch("default", "orders", (0..40).map(order).collect())
        .await
        .unwrap();

    // Every order from Paris, from all four partitions, newest first.
    let paris = client
        .scan_index("default", "orders", "city", city("paris"), None, None, 0)
        .await
        .unwrap();
    let expected: Vec<_> = (0..40).rev().filter(|i| i % 2 == 0).map(order).collect();
    assert_eq!(paris, expected);
    // A ts range and a limit.
    let some = client
        .scan_index(
            "default",
            "orders",
            "city",
            city("paris"),
            Some(1_030),
            Some(1_010),
            3,
        )
        .await
        .unwrap();
    assert_eq!(some, vec![order(30), order(28), order(26)]);
    assert_eq!(
        client
            .count_index("default", "orders", "city", city("lyon"))
            .await
            .unwrap(),
        20
    );
    assert_eq!(
        client
            .get_index("default", "orders", "city", city("lyon"))
            .await
            .unwrap(),
        Some(order(39))
    );
    // The first index by name reads its one partition.
    assert_eq!(
        client
            .scan_index(
                "default",
                "orders",
                "id",
                vec![Value::String("o7".into())],
                None,
                None,
                0
            )
            .await
            .unwrap(),
        vec![order(7)]
    );
    let unknown = client
        .scan_index("default", "orders", "nosuch", city("paris"), None, None, 0)
        .await;
    assert!(
        matches!(&unknown, Err(ClientError::InvalidArgument(m)) if m.contains("nosuch")),
        "{unknown:?}"
    );

    // A program without a runtime uses the blocking client, on a thread of its own.
    let thread_zk = zk.clone();
    let program = std::thread::spawn(move || {
        let client = blocking::Client::connect(&thread_zk, "/tessera").expect("connect");
        client.put("default", "orders", order(100)).expect("put");
        let got = client
            .get("default", "orders", vec![Value::String("o100".into())])
            .expect("get");
        let paris = client
            .scan_index("default", "orders", "city", city("paris"), None, None, 0)
            .expect("scan by city");
        (got, paris.len())
    });
    let (got, paris) = tokio::task::spawn_blocking(move || program.join().expect("no panic"))
        .await
        .unwrap();
    assert_eq!(got, Some(order(100)));
    assert_eq!(paris, 21);
    // Inside a runtime it refuses, and says what to use instead.
    let refused = blocking::Client::connect(&zk, "/tessera");
    assert!(
        matches!(&refused, Err(ClientError::InvalidArgument(m)) if m.contains("Tokio runtime")),
        "{:?}",
        refused.err()
    );
}

/// A writer that outlives its process: its next run registers a newer epoch on every
/// partition (replicated like a write), after which the old run's writes are refused as
/// fenced, with nothing written, while the new run's rows that the old run already wrote
/// (the same sequence numbers) are answered without being written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_run_of_a_writer_fences_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = with_orders(dir.path()).await;
    let client = cluster.sdk(Duration::from_secs(30)).await;
    let id = tessera_ns_client::Writer::new_id();
    let old = tessera_ns_client::Writer { id, epoch: 1 };
    let new = tessera_ns_client::Writer { id, epoch: 2 };
    let numbered = |range: std::ops::Range<i64>| -> Vec<(u64, Vec<Value>)> {
        range.map(|i| (i as u64 + 1, order(i))).collect()
    };

    let unregistered = client
        .put_batch_as("default", "orders", old, numbered(0..1))
        .await
        .unwrap_err();
    assert!(
        matches!(unregistered, ClientError::Fenced(_)),
        "a run writes only once registered: {unregistered}"
    );
    let first = client
        .register_writer("default", "orders", old)
        .await
        .unwrap();
    assert_eq!(first.len(), 4);
    assert!(
        first
            .iter()
            .all(|r| r.previous_epoch == 0 && r.highest_seq == 0),
        "no partition knows the writer yet: {first:?}"
    );
    client
        .put_batch_as("default", "orders", old, numbered(0..20))
        .await
        .unwrap();
    let remembered = client
        .register_writer("default", "orders", new)
        .await
        .unwrap();
    assert_eq!(remembered.len(), 4);
    assert!(
        remembered
            .iter()
            .all(|r| r.previous_epoch == 1 && r.highest_seq > 0),
        "every partition remembers the old run and its rows: {remembered:?}"
    );

    let late = client
        .put_batch_as("default", "orders", old, numbered(20..30))
        .await
        .unwrap_err();
    assert!(matches!(late, ClientError::Fenced(_)), "{late}");
    let again = client.register_writer("default", "orders", old).await;
    assert!(
        matches!(again, Err(ClientError::Fenced(_))),
        "an older run cannot take the writer back: {again:?}"
    );
    // The new run sends everything again: the first 20 rows are recognised.
    client
        .put_batch_as("default", "orders", new, numbered(0..30))
        .await
        .unwrap();
    let all = client
        .scan_index("default", "orders", "city", city("paris"), None, None, 0)
        .await
        .unwrap()
        .len()
        + client
            .scan_index("default", "orders", "city", city("lyon"), None, None, 0)
            .await
            .unwrap()
            .len();
    assert_eq!(all, 30, "each row once");
    let bad = client
        .put_batch_as("default", "orders", new, vec![(0, order(99))])
        .await
        .unwrap_err();
    assert!(matches!(bad, ClientError::InvalidArgument(_)), "{bad}");
}
