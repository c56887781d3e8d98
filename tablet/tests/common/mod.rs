//! Helpers shared by the storage tests.

#![allow(dead_code)]

use std::path::Path;

use tessera_common::{ColumnType, Schema, Ttl, Value};
use tessera_proto::tablet::TableMeta;
use tessera_tablet::storage::table::{LoadReport, RowAt, Version};
use tessera_tablet::storage::{BinlogOptions, FsyncPolicy, PageLimit, Table, TableOptions};

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

/// Pages of at most `rows` rows and no byte bound.
#[allow(dead_code)]
pub fn rows_limit(rows: usize) -> PageLimit {
    PageLimit {
        rows,
        bytes: usize::MAX,
    }
}

/// The first page of at most `limit` rows of a key of the first index, newest first.
#[allow(dead_code)]
pub fn scan(table: &Table, id: &str, limit: usize) -> (Version, Vec<RowAt>) {
    let (version, page) = table
        .scan_page("", &key(id), None, None, &[], rows_limit(limit), |r| (r, 0))
        .unwrap();
    (version, page.rows)
}

/// Every live row of the partition, read in pages of `page_rows` rows by cursor (as of
/// the first page's moment when `consistent`).
#[allow(dead_code)]
pub fn read_all_pages(table: &Table, page_rows: usize, consistent: bool) -> Vec<RowAt> {
    let mut rows = Vec::new();
    let mut after = Vec::new();
    loop {
        let (_, page, _) = table
            .preview_page(&after, consistent, rows_limit(page_rows), |r| (r, 0))
            .unwrap();
        rows.extend(page.rows);
        match page.next {
            Some(next) => after = next,
            None => return rows,
        }
    }
}
