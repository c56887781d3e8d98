//! Checks a history and the final state for what quorum replication promises: no
//! acknowledged write lost or doubled, nothing failed or never written visible, one order
//! of each key's rows, monotonic reads per client, follower reads no older than asked,
//! and one leader per partition over converged logs after the last heal.
//!
//! Deletes remove every row of a key; a check that a row is present allows for any
//! delete of its key that may have taken effect in between (one not known to have
//! failed, whose interval overlaps the window).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::history::{FinalState, Op, OpKind, Outcome};

/// One violation, with the operations involved (their ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub key: String,
    pub ops: Vec<u64>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    /// An acknowledged put is missing from the final state.
    LostWrite,
    /// A row appears more than once.
    DuplicateRow,
    /// A put that definitely failed is visible.
    FailedWriteVisible,
    /// A value nobody wrote is visible.
    PhantomValue,
    /// Two reads of a key order its rows differently.
    OrderDisagreement,
    /// A read misses a row acknowledged before it began.
    StaleRead,
    /// A client's read misses a row its earlier read saw.
    NonMonotonicRead,
    /// A follower read served from behind the offset it was given.
    FollowerBehind,
    /// A count outside what the writes around it allow.
    WrongCount,
    /// A partition with no leader, or more than one, after the last heal.
    LeaderCount,
    /// A partition whose replicas' logs differ after the last heal.
    Divergence,
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on key `{}` (ops {:?}): {}",
            self.kind, self.key, self.ops, self.detail
        )
    }
}

/// What the checker found, and what it looked at.
#[derive(Debug, Default)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    /// Operations by (kind, outcome).
    pub ops: BTreeMap<(String, String), u64>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }

    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    /// Every anomaly, then a summary table of the operations and the anomalies by kind.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for anomaly in &self.anomalies {
            out.push_str(&format!("{anomaly}\n"));
        }
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::ASCII_FULL_CONDENSED);
        table.set_header(vec!["", "what", "count"]);
        for ((kind, outcome), n) in &self.ops {
            table.add_row(vec![
                "op".to_string(),
                format!("{kind} {outcome}"),
                n.to_string(),
            ]);
        }
        let mut kinds: BTreeMap<AnomalyKind, usize> = BTreeMap::new();
        for anomaly in &self.anomalies {
            *kinds.entry(anomaly.kind).or_default() += 1;
        }
        for (kind, n) in kinds {
            table.add_row(vec!["anomaly".to_string(), kind.to_string(), n.to_string()]);
        }
        if self.anomalies.is_empty() {
            table.add_row(vec![
                "anomaly".to_string(),
                "none".to_string(),
                "0".to_string(),
            ]);
        }
        out.push_str(&table.to_string());
        out
    }
}

fn kind_name(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Put { .. } => "put",
        OpKind::Delete { .. } => "delete",
        OpKind::Scan { .. } => "scan",
        OpKind::FollowerScan { .. } => "follower_scan",
        OpKind::Count { .. } => "count",
        OpKind::Get { .. } => "get",
    }
}

/// The history, indexed for the checks.
struct Index<'a> {
    /// Puts by value.
    puts: HashMap<i64, &'a Op>,
    /// Deletes that may have taken effect, by key.
    deletes: HashMap<&'a str, Vec<&'a Op>>,
}

impl<'a> Index<'a> {
    fn new(history: &'a [Op]) -> Index<'a> {
        let mut puts = HashMap::new();
        let mut deletes: HashMap<&str, Vec<&Op>> = HashMap::new();
        for op in history {
            match &op.kind {
                OpKind::Put { value, .. } => {
                    puts.insert(*value, op);
                }
                OpKind::Delete { key } if op.outcome != Outcome::Failed => {
                    deletes.entry(key.as_str()).or_default().push(op)
                }
                _ => {}
            }
        }
        Index { puts, deletes }
    }

    /// A delete of `key` that may have taken effect after `after_us` and before
    /// `before_us` (its interval overlaps the window).
    fn delete_between(&self, key: &str, after_us: u64, before_us: u64) -> Option<&'a Op> {
        self.deletes.get(key).and_then(|list| {
            list.iter()
                .copied()
                .find(|d| d.completed_us > after_us && d.invoked_us < before_us)
        })
    }
}

