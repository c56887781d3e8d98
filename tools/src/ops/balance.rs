//! Moving replicas between tablets: `scaleout` spreads them onto new tablets until every
//! tablet holds about as many, `scalein` empties tablets before they are retired. Both
//! move followers through Migrate ops (add on the destination, catch up, remove from the
//! source); scalein first moves the leaders away.

use std::collections::BTreeMap;

use tessera_proto::nameserver::{ReplicaRequest, TableInfo};

use super::leaders;
use super::{Ops, OpsError, PartitionId, Result};

/// Move the replica of `partition` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMove {
    pub partition: PartitionId,
    pub from: String,
    pub to: String,
}

/// Replicas per tablet, counting every tablet in `tablets` (even empty ones).
fn replica_counts(tables: &[TableInfo], tablets: &[String]) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = tablets.iter().map(|t| (t.clone(), 0)).collect();
    for replica in tables
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| &p.replicas)
    {
        *counts.entry(replica.endpoint.clone()).or_default() += 1;
    }
    counts
}

/// Endpoints holding a replica of each partition.
fn holders(tables: &[TableInfo]) -> BTreeMap<PartitionId, Vec<(String, bool)>> {
    let mut out = BTreeMap::new();
    for table in tables {
        for partition in &table.partitions {
            out.insert(
                (table.db.clone(), table.name.clone(), partition.pid),
                partition
                    .replicas
                    .iter()
                    .map(|r| (r.endpoint.clone(), r.is_leader))
                    .collect(),
            );
        }
    }
    out
}

/// Moves every replica off `leaving` onto the least loaded of `tablets` (the healthy
/// ones) that does not hold the partition yet. Partitions that cannot move are returned
/// apart with the reason.
pub fn plan_scalein(
    tables: &[TableInfo],
    tablets: &[String],
    leaving: &[String],
) -> (Vec<ReplicaMove>, Vec<(PartitionId, String)>) {
    let destinations: Vec<String> = tablets
        .iter()
        .filter(|t| !leaving.contains(t))
        .cloned()
        .collect();
    let mut counts = replica_counts(tables, &destinations);
    let (mut moves, mut stuck) = (Vec::new(), Vec::new());
    for (id, replicas) in holders(tables) {
        for (endpoint, _) in replicas.iter().filter(|(e, _)| leaving.contains(e)) {
            let target = destinations
                .iter()
                .filter(|d| !replicas.iter().any(|(e, _)| e == *d))
                .min_by_key(|d| (counts[*d], (*d).clone()));
            match target {
                Some(target) => {
                    *counts.get_mut(target).expect("a destination") += 1;
                    moves.push(ReplicaMove {
                        partition: id.clone(),
                        from: endpoint.clone(),
                        to: target.clone(),
                    });
                }
                None => stuck.push((
                    id.clone(),
                    format!(
                        "every remaining healthy tablet already holds a replica; {endpoint} cannot be emptied (add a tablet first)"
                    ),
                )),
            }
        }
    }
    (moves, stuck)
}

/// Moves followers from the fullest tablets to the emptiest until the counts differ by at
/// most one (or no follower can move).
pub fn plan_scaleout(tables: &[TableInfo], tablets: &[String]) -> Vec<ReplicaMove> {
    let mut counts = replica_counts(tables, tablets);
    counts.retain(|endpoint, _| tablets.contains(endpoint));
    let mut placement = holders(tables);
    let mut moves = Vec::new();
    while let (Some((fullest, most)), Some((emptiest, least))) = (
        counts
            .iter()
            .max_by_key(|(e, c)| (**c, std::cmp::Reverse((*e).clone()))),
        counts.iter().min_by_key(|(e, c)| (**c, (*e).clone())),
    ) {
        if most - least <= 1 {
            break;
        }
        let (fullest, emptiest) = (fullest.clone(), emptiest.clone());
        // A follower on the fullest tablet of a partition the emptiest does not hold.
        let candidate = placement.iter_mut().find(|(_, replicas)| {
            replicas.iter().any(|(e, leader)| *e == fullest && !leader)
                && !replicas.iter().any(|(e, _)| *e == emptiest)
        });
        let Some((id, replicas)) = candidate else {
            break;
        };
        for replica in replicas.iter_mut().filter(|(e, _)| *e == fullest) {
            replica.0 = emptiest.clone();
        }
        *counts.get_mut(&fullest).expect("counted") -= 1;
        *counts.get_mut(&emptiest).expect("counted") += 1;
        moves.push(ReplicaMove {
            partition: id.clone(),
            from: fullest,
            to: emptiest,
        });
    }
    moves
}

/// Starts a Migrate op per move and waits; returns the moves that failed, with reasons.
async fn run_migrations(
    ops: &mut Ops,
    moves: &[ReplicaMove],
) -> Result<Vec<(PartitionId, String)>> {
    let requests = moves
        .iter()
        .map(|m| {
            let request = ReplicaRequest {
                db: m.partition.0.clone(),
                name: m.partition.1.clone(),
                pids: vec![m.partition.2],
                endpoint: m.to.clone(),
                source: m.from.clone(),
            };
            (m.partition.clone(), request)
        })
        .collect();
    ops.start_and_wait(requests, "replica moves", |mut c, r| async move {
        c.migrate(r).await
    })
    .await
}

