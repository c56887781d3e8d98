//! Storage benchmarks: memtable put and get, binlog append under each fsync policy
//! with one writer and with eight concurrent writers, and a replica state write (every
//! fence and role change makes one) against the crash-safe replacement it replaced.
//!
//! `cargo bench -p tessera-tablet --bench storage`; figures go to docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;
use tessera_common::{codec, ColumnType, Schema, Ttl, Value};
use tessera_proto::tablet::{ReplicaState, TableRole};
use tessera_tablet::storage::binlog::Binlog;
use tessera_tablet::storage::crashsafe;
use tessera_tablet::storage::memtable::Memtable;
use tessera_tablet::storage::replica::write_replica_state;
use tessera_tablet::storage::{BinlogOptions, FsyncPolicy};

const KEYS: u64 = 10_000;

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new(
            &[
                ("id", ColumnType::String, false),
                ("ts", ColumnType::Timestamp, false),
                ("v", ColumnType::Double, true),
                ("note", ColumnType::String, true),
            ],
            &[(&["id"], Some("ts"), Ttl::NONE)],
        )
        .unwrap(),
    )
}

fn row(i: u64) -> Vec<Value> {
    vec![
        Value::String(format!("user{:06}", i % KEYS)),
        Value::Timestamp(i as i64),
        Value::Double(i as f64 * 0.5),
        Value::String("a note of about forty bytes, like a tag".into()),
    ]
}

fn put(memtable: &Memtable, offset: u64) {
    let values = row(offset);
    let data = codec::encode(&memtable.schema(), &values).unwrap();
    let entries = memtable.index_entries(&values, 0).unwrap();
    memtable.insert(offset, 0, data, entries);
}

fn memtable(c: &mut Criterion) {
    let mut group = c.benchmark_group("memtable");
    group.throughput(Throughput::Elements(1));
    group.bench_function("put", |b| {
        let memtable = Memtable::new(schema());
        let mut offset = 0;
        b.iter(|| {
            offset += 1;
            put(&memtable, offset);
        });
    });

    let memtable = Memtable::new(schema());
    for offset in 1..=100 * KEYS {
        put(&memtable, offset);
    }
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|k| {
            let s = memtable.schema();
            tessera_common::key::key_from_values(
                &s,
                &s.indexes[0],
                &[Value::String(format!("user{k:06}"))],
            )
            .unwrap()
        })
        .collect();
    group.bench_function("get_latest_1m_rows", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(memtable.get(0, &keys[i], None, 0).unwrap());
        });
    });
    group.finish();
}

fn binlog(c: &mut Criterion) {
    let payload = vec![7u8; 100];
    let mut group = c.benchmark_group("binlog_append_100B");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for policy in [
        FsyncPolicy::EveryWrite,
        FsyncPolicy::Group,
        FsyncPolicy::None,
    ] {
        let options = BinlogOptions {
            fsync: policy,
            ..BinlogOptions::default()
        };
        let name = format!("{policy:?}").to_lowercase();

        group.bench_function(BenchmarkId::new("1_writer", &name), |b| {
            let dir = tempfile::tempdir().unwrap();
            let (mut binlog, _) = Binlog::open(dir.path(), options.clone(), 1, |_| Ok(())).unwrap();
            let durability = binlog.durability();
            b.iter(|| {
                let offset = binlog.append(1, &payload).unwrap();
                durability.wait(offset).unwrap();
            });
        });

        group.bench_function(BenchmarkId::new("8_writers", &name), |b| {
            let dir = tempfile::tempdir().unwrap();
            let (binlog, _) = Binlog::open(dir.path(), options.clone(), 1, |_| Ok(())).unwrap();
            let durability = binlog.durability();
            let binlog = Arc::new(Mutex::new(binlog));
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for _ in 0..8 {
                        scope.spawn(|| {
                            for _ in 0..iters.div_ceil(8) {
                                let offset = binlog.lock().append(1, &payload).unwrap();
                                durability.wait(offset).unwrap();
                            }
                        });
                    }
                });
                start.elapsed()
            });
        });
    }
    group.finish();
}

fn replica_state(c: &mut Criterion) {
    let state = |term: u64| ReplicaState {
        term,
        role: TableRole::Follower as i32,
        followers: Vec::new(),
        leader: "127.0.0.1:9527".into(),
        offline: Vec::new(),
    };
    let mut group = c.benchmark_group("replica_state_write");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("in_place_two_slots", |b| {
        let dir = tempfile::tempdir().unwrap();
        let mut term = 0;
        b.iter(|| {
            term += 1;
            write_replica_state(dir.path(), &state(term)).unwrap();
        });
    });
    // What a state write was before: temp file, fsync, rename, fsync of the directory.
    group.bench_function("crash_safe_replacement", |b| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica_state");
        let mut term = 0;
        b.iter(|| {
            term += 1;
            let body = prost::Message::encode_to_vec(&state(term));
            crashsafe::write_framed(&path, *b"TSRS", 1, &body).unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, memtable, binlog, replica_state);
criterion_main!(benches);
