//! Decisions of the failover pipeline, free of IO: what to do about a table's partitions
//! given which tablets are healthy, which replica to promote, and how to bring a
//! returning replica back.

use std::collections::HashMap;
use std::sync::Arc;

use tessera_common::history;
use tessera_proto::common::TermPair;
use tessera_proto::nameserver::TableInfo;

use crate::metadata_cache::Tables;

pub const CHANGE_LEADER: &str = "kChangeLeader";
pub const OFFLINE_REPLICA: &str = "kOfflineReplica";
pub const RECOVER_TABLE: &str = "kRecoverTable";
pub const ADD_REPLICA: &str = "kAddReplica";
pub const DEL_REPLICA: &str = "kDelReplica";
pub const MIGRATE: &str = "kMigrate";
pub const MAKE_SNAPSHOT: &str = "kMakeSnapshot";

/// The planner's last answer, with what it was for: the tables (each table's plan kept
/// by the address of its shared copy, which `tables` keeps alive, so no other table can
/// have it) and the healthy tablets, sorted.
pub(crate) struct PlanMemo {
    pub tables: Tables,
    pub healthy: Vec<String>,
    pub planned: Arc<Vec<(usize, Planned)>>,
    pub per_table: HashMap<usize, Vec<Planned>>,
}

/// Plans every table (`planned`: the table's index and the op), reusing `memo`'s plan of
/// each table that did not change while the healthy tablets stayed the same: at a
/// million partitions, a pass after one chunk's write plans one table, not all of them.
pub(crate) fn plan_tables(
    tables: &Tables,
    healthy: Vec<String>,
    memo: Option<&PlanMemo>,
) -> PlanMemo {
    let reusable = memo.filter(|m| m.healthy == healthy);
    let mut per_table = HashMap::with_capacity(tables.len());
    let mut planned = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let key = Arc::as_ptr(table) as usize;
        let plan = match reusable.and_then(|m| m.per_table.get(&key)) {
            Some(plan) => plan.clone(),
            None => plan(table, |e| {
                healthy.binary_search_by(|h| h.as_str().cmp(e)).is_ok()
            }),
        };
        planned.extend(plan.iter().cloned().map(|p| (index, p)));
        per_table.insert(key, plan);
    }
    PlanMemo {
        tables: tables.clone(),
        healthy,
        planned: Arc::new(planned),
        per_table,
    }
}

/// One op the planner wants: its type, the partition, and the replica it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub op_type: &'static str,
    pub pid: u32,
    pub endpoint: String,
}

/// Compares the metadata with the registry. A leader on an unhealthy tablet gets a
/// ChangeLeader; an alive follower on an unhealthy tablet an OfflineReplica; a replica
/// marked dead whose tablet is healthy again a RecoverTable, once its partition has an
/// alive leader. A partition with no alive leader but a healthy replica gets a
/// ChangeLeader among the healthy ones.
pub fn plan(table: &TableInfo, healthy: impl Fn(&str) -> bool) -> Vec<Planned> {
    let mut out = Vec::new();
    for partition in &table.partitions {
        let leader = partition
            .replicas
            .iter()
            .find(|r| r.is_leader && r.is_alive);
        match leader {
            Some(leader) if !healthy(&leader.endpoint) => {
                out.push(Planned {
                    op_type: CHANGE_LEADER,
                    pid: partition.pid,
                    endpoint: leader.endpoint.clone(),
                });
                continue;
            }
            None => {
                if partition.replicas.iter().any(|r| healthy(&r.endpoint)) {
                    out.push(Planned {
                        op_type: CHANGE_LEADER,
                        pid: partition.pid,
                        endpoint: String::new(),
                    });
                }
                continue;
            }
            Some(_) => {}
        }
        for replica in partition.replicas.iter().filter(|r| !r.is_leader) {
            let up = healthy(&replica.endpoint);
            if replica.is_alive && !up {
                out.push(Planned {
                    op_type: OFFLINE_REPLICA,
                    pid: partition.pid,
                    endpoint: replica.endpoint.clone(),
                });
            } else if !replica.is_alive && up {
                out.push(Planned {
                    op_type: RECOVER_TABLE,
                    pid: partition.pid,
                    endpoint: replica.endpoint.clone(),
                });
            }
        }
    }
    out
}

/// What a fenced replica reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub endpoint: String,
    pub last_term: u64,
    pub last_offset: u64,
}

