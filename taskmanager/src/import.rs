//! Importing a CSV file into a table through the normal write path (the SDK's put, so
//! routing, replication and the quorum apply), one writer per partition.
//!
//! Exactly once across a taskmanager failover:
//! - every partition's writer puts its rows in file order with at most `IN_FLIGHT` at
//!   once, and records a checkpoint (the line up to which every row of the partition is
//!   acknowledged) every `CHECKPOINT_ROWS` rows, waiting for the write;
//! - so at most `UNCERTAIN` rows of a partition past its recorded checkpoint can have
//!   been written when the leader died. The new leader reads the first `UNCERTAIN` rows
//!   past each checkpoint, counts how many copies of each the table holds beyond the
//!   copies the file has at or before the checkpoint, and skips that many: a file may
//!   hold the same row twice, and then it is written twice.
//!
//! This assumes the table held none of the file's rows before the import began.
//! Every line is parsed before anything is written, so a malformed line fails the job
//! (with its number) before it changes the table, unless bad lines are to be skipped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_common::{key, Schema, Value};
use tessera_proto::taskmanager::{CsvOptions, ImportCheckpoint, JobInfo};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::info;

use crate::error::{Result, TmError};
use crate::jobs::delimiter;
use crate::state::TaskManager;

/// Puts in flight per partition.
const IN_FLIGHT: usize = 16;
/// Rows between two checkpoints of a partition.
const CHECKPOINT_ROWS: u64 = 2_000;
/// Rows of a partition past its checkpoint that may have been written.
const UNCERTAIN: usize = CHECKPOINT_ROWS as usize + IN_FLIGHT;

/// A parsed line: its number (from 1) and its row.
type Line = (u64, Vec<Value>);

/// The partition a row belongs to.
type PartitionOf = Arc<dyn Fn(&[Value]) -> u32 + Send + Sync>;

/// Reads the file, calling `each` with every good row and `bad` with every bad line's
/// number and reason; `bad` returning an error stops the read.
fn read_rows(
    path: &str,
    schema: &Schema,
    options: &CsvOptions,
    mut each: impl FnMut(u64, Vec<Value>) -> Result<()>,
    mut bad: impl FnMut(u64, String) -> Result<()>,
) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter(options)?)
        .from_path(path)
        .map_err(|e| TmError::Io(format!("cannot read {path}: {e}")))?;
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                // An unreadable header is still the header.
                if std::mem::take(&mut first) && options.header {
                    continue;
                }
                bad(line, format!("cannot be read: {e}"))?;
                continue;
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        if std::mem::take(&mut first) && options.header {
            continue;
        }
        match parse_row(schema, &record) {
            Ok(row) => each(line, row)?,
            Err(reason) => bad(line, reason)?,
        }
    }
}

fn parse_row(
    schema: &Schema,
    record: &csv::StringRecord,
) -> std::result::Result<Vec<Value>, String> {
    if record.len() != schema.columns.len() {
        return Err(format!(
            "{} values, the table has {} columns",
            record.len(),
            schema.columns.len()
        ));
    }
    let row = schema
        .columns
        .iter()
        .zip(record.iter())
        .map(|(column, text)| column.parse_value(text))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    tessera_common::codec::validate(schema, &row).map_err(|e| e.to_string())?;
    Ok(row)
}

/// Counts the good rows; fails at the first bad line unless bad lines are skipped.
fn validate(path: &str, schema: &Schema, options: &CsvOptions) -> Result<(u64, u64)> {
    let (mut good, mut skipped) = (0, 0);
    read_rows(
        path,
        schema,
        options,
        |_, _| {
            good += 1;
            Ok(())
        },
        |line, reason| {
            if options.skip_bad_rows {
                skipped += 1;
                Ok(())
            } else {
                Err(TmError::InvalidArgument(format!("line {line}: {reason}")))
            }
        },
    )?;
    Ok((good, skipped))
}

