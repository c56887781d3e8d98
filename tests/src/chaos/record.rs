//! What a run records besides its history: the faults it injected, how long each kept
//! the cluster from taking writes (from the injection to the first acknowledged put
//! invoked after it, in the partition that took longest), and the run's result.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::history::{Op, OpKind, Outcome};

/// One injected fault, as a run records it (JSON lines, `faults.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub seed: u64,
    pub step: usize,
    /// The fault's kind ([`super::schedule::Fault::name`]).
    pub kind: String,
    pub description: String,
    /// Microseconds since the run's start.
    pub injected_us: u64,
    pub healed_us: u64,
    /// Until every partition took an acknowledged put invoked after the injection;
    /// `None` if one never did before the workload stopped.
    pub writes_after_us: Option<u64>,
}

/// One schedule's result (`result.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub seed: u64,
    pub faults: usize,
    pub operations: usize,
    pub anomalies: usize,
    /// Repairs that failed, processes that exited on their own, a cluster that did not heal.
    pub problems: Vec<String>,
}

impl RunSummary {
    pub fn passed(&self) -> bool {
        self.anomalies == 0 && self.problems.is_empty()
    }
}

/// For a fault injected at `injected_us`: the time until every partition had
/// acknowledged a put invoked at or after it.
pub fn writes_after(
    history: &[Op],
    injected_us: u64,
    partition_of: &HashMap<String, u32>,
    partitions: u32,
) -> Option<u64> {
    let mut first: HashMap<u32, u64> = HashMap::new();
    for op in history {
        let OpKind::Put { key, .. } = &op.kind else {
            continue;
        };
        if op.outcome != Outcome::Ok || op.invoked_us < injected_us {
            continue;
        }
        if let Some(pid) = partition_of.get(key) {
            let done = first.entry(*pid).or_insert(op.completed_us);
            *done = (*done).min(op.completed_us);
        }
    }
    if (first.len() as u32) < partitions {
        return None;
    }
    first.values().max().map(|done| done - injected_us)
}

pub fn write_faults(path: &Path, faults: &[FaultRecord]) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for fault in faults {
        serde_json::to_writer(&mut file, fault)?;
        file.write_all(b"\n")?;
    }
    file.flush()
}

pub fn read_faults(path: &Path) -> std::io::Result<Vec<FaultRecord>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    file.lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| {
            serde_json::from_str(&line?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

/// Per fault kind: how many, and the median and worst time until writes were taken again
/// (faults the workload outlived without a write count as unhealed).
pub fn summary(faults: &[FaultRecord]) -> String {
    let mut by_kind: BTreeMap<&str, Vec<Option<u64>>> = BTreeMap::new();
    for fault in faults {
        by_kind
            .entry(fault.kind.as_str())
            .or_default()
            .push(fault.writes_after_us);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(vec![
        "fault",
        "injected",
        "writes again: median",
        "worst",
        "never",
    ]);
    let ms = |us: u64| format!("{:.0} ms", us as f64 / 1000.0);
    for (kind, times) in by_kind {
        let mut healed: Vec<u64> = times.iter().flatten().copied().collect();
        healed.sort_unstable();
        let never = times.len() - healed.len();
        let (median, worst) = match healed.len() {
            0 => ("-".to_string(), "-".to_string()),
            n => (ms(healed[n / 2]), ms(healed[n - 1])),
        };
        table.add_row(vec![
            kind.to_string(),
            times.len().to_string(),
            median,
            worst,
            never.to_string(),
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, invoked_us: u64, completed_us: u64, outcome: Outcome) -> Op {
        Op {
            id: invoked_us,
            client: 0,
            invoked_us,
            completed_us,
            outcome,
            kind: OpKind::Put {
                key: key.into(),
                value: invoked_us as i64,
            },
        }
    }

    #[test]
    fn the_slowest_partition_decides() {
        let partition_of: HashMap<String, u32> =
            [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let history = vec![
            put("a", 50, 60, Outcome::Ok),          // before the fault
            put("a", 100, 3_100, Outcome::Unknown), // lost in the failover
            put("a", 110, 150, Outcome::Ok),
            put("b", 120, 2_000, Outcome::Ok),
            put("b", 130, 1_500, Outcome::Ok),
        ];
        assert_eq!(writes_after(&history, 100, &partition_of, 2), Some(1_400));
        assert_eq!(writes_after(&history, 140, &partition_of, 2), None);
        let record = |kind: &str, us| FaultRecord {
            seed: 1,
            step: 0,
            kind: kind.into(),
            description: String::new(),
            injected_us: 0,
            healed_us: 0,
            writes_after_us: us,
        };
        let text = summary(&[
            record("kill_tablet", Some(1_000)),
            record("kill_tablet", Some(3_000)),
            record("kill_tablet", None),
            record("split", Some(7_000)),
        ]);
        assert!(text.contains("| kill_tablet | 3 "), "{text}");
        assert!(text.contains("| 3 ms "), "{text}");
        assert!(text.contains("| split"), "{text}");
    }
}
