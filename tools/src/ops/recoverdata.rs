//! `recoverdata`: brings every table back after the whole cluster went down together.
//!
//! For every partition each replica's tablet is asked for its last (term, offset) — from
//! memory if the replica is loaded, from its manifest and binlog if not; every tablet at
//! once, each over one connection (`survey`). The replica with
//! the largest pair becomes leader (through a ChangeLeader op naming it, so the
//! nameserver fences the others and checks that enough of them answered). A replica
//! whose last record is the leader's (same term and offset) holds the leader's very log:
//! a term has one leader, which numbers its records once. It is loaded and follows the
//! new leader at once, through the ChangeLeader. The others rejoin through RecoverTable
//! ops, which cut divergent records or send a snapshot.
//! A partition whose leader is already the most advanced replica and whose followers
//! follow it is left alone, so a second run changes nothing.

use std::collections::{BTreeMap, HashMap};

use comfy_table::{presets, Table};
use tessera_proto::nameserver::{
    ChangeLeaderRequest, OpInfo, PartitionMeta, RecoverTableRequest, TableInfo,
    UpdateTableAliveRequest,
};
use tessera_proto::tablet::{
    GetTermPairRequest, LoadTableRequest, ReplicationMode, TableRole, TableState,
};

use tessera_ns_client::nameserver::NameserverConnection;

use super::survey::Survey;
use super::{op_label, side_by_side, start_with, tablet, NsClient, Ops, OpsError, Result};

/// Partitions whose ops recoverdata starts side by side.
const CALLS_AT_ONCE: usize = 64;

/// What one replica's tablet said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSurvey {
    pub endpoint: String,
    pub is_leader: bool,
    pub is_alive: bool,
    /// Neither joining nor leaving in the metadata: a voting member as any other.
    pub settled: bool,
    /// (last term, last offset, loaded), or why it is unknown.
    pub log: std::result::Result<(u64, u64, bool), String>,
    /// Role, state and followers of a loaded replica.
    pub role: Option<TableRole>,
    pub state: Option<TableState>,
    pub followers: Vec<String>,
    pub leader: String,
}

impl ReplicaSurvey {
    fn pair(&self) -> Option<(u64, u64)> {
        self.log.as_ref().ok().map(|(t, o, _)| (*t, *o))
    }

    fn loaded_normal(&self) -> bool {
        self.state == Some(TableState::Normal) && self.log.as_ref().is_ok_and(|l| l.2)
    }

    /// Can follow a leader whose last record is this replica's, from its ChangeLeader
    /// on: a settled member, loaded and taking writes or not loaded yet. One that is
    /// joining or leaving, or whose load or writes failed, rejoins through RecoverTable,
    /// which settles it or reports why it cannot.
    fn can_follow_as_is(&self) -> bool {
        self.settled && self.state.is_none_or(|s| s == TableState::Normal)
    }
}

/// What to do about a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The most advanced replica leads and every other replica follows it.
    Healthy,
    /// The leader stays; these replicas rejoin it.
    RecoverFollowers {
        leader: String,
        rejoin: Vec<String>,
    },
    /// `leader` (the largest term and offset) leads; `in_step` (whose last record is
    /// the leader's, so whose log is the leader's) follow it from the ChangeLeader on,
    /// and `rejoin` through RecoverTable.
    NewLeader {
        leader: String,
        term: u64,
        offset: u64,
        in_step: Vec<String>,
        rejoin: Vec<String>,
    },
    Impossible(String),
}

/// Replicas needed to answer before a quorum partition may pick a leader: enough to meet
/// every majority, so the chosen one holds every acknowledged write.
fn needed(replica_num: usize, mode: ReplicationMode) -> usize {
    if mode == ReplicationMode::Async {
        return 1;
    }
    (replica_num + 1).saturating_sub(replica_num / 2 + 1).max(1)
}