/// What a resumed import must not write again: for each partition, the lines past its
/// checkpoint whose rows the table already holds.
async fn already_written(
    tm: &TaskManager,
    job: &JobInfo,
    schema: &Schema,
    partition_of: PartitionOf,
    checkpoints: &[ImportCheckpoint],
) -> Result<HashSet<u64>> {
    let options = job.options.clone().unwrap_or_default();
    let (path, schema_c, checkpoints_c) = (job.path.clone(), schema.clone(), checkpoints.to_vec());
    let (windows, before) = tokio::task::spawn_blocking(move || {
        // The first UNCERTAIN rows of each partition past its checkpoint.
        let mut windows: BTreeMap<u32, Vec<Line>> = BTreeMap::new();
        let mut rows_in_windows: HashSet<String> = HashSet::new();
        read_rows(
            &path,
            &schema_c,
            &options,
            |line, row| {
                let pid = partition_of(&row);
                if line > checkpoints_c[pid as usize].line {
                    let window = windows.entry(pid).or_default();
                    if window.len() < UNCERTAIN {
                        rows_in_windows.insert(format!("{pid}:{row:?}"));
                        window.push((line, row));
                    }
                }
                Ok(())
            },
            |_, _| Ok(()),
        )?;
        // Copies of those rows the file has at or before the checkpoint.
        let mut before: HashMap<String, u64> = HashMap::new();
        read_rows(
            &path,
            &schema_c,
            &options,
            |line, row| {
                let pid = partition_of(&row);
                if line <= checkpoints_c[pid as usize].line {
                    let text = format!("{pid}:{row:?}");
                    if rows_in_windows.contains(&text) {
                        *before.entry(text).or_default() += 1;
                    }
                }
                Ok(())
            },
            |_, _| Ok(()),
        )?;
        Ok::<_, TmError>((windows, before))
    })
    .await
    .map_err(|e| TmError::Io(e.to_string()))??;

    let client = tm.data().await?;
    let first = schema
        .indexes
        .first()
        .ok_or_else(|| TmError::InvalidArgument("the table has no index".into()))?;
    let mut written = HashSet::new();
    for (pid, window) in windows {
        // How many copies of each row in the table the window may account for.
        let mut budget: HashMap<String, u64> = HashMap::new();
        for (_, row) in &window {
            let text = format!("{pid}:{row:?}");
            if budget.contains_key(&text) {
                continue;
            }
            let key: Vec<Value> = first.key_columns.iter().map(|&c| row[c].clone()).collect();
            let in_table = client
                .scan(&job.db, &job.table, key, None, None, 0)
                .await?
                .iter()
                .filter(|r| *r == row)
                .count() as u64;
            let earlier = before.get(&text).copied().unwrap_or(0);
            budget.insert(text, in_table.saturating_sub(earlier));
        }
        for (line, row) in &window {
            let left = budget.get_mut(&format!("{pid}:{row:?}")).expect("counted");
            if *left > 0 {
                *left -= 1;
                written.insert(*line);
            }
        }
    }
    Ok(written)
}

/// One partition's writer: puts rows in order, `IN_FLIGHT` at once, and checkpoints.
struct PartitionWriter {
    pid: u32,
    checkpoint: ImportCheckpoint,
    since_saved: u64,
}