/// Checks `history` and `end`; every anomaly found is in the report.
pub fn check(history: &[Op], end: &FinalState) -> Report {
    let index = Index::new(history);
    let mut report = Report::default();
    for op in history {
        let outcome = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *report
            .ops
            .entry((kind_name(&op.kind).to_string(), outcome.to_string()))
            .or_default() += 1;
    }
    let mut found = Vec::new();
    check_final(history, end, &index, &mut found);
    check_reads(history, &index, &mut found);
    check_order(history, end, &mut found);
    check_monotonic(history, &index, &mut found);
    check_cluster(end, &mut found);
    report.anomalies = found;
    report
}

/// Values visible in `rows` of `key`: no duplicates, nothing failed, nothing unwritten.
fn check_visible(
    key: &str,
    rows: &[i64],
    read: Option<&Op>,
    index: &Index<'_>,
    found: &mut Vec<Anomaly>,
) {
    let mut seen = BTreeSet::new();
    let seen_in = read.map(|r| r.id);
    let place = seen_in.map_or("the final state".to_string(), |id| format!("op {id}"));
    for &value in rows {
        let ops = |put: Option<&Op>| put.map(|p| p.id).into_iter().chain(seen_in).collect();
        if !seen.insert(value) {
            found.push(Anomaly {
                kind: AnomalyKind::DuplicateRow,
                key: key.into(),
                ops: ops(index.puts.get(&value).copied()),
                detail: format!("value {value} appears twice in {place}"),
            });
        }
        match index.puts.get(&value) {
            Some(put) if put.kind.key() != key => found.push(Anomaly {
                kind: AnomalyKind::PhantomValue,
                key: key.into(),
                ops: ops(Some(put)),
                detail: format!(
                    "value {value} was written to key `{}`, not this one, yet {place} shows it",
                    put.kind.key()
                ),
            }),
            Some(put) if read.is_some_and(|r| put.invoked_us > r.completed_us) => {
                found.push(Anomaly {
                    kind: AnomalyKind::PhantomValue,
                    key: key.into(),
                    ops: ops(Some(put)),
                    detail: format!("{place} shows {value} before its put was even invoked"),
                })
            }
            Some(put) if put.outcome == Outcome::Failed => found.push(Anomaly {
                kind: AnomalyKind::FailedWriteVisible,
                key: key.into(),
                ops: ops(Some(put)),
                detail: format!("the put of {value} failed, yet {place} shows it"),
            }),
            Some(_) => {}
            None => found.push(Anomaly {
                kind: AnomalyKind::PhantomValue,
                key: key.into(),
                ops: ops(None),
                detail: format!("value {value} was never written, yet {place} shows it"),
            }),
        }
    }
}

fn check_final(history: &[Op], end: &FinalState, index: &Index<'_>, found: &mut Vec<Anomaly>) {
    for (key, rows) in &end.rows {
        check_visible(key, rows, None, index, found);
    }
    for op in history.iter().filter(|op| op.outcome == Outcome::Ok) {
        let OpKind::Put { key, value } = &op.kind else {
            continue;
        };
        // A key whose final read failed is not judged here; the run reports that read.
        let Some(rows) = end.rows.get(key) else {
            continue;
        };
        let present = rows.contains(value);
        if !present && index.delete_between(key, op.invoked_us, u64::MAX).is_none() {
            found.push(Anomaly {
                kind: AnomalyKind::LostWrite,
                key: key.clone(),
                ops: vec![op.id],
                detail: format!("the acknowledged put of {value} is missing after the last heal"),
            });
        }
    }
}

