//! A leader whose disk fills up must not hold its partition once the disk has room
//! again. Found by the fault-injection bed: the binlog refuses every write after a failed
//! one (the file's state is unknown), and the replica stayed leader, alive in ZooKeeper,
//! taking no writes, for good.

use std::time::Duration;

use tessera_common::Value;
use tessera_ns_client::{Client, ClientError, ClientOptions};
use tessera_tests::netbed::{NetCluster, NetClusterSpec};
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::wait::poll_until_async;
use tessera_tests::workload::{key_in_partition, sdk_row};

const TABLE: &str = "disk";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_on_a_full_disk_gives_way_and_writes_resume_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NetCluster::start(
        dir.path(),
        NetClusterSpec {
            clients: 0,
            small_disk_bytes: Some(64 << 20),
            ..NetClusterSpec::default()
        },
    )
    .await;
    cluster.create_table(TABLE, 4, 3).await;
    let full_tablet = cluster.tablet_endpoint(0);
    let mut ns = cluster.ns().await;
    let led = leaders(&table_rows(&mut ns, TABLE).await);
    let pid = *led
        .iter()
        .find(|(_, endpoint)| **endpoint == full_tablet)
        .unwrap_or_else(|| panic!("t0 leads no partition: {led:?}"))
        .0;
    let sdk = Client::connect_with(
        &cluster.zk_connect_string(),
        "/tessera",
        ClientOptions {
            deadline: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    let key = key_in_partition(&sdk, TABLE, pid, "key").await;
    sdk.put("default", TABLE, sdk_row(&key, 1))
        .await
        .expect("a put before the disk fills");

    // Fill the disk to the last byte: the leader's binlog write fails.
    let filler = cluster.fill_small_disk();
    // A record may still fit in the page the binlog's last write began; a large one does
    // not.
    // Each put is refused at once with the disk's error, or acknowledged by a new leader
    // on another disk.
    let mut refused = 0;
    let mut acknowledged = Vec::new();
    for value in 2..10 {
        let large = vec![
            Value::String(key.clone()),
            Value::Int64(value),
            Value::Int64(value * 3),
            Value::String("x".repeat(64 << 10)),
        ];
        if let Err(e) = sdk.put("default", TABLE, large).await {
            // Not retried until the deadline as if the leader were away: the disk's
            // error, at once.
            assert!(
                matches!(&e, ClientError::Storage(m) if m.contains("No space left")),
                "a put refused by a full disk says so: {e:?}"
            );
            refused += 1;
            break;
        }
        acknowledged.push(value);
    }
    let moved = leaders(&table_rows(&mut ns, TABLE).await)
        .get(&pid)
        .is_some_and(|leader| *leader != full_tablet);
    assert!(
        refused > 0 || moved,
        "every put on a full disk was acknowledged, and {full_tablet} still leads"
    );
    std::fs::remove_file(&filler).unwrap();

    // With room again, writes to the partition resume (through a new leader or the old
    // one reloaded), and the first row is still there.
    let mut next = 100;
    let resumed = poll_until_async(Duration::from_secs(60), || {
        next += 1;
        let (sdk, key, value) = (&sdk, key.clone(), next);
        async move {
            sdk.put("default", TABLE, sdk_row(&key, value))
                .await
                .is_ok()
        }
    })
    .await;
    assert!(
        resumed,
        "no write to partition {pid} was acknowledged within 60 s after the disk had room:\n{:#?}\n{}",
        table_rows(&mut ns, TABLE).await,
        cluster.tablets[0].log_tail(20)
    );
    let rows = sdk
        .scan(
            "default",
            TABLE,
            vec![Value::String(key.clone())],
            None,
            None,
            0,
        )
        .await
        .unwrap();
    for value in [1].into_iter().chain(acknowledged) {
        assert!(
            rows.iter().any(|r| r.get(1) == Some(&Value::Int64(value))),
            "acknowledged row {value} is gone: {} rows",
            rows.len()
        );
    }
}
