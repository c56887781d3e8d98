//! A `tessera-tablet` process under test.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::GetTableStatusRequest;

use crate::process::{self, free_port, log_tail};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running tablet; killed with SIGKILL when dropped.
pub struct TabletProcess {
    child: Option<Child>,
    pub endpoint: String,
    pub db_root_path: PathBuf,
    pub log_path: PathBuf,
    args: Vec<String>,
    starts: u32,
}

impl TabletProcess {
    /// Starts a tablet on a fresh loopback port with its data under `dir`, passing
    /// `args` (e.g. `--binlog_fsync=group`) through, and waits until it serves.
    pub async fn start(dir: &Path, args: &[&str]) -> TabletProcess {
        std::fs::create_dir_all(dir).expect("create the tablet's directory");
        let mut tablet = TabletProcess {
            child: None,
            endpoint: format!("127.0.0.1:{}", free_port()),
            db_root_path: dir.join("db"),
            log_path: dir.join("tablet.log"),
            args: args.iter().map(|a| a.to_string()).collect(),
            starts: 0,
        };
        tablet.spawn().await;
        tablet
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "tablet already running");
        self.starts += 1;
        let mut args = vec![
            format!("--endpoint={}", self.endpoint),
            format!("--db_root_path={}", self.db_root_path.display()),
        ];
        args.extend(self.args.iter().cloned());
        crate::credentials::with_server_credentials(&mut args, false);
        let child = process::spawn_logged("tessera-tablet", &args, &self.log_path);
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Serving, and in a cluster holding its lease (so leaders it is given can write).
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let in_cluster = self.args.iter().any(|a| a.starts_with("--zk_cluster="));
        let leases_before = self.log().matches("ZooKeeper lease acquired").count();
        loop {
            if let Ok(mut client) = crate::tablet_client(&self.endpoint).await {
                let serving = client
                    .get_table_status(GetTableStatusRequest::default())
                    .await
                    .is_ok();
                let leased = !in_cluster
                    || self.log().matches("ZooKeeper lease acquired").count() > leases_before;
                if serving && leased {
                    return;
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "tablet exited with {status} during start-up:\n{}",
                    log_tail(&self.log_path, 30)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "tablet at {} not serving after {START_TIMEOUT:?}:\n{}",
                    self.endpoint,
                    log_tail(&self.log_path, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> TabletClient<tessera_common::auth::AuthChannel> {
        crate::tablet_client(&self.endpoint)
            .await
            .expect("connect to tablet")
            // What the SDK accepts by default, so tests see what users see.
            .max_decoding_message_size(tessera_ns_client::DEFAULT_MAX_RESPONSE_BYTES)
            .max_encoding_message_size(256 << 20)
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("tablet is running").id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }

    /// SIGTERM, then wait for the process to exit on its own.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("tablet is running");
        process::signal(&child, libc::SIGTERM);
        match process::wait_exit(&mut child, timeout) {
            Some(status) => status,
            None => {
                process::kill9(&mut child);
                panic!(
                    "tablet ignored SIGTERM for {timeout:?}:\n{}",
                    log_tail(&self.log_path, 30)
                );
            }
        }
    }

    /// SIGSTOP: the process freezes (its connections stay open but nothing answers).
    pub fn pause(&self) {
        process::signal(
            self.child.as_ref().expect("tablet is running"),
            libc::SIGSTOP,
        );
    }

    /// SIGCONT after [`TabletProcess::pause`].
    pub fn resume(&self) {
        process::signal(
            self.child.as_ref().expect("tablet is running"),
            libc::SIGCONT,
        );
    }

    /// Starts the process again on the same endpoint and data directory.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// [`TabletProcess::restart`] with `args` instead of the ones it was started with
    /// (which later restarts keep).
    pub async fn restart_with_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.spawn().await;
    }

    /// The arguments the process starts with (beyond its endpoint and data directory).
    pub fn args(&self) -> Vec<String> {
        self.args.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for TabletProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
