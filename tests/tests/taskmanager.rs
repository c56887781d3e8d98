//! The taskmanager with real processes: two instances elected through ZooKeeper, jobs
//! submitted with ns_client. A one-million-row import survives `kill -9` of the leader
//! (the standby finishes it from its checkpoints; the table ends with exactly the file's
//! rows), an import resumed past a paused leader writes every row exactly once, an export
//! re-imported gives identical content, and a malformed line fails its job with the
//! line's number.

use std::path::Path;

use tessera_common::Value;
use tessera_ns_client::{Client, ClientError, ClientOptions};
use tessera_tests::jobs::Jobs;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::process::http_get;
use tessera_tests::ElectedProcess;

struct Cluster {
    cluster: NsCluster,
    taskmanagers: Vec<ElectedProcess>,
    jobs: Jobs,
    client: Client,
}

async fn start(dir: &Path) -> Cluster {
    // These tests are about jobs, not durability: no fsync keeps a million replicated
    // writes quick on a small machine.
    start_with(dir, &["--binlog_fsync=none"]).await
}

async fn start_with(dir: &Path, tablet_args: &[&str]) -> Cluster {
    let cluster = NsCluster::start(
        dir,
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args,
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await;
    let mut taskmanagers = Vec::new();
    for i in 0..2 {
        let tm =
            ElectedProcess::start_taskmanager(&dir.join(format!("tm{i}")), &cluster.zk, 2000, dir)
                .await;
        if i == 0 {
            tm.wait_leader().await;
        }
        taskmanagers.push(tm);
    }
    let zk = cluster.zk.connect_string();
    Cluster {
        jobs: Jobs::connect(&zk).await,
        client: Client::connect(&zk, "/tessera").await.unwrap(),
        cluster,
        taskmanagers,
    }
}

impl Cluster {
    fn create(&self, name: &str, partitions: u32) {
        self.jobs.ok(&format!(
            "create table {name} (id string not null, ts timestamp, v bigint, note string, \
             index(key=id, ts=ts)) options (partitionnum={partitions}, replicanum=3);"
        ));
    }
}

/// The data lines of a CSV file (header dropped), sorted.
fn sorted_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read the csv");
    let mut lines: Vec<String> = text.lines().skip(1).map(str::to_string).collect();
    lines.sort_unstable();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_row_import_survives_the_death_of_the_leader() {
    const ROWS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    assert_eq!(
        http_get(&c.taskmanagers[0].endpoint, "/api/leader-check").0,
        200
    );
    assert_eq!(
        http_get(&c.taskmanagers[1].endpoint, "/api/leader-check").0,
        404
    );
    c.create("big", 8);

    let file = dir.path().join("big.csv");
    let mut text = String::with_capacity(40 * ROWS as usize);
    text.push_str("id,ts,v,note\n");
    for i in 0..ROWS {
        text.push_str(&format!(
            "k{i},{},{},note {}\n",
            1_700_000_000_000 + i,
            i * 7,
            i % 100
        ));
    }
    std::fs::write(&file, &text).unwrap();

    let started = std::time::Instant::now();
    let id = c.jobs.submit(&format!(
        "load data infile '{}' into table big options (header=true)",
        file.display()
    ));
    // Progress shows, then the leader dies in the middle.
    let (midway, seen) = c
        .jobs
        .poll_job(id, |j| j.total == ROWS && j.done >= ROWS / 4)
        .await;
    assert!(midway, "the import made no progress: {seen:?}");
    eprintln!(
        "{:?}: {} rows imported when the leader is killed",
        started.elapsed(),
        seen.done
    );
    assert!(seen.done < ROWS, "killed before the end: {seen:?}");
    assert_eq!(seen.state, "Running");
    let shown = c.jobs.ok(&format!("showjob {id}"));
    assert!(
        shown.contains("ImportData") && shown.contains("Running"),
        "{shown}"
    );
    c.taskmanagers[0].kill9();

    c.taskmanagers[1].wait_leader().await;
    let job = c.jobs.wait_job(id).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    eprintln!("{:?}: import finished", started.elapsed());
    assert_eq!(job.done, ROWS);
    assert_eq!(
        job.endpoint, c.taskmanagers[1].endpoint,
        "the standby finished it"
    );
    let log = std::fs::read_to_string(&c.taskmanagers[1].log_path).unwrap();
    assert!(log.contains("resuming job"), "{log}");

    assert_eq!(
        c.client.count("default", "big", Vec::new()).await.unwrap(),
        ROWS
    );
    for i in [0, 1, 4_999, 250_001, 499_999, 777_777, ROWS - 1] {
        let row = c
            .client
            .get("default", "big", vec![Value::String(format!("k{i}"))])
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("row k{i} missing"));
        assert_eq!(
            row,
            vec![
                Value::String(format!("k{i}")),
                Value::Timestamp(1_700_000_000_000 + i as i64),
                Value::Int64(i as i64 * 7),
                Value::String(format!("note {}", i % 100)),
            ]
        );
    }
    // Exactly the file's rows: none lost, none doubled.
    let out = dir.path().join("big-export.csv");
    let export = c
        .jobs
        .submit(&format!("export table big to '{}'", out.display()));
    let job = c.jobs.wait_job(export).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    eprintln!("{:?}: export finished", started.elapsed());
    assert!(
        sorted_lines(&out) == sorted_lines(&file),
        "the table holds exactly the file's rows"
    );
    let jobs = c.jobs.ok("showjobs");
    assert!(
        jobs.contains("ImportData") && jobs.contains("ExportData"),
        "{jobs}"
    );
}

