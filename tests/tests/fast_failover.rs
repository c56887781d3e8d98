//! Fast failover with real processes: the tablets hold 20 s ZooKeeper sessions, so a
//! failover that waited for the dead leader's session would find its registration gone.
//! A killed leader (its port refuses connections) and a paused one (nothing answers) are
//! both replaced while their registration still stands, through the followers' reports
//! and the nameserver's own check; and a paused leader that resumes neither serves a
//! read nor acknowledges a write, though its lease in ZooKeeper is still valid.

use std::time::Duration;

use tessera_common::Value;
use tessera_ns_client::Client;
use tessera_proto::nameserver::{ShowOpStatusRequest, ShowTabletRequest};
use tessera_proto::tablet::{GetRequest, PutRequest};
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::process::http_get;
use tessera_tests::routed::{leaders, led_by, table_rows};
use tessera_tests::wait_until_async;
use tessera_tests::workload::{key_in_partition, sdk_row};

const TABLE: &str = "t1";
const PARTITIONS: u32 = 4;
/// Long enough that no failover in these tests can come from a session expiry.
const TABLET_SESSION_MS: u64 = 20_000;
const WAIT: Duration = Duration::from_secs(60);

fn spec() -> NsClusterSpec<'static> {
    NsClusterSpec {
        tablets: 3,
        tablet_session_ms: Some(TABLET_SESSION_MS),
        tablet_args: &[],
        nameserver_session_ms: 2000,
        nameserver_args: &[],
    }
}

/// Whether the tablet's ZooKeeper registration (its session) still stands.
async fn registered(zk: &zookeeper_client::Client, endpoint: &str) -> bool {
    zk.check_stat(&format!("/tessera/nodes/{endpoint}"))
        .await
        .expect("read the registration")
        .is_some()
}

type NsClient = tessera_proto::nameserver::nameserver_client::NameserverClient<
    tessera_common::auth::AuthChannel,
>;

/// Every op ShowOpStatus lists.
async fn all_ops(mut ns: NsClient) -> Vec<tessera_proto::nameserver::OpInfo> {
    ns.show_op_status(ShowOpStatusRequest::default())
        .await
        .expect("showopstatus")
        .into_inner()
        .ops
}

/// ShowTablet lists `endpoint` as offline.
async fn assert_shown_offline(ns: &mut NsClient, endpoint: &str, why: &str) {
    let tablets = ns
        .show_tablet(ShowTabletRequest {})
        .await
        .expect("showtablet")
        .into_inner()
        .tablets;
    let shown = tablets
        .iter()
        .find(|t| t.endpoint == endpoint)
        .expect("the tablet is listed");
    assert_eq!(shown.state, "kTabletOffline", "{why}: {tablets:?}");
}

struct Setup {
    cluster: NsCluster,
    client: Client,
    zk: zookeeper_client::Client,
    tid: u32,
    victim: String,
    /// The partitions the victim leads, with a key in each.
    led: Vec<(u32, String)>,
}

async fn setup(dir: &std::path::Path) -> Setup {
    setup_with(dir, spec()).await
}

async fn setup_with(dir: &std::path::Path, spec: NsClusterSpec<'_>) -> Setup {
    let cluster = NsCluster::start(dir, spec).await;
    let table = cluster.create_table(TABLE, PARTITIONS, 3).await;
    let client = cluster.sdk(WAIT).await;
    let zk = zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    // One key per partition, each written once before the failure.
    let mut keys = std::collections::BTreeMap::new();
    for pid in 0..PARTITIONS {
        let key = key_in_partition(&client, TABLE, pid, "w").await;
        client
            .put("default", TABLE, sdk_row(&key, 0))
            .await
            .expect("a write before the failure");
        keys.insert(pid, key);
    }
    let mut ns = cluster.ns().await;
    let before = leaders(&table_rows(&mut ns, TABLE).await);
    let victim = before[&0].clone();
    let led = led_by(&before, &victim)
        .into_iter()
        .map(|pid| (pid, keys[&pid].clone()))
        .collect();
    assert!(registered(&zk, &victim).await);
    Setup {
        cluster,
        client,
        zk,
        tid: table.tid,
        victim,
        led,
    }
}

