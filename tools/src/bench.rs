//! Replicated put benchmark: wire a partition across tablets through the tablet RPCs,
//! then drive puts at a fixed concurrency and report throughput and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_common::cluster_secret::{self, InternalChannel};
use tessera_common::{ColumnType, Schema, Ttl, Value};
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::*;

#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// The first endpoint leads, the others follow.
    pub endpoints: Vec<String>,
    pub tid: u32,
    pub mode: ReplicationMode,
    pub rows: u64,
    pub concurrency: u64,
    pub value_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct BenchReport {
    pub rows: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl BenchReport {
    pub fn throughput(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

fn schema() -> Schema {
    Schema::new(
        &[
            ("id", ColumnType::String, false),
            ("ts", ColumnType::Timestamp, false),
            ("v", ColumnType::String, true),
        ],
        &[(&["id"], Some("ts"), Ttl::NONE)],
    )
    .expect("static schema")
}

/// Setting up the partition takes internal calls: they carry the cluster secret, if the
/// process was given one.
async fn connect(endpoint: &str) -> anyhow::Result<TabletClient<InternalChannel>> {
    let channel = tessera_common::tls::endpoint(endpoint, std::time::Duration::from_secs(5))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    Ok(TabletClient::new(cluster_secret::internal(channel)))
}

/// Creates the partition on every endpoint (each copy leads itself in term 1, as a
/// created replica does); then the first leads the others in term 2.
pub async fn set_up(spec: &BenchSpec) -> anyhow::Result<()> {
    let meta = TableMeta {
        tid: spec.tid,
        pid: 0,
        db: "bench".into(),
        name: format!("bench_{}", spec.tid),
        schema: Some(schema().to_proto()),
        partition_num: 1,
        term: 1,
        mode: spec.mode as i32,
        ..TableMeta::default()
    };
    let (leader, followers) = spec.endpoints.split_first().context("no endpoints")?;
    for endpoint in &spec.endpoints {
        connect(endpoint)
            .await?
            .create_table(CreateTableRequest {
                meta: Some(meta.clone()),
            })
            .await
            .with_context(|| format!("create table on {endpoint}"))?;
    }
    for follower in followers {
        connect(follower)
            .await?
            .change_role(ChangeRoleRequest {
                tid: spec.tid,
                pid: 0,
                role: TableRole::Follower as i32,
                term: 2,
                leader: leader.clone(),
                ..Default::default()
            })
            .await?;
    }
    connect(leader)
        .await?
        .change_role(ChangeRoleRequest {
            tid: spec.tid,
            pid: 0,
            role: TableRole::Leader as i32,
            term: 2,
            followers: followers.to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Runs the puts and measures them.
pub async fn run(spec: &BenchSpec) -> anyhow::Result<BenchReport> {
    if spec.concurrency == 0 || spec.rows == 0 {
        bail!("rows and concurrency must be at least 1");
    }
    let leader = &spec.endpoints[0];
    let padding = "x".repeat(spec.value_bytes);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for worker in 0..spec.concurrency {
        // One connection per worker, as independent clients would have.
        let mut client = connect(leader).await?;
        let rows = spec.rows / spec.concurrency + u64::from(worker < spec.rows % spec.concurrency);
        let (tid, padding) = (spec.tid, padding.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(rows as usize);
            for i in 0..rows {
                let row = Value::row_to_proto(&[
                    Value::String(format!("k{worker}-{i}")),
                    Value::Timestamp(i as i64),
                    Value::String(padding.clone()),
                ]);
                let sent = Instant::now();
                client
                    .put(PutRequest {
                        tid,
                        pid: 0,
                        row: Some(row),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("put failed: {}", e.message()))?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(spec.rows as usize);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(BenchReport {
        rows: latencies.len() as u64,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: *latencies.last().expect("at least one row"),
    })
}
