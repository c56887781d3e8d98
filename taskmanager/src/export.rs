//! Exporting a table to a CSV file: every partition's rows, page by page from its leader,
//! written to `<path>.part`, fsynced and renamed to `<path>` once complete (see
//! [`AtomicFile`]), so a file at `path` is always a whole export. The path must lie in
//! the job data directory. Nulls are written `NULL`. A resumed export starts over.
//!
//! The file is the table at one moment. Before writing anything the export opens a
//! consistent read of every partition (its first page): each leader fixes its applied
//! offset and its clock, and every later page, resuming by cursor after the last row
//! of the one before, shows the partition as of that moment. Rows written during the
//! export are left out, rows expiring by TTL during it stay, and none shifts another.
//! The moments go into the job (`moments`) and beside the file, in `<path>.offsets`
//! (`pid offset time_ms` per line). A delete during the export still removes its rows
//! from it.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tessera_common::Value;
use tessera_proto::taskmanager::{ExportMoment, JobInfo};

use crate::error::{Result, TmError};
use crate::files::AtomicFile;
use crate::jobs::delimiter;
use crate::state::TaskManager;

/// Rows asked for per page; the tablet may send fewer (it bounds a page by bytes too).
const PAGE: u32 = 10_000;
/// How often the partitions not yet written are touched to keep their reads open.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(20);

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
    // Every partition's moment first, so that they are close together: one row each.
    let mut first_pages = Vec::with_capacity(partitions as usize);
    job.moments.clear();
    for pid in 0..partitions {
        let (page, moment) = client
            .partition_consistent_page(&job.db, &job.table, pid, 1)
            .await?;
        job.moments.push(ExportMoment {
            pid,
            offset: moment.offset,
            time_ms: moment.time_ms,
        });
        first_pages.push(page);
    }
    tm.save_job(job).await?;
    // Where each partition's read goes on: touched now and then while earlier partitions
    // are written, so that their leaders keep the moment's rows (they stop keeping them a
    // minute after the last page).
    let waiting: Vec<Option<Vec<u8>>> = first_pages.iter().map(|p| p.next.clone()).collect();
    let mut touched = std::time::Instant::now();
    for (pid, first) in (0..partitions).zip(first_pages) {
        let mut page = first;
        loop {
            if touched.elapsed() >= KEEP_ALIVE {
                for (later, cursor) in waiting.iter().enumerate().skip(pid as usize + 1) {
                    if let Some(cursor) = cursor {
                        client
                            .partition_page(&job.db, &job.table, later as u32, cursor, 1)
                            .await?;
                    }
                }
                touched = std::time::Instant::now();
            }
            if stop.load(Ordering::Acquire) || !tm.is_leader() {
                if let Ok(out) = writer.into_inner() {
                    out.abandon();
                }
                return Ok(());
            }
            for row in &page.rows {
                writer
                    .write_record(row.iter().map(|v| match v {
                        Value::Null => "NULL".to_string(),
                        other => other.to_string(),
                    }))
                    .map_err(io(&part))?;
            }
            job.done += page.rows.len() as u64;
            crate::metrics::METRICS
                .rows_exported
                .inc_by(page.rows.len() as u64);
            tm.save_job(job).await?;
            let Some(after) = page.next else {
                break;
            };
            page = client
                .partition_page(&job.db, &job.table, pid, &after, PAGE)
                .await?;
        }
    }
    let out = writer
        .into_inner()
        .map_err(|e| TmError::Io(format!("writing {part}: {}", e.error())))?;
    // An earlier export's moments must not stay beside this one's file: they go first,
    // and this export's are written once its file is in place.
    let offsets_path = target.with_file_name(format!(
        "{}.offsets",
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    match std::fs::remove_file(&offsets_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(TmError::Io(format!(
                "removing {}: {e}",
                offsets_path.display()
            )))
        }
        _ => {}
    }
    out.commit()?;
    let mut offsets = AtomicFile::create(&offsets_path, &format!("job{}", job.id))?;
    for moment in &job.moments {
        writeln!(
            offsets,
            "{} {} {}",
            moment.pid, moment.offset, moment.time_ms
        )
        .map_err(|e| TmError::Io(format!("writing {}: {e}", offsets_path.display())))?;
    }
    offsets.commit()?;
    Ok(())
}