impl PartitionWriter {
    async fn run(
        mut self,
        tm: Arc<TaskManager>,
        job: JobInfo,
        mut rows: mpsc::Receiver<Line>,
        done: Arc<AtomicU64>,
        stops: [Arc<AtomicBool>; 2],
    ) -> Result<()> {
        let client = tm.data().await?;
        let mut in_flight: JoinSet<(u64, std::result::Result<(), String>)> = JoinSet::new();
        // Lines dispatched, in order, with whether their put was acknowledged.
        let mut order: VecDeque<(u64, bool)> = VecDeque::new();
        let mut input_open = true;
        loop {
            // Stopped, failed elsewhere, or deposed: a new leader resumes from the
            // checkpoints, so no write may follow.
            if stops.iter().any(|s| s.load(Ordering::Acquire)) || !tm.is_leader() {
                return Ok(());
            }
            if input_open && in_flight.len() < IN_FLIGHT {
                match rows.recv().await {
                    Some((line, row)) => {
                        let (client, db, table) =
                            (client.clone(), job.db.clone(), job.table.clone());
                        order.push_back((line, false));
                        in_flight.spawn(async move {
                            let put = client.put(&db, &table, row).await;
                            (line, put.map(|_| ()).map_err(|e| e.to_string()))
                        });
                        continue;
                    }
                    None => input_open = false,
                }
            }
            let Some(finished) = in_flight.join_next().await else {
                break;
            };
            let (line, put) = finished.map_err(|e| TmError::Io(e.to_string()))?;
            put.map_err(|e| TmError::Cluster(format!("line {line}: {e}")))?;
            if let Some(entry) = order.iter_mut().find(|(l, _)| *l == line) {
                entry.1 = true;
            }
            while order.front().is_some_and(|(_, acked)| *acked) {
                let (line, _) = order.pop_front().expect("front");
                self.checkpoint.line = line;
                self.checkpoint.rows += 1;
                self.since_saved += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            if self.since_saved >= CHECKPOINT_ROWS {
                self.save(&tm, job.id).await?;
            }
        }
        self.save(&tm, job.id).await
    }

    async fn save(&mut self, tm: &TaskManager, id: u64) -> Result<()> {
        tm.save_checkpoint(id, self.pid, &self.checkpoint).await?;
        self.since_saved = 0;
        Ok(())
    }
}

/// The partition of a row: its first index's key, hashed as the SDK does.
fn partition_function(schema: &Schema, partitions: u32) -> Result<PartitionOf> {
    let first = schema
        .indexes
        .first()
        .cloned()
        .ok_or_else(|| TmError::InvalidArgument("the table has no index".into()))?;
    let schema = schema.clone();
    Ok(Arc::new(move |row: &[Value]| {
        // Rows are validated before they get here, so the key can be built.
        key::key_from_row(&schema, &first, row).map_or(0, |k| key::partition_of(&k, partitions))
    }))
}

pub async fn run(
    tm: &Arc<TaskManager>,
    job: &mut JobInfo,
    stop: &Arc<AtomicBool>,
    resumed: bool,
) -> Result<()> {
    let client = tm.data().await?;
    let schema = client.schema(&job.db, &job.table).await?;
    let partitions = client.partition_count(&job.db, &job.table).await?;
    let options = job.options.clone().unwrap_or_default();
    // Checked again on every run: a resumed job obeys the directory in force now.
    job.path = tm.files.input(&job.path)?.to_string_lossy().into_owned();

    let (path, schema_v, options_v) = (job.path.clone(), schema.clone(), options.clone());
    let (good, skipped) =
        tokio::task::spawn_blocking(move || validate(&path, &schema_v, &options_v))
            .await
            .map_err(|e| TmError::Io(e.to_string()))??;
    job.total = good;
    job.skipped = skipped;
    tm.save_job(job).await?;
    info!(id = job.id, rows = good, skipped, "import validated");

    let mut checkpoints = Vec::with_capacity(partitions as usize);
    for pid in 0..partitions {
        checkpoints.push(tm.checkpoint(job.id, pid).await?);
    }
    // The partition of each row, as the SDK computes it (first index's key).
    let partition_table = partition_function(&schema, partitions)?;
    let written = if resumed {
        let written =
            already_written(tm, job, &schema, partition_table.clone(), &checkpoints).await?;
        info!(
            id = job.id,
            rows = written.len(),
            "rows past the checkpoints already written"
        );
        written
    } else {
        HashSet::new()
    };

    let done = Arc::new(AtomicU64::new(
        checkpoints.iter().map(|c| c.rows).sum::<u64>() + written.len() as u64,
    ));
    let stop_all = Arc::new(AtomicBool::new(false));
    let mut writers = JoinSet::new();
    let mut senders = Vec::new();
    for (pid, checkpoint) in checkpoints.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Line>(4 * IN_FLIGHT);
        senders.push(tx);
        let writer = PartitionWriter {
            pid: pid as u32,
            checkpoint: *checkpoint,
            since_saved: 0,
        };
        writers.spawn(writer.run(
            tm.clone(),
            job.clone(),
            rx,
            done.clone(),
            [stop.clone(), stop_all.clone()],
        ));
    }

