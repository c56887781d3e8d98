//! Schema changes on one replica: an index or column appended, an index deleted, each a
//! binlog entry applied in order, kept through replay, snapshots and the table meta.

mod common;

use common::*;
use tessera_common::{ColumnType, Schema, Ttl, Value};
use tessera_proto::common::{ColumnDesc, IndexDesc};
use tessera_tablet::storage::table::read_meta;
use tessera_tablet::storage::{StorageError, Table};

/// A replica created with the first schema at `dir` that then reads `leader_dir`'s
/// binlog, as a follower takes its leader's records.
fn follower_of(leader_dir: &std::path::Path, dir: &std::path::Path) -> Table {
    let (follower, _) = Table::create(dir, meta(1, 0), options(1 << 20)).unwrap();
    follower.close().unwrap();
    drop(follower);
    for file in std::fs::read_dir(leader_dir.join("binlog")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.join("binlog").join(file.file_name().unwrap())).unwrap();
    }
    Table::open(dir, options(1 << 20)).unwrap().0
}

fn change(table: &Table, next: &Schema) {
    let logged = table.log_schema_change(next).unwrap();
    table.commit_blocking(&logged).unwrap();
    assert_eq!(
        table.schema().version,
        next.version,
        "applied at its commit"
    );
}

/// A nullable string column `city`.
fn city() -> ColumnDesc {
    ColumnDesc {
        name: "city".into(),
        r#type: tessera_proto::common::ColumnType::String as i32,
        nullable: true,
        ..ColumnDesc::default()
    }
}

fn index_on(name: &str, keys: &[&str], ts: &str) -> IndexDesc {
    IndexDesc {
        name: name.into(),
        key_columns: keys.iter().map(|k| k.to_string()).collect(),
        ts_column: ts.into(),
        ttl: Some(Ttl::NONE.to_proto()),
        ..IndexDesc::default()
    }
}

/// The `v` of every row a scan of index `index` finds for `key`, newest first.
fn scan_v(table: &Table, index: &str, key: Vec<Value>) -> Vec<Value> {
    let (_, page) = table
        .scan_page(index, &key, None, None, &[], rows_limit(100), |r| (r, 0))
        .unwrap();
    page.rows.into_iter().map(|r| r.values[2].clone()).collect()
}

#[test]
fn an_added_index_is_built_from_the_rows_and_kept_through_replay_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    for (id, ts, v) in [
        ("a", 1, Some(7)),
        ("b", 2, Some(7)),
        ("c", 3, Some(8)),
        ("d", 4, None),
    ] {
        table.put(&row(id, ts, v, "t")).unwrap();
    }
    let next = table
        .schema()
        .with_index_added(&index_on("by_v", &["v"], "ts"))
        .unwrap();
    change(&table, &next);
    let seven = vec![Value::Int64(7)];
    assert_eq!(
        scan_v(&table, "by_v", seven.clone()),
        vec![Value::Int64(7), Value::Int64(7)],
        "built from the rows already there"
    );
    // A row without the new index's key is not in it, and is still taken.
    table.put(&row("e", 5, None, "t")).unwrap();
    table.put(&row("f", 6, Some(7), "t")).unwrap();
    assert_eq!(table.count("by_v", &seven).unwrap().1, 3);
    assert_eq!(table.count("", &[]).unwrap().1, 6);
    let created_with = read_meta(table.dir()).unwrap().unwrap().schema.unwrap();
    assert_eq!(
        created_with.version, 1,
        "the table meta keeps the schema the replica was created with: the log has the rest"
    );

    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(table.schema().version, next.version);
    assert_eq!(table.count("by_v", &seven).unwrap().1, 3, "after replay");
    table.make_snapshot().unwrap();
    let (table, report) = reopen(table, 1 << 20);
    assert_eq!(report.replayed, 0, "everything came from the snapshot");
    assert_eq!(
        table.schema().version,
        next.version,
        "the snapshot keeps the schema"
    );
    assert_eq!(
        table.count("by_v", &seven).unwrap().1,
        3,
        "after a snapshot"
    );
    assert_eq!(table.status().schema_version, next.version);
}

#[test]
fn a_deleted_index_serves_nothing_and_a_delete_through_it_replays() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    for (id, tag) in [("a", "x"), ("b", "x"), ("c", "y")] {
        table.put(&row(id, 1, Some(1), tag)).unwrap();
    }
    // Logged while `tag` is an index; replayed later under a schema where it is deleted.
    let (_, removed) = table.delete("tag", &key("x")).unwrap();
    assert_eq!(removed, 2);
    let next = table.schema().with_index_deleted("tag").unwrap();
    change(&table, &next);
    assert!(matches!(
        table.count("tag", &key("y")),
        Err(StorageError::UnknownIndex(_))
    ));
    assert!(
        table.schema().with_index_deleted("id").is_err(),
        "the first index partitions the table"
    );
    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(
        table.count("", &[]).unwrap().1,
        1,
        "the delete found its rows by their values on replay"
    );
    // The name is free again: a new index of that name is built afresh.
    let again = table
        .schema()
        .with_index_added(&index_on("tag", &["tag"], ""))
        .unwrap();
    change(&table, &again);
    assert_eq!(table.count("tag", &key("y")).unwrap().1, 1);
    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(table.count("tag", &key("y")).unwrap().1, 1);
    assert_eq!(
        table.schema().indexes.len(),
        3,
        "the deleted one keeps its place"
    );
}

