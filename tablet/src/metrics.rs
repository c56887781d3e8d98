//! The tablet's Prometheus metrics at `/metrics` on its own port: gRPC calls by method
//! and status with their latency and the calls in flight (puts, gets, scans, …), fsync
//! time, replication messages received, and, read at each scrape, replicas by role, read leases held, each replica's
//! memory, binlog and snapshot bytes, and each follower's replication lag in offsets and
//! seconds.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tessera_common::metrics::GrpcMetrics;
use tessera_proto::tablet::TableRole;

use crate::catalog::Catalog;

/// fsync of binlogs, observed by the flushers.
pub static FSYNC_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(exponential_buckets(0.00005, 2.0, 16)));

/// Replication messages this tablet received as a follower, by kind: `records` (an
/// AppendEntries request carrying records), `empty` (one carrying none: a probe or a new
/// commit offset) and `beat` (one partition's beat in a batched heartbeat).
pub static REPLICATION_MESSAGES: LazyLock<Family<KindLabel, Counter>> =
    LazyLock::new(Family::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Counts `n` replication messages of `kind` received.
pub fn replication_received(kind: &'static str, n: u64) {
    REPLICATION_MESSAGES
        .get_or_create(&KindLabel { kind })
        .inc_by(n);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    tid: u32,
    pid: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    tid: u32,
    pid: u32,
    follower: String,
}

/// The tablet's registry and the gauges refreshed at each scrape.
pub struct TabletMetrics {
    registry: Registry,
    /// One scrape at a time: each clears and refills the gauges.
    scraping: parking_lot::Mutex<()>,
    grpc: GrpcMetrics,
    replicas: Family<RoleLabel, Gauge>,
    leases_held: Gauge,
    memory_bytes: Family<ReplicaLabels, Gauge>,
    binlog_bytes: Family<ReplicaLabels, Gauge>,
    snapshot_bytes: Family<ReplicaLabels, Gauge>,
    lag_offsets: Family<FollowerLabels, Gauge>,
    lag_seconds: Family<FollowerLabels, Gauge<f64, AtomicU64>>,
}

impl TabletMetrics {
    pub fn new() -> Arc<TabletMetrics> {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::register(&mut registry, "tessera_tablet");
        let metrics = TabletMetrics {
            grpc,
            replicas: Family::default(),
            leases_held: Gauge::default(),
            memory_bytes: Family::default(),
            binlog_bytes: Family::default(),
            snapshot_bytes: Family::default(),
            lag_offsets: Family::default(),
            lag_seconds: Family::default(),
            registry: Registry::default(),
            scraping: parking_lot::Mutex::new(()),
        };
        registry.register(
            "tessera_tablet_fsync_duration_seconds",
            "Time one binlog fsync took",
            FSYNC_SECONDS.clone(),
        );
        registry.register(
            "tessera_tablet_replication_messages",
            "Replication messages received as a follower, by kind",
            REPLICATION_MESSAGES.clone(),
        );
        registry.register(
            "tessera_tablet_replicas",
            "Replicas on this tablet, by role",
            metrics.replicas.clone(),
        );
        registry.register(
            "tessera_tablet_leases_held",
            "Leader replicas holding their read lease (a majority answered them lately)",
            metrics.leases_held.clone(),
        );
        registry.register(
            "tessera_tablet_memory_bytes",
            "Bytes a replica's rows and keys hold in memory",
            metrics.memory_bytes.clone(),
        );
        registry.register(
            "tessera_tablet_binlog_bytes",
            "Bytes of a replica's binlog segments on disk",
            metrics.binlog_bytes.clone(),
        );
        registry.register(
            "tessera_tablet_snapshot_bytes",
            "Bytes of a replica's snapshot on disk",
            metrics.snapshot_bytes.clone(),
        );
        registry.register(
            "tessera_tablet_replication_lag_offsets",
            "Leader: records a follower lacks",
            metrics.lag_offsets.clone(),
        );
        registry.register(
            "tessera_tablet_replication_lag_seconds",
            "Leader: age of the oldest record a follower lacks",
            metrics.lag_seconds.clone(),
        );
        Arc::new(TabletMetrics {
            registry,
            ..metrics
        })
    }

    /// `router` with every gRPC call counted.
    pub fn instrument(&self, router: axum::Router) -> axum::Router {
        self.grpc.clone().instrument(router)
    }

    /// The scrape's text: the gauges read from the replicas now.
    pub fn render(&self, catalog: &Catalog) -> String {
        let _one_at_a_time = self.scraping.lock();
        for family in [&self.memory_bytes, &self.binlog_bytes, &self.snapshot_bytes] {
            family.clear();
        }
        self.lag_offsets.clear();
        self.lag_seconds.clear();
        let (mut leaders, mut followers, mut leases) = (0, 0, 0);
        for table in catalog.tables() {
            let meta = table.meta();
            let labels = ReplicaLabels {
                tid: meta.tid,
                pid: meta.pid,
            };
            if table.role() == TableRole::Leader {
                leaders += 1;
                leases += i64::from(table.holds_read_lease());
                for lag in table.replication_lag() {
                    let follower = FollowerLabels {
                        tid: meta.tid,
                        pid: meta.pid,
                        follower: lag.follower,
                    };
                    self.lag_offsets
                        .get_or_create(&follower)
                        .set(i64::try_from(lag.offsets).unwrap_or(i64::MAX));
                    self.lag_seconds.get_or_create(&follower).set(lag.seconds);
                }
            } else {
                followers += 1;
            }
            let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.memory_bytes
                .get_or_create(&labels)
                .set(bytes(table.status().memory_used_bytes));
            self.binlog_bytes
                .get_or_create(&labels)
                .set(bytes(dir_bytes(&table.dir().join("binlog"))));
            self.snapshot_bytes
                .get_or_create(&labels)
                .set(bytes(dir_bytes(&table.dir().join("snapshot"))));
        }
        for (role, count) in [("leader", leaders), ("follower", followers)] {
            self.replicas
                .get_or_create(&RoleLabel { role: role.into() })
                .set(count);
        }
        self.leases_held.set(leases);
        tessera_common::metrics::encode(&self.registry)
    }
}

/// Bytes of the files directly in `dir` (0 if it cannot be read).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