/// Decides what to do from the survey of one partition's replicas.
pub fn plan(replicas: &[ReplicaSurvey], mode: ReplicationMode, force: bool) -> Plan {
    let answered: Vec<&ReplicaSurvey> = replicas.iter().filter(|r| r.log.is_ok()).collect();
    let Some(best) = answered.iter().filter_map(|r| r.pair()).max() else {
        let reasons: Vec<String> = replicas
            .iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    r.endpoint,
                    r.log.as_ref().err().cloned().unwrap_or_default()
                )
            })
            .collect();
        return Plan::Impossible(format!("no replica answered ({})", reasons.join("; ")));
    };
    let most_advanced = |r: &ReplicaSurvey| r.pair() == Some(best);
    let leader = replicas.iter().find(|r| r.is_leader);
    let followers_of = |leader: &ReplicaSurvey| -> Vec<String> {
        replicas
            .iter()
            .filter(|r| r.endpoint != leader.endpoint)
            .filter(|r| {
                !(r.is_alive
                    && r.loaded_normal()
                    && r.role == Some(TableRole::Follower)
                    && r.leader == leader.endpoint
                    && leader.followers.contains(&r.endpoint))
            })
            .filter(|r| r.log.is_ok())
            .map(|r| r.endpoint.clone())
            .collect()
    };
    // The recorded leader still leads and is the most advanced: only followers may need work.
    if let Some(leader) = leader.filter(|l| {
        l.is_alive && l.loaded_normal() && l.role == Some(TableRole::Leader) && most_advanced(l)
    }) {
        let rejoin = followers_of(leader);
        // Unreachable replicas are left for a later run (or auto_failover) to bring back.
        return if rejoin.is_empty() {
            Plan::Healthy
        } else {
            Plan::RecoverFollowers {
                leader: leader.endpoint.clone(),
                rejoin,
            }
        };
    }
    let need = needed(replicas.len(), mode);
    if answered.len() < need && !force {
        return Plan::Impossible(format!(
            "only {} of {} replicas answered; {need} are needed to be sure no acknowledged \
             write is lost (start the missing tablets, or --force to promote anyway)",
            answered.len(),
            replicas.len()
        ));
    }
    // Among the most advanced: the recorded leader, then a loaded replica, then by name.
    let chosen = answered
        .iter()
        .filter(|r| most_advanced(r))
        .min_by_key(|r| (!r.is_leader, !r.loaded_normal(), r.endpoint.clone()))
        .expect("the best pair belongs to an answered replica");
    let (in_step, rejoin): (Vec<&ReplicaSurvey>, Vec<&ReplicaSurvey>) = answered
        .iter()
        .filter(|r| r.endpoint != chosen.endpoint)
        .partition(|r| most_advanced(r) && r.can_follow_as_is());
    let endpoints = |replicas: Vec<&ReplicaSurvey>| -> Vec<String> {
        replicas.iter().map(|r| r.endpoint.clone()).collect()
    };
    Plan::NewLeader {
        leader: chosen.endpoint.clone(),
        term: best.0,
        offset: best.1,
        in_step: endpoints(in_step),
        rejoin: endpoints(rejoin),
    }
}

/// How one partition ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Healthy,
    Recovered,
    Failed(String),
}

/// The outcome of every partition, per table (`db.name`).
#[derive(Debug, Default)]
pub struct Report {
    pub tables: BTreeMap<String, BTreeMap<u32, Outcome>>,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        self.tables
            .values()
            .flat_map(|p| p.values())
            .all(|o| !matches!(o, Outcome::Failed(_)))
    }

    /// One line per table: partitions healthy, recovered, failed with the reasons.
    pub fn summary(&self) -> String {
        let mut out = Table::new();
        out.load_style(presets::ASCII_FULL_CONDENSED)
            .set_header(vec![
                "table",
                "partitions",
                "healthy",
                "recovered",
                "failed",
                "status",
            ]);
        for (table, partitions) in &self.tables {
            let count = |f: fn(&Outcome) -> bool| partitions.values().filter(|o| f(o)).count();
            let failures: Vec<String> = partitions
                .iter()
                .filter_map(|(pid, o)| match o {
                    Outcome::Failed(reason) => Some(format!("pid {pid}: {reason}")),
                    _ => None,
                })
                .collect();
            let recovered = count(|o| *o == Outcome::Recovered);
            let status = if !failures.is_empty() {
                failures.join("\n")
            } else if recovered > 0 {
                "recovered".into()
            } else {
                "healthy".into()
            };
            out.add_row(vec![
                table.clone(),
                partitions.len().to_string(),
                count(|o| *o == Outcome::Healthy).to_string(),
                recovered.to_string(),
                failures.len().to_string(),
                status,
            ]);
        }
        out.to_string()
    }

    fn set(&mut self, table: &TableInfo, pid: u32, outcome: Outcome) {
        self.set_key(&format!("{}.{}", table.db, table.name), pid, outcome);
    }

    fn set_key(&mut self, table: &str, pid: u32, outcome: Outcome) {
        self.tables
            .entry(table.to_string())
            .or_default()
            .insert(pid, outcome);
    }

    fn outcome(&self, table: &str, pid: u32) -> Option<&Outcome> {
        self.tables.get(table)?.get(&pid)
    }
}

/// Runs recoverdata: turns auto_failover off, recovers, and restores the setting it found.
pub async fn recoverdata(ops: &mut Ops, dry_run: bool, force: bool) -> Result<Report> {
    if dry_run {
        return recover(ops, true, force).await;
    }
    let found = ops.pause_auto_failover().await?;
    let result = recover(ops, false, force).await;
    ops.restore_auto_failover(found).await;
    result
}