impl Setup {
    /// A write to every partition the victim led, through the SDK (which retries until
    /// a new leader takes it), then checks the failover came from the fast path: the
    /// victim's session still stands, and the metadata names other leaders.
    async fn write_through_failover(&self, seq: i64) {
        let began = std::time::Instant::now();
        for (pid, key) in &self.led {
            self.client
                .put("default", TABLE, sdk_row(key, seq))
                .await
                .unwrap_or_else(|e| panic!("the write to partition {pid} failed: {e}"));
        }
        eprintln!(
            "writes to the {} partitions {} led acknowledged after {:?}",
            self.led.len(),
            self.victim,
            began.elapsed()
        );
        assert!(
            registered(&self.zk, &self.victim).await,
            "the failover did not wait for {}'s ZooKeeper session",
            self.victim
        );
        let mut ns = self.cluster.ns().await;
        let now = leaders(&table_rows(&mut ns, TABLE).await);
        for (pid, _) in &self.led {
            assert_ne!(
                now.get(pid),
                Some(&self.victim),
                "partition {pid} has another leader"
            );
        }
        for (pid, key) in &self.led {
            let found = self
                .client
                .get("default", TABLE, vec![Value::String(key.clone())])
                .await
                .unwrap_or_else(|e| panic!("the read of partition {pid} failed: {e}"));
            assert_eq!(found, Some(sdk_row(key, seq)), "partition {pid}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_without_waiting_for_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = setup(dir.path()).await;
    let index = setup.cluster.tablet_index(&setup.victim);
    setup.cluster.tablets[index].kill9();
    setup.write_through_failover(1).await;
}

/// A nameserver whose ZooKeeper lease lapses for a moment (ZooKeeper paused, its session
/// outliving the pause) leads again with what it knew: a killed tablet found gone stays
/// offline until its session ends. Taken for back at the lapse, it was planned
/// RecoverTables that failed against its closed port, and partitions it still led would
/// have waited for its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gone_tablet_stays_offline_through_a_lapse_of_the_nameservers_lease() {
    // The lease lapses two thirds into the session (6 s); the session outlives the
    // pause (the lapse, then a 1 s hold) by about 2 s.
    const NS_SESSION_MS: u64 = 9_000;
    // The victim's registration outlasts the whole test (from the kill: the failover,
    // up to 6 s to the lapse, the hold): the longest session ZooKeeper grants here
    // (`scripts/zookeeper.sh`).
    const VICTIM_SESSION_MS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut setup = setup_with(
        dir.path(),
        NsClusterSpec {
            tablet_session_ms: Some(VICTIM_SESSION_MS),
            nameserver_session_ms: NS_SESSION_MS,
            ..spec()
        },
    )
    .await;
    let index = setup.cluster.tablet_index(&setup.victim);
    setup.cluster.tablets[index].kill9();
    setup.write_through_failover(1).await;

    let mut ns = setup.cluster.ns().await;
    // The failover's ops settle first (one may have failed and been retried on a busy
    // machine): only ops started after the lapse are judged below.
    let last_op_before = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    wait_until_async(WAIT, "the failover's ops to finish", || {
        let mut ns = ns.clone();
        let last_op_before = last_op_before.clone();
        async move {
            let Ok(answer) = ns.show_op_status(ShowOpStatusRequest::default()).await else {
                return false;
            };
            let ops = answer.into_inner().ops;
            let last = ops.iter().map(|op| op.op_id).max().unwrap_or(0);
            last_op_before.store(last, std::sync::atomic::Ordering::Relaxed);
            ops.iter()
                .all(|op| op.status == "kDone" || op.status == "kFailed")
        }
    })
    .await;
    let last_op_before = last_op_before.load(std::sync::atomic::Ordering::Relaxed);

    let nameserver = setup.cluster.nameserver.endpoint.clone();
    let leader_check = || http_get(&nameserver, "/api/leader-check").0;
    setup.cluster.zk.pause();
    let suspended = tessera_tests::wait::poll_until_async(
        Duration::from_millis(NS_SESSION_MS * 5 / 6),
        || async { leader_check() == 503 },
    )
    .await;
    // Held suspended through two of the nameserver's rechecks of the gone tablet (one
    // each 500 ms), each of which once dropped the suspicion.
    let held_from = std::time::Instant::now();
    while suspended && held_from.elapsed() < Duration::from_millis(1_000) {
        assert_eq!(leader_check(), 503, "suspended while ZooKeeper is paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.cluster.zk.resume();
    assert!(
        suspended,
        "the nameserver's lease lapsed while ZooKeeper was paused"
    );
    wait_until_async(WAIT, "the nameserver to lead again", || async {
        leader_check() == 200
    })
    .await;

    // The test's own session may have ended in the pause.
    let zk = zookeeper_client::Client::connect(&setup.cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    assert!(
        registered(&zk, &setup.victim).await,
        "the victim's session still stands, so only the suspicion marks it offline"
    );
    assert_shown_offline(
        &mut ns,
        &setup.victim,
        "the gone tablet stays offline after the lapse",
    )
    .await;
    let ops = ns
        .show_op_status(ShowOpStatusRequest::default())
        .await
        .expect("showopstatus")
        .into_inner()
        .ops;
    assert!(
        ops.iter()
            .filter(|op| op.op_id > last_op_before)
            .all(|op| op.status != "kFailed"),
        "no op was tried against the gone tablet: {ops:?}"
    );
}

/// A killed tablet's new process answers on its endpoint before the nameserver sees it
/// registered (here it registers elsewhere, standing for the moment between listening
/// and registering): it is not the process the nameserver suspects, so the suspicion
/// stands and nothing is planned for it. Before, its answer lifted the suspicion, the
/// old registration still standing made the tablet healthy, and RecoverTables were
/// planned at once, then all again when the new registration was seen (marking the
/// replicas they had just brought back dead).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_answering_before_it_registers_stays_suspected() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = setup(dir.path()).await;
    let index = setup.cluster.tablet_index(&setup.victim);
    let killed_at = std::time::Instant::now();
    setup.cluster.tablets[index].kill9();
    setup.write_through_failover(1).await;

    // The same endpoint and data, registered under a root the nameserver does not watch.
    let args = setup.cluster.tablets[index].args();
    let mut elsewhere: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--zk_root_path="))
        .collect();
    elsewhere.push("--zk_root_path=/elsewhere");
    setup.cluster.tablets[index]
        .restart_with_args(&elsewhere)
        .await;
    let recoveries = |ops: &[tessera_proto::nameserver::OpInfo]| {
        ops.iter()
            .filter(|op| op.op_type == "kRecoverTable")
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut ns = setup.cluster.ns().await;
    let ops_client = ns.clone();
    let show_ops = || all_ops(ops_client.clone());
    let nameserver = &setup.cluster.nameserver;
    const NOTED: &str = "a process not holding the suspected tablet's registration answers";
    // Either the nameserver notes the newcomer, or (taking it for the old process) plans
    // RecoverTables for it.
    // The old registration must stand meanwhile: gone, the tablet is offline anyway.
    let zk = &setup.zk;
    let victim = &setup.victim;
    wait_until_async(
        WAIT,
        "the nameserver to find a process not holding the registration on the endpoint",
        || async {
            assert!(
                registered(zk, victim).await,
                "the killed process's session expired {:?} after the kill, before the \
                 nameserver checked the new one: too slow a machine for this test",
                killed_at.elapsed()
            );
            nameserver.log().contains(NOTED) || !recoveries(&show_ops().await).is_empty()
        },
    )
    .await;
    let ops = show_ops().await;
    assert!(
        recoveries(&ops).is_empty(),
        "nothing planned for a process that has not registered: {ops:?}"
    );
    assert_shown_offline(
        &mut ns,
        &setup.victim,
        "still suspected while its old registration stands",
    )
    .await;
    assert!(
        registered(&setup.zk, &setup.victim).await,
        "the old registration still stands"
    );

    // Restarted as it was, it registers: one RecoverTable for each of its replicas.
    setup.cluster.tablets[index].kill9();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    setup.cluster.tablets[index].restart_with_args(&args).await;
    wait_until_async(WAIT, "every replica alive again after the restart", || {
        let mut ns = ns.clone();
        async move {
            let rows = table_rows(&mut ns, TABLE).await;
            rows.len() == (PARTITIONS * 3) as usize && rows.iter().all(|r| r.is_alive)
        }
    })
    .await;
    // A replica is alive once its RecoverTable's last task has run; the op's end is
    // written after it.
    wait_until_async(WAIT, "the RecoverTables to end", || async {
        recoveries(&show_ops().await)
            .iter()
            .all(|op| op.status == "kDone" || op.status == "kFailed")
    })
    .await;
    // One RecoverTable brought each replica back (one that failed on a slow machine
    // is planned again; a second round would have brought back what was back).
    let recovered = recoveries(&show_ops().await);
    for pid in 0..PARTITIONS {
        let done = recovered
            .iter()
            .filter(|op| op.pid == pid && op.status == "kDone")
            .count();
        assert_eq!(done, 1, "partition {pid}: {recovered:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_is_replaced_and_serves_nothing_after_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let setup = setup(dir.path()).await;
    let index = setup.cluster.tablet_index(&setup.victim);
    let victim = &setup.cluster.tablets[index];
    // A client pinned to the old leader, connected while it is up.
    let pinned = victim.client().await;
    let (pid, key) = setup.led[0].clone();

    victim.pause();
    setup.write_through_failover(1).await;

    // Requests sent to the old leader while it is paused are among the first things it
    // sees when it resumes, before it can hear of the new term.
    let read = {
        let mut pinned = pinned.clone();
        let request = GetRequest {
            tid: setup.tid,
            pid,
            key: vec![Value::String(key.clone()).to_proto()],
            ..Default::default()
        };
        tokio::spawn(async move { pinned.get(request).await })
    };
    let write = {
        let mut pinned = pinned.clone();
        let request = PutRequest {
            tid: setup.tid,
            pid,
            row: Some(Value::row_to_proto(&sdk_row(&key, 2))),
            ..Default::default()
        };
        tokio::spawn(async move { pinned.put(request).await })
    };
    // Whether they reach its socket before or just after it runs again, neither may
    // be served.
    victim.resume();
    match read.await.unwrap() {
        Ok(answer) => panic!("the old leader served a read: {:?}", answer.into_inner()),
        Err(status) => eprintln!("read refused: {}", status.message()),
    }
    match write.await.unwrap() {
        Ok(answer) => panic!(
            "the old leader acknowledged a write: {:?}",
            answer.into_inner()
        ),
        Err(status) => eprintln!("write refused: {}", status.message()),
    }
    // The new leader still holds the write acknowledged after the pause, and not the
    // one sent to the old leader.
    let found = setup
        .client
        .get("default", TABLE, vec![Value::String(key.clone())])
        .await
        .expect("read from the new leader");
    assert_eq!(found, Some(sdk_row(&key, 1)));

    // It answers again: the nameserver lifts its suspicion and brings its replicas back.
    let mut ns = setup.cluster.ns().await;
    wait_until_async(WAIT, "every replica alive again after the resume", || {
        let mut ns = ns.clone();
        async move {
            let rows = table_rows(&mut ns, TABLE).await;
            rows.len() == (PARTITIONS * 3) as usize && rows.iter().all(|r| r.is_alive)
        }
    })
    .await;
    let now = leaders(&table_rows(&mut ns, TABLE).await);
    assert_eq!(now.len(), PARTITIONS as usize, "{now:?}");
}

/// A repair waiting on a leader when that leader is paused gives way: ChangeLeader
/// replaces the leader at once. Before, ops on one partition running one at a time, the
/// failover queued behind the repair until the repair's call to the paused leader timed
/// out (10 s a call; here an injected wait of a minute stands for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_waiting_on_a_paused_leader_gives_way_to_its_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            nameserver_args: &["--inject_task_fault=kPrepareReplica:delay_ms=60000"],
            ..spec()
        },
    )
    .await;
    cluster.create_table(TABLE, 1, 3).await;
    let mut ns = cluster.ns().await;
    let rows = table_rows(&mut ns, TABLE).await;
    let leader = leaders(&rows)[&0].clone();
    let follower = rows
        .iter()
        .map(|r| r.endpoint.clone())
        .find(|e| *e != leader)
        .expect("a follower");

    // The follower restarts; RecoverTable brings it back, and its first task waits.
    let index = cluster.tablet_index(&follower);
    cluster.tablets[index].kill9();
    cluster.tablets[index].restart().await;
    let recover_op = || {
        let ns = ns.clone();
        async move {
            all_ops(ns)
                .await
                .into_iter()
                .find(|o| o.op_type == "kRecoverTable")
        }
    };
    wait_until_async(WAIT, "a RecoverTable op in its first task", || async {
        recover_op()
            .await
            .is_some_and(|o| o.status == "kDoing" && o.task_index == 0)
    })
    .await;

    let paused = cluster.tablet_index(&leader);
    cluster.tablets[paused].pause();
    wait_until_async(
        Duration::from_secs(15),
        "a new leader, well before the repair's wait or the paused leader's session ends",
        || {
            let mut ns = ns.clone();
            let leader = leader.clone();
            async move {
                leaders(&table_rows(&mut ns, TABLE).await)
                    .get(&0)
                    .is_some_and(|now| *now != leader)
            }
        },
    )
    .await;
    let recover = recover_op().await.expect("the RecoverTable op");
    assert_eq!(recover.status, "kFailed", "{recover:?}");
    assert!(recover.reason.contains("gives way"), "{}", recover.reason);
    // The ChangeLeader is made at the next round of the op pipeline (200 ms), not after
    // the pause that keeps a failed op's partition from being retried at once (5 s).
    let change = ns
        .show_op_status(ShowOpStatusRequest::default())
        .await
        .expect("showopstatus")
        .into_inner()
        .ops
        .into_iter()
        .find(|o| o.op_type == "kChangeLeader" && o.pid == 0)
        .expect("the ChangeLeader op");
    assert!(
        change.start_time_ms < recover.end_time_ms + 3_000,
        "the failover waited for the failed repair's retry pause: {change:?} after {recover:?}"
    );
    cluster.tablets[paused].resume();
}
