//! Tessera and etcd side by side, in one run, on this machine: a 3-member etcd on
//! loopback (default settings: 100 ms heartbeats, 1 s election timeout) and a Tessera
//! cluster (ZooKeeper, one nameserver, three tablets, default settings), each driven
//! through its real client (the Tessera SDK; `etcd-client`).
//!
//! Workloads: puts of 100-byte values with 1, 16 and 64 concurrent clients; batches of
//! 100 puts (an etcd transaction, a Tessera `put_batch`) with 16 clients; gets of
//! existing keys at full speed, then at half of that rate for the latency (arrivals evenly
//! spaced, each get timed from its arrival); failover by `kill -9` and by SIGSTOP of a
//! leader, `RUNS` times each. Prints one table, Tessera's figure over etcd's in the last
//! column. `scripts/bench-compare.sh` installs etcd, builds the release binaries and runs
//! this.
//!
//! Environment: `RUNS` (failovers of each kind, 5), `SECONDS` (per load step, 10),
//! `ETCD` (the etcd binary, `etcd` on the PATH), `SYSTEMS` (`etcd,tessera`; `tessera` alone
//! for quick work on Tessera; `RUNS=0` skips the failovers), `TABLET_ARGS` (extra tablet
//! flags, for experiments).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::Value;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::process::free_port;
use tessera_tests::routed::{leaders, led_by, table_rows};
use tessera_tests::wait_until_async;
use tessera_tests::workload::key_in_partition;
use tokio::sync::mpsc;

const TABLE: &str = "bench";
/// Several partitions, so the leaders spread over the three tablets.
const PARTITIONS: u32 = 6;
/// Keys written before the gets, and cycled through by the puts.
const KEYS: u64 = 10_000;
const WAIT: Duration = Duration::from_secs(120);

