//! The replication rules one replica enforces, checked on a real table without a
//! network: the voting set, step-downs, idempotent writes and committed-only reads.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tessera_proto::common::TermPair;
use tessera_proto::tablet::ReplicaState;
use tessera_proto::tablet::{AppendEntriesRequest, LogRecord, TableRole};
use tessera_tablet::catalog::Catalog;
use tessera_tablet::error::TabletError;
use tessera_tablet::storage::entry::{LogEntry, RequestId};
use tessera_tablet::storage::replica::{AppendOutcome, FollowerChange, RoleChange};
use tessera_tablet::storage::{StorageError, Table, TableOptions};

fn leader_of(table: &Table, term: u64, followers: &[&str], offline: &[&str]) {
    table
        .change_role(&RoleChange {
            role: TableRole::Leader,
            term,
            followers: followers.iter().map(|f| f.to_string()).collect(),
            leader: String::new(),
            offline: offline.iter().map(|f| f.to_string()).collect(),
        })
        .unwrap();
}

fn follower_of(table: &Table, term: u64, leader: &str) {
    table
        .change_role(&RoleChange {
            role: TableRole::Follower,
            term,
            followers: Vec::new(),
            leader: leader.into(),
            offline: Vec::new(),
        })
        .unwrap();
}

fn count(table: &Table, id: &str) -> u64 {
    table.count("", &key(id)).unwrap().1
}

fn short_quorum_timeout(dir: &std::path::Path) -> Table {
    let options = TableOptions {
        quorum_timeout: Duration::from_millis(50),
        ..options(1 << 20)
    };
    Table::create(dir, meta(1, 0), options).unwrap().0
}

/// Point 1: members that are down keep their vote; with two of three offline the leader
/// refuses a quorum write up front (nothing is logged) and says why.
#[test]
fn offline_members_keep_their_vote() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    leader_of(&table, 2, &["b", "c"], &["b", "c"]);
    let err = table.log_put(&row("a", 1, None, "t"), None).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NotEnoughReplicas {
                live: 1,
                voters: 3,
                needed: 2
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "not enough replicas: 1 of 3 hold the partition, 2 needed"
    );
    assert_eq!(table.last_offset(), 0, "nothing was logged");

    // b comes back: two of three hold the partition again, but b must acknowledge.
    table.set_follower("b", FollowerChange::Add).unwrap();
    let logged = table.log_put(&row("a", 1, None, "t"), None).unwrap();
    table.quorum_ack("b", logged.version.offset);
    table.commit_blocking(&logged).unwrap();
    // Taking c offline again changes nothing; removing it shrinks the majority.
    table.set_follower("c", FollowerChange::Offline).unwrap();
    assert_eq!(table.replica_state().followers, vec!["b", "c"]);
    table.set_follower("c", FollowerChange::Remove).unwrap();
    assert_eq!(table.replica_state().followers, vec!["b"]);
}

/// Point 2: a leader fenced while a write waits for its quorum answers "outcome
/// unknown", and does not report it committed (before, the follower set was emptied
/// and the commit offset jumped to the leader's own log end).
#[test]
fn a_step_down_fails_waiting_writes_as_outcome_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(create(&dir.path().join("1_0"), 1 << 20));
    leader_of(&table, 2, &["b", "c"], &[]);
    let logged = table.log_put(&row("a", 1, None, "t"), None).unwrap();
    let waiter = {
        let table = table.clone();
        std::thread::spawn(move || table.commit_blocking(&logged))
    };
    // Whether the waiter already waits or starts after the fence, it must fail.
    table.fence(3).unwrap();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(err, StorageError::OutcomeUnknown(_)), "{err}");
    assert_eq!(
        table.commit_offset(),
        0,
        "nothing committed on the leader's word"
    );
    assert_eq!(table.applied_offset(), 0, "nor applied");
}

/// Point 5: a leader's write is visible only once committed; an uncommitted delete
/// hides nothing yet.
#[test]
fn a_leader_shows_only_committed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    leader_of(&table, 2, &["b", "c"], &[]);
    let put = table.log_put(&row("a", 1, None, "t"), None).unwrap();
    assert_eq!(count(&table, "a"), 0, "not committed: not visible");
    assert_eq!(table.version().offset, 0);
    table.quorum_ack("c", put.version.offset);
    table.commit_blocking(&put).unwrap();
    assert_eq!(count(&table, "a"), 1);
    assert_eq!(table.version().offset, 1);

    let delete = table.log_delete("", &key("a"), None, None).unwrap();
    assert_eq!(count(&table, "a"), 1, "an uncommitted delete hides nothing");
    table.quorum_ack("b", delete.version.offset);
    assert_eq!(
        table.commit_blocking(&delete).unwrap(),
        1,
        "one row removed"
    );
    assert_eq!(count(&table, "a"), 0);
}

fn put_record(term: u64, offset: u64, id: &str) -> LogRecord {
    let data = tessera_common::codec::encode(&schema(), &row(id, 1, None, "t")).unwrap();
    LogRecord {
        term,
        offset,
        payload: LogEntry::Put {
            write_time_ms: 1,
            row: &data,
            request: None,
        }
        .encode(),
    }
}

