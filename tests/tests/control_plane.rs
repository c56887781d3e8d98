//! The nameserver's side of safety, with real processes: one leader per term however
//! ChangeLeader attempts race, a reconciler that repairs what the metadata does not see,
//! operator tools that put back what they change, and a nameserver that stops acting
//! once it may have been replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_common::auth::AuthChannel;

use tessera_common::Value;
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::{
    ChangeLeaderRequest, ConfSetRequest, EndpointRequest, OpIdRequest, OpInfo, ReplicaRequest,
    ShowOpStatusRequest, ShowSchemaRequest, TableInfo,
};
use tessera_proto::tablet::{GetTableStatusRequest, TableRole};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::ops::{self, auto_failover, set_auto_failover};
use tessera_tests::process::http_get;
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::workload::sdk_row;
use tessera_tests::{binary, wait_until_async, NameserverProcess};

const WAIT: Duration = Duration::from_secs(90);

async fn all_ops(ns: &mut NameserverClient<AuthChannel>) -> Vec<OpInfo> {
    ns.show_op_status(ShowOpStatusRequest::default())
        .await
        .map(|r| r.into_inner().ops)
        .unwrap_or_default()
}

async fn op(ns: &mut NameserverClient<AuthChannel>, op_id: u64) -> Option<OpInfo> {
    all_ops(ns).await.into_iter().find(|o| o.op_id == op_id)
}

/// Waits until op `op_id` has `status`, as nameserver `ns` shows it.
async fn wait_op_status(ns: &NameserverClient<AuthChannel>, op_id: u64, status: &str, what: &str) {
    wait_until_async(WAIT, what, || {
        let mut ns = ns.clone();
        async move { op(&mut ns, op_id).await.is_some_and(|o| o.status == status) }
    })
    .await;
}

/// Waits until `nameserver` logs that it did not write op `op_id`'s progress.
async fn wait_progress_refused(nameserver: &NameserverProcess, op_id: u64, what: &str) {
    wait_until_async(WAIT, what, || {
        let log = nameserver.log();
        let op_field = format!("op_id={op_id} ");
        async move {
            log.lines()
                .any(|l| l.contains("op progress not written") && l.contains(&op_field))
        }
    })
    .await;
}

async fn change_leader(ns: &mut NameserverClient<AuthChannel>, candidate: &str) -> u64 {
    ns.change_leader(ChangeLeaderRequest {
        db: String::new(),
        name: "t1".into(),
        pid: 0,
        candidate: candidate.into(),
        force: false,
    })
    .await
    .unwrap_or_else(|e| panic!("changeleader: {}", e.message()))
    .into_inner()
    .ops[0]
        .op_id
}

/// What each reachable tablet says of partition 0 of `tid`: (role, term).
async fn replica_roles(endpoints: &[String], tid: u32) -> BTreeMap<String, (TableRole, u64)> {
    let mut out = BTreeMap::new();
    for endpoint in endpoints {
        let Ok(Ok(mut client)) = tokio::time::timeout(
            Duration::from_millis(500),
            tessera_tests::tablet_client(endpoint),
        )
        .await
        else {
            continue;
        };
        let asked = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_table_status(GetTableStatusRequest {
                tid: Some(tid),
                pid: Some(0),
            }),
        )
        .await;
        if let Ok(Ok(status)) = asked {
            if let Some(s) = status.into_inner().tables.first() {
                out.insert(endpoint.clone(), (s.role(), s.term));
            }
        }
    }
    out
}