fn print_moves(moves: &[ReplicaMove]) {
    for m in moves {
        println!(
            "  {}.{} pid {}: {} -> {}",
            m.partition.0, m.partition.1, m.partition.2, m.from, m.to
        );
    }
}

/// `scalein --endpoints=…`.
pub async fn scalein(ops: &mut Ops, leaving: &[String]) -> Result<bool> {
    let tablets = ops.healthy_tablets().await?;
    let tables = ops.tables().await?;
    let (_, stuck) = plan_scalein(&tables, &tablets, leaving);
    if !stuck.is_empty() {
        // Refuse before moving anything: half a scale-in helps nobody.
        let reasons: Vec<String> = stuck
            .iter()
            .map(|((db, name, pid), reason)| format!("{db}.{name} pid {pid}: {reason}"))
            .collect();
        return Err(OpsError::InvalidArgument(format!(
            "cannot scale in:\n  {}",
            reasons.join("\n  ")
        )));
    }
    if !leaders::move_off(ops, leaving).await? {
        return Ok(false);
    }
    let tables = ops.tables().await?;
    let (moves, _) = plan_scalein(&tables, &tablets, leaving);
    println!("moving {} replicas off {}", moves.len(), leaving.join(","));
    print_moves(&moves);
    let failed = run_migrations(ops, &moves).await?;
    let left: usize = ops
        .tables()
        .await?
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| &p.replicas)
        .filter(|r| leaving.contains(&r.endpoint))
        .count();
    for ((db, name, pid), reason) in &failed {
        println!("  {db}.{name} pid {pid}: {reason}");
    }
    if left == 0 {
        println!("{} hold no replica; they can be stopped", leaving.join(","));
    } else {
        println!("{left} replicas are still on {}", leaving.join(","));
    }
    Ok(left == 0 && failed.is_empty())
}

/// `scaleout`: spreads replicas over every healthy tablet.
pub async fn scaleout(ops: &mut Ops) -> Result<bool> {
    let tablets = ops.healthy_tablets().await?;
    let tables = ops.tables().await?;
    let moves = plan_scaleout(&tables, &tablets);
    if moves.is_empty() {
        println!("replicas are balanced over {} tablets", tablets.len());
        return Ok(true);
    }
    println!("moving {} replicas", moves.len());
    print_moves(&moves);
    let failed = run_migrations(ops, &moves).await?;
    let counts = replica_counts(&ops.tables().await?, &tablets);
    for (endpoint, count) in &counts {
        println!("  {endpoint}: {count} replicas");
    }
    for (id, reason) in &failed {
        println!("  {}.{} pid {}: {reason}", id.0, id.1, id.2);
    }
    Ok(failed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fixtures;

    /// The first replica of each partition leads.
    fn table(partitions: &[&[&str]]) -> TableInfo {
        let with_roles: Vec<Vec<(&str, bool)>> = partitions
            .iter()
            .map(|replicas| {
                replicas
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (*e, i == 0))
                    .collect()
            })
            .collect();
        let refs: Vec<&[(&str, bool)]> = with_roles.iter().map(Vec::as_slice).collect();
        fixtures::table(&refs)
    }

    fn endpoints(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scalein_empties_the_tablet_without_doubling_a_partition() {
        let t = table(&[&["a", "b", "c"], &["b", "c", "d"], &["d", "a", "b"]]);
        let (moves, stuck) = plan_scalein(
            std::slice::from_ref(&t),
            &endpoints(&["a", "b", "c", "d"]),
            &endpoints(&["a"]),
        );
        assert!(stuck.is_empty());
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[0].to, "d", "partition 0 holds a, b, c");
        assert_eq!(moves[1].to, "c", "partition 2 holds d, a, b");
        let (_, stuck) = plan_scalein(&[t], &endpoints(&["a", "b", "c"]), &endpoints(&["a"]));
        assert_eq!(stuck.len(), 1, "partition 0 has nowhere to go");
    }

    #[test]
    fn scaleout_fills_a_new_tablet_up_to_balance() {
        let t = table(&[
            &["a", "b", "c"],
            &["b", "c", "a"],
            &["c", "a", "b"],
            &["a", "b", "c"],
        ]);
        let moves = plan_scaleout(std::slice::from_ref(&t), &endpoints(&["a", "b", "c", "d"]));
        // 12 replicas over 4 tablets: 3 each, so 3 move to d, one from each.
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves.iter().all(|m| m.to == "d"));
        let mut from: Vec<&str> = moves.iter().map(|m| m.from.as_str()).collect();
        from.sort();
        assert_eq!(from, ["a", "b", "c"]);
        assert!(plan_scaleout(&[t], &endpoints(&["a", "b", "c"])).is_empty());
    }
}
