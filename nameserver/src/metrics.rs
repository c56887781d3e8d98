//! The nameserver's Prometheus metrics at `/metrics` on its own port (prometheus-client):
//! gRPC calls, ops by type and status and their durations, leaderless partitions,
//! differences the reconciler found, tablets by state, leadership, followers' reports
//! of silent leaders, and the op pipeline's passes and reads of the tables.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tessera_common::metrics::GrpcMetrics;
use tessera_proto::nameserver::OpInfo;

use crate::state::Nameserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op_type: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpTypeLabel {
    op_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpWriteLabel {
    /// "alone", or "metadata" for an op's end written in its last task's transaction.
    with: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabel {
    repair: String,
}

pub struct NsMetrics {
    registry: Registry,
    /// One scrape at a time: each clears and refills the gauges.
    scraping: tokio::sync::Mutex<()>,
    pub grpc: GrpcMetrics,
    is_leader: Gauge,
    tablets: Family<StateLabel, Gauge>,
    ops: Family<OpLabels, Gauge>,
    op_duration: Family<OpTypeLabel, Histogram>,
    leaderless: Gauge,
    drifts: Family<RepairLabel, Counter>,
    leader_reports: Family<VerdictLabel, Counter>,
    pipeline_passes: Counter,
    table_reads: Counter,
    partition_bytes_written: Counter,
    cache_loads: Counter,
    cache_events: Counter,
    tablet_connections: Counter,
    op_writes: Family<OpWriteLabel, Counter>,
}

/// One per process: ops and the reconciler record into it wherever they run.
pub static METRICS: LazyLock<NsMetrics> = LazyLock::new(NsMetrics::new);

impl NsMetrics {
    fn new() -> NsMetrics {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::register(&mut registry, "tessera_nameserver");
        let m = NsMetrics {
            registry: Registry::default(),
            scraping: tokio::sync::Mutex::new(()),
            grpc,
            is_leader: Gauge::default(),
            tablets: Family::default(),
            ops: Family::default(),
            // From 10 ms to about 40 min.
            op_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 18))
            }),
            leaderless: Gauge::default(),
            drifts: Family::default(),
            pipeline_passes: Counter::default(),
            table_reads: Counter::default(),
            partition_bytes_written: Counter::default(),
            cache_loads: Counter::default(),
            cache_events: Counter::default(),
            tablet_connections: Counter::default(),
            op_writes: Family::default(),
            leader_reports: Family::default(),
        };
        registry.register(
            "tessera_nameserver_is_leader",
            "1 on the leader, 0 on a standby",
            m.is_leader.clone(),
        );
        registry.register(
            "tessera_tablets",
            "Tablets known to the nameserver, by state",
            m.tablets.clone(),
        );
        registry.register(
            "tessera_ops",
            "Ops kept in ZooKeeper, by type and status",
            m.ops.clone(),
        );
        registry.register(
            "tessera_op_duration_seconds",
            "How long ops ran, from start to end, by type (ended here)",
            m.op_duration.clone(),
        );
        registry.register(
            "tessera_partitions_without_leader",
            "Partitions with no alive leader",
            m.leaderless.clone(),
        );
        registry.register(
            "tessera_reconciler_differences",
            "Differences between the tablets and the metadata the reconciler set out to repair, by repair",
            m.drifts.clone(),
        );
        registry.register(
            "tessera_leader_reports",
            "Followers' reports of a silent leader, by what the check of its tablet found (alive = a false alarm)",
            m.leader_reports.clone(),
        );
        registry.register(
            "tessera_op_pipeline_passes",
            "Passes of the op pipeline (each plans ops and starts what may start)",
            m.pipeline_passes.clone(),
        );
        registry.register(
            "tessera_metadata_table_reads",
            "Reads of every table's metadata from ZooKeeper (the op pipeline reads them only after a change)",
            m.table_reads.clone(),
        );
        registry.register(
            "tessera_metadata_partition_bytes_written",
            "Bytes of partition metadata written to ZooKeeper by partition changes (one chunk node each, not the whole table)",
            m.partition_bytes_written.clone(),
        );
        registry.register(
            "tessera_metadata_cache_loads",
            "Whole reads of the table metadata into the nameserver's copy (one per ZooKeeper session, and after a disconnection)",
            m.cache_loads.clone(),
        );
        registry.register(
            "tessera_metadata_cache_events",
            "Changed table metadata nodes read again into the nameserver's copy, one per watch event",
            m.cache_events.clone(),
        );
        registry.register(
            "tessera_nameserver_tablet_connections",
            "Connections made for the pooled control channels to the tablets (one per tablet, again only after it was unreachable)",
            m.tablet_connections.clone(),
        );
        registry.register(
            "tessera_op_node_writes",
            "Writes of op nodes by the op pipeline: alone, or with the metadata change of the op's last task (its end, in one transaction)",
            m.op_writes.clone(),
        );
        // Every repair from the start, at zero: a dashboard shows none rather than no data.
        for repair in [
            crate::planner::CHANGE_LEADER,
            crate::planner::OFFLINE_REPLICA,
            crate::planner::RECOVER_TABLE,
        ] {
            m.drifts
                .get_or_create(&RepairLabel {
                    repair: repair.to_string(),
                })
                .inc_by(0);
        }
        NsMetrics { registry, ..m }
    }

    /// An op ended (done, failed or cancelled).
    pub fn op_ended(&self, op: &OpInfo) {
        if op.start_time_ms > 0 && op.end_time_ms >= op.start_time_ms {
            self.op_duration
                .get_or_create(&OpTypeLabel {
                    op_type: op.op_type.clone(),
                })
                .observe((op.end_time_ms - op.start_time_ms) as f64 / 1000.0);
        }
    }

    /// An op node was written: alone, or (`with_metadata`) in the transaction of its
    /// last task's metadata change.
    pub fn op_written(&self, with_metadata: bool) {
        let with = if with_metadata { "metadata" } else { "alone" };
        self.op_writes
            .get_or_create(&OpWriteLabel { with: with.into() })
            .inc();
    }

    /// The op pipeline made a pass.
    pub fn pipeline_pass(&self) {
        self.pipeline_passes.inc();
    }

    /// Every table's metadata was read from ZooKeeper.
    pub fn tables_read(&self) {
        self.table_reads.inc();
    }

    /// A partition change wrote `bytes` of metadata.
    pub fn metadata_written(&self, bytes: usize) {
        self.partition_bytes_written.inc_by(bytes as u64);
    }

    /// The whole table metadata was read into the nameserver's copy.
    pub fn metadata_cache_loaded(&self) {
        self.cache_loads.inc();
    }

    /// One changed metadata node was read into the nameserver's copy.
    pub fn metadata_cache_event(&self) {
        self.cache_events.inc();
    }

    /// A pooled control channel to a tablet was connected.
    pub fn tablet_connected(&self) {
        self.tablet_connections.inc();
    }

    /// The reconciler set out to repair a difference with `repair`.
    pub fn difference(&self, repair: &str) {
        self.drifts
            .get_or_create(&RepairLabel {
                repair: repair.to_string(),
            })
            .inc();
    }

    /// The scrape's text, with the gauges read now.
    pub async fn render(&self, ns: &Nameserver) -> String {
        let _one_at_a_time = self.scraping.lock().await;
        self.is_leader.set(i64::from(ns.is_leader()));
        let tablets = ns.tablets();
        let healthy = tablets
            .iter()
            .filter(|t| t.state == "kTabletHealthy")
            .count() as i64;
        for (state, count) in [
            ("healthy", healthy),
            ("offline", tablets.len() as i64 - healthy),
        ] {
            self.tablets
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(count);
        }
        let reports = ns.report_counts();
        for (verdict, total) in [
            ("alive", reports.alive),
            ("gone", reports.gone),
            ("silent", reports.silent),
            ("inconclusive", reports.inconclusive),
            ("known", reports.known),
        ] {
            let counter = self.leader_reports.get_or_create(&VerdictLabel {
                verdict: verdict.into(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let all = ns.shared_ops().await.unwrap_or_default();
        let mut ops: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for op in &all {
            *ops.entry((&op.op_type, &op.status)).or_default() += 1;
        }
        self.ops.clear();
        for ((op_type, status), count) in ops {
            self.ops
                .get_or_create(&OpLabels {
                    op_type: op_type.into(),
                    status: status.into(),
                })
                .set(count);
        }
        let tables = ns.cached_tables().await.unwrap_or_default();
        let leaderless = crate::status_page::leaderless(&tables).len();
        self.leaderless.set(leaderless as i64);
        tessera_common::metrics::encode(&self.registry)
    }
}