#[test]
fn an_added_column_reads_old_rows_as_null_and_old_writers_may_leave_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    table.put(&row("old", 1, Some(1), "t")).unwrap();
    let required = ColumnDesc {
        name: "city".into(),
        r#type: tessera_proto::common::ColumnType::String as i32,
        nullable: false,
        ..ColumnDesc::default()
    };
    assert!(
        table.schema().with_column_added(&required).is_err(),
        "old rows have no value for a NOT NULL column"
    );
    let next = table
        .schema()
        .with_column_added(&ColumnDesc {
            nullable: true,
            ..required
        })
        .unwrap();
    assert_eq!(next.columns[4].ty, ColumnType::String);
    change(&table, &next);
    let mut new_row = row("new", 2, Some(2), "t");
    new_row.push(Value::String("Oslo".into()));
    table.put(&new_row).unwrap();
    // A writer that has not seen the column yet.
    table.put(&row("unaware", 3, Some(3), "t")).unwrap();
    let city = |table: &Table, id: &str| {
        let (_, found) = table.get("", &key(id), None).unwrap();
        found.unwrap().values[4].clone()
    };
    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(city(&table, "old"), Value::Null);
    assert_eq!(city(&table, "new"), Value::String("Oslo".into()));
    assert_eq!(city(&table, "unaware"), Value::Null);
    let short = &row("x", 1, None, "t")[..3];
    assert!(
        table.put(short).is_err(),
        "only added columns may be left out"
    );
}

#[test]
fn a_change_that_does_not_follow_the_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    let mut same_version = table
        .schema()
        .with_index_added(&index_on("by_v", &["v"], ""))
        .unwrap();
    same_version.version = table.schema().version;
    assert!(table.log_schema_change(&same_version).is_err());
    let mut dropped_column = (*table.schema()).clone();
    dropped_column.version += 1;
    dropped_column.columns.pop();
    dropped_column.indexes.truncate(1);
    assert!(table.log_schema_change(&dropped_column).is_err());
}

#[test]
fn a_schema_change_cut_from_the_log_is_undone_on_reload() {
    // A leader logs a change nobody else took, restarts, and is then cut back to the
    // new leader's log: its schema must follow its log, or its rows would outgrow its
    // followers' schema.
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    table.put(&row("a", 1, Some(1), "t")).unwrap();
    let before = table.version().offset;
    let next = table.schema().with_column_added(&city()).unwrap();
    change(&table, &next);
    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(table.schema().version, 2, "replayed");
    let dir_of = table.dir().to_path_buf();
    table.close().unwrap();
    drop(table);
    tessera_tablet::storage::binlog::truncate_after(&dir_of.join("binlog"), before).unwrap();
    let (table, _) = Table::open(&dir_of, options(1 << 20)).unwrap();
    assert_eq!(table.schema().version, 1, "the change left with its entry");
    assert_eq!(table.count("", &[]).unwrap().1, 1);
}

#[test]
fn a_leader_created_with_a_changed_schema_logs_it_before_its_rows() {
    // A replica made from the metadata after a schema change (a replacement replica)
    // has the change without an entry of it; leading, it logs the schema first, so a
    // follower that started from the older schema reads its rows.
    let dir = tempfile::tempdir().unwrap();
    let next = schema().with_column_added(&city()).unwrap();
    let mut changed = meta(1, 0);
    changed.schema = Some(next.to_proto());
    let leader_dir = dir.path().join("leader");
    let (leader, _) = Table::create(&leader_dir, changed, options(1 << 20)).unwrap();
    let mut values = row("a", 1, Some(1), "t");
    values.push(Value::String("Oslo".into()));
    leader.put(&values).unwrap();
    leader.close().unwrap();
    drop(leader);

    let follower = follower_of(&leader_dir, &dir.path().join("follower"));
    assert_eq!(follower.schema().version, next.version);
    let (_, found) = follower.get("", &key("a"), None).unwrap();
    assert_eq!(found.unwrap().values[4], Value::String("Oslo".into()));
}

#[test]
fn a_leader_logs_its_schema_with_the_ttls_set_since() {
    // The index a schema change added had its TTL changed since; a follower that builds
    // the index from the leader's term-start entry takes the TTL now, not the first one.
    let dir = tempfile::tempdir().unwrap();
    let next = schema()
        .with_index_added(&index_on("by_v", &["v"], "ts"))
        .unwrap();
    let mut changed = meta(1, 0);
    changed.schema = Some(next.to_proto());
    let kept = Ttl::Latest { count: 3 };
    changed.ttls = vec![Ttl::NONE.to_proto(), Ttl::NONE.to_proto(), kept.to_proto()];
    let leader_dir = dir.path().join("leader");
    let (leader, _) = Table::create(&leader_dir, changed, options(1 << 20)).unwrap();
    assert_eq!(leader.ttls()[2], kept);
    leader.close().unwrap();
    drop(leader);

    let follower = follower_of(&leader_dir, &dir.path().join("follower"));
    assert_eq!(follower.schema().version, next.version);
    assert_eq!(follower.ttls()[2], kept);
}
