//! The reconciler's decisions, free of IO: how what the tablets report differs from what
//! the metadata intends, and which op repairs each difference.
//!
//! The planner reacts to the registry (a tablet gone or back). The reconciler catches
//! everything the registry does not show: a ChangeLeader that fenced the old leader and
//! then failed, a tablet that restarted within its session, a follower pointed at the
//! wrong leader, a leader still shipping to a replica the metadata has given up on.

use std::collections::HashMap;

use tessera_proto::nameserver::{PartitionMeta, ReplicaMeta, TableInfo};
use tessera_proto::tablet::{TableRole, TableStatus};

use crate::planner::{Planned, CHANGE_LEADER, OFFLINE_REPLICA, RECOVER_TABLE};

/// Replica statuses the reconciler reads per second at most: a pass asks every tablet
/// about every replica, so its cost (decoding, comparing) grows with the cluster.
const STATUSES_PER_SECOND: usize = 5_000;

/// How long after a pass over `replicas` replicas the next one starts: every second up
/// to 5,000 replicas, then in proportion (every 6 s at 10,000 partitions of 3
/// replicas), so an idle nameserver's reconciling stays a small share of a core, up to
/// once a minute. Failures the registry or the followers' reports show do
/// not wait for it.
pub fn period(replicas: usize) -> std::time::Duration {
    let millis = (replicas * 1000 / STATUSES_PER_SECOND).clamp(1000, LONGEST_PERIOD_MS);
    std::time::Duration::from_millis(millis as u64)
}

/// However large the cluster, a difference is looked for at least once a minute.
const LONGEST_PERIOD_MS: usize = 60_000;

/// What one tablet reported: its replicas by (tid, pid). A tablet that could not be
/// asked is absent from the map of observations.
pub type TabletReport = HashMap<(u32, u32), TableStatus>;

/// One difference between the metadata and a tablet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub pid: u32,
    pub endpoint: String,
    /// What differs, for `showtable` and the log.
    pub what: String,
    /// The op that repairs it.
    pub repair: &'static str,
    /// ChangeLeader: the leader is named as the failed replica (fenced, never chosen
    /// again), not just one of the replicas to fence.
    pub replace_leader: bool,
}

impl Drift {
    pub fn planned(&self) -> Planned {
        Planned {
            op_type: self.repair,
            pid: self.pid,
            // A leader that does not lead is repaired by fencing every replica and
            // promoting the most complete: no replica is named as failed.
            endpoint: if self.repair == CHANGE_LEADER && !self.replace_leader {
                String::new()
            } else {
                self.endpoint.clone()
            },
        }
    }
}

fn role_of(status: &TableStatus) -> String {
    match status.role() {
        TableRole::Leader => format!("leader in term {}", status.term),
        TableRole::Follower if status.leader.is_empty() => {
            format!("follower of nobody in term {}", status.term)
        }
        TableRole::Follower => format!("follower of {} in term {}", status.leader, status.term),
    }
}

/// How long a leader must have been without its read lease, as its tablet reports it,
/// before it counts as cut off from its followers. Busy tablets answer heartbeats late
/// and leases lapse for moments; two looks a second apart that both happened to find
/// one lapsed replaced hundreds of healthy leaders of a loaded 10,000-partition
/// cluster. A cut-off leader stays lapsed.
const LAPSED_BEFORE_REPLACING_MS: u64 = 2_000;

/// Every difference in one table. `reports` holds the tablets that answered; replicas on
/// other tablets are left to the planner (their tablet is down or unreachable).
pub fn drifts(table: &TableInfo, reports: &HashMap<String, TabletReport>) -> Vec<Drift> {
    table
        .partitions
        .iter()
        .flat_map(|p| partition_drifts(table.tid, p, reports))
        .collect()
}

