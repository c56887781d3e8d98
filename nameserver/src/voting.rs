//! The failover rule: which answers to a fence are enough to be sure the chosen replica
//! holds every acknowledged write.
//!
//! A quorum leader acknowledges a write once a majority of its voting set holds it. The
//! metadata does not know that set exactly while it changes, but it bounds it: the
//! replicas it lists, of which the *settled* ones (neither `joining` nor `leaving`)
//! certainly vote and the others may or may not. So the voting set of any acknowledged
//! write that matters is one of the *possible voting sets*: the settled replicas plus any
//! subset of the transitional ones. Answers that meet every majority of every possible
//! set include a replica holding every acknowledged write, and the most complete answer
//! by (last term, last offset) holds them all. See "The failover rule" in
//! docs/ARCHITECTURE.md for the argument and how the ops keep the bound.

use std::collections::BTreeSet;

use tessera_proto::nameserver::{PartitionMeta, ReplicaMeta};

/// More transitional replicas than this are not expanded into possible sets (there are
/// never more than a few: ops on a partition run one at a time); a partition with more
/// is refused a leader without `force`.
const MAX_TRANSITIONAL: usize = 8;

/// The smallest number of a set's members that meets every majority of it.
pub fn needed_to_meet_every_majority(members: usize) -> usize {
    if members == 0 {
        return 0;
    }
    let majority = members / 2 + 1;
    members + 1 - majority
}

fn settled(replica: &ReplicaMeta) -> bool {
    !replica.joining && !replica.leaving
}

/// Every set of replicas that may be the leader's voting set, given what the metadata
/// records; `None` if there are too many transitional replicas to tell.
pub fn possible_voting_sets(replicas: &[ReplicaMeta]) -> Option<Vec<BTreeSet<String>>> {
    let base: BTreeSet<String> = replicas
        .iter()
        .filter(|r| settled(r))
        .map(|r| r.endpoint.clone())
        .collect();
    let transitional: Vec<&str> = replicas
        .iter()
        .filter(|r| !settled(r))
        .map(|r| r.endpoint.as_str())
        .collect();
    if transitional.len() > MAX_TRANSITIONAL {
        return None;
    }
    Some(
        (0..1usize << transitional.len())
            .map(|mask| {
                let mut set = base.clone();
                for (i, endpoint) in transitional.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        set.insert(endpoint.to_string());
                    }
                }
                set
            })
            .collect(),
    )
}

