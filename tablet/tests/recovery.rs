//! Loading replicas from disk: snapshot plus binlog, torn tails, corruption, and the
//! errors bad input gets.

mod common;

use std::fs;

use common::*;
use tessera_common::codec::RowError;
use tessera_common::Value;
use tessera_tablet::catalog::Catalog;
use tessera_tablet::error::TabletError;
use tessera_tablet::storage::{StorageError, Table};

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("binlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn reload_is_snapshot_plus_binlog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1_0");
    let table = create(&path, 1 << 20);
    for i in 0..100 {
        table
            .put(&row(&format!("k{}", i % 10), i, Some(i), "t"))
            .unwrap();
    }
    let (snap_offset, snap_rows) = table.make_snapshot().unwrap();
    assert_eq!((snap_offset, snap_rows), (100, 100));
    for i in 100..150 {
        table
            .put(&row(&format!("k{}", i % 10), i, Some(i), "t"))
            .unwrap();
    }
    table.delete("", &key("k3")).unwrap();
    let (table, report) = reopen(table, 1 << 20);
    assert_eq!(report.snapshot_offset, 100);
    assert_eq!(report.snapshot_rows, 100);
    assert_eq!(
        report.replayed, 51,
        "50 puts and one delete after the snapshot"
    );
    assert_eq!(table.version().offset, 151);
    assert_eq!(table.count("", &[]).unwrap().1, 135);
    assert!(table.get("", &key("k3"), None).unwrap().1.is_none());
    let newest = table.get("", &key("k4"), None).unwrap().1.unwrap();
    assert_eq!(newest.values[2], Value::Int64(144));
    // Writes continue at the next offset.
    assert_eq!(table.put(&row("k0", 1, None, "t")).unwrap().offset, 152);
}

#[test]
fn snapshot_collects_binlog_segments_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1_0");
    let table = create(&path, 4096);
    for i in 0..500 {
        table.put(&row(&format!("k{i}"), i, Some(i), "t")).unwrap();
    }
    let before = segments(&path).len();
    assert!(before > 3, "{before} segments");
    table.make_snapshot().unwrap();
    assert_eq!(segments(&path).len(), 1, "only the current segment is left");
    let (table, report) = reopen(table, 4096);
    assert_eq!(report.replayed, 0);
    assert_eq!(table.count("", &[]).unwrap().1, 500);
}

#[test]
fn torn_tail_is_cut_and_the_table_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1_0");
    let table = create(&path, 1 << 20);
    for i in 0..10 {
        table.put(&row(&format!("k{i}"), i, Some(i), "t")).unwrap();
    }
    table.close().unwrap();
    drop(table);
    let segment = segments(&path).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let full_len = bytes.len();
    bytes.truncate(full_len - 7);
    fs::write(&segment, &bytes).unwrap();

    let (table, report) = Table::open(&path, options(1 << 20)).unwrap();
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!(torn.file, segment);
    assert_eq!(table.version().offset, 9);
    assert_eq!(table.count("", &[]).unwrap().1, 9);
    assert!(table.get("", &key("k9"), None).unwrap().1.is_none());
}

#[test]
fn corruption_in_the_middle_refuses_the_load_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let catalog = Catalog::open(root, options(1 << 20)).unwrap();
    let table = catalog.create(meta(7, 0)).unwrap();
    for i in 0..20 {
        table.put(&row(&format!("k{i}"), i, Some(i), "t")).unwrap();
    }
    catalog.close_all();
    drop(table);
    drop(catalog);

    let segment = segments(&root.join("7_0")).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&segment, &bytes).unwrap();

    let err = Table::open(&root.join("7_0"), options(1 << 20))
        .err()
        .unwrap();
    match &err {
        StorageError::Corruption { file, .. } => assert_eq!(file, &segment),
        other => panic!("expected corruption, got {other}"),
    }
    // The tablet still starts; the replica is reported, not served.
    let catalog = Catalog::open(root, options(1 << 20)).unwrap();
    let status = catalog.statuses(Some(7), Some(0));
    assert_eq!(status.len(), 1);
    assert_eq!(
        status[0].state,
        tessera_proto::tablet::TableState::LoadFailed as i32
    );
    assert!(
        status[0].error.contains(&segment.display().to_string()),
        "{}",
        status[0].error
    );
    assert!(status[0].error.contains("byte"), "{}", status[0].error);
    assert!(matches!(
        catalog.get(7, 0),
        Err(TabletError::LoadFailed { .. })
    ));
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);

    let err = table.put(&[Value::String("a".into())]).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Row(RowError::ColumnCount {
                expected: 4,
                got: 1
            })
        ),
        "{err}"
    );

    let mut wrong_type = row("a", 1, None, "t");
    wrong_type[1] = Value::String("yesterday".into());
    let err = table.put(&wrong_type).unwrap_err();
    assert!(
        err.to_string()
            .contains("column `ts` expects int64, got string"),
        "{err}"
    );

    let mut null_key = row("a", 1, None, "t");
    null_key[0] = Value::Null;
    let err = table.put(&null_key).unwrap_err();
    assert!(err.to_string().contains("`id`"), "{err}");

    let err = table.get("nope", &key("a"), None).unwrap_err();
    assert!(matches!(err, StorageError::UnknownIndex(_)), "{err}");
    let err = table.get("", &[], None).unwrap_err();
    assert!(err.to_string().contains("key columns"), "{err}");

    let huge = row(&"x".repeat(2 << 20), 1, None, "t");
    let err = table.put(&huge).unwrap_err();
    assert!(
        matches!(err, StorageError::RowTooLarge { limit, .. } if limit == 1 << 20),
        "{err}"
    );

    // None of the refused writes reached the log.
    assert_eq!(table.version().offset, 0);
}