fn append(prev: u64, entries: Vec<LogRecord>, commit_offset: u64) -> AppendEntriesRequest {
    let last = entries.last().map_or(prev, |e| e.offset);
    AppendEntriesRequest {
        tid: 1,
        pid: 0,
        term: 2,
        leader: "x".into(),
        prev_offset: prev,
        prev_term: if prev == 0 { 0 } else { 2 },
        entries,
        commit_offset,
        leader_term_history: vec![TermPair {
            term: 2,
            start_offset: 1,
        }],
        leader_last_offset: last,
        lease_ms: 500,
    }
}

/// Point 5 on a follower: records are applied up to the commit offset its leader sends,
/// follower reads see no more, and a leader read is refused with NotLeader.
#[test]
fn a_follower_shows_only_what_its_leader_committed() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    let outcome = table
        .handle_append(&append(
            0,
            vec![put_record(2, 1, "a"), put_record(2, 2, "b")],
            1,
        ))
        .unwrap();
    assert_eq!(outcome, AppendOutcome::Appended(2));
    assert_eq!((count(&table, "a"), count(&table, "b")), (1, 0));
    table.check_readable(1).unwrap();
    assert!(matches!(
        table.check_readable(2),
        Err(StorageError::Unavailable(_))
    ));
    assert!(matches!(
        table.check_readable(0),
        Err(StorageError::NotLeader { .. })
    ));
    // A heartbeat carries the new commit offset.
    table.handle_append(&append(2, vec![], 2)).unwrap();
    assert_eq!(count(&table, "b"), 1);
    table.check_readable(2).unwrap();
}

/// Point 4: a retried put is answered with its first result, not applied again; the
/// idempotence table survives a reload and a snapshot.
#[test]
fn a_retried_put_is_applied_once_across_reloads_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    let id = RequestId {
        client_id: 77,
        seq: 5,
        epoch: 0,
    };
    let first = table.log_put(&row("a", 1, None, "t"), Some(id)).unwrap();
    table.commit_blocking(&first).unwrap();
    let retry = table.log_put(&row("a", 1, None, "t"), Some(id)).unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.version, first.version);
    assert_eq!(count(&table, "a"), 1);

    let (table, _) = reopen(table, 1 << 20);
    let retry = table.log_put(&row("a", 1, None, "t"), Some(id)).unwrap();
    assert_eq!(
        (retry.duplicate, retry.version),
        (true, first.version),
        "after a replay"
    );
    table.make_snapshot().unwrap();
    let (table, _) = reopen(table, 1 << 20);
    let retry = table.log_put(&row("a", 1, None, "t"), Some(id)).unwrap();
    assert_eq!(
        (retry.duplicate, retry.version),
        (true, first.version),
        "after a snapshot"
    );
    table.commit_blocking(&retry).unwrap();
    assert_eq!(count(&table, "a"), 1);
    let other = table
        .log_put(
            &row("a", 2, None, "t"),
            Some(RequestId {
                client_id: 77,
                seq: 6,
                epoch: 0,
            }),
        )
        .unwrap();
    assert!(!other.duplicate);
}

/// A writer's new run registers its epoch: the old run's writes are refused from then on,
/// while the rows it wrote are still recognised by their sequence numbers. The epoch
/// survives a reload (replayed from the log) and a snapshot.
#[test]
fn a_registered_epoch_fences_the_older_run_across_reloads_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    let run = |epoch, seq| {
        Some(RequestId {
            client_id: 42,
            seq,
            epoch,
        })
    };
    let unregistered = table
        .log_put(&row("a", 1, None, "t"), run(1, 1))
        .unwrap_err();
    assert!(
        matches!(
            unregistered,
            StorageError::WriterFenced { registered: 0, .. }
        ),
        "a run writes only once registered: {unregistered}"
    );
    let first = table.log_register(42, 1).unwrap();
    table.commit_blocking(&first).unwrap();
    let written = table.log_put(&row("a", 1, None, "t"), run(1, 1)).unwrap();
    table.commit_blocking(&written).unwrap();
    let registered = table.log_register(42, 2).unwrap();
    table.commit_blocking(&registered).unwrap();
    assert_eq!(table.writer_highest(42), 1);

    let late = table
        .log_put(&row("b", 2, None, "t"), run(1, 2))
        .unwrap_err();
    assert!(
        matches!(
            late,
            StorageError::WriterFenced {
                client_id: 42,
                epoch: 1,
                registered: 2
            }
        ),
        "{late}"
    );
    assert!(
        table.log_register(42, 1).is_err(),
        "an older run cannot register again"
    );
    let again = table.log_put(&row("a", 1, None, "t"), run(2, 1)).unwrap();
    assert_eq!(
        (again.duplicate, again.version),
        (true, written.version),
        "the new run finds the old run's row"
    );

    let still_fenced = |table: &Table, step: &str| {
        let late = table
            .log_put(&row("b", 2, None, "t"), run(1, 2))
            .unwrap_err();
        assert!(
            matches!(late, StorageError::WriterFenced { .. }),
            "after {step}: {late}"
        );
        let retry = table.log_put(&row("a", 1, None, "t"), run(2, 1)).unwrap();
        assert!(retry.duplicate, "after {step}");
    };
    let (table, _) = reopen(table, 1 << 20);
    still_fenced(&table, "a reload");
    table.make_snapshot().unwrap();
    let (table, _) = reopen(table, 1 << 20);
    still_fenced(&table, "a snapshot");
    let next = table.log_put(&row("b", 2, None, "t"), run(2, 2)).unwrap();
    table.commit_blocking(&next).unwrap();
    assert_eq!((count(&table, "a"), count(&table, "b")), (1, 1));
}

