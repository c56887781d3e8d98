//! The table metadata layout in a real ZooKeeper: a header node and chunk nodes per
//! table (`tessera_common::table_layout`), the move of tables stored the old way (one
//! node) when a nameserver takes office, partition changes that rewrite one chunk, and
//! the nameserver's watch-fed copy of it all converging after a nameserver failover,
//! and finished ops trimmed in batches.

use std::time::Duration;

use prost::Message;
use tessera_common::table_layout;
use tessera_proto::nameserver::{
    DropTableRequest, OpInfo, PartitionMeta, ReplicaMeta, ShowTableRequest, ShowTableRow,
    TableInfo, UpdateTableAliveRequest,
};
use tessera_tests::process::http_get;
use tessera_tests::{wait_until_async, NameserverProcess, ZooKeeper};
use zookeeper_client::{Acls, Client, CreateMode, LockPrefix};

const WAIT: Duration = Duration::from_secs(30);
const ROOT: &str = "/tessera";
const TABLES: &str = "/tessera/table/table_data";

/// `partitions` partitions over three replicas on endpoints no tablet listens on, every
/// partition carrying an unavailable reason (as in a mass outage).
fn table(name: &str, partitions: u32) -> TableInfo {
    TableInfo {
        db: "default".into(),
        name: name.into(),
        tid: 9,
        partition_num: partitions,
        replica_num: 3,
        partitions: (0..partitions)
            .map(|pid| PartitionMeta {
                pid,
                term: 2,
                unavailable_reason: format!("partition {pid} has no live replica to lead it"),
                replicas: (0..3)
                    .map(|r| ReplicaMeta {
                        endpoint: format!("127.0.0.1:{}", 1 + r),
                        is_leader: (pid + r) % 3 == 0,
                        is_alive: true,
                        joining: false,
                        leaving: false,
                    })
                    .collect(),
            })
            .collect(),
        ..TableInfo::default()
    }
}

async fn ensure_path(client: &Client, path: &str) {
    let mut at = String::new();
    for part in path.trim_start_matches('/').split('/') {
        at = format!("{at}/{part}");
        let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
        match client.create(&at, b"", &open).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => panic!("create {at}: {e}"),
        }
    }
}

/// A ZooKeeper server with the table directory, and a client of it; `None` where
/// ZooKeeper is not installed.
async fn zookeeper(dir: &std::path::Path) -> Option<(ZooKeeper, Client)> {
    if !ZooKeeper::available() {
        return None;
    }
    let zk = ZooKeeper::start(&dir.join("zk"));
    let client = Client::connect(&zk.connect_string()).await.unwrap();
    ensure_path(&client, TABLES).await;
    Some((zk, client))
}

async fn read(client: &Client, name: &str) -> table_layout::StoredTable {
    table_layout::read_table(client, &format!("{TABLES}/default.{name}"))
        .await
        .expect("read the table")
        .expect("the table is there")
}

/// A table whose single-node encoding ZooKeeper refuses (over 1 MB) is stored as a header
/// and chunks, read back whole, and removed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_too_big_for_one_node_is_stored_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_zk, client)) = zookeeper(dir.path()).await else {
        return;
    };
    ensure_path(&client, "/tessera/leader").await;
    let big = table("big", 12_000);
    let old_encoding = big.encode_to_vec();
    assert!(old_encoding.len() > 1 << 20, "{} bytes", old_encoding.len());
    let path = format!("{TABLES}/default.big");
    let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
    assert!(
        client.create(&path, &old_encoding, &open).await.is_err(),
        "ZooKeeper refuses the whole table in one node"
    );

    let lock = client
        .lock(
            LockPrefix::new_shared("/tessera/leader/n-").unwrap(),
            b"test",
            Acls::anyone_all(),
        )
        .await
        .unwrap()
        .into_owned();
    table_layout::create_table(&lock, &path, &big, &open)
        .await
        .expect("store the table");
    let stored = read(&client, "big").await;
    assert_eq!(stored.table.partition_chunks, 188);
    assert_eq!(stored.table.partitions, big.partitions);
    assert_eq!(
        TableInfo {
            partitions: Vec::new(),
            partition_chunks: 0,
            ..stored.table.clone()
        },
        TableInfo {
            partitions: Vec::new(),
            ..big.clone()
        }
    );

    table_layout::delete_table(&lock, &path)
        .await
        .expect("drop the table");
    assert!(client.check_stat(&path).await.unwrap().is_none());
}

