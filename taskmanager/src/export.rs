//! Exporting a table to a CSV file: every partition's rows, page by page from its leader,
//! written to `<path>.part`, fsynced and renamed to `<path>` once complete (see
//! [`AtomicFile`]), so a file at `path` is always a whole export. The path must lie in
//! the job data directory. Nulls are written `NULL`. A resumed export starts over.
//! Rows written to the table during the export may be missed or written twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tessera_common::Value;
use tessera_proto::taskmanager::JobInfo;

use crate::error::{Result, TmError};
use crate::files::AtomicFile;
use crate::jobs::delimiter;
use crate::state::TaskManager;

const PAGE: u32 = 10_000;

fn io(path: &str) -> impl Fn(csv::Error) -> TmError + '_ {
    move |e| TmError::Io(format!("writing {path}: {e}"))
}

pub async fn run(tm: &Arc<TaskManager>, job: &mut JobInfo, stop: &Arc<AtomicBool>) -> Result<()> {
    let client = tm.data().await?;
    let schema = client.schema(&job.db, &job.table).await?;
    let partitions = client.partition_count(&job.db, &job.table).await?;
    let options = job.options.clone().unwrap_or_default();
    job.total = client.count(&job.db, &job.table, Vec::new()).await?;
    job.done = 0;
    tm.save_job(job).await?;

    let target = tm.files.output(&job.path)?;
    let out = AtomicFile::create(&target, &format!("job{}", job.id))?;
    let part = out.part().display().to_string();
    let mut writer = csv::WriterBuilder::new()
        .delimiter(delimiter(&options)?)
        .from_writer(out);
    if options.header {
        writer
            .write_record(schema.columns.iter().map(|c| c.name.as_str()))
            .map_err(io(&part))?;
    }
    for pid in 0..partitions {
        let mut skip = 0u64;
        loop {
            if stop.load(Ordering::Acquire) || !tm.is_leader() {
                if let Ok(out) = writer.into_inner() {
                    out.abandon();
                }
                return Ok(());
            }
            let rows = client
                .partition_page(&job.db, &job.table, pid, skip, PAGE)
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                writer
                    .write_record(row.iter().map(|v| match v {
                        Value::Null => "NULL".to_string(),
                        other => other.to_string(),
                    }))
                    .map_err(io(&part))?;
            }
            skip += rows.len() as u64;
            job.done += rows.len() as u64;
            tm.save_job(job).await?;
        }
    }
    let out = writer
        .into_inner()
        .map_err(|e| TmError::Io(format!("writing {part}: {}", e.error())))?;
    out.commit()
}