/// A quorum write that times out reports an outcome the client can tell from a refusal.
#[test]
fn a_quorum_timeout_is_an_unknown_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let table = short_quorum_timeout(&dir.path().join("1_0"));
    leader_of(&table, 2, &["b", "c"], &[]);
    let logged = table.log_put(&row("a", 1, None, "t"), None).unwrap();
    let err = table.commit_blocking(&logged).unwrap_err();
    assert!(matches!(err, StorageError::OutcomeUnknown(_)), "{err}");
    assert!(err.to_string().contains("may still be applied"), "{err}");
}

/// Point 9: a partition bounds the writes waiting on it and refuses the excess with a
/// retryable "overloaded" instead of queueing without limit.
#[test]
fn writes_beyond_the_bound_are_refused_as_overloaded() {
    let dir = tempfile::tempdir().unwrap();
    let options = TableOptions {
        max_writes_in_flight: 2,
        ..options(1 << 20)
    };
    let table = Table::create(&dir.path().join("1_0"), meta(1, 0), options)
        .unwrap()
        .0;
    let first = table.write_slots(1).unwrap();
    let _second = table.write_slots(1).unwrap();
    let err = table.write_slots(1).unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("overloaded"), "{err}");
    drop(first);
    let _third = table.write_slots(1).expect("a slot is free again");
    drop(_third);
    // A batch takes a slot per write, and one bigger than the bound can never fit.
    let err = table.write_slots(2).unwrap_err();
    assert!(err.to_string().contains("overloaded"), "{err}");
    drop(_second);
    let both = table.write_slots(2).expect("two slots for a batch of two");
    drop(both);
    let all = table
        .write_slots(3)
        .expect("a batch bigger than the bound takes all of it");
    assert!(table.write_slots(1).is_err(), "nothing left beside it");
    drop(all);
}

/// A batch of puts is logged together, yet each row has its own outcome: a bad row is
/// refused alone, a retried row is answered with its first version, and the others get
/// consecutive offsets. Retrying the whole batch applies nothing twice.
#[test]
fn a_batch_of_puts_has_an_outcome_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    let id = |seq| RequestId::from_wire(9, seq);
    let early = table.log_put(&row("a", 1, None, "t"), id(1)).unwrap();
    table.commit_blocking(&early).unwrap();

    let rows = [
        row("a", 1, None, "t"),
        row("b", 2, None, "t"),
        vec![tessera_common::Value::Null; 4],
        row("c", 3, None, "t"),
    ];
    let batch: Vec<_> = rows
        .iter()
        .zip([id(1), id(2), id(3), id(4)])
        .map(|(r, id)| (r.as_slice(), id))
        .collect();
    let logged = table.log_puts(&batch);
    assert_eq!(logged.len(), 4);
    let a = logged[0].as_ref().unwrap();
    assert!(a.duplicate, "seq 1 was applied before");
    assert_eq!(a.version, early.version);
    assert!(logged[2].is_err(), "a row without a key is refused alone");
    let (b, c) = (logged[1].as_ref().unwrap(), logged[3].as_ref().unwrap());
    assert_eq!(
        (b.version.offset, c.version.offset),
        (early.version.offset + 1, early.version.offset + 2),
        "the good rows are logged in order, one after the other"
    );
    for l in logged.iter().flatten() {
        table.commit_blocking(l).unwrap();
    }
    let again = table.log_puts(&batch);
    assert!(
        again.iter().flatten().all(|l| l.duplicate),
        "a retried batch is all duplicates"
    );
    for id in ["a", "b", "c"] {
        assert_eq!(count(&table, id), 1, "{id} is stored once");
    }
}

/// Point 5 at a change of leader: a promoted follower may hold committed records it has
/// not applied yet (it learns the commit with its leader's next message), so it serves
/// leader reads only once a record of its own term is committed (Raft's read rule).
#[test]
fn a_new_leader_serves_reads_only_after_committing_in_its_term() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    table
        .handle_append(&append(
            0,
            vec![put_record(2, 1, "a"), put_record(2, 2, "b")],
            1,
        ))
        .unwrap();
    leader_of(&table, 3, &["b", "c"], &[]);
    assert_eq!(table.last_offset(), 3, "a no-op starts term 3");
    assert!(matches!(
        table.check_readable(0),
        Err(StorageError::Unavailable(_))
    ));
    assert_eq!(count(&table, "b"), 0);
    table.quorum_ack("b", 3);
    // The answer that acknowledged also renews the read lease (as the link does).
    table.lease_heard("b", 3, Instant::now());
    table.check_readable(0).unwrap();
    assert_eq!(
        (count(&table, "a"), count(&table, "b")),
        (1, 1),
        "everything below the no-op is committed with it"
    );
}