fn metric(endpoint: &str, name: &str) -> f64 {
    let (code, body) = http_get(endpoint, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape of {endpoint}"))
}

async fn all_rows(ns: &NameserverProcess) -> Vec<ShowTableRow> {
    ns.client()
        .await
        .show_table(ShowTableRequest::default())
        .await
        .map(|r| r.into_inner().rows)
        .unwrap_or_default()
}

/// A cluster whose table was stored in one node (before chunks) is moved to chunks by the
/// first nameserver to lead; a partition change then rewrites only its chunk. After that
/// nameserver dies, the next leader's copy of the metadata, fed by its watch, takes in a
/// change written behind its back and agrees with ZooKeeper node for node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_table_is_moved_to_chunks_and_the_copy_converges_after_failover() {
    let dir = tempfile::tempdir().unwrap();
    let Some((zk, client)) = zookeeper(dir.path()).await else {
        return;
    };
    ensure_path(&client, &format!("{ROOT}/config")).await;
    let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
    // No tablet runs: the metadata must not be repaired under the test.
    client
        .create(&format!("{ROOT}/config/auto_failover"), b"false", &open)
        .await
        .unwrap();
    let old = table("old", 100);
    let path = format!("{TABLES}/default.old");
    client
        .create(&path, &old.encode_to_vec(), &open)
        .await
        .unwrap();

    // And what a creation cut short after its first request leaves: a header naming two
    // chunks, one of them written.
    let half = table("half", 100);
    let half_path = format!("{TABLES}/default.half");
    let split = table_layout::split(&half).unwrap();
    client
        .create(&half_path, &split.header.encode_to_vec(), &open)
        .await
        .unwrap();
    client
        .create(
            &table_layout::chunk_path(&half_path, 0),
            &split.chunks[0].encode_to_vec(),
            &open,
        )
        .await
        .unwrap();

    let mut first = NameserverProcess::start(&dir.path().join("ns0"), &zk, 2000).await;
    first.wait_leader().await;
    let stored = read(&client, "old").await;
    assert_eq!(stored.table.partition_chunks, 2, "moved to two chunks");
    assert_eq!(stored.table.partitions, old.partitions);
    let (header, _) = client.get_data(&path).await.unwrap();
    assert!(
        TableInfo::decode(header.as_slice())
            .unwrap()
            .partitions
            .is_empty(),
        "the header no longer holds the partitions"
    );
    assert_eq!(
        all_rows(&first).await.len(),
        300,
        "the incomplete table is not listed"
    );
    let mut ns = first.client().await;
    let refused = ns
        .show_table(ShowTableRequest {
            db: String::new(),
            name: "half".into(),
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("incomplete"), "{refused:?}");
    ns.drop_table(DropTableRequest {
        db: String::new(),
        name: "half".into(),
    })
    .await
    .expect("drop what a cut-short creation left");
    assert!(client.check_stat(&half_path).await.unwrap().is_none());

    // One partition's change writes its chunk and nothing else.
    let before = stored;
    first
        .client()
        .await
        .update_table_alive(UpdateTableAliveRequest {
            db: String::new(),
            name: "old".into(),
            pids: vec![70],
            endpoint: "127.0.0.1:2".into(),
            alive: false,
        })
        .await
        .expect("updatetablealive");
    let after = read(&client, "old").await;
    assert_eq!(after.header_version, before.header_version);
    assert_eq!(after.chunk_versions[0], before.chunk_versions[0]);
    assert_eq!(after.chunk_versions[1], before.chunk_versions[1] + 1);
    let replica = &after.table.partitions[70].replicas[1];
    assert!(!replica.is_alive && replica.endpoint == "127.0.0.1:2");

    // A standby follows along, then takes over.
    let second = NameserverProcess::start(&dir.path().join("ns1"), &zk, 2000).await;
    wait_until_async(WAIT, "the standby to hold every table", || async {
        metric(&second.endpoint, "tessera_metadata_cache_loads_total") >= 1.0
    })
    .await;
    first.kill9();
    second.wait_leader().await;

    // Written behind the new leader's back (as an old leader's last write would be): its
    // copy takes it in through the watch, without reading every table again.
    let reads_before = metric(&second.endpoint, "tessera_metadata_table_reads_total");
    let events_before = metric(&second.endpoint, "tessera_metadata_cache_events_total");
    let chunk_path = table_layout::chunk_path(&path, 0);
    let (data, _) = client.get_data(&chunk_path).await.unwrap();
    let mut chunk = table_layout::decode_chunk(&chunk_path, 0, &data).unwrap();
    chunk.partitions[5].unavailable_reason = "written behind the nameserver's back".into();
    client
        .set_data(&chunk_path, &chunk.encode_to_vec(), None)
        .await
        .unwrap();
    wait_until_async(WAIT, "the new leader to show the change", || async {
        all_rows(&second)
            .await
            .iter()
            .any(|r| r.pid == 5 && r.note == "written behind the nameserver's back")
    })
    .await;
    assert!(metric(&second.endpoint, "tessera_metadata_cache_events_total") > events_before);
    assert_eq!(
        metric(&second.endpoint, "tessera_metadata_table_reads_total"),
        reads_before,
        "the change came through the watch, not a read of every table"
    );

    // Node for node, the copy is what ZooKeeper holds.
    let truth = read(&client, "old").await.table;
    let rows = all_rows(&second).await;
    assert_eq!(rows.len(), 300);
    for row in rows {
        let partition = &truth.partitions[row.pid as usize];
        let replica = partition
            .replicas
            .iter()
            .find(|r| r.endpoint == row.endpoint)
            .expect("a replica ZooKeeper holds");
        assert_eq!(row.role == "leader", replica.is_leader, "{row:?}");
        assert_eq!(row.is_alive, replica.is_alive, "{row:?}");
        assert_eq!(row.note, partition.unavailable_reason, "{row:?}");
    }
}

/// Finished ops beyond the 200 kept for `showopstatus` are deleted a hundred to a
/// ZooKeeper transaction: after a whole-cluster recovery tens of thousands end within
/// minutes, and a transaction each cost ZooKeeper as much again as the ops themselves.
/// Counted by ZooKeeper's transaction id, which every transaction raises by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_ops_are_trimmed_a_hundred_to_a_transaction() {
    const STORED: u64 = 1_000;
    const KEPT: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let Some((zk, client)) = zookeeper(dir.path()).await else {
        return;
    };
    let ops = format!("{ROOT}/op/op_data");
    ensure_path(&client, &ops).await;
    let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let ids: Vec<u64> = (1..=STORED).collect();
    for batch in ids.chunks(100) {
        let mut writer = client.new_multi_writer();
        for &op_id in batch {
            let done = OpInfo {
                op_id,
                op_type: "kMakeSnapshot".into(),
                status: "kDone".into(),
                tasks: vec!["kMakeSnapshot".into()],
                task_index: 1,
                ..OpInfo::default()
            };
            writer
                .add_create(&format!("{ops}/{op_id:010}"), &done.encode_to_vec(), &open)
                .unwrap();
        }
        writer.commit().await.expect("store finished ops");
    }
    let (before, _) = client
        .create(&format!("{ROOT}/before-trim"), b"", &open)
        .await
        .unwrap();

    let _ns = NameserverProcess::start(&dir.path().join("ns"), &zk, 2000).await;
    wait_until_async(WAIT, "the oldest finished ops trimmed", || {
        let (client, ops) = (client.clone(), ops.clone());
        async move { client.list_children(&ops).await.unwrap().len() == KEPT }
    })
    .await;
    let mut left = client.list_children(&ops).await.unwrap();
    left.sort();
    assert_eq!(
        left.first().map(String::as_str),
        Some(format!("{:010}", STORED - KEPT as u64 + 1).as_str()),
        "the newest are kept"
    );

    let (after, _) = client
        .create(&format!("{ROOT}/after-trim"), b"", &open)
        .await
        .unwrap();
    let transactions = after.czxid - before.czxid - 1;
    // 8 for the deletes, and the nameserver's own start-up writes (its election node,
    // its directories, counters).
    assert!(
        transactions < 100,
        "{transactions} ZooKeeper transactions while {} ops were trimmed",
        STORED as usize - KEPT
    );
}
