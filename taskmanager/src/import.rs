//! Importing a CSV file into a table through the normal write path (the SDK, so
//! routing, replication and the quorum apply), one writer per partition.
//!
//! Exactly once, across taskmanager failovers and whatever an earlier run left in flight:
//! - the job has a writer id, chosen when it is submitted, and every run of it a new
//!   epoch, saved in the job record by the leader's fenced write. A run first registers
//!   its epoch on every partition; from then on the partitions refuse the writes of
//!   earlier runs (a deposed leader's late puts);
//! - every row is written with a sequence number that is its place among the file's rows
//!   of its partition (1, 2, …), the same in every run. A partition answers a row that an
//!   earlier run wrote with its first result instead of writing it again;
//! - so a run resumes from each partition's checkpoint (the rows acknowledged in order,
//!   recorded every `CHECKPOINT_ROWS` rows) and sends everything after it again: rows an
//!   earlier run wrote past the checkpoint are not written twice, however far it ran.
//!
//! A partition remembers a writer's recent sequence numbers until the writer has been
//! silent for the tablet's `client_expiry_secs` (an hour by default). A run that finds a
//! partition has forgotten rows its checkpoint says were written stops rather than risk
//! writing rows twice. Every line is parsed before anything is written, so a malformed
//! line fails the job (with its number) before it changes the table, unless bad lines
//! are to be skipped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_common::{key, Schema, Value};
use tessera_ns_client::Writer;
use tessera_proto::taskmanager::{CsvOptions, ImportCheckpoint, JobInfo};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::info;

use crate::error::{Result, TmError};
use crate::jobs::delimiter;
use crate::state::TaskManager;

/// Rows in one request to a partition.
const BATCH_ROWS: usize = 256;
/// Requests in flight per partition.
const BATCHES_IN_FLIGHT: usize = 4;
/// Rows between two checkpoints of a partition.
const CHECKPOINT_ROWS: u64 = 2_000;

/// A parsed row of the file: its line (from 1), its sequence number in its partition
/// (from 1) and its values.
struct Numbered {
    line: u64,
    seq: u64,
    row: Vec<Value>,
}

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

/// One partition's writer: sends its rows in order, in batches, a few at once, and
/// records how far every row is acknowledged.
struct PartitionWriter {
    pid: u32,
    checkpoint: ImportCheckpoint,
    since_saved: u64,
}

/// A batch sent and not yet settled: its last row's line and sequence number, its size,
/// whether it is acknowledged.
struct Sent {
    line: u64,
    seq: u64,
    rows: u64,
    acked: bool,
}