/// Lets the ops already under way end, cancelling those that do not in time: they were
/// planned before the whole picture was known.
async fn settle(ops: &mut Ops) -> Result<()> {
    let unfinished: Vec<OpInfo> = ops
        .ops()
        .await?
        .into_iter()
        .filter(|op| !super::is_finished(op))
        .collect();
    if unfinished.is_empty() {
        return Ok(());
    }
    println!("waiting for {} ops already under way", unfinished.len());
    let saved = ops.timeout;
    ops.timeout = saved.min(std::time::Duration::from_secs(30));
    let waited = ops.wait_ops(&unfinished, "ops under way").await;
    ops.timeout = saved;
    if waited.is_err() {
        for op in ops
            .ops()
            .await?
            .into_iter()
            .filter(|op| !super::is_finished(op))
        {
            println!(
                "cancelling op {} ({} {})",
                op.op_id,
                op.op_type,
                op_label(&op)
            );
            let id = op.op_id;
            let _ = ops
                .start(|mut c| async move {
                    c.cancel_op(tessera_proto::nameserver::OpIdRequest { op_id: id })
                        .await
                })
                .await;
        }
    }
    Ok(())
}

async fn recover(ops: &mut Ops, dry_run: bool, force: bool) -> Result<Report> {
    if !dry_run {
        settle(ops).await?;
    }
    let tables = ops.tables().await?;
    let mut report = Report::default();
    let mut plans = Vec::new();
    println!(
        "surveying {} tables, {} partitions",
        tables.len(),
        tables.iter().map(|t| t.partitions.len()).sum::<usize>()
    );
    let survey = Survey::take(&tables).await;
    for table in &tables {
        for partition in &table.partitions {
            let replicas = survey.replicas(table, partition.pid);
            let plan = plan(&replicas, table.mode(), force);
            let label = format!("{}.{} pid {}", table.db, table.name, partition.pid);
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| match &r.log {
                    Ok((t, o, loaded)) => format!(
                        "{} term {t} offset {o}{}",
                        r.endpoint,
                        if *loaded { "" } else { " (not loaded)" }
                    ),
                    Err(e) => format!("{} unknown: {e}", r.endpoint),
                })
                .collect();
            match &plan {
                Plan::Healthy => {
                    println!("{label}: healthy");
                    report.set(table, partition.pid, Outcome::Healthy);
                }
                Plan::RecoverFollowers { leader, rejoin } => println!(
                    "{label}: {leader} keeps leading; recover {} [{}]",
                    rejoin.join(", "),
                    logs.join("; ")
                ),
                Plan::NewLeader {
                    leader,
                    term,
                    offset,
                    in_step,
                    rejoin,
                } => println!(
                    "{label}: load {leader} as leader (term {term}, offset {offset}); in step {}; recover {} [{}]",
                    if in_step.is_empty() { "none".into() } else { in_step.join(", ") },
                    if rejoin.is_empty() { "nothing".into() } else { rejoin.join(", ") },
                    logs.join("; ")
                ),
                Plan::Impossible(reason) => {
                    println!("{label}: cannot recover: {reason}");
                    report.set(table, partition.pid, Outcome::Failed(reason.clone()));
                }
            }
            plans.push((table.clone(), partition.pid, replicas, plan));
        }
    }
    if dry_run {
        println!("dry run: nothing changed");
        return Ok(report);
    }

    // Leaders first, every partition at once; then the followers rejoin them. Each
    // partition's calls (load the replica, mark the others, start the op) go one after
    // another, partitions side by side.
    let mut new_leaders = Vec::new();
    let mut rejoining = Vec::new();
    // What the metadata must show at the end for each partition repaired: an op may be
    // trimmed away before its end is seen, and is then taken as ended well (failed ops
    // are kept longer); the metadata confirms it did.
    let mut repaired: Vec<Repaired> = Vec::new();
    for (table, pid, replicas, plan) in plans {
        let repair = |rejoined: &[String], new_leader_above: Option<u64>| Repaired {
            table: format!("{}.{}", table.db, table.name),
            pid,
            rejoined: rejoined.to_vec(),
            new_leader_above,
        };
        match plan {
            Plan::NewLeader {
                leader,
                in_step,
                rejoin,
                ..
            } => {
                // The leadership term the metadata held before: the ChangeLeader's
                // own term is newer (auto_failover is off, nothing else changes it).
                let before = table
                    .partitions
                    .iter()
                    .find(|p| p.pid == pid)
                    .map_or(0, |p| p.term);
                let planned = Planned {
                    leader,
                    in_step,
                    rejoin,
                };
                repaired.push(repair(&planned.followers(), Some(before)));
                new_leaders.push((table, pid, replicas, planned))
            }
            Plan::RecoverFollowers { rejoin, .. } => {
                repaired.push(repair(&rejoin, None));
                rejoining.push((table, pid, rejoin))
            }
            Plan::Healthy | Plan::Impossible(_) => {}
        }
    }
    println!("starting {} new leaders", new_leaders.len());
    let ns = ops.nameserver_clone();
    let started = side_by_side(
        new_leaders,
        CALLS_AT_ONCE,
        |(table, pid, replicas, planned)| {
            let mut ns = ns.clone();
            async move {
                let started =
                    start_new_leader(&mut ns, &table, pid, &replicas, &planned, force).await;
                (table, pid, planned, started)
            }
        },
    )
    .await;
    let mut leader_ops = Vec::new();
    let mut elected = Vec::new();
    for (table, pid, planned, started) in started {
        match started {
            Ok(op) => {
                leader_ops.push(op);
                elected.push((table, pid, planned));
            }
            Err(e) => report.set(&table, pid, Outcome::Failed(e.to_string())),
        }
    }
    let ended = ops.wait_ops(&leader_ops, "leaders").await?;
    for op in ended.iter().filter(|op| op.status != "kDone") {
        if let Some(table) = tables.iter().find(|t| t.db == op.db && t.name == op.name) {
            report.set(
                table,
                op.pid,
                Outcome::Failed(format!("ChangeLeader {}: {}", op.status, op.reason)),
            );
        }
        elected.retain(|(t, pid, _)| !(t.db == op.db && t.name == op.name && *pid == op.pid));
    }
    rejoining.extend(rejoin_the_elected(ops, elected, &mut repaired).await);

    println!(
        "starting the rejoin of {} replicas",
        rejoining
            .iter()
            .map(|(_, _, rejoin)| rejoin.len())
            .sum::<usize>()
    );
    let started = side_by_side(rejoining, CALLS_AT_ONCE, |(table, pid, rejoin)| {
        let mut ns = ns.clone();
        async move {
            let mut started = Vec::new();
            let mut failed = None;
            for endpoint in rejoin {
                load_if_needed(&table, pid, &endpoint).await;
                let request = RecoverTableRequest {
                    db: table.db.clone(),
                    name: table.name.clone(),
                    pid,
                    endpoint: endpoint.clone(),
                };
                let call = |mut c: NsClient| {
                    let r = request.clone();
                    async move { c.recover_table(r).await }
                };
                match start_with(&mut ns, call).await {
                    Ok(ops) => started.extend(ops),
                    Err(e) => failed = Some(format!("recovering {endpoint}: {e}")),
                }
            }
            (table, pid, started, failed)
        }
    })
    .await;
    let mut recover_ops = Vec::new();
    for (table, pid, started, failed) in started {
        recover_ops.extend(started);
        report.set(
            &table,
            pid,
            failed.map_or(Outcome::Recovered, Outcome::Failed),
        );
    }
    let ended = ops.wait_ops(&recover_ops, "replicas").await?;
    for op in ended.iter().filter(|op| op.status != "kDone") {
        if let Some(table) = tables.iter().find(|t| t.db == op.db && t.name == op.name) {
            report.set(
                table,
                op.pid,
                Outcome::Failed(format!(
                    "replica on {} did not rejoin ({}: {})",
                    op.endpoint, op.status, op.reason
                )),
            );
        }
    }
    confirm(ops, &mut report, &repaired).await;
    Ok(report)
}

