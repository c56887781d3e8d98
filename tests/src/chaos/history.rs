//! The history of a fault-injection run: every operation a client invoked, when it was
//! invoked and completed, and how it ended, one JSON object per line; and the cluster's
//! final state after the last heal.

use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How an operation ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it took effect (a write) or returned this result (a read).
    Ok,
    /// Definitely did not take effect.
    Failed,
    /// May or may not have taken effect (a timeout, a lost connection).
    Unknown,
}

/// What an operation did. Writes put rows `(key, value)`, every value unique in the run;
/// reads return the values of one key's rows in the order the table keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    Put {
        key: String,
        value: i64,
    },
    /// Removes every row of the key.
    Delete {
        key: String,
    },
    /// A whole-key scan from the leader; `rows` when it succeeded.
    Scan {
        key: String,
        #[serde(default)]
        rows: Vec<i64>,
    },
    /// A whole-key scan from a follower, which must have applied at least `min_offset`;
    /// `offset` is what the follower said it had applied.
    FollowerScan {
        key: String,
        min_offset: u64,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        rows: Vec<i64>,
    },
    Count {
        key: String,
        #[serde(default)]
        count: u64,
    },
    /// The newest row of a key from the leader: its value, if the key has a row.
    Get {
        key: String,
        #[serde(default)]
        value: Option<i64>,
    },
}

impl OpKind {
    pub fn key(&self) -> &str {
        match self {
            OpKind::Put { key, .. }
            | OpKind::Delete { key }
            | OpKind::Scan { key, .. }
            | OpKind::FollowerScan { key, .. }
            | OpKind::Count { key, .. }
            | OpKind::Get { key, .. } => key,
        }
    }

    /// The rows a read returned (none for writes, counts and gets, which show one row of
    /// their choosing).
    pub fn rows(&self) -> Option<&[i64]> {
        match self {
            OpKind::Scan { rows, .. } | OpKind::FollowerScan { rows, .. } => Some(rows),
            _ => None,
        }
    }
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Unique in the history.
    pub id: u64,
    /// The client (one session) that ran it; a client runs one operation at a time.
    pub client: u32,
    /// Microseconds since the run began.
    pub invoked_us: u64,
    pub completed_us: u64,
    pub outcome: Outcome,
    #[serde(flatten)]
    pub kind: OpKind,
}

/// One partition after the final heal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEnd {
    pub pid: u32,
    /// The replicas that say they lead it.
    pub leaders: Vec<String>,
    /// Each replica's log end: (endpoint, last term, last offset).
    pub log_ends: Vec<(String, u64, u64)>,
}

/// The cluster after the final heal: every key's rows (read from the leaders; a key whose
/// final read failed is absent, and not judged) and every partition's serving leaders and
/// log ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    pub rows: std::collections::BTreeMap<String, Vec<i64>>,
    pub partitions: Vec<PartitionEnd>,
}

/// Writes a history as JSON lines.
pub fn write_history(path: &Path, ops: &[Op]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_history`]; a malformed line is an error naming it.
pub fn read_history(path: &Path) -> std::io::Result<Vec<Op>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut ops = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: line {}: {e}", path.display(), i + 1),
            )
        })?);
    }
    Ok(ops)
}