/// One leader per term: in a term that has a leader, a second fence, a second leader or
/// the follower of another leader is refused; a replica fenced in a term and waiting for
/// its role takes any one role in it, and repeating the same role is harmless.
#[test]
fn a_term_has_one_leader() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    leader_of(&table, 2, &["b", "c"], &[]);
    let taken = table.fence(2).unwrap_err();
    assert!(
        matches!(taken, StorageError::TermTaken { term: 2, .. }),
        "{taken}"
    );
    let follow = |leader: &str, term| {
        table.change_role(&RoleChange {
            role: TableRole::Follower,
            term,
            followers: vec![],
            leader: leader.into(),
            offline: vec![],
        })
    };
    assert!(matches!(
        follow("x", 2),
        Err(StorageError::TermTaken { .. })
    ));
    leader_of(&table, 2, &["b", "c"], &[]); // the same promotion again: fine

    // Fenced in term 3 (twice: a resumed op), then a follower of x.
    table.fence(3).unwrap();
    table.fence(3).unwrap();
    follow("x", 3).unwrap();
    follow("x", 3).unwrap();
    assert!(matches!(
        follow("y", 3),
        Err(StorageError::TermTaken { .. })
    ));
    assert!(matches!(
        table.change_role(&RoleChange {
            role: TableRole::Leader,
            term: 3,
            followers: vec![],
            leader: String::new(),
            offline: vec![],
        }),
        Err(StorageError::TermTaken { .. })
    ));
    // Another leader claiming term 3 through replication is refused as well.
    let mut from_y = append(table.last_offset(), vec![], 0);
    from_y.term = 3;
    from_y.leader = "y".into();
    assert!(table.handle_append(&from_y).is_err());
    assert!(matches!(
        table.fence(2),
        Err(StorageError::StaleTerm { current: 3, got: 2 })
    ));
}

/// Asks `table` to lead `term` with no followers.
fn try_lead(table: &Table, term: u64) -> Result<(), StorageError> {
    table.change_role(&RoleChange {
        role: TableRole::Leader,
        term,
        followers: vec![],
        leader: String::new(),
        offline: vec![],
    })
}

/// A cluster's options: a restarted leader waits to be told its role.
fn cluster_options() -> TableOptions {
    TableOptions {
        restore_leadership: false,
        ..options(1 << 20)
    }
}

/// A replica never leads the term it held when it was loaded: the restart may have
/// lost records of that term it had written and not synced — ones it shipped as the
/// term's leader, or ones it reported to the fence that chose it — and new records would
/// take their offsets with the same term (a resumed ChangeLeader repeats its promotion).
#[test]
fn a_restarted_replica_does_not_lead_the_term_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let restart = |table: Table| {
        let dir = table.dir().to_path_buf();
        table.close().unwrap();
        drop(table);
        Table::open(&dir, cluster_options()).unwrap().0
    };
    let table = Table::create(&dir.path().join("1_0"), meta(1, 0), cluster_options())
        .unwrap()
        .0;
    table.fence(2).unwrap();
    try_lead(&table, 2).unwrap();
    try_lead(&table, 2).unwrap(); // a repeated promotion while it leads: fine
    let table = restart(table);
    assert!(
        matches!(
            try_lead(&table, 2),
            Err(StorageError::TermTaken { term: 2, .. })
        ),
        "it led term 2 before it restarted"
    );
    // Fenced again in that term (a resumed op's fence) and restarted once more: still
    // not, though its state file now says follower.
    table.fence(2).unwrap();
    let table = restart(table);
    assert!(matches!(
        try_lead(&table, 2),
        Err(StorageError::TermTaken { .. })
    ));
    // Fenced for a new term, then restarted before its promotion: the log it reported
    // may be gone, so not that term either.
    table.fence(3).unwrap();
    let table = restart(table);
    assert!(matches!(
        try_lead(&table, 3),
        Err(StorageError::TermTaken { .. })
    ));
    // A term it has not held since it was loaded, after its fence, it may lead.
    table.fence(4).unwrap();
    try_lead(&table, 4).unwrap();
}