/// Samples every replica's role until stopped, and returns each term's leaders.
fn watch_leaders(
    endpoints: Vec<String>,
    tid: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<u64, BTreeSet<String>>> {
    tokio::spawn(async move {
        let mut seen: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            for (endpoint, (role, term)) in replica_roles(&endpoints, tid).await {
                if role == TableRole::Leader {
                    seen.entry(term).or_default().insert(endpoint);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    })
}

/// Waits until partition 0 of t1 has one leader that the tablets agree with (no
/// difference in showtable) and takes a write.
async fn wait_served(cluster: &NsCluster, what: &str) {
    let writer = cluster.sdk(Duration::from_secs(2)).await;
    wait_served_by(cluster.ns().await, &writer, what).await;
}

/// [`wait_served`], asking nameserver `ns` and writing through `writer`.
async fn wait_served_by(
    ns: NameserverClient<AuthChannel>,
    writer: &tessera_ns_client::Client,
    what: &str,
) {
    let mut attempt = 0;
    wait_until_async(WAIT, what, || {
        let mut ns = ns.clone();
        attempt += 1;
        let key = format!("probe-{attempt}");
        async move {
            let rows = table_rows(&mut ns, "t1").await;
            leaders(&rows).contains_key(&0)
                && rows.iter().all(|r| r.drift.is_empty())
                && writer.put("default", "t1", sdk_row(&key, 0)).await.is_ok()
        }
    })
    .await;
}

/// A cluster whose nameserver runs with `--inject_task_fault=<fault>`, with table t1 (one
/// partition, three replicas) and auto_failover off: t1's metadata and a client of the
/// nameserver.
async fn with_task_fault(
    dir: &std::path::Path,
    fault: &str,
) -> (NsCluster, TableInfo, NameserverClient<AuthChannel>) {
    let flag = format!("--inject_task_fault={fault}");
    let cluster = NsCluster::start(
        dir,
        NsClusterSpec {
            nameserver_args: &[flag.as_str()],
            ..NsClusterSpec::fast_failover()
        },
    )
    .await;
    let table = cluster.create_table("t1", 1, 3).await;
    let mut ns = cluster.ns().await;
    set_auto_failover(&mut ns, false).await;
    (cluster, table, ns)
}

/// Puts `count` rows and returns their keys, each acknowledged.
async fn acknowledged_rows(writer: &tessera_ns_client::Client, count: i64) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..count {
        let key = format!("before-{i}");
        writer
            .put("default", "t1", sdk_row(&key, i))
            .await
            .expect("put");
        acked.push(key);
    }
    acked
}

async fn assert_readable(writer: &tessera_ns_client::Client, acked: &[String]) {
    for key in acked {
        assert!(
            writer
                .get("default", "t1", vec![Value::String(key.clone())])
                .await
                .expect("get")
                .is_some(),
            "acknowledged row {key} was lost"
        );
    }
}

/// No term seen with two leaders, and one replica leading at the end: its (endpoint, term).
async fn assert_one_leader_per_term(
    seen: &BTreeMap<u64, BTreeSet<String>>,
    endpoints: &[String],
    tid: u32,
) -> (String, u64) {
    for (term, holders) in seen {
        assert_eq!(holders.len(), 1, "term {term} had two leaders: {holders:?}");
    }
    let final_roles = replica_roles(endpoints, tid).await;
    let leading: Vec<_> = final_roles
        .iter()
        .filter(|(_, (role, _))| *role == TableRole::Leader)
        .collect();
    assert_eq!(leading.len(), 1, "{final_roles:?}");
    (leading[0].0.clone(), leading[0].1 .1)
}

/// Whether a tablet's log says one of its replicas took the lead in `term`.
fn promoted_in(cluster: &NsCluster, term: u64) -> bool {
    cluster.tablets.iter().any(|tablet| {
        tablet.log().lines().any(|line| {
            line.contains("role changed")
                && line.contains(&format!("term={term} "))
                && line.contains("role=Leader")
        })
    })
}

/// An operator cancels a ChangeLeader whose promotion is under way and asks for another
/// leader: the first attempt still promotes its replica, after the cancel. The second
/// takes a term of its own from the counter, so however the two interleave no term ever
/// has two leaders (before, both took `metadata term + 1`), the cancel stands, and the
/// partition ends with one leader holding every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_change_leaders_end_with_one_leader_per_term() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, table, mut ns) =
        with_task_fault(dir.path(), "kPromoteLeader:delay_ms=3000").await;
    let rows = table_rows(&mut ns, "t1").await;
    let endpoints: Vec<String> = rows.iter().map(|r| r.endpoint.clone()).collect();
    let leader = leaders(&rows)[&0].clone();
    let others: Vec<&String> = endpoints.iter().filter(|e| **e != leader).collect();
    let writer = cluster.sdk(Duration::from_secs(30)).await;
    let acked = acknowledged_rows(&writer, 20).await;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_leaders(endpoints.clone(), table.tid, stop.clone());
    let first = change_leader(&mut ns, others[0]).await;
    wait_until_async(
        WAIT,
        "the first ChangeLeader to reach its promotion",
        || {
            let mut ns = ns.clone();
            async move {
                op(&mut ns, first)
                    .await
                    .is_some_and(|o| o.status == "kDoing" && o.task_index == 1)
            }
        },
    )
    .await;
    ns.cancel_op(OpIdRequest { op_id: first })
        .await
        .expect("cancel the first attempt");
    let second = change_leader(&mut ns, others[1]).await;
    wait_op_status(&ns, second, "kDone", "the second ChangeLeader to finish").await;
    wait_served(&cluster, "one serving leader after the race").await;
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();

    let first = op(&mut ns, first).await.expect("first op");
    let second = op(&mut ns, second).await.expect("second op");
    assert_eq!(first.status, "kCanceled", "the cancel stands: {first:?}");
    assert!(
        second.term > first.term && first.term > 0,
        "each attempt has a term of its own: {} then {}",
        first.term,
        second.term
    );
    // The promotion may last only until the second attempt's fence, too briefly for the
    // watcher to sample: the tablet's own log says it happened.
    assert!(
        promoted_in(&cluster, first.term),
        "the cancelled attempt promoted its replica in term {} (seen: {seen:?})",
        first.term
    );
    assert_one_leader_per_term(&seen, &endpoints, table.tid).await;
    assert_readable(&writer, &acked).await;
}

/// A ChangeLeader fences every replica and then fails to promote: the metadata still
/// names the old leader, which no longer leads. With auto_failover off showtable shows
/// the difference; turned on, the reconciler gives the partition a leader within
/// seconds (before, nothing ever did).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_leader_whose_promotion_fails_is_repaired_by_the_reconciler() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _, mut ns) = with_task_fault(dir.path(), "kPromoteLeader:fail").await;
    let leader = leaders(&table_rows(&mut ns, "t1").await)[&0].clone();
    let failed = change_leader(&mut ns, "").await;
    wait_op_status(&ns, failed, "kFailed", "the ChangeLeader to fail").await;
    let rows = table_rows(&mut ns, "t1").await;
    let drift = rows
        .iter()
        .find(|r| r.endpoint == leader)
        .map(|r| r.drift.clone())
        .unwrap_or_default();
    assert!(
        drift.contains("should lead"),
        "showtable shows that the named leader does not lead: {rows:?}"
    );
    let writer = cluster.sdk(Duration::from_secs(2)).await;
    assert!(
        writer
            .put("default", "t1", sdk_row("fenced", 1))
            .await
            .is_err(),
        "every replica is fenced"
    );

    set_auto_failover(&mut ns, true).await;
    wait_served(&cluster, "the reconciler to give the partition a leader").await;
    // The new leader serves before its op records that it is done.
    wait_until_async(WAIT, "the repair to go through the op pipeline", || {
        let mut ns = ns.clone();
        async move {
            all_ops(&mut ns)
                .await
                .iter()
                .any(|o| o.op_id > failed && o.op_type == "kChangeLeader" && o.status == "kDone")
        }
    })
    .await;
}

