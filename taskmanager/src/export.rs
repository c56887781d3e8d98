//! Exporting a table to a CSV file: every partition's rows, page by page from its leader,
//! written to `<path>.part`, fsynced and renamed to `<path>` once complete (see
//! [`AtomicFile`]), so a file at `path` is always a whole export. The path must lie in
//! the job data directory. Nulls are written `NULL`. A resumed export starts over.
//! Each partition is read page by page, each page resuming after the last row of the one
//! before (a cursor, not a count of rows to skip), so no row is written twice and none
//! that stays in the table is missed; rows written during the export may or may not be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tessera_common::Value;
use tessera_proto::taskmanager::JobInfo;

use crate::error::{Result, TmError};
use crate::files::AtomicFile;
use crate::jobs::delimiter;
use crate::state::TaskManager;

/// Rows asked for per page; the tablet may send fewer (it bounds a page by bytes too).
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
        let mut after = Vec::new();
        loop {
            if stop.load(Ordering::Acquire) || !tm.is_leader() {
                if let Ok(out) = writer.into_inner() {
                    out.abandon();
                }
                return Ok(());
            }
            let page = client
                .partition_page(&job.db, &job.table, pid, &after, PAGE)
                .await?;
            for row in &page.rows {
                writer
                    .write_record(row.iter().map(|v| match v {
                        Value::Null => "NULL".to_string(),
                        other => other.to_string(),
                    }))
                    .map_err(io(&part))?;
            }
            job.done += page.rows.len() as u64;
            tm.save_job(job).await?;
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    let out = writer
        .into_inner()
        .map_err(|e| TmError::Io(format!("writing {part}: {}", e.error())))?;
    out.commit()
}
