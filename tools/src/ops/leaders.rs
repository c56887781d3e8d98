//! Moving leaders: `changeleader --from/--to`, and `pre-upgrade` / `post-upgrade`, which
//! move a tablet's leaders away before it is upgraded and back afterwards. pre-upgrade
//! records what the tablet led under `<root>/ops/upgrade/<endpoint>` in ZooKeeper, so
//! post-upgrade can run from any machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tessera_common::zk_auth;
use tessera_proto::nameserver::{ChangeLeaderRequest, OpInfo, RecoverTableRequest, TableInfo};
use zookeeper_client::CreateMode;

use super::{op_label, Ops, OpsError, PartitionId, Result};

/// One leadership move: make `to` lead the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderMove {
    pub partition: PartitionId,
    pub to: String,
}

/// The number of partitions each endpoint leads.
fn leader_counts(tables: &[TableInfo]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for replica in tables
        .iter()
        .flat_map(|t| &t.partitions)
        .flat_map(|p| &p.replicas)
    {
        let count = counts.entry(replica.endpoint.clone()).or_insert(0);
        if replica.is_leader && replica.is_alive {
            *count += 1;
        }
    }
    counts
}

/// Moves for every partition led from one of `from`: to an alive follower elsewhere,
/// the one leading the fewest partitions so far. Partitions with no such follower are
/// returned apart, with the reason.
pub fn plan_moves_off(
    tables: &[TableInfo],
    from: &[String],
) -> (Vec<LeaderMove>, Vec<(PartitionId, String)>) {
    let mut counts = leader_counts(tables);
    let (mut moves, mut stuck) = (Vec::new(), Vec::new());
    for table in tables {
        for partition in &table.partitions {
            let Some(leader) = partition
                .replicas
                .iter()
                .find(|r| r.is_leader && from.contains(&r.endpoint))
            else {
                continue;
            };
            let id = (table.db.clone(), table.name.clone(), partition.pid);
            let target = partition
                .replicas
                .iter()
                .filter(|r| r.is_alive && !r.is_leader && !from.contains(&r.endpoint))
                .min_by_key(|r| {
                    (
                        counts.get(&r.endpoint).copied().unwrap_or(0),
                        r.endpoint.clone(),
                    )
                });
            match target {
                Some(target) => {
                    *counts.entry(target.endpoint.clone()).or_default() += 1;
                    *counts.entry(leader.endpoint.clone()).or_default() -= 1;
                    moves.push(LeaderMove {
                        partition: id,
                        to: target.endpoint.clone(),
                    });
                }
                None => stuck.push((
                    id,
                    format!("no alive follower outside {} to lead it", from.join(",")),
                )),
            }
        }
    }
    (moves, stuck)
}

/// Moves for every partition (of `only`, if given) where `to` holds an alive follower.
pub fn plan_moves_onto(
    tables: &[TableInfo],
    to: &str,
    only: Option<&[PartitionId]>,
) -> Vec<LeaderMove> {
    let mut moves = Vec::new();
    for table in tables {
        for partition in &table.partitions {
            let id = (table.db.clone(), table.name.clone(), partition.pid);
            if only.is_some_and(|only| !only.contains(&id)) {
                continue;
            }
            if partition
                .replicas
                .iter()
                .any(|r| r.endpoint == to && r.is_alive && !r.is_leader)
            {
                moves.push(LeaderMove {
                    partition: id,
                    to: to.to_string(),
                });
            }
        }
    }
    moves
}

/// The alive leader of a partition, from fresh metadata.
fn leader_of(tables: &[TableInfo], id: &PartitionId) -> Option<String> {
    tables
        .iter()
        .find(|t| t.db == id.0 && t.name == id.1)
        .and_then(|t| t.partitions.iter().find(|p| p.pid == id.2))
        .and_then(|p| p.replicas.iter().find(|r| r.is_leader && r.is_alive))
        .map(|r| r.endpoint.clone())
}

