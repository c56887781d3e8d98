//! `tessera-nameserver`: the cluster's metadata keeper, elected through ZooKeeper. Run two
//! or more; one leads, the others stand by.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tessera_common::cluster_secret::ClusterSecretFlags;
use tessera_common::server_process::{init_logging, shutdown_signal};
use tessera_common::tls::{Role, TlsFlags};
use tessera_common::zk_auth::ZkAuthFlags;
use tessera_nameserver::schedule::SnapshotSchedule;
use tessera_nameserver::state::TaskFault;
use tessera_nameserver::NameserverConfig;

#[derive(Parser, Debug)]
#[command(
    name = "tessera-nameserver",
    version,
    about = "Tessera nameserver",
    rename_all = "snake_case"
)]
struct Flags {
    /// host:port to listen on.
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
    /// Milliseconds after which an op task that has not finished fails its op.
    #[arg(long, default_value_t = 60_000)]
    task_timeout: u64,
    /// Seconds between snapshots of every partition; 0 uses --make_snapshot_time.
    #[arg(long, default_value_t = 0)]
    snapshot_interval: u64,
    /// Hour of the day (UTC, 0-23) for the daily snapshot of every partition; -1: never.
    #[arg(long, default_value_t = 23, allow_negative_numbers = true)]
    make_snapshot_time: i32,
    /// Fault injection for tests: the first run of one op task fails
    /// (`kPromoteLeader:fail`), waits first (`kPromoteLeader:delay_ms=3000`), or runs
    /// and waits before its outcome is saved (`kFenceReplicas:delay_after_ms=3000`).
    #[arg(long, hide = true)]
    inject_task_fault: Option<TaskFault>,
    /// File whose first line is the password the `root` user gets on the cluster's
    /// first start with authentication (--cluster_secret_file); read only then.
    #[arg(long)]
    root_password_file: Option<std::path::PathBuf>,
    /// Run without authentication (no cluster secret, no users): anyone who reaches the
    /// port may do anything.
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    zk_auth: ZkAuthFlags,
    #[command(flatten)]
    cluster_secret: ClusterSecretFlags,
    #[command(flatten)]
    tls: TlsFlags,
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
        .and_then(|()| {
            if tessera_common::auth::enabled()
                && flags.root_password_file.is_none()
                && !flags.insecure
            {
                Err(
                    "no --root_password_file: with authentication the nameserver makes the \
                     root user from it on the cluster's first start (later starts ignore \
                     it), or --insecure"
                        .to_string(),
                )
            } else {
                Ok(())
            }
        })
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    if tessera_common::auth::enabled() && !tessera_common::zk_auth::enabled() {
        tracing::warn!(
            "authentication is on but ZooKeeper authentication is off (--zk_auth_schema): \
             anyone who can reach ZooKeeper can rewrite the users and their grants"
        );
    }
    let root_password_hash = match &flags.root_password_file {
        Some(path) => Some(
            tessera_nameserver::users::root_password_hash(path)
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?,
        ),
        None => None,
    };
    let config = NameserverConfig {
        root_password_hash,
        endpoint: flags.endpoint,
        zk_cluster: flags.zk_cluster,
        zk_root_path: flags.zk_root_path,
        zk_session_timeout: Duration::from_millis(flags.zk_session_timeout),
        task_timeout: Duration::from_millis(flags.task_timeout),
        inject_task_fault: flags.inject_task_fault,
        snapshot_schedule: match (flags.snapshot_interval, flags.make_snapshot_time) {
            (0, -1) => SnapshotSchedule::Off,
            (0, hour @ 0..=23) => SnapshotSchedule::DailyAt(hour as u32),
            (0, other) => anyhow::bail!("--make_snapshot_time {other} is not an hour (0-23) or -1"),
            (secs, _) => SnapshotSchedule::Every(Duration::from_secs(secs)),
        },
    };
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nameserver")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(tessera_nameserver::run(config, shutdown_signal()))
}