/// Picks the new leader among the replicas that answered the fence: the largest
/// (last term, last offset), or the operator's candidate if it holds as much (or if
/// `force`).
///
/// `sufficient` says whether the answers meet every majority of the voting sets
/// (`voting::answers_suffice`; always in async mode). If they do not, the partition stays
/// without a leader unless `force`: the chosen one might lack an acknowledged write.
pub fn choose_leader(
    answered: &[Fenced],
    sufficient: Result<(), String>,
    candidate: Option<&str>,
    force: bool,
) -> Result<String, String> {
    if answered.is_empty() {
        return Err("no replica answered the fence".into());
    }
    if !force {
        sufficient?;
    }
    let best = answered
        .iter()
        .map(|f| (f.last_term, f.last_offset))
        .max()
        .expect("not empty");
    // A candidate that lacks records another replica holds would drop them, and some may
    // have been acknowledged; one that did not answer cannot lead. Either way the most
    // complete replica leads instead (all replicas are fenced by now, so the partition
    // needs a leader), and the caller sees the difference and may try again.
    if let Some(chosen) = candidate.and_then(|c| answered.iter().find(|f| f.endpoint == c)) {
        if (chosen.last_term, chosen.last_offset) == best || force {
            return Ok(chosen.endpoint.clone());
        }
    }
    Ok(most_complete(answered))
}

/// The replica with the largest (last term, last offset); ties go to the first by name.
fn most_complete(answered: &[Fenced]) -> String {
    let best = answered
        .iter()
        .max_by_key(|f| {
            (
                f.last_term,
                f.last_offset,
                std::cmp::Reverse(f.endpoint.clone()),
            )
        })
        .expect("not empty");
    best.endpoint.clone()
}

/// How a returning replica rejoins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Its log is a prefix of the leader's: resume from its offset (ReAddReplicaSimplify).
    Resume { from: u64 },
    /// It holds records the leader never had: cut them, then resume.
    Truncate { keep_through: u64 },
    /// What it shares with the leader lies below its own snapshot: re-seed it from the
    /// leader's snapshot (ReAddReplicaWithDrop).
    Reseed,
    /// It has no copy at all: create it and seed it from a snapshot (ReAddReplica).
    Create,
}

impl Recovery {
    pub fn name(&self) -> &'static str {
        match self {
            Recovery::Resume { .. } => "kReAddReplicaSimplify",
            Recovery::Truncate { .. } => "kReAddReplicaTruncate",
            Recovery::Reseed => "kReAddReplicaWithDrop",
            Recovery::Create => "kReAddReplica",
        }
    }
}

/// The replica's own state, if it has a copy: term history, last offset, snapshot offset.
pub struct ReplicaLog<'a> {
    pub history: &'a [TermPair],
    pub last_offset: u64,
    pub snapshot_offset: u64,
}