    // The reader: a blocking thread feeding the writers.
    let reader = {
        let (path, schema, options) = (job.path.clone(), schema.clone(), options.clone());
        let checkpoints = checkpoints.clone();
        let partition_table = partition_table.clone();
        tokio::task::spawn_blocking(move || {
            read_rows(
                &path,
                &schema,
                &options,
                |line, row| {
                    let pid = partition_table(&row) as usize;
                    if line <= checkpoints[pid].line || written.contains(&line) {
                        return Ok(());
                    }
                    senders[pid]
                        .blocking_send((line, row))
                        .map_err(|_| TmError::Io("the import stopped".into()))
                },
                |_, _| Ok(()),
            )
        })
    };

    // Progress into the job record every second, and the stop flag passed on.
    let mut outcome = Ok(());
    let mut reader = Some(reader);
    loop {
        tokio::select! {
            finished = writers.join_next() => match finished {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { outcome = Err(e); stop_all.store(true, Ordering::Release); }
                Some(Err(e)) => { outcome = Err(TmError::Io(e.to_string())); stop_all.store(true, Ordering::Release); }
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                job.done = done.load(Ordering::Relaxed);
                if !stop_all.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                    tm.save_job(job).await?;
                }
            }
        }
    }
    if let Some(reader) = reader.take() {
        // The reader ends once the writers are gone (its sends fail) or the file is read.
        let read = reader.await.map_err(|e| TmError::Io(e.to_string()))?;
        if outcome.is_ok() && !stop_all.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
            read?;
        }
    }
    job.done = done.load(Ordering::Relaxed);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::{ColumnType, Ttl};

    fn schema() -> Schema {
        Schema::new(
            &[
                ("id", ColumnType::String, false),
                ("v", ColumnType::Int64, true),
            ],
            &[(&["id"], None, Ttl::NONE)],
        )
        .unwrap()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    fn options(header: bool, delimiter: &str, skip: bool) -> CsvOptions {
        CsvOptions {
            header,
            delimiter: delimiter.into(),
            skip_bad_rows: skip,
        }
    }

    #[test]
    fn rows_come_with_their_line_numbers() {
        let f = file("id;v\n\"a;b\";1\nc;NULL\n\"multi\nline\";3\nd;4\n");
        let mut rows = Vec::new();
        read_rows(
            f.path().to_str().unwrap(),
            &schema(),
            &options(true, ";", false),
            |line, row| {
                rows.push((line, row));
                Ok(())
            },
            |line, reason| panic!("line {line}: {reason}"),
        )
        .unwrap();
        let lines: Vec<u64> = rows.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [2, 3, 4, 6], "a quoted field may span lines");
        assert_eq!(rows[0].1[0], Value::String("a;b".into()));
        assert_eq!(rows[1].1[1], Value::Null);
    }

    #[test]
    fn a_bad_line_fails_with_its_number_or_is_counted() {
        let f = file("a,1\nb,x\nc\nd,4\n");
        let path = f.path().to_str().unwrap();
        let err = validate(path, &schema(), &options(false, "", false)).unwrap_err();
        assert!(
            err.to_string().starts_with("line 2: `x` is not a valid"),
            "{err}"
        );
        assert_eq!(
            validate(path, &schema(), &options(false, "", true)).unwrap(),
            (2, 2),
            "two good rows, two skipped (a bad value, a missing column)"
        );
        let missing = file("NULL,1\n");
        let err = validate(
            missing.path().to_str().unwrap(),
            &schema(),
            &options(false, "", false),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("line 1"),
            "a null in a not-null column: {err}"
        );
    }
}