/// A follower fenced into a new term while a snapshot from its old leader arrives is
/// closed and reloaded without installing it. Nothing of its log is lost by that clean
/// reload, so it may still lead the term its fence was for (the ChangeLeader that fenced
/// it may have chosen it); a replica loaded at a restart in that term still may not.
#[test]
fn a_replica_reloaded_after_a_refused_snapshot_may_lead_its_fence_term() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let old_leader = "127.0.0.1:1";
    let snapshot_from_old_leader = ReplicaState {
        term: 2,
        role: TableRole::Follower as i32,
        leader: old_leader.into(),
        ..ReplicaState::default()
    };
    let refused = |catalog: &Arc<Catalog>, current: u64| {
        // On a thread of its own, with a deadline: the refusal once deadlocked the
        // catalog (its map's lock held across the reload).
        let (done, outcome) = std::sync::mpsc::channel();
        // The snapshot's files, as received.
        let incoming = catalog.new_incoming_dir(1, 0);
        std::fs::create_dir_all(incoming.join("snapshot")).unwrap();
        std::fs::write(incoming.join("snapshot").join("data"), b"rows").unwrap();
        let (installing, received) = (catalog.clone(), incoming.clone());
        let state = snapshot_from_old_leader.clone();
        std::thread::spawn(move || {
            let _ = done.send(installing.install_snapshot(1, 0, &incoming, &state).err());
        });
        let outcome = outcome
            .recv_timeout(Duration::from_secs(30))
            .expect("install_snapshot did not return: the catalog is deadlocked");
        assert!(
            matches!(
                outcome,
                Some(TabletError::Storage(StorageError::StaleTerm { current: c, got: 2 })) if c == current
            ),
            "fenced into term {current}, it must not take term 2's snapshot: {outcome:?}"
        );
        assert!(
            !received.exists(),
            "the refused snapshot's files are removed"
        );
        catalog.get(1, 0).expect("reloaded after the refusal")
    };

    let catalog = Arc::new(Catalog::open(root, cluster_options()).unwrap());
    let table = catalog.create(meta(1, 0)).unwrap();
    follower_of(&table, 2, old_leader);
    table.fence(3).unwrap();
    drop(table);
    let reloaded = refused(&catalog, 3);
    assert_eq!(reloaded.replica_state().term, 3);
    try_lead(&reloaded, 3).expect("a clean reload lost nothing: it may lead its fence's term");
    // Having led term 3, a reload keeps the marker of what it held then: not term 3 again.
    drop(reloaded);
    let reloaded = refused(&catalog, 3);
    assert!(matches!(
        try_lead(&reloaded, 3),
        Err(StorageError::TermTaken { term: 3, .. })
    ));

    // Restarted in term 3 (its log may have lost records it reported): not that term,
    // and a reload after a refused snapshot keeps it so.
    reloaded.fence(4).unwrap();
    drop(reloaded);
    catalog.close_all();
    drop(catalog);
    let catalog = Arc::new(Catalog::open(root, cluster_options()).unwrap());
    let reloaded = refused(&catalog, 4);
    assert!(matches!(
        try_lead(&reloaded, 4),
        Err(StorageError::TermTaken { term: 4, .. })
    ));
    reloaded.fence(5).unwrap();
    try_lead(&reloaded, 5).expect("a term it has not held since it was loaded");
}

/// Snapshots received for one replica at once (an old leader's stream still running
/// when the new leader's starts) are assembled apart, so one stream's cleanup never
/// removes the other's files; and what a stopped process was receiving is removed when
/// the catalog opens, never taken for a replica.
#[test]
fn snapshots_received_at_once_are_assembled_apart() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), cluster_options()).unwrap();
    let (first, second) = (
        catalog.new_incoming_dir(1, 0),
        catalog.new_incoming_dir(1, 0),
    );
    assert_ne!(first, second, "two streams, two directories");
    for received in [&first, &second] {
        std::fs::create_dir_all(received.join("snapshot")).unwrap();
        std::fs::write(received.join("snapshot").join("data"), b"rows").unwrap();
    }
    // A third whose install was cut short after the old replica was moved away: its
    // state written, the replica's own directory gone.
    let mid_install = catalog.new_incoming_dir(1, 0);
    std::fs::create_dir_all(&mid_install).unwrap();
    std::fs::write(mid_install.join("replica_state"), b"state").unwrap();
    drop(catalog);
    let catalog = Catalog::open(dir.path(), cluster_options()).unwrap();
    assert!(
        !first.exists() && !second.exists(),
        "a snapshot a stopped process was receiving is removed at the next start"
    );
    assert!(
        mid_install.exists(),
        "one whose install had begun is the replica's only copy: kept"
    );
    assert!(catalog.get(1, 0).is_err(), "and not taken for a replica");
}