/// Decides how a returning replica rejoins, from the term histories.
pub fn recovery(
    replica: Option<ReplicaLog<'_>>,
    leader_history: &[TermPair],
    leader_last: u64,
) -> Recovery {
    let Some(replica) = replica else {
        return Recovery::Create;
    };
    let shared = history::divergence_point(
        replica.history,
        replica.last_offset,
        leader_history,
        leader_last,
    );
    if shared >= replica.last_offset {
        Recovery::Resume {
            from: replica.last_offset + 1,
        }
    } else if shared < replica.snapshot_offset {
        Recovery::Reseed
    } else {
        Recovery::Truncate {
            keep_through: shared,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tessera_proto::nameserver::{PartitionMeta, ReplicaMeta};

    use super::*;

    /// A table of one partition (pid 0, term 1, tid 7) with these `(endpoint, is_leader,
    /// is_alive)` replicas; shared with the reconciler's tests.
    pub(crate) fn table(replicas: &[(&str, bool, bool)]) -> TableInfo {
        TableInfo {
            tid: 7,
            partitions: vec![PartitionMeta {
                pid: 0,
                term: 1,
                unavailable_reason: String::new(),
                replicas: replicas
                    .iter()
                    .map(|&(endpoint, is_leader, is_alive)| ReplicaMeta {
                        endpoint: endpoint.into(),
                        is_leader,
                        is_alive,
                        joining: false,
                        leaving: false,
                    })
                    .collect(),
            }],
            ..TableInfo::default()
        }
    }

    fn up(list: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |e| list.contains(&e)
    }

    /// A table whose shared copy is the same as at the last pass keeps its plan (here
    /// a marker, to tell reuse from planning again); a changed table is planned again;
    /// nothing is reused once the healthy tablets differ.
    #[test]
    fn only_changed_tables_are_planned_again() {
        let dead_leader = || table(&[("a", true, true), ("b", false, true), ("c", false, true)]);
        let healthy = || vec!["b".to_string(), "c".to_string()];
        let first: Tables = Arc::new(vec![Arc::new(dead_leader()), Arc::new(dead_leader())]);
        let mut memo = plan_tables(&first, healthy(), None);
        assert_eq!(memo.planned.len(), 2, "a ChangeLeader for each table");
        let marker = Planned {
            op_type: MIGRATE,
            pid: 9,
            endpoint: "marker".into(),
        };
        memo.per_table
            .insert(Arc::as_ptr(&first[0]) as usize, vec![marker.clone()]);

        // The second table was written: its leader moved to b.
        let moved = table(&[("a", false, false), ("b", true, true), ("c", false, true)]);
        let second: Tables = Arc::new(vec![first[0].clone(), Arc::new(moved)]);
        let again = plan_tables(&second, healthy(), Some(&memo));
        assert_eq!(*again.planned, vec![(0, marker.clone())]);

        let elsewhere = plan_tables(&second, vec!["c".to_string()], Some(&again));
        assert!(
            elsewhere.planned.iter().all(|(_, p)| *p != marker),
            "other healthy tablets, every table planned again"
        );
    }

    #[test]
    fn a_dead_leader_gets_change_leader() {
        let t = table(&[("a", true, true), ("b", false, true), ("c", false, true)]);
        assert_eq!(
            plan(&t, up(&["b", "c"])),
            vec![Planned {
                op_type: CHANGE_LEADER,
                pid: 0,
                endpoint: "a".into()
            }]
        );
    }

    #[test]
    fn a_dead_follower_gets_offline_replica() {
        let t = table(&[("a", true, true), ("b", false, true), ("c", false, true)]);
        assert_eq!(
            plan(&t, up(&["a", "b"])),
            vec![Planned {
                op_type: OFFLINE_REPLICA,
                pid: 0,
                endpoint: "c".into()
            }]
        );
    }

    #[test]
    fn a_returning_replica_gets_recover_table() {
        let t = table(&[("a", false, false), ("b", true, true), ("c", false, true)]);
        assert_eq!(
            plan(&t, up(&["a", "b", "c"])),
            vec![Planned {
                op_type: RECOVER_TABLE,
                pid: 0,
                endpoint: "a".into()
            }]
        );
    }

    #[test]
    fn a_partition_without_a_leader_gets_one_when_a_replica_is_up() {
        let t = table(&[("a", true, false), ("b", false, false)]);
        assert_eq!(
            plan(&t, up(&["b"])),
            vec![Planned {
                op_type: CHANGE_LEADER,
                pid: 0,
                endpoint: String::new()
            }]
        );
        assert!(plan(&t, up(&[])).is_empty(), "nothing to promote");
    }

    #[test]
    fn a_healthy_partition_needs_nothing() {
        let t = table(&[("a", true, true), ("b", false, true)]);
        assert!(plan(&t, up(&["a", "b"])).is_empty());
    }

    fn fenced(endpoint: &str, last_term: u64, last_offset: u64) -> Fenced {
        Fenced {
            endpoint: endpoint.into(),
            last_term,
            last_offset,
        }
    }

    const ENOUGH: Result<(), String> = Ok(());

    fn too_few() -> Result<(), String> {
        Err("only 1 of the 3 listed replicas answered".into())
    }

    #[test]
    fn the_most_complete_log_wins() {
        let answered = [fenced("b", 1, 90), fenced("c", 2, 80), fenced("d", 2, 85)];
        assert_eq!(choose_leader(&answered, ENOUGH, None, false).unwrap(), "d");
    }

    #[test]
    fn too_few_answers_need_force() {
        let one = [fenced("b", 1, 90)];
        let err = choose_leader(&one, too_few(), None, false).unwrap_err();
        assert!(err.contains("only 1 of the 3"), "{err}");
        assert_eq!(choose_leader(&one, too_few(), None, true).unwrap(), "b");
        assert!(choose_leader(&[], ENOUGH, None, true).is_err());
    }

    #[test]
    fn a_candidate_leads_only_if_it_answered_and_holds_every_record() {
        let two = [fenced("b", 1, 91), fenced("c", 1, 91)];
        assert_eq!(choose_leader(&two, ENOUGH, Some("b"), false).unwrap(), "b");
        assert_eq!(
            choose_leader(&two, ENOUGH, Some("x"), false).unwrap(),
            "b",
            "a candidate that did not answer cannot lead"
        );
        let behind = [fenced("b", 1, 90), fenced("c", 1, 91)];
        assert_eq!(
            choose_leader(&behind, ENOUGH, Some("b"), false).unwrap(),
            "c",
            "a candidate behind another replica would drop its records"
        );
        assert_eq!(
            choose_leader(&behind, ENOUGH, Some("b"), true).unwrap(),
            "b"
        );
    }

    fn h(pairs: &[(u64, u64)]) -> Vec<TermPair> {
        pairs
            .iter()
            .map(|&(term, start_offset)| TermPair { term, start_offset })
            .collect()
    }

    #[test]
    fn recovery_decisions() {
        let leader = h(&[(1, 1), (2, 101)]);
        let behind = h(&[(1, 1)]);
        let log = |history: &'static [(u64, u64)], last, snap| (h(history), last, snap);
        let decide = |(history, last, snap): (Vec<TermPair>, u64, u64)| {
            recovery(
                Some(ReplicaLog {
                    history: &history,
                    last_offset: last,
                    snapshot_offset: snap,
                }),
                &leader,
                150,
            )
        };
        assert_eq!(
            decide((behind.clone(), 80, 0)),
            Recovery::Resume { from: 81 }
        );
        assert_eq!(
            decide(log(&[(1, 1)], 120, 0)),
            Recovery::Truncate { keep_through: 100 }
        );
        assert_eq!(decide(log(&[(1, 1)], 120, 110)), Recovery::Reseed);
        assert_eq!(recovery(None, &leader, 150), Recovery::Create);
        assert_eq!(Recovery::Create.name(), "kReAddReplica");
    }
}
