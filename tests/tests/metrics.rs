//! `/metrics` of every server (tablets, nameserver, taskmanager) after real traffic,
//! parsed by a Prometheus text parser: each answers in the format, and the counts
//! follow what was done.

use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::process::http_get;
use tessera_tests::wait_until_async;

fn scrape(endpoint: &str) -> Scrape {
    let (code, body) = http_get(endpoint, "/metrics");
    assert_eq!(code, 200, "{endpoint}/metrics: {body}");
    assert!(
        body.trim_end().ends_with("# EOF"),
        "a whole scrape:\n{body}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{endpoint}/metrics does not parse: {e}\n{body}"))
}

fn number(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => panic!("no summaries here"),
    }
}

/// The sum of the samples of `metric` whose labels include `labels`.
fn total(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(number)
        .sum()
}

fn has(scrape: &Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == metric)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_exports_metrics_that_follow_the_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::three_tablets()).await;
    let taskmanager = cluster.start_taskmanager(dir.path(), &[]).await;
    let mut jobs = tessera_tests::jobs::Jobs::connect(&cluster.zk.connect_string()).await;
    jobs.ok(
        "create table t (k string, ts bigint, v string, index(key=k, ts=ts)) \
         options (partitionnum=2, replicanum=3);",
    );
    let now = tessera_tests::now_ms();
    for i in 0..20 {
        jobs.ok(&format!("put t k{} {} v", i % 4, now + i));
    }
    jobs.ok("get t k1");
    assert!(jobs.ok("scan t k1").contains("5 row(s)"));
    assert!(
        jobs.ns_client("get t").0.eq(&false),
        "a usage error, not a call"
    );
    let export = jobs.submit("export table t to 'metrics.csv'");
    let job = jobs.wait_job(export).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    let rows: String = (0..7).map(|i| format!("i{i},{},v\n", now + i)).collect();
    std::fs::write(
        dir.path().join("job_data/in.csv"),
        format!("k,ts,v\n{rows}"),
    )
    .unwrap();
    let import = jobs.submit("load data infile 'in.csv' into table t options (header=true)");
    let job = jobs.wait_job(import).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    let listed: serde_json::Value = serde_json::from_str(jobs.ok("showjobs --format=json").trim())
        .expect("showjobs prints JSON");
    assert_eq!(listed["rows"].as_array().unwrap().len(), 2, "{listed}");

    // Tablets: the calls by method and status, their latency, and each replica.
    let mut puts = 0.0;
    for tablet in &cluster.tablets {
        let s = scrape(&tablet.endpoint);
        // The SDK sends single puts, or coalesces concurrent ones into batches.
        for method in ["Put", "PutBatch"] {
            puts += total(
                &s,
                "tessera_tablet_grpc_calls_total",
                &[("method", method), ("status", "Ok")],
            );
        }
        assert!(
            has(&s, "tessera_tablet_grpc_call_duration_seconds"),
            "latency"
        );
        assert!(has(&s, "tessera_tablet_grpc_calls_in_flight"));
        assert_eq!(
            total(&s, "tessera_tablet_replicas", &[]),
            2.0,
            "each tablet holds a replica of both partitions"
        );
        for metric in [
            "tessera_tablet_memory_bytes",
            "tessera_tablet_binlog_bytes",
            "tessera_tablet_snapshot_bytes",
            "tessera_tablet_leases_held",
            "tessera_tablet_fsync_duration_seconds",
        ] {
            assert!(has(&s, metric), "{} lacks {metric}", tablet.endpoint);
        }
        assert!(total(&s, "tessera_tablet_binlog_bytes", &[]) > 0.0);
    }
    assert!(puts >= 20.0, "every put counted on its leader: {puts}");
    let leaders: Vec<Scrape> = cluster
        .tablets
        .iter()
        .map(|t| scrape(&t.endpoint))
        .collect();
    let leading: f64 = leaders
        .iter()
        .map(|s| total(s, "tessera_tablet_replicas", &[("role", "leader")]))
        .sum();
    assert_eq!(leading, 2.0);
    let lags = leaders
        .iter()
        .flat_map(|s| &s.samples)
        .filter(|s| s.metric == "tessera_tablet_replication_lag_offsets")
        .count();
    assert_eq!(lags, 4, "two followers of each of two partitions");
    assert!(
        leaders
            .iter()
            .any(|s| total(s, "tessera_tablet_grpc_calls_total", &[("method", "Scan")]) >= 1.0),
        "the scan was counted"
    );

    // The nameserver: its calls, ops, leaderless partitions.
    let s = scrape(&cluster.nameserver.endpoint);
    assert_eq!(total(&s, "tessera_nameserver_is_leader", &[]), 1.0);
    assert_eq!(total(&s, "tessera_tablets", &[("state", "healthy")]), 3.0);
    assert_eq!(total(&s, "tessera_partitions_without_leader", &[]), 0.0);
    assert!(
        total(
            &s,
            "tessera_nameserver_grpc_calls_total",
            &[("method", "CreateTable"), ("status", "Ok")]
        ) >= 1.0
    );
    // An op: counted by type and status once done, with its duration.
    assert!(jobs.ok("makesnapshot t 0").contains("kMakeSnapshot"));
    tessera_tests::wait_until(
        std::time::Duration::from_secs(60),
        "the snapshot op to show in the metrics",
        || {
            let s = scrape(&cluster.nameserver.endpoint);
            total(
                &s,
                "tessera_ops",
                &[("op_type", "kMakeSnapshot"), ("status", "kDone")],
            ) == 1.0
                && total(
                    &s,
                    "tessera_op_duration_seconds_count",
                    &[("op_type", "kMakeSnapshot")],
                ) == 1.0
        },
    );

    // The taskmanager: its job and the rows it exported.
    let s = scrape(&taskmanager.endpoint);
    let mut exported: Vec<String> = Vec::new();
    for endpoint in cluster
        .tablets
        .iter()
        .map(|t| &t.endpoint)
        .chain([&cluster.nameserver.endpoint, &taskmanager.endpoint])
    {
        let (_, body) = http_get(endpoint, "/metrics");
        exported.extend(
            body.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from),
        );
    }
    dashboard_names_only_exported_metrics(&exported);
    assert_eq!(total(&s, "tessera_taskmanager_is_leader", &[]), 1.0);
    assert_eq!(
        total(
            &s,
            "tessera_taskmanager_jobs",
            &[("job_type", "ExportData"), ("state", "Finished")]
        ),
        1.0
    );
    assert_eq!(
        total(&s, "tessera_taskmanager_rows_exported_total", &[]),
        20.0
    );
    assert_eq!(
        total(&s, "tessera_taskmanager_rows_imported_total", &[]),
        7.0
    );
    assert!(
        total(
            &s,
            "tessera_taskmanager_grpc_calls_total",
            &[("method", "SubmitJob"), ("status", "Ok")]
        ) >= 1.0
    );
}

