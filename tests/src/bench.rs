//! What the benchmarks and long tests of this crate share: settings read from the
//! environment, and the table of figures a benchmark prints at its end.

use std::future::Future;

/// The environment variable `name` parsed, or `default` when it is unset or does not
/// parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a benchmark measured, in order: each figure is also printed as it comes, so a
/// run stopped half way still shows what it got.
#[derive(Debug, Default)]
pub struct Figures(Vec<(String, String)>);

impl Figures {
    pub fn note(&mut self, what: &str, value: String) {
        eprintln!("{what}: {value}");
        self.0.push((what.to_string(), value));
    }
}

/// Runs `measure` on a multi-threaded runtime and prints its figures as one Markdown
/// table.
pub fn run_and_print(measure: impl Future<Output = Figures>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let figures = runtime.block_on(measure);
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header(["measure", "result"]);
    for (what, value) in figures.0 {
        table.add_row([what, value]);
    }
    println!("{table}");
}

/// The alive leader of each partition as the stored metadata says, by (tid, pid), from
/// the tables at `paths` (a table not there is skipped), read `at_once` at a time.
pub async fn stored_leaders(
    zk: &zookeeper_client::Client,
    paths: Vec<String>,
    at_once: usize,
) -> std::collections::HashMap<(u32, u32), String> {
    let mut reads = tokio::task::JoinSet::new();
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    for path in paths {
        let (zk, limit) = (zk.clone(), limit.clone());
        reads.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let mut leaders = Vec::new();
            if let Ok(Some(stored)) = tessera_common::table_layout::read_table(&zk, &path).await {
                for partition in &stored.table.partitions {
                    if let Some(leader) = partition
                        .replicas
                        .iter()
                        .find(|r| r.is_leader && r.is_alive)
                    {
                        leaders.push(((stored.table.tid, partition.pid), leader.endpoint.clone()));
                    }
                }
            }
            leaders
        });
    }
    let mut found = std::collections::HashMap::new();
    while let Some(read) = reads.join_next().await {
        found.extend(read.expect("a metadata read"));
    }
    found
}
