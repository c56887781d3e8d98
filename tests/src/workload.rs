//! A write workload whose every acknowledged row can be checked afterwards: rows are
//! `(writer, seq, v, pad)` with `v` derived from writer and seq, indexed by writer and
//! ordered by seq, so one scan per writer reads back all it wrote.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_common::{ColumnType, Schema, Ttl, Value};
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{PutRequest, ReplicationMode, ScanRequest, TableMeta};
use tokio::task::JoinHandle;

pub fn schema() -> Schema {
    Schema::new(
        &[
            ("writer", ColumnType::String, false),
            ("seq", ColumnType::Int64, false),
            ("v", ColumnType::Int64, false),
            ("pad", ColumnType::String, true),
        ],
        &[(&["writer"], Some("seq"), Ttl::NONE)],
    )
    .unwrap()
}

/// A row of the workload's schema for the SDK: key `writer`, sequence `i`.
pub fn sdk_row(writer: &str, i: i64) -> Vec<Value> {
    vec![
        Value::String(writer.into()),
        Value::Int64(i),
        Value::Int64(i * 3),
        Value::String("payload".into()),
    ]
}

/// A key of the workload's schema (`<prefix><n>`) that the SDK routes to partition `pid`
/// of `table` in the default database.
pub async fn key_in_partition(
    client: &tessera_ns_client::Client,
    table: &str,
    pid: u32,
    prefix: &str,
) -> String {
    for i in 0..100_000 {
        let key = format!("{prefix}{i}");
        let routed = client
            .partition_of("default", table, &sdk_row(&key, 0))
            .await
            .expect("route a row");
        if routed == pid {
            return key;
        }
    }
    panic!("no key of {table} falls in partition {pid}")
}

pub fn meta(tid: u32, pid: u32, mode: ReplicationMode) -> TableMeta {
    TableMeta {
        tid,
        pid,
        db: "default".into(),
        name: format!("t{tid}"),
        schema: Some(schema().to_proto()),
        partition_num: 4,
        term: 1,
        mode: mode as i32,
        ..TableMeta::default()
    }
}

pub fn value_of(writer: u64, seq: u64) -> i64 {
    (writer * 1_000_000_007 + seq * 31) as i64
}

pub fn put_request(tid: u32, pid: u32, writer: u64, seq: u64) -> PutRequest {
    PutRequest {
        tid,
        pid,
        row: Some(Value::row_to_proto(&[
            Value::String(format!("w{writer}")),
            Value::Int64(seq as i64),
            Value::Int64(value_of(writer, seq)),
            Value::String("some padding to give rows a realistic size".into()),
        ])),
        ..Default::default()
    }
}

/// Writers putting rows until their first error (the tablet died or stepped down).
pub struct Writers {
    pub acked_total: Arc<AtomicU64>,
    handles: Vec<JoinHandle<Vec<u64>>>,
}

impl Writers {
    /// `count` writers, numbered from `first`, over the given clients (round robin).
    pub fn start(
        clients: &[TabletClient<tessera_common::auth::AuthChannel>],
        tid: u32,
        pid: u32,
        first: u64,
        count: u64,
    ) -> Writers {
        let acked_total = Arc::new(AtomicU64::new(0));
        let handles = (first..first + count)
            .map(|writer| {
                let mut client = clients[writer as usize % clients.len()].clone();
                let acked_total = acked_total.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for seq in 0.. {
                        match client.put(put_request(tid, pid, writer, seq)).await {
                            Ok(_) => {
                                acked.push(seq);
                                acked_total.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        Writers {
            acked_total,
            handles,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked_total.load(Ordering::Relaxed)
    }

    /// Waits for every writer to stop; returns what each had acknowledged.
    pub async fn finish(self) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        for handle in self.handles {
            out.push(handle.await.expect("writer task"));
        }
        out
    }
}

/// Asserts that every acknowledged row of writers `first..` is on the replica, intact.
pub async fn assert_all_acked_present(
    client: &mut TabletClient<tessera_common::auth::AuthChannel>,
    tid: u32,
    pid: u32,
    first: u64,
    acked: &[Vec<u64>],
) {
    for (i, acked) in acked.iter().enumerate() {
        let writer = first + i as u64;
        let request = ScanRequest {
            tid,
            pid,
            key: vec![Value::String(format!("w{writer}")).to_proto()],
            ..Default::default()
        };
        // A new leader serves reads once it committed a record of its term.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let response = loop {
            match client.scan(request.clone()).await {
                Ok(response) => break response.into_inner(),
                Err(e)
                    if detail_of(&e)
                        .is_some_and(|d| d.code() == ErrorCode::PartitionUnavailable)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("scan of writer {writer}: {e}"),
            }
        };
        let mut found = BTreeSet::new();
        for row in &response.rows {
            let values = Value::row_from_proto(row).unwrap();
            let (Value::Int64(seq), Value::Int64(v)) = (&values[1], &values[2]) else {
                panic!("unexpected row {values:?}");
            };
            assert_eq!(
                *v,
                value_of(writer, *seq as u64),
                "content of w{writer}/{seq}"
            );
            found.insert(*seq as u64);
        }
        let missing: Vec<_> = acked
            .iter()
            .filter(|s| !found.contains(s))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "writer {writer} lost acknowledged rows, e.g. {missing:?}"
        );
    }
}
