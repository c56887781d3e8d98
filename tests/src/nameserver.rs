//! An elected server process under test: `tessera-nameserver` or `tessera-taskmanager`.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;
use tessera_common::auth::AuthChannel;

use tessera_proto::nameserver::nameserver_client::NameserverClient;

use crate::process::{self, free_port, log_tail};
use crate::ZooKeeper;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running nameserver or taskmanager; killed with SIGKILL when dropped.
pub struct ElectedProcess {
    binary: &'static str,
    child: Option<Child>,
    pub endpoint: String,
    pub log_path: PathBuf,
    args: Vec<String>,
}

/// The nameserver's process (most tests start only these).
pub type NameserverProcess = ElectedProcess;

impl ElectedProcess {
    /// Starts a nameserver in `zk`'s cluster (root `/tessera`) and waits until it answers.
    pub async fn start(dir: &Path, zk: &ZooKeeper, session_timeout_ms: u64) -> NameserverProcess {
        Self::start_with(dir, zk, session_timeout_ms, &[]).await
    }

    /// As [`NameserverProcess::start`], with more flags.
    pub async fn start_with(
        dir: &Path,
        zk: &ZooKeeper,
        session_timeout_ms: u64,
        extra: &[&str],
    ) -> NameserverProcess {
        Self::start_binary("tessera-nameserver", dir, zk, session_timeout_ms, extra).await
    }

    /// A taskmanager in `zk`'s cluster (root `/tessera`), once it answers. Its jobs read
    /// and write files only under `job_data_dir`.
    pub async fn start_taskmanager(
        dir: &Path,
        zk: &ZooKeeper,
        session_timeout_ms: u64,
        job_data_dir: &Path,
    ) -> ElectedProcess {
        Self::start_taskmanager_with(dir, zk, session_timeout_ms, job_data_dir, &[]).await
    }

    /// As [`ElectedProcess::start_taskmanager`], with more flags.
    pub async fn start_taskmanager_with(
        dir: &Path,
        zk: &ZooKeeper,
        session_timeout_ms: u64,
        job_data_dir: &Path,
        extra: &[&str],
    ) -> ElectedProcess {
        let job_data_dir = format!("--job_data_dir={}", job_data_dir.display());
        let mut args = vec![job_data_dir.as_str()];
        args.extend_from_slice(extra);
        Self::start_binary("tessera-taskmanager", dir, zk, session_timeout_ms, &args).await
    }

    async fn start_binary(
        binary: &'static str,
        dir: &Path,
        zk: &ZooKeeper,
        session_timeout_ms: u64,
        extra: &[&str],
    ) -> ElectedProcess {
        std::fs::create_dir_all(dir).expect("create the process's directory");
        let endpoint = format!("127.0.0.1:{}", free_port());
        let args = vec![
            format!("--endpoint={endpoint}"),
            format!("--zk_cluster={}", zk.connect_string()),
            "--zk_root_path=/tessera".to_string(),
            format!("--zk_session_timeout={session_timeout_ms}"),
        ];
        let mut args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        crate::credentials::with_server_credentials(&mut args, binary == "tessera-nameserver");
        let mut ns = ElectedProcess {
            binary,
            child: None,
            endpoint,
            log_path: dir.join(format!("{binary}.log")),
            args,
        };
        ns.spawn().await;
        ns
    }

    async fn spawn(&mut self) {
        self.child = Some(process::spawn_logged(
            self.binary,
            &self.args,
            &self.log_path,
        ));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            // HTTP health on the gRPC port answers once it serves.
            if std::net::TcpStream::connect(&self.endpoint).is_ok()
                && process::http_get(&self.endpoint, "/api/health").0 == 200
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited with {status}:\n{}",
                    self.binary,
                    log_tail(&self.log_path, 30)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} at {} not serving after {START_TIMEOUT:?}:\n{}",
                self.binary,
                self.endpoint,
                log_tail(&self.log_path, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until it leads (its HTTP leader check answers 200).
    pub async fn wait_leader(&self) {
        crate::wait_until_async(START_TIMEOUT, &format!("{} to lead", self.binary), || {
            let endpoint = self.endpoint.clone();
            async move { crate::process::http_get(&endpoint, "/api/leader-check").0 == 200 }
        })
        .await;
    }

    pub async fn client(&self) -> NameserverClient<AuthChannel> {
        NameserverClient::new(tessera_common::auth::with_credentials(
            crate::channel(&self.endpoint)
                .await
                .expect("connect to nameserver"),
        ))
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGSTOP: the process freezes (its connections stay open but nothing answers).
    pub fn pause(&self) {
        process::signal(
            self.child.as_ref().expect("process is running"),
            libc::SIGSTOP,
        );
    }

    /// SIGCONT after [`ElectedProcess::pause`].
    pub fn resume(&self) {
        process::signal(
            self.child.as_ref().expect("process is running"),
            libc::SIGCONT,
        );
    }
}

impl Drop for ElectedProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