/// A partition's new leader as planned, the replicas planned to follow it from its
/// ChangeLeader on, and those planned to rejoin it.
struct Planned {
    leader: String,
    in_step: Vec<String>,
    rejoin: Vec<String>,
}

impl Planned {
    /// Every replica planned to follow, in step or rejoining.
    fn followers(&self) -> Vec<String> {
        self.in_step.iter().chain(&self.rejoin).cloned().collect()
    }
}

/// The rejoins of the partitions whose ChangeLeader ended well, taken from the metadata:
/// the op may have promoted another replica than the one planned (the planned one did
/// not answer its fence in time), and a RecoverTable is for followers only. If the
/// metadata cannot be read, the plan stands (the confirmation reports what went wrong).
async fn rejoin_the_elected(
    ops: &mut Ops,
    elected: Vec<(TableInfo, u32, Planned)>,
    repaired: &mut [Repaired],
) -> Vec<(TableInfo, u32, Vec<String>)> {
    if elected.is_empty() {
        return Vec::new();
    }
    let now: HashMap<(String, String), TableInfo> = match ops.tables().await {
        Ok(tables) => tables
            .into_iter()
            .map(|t| ((t.db.clone(), t.name.clone()), t))
            .collect(),
        Err(e) => {
            println!("the metadata could not be read after the leaders changed ({e}): rejoining as planned");
            HashMap::new()
        }
    };
    let index: HashMap<(String, u32), usize> = repaired
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.table.clone(), r.pid), i))
        .collect();
    elected
        .into_iter()
        .map(|(table, pid, planned)| {
            let partition = now
                .get(&(table.db.clone(), table.name.clone()))
                .and_then(|t| t.partitions.iter().find(|p| p.pid == pid));
            let (followers, rejoin) = followers_to_rejoin(partition, &planned);
            let key = (format!("{}.{}", table.db, table.name), pid);
            if let Some(&i) = index.get(&key) {
                repaired[i].rejoined = followers;
            }
            (table, pid, rejoin)
        })
        .collect()
}