fn value() -> String {
    "v".repeat(100)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Either system, behind the same two calls.
#[derive(Clone)]
enum Store {
    Etcd(Box<etcd_client::Client>),
    Tessera(Arc<tessera_ns_client::Client>),
}

fn tessera_row(key: &str, seq: i64) -> Vec<Value> {
    vec![
        Value::String(key.to_string()),
        Value::Int64(seq),
        Value::Int64(seq),
        Value::String(value()),
    ]
}

impl Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Etcd(_) => "etcd",
            Store::Tessera(_) => "tessera",
        }
    }

    async fn put(&self, key: &str, seq: i64) -> Result<(), String> {
        match self {
            Store::Etcd(client) => client
                .clone()
                .put(key, value(), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Store::Tessera(client) => client
                .put("default", TABLE, tessera_row(key, seq))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// Writes `keys` in one call: an etcd transaction of puts, a Tessera `put_batch`
    /// (one request per partition).
    async fn put_batch(&self, keys: &[String], seq: i64) -> Result<(), String> {
        match self {
            Store::Etcd(client) => {
                let puts: Vec<_> = keys
                    .iter()
                    .map(|k| etcd_client::TxnOp::put(k.as_str(), value(), None))
                    .collect();
                client
                    .clone()
                    .txn(etcd_client::Txn::new().and_then(puts))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Store::Tessera(client) => client
                .put_batch(
                    "default",
                    TABLE,
                    keys.iter().map(|k| tessera_row(k, seq)).collect(),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    async fn get(&self, key: &str) -> Result<(), String> {
        let found = match self {
            Store::Etcd(client) => client
                .clone()
                .get(key, None)
                .await
                .map(|r| !r.kvs().is_empty())
                .map_err(|e| e.to_string())?,
            Store::Tessera(client) => client
                .get("default", TABLE, vec![Value::String(key.to_string())])
                .await
                .map(|r| r.is_some())
                .map_err(|e| e.to_string())?,
        };
        if found {
            Ok(())
        } else {
            Err(format!("{key} not found"))
        }
    }
}

/// What one load step measured.
#[derive(Debug, Default)]
struct Stats {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Sorts the latencies, then reads a percentile.
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        self.sorted_percentile(p)
    }

    /// A percentile of latencies already sorted by [`Stats::percentile`].
    fn sorted_percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let at = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[at - 1]
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Put,
    /// `BATCH_ROWS` rows per call; a call's rows count as that many operations.
    PutBatch,
    Get,
}

/// Rows per batch call (etcd takes at most 128 operations in one transaction).
const BATCH_ROWS: u64 = 100;

/// Arrival times of an open-loop step, `rate` a second in all, evenly spaced and handed
/// to the `clients` round-robin until `end`. A thread of its own sleeps to each arrival
/// on the kernel's high-resolution timers: tokio's timers fire on whole milliseconds,
/// so clients paced by them start their calls together, a burst at every tick.
fn arrivals(rate: f64, clients: usize, end: Instant) -> Vec<mpsc::UnboundedReceiver<Instant>> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..clients).map(|_| mpsc::unbounded_channel()).unzip();
    let period = Duration::from_secs_f64(1.0 / rate);
    std::thread::spawn(move || {
        let start = Instant::now();
        for k in 0u32.. {
            let due = start + period * k;
            if due >= end {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if senders[k as usize % clients].send(due).is_err() {
                break;
            }
        }
        // The senders drop here: each client ends once it has taken its last arrival.
    });
    receivers
}

/// One call of a load step; the number of operations it stands for, if it succeeded.
async fn call(store: &Store, op: Op, i: u64) -> Result<u64, String> {
    let key = format!("k{}", i % KEYS);
    match op {
        Op::Put => store.put(&key, i as i64 + 1).await.map(|()| 1),
        Op::PutBatch => {
            let keys: Vec<String> = (0..BATCH_ROWS)
                .map(|b| format!("k{}", (i * BATCH_ROWS + b) % KEYS))
                .collect();
            store
                .put_batch(&keys, i as i64 + 1)
                .await
                .map(|()| BATCH_ROWS)
        }
        Op::Get => store.get(&key).await.map(|()| 1),
    }
}

/// `clients` tasks, each issuing one call after another for `duration` (closed loop), or
/// at `rate` calls per second in all (open loop: evenly spaced arrivals, see
/// [`arrivals`], each call's latency counted from its arrival, so a client still busy
/// with the call before counts its wait too).
async fn load(
    store: &Store,
    op: Op,
    clients: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Stats {
    let start = Instant::now();
    let end = start + duration;
    let mut paced = rate.map(|r| arrivals(r, clients, end).into_iter());
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = store.clone();
        let mut arrivals = paced.as_mut().and_then(Iterator::next);
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut i = client as u64;
            loop {
                let began = match &mut arrivals {
                    Some(arrivals) => match arrivals.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                    None if Instant::now() < end => Instant::now(),
                    None => break,
                };
                match call(&store, op, i).await {
                    Ok(ops) => {
                        stats.ops += ops;
                        stats.latencies.push(began.elapsed());
                    }
                    Err(_) => stats.errors += 1,
                }
                i += clients as u64;
            }
            stats
        }));
    }
    let mut all = Stats::default();
    for task in tasks {
        let stats = task.await.expect("load task");
        all.ops += stats.ops;
        all.errors += stats.errors;
        all.latencies.extend(stats.latencies);
    }
    all.elapsed = start.elapsed();
    all
}

// ---------------------------------------------------------------------------------------
// etcd: three members on loopback.

struct EtcdMember {
    name: String,
    client_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

struct Etcd {
    members: Vec<EtcdMember>,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data = dir.join(&name);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={cluster}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=bench".into(),
            ];
            let mut member = EtcdMember {
                name,
                client_url,
                args,
                log: dir.join(format!("e{i}.log")),
                child: None,
            };
            member.spawn();
            members.push(member);
        }
        Etcd { members }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The index of the member that leads, once all three answer and agree on one.
    async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for member in &self.members {
            let mut client = etcd_client::Client::connect([member.client_url.as_str()], None)
                .await
                .ok()?;
            let status = tokio::time::timeout(Duration::from_secs(1), client.status())
                .await
                .ok()?
                .ok()?;
            ids.push(status.header()?.member_id());
            if status.leader() == 0 || leader.is_some_and(|l| l != status.leader()) {
                return None;
            }
            leader = Some(status.leader());
        }
        ids.iter().position(|id| Some(*id) == leader)
    }

    async fn wait_healthy(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.leader().await {
                return leader;
            }
            assert!(Instant::now() < deadline, "etcd did not elect a leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl EtcdMember {
    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("etcd log");
        let etcd = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
        let child = Command::new(etcd)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd member {}: {e}", self.name));
        self.child = Some(child);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("etcd member running");
        tessera_tests::process::signal(child, signal);
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            tessera_tests::process::kill9(&mut child);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(child) = &member.child {
                // A paused member must run again to die; it may be gone already.
                // SAFETY: kill(2) on a child we spawned and have not reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            }
            member.kill9();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Failover.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Stop => "SIGSTOP",
        }
    }
}