#[test]
fn catalog_create_drop_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let catalog = Catalog::open(root, options(1 << 20)).unwrap();
    catalog.create(meta(1, 0)).unwrap();
    catalog.create(meta(1, 1)).unwrap();
    assert!(matches!(
        catalog.create(meta(1, 0)),
        Err(TabletError::TableExists { .. })
    ));
    catalog
        .get(1, 1)
        .unwrap()
        .put(&row("a", 1, None, "t"))
        .unwrap();
    assert!(matches!(
        catalog.get(2, 0),
        Err(TabletError::TableNotFound { .. })
    ));

    catalog.drop_table(1, 0).unwrap();
    assert!(!root.join("1_0").exists());
    assert!(
        fs::read_dir(root.join("recycle")).unwrap().count() == 1,
        "dropped data is recycled, not erased"
    );
    catalog.close_all();
    drop(catalog);

    let catalog = Catalog::open(root, options(1 << 20)).unwrap();
    assert_eq!(catalog.statuses(None, None).len(), 1);
    assert_eq!(catalog.get(1, 1).unwrap().count("", &[]).unwrap().1, 1);
    let bad = tessera_proto::tablet::TableMeta {
        schema: None,
        ..meta(3, 0)
    };
    assert!(catalog.create(bad).is_err());
    assert!(
        !root.join("3_0").exists(),
        "a refused create leaves nothing behind"
    );
}

/// Five rows in term 1 and a snapshot of them, then the replica leads term 4 (a no-op at
/// offset 6) and takes three more rows (7..=9).
fn rows_then_a_new_term(path: &std::path::Path) -> tessera_tablet::storage::Table {
    use tessera_tablet::storage::replica::RoleChange;
    let table = create(path, 1 << 20);
    for i in 0..5 {
        table.put(&row(&format!("k{i}"), i, None, "t")).unwrap();
    }
    table.make_snapshot().unwrap();
    table
        .change_role(&RoleChange {
            role: tessera_proto::tablet::TableRole::Leader,
            term: 4,
            followers: vec![],
            leader: String::new(),
            offline: vec![],
        })
        .unwrap();
    // A new leader's first record of its term is a no-op, at offset 6.
    assert_eq!(table.term_pair(), (4, 6));
    for i in 5..8 {
        table.put(&row(&format!("k{i}"), i, None, "t")).unwrap();
    }
    table
}

#[test]
fn term_history_is_rebuilt_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let table = rows_then_a_new_term(&dir.path().join("1_0"));
    assert_eq!(table.term_pair(), (4, 9));
    let (table, _) = reopen(table, 1 << 20);
    // Terms come back from the snapshot's manifest and from the binlog's records.
    let history: Vec<(u64, u64)> = table
        .term_history()
        .iter()
        .map(|p| (p.term, p.start_offset))
        .collect();
    assert_eq!(history, vec![(1, 1), (4, 6)]);
    assert_eq!(table.term_pair(), (4, 9));
    assert_eq!(table.replica_state().term, 4, "the term is persisted");
}

/// Point 8: the term history of a replica that is not loaded comes from its manifest and
/// from the terms of the binlog records after it (before, from the manifest alone, so a
/// term change after the last snapshot was missed).
#[test]
fn term_history_on_disk_includes_terms_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1_0");
    let table = rows_then_a_new_term(&path);
    table.close().unwrap();
    drop(table);
    let (term, offset, history) = tessera_tablet::catalog::term_pair_on_disk(&path).unwrap();
    let history: Vec<(u64, u64)> = history.iter().map(|p| (p.term, p.start_offset)).collect();
    assert_eq!(history, vec![(1, 1), (4, 6)]);
    assert_eq!((term, offset), (4, 9));
}