/// The followers a partition must end with (every replica of the plan but the one the
/// metadata now names leader), and those of them to rejoin through RecoverTable: all but
/// the replicas in step that follow since the ChangeLeader (alive in the metadata). If
/// the metadata (`None`: the partition is not in it) names no leader, the plan's
/// followers, every one to rejoin.
fn followers_to_rejoin(
    partition: Option<&PartitionMeta>,
    planned: &Planned,
) -> (Vec<String>, Vec<String>) {
    let Some((partition, leader)) =
        partition.and_then(|p| Some((p, p.replicas.iter().find(|r| r.is_leader)?)))
    else {
        return (planned.followers(), planned.followers());
    };
    let followers: Vec<String> = std::iter::once(&planned.leader)
        .chain(&planned.in_step)
        .chain(&planned.rejoin)
        .filter(|endpoint| **endpoint != leader.endpoint)
        .cloned()
        .collect();
    let follows = |endpoint: &String| {
        planned.in_step.contains(endpoint)
            && partition
                .replicas
                .iter()
                .any(|r| &r.endpoint == endpoint && r.is_alive && !r.joining && !r.leaving)
    };
    let rejoin = followers.iter().filter(|e| !follows(e)).cloned().collect();
    (followers, rejoin)
}

/// A partition recoverdata repaired, and what the metadata must show for it.
struct Repaired {
    /// `db.name`.
    table: String,
    pid: u32,
    /// Replicas that rejoined through RecoverTable.
    rejoined: Vec<String>,
    /// For a new leader, the leadership term the metadata held before it.
    new_leader_above: Option<u64>,
}

/// Reads the metadata again and checks every partition reported recovered (see
/// [`confirm_against`]). If it cannot be read, the repairs are reported unconfirmed:
/// the summary, with every reason found so far, is still printed.
async fn confirm(ops: &mut Ops, report: &mut Report, repaired: &[Repaired]) {
    let mut tries = 0;
    let tables = loop {
        tries += 1;
        match ops.tables().await {
            Ok(tables) => break Ok(tables),
            Err(e) if tries == 3 => break Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
    };
    let unconfirmed = match tables {
        Ok(tables) => confirm_against(report, &tables, repaired),
        Err(e) => {
            let reason = format!("not confirmed: the metadata could not be read ({e})");
            let mut unconfirmed = 0;
            for repair in repaired {
                if report.outcome(&repair.table, repair.pid) == Some(&Outcome::Recovered) {
                    report.set_key(&repair.table, repair.pid, Outcome::Failed(reason.clone()));
                    unconfirmed += 1;
                }
            }
            unconfirmed
        }
    };
    if unconfirmed > 0 {
        println!("{unconfirmed} partitions reported recovered are not confirmed by the metadata");
    }
}

/// Turns a partition reported recovered into a failure unless `tables` shows it
/// repaired; a table dropped meanwhile is left as it was. Returns how many changed.
fn confirm_against(report: &mut Report, tables: &[TableInfo], repaired: &[Repaired]) -> usize {
    let by_name: HashMap<String, &TableInfo> = tables
        .iter()
        .map(|t| (format!("{}.{}", t.db, t.name), t))
        .collect();
    let mut unconfirmed = 0;
    for repair in repaired {
        if report.outcome(&repair.table, repair.pid) != Some(&Outcome::Recovered) {
            continue;
        }
        let Some(table) = by_name.get(&repair.table) else {
            continue;
        };
        let reason = match table.partitions.iter().find(|p| p.pid == repair.pid) {
            Some(partition) => not_repaired(partition, repair),
            None => Some("the partition is no longer in the metadata".into()),
        };
        if let Some(reason) = reason {
            unconfirmed += 1;
            report.set_key(&repair.table, repair.pid, Outcome::Failed(reason));
        }
    }
    unconfirmed
}

/// Why `partition`, as the metadata has it now, does not show `repair` done: it needs an
/// alive leader and no unavailable reason, a leadership newer than before for a new
/// leader, and every rejoined replica alive and neither joining nor leaving.
fn not_repaired(partition: &PartitionMeta, repair: &Repaired) -> Option<String> {
    if !partition.replicas.iter().any(|r| r.is_leader && r.is_alive) {
        return Some("no alive leader in the metadata after its ops ended".into());
    }
    if !partition.unavailable_reason.is_empty() {
        return Some(format!(
            "unavailable in the metadata after its ops ended: {}",
            partition.unavailable_reason
        ));
    }
    if let Some(before) = repair.new_leader_above {
        if partition.term <= before {
            return Some(format!(
                "no new leader in the metadata after its ops ended (term {} as before)",
                partition.term
            ));
        }
    }
    let missing: Vec<&str> = repair
        .rejoined
        .iter()
        .filter(|endpoint| {
            !partition
                .replicas
                .iter()
                .any(|r| &r.endpoint == *endpoint && r.is_alive && !r.joining && !r.leaving)
        })
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "not alive or still joining in the metadata after its ops ended: {}",
            missing.join(", ")
        )
    })
}

/// Makes sure a replica is loaded; a replica that cannot load is left to its op to report.
async fn load_if_needed(table: &TableInfo, pid: u32, endpoint: &str) -> Option<String> {
    match ensure_loaded(table, pid, endpoint).await {
        Ok(()) | Err(Unloaded::Unknown) => None,
        Err(Unloaded::Refused(reason)) => Some(reason),
    }
}