/// Runs the moves through ChangeLeader ops. A candidate that is behind the leader at the
/// fence does not take over (the nameserver keeps the most complete replica); such moves
/// are tried again a few times, since the candidate catches up meanwhile. Returns the
/// moves that did not happen, with the reason.
pub async fn run_moves(
    ops: &mut Ops,
    moves: Vec<LeaderMove>,
) -> Result<Vec<(PartitionId, String)>> {
    const ROUNDS: usize = 5;
    let mut pending = moves;
    let mut failed = Vec::new();
    for round in 1..=ROUNDS {
        if pending.is_empty() {
            break;
        }
        println!("moving {} leaders (round {round})", pending.len());
        let requests = pending
            .iter()
            .map(|m| {
                let request = ChangeLeaderRequest {
                    db: m.partition.0.clone(),
                    name: m.partition.1.clone(),
                    pid: m.partition.2,
                    candidate: m.to.clone(),
                    force: false,
                };
                (m.partition.clone(), request)
            })
            .collect();
        failed.extend(
            ops.start_and_wait(requests, "leaders", |mut c, r| async move {
                c.change_leader(r).await
            })
            .await?,
        );
        let tables = ops.tables().await?;
        pending.retain(|m| {
            !failed.iter().any(|(id, _)| *id == m.partition)
                && leader_of(&tables, &m.partition).as_deref() != Some(m.to.as_str())
        });
        if !pending.is_empty() && round < ROUNDS {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    failed.extend(pending.into_iter().map(|m| {
        let reason = format!("{} was still behind after {ROUNDS} attempts", m.to);
        (m.partition, reason)
    }));
    Ok(failed)
}

fn print_failures(failed: &[(PartitionId, String)]) {
    for ((db, name, pid), reason) in failed {
        println!("  {db}.{name} pid {pid}: {reason}");
    }
}

/// `changeleader --from=…`: moves every leader off these endpoints.
pub async fn move_off(ops: &mut Ops, endpoints: &[String]) -> Result<bool> {
    let tables = ops.tables().await?;
    let (moves, stuck) = plan_moves_off(&tables, endpoints);
    println!(
        "{} partitions led from {}; {} can move",
        moves.len() + stuck.len(),
        endpoints.join(","),
        moves.len()
    );
    let mut failed = run_moves(ops, moves).await?;
    failed.extend(stuck);
    if failed.is_empty() {
        println!("no leader left on {}", endpoints.join(","));
    } else {
        println!("{} partitions keep their leader:", failed.len());
        print_failures(&failed);
    }
    Ok(failed.is_empty())
}

/// `changeleader --to=…`: makes the endpoint lead every partition (of `only`) where it
/// holds an alive follower.
pub async fn move_onto(
    ops: &mut Ops,
    endpoint: &str,
    only: Option<&[PartitionId]>,
) -> Result<bool> {
    let tables = ops.tables().await?;
    let moves = plan_moves_onto(&tables, endpoint, only);
    println!("{} partitions to be led by {endpoint}", moves.len());
    let failed = run_moves(ops, moves).await?;
    if !failed.is_empty() {
        println!("{} partitions did not move:", failed.len());
        print_failures(&failed);
    }
    Ok(failed.is_empty())
}

async fn zk(ops: &Ops) -> Result<zookeeper_client::Client> {
    zk_auth::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&ops.zk_cluster)
        .await
        .map_err(OpsError::from)
}

fn upgrade_dir(ops: &Ops) -> String {
    format!("{}/ops/upgrade", ops.zk_root_path)
}

/// `pre-upgrade --endpoints=…`: records what each endpoint leads, then moves it away.
pub async fn pre_upgrade(ops: &mut Ops, endpoints: &[String]) -> Result<bool> {
    let tables = ops.tables().await?;
    let zk = zk(ops).await?;
    let dir = upgrade_dir(ops);
    let mode = CreateMode::Persistent.with_acls(zk_auth::acls());
    let mut path = String::new();
    for part in dir.trim_start_matches('/').split('/') {
        path = format!("{path}/{part}");
        match zk.create(&path, &[], &mode).await {
            Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for endpoint in endpoints {
        let led: Vec<String> = tables
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| {
                        p.replicas
                            .iter()
                            .any(|r| r.is_leader && r.endpoint == *endpoint)
                    })
                    .map(move |p| format!("{}\t{}\t{}", t.db, t.name, p.pid))
            })
            .collect();
        let node = format!("{dir}/{endpoint}");
        let data = led.join("\n");
        match zk.create(&node, data.as_bytes(), &mode).await {
            Ok(_) => {}
            // A second pre-upgrade before post-upgrade: keep the first record, which
            // lists what the tablet led before any of them.
            Err(zookeeper_client::Error::NodeExists) => {
                println!("{endpoint}: a pre-upgrade record exists already; keeping it")
            }
            Err(e) => return Err(e.into()),
        }
        println!("{endpoint} leads {} partitions", led.len());
    }
    let done = move_off(ops, endpoints).await?;
    println!(
        "upgrade and restart {}, then run post-upgrade",
        endpoints.join(",")
    );
    Ok(done)
}

