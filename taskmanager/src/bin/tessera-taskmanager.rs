//! `tessera-taskmanager`: runs long jobs (bulk import and export, snapshots). Run two or
//! more; one is elected through ZooKeeper and works, the others stand by.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tessera_common::server_process::{init_logging, shutdown_signal};
use tessera_common::tls::{Role, TlsFlags};
use tessera_common::zk_auth::ZkAuthFlags;
use tessera_taskmanager::TaskManagerConfig;

#[derive(Parser, Debug)]
#[command(
    name = "tessera-taskmanager",
    version,
    about = "Tessera taskmanager",
    rename_all = "snake_case"
)]
struct Flags {
    /// host:port to listen on (gRPC and HTTP).
    #[arg(long)]
    endpoint: String,
    /// ZooKeeper connect string (host:port[,host:port…]).
    #[arg(long)]
    zk_cluster: String,
    /// Root path of this cluster in ZooKeeper.
    #[arg(long, default_value = "/tessera")]
    zk_root_path: String,
    /// ZooKeeper session timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    zk_session_timeout: u64,
    /// The only directory whose files jobs read (`load data infile`) and write (`export
    /// table`); job paths are relative to it or absolute inside it. Give every
    /// taskmanager of a cluster the same (shared) directory.
    #[arg(long, default_value = "job_data")]
    job_data_dir: std::path::PathBuf,
    #[command(flatten)]
    zk_auth: ZkAuthFlags,
    #[command(flatten)]
    cluster_secret: tessera_common::cluster_secret::ClusterSecretFlags,
    #[command(flatten)]
    tls: TlsFlags,
    /// Run without authentication (no cluster secret): anyone who reaches the port may
    /// run any job.
    #[arg(long)]
    insecure: bool,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let flags = Flags::parse();
    flags
        .zk_auth
        .apply()
        .and_then(|()| flags.cluster_secret.apply())
        .and_then(|()| flags.tls.apply(Role::Server))
        .and_then(|()| tessera_common::auth::require_secret(flags.insecure))
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let config = TaskManagerConfig {
        endpoint: flags.endpoint,
        zk_cluster: flags.zk_cluster,
        zk_root_path: flags.zk_root_path,
        zk_session_timeout: Duration::from_millis(flags.zk_session_timeout),
        job_data_dir: flags.job_data_dir,
    };
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("taskmanager")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(tessera_taskmanager::run(config, shutdown_signal()))
}
