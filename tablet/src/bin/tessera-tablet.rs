//! `tessera-tablet`: a storage server. Flags follow OpenMLDB's names; `--conf` reads the
//! same keys from a TOML file, and flags win.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tessera_common::server_process::{init_logging, shutdown_signal};
use tessera_tablet::storage::FsyncPolicy;
use tessera_tablet::TabletConfig;

#[derive(Parser, Debug)]
#[command(
    name = "tessera-tablet",
    version,
    about = "Tessera tablet server: stores partition replicas",
    rename_all = "snake_case"
)]
struct Flags {
    /// TOML file with any of the keys below (flags override it).
    #[arg(long)]
    conf: Option<PathBuf>,
    /// host:port to listen on, e.g. 127.0.0.1:9527.
    #[arg(long)]
    endpoint: Option<String>,
    /// Directory holding the partition replicas.
    #[arg(long)]
    db_root_path: Option<PathBuf>,
    /// ZooKeeper connect string (host:port[,host:port…]).
    #[arg(long)]
    zk_cluster: Option<String>,
    /// Root path of this cluster in ZooKeeper.
    #[arg(long)]
    zk_root_path: Option<String>,
    /// ZooKeeper session timeout in milliseconds.
    #[arg(long)]
    zk_session_timeout: Option<u64>,
    /// ZooKeeper authentication scheme: `digest`, with --zk_cert=user:password.
    #[arg(long)]
    zk_auth_schema: Option<String>,
    /// `user:password` for --zk_auth_schema=digest.
    #[arg(long)]
    zk_cert: Option<String>,
    /// File whose first line is the cluster secret: internal calls must carry it.
    #[arg(long)]
    cluster_secret_file: Option<std::path::PathBuf>,
    /// Run without authentication (no cluster secret): anyone who reaches the port may
    /// do anything.
    #[arg(long)]
    insecure: bool,
    /// PEM file of the certificate authority of the cluster's TLS certificates.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// PEM certificate this tablet serves TLS with (needs --tls_key and --tls_ca).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls_cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// When binlog writes are fsynced: group (default), journal (one log shared by the
    /// tablet's replicas, one fsync for all of them), every_write or none.
    #[arg(long)]
    binlog_fsync: Option<FsyncPolicy>,
    /// Size in bytes at which a binlog segment is rolled.
    #[arg(long)]
    binlog_segment_size: Option<u64>,
    /// Threads that fsync binlogs under `group`, shared by every replica (default 2).
    #[arg(long)]
    binlog_flush_threads: Option<usize>,
    /// Threads of the async runtime (default 0: one per core).
    #[arg(long)]
    runtime_threads: Option<usize>,
    /// Most threads for blocking work (default 512, at least 16); with the flushers they
    /// bound the process's threads whatever its replica count.
    #[arg(long)]
    blocking_threads: Option<usize>,
    /// Largest encoded row a put accepts, in bytes (default 16 MiB).
    #[arg(long)]
    max_row_size: Option<usize>,
    /// Most encoded bytes one scan or preview page carries (default 1 MiB); clients page
    /// through larger results.
    #[arg(long)]
    scan_max_bytes: Option<usize>,
    /// Seconds between TTL collections.
    #[arg(long)]
    gc_interval: Option<u64>,
    /// Milliseconds a quorum write waits for a majority before failing.
    #[arg(long)]
    quorum_timeout: Option<u64>,
    /// Seconds after which a silent client is forgotten by the idempotence tables
    /// (default 3600).
    #[arg(long)]
    client_expiry: Option<u64>,
    /// Writes in flight per partition beyond which new ones are refused as overloaded.
    #[arg(long)]
    max_writes_in_flight: Option<usize>,
}

fn config_from(flags: Flags) -> anyhow::Result<TabletConfig> {
    let mut config = match &flags.conf {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            TabletConfig::from_toml(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("bad config file {}", path.display()))?
        }
        None => TabletConfig::default(),
    };
    macro_rules! set {
        ($($flag:ident => $key:ident),* $(,)?) => {
            $(if let Some(value) = flags.$flag { config.$key = value; })*
        };
    }
    set!(
        endpoint => endpoint,
        db_root_path => db_root_path,
        zk_cluster => zk_cluster,
        zk_root_path => zk_root_path,
        zk_session_timeout => zk_session_timeout_ms,
        zk_auth_schema => zk_auth_schema,
        zk_cert => zk_cert,
        cluster_secret_file => cluster_secret_file,
        tls_ca => tls_ca,
        tls_cert => tls_cert,
        tls_key => tls_key,
        binlog_fsync => binlog_fsync,
        binlog_segment_size => binlog_segment_size,
        binlog_flush_threads => binlog_flush_threads,
        runtime_threads => runtime_threads,
        blocking_threads => blocking_threads,
        max_row_size => max_row_size,
        scan_max_bytes => scan_max_bytes,
        gc_interval => gc_interval_secs,
        quorum_timeout => quorum_timeout_ms,
        client_expiry => client_expiry_secs,
        max_writes_in_flight => max_writes_in_flight,
    );
    config.insecure |= flags.insecure;
    Ok(config)
}

/// A tablet keeps a binlog file open per replica: it takes the whole open-file
/// allowance (the hard limit), not the soft default (often 1,024), and says what it got.
fn raise_open_file_limit() {
    let before = rlimit::Resource::NOFILE
        .get()
        .map(|(soft, _)| soft)
        .unwrap_or(0);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if now > before => {
            tracing::info!(from = before, to = now, "open-file limit raised")
        }
        Ok(now) => tracing::info!(open_files = now, "open-file limit"),
        Err(e) => {
            tracing::warn!(error = %e, open_files = before, "could not raise the open-file limit")
        }
    }
}

fn main() -> anyhow::Result<()> {
    init_logging();
    raise_open_file_limit();
    let config = config_from(Flags::parse())?;
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    tessera_common::zk_auth::apply(&config.zk_auth_schema, &config.zk_cert)
        .and_then(|()| {
            if config.cluster_secret_file.as_os_str().is_empty() {
                Ok(())
            } else {
                tessera_common::cluster_secret::use_secret_file(&config.cluster_secret_file)
            }
        })
        .and_then(|()| tessera_common::auth::require_secret(config.insecure))
        .and_then(|()| {
            tessera_common::tls::use_tls(
                Some(&config.tls_ca),
                Some(&config.tls_cert),
                Some(&config.tls_key),
                tessera_common::tls::Role::Server,
            )
        })
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.runtime_threads > 0 {
        runtime.worker_threads(config.runtime_threads);
    }
    let runtime = runtime
        .max_blocking_threads(config.blocking_threads)
        .enable_all()
        .thread_name("tablet")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(tessera_tablet::run(config, shutdown_signal()))
}
