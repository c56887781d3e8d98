//! A real `tessera-tablet` process: acknowledged writes survive `kill -9`, SIGTERM stops
//! it cleanly, restarts reload every table, and bad input gets structured errors.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_common::{ColumnType, Schema, Ttl, Value};
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::*;
use tessera_tests::workload::{self, Writers};
use tessera_tests::{wait_until_async, TabletProcess};

const ROWS: u64 = 100_000;
const WRITERS: u64 = 16;

fn meta(tid: u32, pid: u32) -> TableMeta {
    workload::meta(tid, pid, ReplicationMode::Quorum)
}

fn put_request(tid: u32, writer: u64, seq: u64) -> PutRequest {
    workload::put_request(tid, 0, writer, seq)
}

async fn create(client: &mut TabletClient<tessera_common::auth::AuthChannel>, tid: u32, pid: u32) {
    client
        .create_table(CreateTableRequest {
            meta: Some(meta(tid, pid)),
        })
        .await
        .expect("create table");
}

/// Writes until `ROWS` are acknowledged, kills the tablet with SIGKILL while writes are
/// still in flight, restarts it, and reads back every acknowledged row.
async fn acknowledged_rows_survive_kill9(fsync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = TabletProcess::start(dir.path(), &[&format!("--binlog_fsync={fsync}")]).await;
    let mut client = tablet.client().await;
    create(&mut client, 1, 0).await;

    // A few connections, shared by several writers each.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tablet.client().await);
    }
    let writers = Writers::start(&clients, 1, 0, 0, WRITERS);
    let progress = writers.acked_total.clone();
    wait_until_async(
        Duration::from_secs(300),
        &format!("{ROWS} acknowledged writes"),
        || {
            let done = progress.load(Ordering::Relaxed) >= ROWS;
            async move { done }
        },
    )
    .await;
    tablet.kill9();
    let acked = writers.finish().await;
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total as u64 >= ROWS);

    tablet.restart().await;
    let mut client = tablet.client().await;
    let status = client
        .get_table_status(GetTableStatusRequest {
            tid: Some(1),
            pid: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .tables;
    assert_eq!(status.len(), 1, "the table is reloaded after the restart");
    assert!(
        status[0].record_count >= total as u64,
        "{} rows on disk, {total} acknowledged",
        status[0].record_count
    );
    workload::assert_all_acked_present(&mut client, 1, 0, 0, &acked).await;
}

/// The status of every replica the tablet holds.
async fn all_tables(tablet: &TabletProcess) -> Vec<TableStatus> {
    tablet
        .client()
        .await
        .get_table_status(GetTableStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tables
}

/// Threads of a process by name (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the tablet's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// Binlog flushers are a pool shared by the tablet's replicas: writing to many
/// partitions at once does not give the process a thread per replica, and every
/// partition's writes are acknowledged and survive `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_partitions_share_the_flusher_threads() {
    const PARTITIONS: u32 = 48;
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = TabletProcess::start(dir.path(), &["--binlog_flush_threads=2"]).await;
    let mut client = tablet.client().await;
    for pid in 0..PARTITIONS {
        let meta = TableMeta {
            partition_num: PARTITIONS,
            ..meta(3, pid)
        };
        client
            .create_table(CreateTableRequest { meta: Some(meta) })
            .await
            .expect("create table");
    }
    let mut puts = Vec::new();
    for pid in 0..PARTITIONS {
        let mut client = client.clone();
        puts.push(tokio::spawn(async move {
            for seq in 0..20 {
                client
                    .put(workload::put_request(3, pid, u64::from(pid), seq))
                    .await
                    .expect("put acknowledged");
            }
        }));
    }
    for put in puts {
        put.await.unwrap();
    }
    let names = thread_names(tablet.pid());
    let flushers = names
        .iter()
        .filter(|n| n.as_str() == "binlog-flush")
        .count();
    assert!(
        (1..=2).contains(&flushers),
        "{flushers} flusher threads for {PARTITIONS} written partitions"
    );
    assert!(
        names.len() < PARTITIONS as usize,
        "{} threads for {PARTITIONS} partitions: {names:?}",
        names.len()
    );

    tablet.kill9();
    tablet.restart().await;
    let tables = all_tables(&tablet).await;
    assert_eq!(tables.len(), PARTITIONS as usize);
    for table in &tables {
        assert_eq!(table.record_count, 20, "partition {}", table.pid);
    }
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the tablet's status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A tablet's threads are bounded by its configuration, not by its replica count: five
/// hundred replicas, each written to, then all reloaded after `kill -9`, on the threads
/// of the runtime, the blocking pool, the flushers, the TTL collector and `main`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_replicas_run_on_a_bounded_set_of_threads() {
    // More for a measurement by hand: TESSERA_TEST_REPLICAS=10000.
    let replicas: u32 = std::env::var("TESSERA_TEST_REPLICAS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let (runtime, blocking, flushers) = (2, 16, 2);
    let bound = runtime + blocking + flushers + 2;
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = TabletProcess::start(
        dir.path(),
        &[
            &format!("--runtime_threads={runtime}"),
            &format!("--blocking_threads={blocking}"),
            &format!("--binlog_flush_threads={flushers}"),
        ],
    )
    .await;
    let rss_before = rss_kib(tablet.pid());
    let client = tablet.client().await;
    let pids: Vec<u32> = (0..replicas).collect();
    for chunk in pids.chunks(50) {
        let mut work = tokio::task::JoinSet::new();
        for &pid in chunk {
            let mut client = client.clone();
            work.spawn(async move {
                let meta = TableMeta {
                    partition_num: replicas,
                    ..meta(5, pid)
                };
                client
                    .create_table(CreateTableRequest { meta: Some(meta) })
                    .await
                    .expect("create table");
                client
                    .put(workload::put_request(5, pid, u64::from(pid), 0))
                    .await
                    .expect("put acknowledged");
            });
        }
        while let Some(done) = work.join_next().await {
            done.unwrap();
        }
    }
    let threads = thread_names(tablet.pid());
    assert!(
        threads.len() <= bound,
        "{} threads for {replicas} replicas (bound {bound}): {threads:?}",
        threads.len()
    );
    let per_replica =
        (rss_kib(tablet.pid()).saturating_sub(rss_before)) * 1024 / u64::from(replicas);
    eprintln!("resident memory per replica with one row: about {per_replica} bytes");

    tablet.kill9();
    tablet.restart().await;
    let tables = all_tables(&tablet).await;
    assert_eq!(tables.len(), replicas as usize, "every replica reloaded");
    assert!(tables.iter().all(|t| t.record_count == 1));
    let threads = thread_names(tablet.pid());
    assert!(
        threads.len() <= bound,
        "{} threads after reloading {replicas} replicas (bound {bound}): {threads:?}",
        threads.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_rows_survive_kill9_with_every_write() {
    acknowledged_rows_survive_kill9("every_write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_rows_survive_kill9_with_group_commit() {
    acknowledged_rows_survive_kill9("group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_rows_survive_kill9_with_the_tablet_journal() {
    acknowledged_rows_survive_kill9("journal").await;
}

/// Under `journal` a tablet's binlogs are not fsynced before a write is acknowledged.
/// A power loss that takes everything they held (simulated after `kill -9` by emptying
/// their segments) loses no acknowledged row: the restart writes them back from the
/// journal. A partition dropped and created again gets only its new rows back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_loss_takes_nothing_the_journal_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = TabletProcess::start(dir.path(), &["--binlog_fsync=journal"]).await;
    let mut client = tablet.client().await;
    let put_rows =
        |client: &mut TabletClient<tessera_common::auth::AuthChannel>, pid: u32, rows: u64| {
            let mut client = client.clone();
            async move {
                for seq in 0..rows {
                    client
                        .put(workload::put_request(5, pid, seq, 0))
                        .await
                        .unwrap();
                }
            }
        };
    for pid in 0..4 {
        create(&mut client, 5, pid).await;
        put_rows(&mut client, pid, 50).await;
    }
    client
        .drop_table(DropTableRequest { tid: 5, pid: 3 })
        .await
        .unwrap();
    create(&mut client, 5, 3).await;
    put_rows(&mut client, 3, 5).await;
    tablet.kill9();

    for pid in 0..4 {
        let binlog = tablet.db_root_path.join(format!("5_{pid}/binlog"));
        for segment in std::fs::read_dir(&binlog).unwrap() {
            let path = segment.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(0))
                    .unwrap();
            }
        }
    }
    tablet.restart().await;
    let counts: Vec<u64> = all_tables(&tablet)
        .await
        .iter()
        .map(|t| t.record_count)
        .collect();
    assert_eq!(
        counts,
        vec![50, 50, 50, 5],
        "rows per partition after the power loss"
    );
    assert!(
        tablet.log().contains("written back from the journal"),
        "the restart says what it restored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_restart_reloads_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = TabletProcess::start(dir.path(), &["--binlog_fsync=none"]).await;
    let mut client = tablet.client().await;
    for pid in 0..3 {
        create(&mut client, 2, pid).await;
    }
    for seq in 0..300 {
        let mut request = put_request(2, seq % 3, seq);
        request.pid = (seq % 3) as u32;
        client.put(request).await.unwrap();
    }
    client
        .make_snapshot(MakeSnapshotRequest { tid: 2, pid: 1 })
        .await
        .unwrap();

    let status = tablet.terminate(Duration::from_secs(20));
    assert!(status.success(), "SIGTERM exit status {status}");
    assert!(
        tablet.log().contains("tablet stopped"),
        "clean stop is logged"
    );

    tablet.restart().await;
    let tables = all_tables(&tablet).await;
    assert_eq!(tables.len(), 3);
    for table in &tables {
        assert_eq!(table.record_count, 100, "partition {}", table.pid);
        assert_eq!(table.state, TableState::Normal as i32);
        assert_eq!(table.role, TableRole::Leader as i32);
        assert!(table.memory_used_bytes > 0);
        assert_eq!(table.term, 1);
    }
    assert_eq!(tables[1].snapshot_offset, 100);
    assert_eq!(tables[1].offset, 100);

    let get = client
        .get(GetRequest {
            tid: 2,
            pid: 1,
            key: vec![Value::String("w1".into()).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let row = Value::row_from_proto(&get.row.unwrap()).unwrap();
    assert_eq!(row[1], Value::Int64(298), "newest row of w1");
    assert_eq!(get.offset, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_and_bad_input_gets_structured_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tablet = TabletProcess::start(dir.path(), &["--max_row_size=4096"]).await;
    let mut client = tablet.client().await;
    create(&mut client, 3, 0).await;
    for seq in 0..10 {
        client.put(put_request(3, 0, seq)).await.unwrap();
    }
    let key = vec![Value::String("w0".into()).to_proto()];

    let count = client
        .count(CountRequest {
            tid: 3,
            pid: 0,
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((count.count, count.offset, count.term), (10, 10, 1));

    let at = client
        .get(GetRequest {
            tid: 3,
            pid: 0,
            key: key.clone(),
            ts: Some(4),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at.ts, 4);
    let scan = client
        .scan(ScanRequest {
            tid: 3,
            pid: 0,
            key: key.clone(),
            max_ts: Some(7),
            min_ts: Some(3),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scan.ts, vec![7, 6, 5]);
    let preview = client
        .preview(PreviewRequest {
            tid: 3,
            pid: 0,
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.rows.len(), 4);
    let first_page = client
        .preview(PreviewRequest {
            tid: 3,
            pid: 0,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !first_page.next.is_empty(),
        "more rows follow the first page"
    );
    let next_page = client
        .preview(PreviewRequest {
            tid: 3,
            pid: 0,
            limit: 2,
            after: first_page.next.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next_page.rows[..],
        preview.rows[2..],
        "the cursor pages through the rows"
    );

    let deleted = client
        .delete(DeleteRequest {
            tid: 3,
            pid: 0,
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((deleted.deleted, deleted.offset), (10, 11));
    let gone = client
        .get(GetRequest {
            tid: 3,
            pid: 0,
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.row.is_none());

    // Wrong type: the error names the column.
    let mut bad = put_request(3, 0, 1);
    bad.row.as_mut().unwrap().values[2] = Value::String("seven".into()).to_proto();
    let status = client.put(bad).await.unwrap_err();
    let detail = detail_of(&status).expect("structured error");
    assert_eq!(detail.code(), ErrorCode::InvalidArgument);
    assert_eq!(detail.column, "v");
    assert!(
        status
            .message()
            .contains("column `v` expects int64, got string"),
        "{}",
        status.message()
    );

    // Wrong column count.
    let mut short = put_request(3, 0, 1);
    short.row.as_mut().unwrap().values.pop();
    let status = client.put(short).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("3 values, the table has 4 columns"),
        "{}",
        status.message()
    );

    // Null key.
    let mut null_key = put_request(3, 0, 1);
    null_key.row.as_mut().unwrap().values[0] = Value::Null.to_proto();
    let status = client.put(null_key).await.unwrap_err();
    assert_eq!(detail_of(&status).unwrap().column, "writer");

    // Missing key on a read.
    let status = client
        .get(GetRequest {
            tid: 3,
            pid: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&status).unwrap().code(),
        ErrorCode::InvalidArgument
    );

    // Paging by a count to skip is refused, not answered with the first page again.
    let status = client
        .preview(PreviewRequest {
            tid: 3,
            pid: 0,
            skip: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&status).unwrap().code(),
        ErrorCode::InvalidArgument
    );
    assert!(first_page.paged, "a tablet that pages says so");

    // A paging cursor the tablet did not make, or one of another key.
    let status = client
        .preview(PreviewRequest {
            tid: 3,
            pid: 0,
            after: vec![1, 2, 3],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&status).unwrap().code(),
        ErrorCode::InvalidArgument
    );
    let status = client
        .scan(ScanRequest {
            tid: 3,
            pid: 0,
            key: vec![Value::String("another key".into()).to_proto()],
            after: first_page.next.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&status).unwrap().code(),
        ErrorCode::InvalidArgument,
        "the cursor names another key than the scan's"
    );

    // Unknown table and partition.
    let status = client.put(put_request(99, 0, 1)).await.unwrap_err();
    assert_eq!(detail_of(&status).unwrap().code(), ErrorCode::TableNotFound);
    let mut other_pid = put_request(3, 0, 1);
    other_pid.pid = 2;
    let status = client.put(other_pid).await.unwrap_err();
    assert_eq!(detail_of(&status).unwrap().code(), ErrorCode::TableNotFound);

    // Over the row size limit.
    let mut huge = put_request(3, 0, 1);
    huge.row.as_mut().unwrap().values[3] = Value::String("x".repeat(10_000)).to_proto();
    let status = client.put(huge).await.unwrap_err();
    assert_eq!(detail_of(&status).unwrap().code(), ErrorCode::RowTooLarge);
    assert!(status.message().contains("4096"), "{}", status.message());

    // Creating the same replica twice, and a schema that makes no sense.
    let status = client
        .create_table(CreateTableRequest {
            meta: Some(meta(3, 0)),
        })
        .await
        .unwrap_err();
    assert_eq!(detail_of(&status).unwrap().code(), ErrorCode::TableExists);
    let mut no_index = meta(4, 0);
    no_index.schema.as_mut().unwrap().indexes.clear();
    let status = client
        .create_table(CreateTableRequest {
            meta: Some(no_index),
        })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("at least one index"),
        "{}",
        status.message()
    );

    // Drop, then the table is gone; loading it again finds nothing to load.
    client
        .drop_table(DropTableRequest { tid: 3, pid: 0 })
        .await
        .unwrap();
    let status = client
        .count(CountRequest {
            tid: 3,
            pid: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(detail_of(&status).unwrap().code(), ErrorCode::TableNotFound);
    let status = client
        .load_table(LoadTableRequest {
            tid: 3,
            pid: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(detail_of(&status).unwrap().code(), ErrorCode::TableNotFound);

    // None of the refused writes reached the log of a surviving table.
    create(&mut client, 5, 0).await;
    let status = client
        .put(PutRequest {
            tid: 5,
            pid: 0,
            row: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        detail_of(&status).unwrap().code(),
        ErrorCode::InvalidArgument
    );
    let tables = client
        .get_table_status(GetTableStatusRequest {
            tid: Some(5),
            pid: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .tables;
    assert_eq!(tables[0].offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_gc_collects_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let tablet = TabletProcess::start(dir.path(), &["--gc_interval=1"]).await;
    let mut client = tablet.client().await;
    let schema = Schema::new(
        &[
            ("k", ColumnType::String, false),
            ("seq", ColumnType::Int64, false),
        ],
        &[(&["k"], Some("seq"), Ttl::Latest { count: 2 })],
    )
    .unwrap();
    let mut table = meta(6, 0);
    table.schema = Some(schema.to_proto());
    client
        .create_table(CreateTableRequest { meta: Some(table) })
        .await
        .unwrap();
    for seq in 0..5 {
        let row = Value::row_to_proto(&[Value::String("k".into()), Value::Int64(seq)]);
        client
            .put(PutRequest {
                tid: 6,
                pid: 0,
                row: Some(row),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Reads hide the expired entries at once; the collector removes them soon after.
    let count = client
        .count(CountRequest {
            tid: 6,
            pid: 0,
            key: vec![Value::String("k".into()).to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(count.count, 2);
    wait_until_async(
        Duration::from_secs(20),
        "the TTL collector to drop 3 entries",
        || {
            let mut client = client.clone();
            async move {
                let status = client
                    .get_table_status(GetTableStatusRequest {
                        tid: Some(6),
                        pid: Some(0),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                status.tables[0].record_count == 2
            }
        },
    )
    .await;
    assert!(tablet.log().contains("expired entries collected"));
}

/// The operator's path through a damaged binlog: the replica is reported, not served;
/// its term pair is still readable from its files; after the damaged tail is cut,
/// LoadTable brings it back in the role it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_is_reported_then_repaired_and_loaded_with_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut tablet = TabletProcess::start(dir.path(), &["--binlog_fsync=none"]).await;
    let mut client = tablet.client().await;
    create(&mut client, 8, 0).await;
    for seq in 0..20 {
        client.put(put_request(8, 0, seq)).await.unwrap();
    }
    assert!(tablet.terminate(Duration::from_secs(20)).success());

    // Damage the 11th record.
    let binlog = tablet.db_root_path.join("8_0").join("binlog");
    let segment = std::fs::read_dir(&binlog)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&segment).unwrap();
    let record_len = bytes.len() / 20;
    let mut damaged = bytes.clone();
    damaged[10 * record_len + 30] ^= 0xff;
    std::fs::write(&segment, &damaged).unwrap();

    tablet.restart().await;
    let mut client = tablet.client().await;
    let status = client
        .get_table_status(GetTableStatusRequest {
            tid: Some(8),
            pid: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .tables
        .remove(0);
    assert_eq!(status.state, TableState::LoadFailed as i32);
    let position = 10 * record_len;
    assert!(
        status.error.contains(&format!("at byte {position}")),
        "{}",
        status.error
    );
    let refused = client.put(put_request(8, 0, 99)).await.unwrap_err();
    assert_eq!(
        detail_of(&refused).unwrap().code(),
        ErrorCode::PartitionUnavailable
    );
    // Reading its log end from disk stops at the damage too: a shorter log is never
    // reported as the replica's.
    let refused = client
        .get_term_pair(GetTermPairRequest { tid: 8, pid: 0 })
        .await
        .unwrap_err();
    assert_eq!(detail_of(&refused).unwrap().code(), ErrorCode::Corruption);
    assert!(
        refused.message().contains(&format!("at byte {position}")),
        "{}",
        refused.message()
    );

    // Repair as docs/OPERATIONS.md says: cut the segment at the reported byte.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(position as u64)
        .unwrap();
    let loaded = client
        .load_table(LoadTableRequest {
            tid: 8,
            pid: 0,
            role: Some(TableRole::Follower as i32),
            term: 5,
            leader: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(loaded.state, TableState::Normal as i32);
    assert_eq!(
        (loaded.role, loaded.term, loaded.offset),
        (TableRole::Follower as i32, 5, 10)
    );
    assert_eq!(loaded.leader, "127.0.0.1:1");
}

/// A peer that stops answering (SIGSTOP, a cut link) does not hold a connection open
/// for ever: the tablet pings it and closes the connection once the pings go
/// unanswered (before, a snapshot stream from a paused sender waited indefinitely).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_whose_peer_stops_answering_pings_is_closed() {
    use tessera_common::tls::{SERVER_KEEPALIVE_INTERVAL, SERVER_KEEPALIVE_TIMEOUT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const ACK: u8 = 1;
    let dir = tempfile::tempdir().unwrap();
    let tablet = TabletProcess::start(dir.path(), &[]).await;
    let mut peer = tokio::net::TcpStream::connect(&tablet.endpoint)
        .await
        .expect("connect to the tablet");
    // An HTTP/2 client's preface and empty SETTINGS. The peer then acknowledges the
    // server's SETTINGS, as a live client does, and never answers a PING.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    peer.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let limit = SERVER_KEEPALIVE_INTERVAL + SERVER_KEEPALIVE_TIMEOUT + Duration::from_secs(30);
    let mut pings = 0;
    let closed = tokio::time::timeout(limit, async {
        let mut header = [0u8; 9];
        loop {
            if peer.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if peer.read_exact(&mut payload).await.is_err() {
                return;
            }
            match (header[3], header[4] & ACK) {
                (SETTINGS, 0) => {
                    let ack = [0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0];
                    if peer.write_all(&ack).await.is_err() {
                        return;
                    }
                }
                (PING, 0) => pings += 1,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the tablet still holds the connection of a peer that answered none of its {pings} \
         pings in {limit:?}"
    );
    assert!(pings >= 1, "closed after a ping went unanswered");
}
