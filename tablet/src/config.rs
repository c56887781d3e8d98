//! Tablet configuration: a TOML file (`--conf`) and command-line flags with the same
//! names; flags win. Every key has a default except `endpoint` and `db_root_path`.

use std::path::PathBuf;

use serde::Deserialize;
use tessera_common::Endpoint;

use crate::storage::{BinlogOptions, FsyncPolicy, TableOptions};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TabletConfig {
    /// `host:port` the tablet listens on and registers as.
    pub endpoint: String,
    /// Where partition replicas live, one directory `<tid>_<pid>` each.
    pub db_root_path: PathBuf,
    /// ZooKeeper connect string; empty runs the tablet standalone.
    pub zk_cluster: String,
    pub zk_root_path: String,
    pub zk_session_timeout_ms: u64,
    /// ZooKeeper authentication: `digest`, with `zk_cert` = `user:password`; both
    /// empty for none.
    pub zk_auth_schema: String,
    pub zk_cert: String,
    /// File holding the cluster secret; empty for none (internal calls unchecked).
    pub cluster_secret_file: PathBuf,
    /// Run without authentication (no cluster secret): anyone who reaches the port may
    /// do anything. Without it, a tablet refuses to start without a secret.
    pub insecure: bool,
    /// TLS: the certificate authority of the cluster, and this tablet's certificate and
    /// key (PEM files); all empty for none (see `tessera_common::tls`).
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `journal`, `group`, `every_write` or `none` (see `FsyncPolicy`).
    pub binlog_fsync: FsyncPolicy,
    /// Bytes after which a binlog segment is closed and a new one started.
    pub binlog_segment_size: u64,
    /// `group`: the longest a write waits for others to share its fsync.
    pub binlog_group_commit_interval_ms: u64,
    /// `group`: fsync at once when this many writes are waiting.
    pub binlog_group_commit_max_records: u64,
    /// `group`: threads that fsync binlogs, shared by every replica on the tablet.
    pub binlog_flush_threads: usize,
    /// Threads running the async runtime (gRPC, replication, ZooKeeper); 0: one per core.
    pub runtime_threads: usize,
    /// Most threads the runtime starts for blocking work (snapshots, binlog reads of a
    /// lagging follower, loads); more work waits for one. With the flushers, the TTL
    /// collector and the main thread these bound the process's threads, whatever its
    /// replica count.
    pub blocking_threads: usize,
    /// Largest encoded row a put accepts.
    pub max_row_size: usize,
    /// How often expired entries are collected.
    pub gc_interval_secs: u64,
    /// Upper bound on rows a scan or preview returns in one response (one page).
    pub scan_max_rows: usize,
    /// Upper bound on the encoded bytes of one scan or preview page: a client pages
    /// through anything larger. A single row larger than this still makes a page of one.
    pub scan_max_bytes: usize,
    /// How long a quorum write waits for a majority before failing.
    pub quorum_timeout_ms: u64,
    /// A client silent this long is forgotten by the partitions' idempotence tables: a
    /// retry of its writes after that may be applied again.
    pub client_expiry_secs: u64,
    /// Writes waiting on one partition beyond which new ones are refused ("overloaded",
    /// retryable).
    pub max_writes_in_flight: usize,
}

impl Default for TabletConfig {
    fn default() -> Self {
        let binlog = BinlogOptions::default();
        TabletConfig {
            endpoint: String::new(),
            db_root_path: PathBuf::new(),
            zk_cluster: String::new(),
            zk_root_path: "/tessera".into(),
            zk_session_timeout_ms: 10_000,
            zk_auth_schema: String::new(),
            zk_cert: String::new(),
            cluster_secret_file: PathBuf::new(),
            insecure: false,
            tls_ca: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            binlog_fsync: binlog.fsync,
            binlog_segment_size: binlog.segment_size,
            binlog_group_commit_interval_ms: binlog.group_commit_interval.as_millis() as u64,
            binlog_group_commit_max_records: binlog.group_commit_max_records,
            binlog_flush_threads: 2,
            runtime_threads: 0,
            blocking_threads: 512,
            max_row_size: 16 << 20,
            gc_interval_secs: 60,
            scan_max_rows: 100_000,
            scan_max_bytes: 1 << 20,
            quorum_timeout_ms: 10_000,
            client_expiry_secs: 3600,
            max_writes_in_flight: 4096,
        }
    }
}