impl PartitionWriter {
    async fn run(
        mut self,
        tm: Arc<TaskManager>,
        job: JobInfo,
        writer: Writer,
        mut rows: mpsc::Receiver<Numbered>,
        done: Arc<AtomicU64>,
        stops: [Arc<AtomicBool>; 2],
    ) -> Result<()> {
        let client = tm.data().await?;
        let mut in_flight: JoinSet<(u64, Result<()>)> = JoinSet::new();
        let mut order: VecDeque<Sent> = VecDeque::new();
        let mut input_open = true;
        loop {
            // Stopped (by an operator, a lapsed lease, a lost session) or failed
            // elsewhere: the next run resumes from the checkpoints, so no write may
            // follow. Writes already sent are refused once that run registers.
            if stops.iter().any(|s| s.load(Ordering::Acquire)) {
                return Ok(());
            }
            // Batches not yet acknowledged in order, counted from the oldest: a batch
            // stuck in retries holds the others back, so no row runs more than
            // BATCHES_IN_FLIGHT batches past the checkpoint to be.
            if input_open && order.len() < BATCHES_IN_FLIGHT {
                match rows.recv().await {
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < BATCH_ROWS {
                            match rows.try_recv() {
                                Ok(next) => batch.push(next),
                                Err(_) => break,
                            }
                        }
                        let (first_line, last) = (batch[0].line, batch.last().expect("a row"));
                        order.push_back(Sent {
                            line: last.line,
                            seq: last.seq,
                            rows: batch.len() as u64,
                            acked: false,
                        });
                        let (client, db, table, seq) =
                            (client.clone(), job.db.clone(), job.table.clone(), last.seq);
                        let (last_line, rows) = (
                            last.line,
                            batch.into_iter().map(|r| (r.seq, r.row)).collect(),
                        );
                        in_flight.spawn(async move {
                            let put = client.put_batch_as(&db, &table, writer, rows).await;
                            (
                                seq,
                                put.map(|_| ()).map_err(|e| match TmError::from(e) {
                                    fenced @ TmError::Fenced(_) => fenced,
                                    e => TmError::Cluster(format!(
                                        "lines {first_line}-{last_line}: {e}"
                                    )),
                                }),
                            )
                        });
                        continue;
                    }
                    None => input_open = false,
                }
            }
            let Some(finished) = in_flight.join_next().await else {
                break;
            };
            let (seq, put) = finished.map_err(|e| TmError::Io(e.to_string()))?;
            put?;
            if let Some(sent) = order.iter_mut().find(|s| s.seq == seq) {
                sent.acked = true;
            }
            while order.front().is_some_and(|s| s.acked) {
                let sent = order.pop_front().expect("front");
                self.checkpoint.line = sent.line;
                self.checkpoint.rows = sent.seq;
                self.since_saved += sent.rows;
                done.fetch_add(sent.rows, Ordering::Relaxed);
                crate::metrics::METRICS.rows_imported.inc_by(sent.rows);
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

/// A file's size and modification time (ms since 1970), to tell that it changed.
fn file_identity(path: &str) -> Result<(u64, i64)> {
    let meta =
        std::fs::metadata(path).map_err(|e| TmError::Io(format!("cannot read {path}: {e}")))?;
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64);
    Ok((meta.len(), modified_ms))
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

    // Sequence numbers come from the rows' places in the file: a file that changed
    // would give them to other rows.
    let (size, modified_ms) = file_identity(&job.path)?;
    let (path, schema_v, options_v) = (job.path.clone(), schema.clone(), options.clone());
    let (good, skipped) =
        tokio::task::spawn_blocking(move || validate(&path, &schema_v, &options_v))
            .await
            .map_err(|e| TmError::Io(e.to_string()))??;
    if resumed
        && job.file_size != 0
        && (job.total, job.skipped, job.file_size, job.file_modified_ms)
            != (good, skipped, size, modified_ms)
    {
        return Err(TmError::InvalidArgument(format!(
            "{} changed since the import began ({} bytes, {} good and {} bad lines then; \
             {size} bytes, {good} and {skipped} now, or modified since); it cannot be resumed",
            job.path, job.file_size, job.total, job.skipped
        )));
    }
    (job.file_size, job.file_modified_ms) = (size, modified_ms);
    if job.writer_id == 0 {
        if resumed {
            return Err(TmError::InvalidArgument(
                "this import began under a taskmanager that did not give it a writer id, \
                 so resuming it could write rows twice; submit it again into an empty table"
                    .into(),
            ));
        }
        job.writer_id = Writer::new_id();
    }
    // A run of its own: the partitions refuse earlier runs' writes from here on.
    job.epoch += 1;
    job.total = good;
    job.skipped = skipped;
    tm.save_job(job).await?;
    let writer = Writer {
        id: job.writer_id,
        epoch: job.epoch,
    };
    let remembered = client.register_writer(&job.db, &job.table, writer).await?;
    info!(
        id = job.id,
        rows = good,
        skipped,
        epoch = job.epoch,
        "import validated, writer registered"
    );

    let mut checkpoints = Vec::with_capacity(partitions as usize);
    for pid in 0..partitions {
        let checkpoint = tm.checkpoint(job.id, pid).await?;
        let known = remembered
            .get(pid as usize)
            .copied()
            .ok_or_else(|| TmError::Cluster(format!("partition {pid} did not register")))?;
        // An earlier run registered everywhere (and may have written anywhere), or rows
        // are acknowledged: the partition must still know the writer and those rows.
        if known.previous_epoch < job.registered_epoch || checkpoint.rows > known.highest_seq {
            return Err(TmError::Cluster(format!(
                "partition {pid} no longer remembers this import's writes (it was silent \
                 past the tablets' client_expiry_secs, or its replicas were rebuilt): its \
                 first {} rows are written, but resuming could write later ones twice",
                checkpoint.rows
            )));
        }
        checkpoints.push(checkpoint);
    }
    if job.registered_epoch == 0 {
        job.registered_epoch = job.epoch;
        tm.save_job(job).await?;
    }
    // The partition of each row, as the SDK computes it (first index's key).
    let partition_table = partition_function(&schema, partitions)?;

    let done = Arc::new(AtomicU64::new(checkpoints.iter().map(|c| c.rows).sum()));
    let stop_all = Arc::new(AtomicBool::new(false));
    let mut writers = JoinSet::new();
    let mut senders = Vec::new();
    for (pid, checkpoint) in checkpoints.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Numbered>(2 * BATCH_ROWS);
        senders.push(tx);
        let partition_writer = PartitionWriter {
            pid: pid as u32,
            checkpoint: *checkpoint,
            since_saved: 0,
        };
        writers.spawn(partition_writer.run(
            tm.clone(),
            job.clone(),
            writer,
            rx,
            done.clone(),
            [stop.clone(), stop_all.clone()],
        ));
    }

    // The reader: a blocking thread numbering the rows of each partition and feeding
    // the writers those past the checkpoints.
    let reader = {
        let (path, schema, options) = (job.path.clone(), schema.clone(), options.clone());
        let checkpoints = checkpoints.clone();
        let partition_table = partition_table.clone();
        tokio::task::spawn_blocking(move || {
            let mut numbered = vec![0u64; checkpoints.len()];
            read_rows(
                &path,
                &schema,
                &options,
                |line, row| {
                    let pid = partition_table(&row) as usize;
                    numbered[pid] += 1;
                    let seq = numbered[pid];
                    if seq <= checkpoints[pid].rows {
                        return Ok(());
                    }
                    senders[pid]
                        .blocking_send(Numbered { line, seq, row })
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
                Some(Ok(Err(e))) => {
                    // A newer run taking over explains the rest.
                    if outcome.is_ok() || matches!(e, TmError::Fenced(_)) {
                        outcome = Err(e);
                    }
                    stop_all.store(true, Ordering::Release);
                }
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
    // A file written to while it was read may have lent its rows' numbers to others.
    if outcome.is_ok() && file_identity(&job.path)? != (size, modified_ms) {
        return Err(TmError::InvalidArgument(format!(
            "{} changed while it was imported: some rows may be missing or written twice; \
             import it again into an empty table",
            job.path
        )));
    }
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

    #[test]
    fn a_file_written_to_has_another_identity() {
        let f = file("a,1\n");
        let path = f.path().to_str().unwrap();
        let before = file_identity(path).unwrap();
        assert_eq!(file_identity(path).unwrap(), before);
        std::fs::write(f.path(), "a,1\nb,2\n").unwrap();
        assert_ne!(file_identity(path).unwrap(), before, "a longer file");
        assert!(file_identity("/nonexistent/file.csv").is_err());
    }
}
