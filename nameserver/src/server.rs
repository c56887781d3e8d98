//! Starting and stopping a nameserver.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tessera_common::coordination::ZkSettings;
use tessera_proto::nameserver::nameserver_server::NameserverServer;
use tracing::info;

use crate::schedule::{run_snapshot_schedule, SnapshotSchedule};
use crate::service::NameserverService;
use crate::state::{Nameserver, TaskFault};

#[derive(Debug, Clone)]
pub struct NameserverConfig {
    pub endpoint: String,
    pub zk_cluster: String,
    pub zk_root_path: String,
    pub zk_session_timeout: Duration,
    /// Every op task fails its op after this long.
    pub task_timeout: Duration,
    pub snapshot_schedule: SnapshotSchedule,
    /// Fault injection for tests: a fault for the first run of one op task.
    pub inject_task_fault: Option<TaskFault>,
    /// The hash of root's first password (`--root_password_file`).
    pub root_password_hash: Option<String>,
}

impl NameserverConfig {
    pub fn validate(&self) -> Result<(), String> {
        tessera_common::server_process::validate_elected(
            "nameserver",
            &self.endpoint,
            &self.zk_cluster,
            &self.zk_root_path,
            self.zk_session_timeout,
        )
    }
}

/// Runs a nameserver until `shutdown` completes.
pub async fn run(
    config: NameserverConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid nameserver configuration")?;
    let addr: SocketAddr = tokio::net::lookup_host(&config.endpoint)
        .await
        .with_context(|| format!("cannot resolve endpoint {}", config.endpoint))?
        .next()
        .with_context(|| format!("endpoint {} resolves to nothing", config.endpoint))?;
    let state = Nameserver::new(
        config.endpoint.clone(),
        ZkSettings {
            cluster: config.zk_cluster.clone(),
            root: config.zk_root_path.clone(),
            session_timeout: config.zk_session_timeout,
        },
        config.task_timeout,
    );
    if let Some(hash) = &config.root_password_hash {
        state.set_root_password_hash(hash.clone());
    }
    if let Some(fault) = &config.inject_task_fault {
        state.inject_task_fault(fault.clone());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(state.clone().run_election(stopped.clone()));
    let ops = tokio::spawn(state.clone().run_ops(stopped.clone()));
    tokio::spawn(run_snapshot_schedule(
        state.clone(),
        config.snapshot_schedule,
        stopped,
    ));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    info!(endpoint = %config.endpoint, "nameserver serving");
    let grpc =
        tonic::service::Routes::new(NameserverServer::new(NameserverService::new(state.clone())))
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
    let _ = ops.await;
    info!("nameserver stopped");
    served.context("gRPC server failed")
}