/// A read answers with an offset at or beyond every entry it shows: a client that then
/// asks a follower for that offset never sees less (found by the fault-injection bed as
/// a scan from the leader, then one from a caught-up follower, missing a row).
#[test]
fn a_read_never_answers_with_an_offset_below_what_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(create(&dir.path().join("1_0"), 1 << 20));
    const WRITES: i64 = 3000;
    let writer = {
        let table = table.clone();
        std::thread::spawn(move || {
            for ts in 1..=WRITES {
                let version = table.put(&row("a", ts, None, "t")).unwrap();
                assert_eq!(version.offset, ts as u64, "one entry per put");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let (version, rows) = scan(&table, "a", 1);
        // Rows are newest first; row `ts` is the entry at offset `ts`.
        if let Some(newest) = rows.first() {
            assert!(
                newest.ts as u64 <= version.offset,
                "a scan showed the entry at offset {} but answered offset {}",
                newest.ts,
                version.offset
            );
        }
        let (version, count) = table.count("", &key("a")).unwrap();
        assert!(
            count <= version.offset,
            "counted {count} at offset {}",
            version.offset
        );
        reads += 1;
    }
    writer.join().unwrap();
    assert!(reads > 0);
}

/// A leader fenced by a lapsed lease reports it only once the lease is back in a new
/// session (nobody else will lift the fence then); a lapse regained in the same session
/// lifts it by itself and is never reported; a new role clears it.
#[test]
fn a_fenced_leader_reports_itself_only_when_waiting_for_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    leader_of(&table, 2, &["b", "c"], &[]);
    table.lease_lost();
    assert!(
        !table.status().fenced,
        "a lapse may be regained in its session"
    );
    table.lease_regained();
    assert!(!table.status().fenced);

    table.lease_lost();
    table.lease_acquired_in_new_session();
    assert!(table.status().fenced, "waiting to be told its role");
    table.lease_lost();
    assert!(!table.status().fenced, "not while the lease is down again");
    table.lease_acquired_in_new_session();
    assert!(table.status().fenced);
    leader_of(&table, 3, &["b", "c"], &[]);
    assert!(!table.status().fenced, "a new role ends the wait");
}

/// Fast failover: a leader serves reads only while a majority of its voting members
/// (itself included) answered a request it sent less than a lease ago, so a leader that
/// was paused or cut off stops serving by itself before the nameserver promotes another.
#[test]
fn a_leader_reads_only_under_a_lease_its_followers_renew() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    leader_of(&table, 1, &["b", "c"], &[]);
    table.quorum_ack("b", table.last_offset());
    let refused = table.check_readable(0).unwrap_err();
    assert!(
        refused.to_string().contains("within its lease"),
        "no follower answered yet: {refused}"
    );
    // An answer to a request sent longer than a lease ago renews nothing now.
    let long_ago = Instant::now() - Duration::from_millis(800);
    table.lease_heard("c", 1, long_ago);
    assert!(table.check_readable(0).is_err(), "the lease ran out");
    // One of two followers makes a majority of three.
    table.lease_heard("b", 1, Instant::now());
    table.check_readable(0).unwrap();
    // An answer from a replica that does not vote counts for nothing.
    let lone = tempfile::tempdir().unwrap();
    let other = create(&lone.path().join("1_0"), 1 << 20);
    leader_of(&other, 1, &["b", "c"], &[]);
    other.quorum_ack("b", other.last_offset());
    other.lease_heard("stranger", 1, Instant::now());
    assert!(other.check_readable(0).is_err());
}

/// A fenced follower says how long a lease it helped its old leader renew may last, so
/// the nameserver can wait it out before the new leader acknowledges anything; a
/// replica that heard from no leader for longer than a lease owes nothing.
#[test]
fn a_fence_reports_the_lease_the_replica_granted() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    table
        .handle_append(&append(0, vec![put_record(2, 1, "a")], 1))
        .unwrap();
    table.fence(3).unwrap();
    let owed = table.granted_lease_remaining();
    assert!(
        owed > Duration::from_millis(400) && owed <= Duration::from_millis(600),
        "answered just now a leader keeping a 500 ms lease: {owed:?}"
    );
    // A stale leader's request after the fence is refused and renews nothing.
    assert!(matches!(
        table.handle_append(&append(1, Vec::new(), 1)).unwrap(),
        AppendOutcome::StaleTerm(3)
    ));
    assert!(table.granted_lease_remaining() <= owed);
}

