//! Starting and stopping a taskmanager.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tessera_common::coordination::ZkSettings;
use tessera_proto::taskmanager::task_manager_server::TaskManagerServer;
use tracing::info;

use crate::files::JobFiles;
use crate::service::TaskManagerService;
use crate::state::TaskManager;

#[derive(Debug, Clone)]
pub struct TaskManagerConfig {
    pub endpoint: String,
    pub zk_cluster: String,
    pub zk_root_path: String,
    pub zk_session_timeout: Duration,
    /// The only directory jobs read and write files in (created if missing).
    pub job_data_dir: std::path::PathBuf,
}

impl TaskManagerConfig {
    pub fn validate(&self) -> Result<(), String> {
        tessera_common::server_process::validate_elected(
            "taskmanager",
            &self.endpoint,
            &self.zk_cluster,
            &self.zk_root_path,
            self.zk_session_timeout,
        )
    }
}

/// Runs a taskmanager until `shutdown` completes.
pub async fn run(
    config: TaskManagerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid taskmanager configuration")?;
    let addr: SocketAddr = tokio::net::lookup_host(&config.endpoint)
        .await
        .with_context(|| format!("cannot resolve endpoint {}", config.endpoint))?
        .next()
        .with_context(|| format!("endpoint {} resolves to nothing", config.endpoint))?;
    let files = JobFiles::open(&config.job_data_dir).with_context(|| {
        format!(
            "cannot use the job data directory {}",
            config.job_data_dir.display()
        )
    })?;
    info!(job_data_dir = %files.root().display(), "jobs read and write files only here");
    let state = TaskManager::new(
        config.endpoint.clone(),
        ZkSettings {
            cluster: config.zk_cluster.clone(),
            root: config.zk_root_path.clone(),
            session_timeout: config.zk_session_timeout,
        },
        files,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(state.clone().run_election(stopped));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    info!(endpoint = %config.endpoint, "taskmanager serving");
    let grpc = tonic::service::Routes::new(TaskManagerServer::new(TaskManagerService::new(
        state.clone(),
    )))
    .prepare()
    .into_axum_router();
    let grpc = crate::metrics::METRICS.grpc.clone().instrument(grpc);
    let app = crate::http::with_http(grpc, state);
    // gRPC and HTTP/1.1 (or HTTP/2 over TLS) share the port, under TLS when configured.
    let served = tessera_common::tls::server_builder()
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(app))
        .serve_with_incoming_shutdown(tessera_common::tls::incoming(listener), shutdown)
        .await;
    let _ = stop.send(true);
    let _ = election.await;
    info!("taskmanager stopped");
    served.context("gRPC server failed")
}