/// Each successful read: what it shows is valid, it has every row acknowledged before it
/// began, follower reads are not behind, counts are within bounds.
fn check_reads(history: &[Op], index: &Index<'_>, found: &mut Vec<Anomaly>) {
    let mut acked_puts: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.iter().filter(|op| op.outcome == Outcome::Ok) {
        if let OpKind::Put { key, .. } = &op.kind {
            acked_puts.entry(key.as_str()).or_default().push(op);
        }
    }
    for read in history.iter().filter(|op| op.outcome == Outcome::Ok) {
        let key = read.kind.key();
        if let OpKind::FollowerScan {
            min_offset, offset, ..
        } = &read.kind
        {
            if offset < min_offset {
                found.push(Anomaly {
                    kind: AnomalyKind::FollowerBehind,
                    key: key.into(),
                    ops: vec![read.id],
                    detail: format!("served at offset {offset}, below the min_offset {min_offset}"),
                });
            }
        }
        let before: Vec<&Op> = acked_puts
            .get(key)
            .map(|puts| {
                puts.iter()
                    .copied()
                    .filter(|p| {
                        p.completed_us < read.invoked_us
                            && index
                                .delete_between(key, p.invoked_us, read.completed_us)
                                .is_none()
                    })
                    .collect()
            })
            .unwrap_or_default();
        match &read.kind {
            OpKind::Scan { rows, .. } | OpKind::FollowerScan { rows, .. } => {
                check_visible(key, rows, Some(read), index, found);
                // A follower read promises only what it had applied by its offset, which
                // the monotonic check covers; a leader read must show everything before.
                if matches!(read.kind, OpKind::Scan { .. }) {
                    let shown: std::collections::HashSet<i64> = rows.iter().copied().collect();
                    for put in before {
                        let OpKind::Put { value, .. } = &put.kind else {
                            continue;
                        };
                        if !shown.contains(value) {
                            found.push(Anomaly {
                                kind: AnomalyKind::StaleRead,
                                key: key.into(),
                                ops: vec![put.id, read.id],
                                detail: format!(
                                    "the scan misses {value}, acknowledged before it began"
                                ),
                            });
                        }
                    }
                }
            }
            OpKind::Get { value, .. } => match value {
                Some(value) => check_visible(key, &[*value], Some(read), index, found),
                None => {
                    if let Some(put) = before.first() {
                        found.push(Anomaly {
                            kind: AnomalyKind::StaleRead,
                            key: key.into(),
                            ops: vec![put.id, read.id],
                            detail:
                                "the get found no row, though one was acknowledged before it began"
                                    .into(),
                        });
                    }
                }
            },
            OpKind::Count { count, .. } => {
                let invoked_before = history
                    .iter()
                    .filter(|p| {
                        matches!(&p.kind, OpKind::Put { key: k, .. } if k == key)
                            && p.outcome != Outcome::Failed
                            && p.invoked_us < read.completed_us
                    })
                    .count() as u64;
                let at_least = before.len() as u64;
                if *count < at_least || *count > invoked_before {
                    found.push(Anomaly {
                        kind: AnomalyKind::WrongCount,
                        key: key.into(),
                        ops: vec![read.id],
                        detail: format!(
                            "counted {count}; between {at_least} and {invoked_before} possible"
                        ),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Rows a read showed (its op id), or the final state (None).
type SeenRows<'a> = (Option<u64>, &'a [i64]);

/// Every read of a key, and the final state, must fit one order of the key's rows: the
/// "comes right before" edges of all of them must have no cycle (linear in what was read;
/// comparing reads pair by pair is quadratic in the rows of a key).
fn check_order(history: &[Op], end: &FinalState, found: &mut Vec<Anomaly>) {
    let mut reads: BTreeMap<&str, Vec<SeenRows<'_>>> = BTreeMap::new();
    for op in history.iter().filter(|op| op.outcome == Outcome::Ok) {
        if let Some(rows) = op.kind.rows() {
            reads
                .entry(op.kind.key())
                .or_default()
                .push((Some(op.id), rows));
        }
    }
    for (key, rows) in &end.rows {
        reads.entry(key.as_str()).or_default().push((None, rows));
    }
    for (key, list) in reads {
        // Edges a -> b, with a read that showed b right after a.
        let mut edges: HashMap<i64, Vec<(i64, Option<u64>)>> = HashMap::new();
        let mut indegree: HashMap<i64, usize> = HashMap::new();
        let mut seen_edges = std::collections::HashSet::new();
        for (id, rows) in &list {
            for pair in rows.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                indegree.entry(a).or_insert(0);
                if seen_edges.insert((a, b)) {
                    edges.entry(a).or_default().push((b, *id));
                    *indegree.entry(b).or_insert(0) += 1;
                }
            }
        }
        // Kahn's algorithm: what cannot be ordered lies on a cycle.
        let mut ready: Vec<i64> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(v, _)| *v)
            .collect();
        let mut ordered = 0;
        while let Some(v) = ready.pop() {
            ordered += 1;
            for (next, _) in edges.get(&v).into_iter().flatten() {
                let d = indegree.get_mut(next).expect("counted");
                *d -= 1;
                if *d == 0 {
                    ready.push(*next);
                }
            }
        }
        if ordered == indegree.len() {
            continue;
        }
        // Name the reads whose edges join values left on the cycle.
        let stuck: BTreeSet<i64> = indegree
            .iter()
            .filter(|(_, d)| **d > 0)
            .map(|(v, _)| *v)
            .collect();
        let mut ops = BTreeSet::new();
        for (a, outs) in &edges {
            for (b, id) in outs {
                if stuck.contains(a) && stuck.contains(b) {
                    ops.extend(*id);
                }
            }
        }
        let sample: Vec<i64> = stuck.iter().take(4).copied().collect();
        found.push(Anomaly {
            kind: AnomalyKind::OrderDisagreement,
            key: key.into(),
            ops: ops.into_iter().take(8).collect(),
            detail: format!(
                "no single order fits every read: values {sample:?} come before and after \
                 one another"
            ),
        });
    }
}

/// A client never sees a row vanish from one read of a key to its next, unless a delete
/// of the key may have come in between.
fn check_monotonic(history: &[Op], index: &Index<'_>, found: &mut Vec<Anomaly>) {
    // When each client's acknowledged leader operations on a key began: their answers
    // carry an offset the client then requires of its follower reads.
    let mut leader_ops: HashMap<(u32, &str), Vec<u64>> = HashMap::new();
    for op in history.iter().filter(|op| op.outcome == Outcome::Ok) {
        if matches!(
            op.kind,
            OpKind::Put { .. } | OpKind::Delete { .. } | OpKind::Scan { .. }
        ) {
            leader_ops
                .entry((op.client, op.kind.key()))
                .or_default()
                .push(op.invoked_us);
        }
    }
    for times in leader_ops.values_mut() {
        times.sort_unstable();
    }
    // A follower read may be stale: a delete acknowledged before it began may still come
    // after what it shows, unless the client had already been answered after that delete
    // (then the read's min_offset covers it). So a row it showed may be missing later if
    // a delete ended after the client's last leader operation on the key began.
    let view_from = |read: &Op| -> u64 {
        if !matches!(read.kind, OpKind::FollowerScan { .. }) {
            return read.invoked_us;
        }
        leader_ops
            .get(&(read.client, read.kind.key()))
            .and_then(|times| {
                let before = times.partition_point(|t| *t < read.invoked_us);
                before.checked_sub(1).map(|i| times[i])
            })
            .unwrap_or(0)
    };
    let mut last: HashMap<(u32, &str), &Op> = HashMap::new();
    let mut by_client: Vec<&Op> = history
        .iter()
        .filter(|op| op.outcome == Outcome::Ok && op.kind.rows().is_some())
        .collect();
    by_client.sort_by_key(|op| (op.client, op.invoked_us));
    for read in by_client {
        let key = read.kind.key();
        if let Some(earlier) = last.get(&(read.client, key)) {
            let now: std::collections::HashSet<i64> = read
                .kind
                .rows()
                .unwrap_or_default()
                .iter()
                .copied()
                .collect();
            if index
                .delete_between(key, view_from(earlier), read.completed_us)
                .is_none()
            {
                if let Some(missing) = earlier
                    .kind
                    .rows()
                    .unwrap_or_default()
                    .iter()
                    .find(|v| !now.contains(v))
                {
                    found.push(Anomaly {
                        kind: AnomalyKind::NonMonotonicRead,
                        key: key.into(),
                        ops: vec![earlier.id, read.id],
                        detail: format!(
                            "client {} saw {missing}, then a later read without it",
                            read.client
                        ),
                    });
                }
            }
        }
        last.insert((read.client, key), read);
    }
}

fn check_cluster(end: &FinalState, found: &mut Vec<Anomaly>) {
    for partition in &end.partitions {
        let key = format!("pid {}", partition.pid);
        if partition.leaders.len() != 1 {
            found.push(Anomaly {
                kind: AnomalyKind::LeaderCount,
                key: key.clone(),
                ops: Vec::new(),
                detail: format!(
                    "{} leaders after the last heal: {:?}",
                    partition.leaders.len(),
                    partition.leaders
                ),
            });
        }
        let ends: BTreeSet<(u64, u64)> = partition
            .log_ends
            .iter()
            .map(|(_, term, offset)| (*term, *offset))
            .collect();
        if ends.len() > 1 {
            found.push(Anomaly {
                kind: AnomalyKind::Divergence,
                key,
                ops: Vec::new(),
                detail: format!(
                    "replicas end at different records: {:?}",
                    partition.log_ends
                ),
            });
        }
    }
}
