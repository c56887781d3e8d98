//! The taskmanager's Prometheus metrics at `/metrics` on its own port: gRPC calls,
//! leadership, jobs by type and state, and rows imported and exported.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tessera_common::metrics::GrpcMetrics;

use crate::state::TaskManager;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job_type: String,
    state: String,
}

pub struct TmMetrics {
    registry: Registry,
    /// One scrape at a time: each clears and refills the gauges.
    scraping: tokio::sync::Mutex<()>,
    pub grpc: GrpcMetrics,
    is_leader: Gauge,
    jobs: Family<JobLabels, Gauge>,
    /// Rows an import wrote, acknowledged by the tablets.
    pub rows_imported: Counter,
    /// Rows an export wrote to its file.
    pub rows_exported: Counter,
}

pub static METRICS: LazyLock<TmMetrics> = LazyLock::new(TmMetrics::new);

impl TmMetrics {
    fn new() -> TmMetrics {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::register(&mut registry, "tessera_taskmanager");
        let m = TmMetrics {
            registry: Registry::default(),
            scraping: tokio::sync::Mutex::new(()),
            grpc,
            is_leader: Gauge::default(),
            jobs: Family::default(),
            rows_imported: Counter::default(),
            rows_exported: Counter::default(),
        };
        registry.register(
            "tessera_taskmanager_is_leader",
            "1 on the leader, 0 on a standby",
            m.is_leader.clone(),
        );
        registry.register(
            "tessera_taskmanager_jobs",
            "Jobs by type and state",
            m.jobs.clone(),
        );
        registry.register(
            "tessera_taskmanager_rows_imported",
            "Rows imports wrote (acknowledged by the tablets) on this taskmanager",
            m.rows_imported.clone(),
        );
        registry.register(
            "tessera_taskmanager_rows_exported",
            "Rows exports wrote to their files on this taskmanager",
            m.rows_exported.clone(),
        );
        TmMetrics { registry, ..m }
    }

    pub async fn render(&self, tm: &TaskManager) -> String {
        let _one_at_a_time = self.scraping.lock().await;
        self.is_leader.set(i64::from(tm.is_leader()));
        let mut counts: BTreeMap<(String, String), i64> = BTreeMap::new();
        for job in tm.jobs().await.unwrap_or_default() {
            *counts.entry((job.job_type, job.state)).or_default() += 1;
        }
        self.jobs.clear();
        for ((job_type, state), count) in counts {
            self.jobs
                .get_or_create(&JobLabels { job_type, state })
                .set(count);
        }
        tessera_common::metrics::encode(&self.registry)
    }
}
