//! The failover rule: which answers to a fence are enough to be sure the chosen replica
//! holds every acknowledged write.
//!
//! A quorum leader acknowledges a write once a majority of its voting set holds it.
//! The metadata lists every replica that may be in that set (a replica is added to the
//! metadata before the leader counts it, and leaves the metadata only after the leader
//! stopped counting it and the remaining members hold everything committed). Replicas
//! marked `joining` may vote on new writes but may lack older acknowledged ones. So an
//! acknowledged write lies on a majority of the listed replicas, or (if it predates the
//! joining ones) on a majority of the listed replicas that are not joining. Answers that
//! meet every majority of both sets meet every replica set that can hold the write; the
//! most complete answer by (last term, last offset) then holds it. See "The failover
//! rule" in docs/ARCHITECTURE.md for the argument.

use std::collections::BTreeSet;

use tessera_proto::nameserver::PartitionMeta;

/// The smallest number of a set's members that meets every majority of it.
pub fn needed_to_meet_every_majority(members: usize) -> usize {
    if members == 0 {
        return 0;
    }
    let majority = members / 2 + 1;
    members + 1 - majority
}

/// The voting sets a failover must reckon with: every listed replica, and the listed
/// replicas that are not joining (the set older writes were acknowledged by).
pub fn voting_sets(partition: &PartitionMeta) -> (BTreeSet<String>, BTreeSet<String>) {
    let all = partition
        .replicas
        .iter()
        .map(|r| r.endpoint.clone())
        .collect();
    let settled = partition
        .replicas
        .iter()
        .filter(|r| !r.joining)
        .map(|r| r.endpoint.clone())
        .collect();
    (all, settled)
}

/// Whether the replicas that answered the fence meet every majority of every voting
/// set; if not, why not. `replica_num` only makes the rule stricter: a partition listing
/// fewer replicas than it should (one being moved) still needs as many answers as if
/// all were there.
pub fn answers_suffice(
    partition: &PartitionMeta,
    replica_num: u32,
    answered: &[String],
) -> Result<(), String> {
    let (all, settled) = voting_sets(partition);
    let checks = [
        (&all, all.len().max(replica_num as usize), "listed"),
        (&settled, settled.len(), "settled"),
    ];
    for (set, size, what) in checks {
        let heard = answered.iter().filter(|e| set.contains(*e)).count();
        let needed = needed_to_meet_every_majority(size);
        if heard < needed {
            return Err(format!(
                "only {heard} of the {size} {what} replicas answered; {needed} are needed to \
                 be sure no acknowledged write is lost (force to promote anyway, losing data)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tessera_proto::nameserver::ReplicaMeta;

    use super::*;

    fn partition(replicas: &[(&str, bool)]) -> PartitionMeta {
        PartitionMeta {
            replicas: replicas
                .iter()
                .map(|&(endpoint, joining)| ReplicaMeta {
                    endpoint: endpoint.into(),
                    is_leader: endpoint == "a",
                    is_alive: true,
                    joining,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn majorities() {
        assert_eq!(needed_to_meet_every_majority(0), 0);
        assert_eq!(needed_to_meet_every_majority(1), 1);
        assert_eq!(needed_to_meet_every_majority(2), 1);
        assert_eq!(needed_to_meet_every_majority(3), 2);
        assert_eq!(needed_to_meet_every_majority(4), 2);
        assert_eq!(needed_to_meet_every_majority(5), 3);
    }

    /// The replication-safety scenario: both followers of a three-replica partition are
    /// offlined (they keep their vote, so the leader can no longer acknowledge alone),
    /// then the leader is lost. The two followers together may lead; one alone may not.
    #[test]
    fn both_followers_offlined_then_the_leader_lost() {
        let p = partition(&[("a", false), ("b", false), ("c", false)]);
        assert!(answers_suffice(&p, 3, &names(&["b", "c"])).is_ok());
        let refused = answers_suffice(&p, 3, &names(&["b"])).unwrap_err();
        assert!(refused.contains("only 1 of the 3 listed"), "{refused}");
    }

    /// A replica being added votes on new writes but may lack old ones: the answers must
    /// also meet every majority of the three that acknowledged those.
    #[test]
    fn a_joining_replica_does_not_stand_in_for_an_old_member() {
        let p = partition(&[("a", false), ("b", false), ("c", false), ("d", true)]);
        // Two of four meet every majority of the four, but {c, d} misses {a, b}, a
        // majority of the three that acknowledged the older writes.
        let refused = answers_suffice(&p, 3, &names(&["c", "d"])).unwrap_err();
        assert!(refused.contains("settled"), "{refused}");
        assert!(answers_suffice(&p, 3, &names(&["b", "c"])).is_ok());
    }

    /// Answers from replicas the metadata does not list count for nothing.
    #[test]
    fn strangers_do_not_count() {
        let p = partition(&[("a", false), ("b", false), ("c", false)]);
        assert!(answers_suffice(&p, 3, &names(&["b", "x"])).is_err());
    }

    /// A partition listing fewer replicas than replicanum (one moved away) needs as many
    /// answers as a full one.
    #[test]
    fn replicanum_is_a_floor() {
        let p = partition(&[("a", false), ("b", false)]);
        assert!(answers_suffice(&p, 2, &names(&["b"])).is_ok());
        assert!(answers_suffice(&p, 3, &names(&["b"])).is_err());
    }

    /// Five listed, two of them joining: three of five and two of the three settled.
    #[test]
    fn both_sets_must_be_met() {
        let p = partition(&[
            ("a", false),
            ("b", false),
            ("c", false),
            ("d", true),
            ("e", true),
        ]);
        assert!(answers_suffice(&p, 3, &names(&["c", "d", "e"])).is_err());
        assert!(answers_suffice(&p, 3, &names(&["b", "c"])).is_err());
        assert!(answers_suffice(&p, 3, &names(&["b", "c", "d"])).is_ok());
    }
}