/// A follower in its leader tablet's grant has its lease renewed by the grant alone, and
/// hears from its leader through it; a fence makes it leave the grant (the generation
/// moves, so its leader stops counting the grant for it) and report what the grant
/// promised; a closed replica leaves too.
#[test]
fn a_replica_in_a_grant_is_renewed_by_it_until_it_leaves() {
    use tessera_proto::tablet::PartitionBeat;
    use tessera_tablet::replication::pair_lease::PairGrants;
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    follower_of(&table, 2, "a:1");
    let grants = PairGrants::default();
    let grant = grants.of("a:1");
    let beat = PartitionBeat {
        tid: 1,
        pid: 0,
        term: 2,
        ..Default::default()
    };
    assert_eq!(
        table.heartbeat(&grants.of("b:1"), 1, &beat).joined,
        None,
        "another tablet's beat: not its leader"
    );
    // A beat asking for a 1 ms lease: granted, and in the grant.
    let outcome = table.heartbeat(&grant, 1, &beat);
    assert!(outcome.granted);
    let joined = outcome.joined.expect("in the grant");
    // A replica just loaded owes a whole lease (it may have granted one before a
    // restart): wait until most of it has run out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while table.granted_lease_remaining() >= Duration::from_millis(100) {
        assert!(
            Instant::now() < deadline,
            "the loaded replica's lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The grant's renewal renews the replica's lease with no beat of its own.
    assert_eq!(grant.renew(Duration::from_millis(500)), joined);
    let owed = table.granted_lease_remaining();
    let owed_at = Instant::now();
    assert!(owed > Duration::from_millis(400), "{owed:?}");
    let silent = Duration::from_millis(300)..Duration::from_secs(3600);
    assert_eq!(
        table.leader_silent_within(&silent),
        None,
        "heard through the grant"
    );

    table.fence(3).unwrap();
    let after_fence = grant.renew(Duration::from_millis(500));
    assert_eq!(after_fence, joined + 1, "leaving moves the generation");
    let still_owed = table.granted_lease_remaining();
    // The same deadline, however long the fence's state write took on a loaded machine.
    let since = owed_at.elapsed();
    assert!(
        still_owed <= owed && still_owed + since + Duration::from_millis(20) >= owed,
        "a fence reports what the grant promised: {still_owed:?} of {owed:?}, {since:?} later"
    );
    assert!(
        !table.heartbeat(&grant, 500, &beat).granted,
        "term 2 is over"
    );

    // Back in the grant under the new term, then closed: it leaves again.
    follower_of(&table, 4, "a:1");
    assert_eq!(
        grant.generation(),
        after_fence,
        "not in the grant until beaten"
    );
    let beat = PartitionBeat { term: 4, ..beat };
    assert_eq!(
        table.heartbeat(&grant, 500, &beat).joined,
        Some(after_fence)
    );
    table.close().unwrap();
    assert_eq!(
        grant.generation(),
        after_fence + 1,
        "a closed replica leaves"
    );
}

/// The watchdog asks every replica for its leader's silence ten times a second; a
/// replica answers only when the silence lies in the reported range, and only a
/// follower with a leader answers at all.
#[test]
fn a_follower_tells_its_leaders_silence_only_within_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let table = create(&dir.path().join("1_0"), 1 << 20);
    let always = Duration::ZERO..Duration::from_secs(3600);
    assert_eq!(table.leader_silent_within(&always), None, "no leader yet");
    follower_of(&table, 2, "a:1");
    let (leader, quiet) = table.leader_silent_within(&always).expect("a follower");
    assert_eq!(leader, "a:1");
    assert!(quiet < Duration::from_secs(3600));
    let later = Duration::from_secs(3600)..Duration::from_secs(7200);
    assert_eq!(
        table.leader_silent_within(&later),
        None,
        "heard from just now"
    );
    leader_of(&table, 3, &["b", "c"], &[]);
    assert_eq!(
        table.leader_silent_within(&always),
        None,
        "a leader has none"
    );
}

/// A fence or role change is written into the replica's state file in place (the same
/// file, no rename: a tablet's failure makes thousands of them at once on the others),
/// and a reload after one of its two copies was damaged still knows the last term and
/// leader: never forgotten, nor taken from an older copy.
#[test]
fn the_replica_state_is_written_in_place_and_survives_one_damaged_copy() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let table = Table::create(&dir.path().join("1_0"), meta(1, 0), cluster_options())
        .unwrap()
        .0;
    let path = table.dir().join("replica_state");
    table.fence(2).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    table.fence(3).unwrap();
    follower_of(&table, 3, "x");
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "written in place"
    );
    let replica_dir = table.dir().to_path_buf();
    table.close().unwrap();
    drop(table);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let table = Table::open(&replica_dir, cluster_options()).unwrap().0;
    let state = table.replica_state();
    assert_eq!((state.term, state.leader.as_str()), (3, "x"), "{state:?}");
}

/// A runtime whose blocking pool has one thread: work queued behind a task there runs
/// only once that task has ended.
fn one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A snapshot send pauses the replica's snapshots (and binlog collection) while it
/// prepares and sends. A send dropped while it prepares (its link stopped, its caller's
/// connection closed) must not leave them paused: before, the pause was taken on the
/// blocking pool and its release made only once the caller was polled again, so a
/// dropped caller left snapshots off until the replica was reloaded.
#[test]
fn a_snapshot_send_dropped_while_it_prepares_leaves_snapshots_on() {
    // One blocking thread: a task queued after the preparation runs once it has ended.
    let runtime = one_blocking_thread();
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(create(&dir.path().join("1_0"), 1 << 20));
    for ts in 1..=3 {
        table.put(&row("a", ts, None, "t")).unwrap();
    }
    runtime.block_on(async {
        // Polled once (the preparation is queued on the blocking pool), then dropped.
        polled_once_then_dropped(tessera_tablet::replication::transfer::send_snapshot(
            table.clone(),
            1,
            "127.0.0.1:1",
            "127.0.0.1:1",
        ))
        .await;
        // Queued after the preparation: runs once it has ended.
        tokio::task::spawn_blocking(|| ()).await.unwrap();
    });
    let snapshot = table.make_snapshot();
    assert!(
        snapshot.is_ok(),
        "snapshots still paused after the send was dropped: {snapshot:?}"
    );
}