/// A tablet restarted before its ZooKeeper session expired, while auto_failover was off,
/// comes back with the replica it led as a follower of nobody. Showtable shows it; with
/// auto_failover on, the reconciler repairs it (before, the partition stayed without a
/// serving leader for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tablet_restarted_within_its_session_is_shown_and_then_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 1, 3).await;
    let mut ns = cluster.ns().await;
    set_auto_failover(&mut ns, false).await;
    let writer = cluster.sdk(Duration::from_secs(30)).await;
    writer
        .put("default", "t1", sdk_row("before", 1))
        .await
        .expect("put");
    let leader = leaders(&table_rows(&mut ns, "t1").await)[&0].clone();
    let index = cluster.tablet_index(&leader);
    cluster.tablets[index].kill9();
    cluster.tablets[index].restart().await;
    wait_until_async(WAIT, "showtable to show the restarted leader", || {
        let mut ns = ns.clone();
        let leader = leader.clone();
        async move {
            table_rows(&mut ns, "t1")
                .await
                .iter()
                .any(|r| r.endpoint == leader && r.drift.contains("follower of nobody"))
        }
    })
    .await;
    assert!(
        table_rows(&mut ns, "t1").await.iter().all(|r| r.is_alive),
        "the registry never saw it gone: the metadata still calls every replica alive"
    );

    set_auto_failover(&mut ns, true).await;
    wait_served(&cluster, "the reconciler to repair the partition").await;
    assert!(writer
        .get("default", "t1", vec![Value::String("before".into())])
        .await
        .expect("get")
        .is_some());
}

