//! Puts that travel together: concurrent puts of one client coalesced into one request
//! per partition, and `put_batch`. Every row still gets its own answer, is applied once,
//! and survives a failover in the middle of the writes.

use std::collections::HashSet;
use std::sync::Arc;

use tessera_common::Value;
use tessera_ns_client::{Client, ClientError};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows};

fn row(i: i64) -> Vec<Value> {
    vec![
        Value::String(format!("key{i}")),
        Value::Int64(i),
        Value::Int64(i * 7),
        Value::String("batched".into()),
    ]
}

/// Every key holds exactly its row, once (a row applied twice would show twice).
async fn assert_each_row_once(client: &Client, table: &str, keys: impl Iterator<Item = i64>) {
    for i in keys {
        let rows = client
            .scan(
                "default",
                table,
                vec![Value::String(format!("key{i}"))],
                None,
                None,
                10,
            )
            .await
            .unwrap_or_else(|e| panic!("scan of key{i} failed: {e}"));
        assert_eq!(rows, vec![row(i)], "key{i} holds its row exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_share_requests_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::defaults()).await;
    cluster.create_table("t1", 2, 3).await;
    let client = Arc::new(
        Client::connect(&cluster.zk.connect_string(), "/tessera")
            .await
            .unwrap(),
    );

    const TASKS: i64 = 48;
    const PER_TASK: i64 = 20;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for k in 0..PER_TASK {
                let i = t * PER_TASK + k;
                let pid = client.partition_of("default", "t1", &row(i)).await.unwrap();
                let version = client
                    .put("default", "t1", row(i))
                    .await
                    .unwrap_or_else(|e| panic!("put {i} failed: {e}"));
                versions.push((pid, version));
            }
            versions
        }));
    }
    let mut offsets = HashSet::new();
    for task in tasks {
        for (pid, (_, offset)) in task.await.unwrap() {
            assert!(
                offsets.insert((pid, offset)),
                "two puts answered with offset {offset} of partition {pid}"
            );
        }
    }
    let stats = client.write_stats();
    assert_eq!(stats.puts, (TASKS * PER_TASK) as u64, "{stats:?}");
    assert!(
        stats.requests < stats.puts,
        "concurrent puts to one partition travel together: {stats:?}"
    );
    assert_each_row_once(&client, "t1", 0..TASKS * PER_TASK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_batch_writes_every_row_once_through_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 4, 3).await;
    let client = Client::connect(&cluster.zk.connect_string(), "/tessera")
        .await
        .unwrap();

    let versions = client
        .put_batch("default", "t1", (0..300).map(row).collect())
        .await
        .unwrap();
    assert_eq!(versions.len(), 300);
    assert!(
        versions
            .iter()
            .all(|(term, offset)| *term > 0 && *offset > 0),
        "every row has its version"
    );

    let mut ns = cluster.ns().await;
    let victim = leaders(&table_rows(&mut ns, "t1").await)[&0].clone();
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();
    client
        .put_batch("default", "t1", (300..600).map(row).collect())
        .await
        .expect("a batch rides through the failover");
    let now = leaders(&table_rows(&mut ns, "t1").await);
    assert!(
        now.values().all(|e| *e != victim),
        "the victim leads nothing any more: {now:?}"
    );
    assert_each_row_once(&client, "t1", 0..600).await;

    // A bad row fails the call at once, naming the row, and nothing is written.
    let mut bad: Vec<Vec<Value>> = (600..610).map(row).collect();
    bad[3] = vec![Value::Int64(1)];
    let err = client.put_batch("default", "t1", bad).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::InvalidArgument(m) if m.starts_with("row 3")),
        "{err}"
    );
    let found = client
        .get("default", "t1", vec![Value::String("key600".into())])
        .await
        .unwrap();
    assert_eq!(found, None, "a refused batch writes nothing");
    // An empty batch is no error.
    assert!(client
        .put_batch("default", "t1", Vec::new())
        .await
        .unwrap()
        .is_empty());
}