/// A role change (ChangeRole, or LoadTable with a role) whose caller goes away once the
/// change has run (a nameserver's call timing out, its connection closed) still brings
/// the replica's replication links in line: before, the links were synced by the caller
/// after the change, so a dropped caller left a new leader shipping to nobody until some
/// later call synced them. A dropped leader's links stop (before, they retried for ever).
#[test]
fn a_role_change_whose_caller_goes_away_still_syncs_the_links() {
    use tessera_proto::tablet::tablet_server::Tablet;
    use tessera_proto::tablet::{ChangeRoleRequest, DropTableRequest, LoadTableRequest};
    use tessera_tablet::replication::leader::Replicators;
    use tessera_tablet::service::TabletService;
    use tessera_tablet::storage::PageLimit;
    use tessera_tablet::watchdog::Reporter;

    // Nothing listens on port 1: a link to it reports its failed connection.
    const FOLLOWER: &str = "127.0.0.1:1";
    // Replica 1_0 is loaded and changes role; 2_0 is on disk (put there by hand) and is
    // loaded as a leader.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    {
        let catalog = Catalog::open(elsewhere.path(), cluster_options()).unwrap();
        catalog.create(meta(2, 0)).unwrap();
        catalog.close_all();
    }
    let catalog = Arc::new(Catalog::open(dir.path(), cluster_options()).unwrap());
    std::fs::rename(elsewhere.path().join("2_0"), dir.path().join("2_0")).unwrap();
    catalog.create(meta(1, 0)).unwrap();

    // One blocking thread: a task queued after the role change runs once it has ended.
    let runtime = one_blocking_thread();
    runtime.block_on(async {
        let replicators = Replicators::new(catalog.clone(), "127.0.0.1:2".into());
        let service = TabletService::new(
            replicators.clone(),
            PageLimit {
                rows: 100,
                bytes: 1 << 20,
            },
            Reporter::default(),
        );
        let change_role = service.change_role(tonic::Request::new(ChangeRoleRequest {
            tid: 1,
            pid: 0,
            role: TableRole::Leader as i32,
            term: 1,
            followers: vec![FOLLOWER.to_string()],
            ..Default::default()
        }));
        polled_once_then_dropped(change_role).await;
        let load = service.load_table(tonic::Request::new(LoadTableRequest {
            tid: 2,
            pid: 0,
            role: Some(TableRole::Leader as i32),
            term: 1,
            followers: vec![FOLLOWER.to_string()],
            ..Default::default()
        }));
        polled_once_then_dropped(load).await;
        // A link reports its failed connections to the follower; none, no link.
        let linked = |table: &Table| {
            replicators
                .follower_status(table)
                .iter()
                .any(|f| f.endpoint == FOLLOWER && !f.error.is_empty())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for tid in [1, 2] {
            loop {
                let table = catalog.get(tid, 0).ok();
                let led = table
                    .as_ref()
                    .is_some_and(|t| t.replica_state().role() == TableRole::Leader);
                if led && table.as_deref().is_some_and(linked) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {tid}_0 leads with no replication link to its follower: {:?}",
                    table.map(|t| replicators.follower_status(&t))
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        // Dropped, a leader's links stop with it, however its caller ends.
        let dropped = catalog.get(1, 0).unwrap();
        let drop_table =
            service.drop_table(tonic::Request::new(DropTableRequest { tid: 1, pid: 0 }));
        polled_once_then_dropped(drop_table).await;
        loop {
            if catalog.get(1, 0).is_err() && !replicators.ships(1, 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dropped leader still ships: {:?}",
                replicators.follower_status(&dropped)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A sync arriving late with the dropped copy (a role change's, say) starts none.
        replicators.sync_table(&dropped);
        assert!(
            !replicators.ships(1, 0),
            "links started for a replica the catalog no longer holds"
        );
    });
}

/// Polls `call` exactly once while the one blocking thread is held, so whatever it
/// queues there cannot have run before it is dropped; then lets the thread go.
async fn polled_once_then_dropped(call: impl std::future::Future) {
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let held = tokio::task::spawn_blocking(move || {
        let _ = gate.recv();
    });
    let mut call = Box::pin(call);
    std::future::poll_fn(|cx| {
        let _ = call.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    drop(call);
    release.send(()).unwrap();
    held.await.unwrap();
}

/// Every change of a replica's state gets a larger number than any before it, in any
/// copy of any replica, and so does a copy loaded later: the links follow these numbers
/// so that a sync that read an older state never lands after a newer one.
#[test]
fn state_changes_are_numbered_in_order_across_copies() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path(), cluster_options()).unwrap();
    let table = catalog.create(meta(1, 0)).unwrap();
    let created = table.shipping_view().seq;
    leader_of(&table, 1, &["127.0.0.1:1"], &[]);
    let led = table.shipping_view();
    assert!(led.seq > created);
    assert_eq!(
        (led.term, led.followers.clone()),
        (1, vec!["127.0.0.1:1".to_string()])
    );
    table.fence(2).unwrap();
    let fenced = table.shipping_view();
    assert!(fenced.seq > led.seq);
    assert!(
        fenced.followers.is_empty(),
        "a fenced replica ships to nobody"
    );
    drop(table);
    catalog.close_all();
    drop(catalog);
    let catalog = Catalog::open(dir.path(), cluster_options()).unwrap();
    let reloaded = catalog.get(1, 0).unwrap().shipping_view();
    assert!(
        reloaded.seq > fenced.seq,
        "a copy loaded later numbers above the old one"
    );
}
