//! A `tessera-nameserver` process under test.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::ShowNsRequest;
use tonic::transport::Channel;

use crate::process::{self, free_port, log_tail};
use crate::ZooKeeper;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running nameserver; killed with SIGKILL when dropped.
pub struct NameserverProcess {
    child: Option<Child>,
    pub endpoint: String,
    pub log_path: PathBuf,
    args: Vec<String>,
}

impl NameserverProcess {
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
        std::fs::create_dir_all(dir).expect("create the nameserver's directory");
        let endpoint = format!("127.0.0.1:{}", free_port());
        let args = vec![
            format!("--endpoint={endpoint}"),
            format!("--zk_cluster={}", zk.connect_string()),
            "--zk_root_path=/tessera".to_string(),
            format!("--zk_session_timeout={session_timeout_ms}"),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        let mut ns = NameserverProcess {
            child: None,
            endpoint,
            log_path: dir.join("nameserver.log"),
            args,
        };
        ns.spawn().await;
        ns
    }

    async fn spawn(&mut self) {
        self.child = Some(process::spawn_logged(
            "tessera-nameserver",
            &self.args,
            &self.log_path,
        ));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut client) =
                NameserverClient::connect(format!("http://{}", self.endpoint)).await
            {
                if client.show_ns(ShowNsRequest {}).await.is_ok() {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nameserver exited with {status}:\n{}",
                    log_tail(&self.log_path, 30)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nameserver at {} not serving after {START_TIMEOUT:?}:\n{}",
                self.endpoint,
                log_tail(&self.log_path, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this nameserver leads (its HTTP leader check answers 200).
    pub async fn wait_leader(&self) {
        crate::wait_until_async(START_TIMEOUT, "the nameserver to lead", || {
            let endpoint = self.endpoint.clone();
            async move { crate::process::http_get(&endpoint, "/api/leader-check").0 == 200 }
        })
        .await;
    }

    pub async fn client(&self) -> NameserverClient<Channel> {
        NameserverClient::connect(format!("http://{}", self.endpoint))
            .await
            .expect("connect to nameserver")
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for NameserverProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