/// The leader is paused (SIGSTOP) past its ZooKeeper session in the middle of an import,
/// the standby resumes the import, and then the old leader wakes up with its writes in
/// flight. Every row of the file is written exactly once, although the table already
/// holds the same rows (the file is imported twice): the standby's run registers a newer
/// epoch, so the old run's late writes are refused, and it recognises the rows the old
/// run wrote past its checkpoint by their sequence numbers instead of guessing from the
/// table's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_resumed_past_a_paused_leader_writes_every_row_exactly_once() {
    const ROWS: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    c.create("twice", 4);
    let file = dir.path().join("twice.csv");
    let mut text = String::from("id,ts,v,note\n");
    for i in 0..ROWS {
        text.push_str(&format!("k{},{},{i},n\n", i % 5_000, 1_700_000_000_000 + i));
    }
    std::fs::write(&file, &text).unwrap();
    let load = format!(
        "load data infile '{}' into table twice options (header=true)",
        file.display()
    );

    let first = c.jobs.submit(&load);
    let job = c.jobs.wait_job(first).await;
    assert_eq!(
        (job.state.as_str(), job.done),
        ("Finished", ROWS),
        "{job:?}"
    );

    let id = c.jobs.submit(&load);
    let (midway, seen) = c
        .jobs
        .poll_job(id, |j| j.total == ROWS && j.done >= ROWS / 4)
        .await;
    assert!(midway, "the import made no progress: {seen:?}");
    assert!(seen.done < ROWS, "paused before the end: {seen:?}");
    c.taskmanagers[0].pause();
    c.taskmanagers[1].wait_leader().await;
    let (resumed, again) = c
        .jobs
        .poll_job(id, |j| {
            j.endpoint == c.taskmanagers[1].endpoint && j.epoch > seen.epoch
        })
        .await;
    assert!(resumed, "the standby did not resume the import: {again:?}");
    // The old leader wakes up while its successor writes.
    c.taskmanagers[0].resume();
    let job = c.jobs.wait_job(id).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    assert_eq!(job.done, ROWS);
    assert_eq!(
        job.endpoint, c.taskmanagers[1].endpoint,
        "the standby finished it"
    );

    assert_eq!(
        c.client
            .count("default", "twice", Vec::new())
            .await
            .unwrap(),
        2 * ROWS,
        "every row of the file twice: once per import"
    );
    let out = dir.path().join("twice-export.csv");
    let export = c
        .jobs
        .submit(&format!("export table twice to '{}'", out.display()));
    let exported = c.jobs.wait_job(export).await;
    assert_eq!(exported.state, "Finished", "{exported:?}");
    let mut doubled: Vec<String> = sorted_lines(&file)
        .into_iter()
        .flat_map(|line| [line.clone(), line])
        .collect();
    doubled.sort_unstable();
    assert!(
        sorted_lines(&out) == doubled,
        "the table holds each of the file's rows exactly twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_then_import_gives_identical_content_and_bad_lines_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    c.jobs.ok(
        "create table every (id string not null, ts timestamp, b bool, i16 smallint, i32 int, \
         f float, d double, day date, note string, index(key=id, ts=ts)) options (partitionnum=4, replicanum=3);",
    );
    for i in 0..300 {
        c.client
            .put(
                "default",
                "every",
                vec![
                    Value::String(format!("id{i}")),
                    Value::Timestamp(1_000 + i),
                    Value::Bool(i % 2 == 0),
                    Value::Int16(i as i16),
                    Value::Int32(-(i as i32)),
                    Value::Float(i as f32 / 3.0),
                    Value::Double(i as f64 * 1.5),
                    Value::Date(19_000 + i as i32),
                    match i % 4 {
                        0 => Value::String("with, a comma".into()),
                        1 => Value::Null,
                        2 => Value::String("say \"hi\"".into()),
                        _ => Value::String(format!("plain{i}")),
                    },
                ],
            )
            .await
            .unwrap();
    }
    let first = dir.path().join("every.csv");
    let id = c.jobs.submit(&format!(
        "export table every to '{}' options (delimiter='|')",
        first.display()
    ));
    assert_eq!(c.jobs.wait_job(id).await.state, "Finished");
    c.jobs.ok(
        "create table copy (id string not null, ts timestamp, b bool, i16 smallint, i32 int, \
         f float, d double, day date, note string, index(key=id, ts=ts)) options (partitionnum=2, replicanum=3);",
    );
    let id = c.jobs.submit(&format!(
        "load data infile '{}' into table copy options (header=true, delimiter='|')",
        first.display()
    ));
    let job = c.jobs.wait_job(id).await;
    assert_eq!((job.state.as_str(), job.done), ("Finished", 300), "{job:?}");
    let second = dir.path().join("copy.csv");
    let id = c.jobs.submit(&format!(
        "export table copy to '{}' options (delimiter='|')",
        second.display()
    ));
    assert_eq!(c.jobs.wait_job(id).await.state, "Finished");
    assert_eq!(sorted_lines(&first).len(), 300);
    assert_eq!(
        sorted_lines(&first),
        sorted_lines(&second),
        "identical content"
    );

    // A malformed line: the job fails naming it, and nothing is written.
    c.create("strict", 2);
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "id,ts,v,note\na,1,10,x\nb,2,20,y\nc,3,30,z\nd,4,notanumber,w\ne,5,50,v\n",
    )
    .unwrap();
    let id = c.jobs.submit(&format!(
        "load data infile '{}' into table strict",
        bad.display()
    ));
    let job = c.jobs.wait_job(id).await;
    assert_eq!(job.state, "Failed");
    assert!(
        job.error.contains("line 5") && job.error.contains("`notanumber` is not a valid"),
        "{job:?}"
    );
    assert_eq!(
        c.client
            .count("default", "strict", Vec::new())
            .await
            .unwrap(),
        0
    );
    // Asked to, it skips the line and counts it.
    let id = c.jobs.submit(&format!(
        "load data infile '{}' into table strict options (skip_bad_rows=true)",
        bad.display()
    ));
    let job = c.jobs.wait_job(id).await;
    assert_eq!(
        (job.state.as_str(), job.done, job.skipped),
        ("Finished", 4, 1),
        "{job:?}"
    );
    assert_eq!(
        c.client
            .count("default", "strict", Vec::new())
            .await
            .unwrap(),
        4
    );

    // A running import stops when told, and stays stopped.
    let long = dir.path().join("long.csv");
    let mut text = String::from("id,ts,v,note\n");
    for i in 0..200_000 {
        text.push_str(&format!("s{i},{i},{i},n\n"));
    }
    std::fs::write(&long, text).unwrap();
    c.create("stopped", 2);
    let long_id = c.jobs.submit(&format!(
        "load data infile '{}' into table stopped",
        long.display()
    ));
    let (running, seen) = c.jobs.poll_job(long_id, |j| j.done > 0).await;
    assert!(running, "{seen:?}");
    let out = c.jobs.ok(&format!("stopjob {long_id}"));
    assert!(out.contains(&format!("job {long_id} stopped")), "{out}");
    let job = c.jobs.wait_job(long_id).await;
    assert_eq!(job.state, "Stopped");
    let written = c
        .client
        .count("default", "stopped", Vec::new())
        .await
        .unwrap();
    assert!(written < 200_000, "stopped before the end: {written}");

    // A snapshot of every table.
    let snapshot = c
        .jobs
        .connection()
        .call(|mut tm| async move {
            tm.submit_job(tessera_proto::taskmanager::SubmitJobRequest {
                job_type: "SnapshotAll".into(),
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap()
        .into_inner();
    let job = c.jobs.wait_job(snapshot.id).await;
    assert_eq!(
        (job.state.as_str(), job.done, job.total),
        ("Finished", 4, 4),
        "{job:?}"
    );

    // Mistakes are refused up front; an ended job cannot be stopped.
    let (ok, out) = c
        .jobs
        .ns_client("load data infile 'no/such.csv' into table strict");
    assert!(!ok && out.contains("is not a file"), "{out}");

    // Jobs touch files only under the job data directory: no reading the server's
    // files, no writing them, whether by an absolute path, `..` or a link out.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.csv");
    std::fs::write(&secret, "k,1\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link_out")).unwrap();
    for statement in [
        format!("load data infile '{}' into table strict", secret.display()),
        "load data infile '../../../../../../etc/passwd' into table strict".to_string(),
        "load data infile 'link_out/secret.csv' into table strict".to_string(),
        format!(
            "export table strict to '{}'",
            outside.path().join("x.csv").display()
        ),
        "export table strict to 'link_out/x.csv'".to_string(),
        "export table strict to '../x.csv'".to_string(),
    ] {
        let (ok, out) = c.jobs.ns_client(&statement);
        assert!(
            !ok && out.contains("permission denied") && out.contains("job data directory"),
            "`{statement}` must be refused:\n{out}"
        );
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    let (ok, out) = c.jobs.ns_client(&format!(
        "load data infile '{}' into table nosuch",
        bad.display()
    ));
    assert!(!ok && out.contains("nosuch"), "{out}");
    let (ok, out) = c.jobs.ns_client(&format!("stopjob {id}"));
    assert!(!ok && out.contains("already ended"), "{out}");
    let (ok, out) = c.jobs.ns_client("showjob 999");
    assert!(!ok && out.contains("no job 999"), "{out}");
    let (_, metrics) = http_get(&c.taskmanagers[0].endpoint, "/metrics");
    assert!(
        metrics.contains("tessera_taskmanager_is_leader 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tessera_taskmanager_jobs{job_type=\"ImportData\",state=\"Failed\"} 1"),
        "{metrics}"
    );
}

/// Results larger than any one answer may be: one key holding 20 MB of rows is scanned
/// whole through the SDK, also by a client that accepts no more than tonic's default
/// 4 MiB per answer, and exported; a client that cannot take even one row is refused at
/// once rather than retried until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_megabytes_of_one_key_scan_and_export_in_pages() {
    const ROWS: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path()).await;
    c.create("wide", 2);
    let note = |i: i64| format!("{i:06}{}", "x".repeat(994));
    let row = |i: i64| {
        vec![
            Value::String("hot".into()),
            Value::Timestamp(1_700_000_000_000 + i),
            Value::Int64(i),
            Value::String(note(i)),
        ]
    };
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(500) {
        let rows = chunk.iter().map(|&i| row(i)).collect();
        c.client.put_batch("default", "wide", rows).await.unwrap();
    }

    let zk = c.cluster.zk.connect_string();
    let small_answers = Client::connect_with(
        &zk,
        "/tessera",
        ClientOptions {
            max_response_bytes: 4 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for client in [&c.client, &small_answers] {
        let rows = client
            .scan(
                "default",
                "wide",
                vec![Value::String("hot".into())],
                None,
                None,
                0,
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), ROWS as usize, "every row of the key, once");
        let expected: Vec<Vec<Value>> = (0..ROWS).rev().map(row).collect();
        assert!(rows == expected, "newest first, none missed or repeated");
    }
    let limited = small_answers
        .scan(
            "default",
            "wide",
            vec![Value::String("hot".into())],
            None,
            None,
            2_500,
        )
        .await
        .unwrap();
    assert_eq!(limited.len(), 2_500, "a limit spanning pages is honoured");

    let tiny = Client::connect_with(
        &zk,
        "/tessera",
        ClientOptions {
            max_response_bytes: 512,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let refused = tiny
        .scan(
            "default",
            "wide",
            vec![Value::String("hot".into())],
            None,
            None,
            1,
        )
        .await;
    assert!(
        matches!(refused, Err(ClientError::Refused(_))),
        "an answer too large for the client is not retried: {refused:?}"
    );

    let out = dir.path().join("wide.csv");
    let export = c
        .jobs
        .submit(&format!("export table wide to '{}'", out.display()));
    let job = c.jobs.wait_job(export).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    assert_eq!(job.done, ROWS as u64);
    let lines = sorted_lines(&out);
    assert_eq!(lines.len(), ROWS as usize, "every row exported once");
    assert!(lines[0].contains(&note(0)) && lines[ROWS as usize - 1].contains(&note(ROWS - 1)));
}

/// An export is the table at one moment. Each partition is read as of the offset and
/// time recorded beside the file: rows written while the export runs are left out, and
/// rows whose TTL runs out while it runs stay (they were alive at that moment), without
/// shifting the pages after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_is_the_table_at_one_moment() {
    const TTL_MS: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    // Pages of about ten rows make the export long enough to have writes and expiry
    // happen during it.
    let mut c = start_with(
        dir.path(),
        &["--binlog_fsync=none", "--scan_max_bytes=1024"],
    )
    .await;
    c.jobs.ok(
        "create table moment (id string not null, ts timestamp, v bigint, note string, \
         index(key=id, ts=ts, ttl=1, ttl_type=absolute)) options (partitionnum=4, replicanum=3);",
    );
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let row = |i: i64, ts: i64| {
        vec![
            Value::String(format!("k{i}")),
            Value::Timestamp(ts),
            Value::Int64(i),
            Value::String(format!("note {i}")),
        ]
    };
    let mut written: Vec<(Vec<Value>, u64)> = Vec::new();
    let put_all = |rows: Vec<Vec<Value>>| {
        let client = &c.client;
        async move {
            let versions = client
                .put_batch("default", "moment", rows.clone())
                .await
                .unwrap();
            rows.into_iter()
                .zip(versions)
                .map(|(r, (_, offset))| (r, offset))
                .collect::<Vec<_>>()
        }
    };
    // Rows with a minute to live; then, last, rows with a second to live: they expire
    // while the export (a few seconds of small pages) runs.
    let now = clock();
    for chunk in (1_000..20_000).collect::<Vec<i64>>().chunks(500) {
        written.extend(put_all(chunk.iter().map(|&i| row(i, now)).collect()).await);
    }
    let expiring = clock() - TTL_MS + 1_000;
    written.extend(put_all((0..1_000).map(|i| row(i, expiring)).collect()).await);

    // A writer keeps writing new rows while the export runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, zk) = (stop.clone(), c.cluster.zk.connect_string());
        tokio::spawn(async move {
            let client = Client::connect(&zk, "/tessera").await.unwrap();
            let mut during = Vec::new();
            let mut i = 100_000;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let r = row(i, now);
                let (_, offset) = client.put("default", "moment", r.clone()).await.unwrap();
                during.push((r, offset));
                i += 1;
            }
            during
        })
    };
    let out = dir.path().join("moment.csv");
    let export = c
        .jobs
        .submit(&format!("export table moment to '{}'", out.display()));
    let job = c.jobs.wait_job(export).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(job.state, "Finished", "{job:?}");
    written.extend(writer.await.unwrap());

    // pid -> (offset, time) the partition was read as of, as recorded beside the file.
    let recorded = std::fs::read_to_string(dir.path().join("moment.csv.offsets")).unwrap();
    let moments: std::collections::HashMap<u32, (u64, i64)> = recorded
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                (f[1].parse().unwrap(), f[2].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(moments.len(), 4, "{recorded}");
    assert_eq!(job.moments.len(), 4, "the job records the moments too");

    // Exactly the rows each partition held at its moment, alive then.
    let mut expected = Vec::new();
    let mut left_out = 0;
    for (r, offset) in &written {
        let pid = c.client.partition_of("default", "moment", r).await.unwrap();
        let (at, time) = moments[&pid];
        let Value::Timestamp(ts) = r[1] else {
            unreachable!()
        };
        if *offset <= at && ts >= time - TTL_MS {
            expected.push(
                r.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        } else if *offset > at {
            left_out += 1;
        }
    }
    expected.sort_unstable();
    let exported = sorted_lines(&out);
    assert!(
        exported == expected,
        "the file is the table at the recorded moments ({} rows exported, {} expected)",
        exported.len(),
        expected.len()
    );
    eprintln!(
        "{} rows exported, {left_out} written during the export left out; rows expired {} ms \
         after the export began and {} ms before it ended",
        exported.len(),
        expiring + TTL_MS - job.start_time_ms as i64,
        job.end_time_ms as i64 - expiring - TTL_MS,
    );
}