/// With one follower offline, removing the other would leave the leader alone, unable to
/// acknowledge anything: DelReplica refuses before touching anything, the replica stays
/// a settled member (not stuck half removed), and the partition keeps taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delreplica_refuses_to_leave_a_partition_unable_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 1, 3).await;
    let mut ns = cluster.ns().await;
    set_auto_failover(&mut ns, false).await;
    let rows = table_rows(&mut ns, "t1").await;
    let leader = leaders(&rows)[&0].clone();
    let followers: Vec<String> = rows
        .iter()
        .map(|r| r.endpoint.clone())
        .filter(|e| *e != leader)
        .collect();
    let down = cluster.tablet_index(&followers[0]);
    cluster.tablets[down].kill9();
    ns.offline_endpoint(EndpointRequest {
        endpoint: followers[0].clone(),
    })
    .await
    .expect("offlineendpoint");
    cluster.wait_marked_dead("t1", &followers[0]).await;

    let op_id = ns
        .del_replica(ReplicaRequest {
            db: String::new(),
            name: "t1".into(),
            pids: vec![0],
            endpoint: followers[1].clone(),
            source: String::new(),
        })
        .await
        .expect("delreplica is accepted")
        .into_inner()
        .ops[0]
        .op_id;
    wait_op_status(&ns, op_id, "kFailed", "the DelReplica to fail").await;
    let failed = op(&mut ns, op_id).await.unwrap();
    assert!(
        failed.reason.contains("unable to take writes"),
        "{}",
        failed.reason
    );
    let table = ns
        .show_schema(ShowSchemaRequest {
            db: String::new(),
            name: "t1".into(),
        })
        .await
        .expect("showschema")
        .into_inner()
        .table
        .expect("table");
    let kept = table.partitions[0]
        .replicas
        .iter()
        .find(|r| r.endpoint == followers[1])
        .expect("still listed");
    assert!(
        kept.is_alive && !kept.leaving && !kept.joining,
        "a settled member as before: {kept:?}"
    );
    cluster
        .sdk(Duration::from_secs(10))
        .await
        .put("default", "t1", sdk_row("after", 1))
        .await
        .expect("the leader and the remaining follower still take writes");
}

/// Reads tessera-ops' output until a line contains `needle`.
async fn wait_for_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) {
    let found = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "tessera-ops never printed `{needle}`");
}

fn spawn_recoverdata(cluster: &NsCluster) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(binary("tessera-ops"));
    tessera_tests::credentials::ops_credentials(&mut command)
        .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
        .arg("--zk_root_path=/tessera")
        .arg("--cmd=recoverdata")
        .arg("--timeout=120")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run tessera-ops")
}

/// `tessera-ops recoverdata` turns auto_failover off while it works. Interrupted with
/// Ctrl-C (SIGINT) mid-run it puts the setting back before exiting; killed outright, the
/// next run of any command finds the record it left in ZooKeeper, says so, and puts the
/// setting back (before, auto_failover stayed off for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_tessera_ops_run_leaves_auto_failover_as_it_found_it() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    cluster.create_table("t1", 2, 3).await;
    let mut ns = cluster.ns().await;
    assert!(auto_failover(&mut ns).await);
    // A frozen tablet holds recoverdata up for as long as the test needs.
    cluster.tablets[2].pause();

    let mut run = spawn_recoverdata(&cluster);
    let mut lines = tokio::io::BufReader::new(run.stdout.take().unwrap()).lines();
    wait_for_line(&mut lines, "off while this command works").await;
    assert!(!auto_failover(&mut ns).await, "off while recoverdata works");
    let pid = run.id().expect("pid") as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(WAIT, run.wait())
        .await
        .expect("tessera-ops exits after SIGINT")
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130), "interrupted mid-run: {stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert!(auto_failover(&mut ns).await, "auto_failover is back on");

    // Killed outright: the setting stays off until the next run.
    let mut run = spawn_recoverdata(&cluster);
    let mut lines = tokio::io::BufReader::new(run.stdout.take().unwrap()).lines();
    wait_for_line(&mut lines, "off while this command works").await;
    run.kill().await.unwrap();
    assert!(
        !auto_failover(&mut ns).await,
        "a killed run cannot restore it"
    );
    cluster.tablets[2].resume();
    let out = ops::run_ok(&cluster.zk, "showopstatus", &[]).await;
    assert!(
        out.contains("ended without restoring auto_failover"),
        "the next run reports the interrupted one:\n{out}"
    );
    assert!(auto_failover(&mut ns).await, "and restores the setting");
    let again = ops::run_ok(&cluster.zk, "showopstatus", &[]).await;
    assert!(
        !again.contains("ended without restoring"),
        "the record is gone once restored:\n{again}"
    );
}