fn partition_drifts(
    tid: u32,
    partition: &PartitionMeta,
    reports: &HashMap<String, TabletReport>,
) -> Vec<Drift> {
    let pid = partition.pid;
    // None: the tablet did not answer. Some(None): it answered without this replica.
    let observe = |replica: &ReplicaMeta| {
        reports
            .get(&replica.endpoint)
            .map(|report| report.get(&(tid, pid)))
    };
    let drift = |replica: &ReplicaMeta, what: String, repair| Drift {
        pid,
        endpoint: replica.endpoint.clone(),
        what,
        repair,
        replace_leader: false,
    };
    let Some(leader) = partition
        .replicas
        .iter()
        .find(|r| r.is_leader && r.is_alive)
    else {
        // No leader in the metadata: the planner's ChangeLeader is the repair.
        return Vec::new();
    };
    // The metadata is behind the tablets: some replica took a later term (a ChangeLeader
    // fenced it and then failed). Only a new ChangeLeader settles who leads.
    // The named leader is reported first.
    if let Some((replica, status)) = std::iter::once(leader)
        .chain(partition.replicas.iter())
        .filter_map(|r| Some((r, observe(r)??)))
        .find(|(_, s)| s.term > partition.term)
    {
        let what = if replica.is_leader {
            format!(
                "should lead in term {} but is {}",
                partition.term,
                role_of(status)
            )
        } else {
            format!(
                "is {}, ahead of the metadata's term {}",
                role_of(status),
                partition.term
            )
        };
        return vec![drift(replica, what, CHANGE_LEADER)];
    }
    let leader_status = match observe(leader) {
        None => return Vec::new(),
        Some(None) => {
            return vec![drift(
                leader,
                "should lead but its tablet has no such replica".into(),
                CHANGE_LEADER,
            )]
        }
        Some(Some(status)) => status,
    };
    if leader_status.role() != TableRole::Leader || leader_status.term != partition.term {
        return vec![drift(
            leader,
            format!(
                "should lead in term {} but is {}",
                partition.term,
                role_of(leader_status)
            ),
            CHANGE_LEADER,
        )];
    }
    if leader_status.fenced {
        // Its tablet lost its ZooKeeper lease and came back in a new session without the
        // registry noticing (ZooKeeper itself was down, say): it waits to be told its
        // role, and nobody else will tell it.
        return vec![drift(
            leader,
            format!(
                "leads in term {} but stopped serving when its tablet lost its ZooKeeper lease",
                partition.term
            ),
            CHANGE_LEADER,
        )];
    }
    // A lapse of 0 ms is an older tablet that does not say how long: two looks in a
    // row, as before.
    let lapsed_long = leader_status.lease_lapsed_ms == 0
        || leader_status.lease_lapsed_ms >= LAPSED_BEFORE_REPLACING_MS;
    if leader_status.lease_lapsed && lapsed_long {
        // No majority answers the leader, yet enough of its followers' tablets answer us
        // to make a majority without it: it is cut off from them. It serves nothing, and
        // a ChangeLeader among the others brings the partition back. (With its
        // followers down, no new leader could be chosen: nothing to repair.)
        // The others must be enough to elect one of them without it: all but a minority
        // of the replicas (the failover rule's count, the leader left out).
        let answering = partition
            .replicas
            .iter()
            .filter(|r| !r.is_leader && matches!(observe(r), Some(Some(_))))
            .count();
        let replicas = partition.replicas.len();
        if answering > replicas - (replicas / 2 + 1) {
            return vec![Drift {
                replace_leader: true,
                ..drift(
                    leader,
                    format!(
                        "leads in term {} but no majority of its replicas answers it",
                        partition.term
                    ),
                    CHANGE_LEADER,
                )
            }];
        }
    }
    let shipped = |e: &str| {
        leader_status.followers.iter().any(|f| f == e)
            && !leader_status.offline.iter().any(|f| f == e)
    };
    let mut out = Vec::new();
    for replica in partition.replicas.iter().filter(|r| !r.is_leader) {
        if replica.leaving {
            // The reconciler only acts on partitions without an op: a removal that ended
            // without finishing (the leader may have let it go). RecoverTable settles it.
            if observe(replica).is_some() {
                out.push(drift(
                    replica,
                    "is marked leaving but no removal is under way".into(),
                    RECOVER_TABLE,
                ));
            }
            continue;
        }
        if !replica.is_alive {
            // The leader should have stopped shipping to it. A replica whose tablet is up
            // again is the planner's (RecoverTable); one whose tablet did not answer is
            // offlined, which keeps its vote.
            if shipped(&replica.endpoint) && observe(replica).is_none() {
                out.push(drift(
                    replica,
                    "is marked dead but the leader still ships to it".into(),
                    OFFLINE_REPLICA,
                ));
            }
            continue;
        }
        let what = match observe(replica) {
            None => continue,
            Some(None) => "should follow but its tablet has no such replica".to_string(),
            Some(Some(status))
                if status.role() != TableRole::Follower
                    || status.leader != leader.endpoint
                    || status.term != partition.term =>
            {
                format!(
                    "should follow {} in term {} but is {}",
                    leader.endpoint,
                    partition.term,
                    role_of(status)
                )
            }
            Some(Some(_)) if !shipped(&replica.endpoint) => {
                "follows, but the leader does not ship to it".to_string()
            }
            Some(Some(_)) => continue,
        };
        out.push(drift(replica, what, RECOVER_TABLE));
    }
    out
}

