//! Submitting, running, stopping and resuming jobs. A job runs on the leader only; its
//! record is rewritten as it progresses, so a new leader resumes every job that had not
//! ended (an import from its checkpoints, an export or a snapshot from the start).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tessera_proto::taskmanager::{CsvOptions, JobInfo, SubmitJobRequest};
use tracing::{info, warn};

use crate::error::{Result, TmError};
use crate::state::{is_ended, now_ms, TaskManager, FAILED, FINISHED, RUNNING, STOPPED, SUBMITTED};
use crate::{export, import, snapshot};

pub const IMPORT: &str = "ImportData";
pub const EXPORT: &str = "ExportData";
pub const SNAPSHOT: &str = "SnapshotAll";

/// The delimiter of a job's CSV options: one ASCII character, `,` by default.
pub fn delimiter(options: &CsvOptions) -> Result<u8> {
    match options.delimiter.as_bytes() {
        [] => Ok(b','),
        [d] if d.is_ascii() && *d != b'"' && *d != b'\n' && *d != b'\r' => Ok(*d),
        _ => Err(TmError::InvalidArgument(format!(
            "delimiter must be one ASCII character other than a quote or a line break, not `{}`",
            options.delimiter
        ))),
    }
}

impl TaskManager {
    /// Checks a request, records the job and starts it.
    pub async fn submit(self: &Arc<Self>, request: SubmitJobRequest) -> Result<JobInfo> {
        self.lock().await?;
        let options = request.options.clone().unwrap_or_default();
        let db = if request.db.is_empty() {
            "default".to_string()
        } else {
            request.db.clone()
        };
        let mut path = request.path.clone();
        match request.job_type.as_str() {
            IMPORT | EXPORT => {
                delimiter(&options)?;
                if request.path.is_empty() {
                    return Err(TmError::InvalidArgument("a file path is required".into()));
                }
                // The table must exist (its schema says how to read and write rows).
                self.data().await?.schema(&db, &request.table).await?;
                // Only files under the job data directory; the job keeps the
                // resolved path, so a resumed job uses the same file.
                let resolved = if request.job_type == IMPORT {
                    self.files.input(&request.path)?
                } else {
                    self.files.output(&request.path)?
                };
                path = resolved.to_string_lossy().into_owned();
            }
            SNAPSHOT => {}
            other => {
                return Err(TmError::InvalidArgument(format!(
                    "unknown job type `{other}` (one of {IMPORT}, {EXPORT}, {SNAPSHOT})"
                )))
            }
        }
        let job_type_is_import = request.job_type == IMPORT;
        let job = self
            .create_job(JobInfo {
                job_type: request.job_type,
                state: SUBMITTED.into(),
                db,
                table: request.table,
                path,
                options: Some(options),
                start_time_ms: now_ms(),
                endpoint: self.endpoint.clone(),
                // All runs of an import write as one writer (see `import`).
                writer_id: if job_type_is_import {
                    tessera_ns_client::Writer::new_id()
                } else {
                    0
                },
                ..JobInfo::default()
            })
            .await?;
        info!(id = job.id, job_type = %job.job_type, table = %job.table, "job submitted");
        self.spawn_job(job.clone());
        Ok(job)
    }

    pub async fn stop_job(&self, id: u64) -> Result<JobInfo> {
        self.lock().await?;
        let job = self.job(id).await?;
        if is_ended(&job) {
            return Err(TmError::InvalidArgument(format!(
                "job {id} already ended ({})",
                job.state
            )));
        }
        // Its run ends for good: not taken for an unsettled one and run again.
        self.stopping.lock().insert(id);
        let stopped = self.stop_and_record(id).await;
        self.stopping.lock().remove(&id);
        if stopped.is_err() {
            // The record still says it runs: whoever leads with a valid lease runs it.
            self.orphans.lock().insert(id);
        }
        stopped
    }

    async fn stop_and_record(&self, id: u64) -> Result<JobInfo> {
        // Stop the run first and let it end, so its last progress write cannot land
        // after (and over) the Stopped record.
        if let Some(flag) = self.running.lock().get(&id) {
            flag.store(true, Ordering::Release);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.running.lock().contains_key(&id) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut job = self.job(id).await?;
        job.state = STOPPED.into();
        job.end_time_ms = now_ms();
        self.save_job(&job).await?;
        info!(id, "job stopped");
        Ok(job)
    }

    /// After winning the election: every job that had not ended runs again.
    pub(crate) async fn resume_jobs(self: Arc<Self>) {
        match self.jobs().await {
            Ok(jobs) => {
                for job in jobs.into_iter().filter(|j| !is_ended(j)) {
                    info!(id = job.id, job_type = %job.job_type, "resuming job");
                    self.spawn_job(job);
                }
            }
            Err(e) => warn!(error = %e, "cannot list jobs to resume"),
        }
    }

    pub(crate) fn spawn_job(self: &Arc<Self>, job: JobInfo) {
        let stop = Arc::new(AtomicBool::new(false));
        let id = job.id;
        {
            let mut running = self.running.lock();
            if running.contains_key(&id) {
                return;
            }
            running.insert(id, stop.clone());
        }
        let tm = self.clone();
        tokio::spawn(async move {
            let settled = tm.run_job(job, stop.clone()).await;
            tm.running.lock().remove(&id);
            // Ended without settling the job (the lease lapsed, a record could not be
            // written, a newer run took over): run again while the lease is valid,
            // unless an operator stopped it.
            if !settled && !tm.stopping.lock().contains(&id) {
                tm.orphans.lock().insert(id);
            }
        });
    }

    /// Runs a job; whether its record now says how it ended (false: it is to run again
    /// unless an operator stopped it).
    async fn run_job(self: &Arc<Self>, job: JobInfo, stop: Arc<AtomicBool>) -> bool {
        // The record as it is now: a listing may be older than a stop or an earlier run.
        let mut job = match self.job(job.id).await {
            Ok(job) if is_ended(&job) => return true,
            Ok(job) => job,
            Err(TmError::NoSuchJob(_)) => return true,
            Err(e) => {
                warn!(id = job.id, error = %e, "cannot read a job before running it");
                return false;
            }
        };
        let resumed = job.state == RUNNING;
        job.state = RUNNING.into();
        job.endpoint = self.endpoint.clone();
        if self.save_job(&job).await.is_err() {
            return false;
        }
        let outcome = match job.job_type.as_str() {
            IMPORT => import::run(self, &mut job, &stop, resumed).await,
            EXPORT => export::run(self, &mut job, &stop).await,
            SNAPSHOT => snapshot::run(self, &mut job, &stop).await,
            other => Err(TmError::InvalidArgument(format!(
                "unknown job type {other}"
            ))),
        };
        // Stopped by an operator (who writes the record), deposed or suspended (the
        // leader with a valid lease runs it again) or fenced by a newer run: this run
        // has nothing more to say.
        if stop.load(Ordering::Acquire)
            || !self.is_leader()
            || matches!(outcome, Err(TmError::Fenced(_) | TmError::Suspended(_)))
        {
            return false;
        }
        match outcome {
            Ok(()) => {
                job.state = FINISHED.into();
                info!(id = job.id, done = job.done, "job finished");
            }
            Err(e) => {
                job.state = FAILED.into();
                job.error = e.to_string();
                warn!(id = job.id, error = %job.error, "job failed");
            }
        }
        job.end_time_ms = now_ms();
        match self.save_job(&job).await {
            Ok(()) => true,
            Err(e) => {
                warn!(id = job.id, error = %e, "cannot record the end of a job");
                false
            }
        }
    }
}
