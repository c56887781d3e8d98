//! Jobs of a test cluster's taskmanager: statements run through the `ns_client` binary
//! (logged in as root), jobs followed through the taskmanager's API.

use std::time::Duration;

use tessera_ns_client::nameserver::TaskManagerConnection;
use tessera_proto::taskmanager::{JobIdRequest, JobInfo};

/// How long a job may take before a test gives up on it.
pub const JOB_DEADLINE: Duration = Duration::from_secs(600);

pub struct Jobs {
    zk_cluster: String,
    connection: TaskManagerConnection,
}

impl Jobs {
    pub async fn connect(zk_cluster: &str) -> Jobs {
        Jobs {
            zk_cluster: zk_cluster.to_string(),
            connection: TaskManagerConnection::connect(zk_cluster, "/tessera")
                .await
                .expect("connect to the taskmanager"),
        }
    }

    /// The taskmanager leader, for calls of its own.
    pub fn connection(&mut self) -> &mut TaskManagerConnection {
        &mut self.connection
    }

    /// Runs an ns_client command; whether it succeeded, and its output.
    pub fn ns_client(&self, command: &str) -> (bool, String) {
        let output = crate::credentials::ns_client_command()
            .arg(format!("--zk_cluster={}", self.zk_cluster))
            .arg("--zk_root_path=/tessera")
            .arg(format!("--cmd={command}"))
            .output()
            .expect("run ns_client");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Runs an ns_client command that must succeed; its output.
    pub fn ok(&self, command: &str) -> String {
        let (ok, text) = self.ns_client(command);
        assert!(ok, "`{command}` failed:\n{text}");
        text
    }

    /// Submits a job through ns_client; its id.
    pub fn submit(&self, statement: &str) -> u64 {
        let out = self.ok(statement);
        out.split_whitespace()
            .nth(1)
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no job id in {out}"))
    }

    pub async fn show(&mut self, id: u64) -> Option<JobInfo> {
        self.connection
            .call(|mut c| async move { c.show_job(JobIdRequest { id }).await })
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Polls the job until `done` says so or [`JOB_DEADLINE`] passes; its last record.
    pub async fn poll_job(&mut self, id: u64, done: impl Fn(&JobInfo) -> bool) -> (bool, JobInfo) {
        let deadline = tokio::time::Instant::now() + JOB_DEADLINE;
        let mut last = JobInfo::default();
        while tokio::time::Instant::now() < deadline {
            if let Some(job) = self.show(id).await {
                last = job;
                if done(&last) {
                    return (true, last);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (false, last)
    }

    /// Waits for the job to end; its record.
    pub async fn wait_job(&mut self, id: u64) -> JobInfo {
        let (ended, last) = self
            .poll_job(id, |j| {
                matches!(j.state.as_str(), "Finished" | "Failed" | "Stopped")
            })
            .await;
        assert!(ended, "job {id} did not end: {last:?}");
        last
    }
}