/// Whether the replicas that answered the fence meet every majority of every possible
/// voting set; if not, why not. `replica_num` only makes the rule stricter: the set of
/// every listed replica counts as at least `replica_num` strong, so a partition listing
/// fewer replicas than it should still needs as many answers as a full one.
pub fn answers_suffice(
    partition: &PartitionMeta,
    replica_num: u32,
    answered: &[String],
) -> Result<(), String> {
    let listed = partition.replicas.len();
    let sets = possible_voting_sets(&partition.replicas).ok_or_else(|| {
        format!("more than {MAX_TRANSITIONAL} replicas are joining or leaving; force to promote")
    })?;
    for set in &sets {
        let heard = answered.iter().filter(|e| set.contains(*e)).count();
        let size = if set.len() == listed {
            listed.max(replica_num as usize)
        } else {
            set.len()
        };
        let needed = needed_to_meet_every_majority(size);
        if heard < needed {
            let members: Vec<&str> = set.iter().map(String::as_str).collect();
            return Err(format!(
                "only {heard} of the {size} replicas that may vote ({}) answered; {needed} \
                 are needed to be sure no acknowledged write is lost (force to promote \
                 anyway, losing data)",
                members.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether `holders` (replicas known to hold some offset, the leader among them) make a
/// majority of every possible voting set of `replicas`.
pub fn majority_of_every_set_holds(replicas: &[ReplicaMeta], holders: &[&str]) -> bool {
    possible_voting_sets(replicas).is_some_and(|sets| {
        sets.iter().all(|set| {
            let held = set.iter().filter(|e| holders.contains(&e.as_str())).count();
            held > set.len() / 2
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(endpoint, state)`: `s` settled, `j` joining, `l` leaving.
    fn partition(replicas: &[(&str, char)]) -> PartitionMeta {
        PartitionMeta {
            replicas: replicas
                .iter()
                .map(|&(endpoint, state)| ReplicaMeta {
                    endpoint: endpoint.into(),
                    is_leader: endpoint == "a",
                    is_alive: true,
                    joining: state == 'j',
                    leaving: state == 'l',
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

    #[test]
    fn possible_sets_expand_the_transitional_replicas() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 'j'), ("d", 'l')]);
        let sets = possible_voting_sets(&p.replicas).unwrap();
        assert_eq!(sets.len(), 4);
        assert!(sets.iter().all(|s| s.contains("a") && s.contains("b")));
    }

    /// The replication-safety scenario: both followers of a three-replica partition are
    /// offlined (they keep their vote, so the leader can no longer acknowledge alone),
    /// then the leader is lost. The two followers together may lead; one alone may not.
    #[test]
    fn both_followers_offlined_then_the_leader_lost() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 's')]);
        assert!(answers_suffice(&p, 3, &names(&["b", "c"])).is_ok());
        let refused = answers_suffice(&p, 3, &names(&["b"])).unwrap_err();
        assert!(refused.contains("only 1 of the 3"), "{refused}");
    }

    /// A replica being added votes on new writes but may lack old ones: the answers must
    /// also meet every majority of the three that acknowledged those.
    #[test]
    fn a_joining_replica_does_not_stand_in_for_an_old_member() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 's'), ("d", 'j')]);
        // Two of four meet every majority of the four, but {c, d} misses {a, b}, a
        // majority of the three that acknowledged the older writes.
        assert!(answers_suffice(&p, 3, &names(&["c", "d"])).is_err());
        assert!(answers_suffice(&p, 3, &names(&["b", "c"])).is_ok());
    }

    /// A replica being removed: the leader may already count only three of the four, and
    /// a write on {a, b} is a majority of those; {c, d} meets every majority of the four
    /// but not that one.
    #[test]
    fn a_leaving_replica_does_not_stand_in_for_the_others() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 's'), ("d", 'l')]);
        assert!(answers_suffice(&p, 3, &names(&["c", "d"])).is_err());
        assert!(answers_suffice(&p, 3, &names(&["b", "c"])).is_ok());
    }

    /// Two settled and two joining (an AddReplica failed half way, then another one
    /// began): a write on {a, c} was a majority of {a, b, c}; {b, d} meets every majority
    /// of the four and of {a, b}, but not of {a, b, c}.
    #[test]
    fn every_possible_set_is_counted() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 'j'), ("d", 'j')]);
        assert!(answers_suffice(&p, 2, &names(&["b", "d"])).is_err());
        assert!(answers_suffice(&p, 2, &names(&["b", "c", "d"])).is_ok());
    }

    /// Answers from replicas the metadata does not list count for nothing.
    #[test]
    fn strangers_do_not_count() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 's')]);
        assert!(answers_suffice(&p, 3, &names(&["b", "x"])).is_err());
    }

    /// A partition listing fewer replicas than replicanum (one moved away) needs as many
    /// answers as a full one.
    #[test]
    fn replicanum_is_a_floor() {
        let p = partition(&[("a", 's'), ("b", 's')]);
        assert!(answers_suffice(&p, 2, &names(&["b"])).is_ok());
        assert!(answers_suffice(&p, 3, &names(&["b"])).is_err());
    }

    #[test]
    fn holders_must_be_a_majority_of_every_possible_set() {
        let p = partition(&[("a", 's'), ("b", 's'), ("c", 's'), ("d", 'j')]);
        assert!(!majority_of_every_set_holds(&p.replicas, &["a", "b"]));
        assert!(majority_of_every_set_holds(&p.replicas, &["a", "b", "c"]));
        assert!(majority_of_every_set_holds(&p.replicas, &["a", "b", "d"]));
        let three = partition(&[("a", 's'), ("b", 's'), ("c", 's')]);
        assert!(majority_of_every_set_holds(&three.replicas, &["a", "c"]));
    }
}