/// etcd: from the fault on the leader to the first put acknowledged among four writers
/// that start right after it, two on each surviving member (connected before the fault,
/// so etcd is measured at its best), each try bounded by 200 ms and retried at once.
async fn etcd_failover(etcd: &mut Etcd, fault: Fault) -> Duration {
    let leader = etcd.wait_healthy().await;
    let mut clients = Vec::new();
    for (i, member) in etcd.members.iter().enumerate() {
        if i != leader {
            let client = etcd_client::Client::connect([member.client_url.as_str()], None)
                .await
                .expect("connect to an etcd member");
            clients.push(client.clone());
            clients.push(client);
        }
    }
    let struck = Instant::now();
    match fault {
        Fault::Kill => etcd.members[leader].kill9(),
        Fault::Stop => etcd.members[leader].signal(libc::SIGSTOP),
    }
    let (acked, mut first) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    for (w, client) in clients.into_iter().enumerate() {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let mut client = client.clone();
                let put = client.put(format!("f{w}-{seq}"), value(), None);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), put).await {
                    let _ = acked.send(Instant::now());
                }
            }
        });
    }
    let at = first.recv().await.expect("an acknowledged put");
    stop.store(true, Ordering::Relaxed);
    match fault {
        Fault::Kill => etcd.members[leader].spawn(),
        Fault::Stop => etcd.members[leader].signal(libc::SIGCONT),
    }
    etcd.wait_healthy().await;
    at.duration_since(struck)
}

/// Tessera: from the fault on the tablet leading partition 0 to the first put
/// acknowledged on each partition it led, by one SDK writer per partition starting
/// right after the fault.
async fn tessera_failover(
    cluster: &mut NsCluster,
    client: &Arc<tessera_ns_client::Client>,
    fault: Fault,
) -> Vec<Duration> {
    let mut ns = cluster.ns().await;
    let before = leaders(&table_rows(&mut ns, TABLE).await);
    let victim = before[&0].clone();
    let mut keys = Vec::new();
    for pid in led_by(&before, &victim) {
        keys.push(key_in_partition(client, TABLE, pid, "p").await);
    }
    let index = cluster.tablet_index(&victim);
    let struck = Instant::now();
    match fault {
        Fault::Kill => cluster.tablets[index].kill9(),
        Fault::Stop => cluster.tablets[index].pause(),
    }
    let writers: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .put("default", TABLE, tessera_row(&key, 1))
                    .await
                    .expect("a put through the failover");
                Instant::now()
            })
        })
        .collect();
    let mut samples = Vec::new();
    for writer in writers {
        samples.push(writer.await.expect("writer").duration_since(struck));
    }
    match fault {
        Fault::Kill => cluster.tablets[index].restart().await,
        Fault::Stop => cluster.tablets[index].resume(),
    }
    // Back to three alive replicas of every partition before the next run.
    wait_until_async(WAIT, "every replica alive again", || {
        let mut ns = ns.clone();
        async move {
            let rows = table_rows(&mut ns, TABLE).await;
            rows.len() == (PARTITIONS * 3) as usize
                && rows.iter().all(|r| r.is_alive)
                && leaders(&rows).len() == PARTITIONS as usize
        }
    })
    .await;
    samples
}