/// `post-upgrade [--endpoints=…]`: waits for each upgraded tablet, brings its replicas
/// back, and gives it back the leaders it had. Without endpoints: every recorded one.
pub async fn post_upgrade(ops: &mut Ops, endpoints: &[String]) -> Result<bool> {
    let zk = zk(ops).await?;
    let dir = upgrade_dir(ops);
    let endpoints = if endpoints.is_empty() {
        match zk.list_children(&dir).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    } else {
        endpoints.to_vec()
    };
    if endpoints.is_empty() {
        println!("no pre-upgrade record: nothing to do");
        return Ok(true);
    }
    let mut all_done = true;
    for endpoint in endpoints {
        let node = format!("{dir}/{endpoint}");
        let led: Vec<PartitionId> = match zk.get_data(&node).await {
            Ok((data, _)) => String::from_utf8_lossy(&data)
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split('\t');
                    Some((
                        fields.next()?.to_string(),
                        fields.next()?.to_string(),
                        fields.next()?.parse().ok()?,
                    ))
                })
                .collect(),
            Err(zookeeper_client::Error::NoNode) => {
                return Err(OpsError::InvalidArgument(format!(
                    "no pre-upgrade record for {endpoint}"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        wait_healthy(ops, &endpoint).await?;
        all_done &= recover_replicas_on(ops, &endpoint).await?;
        all_done &= move_onto(ops, &endpoint, Some(&led)).await?;
        zk.delete(&node, None).await?;
        println!("{endpoint}: upgrade finished");
    }
    Ok(all_done)
}

async fn wait_healthy(ops: &mut Ops, endpoint: &str) -> Result<()> {
    let deadline = Instant::now() + ops.timeout;
    let mut said = false;
    while !ops.healthy_tablets().await?.iter().any(|e| e == endpoint) {
        if Instant::now() >= deadline {
            return Err(OpsError::Timeout {
                what: format!("{endpoint} to register"),
                after: ops.timeout,
            });
        }
        if !said {
            println!("waiting for {endpoint} to come back");
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// RecoverTable for every replica on the endpoint the metadata marks dead.
async fn recover_replicas_on(ops: &mut Ops, endpoint: &str) -> Result<bool> {
    let tables = ops.tables().await?;
    let mut started = Vec::new();
    for table in &tables {
        for partition in &table.partitions {
            if partition
                .replicas
                .iter()
                .any(|r| r.endpoint == endpoint && !r.is_alive)
            {
                let request = RecoverTableRequest {
                    db: table.db.clone(),
                    name: table.name.clone(),
                    pid: partition.pid,
                    endpoint: endpoint.to_string(),
                };
                started.extend(
                    ops.start(|mut c| {
                        let r = request.clone();
                        async move { c.recover_table(r).await }
                    })
                    .await?,
                );
            }
        }
    }
    let ended = ops
        .wait_ops(&started, &format!("replicas on {endpoint}"))
        .await?;
    let failed: Vec<&OpInfo> = ended.iter().filter(|op| op.status != "kDone").collect();
    for op in &failed {
        println!("  {}: {} {}", op_label(op), op.status, op.reason);
    }
    Ok(failed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fixtures::table;

    #[test]
    fn leaders_leave_evenly() {
        let t = table(&[
            &[("a", true), ("b", false), ("c", false)],
            &[("a", true), ("b", false), ("c", false)],
            &[("b", true), ("a", false), ("c", false)],
        ]);
        let (moves, stuck) = plan_moves_off(&[t], &["a".to_string()]);
        assert!(stuck.is_empty());
        let targets: Vec<&str> = moves.iter().map(|m| m.to.as_str()).collect();
        // c leads nothing yet; then b and c lead one each and the tie goes by name.
        assert_eq!(targets, ["c", "b"]);
    }

    #[test]
    fn a_partition_without_another_alive_follower_is_stuck() {
        let mut t = table(&[&[("a", true), ("b", false)]]);
        t.partitions[0].replicas[1].is_alive = false;
        let (moves, stuck) = plan_moves_off(&[t], &["a".to_string()]);
        assert!(moves.is_empty());
        assert_eq!(stuck.len(), 1);
    }

    #[test]
    fn moves_onto_only_where_the_endpoint_follows() {
        let t = table(&[
            &[("a", true), ("b", false)],
            &[("b", true), ("a", false)],
            &[("c", true), ("b", false)],
        ]);
        let all = plan_moves_onto(std::slice::from_ref(&t), "a", None);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].partition.2, 1);
        let only = [("default".to_string(), "t".to_string(), 2)];
        let some = plan_moves_onto(&[t], "b", Some(&only));
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].partition.2, 2);
    }
}