/// A consistent read shows the partition as of its first page, or refuses: rows written
/// after the moment are left out, and once a delete takes rows out of the moment the
/// next page is refused rather than answered short.
#[test]
fn a_consistent_read_is_whole_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(dir.path(), 1 << 20);
    for id in ["a", "b", "c", "d", "e"] {
        table.put(&row(id, 1, Some(1), "t")).unwrap();
    }
    let ids = |rows: &[tessera_tablet::storage::table::RowAt]| -> Vec<String> {
        rows.iter().map(|r| r.values[0].to_string()).collect()
    };
    let read =
        |after: &[u8]| table.preview_page(after, after.is_empty(), rows_limit(2), |r| (r, 0));

    let (_, first, moment) = read(&[]).unwrap();
    assert!(moment.is_some(), "a consistent first page names its moment");
    table.put(&row("f", 1, Some(1), "t")).unwrap();
    let mut seen = ids(&first.rows);
    let mut next = first.next;
    while let Some(after) = next {
        let (_, page, _) = read(&after).unwrap();
        seen.extend(ids(&page.rows));
        next = page.next;
    }
    assert_eq!(
        seen,
        ["a", "b", "c", "d", "e"],
        "the row written later is left out"
    );

    let (_, first, _) = read(&[]).unwrap();
    table.delete("", &key("e")).unwrap();
    let refused = read(&first.next.unwrap());
    assert!(
        matches!(&refused, Err(StorageError::InvalidArgument(m)) if m.contains("deleted")),
        "{refused:?}"
    );
}

#[test]
fn a_changed_ttl_applies_to_reads_and_survives_a_reload() {
    use tessera_common::Ttl;
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    for ts in 1..=3 {
        table.put(&row("k", ts, Some(ts), "t")).unwrap();
    }
    assert_eq!(table.count("", &key("k")).unwrap().1, 3);
    let before = table.ttls();
    let mut ttls = before.clone();
    ttls[0] = Ttl::Latest { count: 1 };
    assert!(table.set_ttls(ttls.clone(), 1).unwrap());
    assert_eq!(
        table.count("", &key("k")).unwrap().1,
        1,
        "reads apply it at once"
    );
    let err = table
        .set_ttls(vec![Ttl::NONE; before.len() + 1], 2)
        .unwrap_err();
    assert!(err.to_string().contains("ttls were given"), "{err}");
    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(
        table.ttls(),
        ttls,
        "kept in the table meta, with its version"
    );
    assert_eq!(table.count("", &key("k")).unwrap().1, 1);
    // Lengthened again before a collection: the rows are still there.
    assert!(
        !table.set_ttls(before.clone(), 0).unwrap(),
        "an older version is ignored"
    );
    assert_eq!(table.ttls(), ttls);
    assert!(table.set_ttls(before, 2).unwrap());
    assert_eq!(table.count("", &key("k")).unwrap().1, 3);
}

#[test]
fn a_ranged_delete_is_replayed_with_its_range() {
    use tessera_tablet::storage::entry::TsRange;
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    for ts in 1..=5 {
        table.put(&row("k", ts, Some(ts), "t")).unwrap();
    }
    let range = TsRange { min: 2, max: 3 };
    let logged = table.log_delete("", &key("k"), None, Some(range)).unwrap();
    assert_eq!(table.commit_blocking(&logged).unwrap(), 2);
    assert_eq!(table.count("", &key("k")).unwrap().1, 3);
    let bad = TsRange { min: 4, max: 1 };
    assert!(table.log_delete("", &key("k"), None, Some(bad)).is_err());
    // An index keeping the newest rows of a key takes no range: an uncollected older row
    // would come back.
    let mut ttls = table.ttls();
    ttls[0] = tessera_common::Ttl::Latest { count: 2 };
    assert!(table.set_ttls(ttls.clone(), 1).unwrap());
    let err = table
        .log_delete("", &key("k"), None, Some(range))
        .unwrap_err();
    assert!(err.to_string().contains("latest TTL"), "{err}");
    ttls[0] = tessera_common::Ttl::NONE;
    assert!(table.set_ttls(ttls, 2).unwrap());
    // Replay rebuilds the same rows: the range travels in the binlog entry.
    let (table, _) = reopen(table, 1 << 20);
    assert_eq!(table.count("", &key("k")).unwrap().1, 3);
    let left: Vec<i64> = scan(&table, "k", 10).1.iter().map(|r| r.ts).collect();
    assert_eq!(left, vec![5, 4, 1]);
}
