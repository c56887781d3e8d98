//! The taskmanager's jobs: `load`, `export`, `showjobs`, `showjob`, `stopjob`.

use serde_json::Value;
use tessera_proto::taskmanager::{JobIdRequest, ShowJobsRequest, SubmitJobRequest};

use super::{Call, Command, Reply, MANY, SHOW};
use crate::format::{timestamp, Rows};
use crate::jobs::{parse_export, parse_load, progress, EXPORT_USAGE, LOAD_USAGE};
use crate::shell::Shell;

pub const COMMANDS: &[Command] = &[
    Command::new(
        "load",
        LOAD_USAGE,
        "import a CSV file into a table (a taskmanager job)",
        (1, MANY),
        load,
    )
    .statement()
    .details(
        "The file is read by the taskmanager, under its --job_data_dir. Each row is \
         written exactly once, even when the job resumes on another taskmanager.",
    ),
    Command::new(
        "export",
        EXPORT_USAGE,
        "export a table to a CSV file (a taskmanager job)",
        (1, MANY),
        export,
    )
    .statement(),
    Command::new(
        "showjobs",
        "showjobs",
        "the taskmanager's jobs and their progress",
        (0, 0),
        showjobs,
    )
    .flags(SHOW),
    Command::new("showjob", "showjob id", "one job in full", (1, 1), showjob).flags(SHOW),
    Command::new(
        "stopjob",
        "stopjob id",
        "stop a job that has not ended",
        (1, 1),
        stopjob,
    ),
];

async fn submit(shell: &mut Shell, request: SubmitJobRequest) -> Result<String, String> {
    let job = shell
        .tm(request, |mut c, r| async move { c.submit_job(r).await })
        .await?;
    Ok(format!(
        "job {} submitted: {} of {}.{} ({}); `showjob {}` follows it",
        job.id, job.job_type, job.db, job.table, job.path, job.id
    ))
}

fn load(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = parse_load(&call.line, &shell.db)?;
        submit(shell, request).await
    })
}

fn export(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let request = parse_export(&call.line, &shell.db)?;
        submit(shell, request).await
    })
}

fn showjobs(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let jobs = shell
            .tm(ShowJobsRequest {}, |mut c, r| async move {
                c.show_jobs(r).await
            })
            .await?
            .jobs;
        let mut out = Rows::new(&[
            "id",
            "job_type",
            "state",
            "table",
            "progress",
            "start_time",
            "end_time",
            "error",
        ]);
        for job in jobs {
            out.push(vec![
                job.id.into(),
                job.job_type.clone().into(),
                job.state.clone().into(),
                if job.table.is_empty() {
                    Value::Null
                } else {
                    format!("{}.{}", job.db, job.table).into()
                },
                progress(&job).into(),
                timestamp(job.start_time_ms).into(),
                timestamp(job.end_time_ms).into(),
                job.error.clone().into(),
            ]);
        }
        Ok(out.render(call.format))
    })
}

fn showjob(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let id: u64 = call.number(0, "a job id")?;
        let job = shell
            .tm(JobIdRequest { id }, |mut c, r| async move {
                c.show_job(r).await
            })
            .await?;
        let options = job.options.clone().unwrap_or_default();
        let mut out = Rows::new(&["field", "value"]);
        for (field, value) in [
            ("id", Value::from(job.id)),
            ("job_type", job.job_type.clone().into()),
            ("state", job.state.clone().into()),
            ("table", format!("{}.{}", job.db, job.table).into()),
            ("path", job.path.clone().into()),
            (
                "options",
                format!(
                    "header={}, delimiter='{}', skip_bad_rows={}",
                    options.header,
                    if options.delimiter.is_empty() {
                        ","
                    } else {
                        &options.delimiter
                    },
                    options.skip_bad_rows
                )
                .into(),
            ),
            ("progress", progress(&job).into()),
            ("skipped", job.skipped.into()),
            ("start_time", timestamp(job.start_time_ms).into()),
            ("end_time", timestamp(job.end_time_ms).into()),
            ("taskmanager", job.endpoint.clone().into()),
            ("error", job.error.clone().into()),
        ] {
            out.push(vec![field.into(), value]);
        }
        Ok(out.render(call.format))
    })
}

fn stopjob(shell: &mut Shell, call: Call) -> Reply<'_> {
    Box::pin(async move {
        let id: u64 = call.number(0, "a job id")?;
        let job = shell
            .tm(JobIdRequest { id }, |mut c, r| async move {
                c.stop_job(r).await
            })
            .await?;
        Ok(format!("job {} {}", job.id, job.state.to_ascii_lowercase()))
    })
}
