//! `tessera-bench`: replicated put throughput and latency against running tablets.
//!
//! ```text
//! tessera-bench --endpoints=127.0.0.1:9527,127.0.0.1:9528,127.0.0.1:9529 --mode=quorum \
//!     --tid=900 --rows=50000 --concurrency=32
//! ```

use anyhow::bail;
use clap::Parser;
use tessera_proto::tablet::ReplicationMode;
use tessera_tools::bench::{self, BenchSpec};

#[derive(Parser, Debug)]
#[command(
    name = "tessera-bench",
    version,
    about = "Replicated put benchmark",
    rename_all = "snake_case"
)]
struct Flags {
    /// Tablets holding the partition, comma separated; the first leads.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// quorum or async.
    #[arg(long, default_value = "quorum")]
    mode: String,
    /// Table id to create for the run (must not exist yet).
    #[arg(long, default_value_t = 900)]
    tid: u32,
    #[arg(long, default_value_t = 50_000)]
    rows: u64,
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Bytes in each row's value column.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    #[command(flatten)]
    cluster_secret: tessera_common::cluster_secret::ClusterSecretFlags,
    #[command(flatten)]
    tls: tessera_common::tls::TlsFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    flags
        .cluster_secret
        .apply()
        .and_then(|()| flags.tls.apply(tessera_common::tls::Role::Client))
        .map_err(anyhow::Error::msg)?;
    let mode = match flags.mode.as_str() {
        "quorum" => ReplicationMode::Quorum,
        "async" => ReplicationMode::Async,
        other => bail!("unknown mode `{other}` (expected quorum or async)"),
    };
    let spec = BenchSpec {
        endpoints: flags.endpoints,
        tid: flags.tid,
        mode,
        rows: flags.rows,
        concurrency: flags.concurrency,
        value_bytes: flags.value_bytes,
    };
    eprintln!(
        "setting up table {} on {} tablets ({:?})",
        spec.tid,
        spec.endpoints.len(),
        mode
    );
    bench::set_up(&spec).await?;
    eprintln!(
        "writing {} rows with {} concurrent clients...",
        spec.rows, spec.concurrency
    );
    let report = bench::run(&spec).await?;
    println!(
        "mode={} replicas={} rows={} concurrency={} elapsed={:.2}s throughput={:.0}/s p50={:.2}ms p99={:.2}ms max={:.2}ms",
        flags.mode,
        spec.endpoints.len(),
        report.rows,
        spec.concurrency,
        report.elapsed.as_secs_f64(),
        report.throughput(),
        report.p50.as_secs_f64() * 1e3,
        report.p99.as_secs_f64() * 1e3,
        report.max.as_secs_f64() * 1e3,
    );
    Ok(())
}