/// The nameserver's count of followers' reports by verdict, from `/metrics`.
async fn leader_reports(endpoint: &str, verdict: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(endpoint).await else {
        return 0;
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body).await;
    let prefix = format!("tessera_leader_reports_total{{verdict=\"{verdict}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn add(&mut self, what: &str, etcd: String, tessera: String, ratio: Option<f64>) {
        let ratio = ratio.map_or("-".to_string(), |r| format!("{r:.2}"));
        self.rows.push([what.to_string(), etcd, tessera, ratio]);
    }

    fn print(&self) {
        let header = [
            "workload".to_string(),
            "etcd".to_string(),
            "tessera".to_string(),
            "tessera / etcd".to_string(),
        ];
        let widths: Vec<usize> = (0..4)
            .map(|c| {
                self.rows
                    .iter()
                    .chain([&header])
                    .map(|r| r[c].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in [&header].into_iter().chain(self.rows.iter()) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            println!("| {} |", cells.join(" | "));
        }
    }
}

/// One row per system that ran, `-` for one that did not.
fn pair<T>(results: &[Option<T>; 2], show: impl Fn(&T) -> String) -> [String; 2] {
    [0, 1].map(|i| results[i].as_ref().map_or("-".to_string(), &show))
}

/// Tessera's figure over etcd's, when both ran.
fn ratio<T>(results: &[Option<T>; 2], figure: impl Fn(&T) -> f64) -> Option<f64> {
    match results {
        [Some(etcd), Some(tessera)] => Some(figure(tessera) / figure(etcd)),
        _ => None,
    }
}

async fn run() {
    let runs = env_number("RUNS", 5) as usize;
    let step = Duration::from_secs(env_number("SECONDS", 10));
    let systems = std::env::var("SYSTEMS").unwrap_or_else(|_| "etcd,tessera".into());
    let with_etcd = systems.split(',').any(|s| s.trim() == "etcd");
    let dir = tempfile::tempdir().expect("temporary directory");
    // KEEP=1 leaves the processes' directories and logs behind, for a look afterwards.
    let kept = std::env::var_os("KEEP").map(|_| dir.path().to_path_buf());
    if let Some(path) = &kept {
        eprintln!("keeping {} (KEEP)", path.display());
    }

    eprintln!("starting etcd (3 members) and Tessera (ZooKeeper, a nameserver, 3 tablets)");
    let mut etcd = None;
    let mut etcd_store = None;
    if with_etcd {
        let started = Etcd::start(dir.path());
        started.wait_healthy().await;
        let client = etcd_client::Client::connect(started.endpoints(), None)
            .await
            .expect("connect to etcd");
        etcd_store = Some(Store::Etcd(Box::new(client)));
        etcd = Some(started);
    }
    // Extra tablet flags, for experiments only: the published figures use the defaults.
    let tablet_args = std::env::var("TABLET_ARGS").unwrap_or_default();
    let tablet_args: Vec<&str> = tablet_args.split_whitespace().collect();
    let spec = NsClusterSpec {
        tablet_args: &tablet_args,
        ..NsClusterSpec::defaults()
    };
    let mut cluster = NsCluster::start(&dir.path().join("tessera"), spec).await;
    cluster.create_table(TABLE, PARTITIONS, 3).await;
    let tessera_client = Arc::new(cluster.sdk(Duration::from_secs(60)).await);
    // etcd first, then Tessera; a system left out has no entry.
    let stores: [Option<Store>; 2] = [etcd_store, Some(Store::Tessera(tessera_client.clone()))];
    let each = || stores.iter().flatten();

    let mut table = Table { rows: Vec::new() };
    let alarms_before = leader_reports(&cluster.nameserver.endpoint, "alive").await;
    let failovers_before = leader_reports(&cluster.nameserver.endpoint, "silent").await;

    for store in each() {
        eprintln!("{}: writing {KEYS} keys", store.name());
        let mut tasks = Vec::new();
        for part in 0..16u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for k in (part..KEYS).step_by(16) {
                    store.put(&format!("k{k}"), 1).await.expect("preload");
                }
            }));
        }
        for task in tasks {
            task.await.expect("preload task");
        }
    }

    async fn each_load(
        stores: &[Option<Store>; 2],
        op: Op,
        clients: usize,
        step: Duration,
        rate: impl Fn(usize) -> Option<f64>,
    ) -> [Option<Stats>; 2] {
        let mut results = [None, None];
        for (i, store) in stores.iter().enumerate() {
            if let Some(store) = store {
                eprintln!(
                    "{}: {op:?} with {clients} clients for {step:?}",
                    store.name()
                );
                let stats = load(store, op, clients, step, rate(i)).await;
                if stats.errors > 0 {
                    eprintln!("{}: {} calls failed", store.name(), stats.errors);
                }
                results[i] = Some(stats);
            }
        }
        results
    }

    for clients in [1usize, 16, 64] {
        let mut results = each_load(&stores, Op::Put, clients, step, |_| None).await;
        let [etcd_figure, tessera_figure] = pair(&results, |s| format!("{:.0}", s.throughput()));
        table.add(
            &format!("puts/s, {clients} clients"),
            etcd_figure,
            tessera_figure,
            ratio(&results, Stats::throughput),
        );
        for stats in results.iter_mut().flatten() {
            stats.percentile(0.99);
        }
        let p99 = |s: &Stats| s.sorted_percentile(0.99).as_secs_f64();
        let [etcd_figure, tessera_figure] = pair(&results, |s| ms(s.sorted_percentile(0.99)));
        table.add(
            &format!("put p99, {clients} clients"),
            etcd_figure,
            tessera_figure,
            ratio(&results, p99),
        );
    }

    let batches = each_load(&stores, Op::PutBatch, 16, step, |_| None).await;
    let [etcd_figure, tessera_figure] = pair(&batches, |s| format!("{:.0}", s.throughput()));
    table.add(
        &format!("rows/s in batches of {BATCH_ROWS}, 16 clients"),
        etcd_figure,
        tessera_figure,
        ratio(&batches, Stats::throughput),
    );

    let peaks = each_load(&stores, Op::Get, 16, step, |_| None).await;
    let [etcd_figure, tessera_figure] = pair(&peaks, |s| format!("{:.0}", s.throughput()));
    table.add(
        "gets/s, 16 clients",
        etcd_figure,
        tessera_figure,
        ratio(&peaks, Stats::throughput),
    );
    let half_rate = |i: usize| peaks[i].as_ref().map(|p| p.throughput() / 2.0);
    let mut halves = each_load(&stores, Op::Get, 16, step, half_rate).await;
    for stats in halves.iter_mut().flatten() {
        stats.percentile(0.5);
    }
    for (label, p) in [
        ("get p50 at half load", 0.50),
        ("get p99 at half load", 0.99),
    ] {
        let [etcd_figure, tessera_figure] = pair(&halves, |s| ms(s.sorted_percentile(p)));
        let figure = |s: &Stats| s.sorted_percentile(p).as_secs_f64();
        table.add(label, etcd_figure, tessera_figure, ratio(&halves, figure));
    }
    let false_alarms = leader_reports(&cluster.nameserver.endpoint, "alive").await - alarms_before;
    let false_failovers =
        leader_reports(&cluster.nameserver.endpoint, "silent").await - failovers_before;

    for fault in [Fault::Kill, Fault::Stop] {
        if runs == 0 {
            break;
        }
        let (mut etcd_samples, mut tessera_samples) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let e = match &mut etcd {
                Some(etcd) => Some(etcd_failover(etcd, fault).await),
                None => None,
            };
            let t = tessera_failover(&mut cluster, &tessera_client, fault).await;
            eprintln!(
                "{} run {run}/{runs}: etcd {e:?}, tessera {t:?}",
                fault.name()
            );
            etcd_samples.extend(e);
            tessera_samples.extend(t);
        }
        let medians = [
            etcd.is_some().then(|| median(etcd_samples)),
            Some(median(tessera_samples)),
        ];
        let [etcd_figure, tessera_figure] = pair(&medians, |d| ms(*d));
        table.add(
            &format!("failover, {} of the leader (median)", fault.name()),
            etcd_figure,
            tessera_figure,
            ratio(&medians, Duration::as_secs_f64),
        );
    }

    println!();
    table.print();
    println!();
    println!(
        "Tessera false alarms under the load above: {false_alarms} reports of a silent leader \
         that answered the nameserver's ping, {false_failovers} that did not (a needless change \
         of leader)."
    );
    if kept.is_some() {
        drop(cluster);
        let _ = dir.keep();
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}