impl TabletConfig {
    pub fn from_toml(text: &str) -> Result<TabletConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every value; the message says which key is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.endpoint.is_empty() {
            return Err("endpoint is required (host:port)".into());
        }
        Endpoint::parse(&self.endpoint)?;
        if self.db_root_path.as_os_str().is_empty() {
            return Err("db_root_path is required".into());
        }
        if self.binlog_segment_size < 4096 {
            return Err(format!(
                "binlog_segment_size {} is below the minimum of 4096 bytes",
                self.binlog_segment_size
            ));
        }
        if !(1..=64).contains(&self.binlog_flush_threads) {
            return Err(format!(
                "binlog_flush_threads {} must be between 1 and 64",
                self.binlog_flush_threads
            ));
        }
        if self.runtime_threads > 256 {
            return Err(format!(
                "runtime_threads {} must be at most 256 (0: one per core)",
                self.runtime_threads
            ));
        }
        // A snapshot being sent holds a blocking thread while it waits for its receiver,
        // which may itself need one: too few threads could stall each other.
        if !(16..=4096).contains(&self.blocking_threads) {
            return Err(format!(
                "blocking_threads {} must be between 16 and 4096",
                self.blocking_threads
            ));
        }
        if self.max_row_size == 0 || self.max_row_size > 512 << 20 {
            return Err(format!(
                "max_row_size {} must be between 1 and 512 MiB",
                self.max_row_size
            ));
        }
        if self.gc_interval_secs == 0 {
            return Err("gc_interval_secs must be at least 1".into());
        }
        if self.client_expiry_secs == 0 {
            return Err("client_expiry_secs must be at least 1".into());
        }
        if self.max_writes_in_flight == 0 {
            return Err("max_writes_in_flight must be at least 1".into());
        }
        if self.quorum_timeout_ms == 0 {
            return Err("quorum_timeout_ms must be at least 1".into());
        }
        if !self.zk_cluster.is_empty() && self.zk_session_timeout_ms < 400 {
            return Err(format!(
                "zk_session_timeout_ms {} is below ZooKeeper's minimum of 400",
                self.zk_session_timeout_ms
            ));
        }
        tessera_common::zk_auth::ZkAuth::from_flags(&self.zk_auth_schema, &self.zk_cert)?;
        if self.scan_max_rows == 0 {
            return Err("scan_max_rows must be at least 1".into());
        }
        // Pages must fit what clients accept by default (the SDK's 32 MiB, beside a row
        // of up to max_row_size).
        if !(1024..=16 << 20).contains(&self.scan_max_bytes) {
            return Err(format!(
                "scan_max_bytes {} must be between 1 KiB and 16 MiB",
                self.scan_max_bytes
            ));
        }
        if !self.zk_cluster.is_empty() && !self.zk_root_path.starts_with('/') {
            return Err(format!(
                "zk_root_path `{}` must start with /",
                self.zk_root_path
            ));
        }
        Ok(())
    }

    pub fn table_options(&self) -> TableOptions {
        TableOptions {
            binlog: BinlogOptions {
                fsync: self.binlog_fsync,
                segment_size: self.binlog_segment_size,
                group_commit_interval: std::time::Duration::from_millis(
                    self.binlog_group_commit_interval_ms,
                ),
                group_commit_max_records: self.binlog_group_commit_max_records,
                flush_pool: crate::storage::FlushPool::new(self.binlog_flush_threads),
                // Opened by the server before the replicas load (it reads back what a
                // crash left only there).
                journal: None,
            },
            max_row_size: self.max_row_size,
            quorum_timeout: std::time::Duration::from_millis(self.quorum_timeout_ms),
            // In a cluster a restarted replica waits for the nameserver to say who leads.
            restore_leadership: self.zk_cluster.is_empty(),
            client_expiry: std::time::Duration::from_secs(self.client_expiry_secs),
            max_writes_in_flight: self.max_writes_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_and_validation() {
        let config = TabletConfig::from_toml(
            "endpoint = \"127.0.0.1:9527\"\ndb_root_path = \"/tmp/x\"\nbinlog_fsync = \"every_write\"\n",
        )
        .unwrap();
        assert_eq!(config.binlog_fsync, FsyncPolicy::EveryWrite);
        assert_eq!(config.max_row_size, 16 << 20);
        config.validate().unwrap();

        assert!(TabletConfig::from_toml("no_such_key = 1")
            .unwrap_err()
            .contains("no_such_key"));
        assert!(TabletConfig::from_toml("binlog_fsync = \"sometimes\"").is_err());
        let mut bad = config.clone();
        bad.endpoint = "nohost".into();
        assert!(bad.validate().is_err());
        let mut bad = config;
        bad.binlog_segment_size = 10;
        assert!(bad.validate().unwrap_err().contains("binlog_segment_size"));
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The example file documents every key; it must stay loadable and complete.
    #[test]
    fn example_config_loads_and_is_valid() {
        let text = include_str!("../../conf/tablet.toml");
        let config = TabletConfig::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.endpoint, "127.0.0.1:9527");
        assert_eq!(
            config.binlog_segment_size,
            TabletConfig::default().binlog_segment_size
        );
    }
}