/// A leader nameserver that cannot reach ZooKeeper suspends itself within two thirds of
/// its session timeout: 503 on the leader check, metadata changes refused, before a
/// standby could be elected (which takes the whole timeout). Once ZooKeeper answers again
/// one nameserver leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nameserver_cut_off_from_zookeeper_suspends_itself() {
    // Long enough that the session outlives the pause: the lease lapses at two thirds of
    // it, the session expires no sooner than nine tenths after the last renewal.
    let session = Duration::from_millis(6000);
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            nameserver_session_ms: session.as_millis() as u64,
            ..NsClusterSpec::fast_failover()
        },
    )
    .await;
    let standby = NameserverProcess::start(
        &dir.path().join("ns2"),
        &cluster.zk,
        session.as_millis() as u64,
    )
    .await;
    let leader = cluster.nameserver.endpoint.clone();
    assert_eq!(http_get(&leader, "/api/leader-check").0, 200);
    assert_eq!(http_get(&standby.endpoint, "/api/leader-check").0, 404);
    let mut ns = cluster.ns().await;

    cluster.zk.pause();
    let cut = Instant::now();
    let suspended = tessera_tests::wait::poll_until_async(session, || {
        let leader = leader.clone();
        async move { http_get(&leader, "/api/leader-check").0 == 503 }
    })
    .await;
    let after = cut.elapsed();
    let refused = ns
        .conf_set(ConfSetRequest {
            key: "auto_failover".into(),
            value: "false".into(),
        })
        .await;
    let health = http_get(&leader, "/api/health").1;
    let standby_check = http_get(&standby.endpoint, "/api/leader-check").0;
    cluster.zk.resume();
    assert!(
        suspended,
        "the leader still answered 200 {after:?} after losing ZooKeeper (session {session:?})"
    );
    assert!(
        refused.is_err_and(|e| e.message().contains("lost touch with ZooKeeper")),
        "a suspended leader refuses metadata changes"
    );
    assert!(health.contains("suspended"), "{health}");
    assert_eq!(standby_check, 404, "no standby took over meanwhile");

    let both = [leader.clone(), standby.endpoint.clone()];
    wait_until_async(WAIT, "one nameserver to lead again", || {
        let both = both.clone();
        async move {
            both.iter()
                .filter(|e| http_get(e, "/api/leader-check").0 == 200)
                .count()
                == 1
        }
    })
    .await;
}

/// How the leading nameserver stops in the middle of a ChangeLeader.
#[derive(Debug, Clone, Copy)]
enum NameserverStop {
    Kill9,
    /// SIGSTOP until its standby leads, then SIGCONT.
    PauseAndResume,
}