/// Why a replica is not known to be loaded.
enum Unloaded {
    /// Its tablet could not be asked.
    Unknown,
    /// Its tablet refused to load it, for this reason.
    Refused(String),
}

/// Loads a replica if it is not loaded; `Ok` only if its tablet said it is loaded.
async fn ensure_loaded(
    table: &TableInfo,
    pid: u32,
    endpoint: &str,
) -> std::result::Result<(), Unloaded> {
    let mut client = tablet(endpoint).await.map_err(|_| Unloaded::Unknown)?;
    let request = GetTermPairRequest {
        tid: table.tid,
        pid,
    };
    // A tablet loads one replica at a time: the partitions started side by side wait
    // for their turn, not inside the call, whose time limit would run out in line; once
    // it comes, look again (something else may have loaded it meanwhile).
    let mut turn = None;
    loop {
        let status = client
            .get_term_pair(request)
            .await
            .map_err(|_| Unloaded::Unknown)?
            .into_inner();
        if status.loaded {
            return Ok(());
        }
        if turn.is_some() {
            break;
        }
        turn = Some(load_turn(endpoint).await);
    }
    client
        .load_table(LoadTableRequest {
            tid: table.tid,
            pid,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| Unloaded::Refused(s.message().to_string()))
}

/// A turn to ask `endpoint` to load a replica: one at a time per tablet.
async fn load_turn(endpoint: &str) -> tokio::sync::OwnedSemaphorePermit {
    type Turns = std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>;
    static TURNS: std::sync::OnceLock<parking_lot::Mutex<Turns>> = std::sync::OnceLock::new();
    let turns = TURNS
        .get_or_init(Default::default)
        .lock()
        .entry(endpoint.to_string())
        .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1)))
        .clone();
    turns.acquire_owned().await.expect("never closed")
}