/// Every metric the Grafana dashboard in `conf/` queries is one a server exports.
fn dashboard_names_only_exported_metrics(exported: &[String]) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("tessera_"))
            {
                let base = ["_bucket", "_total", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                assert!(
                    exported.iter().any(|e| e == base),
                    "panel `{}` queries `{name}`, which no server exports",
                    panel["title"]
                );
            }
        }
    }
}

/// The op pipeline reads every table's metadata only after it changed: passes over an
/// idle cluster read none, and a change is seen at the next pass (the new table's
/// leaderless partitions are failed over like any other's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_op_pipeline_reads_the_tables_only_after_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::three_tablets()).await;
    cluster.create_table("t1", 4, 3).await;
    let ns = cluster.nameserver.endpoint.clone();
    let passes = |s: &Scrape| total(s, "tessera_op_pipeline_passes_total", &[]);
    let reads = |s: &Scrape| total(s, "tessera_metadata_table_reads_total", &[]);

    // The passes right after the creation read what it wrote; then nothing changes.
    let ten_passes = |from: f64| {
        let ns = ns.clone();
        async move {
            wait_until_async(
                Duration::from_secs(30),
                "ten passes of the op pipeline",
                || {
                    let done = passes(&scrape(&ns)) >= from + 10.0;
                    async move { done }
                },
            )
            .await
        }
    };
    ten_passes(passes(&scrape(&ns))).await;
    let before = scrape(&ns);
    ten_passes(passes(&before)).await;
    let after = scrape(&ns);
    assert!(
        reads(&after) == reads(&before),
        "{} reads of every table in {} idle passes",
        reads(&after) - reads(&before),
        passes(&after) - passes(&before)
    );

    // A change is read at once: a new table, then its leaders' tablet killed, is failed
    // over from metadata the pipeline read after the change.
    cluster.create_table("t2", 4, 3).await;
    let mut client = cluster.ns().await;
    let rows = tessera_tests::routed::table_rows(&mut client, "t2").await;
    let victim = rows
        .iter()
        .find(|r| r.role == "leader")
        .map(|r| r.endpoint.clone())
        .expect("a leader");
    let index = cluster.tablet_index(&victim);
    cluster.tablets[index].kill9();
    wait_until_async(
        Duration::from_secs(60),
        "t2 to lead again off the killed tablet",
        || {
            let mut client = client.clone();
            let victim = victim.clone();
            async move {
                let rows = tessera_tests::routed::table_rows(&mut client, "t2").await;
                rows.iter()
                    .filter(|r| r.role == "leader" && r.is_alive && r.endpoint != victim)
                    .count()
                    == 4
            }
        },
    )
    .await;
}

/// The nameserver's control calls to a tablet share one long-lived connection: creating
/// and dropping tables of 32 partitions (hundreds of calls to each tablet) connects to
/// each tablet about once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nameserver_calls_each_tablet_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::three_tablets()).await;
    let ns = cluster.nameserver.endpoint.clone();
    let connections = |s: &Scrape| total(s, "tessera_nameserver_tablet_connections_total", &[]);
    let before = connections(&scrape(&ns));
    let mut client = cluster.ns().await;
    for name in ["c1", "c2"] {
        cluster.create_table(name, 32, 3).await;
        let rows = tessera_tests::routed::table_rows(&mut client, name).await;
        assert_eq!(rows.len(), 96, "{name}: every replica listed");
        client
            .drop_table(tessera_proto::nameserver::DropTableRequest {
                db: String::new(),
                name: name.into(),
            })
            .await
            .expect("drop");
    }
    let made = connections(&scrape(&ns)) - before;
    assert!(
        made <= 3.0,
        "{made} connections to three tablets for two tables' creation and drop"
    );
}