/// The leading nameserver sends a ChangeLeader's fences and stops before writing what
/// they did (the op is stored as planned, with no term: nothing is written before the
/// fence ends). The standby takes over, fences again in a term of its own above the
/// stopped one's, and finishes the op. A paused leader that wakes up after that writes
/// nothing and promotes no one: the partition ends with one leader per term, in the new
/// term, holding every acknowledged write.
async fn a_nameserver_stopped_between_a_fence_and_its_write(how: NameserverStop) {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, table, mut ns) =
        with_task_fault(dir.path(), "kFenceReplicas:delay_after_ms=3000").await;
    let standby = NameserverProcess::start(&dir.path().join("ns2"), &cluster.zk, 2000).await;
    let rows = table_rows(&mut ns, "t1").await;
    let endpoints: Vec<String> = rows.iter().map(|r| r.endpoint.clone()).collect();
    let leader = leaders(&rows)[&0].clone();
    let candidate = endpoints.iter().find(|e| **e != leader).unwrap().clone();
    let writer = cluster.sdk(Duration::from_secs(30)).await;
    let acked = acknowledged_rows(&writer, 20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_leaders(endpoints.clone(), table.tid, stop.clone());

    let op_id = change_leader(&mut ns, &candidate).await;
    wait_until_async(WAIT, "the fence to be sent and the write held back", || {
        let log = cluster.nameserver.log();
        async move { log.contains("injecting a fault") }
    })
    .await;
    let fenced_term = replica_roles(&endpoints, table.tid)
        .await
        .values()
        .map(|(_, term)| *term)
        .max()
        .expect("the replicas answer");
    let planned = op(&mut ns, op_id).await.expect("the op is stored");
    assert_eq!(
        (planned.status.as_str(), planned.term),
        ("kInited", 0),
        "nothing is written before the fence's end: {planned:?}"
    );
    match how {
        NameserverStop::Kill9 => cluster.nameserver.kill9(),
        NameserverStop::PauseAndResume => cluster.nameserver.pause(),
    }

    standby.wait_leader().await;
    if let NameserverStop::PauseAndResume = how {
        // Woken as soon as it is replaced: its write races the standby's resumption of
        // the op, and must lose whichever comes first (its lease has lapsed, its
        // election node is gone, or the op has ended).
        cluster.nameserver.resume();
    }
    let mut standby_ns = standby.client().await;
    wait_op_status(
        &standby_ns,
        op_id,
        "kDone",
        "the standby to finish the ChangeLeader",
    )
    .await;
    if let NameserverStop::PauseAndResume = how {
        wait_progress_refused(
            &cluster.nameserver,
            op_id,
            "the resumed nameserver to give up its write",
        )
        .await;
    }
    wait_served_by(
        standby_ns.clone(),
        &writer,
        "a serving leader after the takeover",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();

    let done = op(&mut standby_ns, op_id).await.expect("the op");
    assert!(
        done.term > fenced_term,
        "the standby fences in a term of its own above {fenced_term}: {done:?}"
    );
    assert!(
        !promoted_in(&cluster, fenced_term),
        "no replica leads in the stopped nameserver's term {fenced_term} ({how:?})"
    );
    let (_, final_term) = assert_one_leader_per_term(&seen, &endpoints, table.tid).await;
    assert_eq!(final_term, done.term);
    assert_readable(&writer, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nameserver_killed_between_a_fence_and_its_write_is_replaced_cleanly() {
    a_nameserver_stopped_between_a_fence_and_its_write(NameserverStop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nameserver_paused_between_a_fence_and_its_write_writes_nothing_when_it_wakes() {
    a_nameserver_stopped_between_a_fence_and_its_write(NameserverStop::PauseAndResume).await;
}

/// A ChangeLeader's end goes in the transaction that records its new leader, checked
/// against the op node's version in the leader's copy. An operator's cancel that lands
/// between that copy being read and the transaction (here written straight to ZooKeeper
/// while the task waits, which the copy never sees) fails the check: the new leader is
/// recorded without the end, the op's own write then finds the cancel, and the cancel
/// stands instead of being overwritten by `kDone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_a_change_leaders_end_stands() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _, mut ns) = with_task_fault(dir.path(), "kUpdateLeaderInfo:delay_ms=3000").await;
    let rows = table_rows(&mut ns, "t1").await;
    let leader = leaders(&rows)[&0].clone();
    let candidate = rows
        .iter()
        .map(|r| r.endpoint.clone())
        .find(|e| *e != leader)
        .unwrap();

    let op_id = change_leader(&mut ns, &candidate).await;
    wait_until_async(WAIT, "the ChangeLeader to reach its last task", || {
        let log = cluster.nameserver.log();
        async move { log.contains("injecting a fault") }
    })
    .await;
    let zk = zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let path = format!("/tessera/op/op_data/{op_id:010}");
    let (data, stat) = zk.get_data(&path).await.expect("the op node");
    let mut cancelled = OpInfo::decode(data.as_slice()).expect("an op");
    assert_eq!(cancelled.status, "kDoing", "{cancelled:?}");
    cancelled.status = "kCanceled".into();
    zk.set_data(&path, &cancelled.encode_to_vec(), Some(stat.version))
        .await
        .expect("cancel behind the leader's back");

    wait_progress_refused(
        &cluster.nameserver,
        op_id,
        "the ChangeLeader's own write to find the cancel",
    )
    .await;
    let (data, _) = zk.get_data(&path).await.expect("the op node");
    let stored = OpInfo::decode(data.as_slice()).expect("an op");
    assert_eq!(stored.status, "kCanceled", "the cancel stands: {stored:?}");
    assert_eq!(
        tessera_tests::process::op_ends_written_with_metadata(&cluster.nameserver.endpoint),
        0.0,
        "the end was left out of the transaction"
    );
    // The rest of the transaction was written again without it: the metadata names the
    // leader the op promoted.
    let rows = table_rows(&mut ns, "t1").await;
    assert_eq!(leaders(&rows).get(&0), Some(&candidate), "{rows:?}");
    wait_served(&cluster, "the new leader serving after the cancel").await;
}
