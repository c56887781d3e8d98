//! Helpers shared by the storage tests.

#![allow(dead_code)]

use std::path::Path;

use tessera_common::{ColumnType, Schema, Ttl, Value};
use tessera_proto::tablet::TableMeta;
use tessera_tablet::storage::table::LoadReport;
use tessera_tablet::storage::{BinlogOptions, FsyncPolicy, Table, TableOptions};

/// `id string, ts int64, v int64 NULL, tag string`; indexes on `(id, ts)` and on `tag`
/// ordered by write time.
pub fn schema() -> Schema {
    Schema::new(
        &[
            ("id", ColumnType::String, false),
            ("ts", ColumnType::Int64, false),
            ("v", ColumnType::Int64, true),
            ("tag", ColumnType::String, false),
        ],
        &[
            (&["id"], Some("ts"), Ttl::NONE),
            (&["tag"], None, Ttl::NONE),
        ],
    )
    .unwrap()
}

pub fn meta(tid: u32, pid: u32) -> TableMeta {
    TableMeta {
        tid,
        pid,
        db: "default".into(),
        name: format!("t{tid}"),
        schema: Some(schema().to_proto()),
        partition_num: pid + 1,
        term: 1,
        ..TableMeta::default()
    }
}

pub fn options(segment_size: u64) -> TableOptions {
    TableOptions {
        binlog: BinlogOptions {
            fsync: FsyncPolicy::None,
            segment_size,
            ..BinlogOptions::default()
        },
        max_row_size: 1 << 20,
        ..TableOptions::default()
    }
}

pub fn create(dir: &Path, segment_size: u64) -> Table {
    Table::create(dir, meta(1, 0), options(segment_size))
        .unwrap()
        .0
}

pub fn reopen(table: Table, segment_size: u64) -> (Table, LoadReport) {
    let dir = table.dir().to_path_buf();
    table.close().unwrap();
    drop(table);
    Table::open(&dir, options(segment_size)).unwrap()
}

pub fn row(id: &str, ts: i64, v: Option<i64>, tag: &str) -> Vec<Value> {
    vec![
        Value::String(id.into()),
        Value::Int64(ts),
        v.map_or(Value::Null, Value::Int64),
        Value::String(tag.into()),
    ]
}

pub fn key(text: &str) -> Vec<Value> {
    vec![Value::String(text.into())]
}
