//! The SDK outlives its ZooKeeper session: ZooKeeper paused past the client's session
//! timeout expires the session, and the client opens a new one, reads the metadata again
//! and sets its watch again, so calls go on and later metadata changes are still seen.
//! Dropping a client closes its session.

use std::time::Duration;

use tessera_common::Value;
use tessera_ns_client::{Client, ClientOptions};
use tessera_tests::jobs::Jobs;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::wait::{poll_until_async, wait_until_async};
use tessera_tests::workload::sdk_row;

/// The servers' sessions (20 s, ZooKeeper's longest here) outlast the pauses below;
/// clients' sessions (10 s by default) do not.
fn spec() -> NsClusterSpec<'static> {
    NsClusterSpec {
        tablets: 3,
        tablet_session_ms: Some(20_000),
        tablet_args: &[],
        nameserver_session_ms: 20_000,
        nameserver_args: &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_outlives_its_expired_zookeeper_session() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), spec()).await;
    cluster.create_table("t1", 2, 3).await;
    let client = Client::connect_with(
        &cluster.zk.connect_string(),
        "/tessera",
        ClientOptions {
            zk_session_timeout: Duration::from_millis(800),
            deadline: Duration::from_secs(30),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    client.put("default", "t1", sdk_row("a", 1)).await.unwrap();

    // ZooKeeper paused for several of the client's session timeouts expires the session
    // when it resumes (a client reconnecting at that very moment may still save it: then
    // pause again).
    for _ in 0..5 {
        cluster.zk.pause();
        // The length of the fault, not a wait for a condition.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.zk.resume();
        let renewed = poll_until_async(Duration::from_secs(10), || async {
            // A read of metadata not cached yet goes to ZooKeeper and finds the session
            // gone, or the watch loop does.
            let _ = client.partition_count("default", "t1").await;
            client.zk_session_renewals() > 0
        })
        .await;
        if renewed {
            break;
        }
    }
    assert!(
        client.zk_session_renewals() > 0,
        "the client's session never expired"
    );

    // Calls go on with the new session.
    client.put("default", "t1", sdk_row("a", 2)).await.unwrap();
    let rows = client
        .scan(
            "default",
            "t1",
            vec![Value::String("a".into())],
            None,
            None,
            0,
        )
        .await
        .unwrap();
    assert_eq!(rows, vec![sdk_row("a", 2), sdk_row("a", 1)]);

    // The watch is set again: a table dropped and made anew with another schema after
    // the renewal is seen (with the old schema cached, the new row would be refused as
    // invalid for good).
    let jobs = Jobs::connect(&cluster.zk.connect_string()).await;
    jobs.ok("drop table t1");
    jobs.ok(
        "create table t1 (writer string not null, seq bigint, v bigint, pad string, \
         extra bigint, index(key=writer, ts=seq)) options (partitionnum=1, replicanum=3);",
    );
    let mut row = sdk_row("b", 1);
    row.push(Value::Int64(7));
    wait_until_async(
        Duration::from_secs(30),
        "a put of the new table's schema",
        || {
            let (client, row) = (&client, row.clone());
            async move { client.put("default", "t1", row).await.is_ok() }
        },
    )
    .await;
}

/// The taskmanager keeps one SDK client for all its jobs, and the test follows the jobs
/// through a leader connection: ZooKeeper paused past both sessions (and the
/// taskmanager's election session), the taskmanager leads again and runs the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_taskmanager_runs_jobs_after_its_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), spec()).await;
    cluster.create_table("t1", 2, 3).await;
    let taskmanager = cluster.start_taskmanager(dir.path(), &[]).await;
    let sdk = cluster.sdk(Duration::from_secs(30)).await;
    sdk.put("default", "t1", sdk_row("a", 1)).await.unwrap();
    let mut jobs = Jobs::connect(&cluster.zk.connect_string()).await;
    let before = jobs.submit("export table t1 to 'before.csv'");
    assert_eq!(jobs.wait_job(before).await.state, "Finished");

    cluster.zk.pause();
    // The length of the fault: past the 10 s of the clients' sessions.
    tokio::time::sleep(Duration::from_secs(12)).await;
    cluster.zk.resume();
    taskmanager.wait_leader().await;

    let after = jobs.submit("export table t1 to 'after.csv'");
    let job = jobs.wait_job(after).await;
    assert_eq!(job.state, "Finished", "{job:?}");
    let exported = std::fs::read_to_string(dir.path().join("job_data/after.csv")).unwrap();
    assert!(exported.contains("payload"), "{exported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_client_closes_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), spec()).await;
    // The sessions ZooKeeper holds (`cons` lists each connection with its session id).
    let sessions = || -> std::collections::BTreeSet<String> {
        cluster
            .zk
            .four_letter("cons")
            .expect("ZooKeeper answers `cons`")
            .split("sid=")
            .skip(1)
            .filter_map(|rest| rest.split([',', ')']).next())
            .map(str::to_string)
            .collect()
    };
    let before = sessions();
    let client = cluster.sdk(Duration::from_secs(5)).await;
    let added: Vec<String> = sessions().difference(&before).cloned().collect();
    assert!(!added.is_empty(), "the client holds a session");
    drop(client);
    wait_until_async(
        Duration::from_secs(10),
        "the dropped client's session to close",
        || {
            let now = sessions();
            let open = added.iter().any(|sid| now.contains(sid));
            async move { !open }
        },
    )
    .await;
}