/// Loads the chosen replica and those in step with it if needed, marks them the alive
/// replicas in the metadata (the ChangeLeader tells them to follow; the others rejoin
/// through RecoverTable), and starts a ChangeLeader naming the chosen one.
async fn start_new_leader(
    ns: &mut NameserverConnection,
    table: &TableInfo,
    pid: u32,
    replicas: &[ReplicaSurvey],
    planned: &Planned,
    force: bool,
) -> Result<OpInfo> {
    let leader = planned.leader.as_str();
    if let Some(reason) = load_if_needed(table, pid, leader).await {
        return Err(OpsError::InvalidArgument(format!(
            "the most advanced replica, on {leader}, does not load: {reason} (repair or drop it, then run again)"
        )));
    }
    // One not known to be loaded stays dead in the metadata and rejoins through
    // RecoverTable, which loads it or reports why it cannot.
    let mut following = Vec::new();
    for endpoint in &planned.in_step {
        if ensure_loaded(table, pid, endpoint).await.is_ok() {
            following.push(endpoint.as_str());
        }
    }
    for replica in replicas {
        let alive = replica.endpoint == leader || following.contains(&replica.endpoint.as_str());
        if replica.is_alive == alive {
            continue;
        }
        let request = UpdateTableAliveRequest {
            db: table.db.clone(),
            name: table.name.clone(),
            pids: vec![pid],
            endpoint: replica.endpoint.clone(),
            alive,
        };
        ns.call(|mut c| {
            let r = request.clone();
            async move { c.update_table_alive(r).await }
        })
        .await
        .map_err(|s| OpsError::Nameserver(s.message().to_string()))?;
    }
    let request = ChangeLeaderRequest {
        db: table.db.clone(),
        name: table.name.clone(),
        pid,
        candidate: leader.to_string(),
        force,
    };
    start_with(ns, |mut c| {
        let r = request.clone();
        async move { c.change_leader(r).await }
    })
    .await?
    .into_iter()
    .next()
    .ok_or_else(|| OpsError::Nameserver("changeleader started no op".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(endpoint: &str, leader: bool, term: u64, offset: u64) -> ReplicaSurvey {
        ReplicaSurvey {
            endpoint: endpoint.into(),
            is_leader: leader,
            is_alive: true,
            settled: true,
            log: Ok((term, offset, true)),
            role: Some(TableRole::Follower),
            state: Some(TableState::Normal),
            followers: Vec::new(),
            leader: String::new(),
        }
    }

    /// A ChangeLeader may promote another replica than the planned one: the rejoins
    /// follow the metadata's leader, and the planned leader rejoins it. A replica in
    /// step follows from the ChangeLeader on, and rejoins only if the metadata shows it
    /// dead (it did not answer the fence, or did not load).
    #[test]
    fn the_rejoins_follow_the_leader_the_metadata_names() {
        use tessera_proto::nameserver::ReplicaMeta;
        let partition = |leader: Option<&str>, dead: &[&str]| PartitionMeta {
            replicas: ["a", "b", "c", "d"]
                .iter()
                .map(|e| ReplicaMeta {
                    endpoint: e.to_string(),
                    is_leader: leader == Some(*e),
                    is_alive: !dead.contains(e),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let planned = Planned {
            leader: "a".into(),
            in_step: vec!["d".into()],
            rejoin: vec!["b".into(), "c".into()],
        };
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ended = |followers: &[&str], rejoin: &[&str]| (strings(followers), strings(rejoin));
        assert_eq!(
            followers_to_rejoin(Some(&partition(Some("a"), &["b", "c"])), &planned),
            ended(&["d", "b", "c"], &["b", "c"]),
            "as planned: d follows, b and c rejoin"
        );
        assert_eq!(
            followers_to_rejoin(Some(&partition(Some("b"), &["a", "c"])), &planned),
            ended(&["a", "d", "c"], &["a", "c"]),
            "b was promoted instead of a: a rejoins b, d follows b"
        );
        assert_eq!(
            followers_to_rejoin(Some(&partition(Some("a"), &["b", "c", "d"])), &planned),
            ended(&["d", "b", "c"], &["d", "b", "c"]),
            "d did not follow: it rejoins too"
        );
        let mut d_leaving = partition(Some("a"), &["b", "c"]);
        d_leaving.replicas[3].leaving = true;
        assert_eq!(
            followers_to_rejoin(Some(&d_leaving), &planned),
            ended(&["d", "b", "c"], &["d", "b", "c"]),
            "d is marked leaving: it rejoins, which settles it"
        );
        assert_eq!(
            followers_to_rejoin(Some(&partition(None, &[])), &planned),
            ended(&["d", "b", "c"], &["d", "b", "c"]),
            "no leader named: every follower of the plan rejoins"
        );
        assert_eq!(
            followers_to_rejoin(None, &planned),
            ended(&["d", "b", "c"], &["d", "b", "c"]),
            "the partition is not in the metadata: likewise"
        );
    }

    /// A partition counts as repaired only if the metadata shows it: an op trimmed away
    /// before its end was seen proves nothing.
    #[test]
    fn a_repair_is_confirmed_by_the_metadata() {
        use tessera_proto::nameserver::ReplicaMeta;
        let meta = |endpoint: &str, leader: bool, alive: bool, joining: bool| ReplicaMeta {
            endpoint: endpoint.into(),
            is_leader: leader,
            is_alive: alive,
            joining,
            ..Default::default()
        };
        let partition = |pid: u32, term: u64, replicas: Vec<ReplicaMeta>| PartitionMeta {
            pid,
            term,
            replicas,
            ..Default::default()
        };
        let whole = || {
            vec![
                meta("a", true, true, false),
                meta("b", false, true, false),
                meta("c", false, true, false),
            ]
        };
        let mut unavailable = partition(5, 9, whole());
        unavailable.unavailable_reason = "no replica answered".into();
        let table = TableInfo {
            db: "db".into(),
            name: "t".into(),
            partitions: vec![
                // 0: a new leader (term 9, after 4) and both followers back.
                partition(0, 9, whole()),
                // 1: leaderless.
                partition(1, 9, {
                    let mut r = whole();
                    r[0].is_alive = false;
                    r
                }),
                // 2: b still joining, c dead.
                partition(2, 9, {
                    let mut r = whole();
                    r[1].joining = true;
                    r[2].is_alive = false;
                    r
                }),
                // 3: the leadership of before: the ChangeLeader did not happen.
                partition(3, 4, whole()),
                // 4: failed earlier, whatever the metadata says.
                partition(4, 4, whole()),
                unavailable,
            ],
            ..Default::default()
        };
        let rejoined = vec!["b".to_string(), "c".to_string()];
        let repaired: Vec<Repaired> = (0..6)
            .map(|pid| Repaired {
                table: "db.t".into(),
                pid,
                rejoined: rejoined.clone(),
                new_leader_above: Some(4),
            })
            .chain(std::iter::once(Repaired {
                table: "db.dropped".into(),
                pid: 0,
                rejoined: Vec::new(),
                new_leader_above: None,
            }))
            .collect();
        let mut report = Report::default();
        for pid in 0..6 {
            let outcome = if pid == 4 {
                Outcome::Failed("earlier".into())
            } else {
                Outcome::Recovered
            };
            report.set_key("db.t", pid, outcome);
        }
        report.set_key("db.dropped", 0, Outcome::Recovered);

        assert_eq!(confirm_against(&mut report, &[table], &repaired), 4);
        let why = |pid| match report.outcome("db.t", pid) {
            Some(Outcome::Failed(reason)) => reason.clone(),
            other => panic!("pid {pid}: {other:?}"),
        };
        assert_eq!(report.outcome("db.t", 0), Some(&Outcome::Recovered));
        assert!(why(1).contains("no alive leader"), "{}", why(1));
        assert!(why(2).ends_with("still joining in the metadata after its ops ended: b, c"));
        assert!(why(3).contains("no new leader"), "{}", why(3));
        assert_eq!(why(4), "earlier", "a failure found before stays as it was");
        assert!(why(5).contains("no replica answered"), "{}", why(5));
        assert_eq!(
            report.outcome("db.dropped", 0),
            Some(&Outcome::Recovered),
            "a table dropped meanwhile is not a failed repair"
        );
    }

    #[test]
    fn the_most_advanced_replica_leads_even_if_it_was_a_follower() {
        let replicas = [
            replica("a", true, 2, 100),
            replica("b", false, 2, 101),
            replica("c", false, 1, 500),
        ];
        assert_eq!(
            plan(&replicas, ReplicationMode::Quorum, false),
            Plan::NewLeader {
                leader: "b".into(),
                term: 2,
                offset: 101,
                in_step: Vec::new(),
                rejoin: vec!["a".into(), "c".into()],
            }
        );
    }

    /// A replica in step but joining or leaving, or whose writes failed, is settled by
    /// RecoverTable (or reported by it), not made a follower as it is.
    #[test]
    fn only_settled_replicas_that_take_writes_follow_without_rejoining() {
        let leaving = ReplicaSurvey {
            settled: false,
            ..replica("b", false, 3, 10)
        };
        let write_failed = ReplicaSurvey {
            state: Some(TableState::WriteFailed),
            ..replica("c", false, 3, 10)
        };
        let not_loaded = ReplicaSurvey {
            state: None,
            log: Ok((3, 10, false)),
            ..replica("d", false, 3, 10)
        };
        let replicas = [replica("a", true, 3, 10), leaving, write_failed, not_loaded];
        assert_eq!(
            plan(&replicas, ReplicationMode::Quorum, false),
            a_leads_at_3_10(&["d"], &["b", "c"])
        );
    }

    /// `a` leads from (3, 10), these replicas in step and these to rejoin.
    fn a_leads_at_3_10(in_step: &[&str], rejoin: &[&str]) -> Plan {
        let endpoints = |e: &[&str]| e.iter().map(|e| e.to_string()).collect();
        Plan::NewLeader {
            leader: "a".into(),
            term: 3,
            offset: 10,
            in_step: endpoints(in_step),
            rejoin: endpoints(rejoin),
        }
    }

    /// A replica whose last record is the leader's holds the leader's log: it follows
    /// at once instead of rejoining; one that differs, even by its term alone, rejoins.
    #[test]
    fn replicas_that_end_where_the_leader_does_follow_it_without_rejoining() {
        let replicas = [
            replica("a", true, 3, 10),
            replica("b", false, 3, 10),
            replica("c", false, 2, 10),
            replica("d", false, 3, 9),
        ];
        assert_eq!(
            plan(&replicas, ReplicationMode::Quorum, false),
            a_leads_at_3_10(&["b"], &["c", "d"])
        );
    }

    #[test]
    fn ties_go_to_the_recorded_leader() {
        let replicas = [
            replica("a", false, 3, 10),
            replica("b", true, 3, 10),
            replica("c", false, 3, 10),
        ];
        let Plan::NewLeader { leader, .. } = plan(&replicas, ReplicationMode::Quorum, false) else {
            panic!("a new leader")
        };
        assert_eq!(leader, "b");
    }

    #[test]
    fn a_quorum_partition_needs_enough_answers() {
        let mut replicas = [
            replica("a", true, 3, 10),
            replica("b", false, 3, 10),
            replica("c", false, 3, 10),
        ];
        replicas[1].log = Err("unreachable".into());
        replicas[2].log = Err("unreachable".into());
        assert!(matches!(
            plan(&replicas, ReplicationMode::Quorum, false),
            Plan::Impossible(reason) if reason.contains("only 1 of 3")
        ));
        assert!(matches!(
            plan(&replicas, ReplicationMode::Quorum, true),
            Plan::NewLeader { .. }
        ));
        assert!(matches!(
            plan(&replicas, ReplicationMode::Async, false),
            Plan::NewLeader { .. }
        ));
        for r in &mut replicas {
            r.log = Err("unreachable".into());
        }
        assert!(matches!(
            plan(&replicas, ReplicationMode::Quorum, true),
            Plan::Impossible(reason) if reason.contains("no replica answered")
        ));
    }

    #[test]
    fn a_partition_in_order_is_healthy_and_a_stray_follower_rejoins() {
        let mut leader = replica("a", true, 3, 10);
        leader.role = Some(TableRole::Leader);
        leader.followers = vec!["b".into(), "c".into()];
        let mut replicas = [
            leader,
            replica("b", false, 3, 10),
            replica("c", false, 3, 9),
        ];
        for r in &mut replicas[1..] {
            r.leader = "a".into();
        }
        assert_eq!(
            plan(&replicas, ReplicationMode::Quorum, false),
            Plan::Healthy
        );
        replicas[2].is_alive = false;
        assert_eq!(
            plan(&replicas, ReplicationMode::Quorum, false),
            Plan::RecoverFollowers {
                leader: "a".into(),
                rejoin: vec!["c".into()]
            }
        );
    }
}