/// Differences seen in two passes in a row: the ones to repair. A difference seen once
/// may be an op finishing between the metadata read and the tablet's answer.
#[derive(Debug, Default)]
pub struct Confirmations {
    seen: HashMap<(String, String, u32, String), u32>,
}

impl Confirmations {
    /// Takes one pass's differences (keyed by table) and returns the confirmed ones.
    pub fn confirm(
        &mut self,
        pass: Vec<((String, String), Drift)>,
    ) -> Vec<((String, String), Drift)> {
        let mut next = HashMap::new();
        let mut confirmed = Vec::new();
        for (table, drift) in pass {
            let key = (
                table.0.clone(),
                table.1.clone(),
                drift.pid,
                drift.endpoint.clone(),
            );
            let count = self.seen.get(&key).copied().unwrap_or(0) + 1;
            next.insert(key, count);
            if count >= 2 {
                confirmed.push((table, drift));
            }
        }
        self.seen = next;
        confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_cluster_is_reconciled_less_often() {
        use std::time::Duration;
        assert_eq!(period(0), Duration::from_secs(1));
        assert_eq!(
            period(4_000),
            Duration::from_secs(1),
            "small clusters: every second"
        );
        assert_eq!(period(30_000), Duration::from_secs(6));
        assert_eq!(
            period(3_000_000),
            Duration::from_secs(60),
            "at most a minute"
        );
    }

    const TID: u32 = 7;

    fn table(replicas: &[(&str, bool, bool)], term: u64) -> TableInfo {
        let mut table = crate::planner::tests::table(replicas);
        table.partitions[0].term = term;
        assert_eq!(table.tid, TID);
        table
    }

    fn leader(term: u64, followers: &[&str], offline: &[&str]) -> TableStatus {
        TableStatus {
            tid: TID,
            role: TableRole::Leader as i32,
            term,
            followers: followers.iter().map(|s| s.to_string()).collect(),
            offline: offline.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn follower(term: u64, of: &str) -> TableStatus {
        TableStatus {
            tid: TID,
            role: TableRole::Follower as i32,
            term,
            leader: of.into(),
            ..Default::default()
        }
    }

    fn reports(list: Vec<(&str, Option<TableStatus>)>) -> HashMap<String, TabletReport> {
        list.into_iter()
            .map(|(endpoint, status)| {
                let report = status.map(|s| ((TID, 0), s)).into_iter().collect();
                (endpoint.to_string(), report)
            })
            .collect()
    }

    fn healthy() -> Vec<(&'static str, Option<TableStatus>)> {
        vec![
            ("a", Some(leader(3, &["b", "c"], &[]))),
            ("b", Some(follower(3, "a"))),
            ("c", Some(follower(3, "a"))),
        ]
    }

    fn repairs(found: &[Drift]) -> Vec<(&'static str, &str)> {
        found
            .iter()
            .map(|d| (d.repair, d.endpoint.as_str()))
            .collect()
    }

    const ABC: &[(&str, bool, bool)] = &[("a", true, true), ("b", false, true), ("c", false, true)];

    #[test]
    fn agreement_needs_nothing() {
        assert!(drifts(&table(ABC, 3), &reports(healthy())).is_empty());
    }

    #[test]
    fn a_fenced_leader_gets_change_leader() {
        let mut seen = healthy();
        seen[0].1 = Some(follower(3, ""));
        let found = drifts(&table(ABC, 3), &reports(seen));
        assert_eq!(repairs(&found), vec![(CHANGE_LEADER, "a")]);
        assert!(found[0].what.contains("follower of nobody"), "{found:?}");
        assert_eq!(found[0].planned().endpoint, "", "every replica is fenced");
    }

    /// Its tablet's lease lapsed and its session expired while the registry could not
    /// see it (ZooKeeper down): still a leader by role, serving nothing.
    #[test]
    fn a_leader_waiting_after_its_lease_gets_change_leader() {
        let mut seen = healthy();
        seen[0].1 = Some(TableStatus {
            fenced: true,
            ..leader(3, &["b", "c"], &[])
        });
        let found = drifts(&table(ABC, 3), &reports(seen));
        assert_eq!(repairs(&found), vec![(CHANGE_LEADER, "a")]);
        assert!(found[0].what.contains("lease"), "{found:?}");
    }

    /// Fast failover: a leader that no majority answers (cut off from its followers,
    /// which still answer the nameserver) serves nothing; it is replaced, named as the
    /// failed replica so it is not chosen again. With its followers down there is
    /// nobody to elect, and nothing is done.
    #[test]
    fn a_leader_no_majority_answers_is_replaced_while_its_followers_answer() {
        let mut seen = healthy();
        seen[0].1 = Some(TableStatus {
            lease_lapsed: true,
            lease_lapsed_ms: LAPSED_BEFORE_REPLACING_MS,
            ..leader(3, &["b", "c"], &[])
        });
        let found = drifts(&table(ABC, 3), &reports(seen.clone()));
        assert_eq!(repairs(&found), vec![(CHANGE_LEADER, "a")]);
        assert!(found[0].what.contains("no majority"), "{found:?}");
        assert_eq!(
            found[0].planned().endpoint,
            "a",
            "the leader is the failed one"
        );

        seen.truncate(2);
        assert!(
            drifts(&table(ABC, 3), &reports(seen)).is_empty(),
            "one follower alone cannot elect a leader"
        );
    }

    /// A busy tablet answers heartbeats late and its leaders' leases lapse for moments:
    /// that is not a leader cut off from its followers, however many looks find it.
    #[test]
    fn a_lease_lapsed_for_moments_is_left_alone() {
        let mut seen = healthy();
        seen[0].1 = Some(TableStatus {
            lease_lapsed: true,
            lease_lapsed_ms: LAPSED_BEFORE_REPLACING_MS - 1,
            ..leader(3, &["b", "c"], &[])
        });
        let mut confirmations = Confirmations::default();
        for _ in 0..3 {
            let pass = drifts(&table(ABC, 3), &reports(seen.clone()))
                .into_iter()
                .map(|d| (("default".to_string(), "t".to_string()), d))
                .collect();
            assert!(confirmations.confirm(pass).is_empty());
        }
    }

    /// An older tablet does not say how long its leader's lease has been lapsed: such a
    /// leader is replaced after two looks in a row, as before.
    #[test]
    fn a_lapse_of_unknown_length_is_replaced_as_before() {
        let mut seen = healthy();
        seen[0].1 = Some(TableStatus {
            lease_lapsed: true,
            lease_lapsed_ms: 0,
            ..leader(3, &["b", "c"], &[])
        });
        let found = drifts(&table(ABC, 3), &reports(seen));
        assert_eq!(repairs(&found), vec![(CHANGE_LEADER, "a")]);
    }

    /// A ChangeLeader fenced the replicas at term 4 and failed before promoting.
    #[test]
    fn a_later_term_on_any_replica_gets_change_leader() {
        let mut seen = healthy();
        seen[2].1 = Some(follower(4, ""));
        let found = drifts(&table(ABC, 3), &reports(seen));
        assert_eq!(repairs(&found), vec![(CHANGE_LEADER, "c")]);
    }

    #[test]
    fn a_leader_without_its_replica_gets_change_leader() {
        let mut seen = healthy();
        seen[0].1 = None;
        assert_eq!(
            repairs(&drifts(&table(ABC, 3), &reports(seen))),
            vec![(CHANGE_LEADER, "a")]
        );
    }

    /// A follower that restarted comes back following nobody.
    #[test]
    fn a_follower_astray_gets_recover_table() {
        let mut seen = healthy();
        seen[1].1 = Some(follower(3, ""));
        seen[2].1 = Some(leader(2, &[], &[]));
        assert_eq!(
            repairs(&drifts(&table(ABC, 3), &reports(seen))),
            vec![(RECOVER_TABLE, "b"), (RECOVER_TABLE, "c")]
        );
    }

    #[test]
    fn a_follower_not_shipped_to_gets_recover_table() {
        let mut seen = healthy();
        seen[0].1 = Some(leader(3, &["b", "c"], &["c"]));
        assert_eq!(
            repairs(&drifts(&table(ABC, 3), &reports(seen))),
            vec![(RECOVER_TABLE, "c")]
        );
    }

    #[test]
    fn a_dead_member_still_shipped_to_gets_offline_replica() {
        let t = table(
            &[("a", true, true), ("b", false, true), ("c", false, false)],
            3,
        );
        let seen = healthy().into_iter().filter(|(e, _)| *e != "c").collect();
        assert_eq!(
            repairs(&drifts(&t, &reports(seen))),
            vec![(OFFLINE_REPLICA, "c")]
        );
        // Its tablet answered: it is back, and the planner's RecoverTable is the repair.
        assert!(drifts(&t, &reports(healthy())).is_empty());
    }

    /// Replicas on tablets that did not answer are the planner's.
    #[test]
    fn unobserved_tablets_are_left_alone() {
        let seen = healthy().into_iter().filter(|(e, _)| *e != "a").collect();
        assert!(drifts(&table(ABC, 3), &reports(seen)).is_empty());
    }

    #[test]
    fn a_replica_left_leaving_gets_recover_table() {
        let mut t = table(ABC, 3);
        t.partitions[0].replicas[2].leaving = true;
        let mut seen = healthy();
        seen[0].1 = Some(leader(3, &["b"], &[]));
        assert_eq!(
            repairs(&drifts(&t, &reports(seen))),
            vec![(RECOVER_TABLE, "c")]
        );
    }

    #[test]
    fn a_partition_without_a_leader_is_the_planners() {
        let t = table(&[("a", true, false), ("b", false, true)], 3);
        assert!(drifts(&t, &reports(healthy())).is_empty());
    }

    #[test]
    fn only_differences_seen_twice_in_a_row_are_repaired() {
        let key = ("db".to_string(), "t".to_string());
        let d = Drift {
            pid: 0,
            endpoint: "a".into(),
            what: String::new(),
            repair: CHANGE_LEADER,
            replace_leader: false,
        };
        let mut confirmations = Confirmations::default();
        assert!(confirmations
            .confirm(vec![(key.clone(), d.clone())])
            .is_empty());
        assert_eq!(
            confirmations.confirm(vec![(key.clone(), d.clone())]).len(),
            1
        );
        // Gone for a pass: counting starts again.
        assert!(confirmations.confirm(vec![]).is_empty());
        assert!(confirmations.confirm(vec![(key, d)]).is_empty());
    }
}
