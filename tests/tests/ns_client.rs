//! The `ns_client` binary against a real cluster: `--cmd` runs one command (non-zero exit
//! on failure) and standard input runs many, stopping at the first failure.

use std::io::Write;
use std::process::{Output, Stdio};

use tessera_tests::nscluster::{NsCluster, NsClusterSpec};

fn ns_client(cluster: &NsCluster, cmd: &str) -> Output {
    tessera_tests::credentials::ns_client_command()
        .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
        .arg("--zk_root_path=/tessera")
        .arg(format!("--cmd={cmd}"))
        .output()
        .expect("run ns_client")
}

fn ok(cluster: &NsCluster, cmd: &str) -> String {
    let out = ns_client(cluster, cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until every op in the pipeline is done (failing fast on a failed one).
async fn wait_ops_done(cluster: &NsCluster) {
    let ns = cluster.ns().await;
    tessera_tests::wait_until_async(
        std::time::Duration::from_secs(60),
        "the ops to finish",
        || {
            let mut ns = ns.clone();
            async move {
                let ops = ns
                    .show_op_status(tessera_proto::nameserver::ShowOpStatusRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .ops;
                assert!(
                    !ops.iter().any(|op| op.status == "kFailed"),
                    "an op failed: {ops:?}"
                );
                ops.iter().all(|op| op.status == "kDone")
            }
        },
    )
    .await;
}

fn fails(cluster: &NsCluster, cmd: &str) -> String {
    let out = ns_client(cluster, cmd);
    assert!(!out.status.success(), "`{cmd}` should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablets: 3,
            tablet_session_ms: Some(3000),
            tablet_args: &[],
            nameserver_session_ms: 2000,
            nameserver_args: &[],
        },
    )
    .await;
    let created = ok(
        &cluster,
        "create table t1 (writer string not null, seq bigint, v bigint, pad string, \
         index(key=writer, ts=seq, ttl=0, ttl_type=absolute)) options (partitionnum=2, replicanum=3, replication='quorum');",
    );
    assert!(created.contains("Create table t1 ok"), "{created}");
    assert!(fails(&cluster, "create table t9 (a strng, index(key=a))")
        .contains("unknown column type `strng`"));

    let out = ok(&cluster, "showtable t1");
    for column in [
        "name",
        "tid",
        "pid",
        "endpoint",
        "role",
        "is_alive",
        "offset",
        "record_cnt",
        "memused",
    ] {
        assert!(out.contains(column), "showtable lacks `{column}`:\n{out}");
    }
    assert_eq!(out.matches("leader").count(), 2, "{out}");
    assert_eq!(out.matches("follower").count(), 4, "{out}");

    let out = ok(&cluster, "showtablet");
    assert_eq!(out.matches("kTabletHealthy").count(), 3, "{out}");
    let out = ok(&cluster, "showns");
    assert!(
        out.contains(&cluster.nameserver.endpoint) && out.contains("leader"),
        "{out}"
    );
    let out = ok(&cluster, "showschema t1");
    assert!(
        out.contains("writer") && out.contains("int64") && out.contains("absolute"),
        "{out}"
    );
    assert!(ok(&cluster, "showdb").contains("default"));
    let out = ok(&cluster, "confget");
    assert!(
        out.contains("auto_failover") && out.contains("true"),
        "{out}"
    );
    assert!(ok(&cluster, "confset auto_failover false;").contains("set auto_failover ok"));
    let out = ok(&cluster, "makesnapshot t1 0");
    assert!(out.contains("kMakeSnapshot"), "{out}");
    let out = ok(&cluster, "showopstatus t1");
    assert!(
        out.contains("op_type") && out.contains("kMakeSnapshot"),
        "{out}"
    );

    // Data through the SDK.
    assert!(ok(&cluster, "put t1 w1 1 10 'two words'").contains("put ok"));
    assert!(ok(&cluster, "put t1 w1 2 20 NULL").contains("put ok"));
    assert!(ok(&cluster, "put t1 w2 1 30 x").contains("put ok"));
    let got = ok(&cluster, "get t1 w1");
    assert!(got.contains("20") && got.contains("1 row(s)"), "{got}");
    let scanned = ok(&cluster, "scan t1 w1");
    assert!(
        scanned.contains("two words") && scanned.contains("2 row(s)"),
        "{scanned}"
    );
    assert!(ok(&cluster, "count t1 w1").contains("count: 2"));
    assert!(ok(&cluster, "count t1").contains("count: 3"));
    assert!(ok(&cluster, "preview t1 10").contains("3 row(s)"));
    assert!(ok(&cluster, "delete t1 w1").contains("delete ok: 2 row(s)"));
    assert!(ok(&cluster, "count t1").contains("count: 1"));
    assert!(
        fails(&cluster, "put t1 w3 notanumber 1 x").contains("is not a valid int64 (column `seq`)")
    );
    assert!(fails(&cluster, "put t1 w3 1").contains("4 columns, 2 values"));

    // Mistakes get help, not a stack trace.
    assert!(fails(&cluster, "showtabel").contains("did you mean `showtable`"));
    assert!(fails(&cluster, "showschema").contains("usage: showschema name"));
    assert!(fails(&cluster, "showtable nope").contains("does not exist"));
    assert!(fails(&cluster, "addreplica t1 0 127.0.0.1:1")
        .contains("127.0.0.1:1 is not a healthy tablet"));
    assert!(fails(&cluster, "makesnapshot t1 9").contains("no partition 9"));
    assert!(fails(&cluster, "changeleader t1 x").contains("not a partition id"));

    // Standard input: one command per line, stopping at the first failure.
    let mut child = tessera_tests::credentials::ns_client_command()
        .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
        .arg("--zk_root_path=/tessera")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"showns\nnosuchcommand\nshowtablet\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("leader"), "the first command ran: {stdout}");
    assert!(
        !stdout.contains("kTabletHealthy"),
        "nothing after the failure ran: {stdout}"
    );

    // The replica-changing commands, on a 2-replica table so a spare tablet exists.
    assert!(ok(
        &cluster,
        "create table t3 (k string, index(key=k)) options (partitionnum=1, replicanum=2);"
    )
    .contains("ok"));
    let replicas = |cluster: &NsCluster| {
        let cluster_zk = cluster.nameserver.endpoint.clone();
        async move {
            let mut ns = tessera_proto::nameserver::nameserver_client::NameserverClient::new(
                tessera_common::auth::with_credentials(
                    tessera_tests::channel(&cluster_zk).await.unwrap(),
                ),
            );
            tessera_tests::routed::table_rows(&mut ns, "t3").await
        }
    };
    let rows = replicas(&cluster).await;
    let leader = rows
        .iter()
        .find(|r| r.role == "leader")
        .unwrap()
        .endpoint
        .clone();
    let follower = rows
        .iter()
        .find(|r| r.role == "follower")
        .unwrap()
        .endpoint
        .clone();
    let spare = cluster
        .tablets
        .iter()
        .map(|t| t.endpoint.clone())
        .find(|e| *e != leader && *e != follower)
        .unwrap();
    for (cmd, op) in [
        (format!("addreplica t3 0 {spare}"), "kAddReplica"),
        (format!("delreplica t3 0 {spare}"), "kDelReplica"),
        (format!("migrate {follower} t3 0 {spare}"), "kMigrate"),
        ("changeleader t3 0 auto".to_string(), "kChangeLeader"),
        (format!("recovertable t3 0 {leader}"), "kRecoverTable"),
    ] {
        let out = ok(&cluster, &cmd);
        assert!(out.contains(op), "`{cmd}`: {out}");
        wait_ops_done(&cluster).await;
    }
    let rows = replicas(&cluster).await;
    assert!(
        rows.iter().any(|r| r.endpoint == spare) && !rows.iter().any(|r| r.endpoint == follower),
        "{rows:?}"
    );
    let some_follower = rows
        .iter()
        .find(|r| r.role == "follower")
        .unwrap()
        .endpoint
        .clone();
    assert!(ok(
        &cluster,
        &format!("updatetablealive t3 * {some_follower} no")
    )
    .contains("update ok: 1"));
    assert!(ok(
        &cluster,
        &format!("updatetablealive t3 0 {some_follower} yes")
    )
    .contains("update ok: 1"));
    assert!(fails(
        &cluster,
        &format!("updatetablealive t3 0 {some_follower} maybe")
    )
    .contains("yes or no"));
    assert!(ok(&cluster, &format!("offlineendpoint {some_follower}")).contains("ops started"));
    wait_ops_done(&cluster).await;
    assert!(ok(&cluster, &format!("recoverendpoint {some_follower}")).contains("kRecoverTable"));
    wait_ops_done(&cluster).await;
    assert!(fails(&cluster, "cancelop 1").contains("already ended"));
    assert!(fails(&cluster, "cancelop 9999").contains("no op 9999"));
    assert!(ok(&cluster, "use db2").contains("Database changed to db2"));
    let help = ok(&cluster, "help changeleader");
    assert!(
        help.contains("changeleader name pid [endpoint|auto] [force]"),
        "{help}"
    );

    assert!(ok(&cluster, "drop table t1").contains("drop table t1 ok"));
    assert!(fails(&cluster, "showtable t1").contains("does not exist"));
}
