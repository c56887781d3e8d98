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

/// A nameserver and three tablets.
async fn three_tablets(dir: &std::path::Path) -> NsCluster {
    NsCluster::start(dir, NsClusterSpec::three_tablets()).await
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

/// Runs `input` through ns_client's standard input; its exit status, stdout and stderr.
fn piped(cluster: &NsCluster, input: &str) -> (bool, String, String) {
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
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cmd`'s output parsed as JSON.
fn json(cluster: &NsCluster, cmd: &str) -> serde_json::Value {
    let out = ok(cluster, cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`{cmd}` printed no JSON ({e}):\n{out}"))
}

fn fails(cluster: &NsCluster, cmd: &str) -> String {
    let out = ns_client(cluster, cmd);
    assert!(!out.status.success(), "`{cmd}` should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_tablets(dir.path()).await;
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
    let (success, stdout, _) = piped(&cluster, "showns\nnosuchcommand\nshowtablet\n");
    assert!(!success);
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
    let leader = tessera_tests::routed::endpoint_with_role(&rows, "leader");
    let follower = tessera_tests::routed::endpoint_with_role(&rows, "follower");
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
    assert!(fails(&cluster, "use db2").contains("database `db2` does not exist"));
    let help = ok(&cluster, "help changeleader");
    assert!(
        help.contains("changeleader name pid [endpoint|auto] [force]"),
        "{help}"
    );

    assert!(ok(&cluster, "drop table t1").contains("drop table t1 ok"));
    assert!(fails(&cluster, "showtable t1").contains("does not exist"));
}

/// The commands OpenMLDB operators know beyond the basics, databases, indexes other than
/// the first, ts ranges, TTL units and JSON output, all through the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_databases_indexes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = three_tablets(dir.path()).await;

    // Databases exist once created; a multi-line statement on standard input.
    assert!(fails(&cluster, "use shop").contains("does not exist"));
    assert!(ok(&cluster, "create database shop").contains("Create database shop ok"));
    assert!(fails(&cluster, "create database shop").contains("already exists"));
    let (success, stdout, stderr) = piped(
        &cluster,
        "use shop\n\
         create table orders (k string, c string, ts bigint, v bigint,\n\
         \x20 index(key=k, ts=ts, ttl=7d, ttl_type=absolute),\n\
         \x20 index(key=c, ts=ts, ttl=12h))\n\
         \x20 options (partitionnum=2, replicanum=2);\n\
         showtable orders\n",
    );
    assert!(success, "{stdout}{stderr}");
    assert!(stdout.contains("Create table orders ok"), "{stdout}");
    // The ttl column, in the unit it was given.
    assert!(stdout.contains("absolute 7d"), "{stdout}");
    assert!(ok(&cluster, "showdb").contains("shop"));
    let refused = fails(&cluster, "dropdb shop");
    assert!(
        refused.contains("still holds 1 table(s) (orders)"),
        "{refused}"
    );

    // Rows through another index than the first, and ts ranges.
    let shop = |cmd: &str| {
        let out = tessera_tests::credentials::ns_client_command()
            .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
            .arg("--zk_root_path=/tessera")
            .arg("--database=shop")
            .arg(format!("--cmd={cmd}"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stdout, stderr)
    };
    let shop_ok = |cmd: &str| {
        let (success, stdout, stderr) = shop(cmd);
        assert!(success, "`{cmd}` failed: {stderr}{stdout}");
        stdout
    };
    // Times within the TTLs: recent milliseconds.
    let now = tessera_tests::now_ms();
    let (t1, t2, t3) = (now - 3000, now - 2000, now - 1000);
    for (k, c, ts, v) in [
        ("k1", "red", t1, 10),
        ("k1", "blue", t2, 20),
        ("k2", "red", t3, 30),
    ] {
        assert!(shop_ok(&format!("put orders {k} {c} {ts} {v}")).contains("put ok"));
    }
    let got = shop_ok("get orders red index=c");
    assert!(got.contains("k2") && got.contains("1 row(s)"), "{got}");
    let got = shop_ok(&format!("get orders k1 ts={t1}"));
    assert!(got.contains("red") && got.contains("1 row(s)"), "{got}");
    let scanned = shop_ok(&format!("scan orders red index=c max_ts={t2}"));
    assert!(
        scanned.contains("k1") && scanned.contains("1 row(s)"),
        "{scanned}"
    );
    assert!(shop_ok("count orders red index=c").contains("count: 2"));
    assert!(shop_ok(&format!("count orders k1 min_ts={t2}")).contains("count: 1"));
    let (success, _, stderr) = shop("get orders red index=nosuch");
    assert!(
        !success && stderr.contains("has no index `nosuch`"),
        "{stderr}"
    );
    // A delete of a ts range leaves the key's other rows.
    assert!(shop_ok(&format!("put orders k1 green {} 40", now - 500)).contains("put ok"));
    assert!(
        shop_ok(&format!("delete orders k1 min_ts={}", now - 600)).contains("delete ok: 1 row(s)")
    );
    assert!(shop_ok("count orders k1").contains("count: 2"));
    let (success, _, stderr) = shop(&format!("delete orders k1 min_ts={t2} max_ts={t1}"));
    assert!(!success && stderr.contains("above max_ts"), "{stderr}");
    // A delete through the second index removes the rows from the first too.
    assert!(shop_ok("delete orders red index=c").contains("delete ok: 2 row(s)"));
    assert!(shop_ok("count orders").contains("count: 1"));
    assert!(shop_ok("get orders k2").contains("0 row(s)"));

    // info, gettablepartition, showsdkendpoint, man.
    let info = shop_ok("info orders");
    for expected in ["partitionnum", "quorum", "absolute", "12h", "leader"] {
        assert!(info.contains(expected), "info lacks {expected}:\n{info}");
    }
    let partition = shop_ok("gettablepartition orders 1");
    assert_eq!(partition.matches("leader").count(), 1, "{partition}");
    assert_eq!(partition.matches("follower").count(), 1, "{partition}");
    let (success, _, stderr) = shop("gettablepartition orders 7");
    assert!(!success && stderr.contains("no partition 7"), "{stderr}");
    assert_eq!(
        ok(&cluster, "showsdkendpoint")
            .matches("kTabletHealthy")
            .count(),
        3
    );
    let manual = ok(&cluster, "man showtable");
    assert!(
        manual.contains("--format=table|json") && manual.contains("--raw"),
        "{manual}"
    );
    assert!(fails(&cluster, "showns --raw").contains("takes no --raw"));

    // memused in human units, or bytes with --raw.
    let human = shop_ok("showtable orders");
    assert!(
        human.contains(" B ") || human.contains("KiB") || human.contains("MiB"),
        "{human}"
    );
    let raw = shop_ok("showtable orders --raw");
    assert!(!raw.contains("KiB") && !raw.contains("MiB"), "{raw}");

    // Every show command prints JSON for scripts.
    let table = json(&cluster, "showtable --format=json");
    assert_eq!(
        table["rows"].as_array().unwrap().len(),
        0,
        "default has no tables"
    );
    let (success, stdout, stderr) = shop("showtable orders --format=json");
    assert!(success, "{stderr}");
    let table: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(
        rows.iter()
            .all(|r| r["memused"].is_u64() && r["offset"].is_u64()),
        "{stdout}"
    );
    for cmd in [
        "showtablet",
        "showns",
        "showopstatus",
        "showdb",
        "confget",
        "showsdkendpoint",
    ] {
        let value = json(&cluster, &format!("{cmd} --format=json"));
        assert!(value["rows"].is_array(), "`{cmd}`: {value}");
    }
    for cmd in [
        "showschema orders",
        "info orders",
        "gettablepartition orders 0",
    ] {
        let (success, stdout, stderr) = shop(&format!("{cmd} --format=json"));
        assert!(success, "`{cmd}`: {stderr}");
        let value: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("`{cmd}` printed no JSON ({e}):\n{stdout}"));
        assert!(value.is_object(), "`{cmd}`: {value}");
    }
    let schema: serde_json::Value =
        serde_json::from_str(&shop_ok("showschema orders --format=json")).unwrap();
    assert_eq!(schema["indexes"]["rows"][1]["ttl"], "12h", "{schema}");

    // deleteop: an ended op goes; a running or unknown one is refused.
    let snapshot = shop_ok("makesnapshot orders 0");
    let op_id: u64 = snapshot
        .split("started: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no op id in {snapshot}"));
    wait_ops_done(&cluster).await;
    assert!(ok(&cluster, &format!("deleteop {op_id}")).contains(&format!("delete op {op_id} ok")));
    assert!(fails(&cluster, &format!("deleteop {op_id}")).contains(&format!("no op {op_id}")));

    // Drops: the table, then its database; scripts are not asked.
    assert!(shop_ok("drop table orders").contains("drop table orders ok"));
    assert!(ok(&cluster, "dropdb shop").contains("drop database shop ok"));
    assert!(fails(&cluster, "use shop").contains("does not exist"));
    assert!(fails(&cluster, "dropdb default").contains("cannot be dropped"));
}

/// `setttl` changes the metadata and every replica; a replica whose tablet was down when
/// it ran takes the new TTL once the tablet returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setttl_reaches_every_replica_even_one_that_was_down() {
    use tessera_proto::common::{TtlDesc, TtlType};
    use tessera_proto::tablet::GetTableStatusRequest;

    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_tablets(dir.path()).await;
    assert!(ok(
        &cluster,
        "create table t (k string, ts bigint, index(key=k, ts=ts)) \
         options (partitionnum=1, replicanum=3);"
    )
    .contains("Create table t ok"));
    let now = tessera_tests::now_ms();
    for age in 1..=3 {
        assert!(ok(&cluster, &format!("put t a {}", now - age * 1000)).contains("put ok"));
    }
    assert!(ok(&cluster, "count t a").contains("count: 3"));

    // A follower's tablet goes down.
    let rows = tessera_tests::routed::table_rows(&mut cluster.ns().await, "t").await;
    let tid = rows[0].tid;
    let follower = tessera_tests::routed::endpoint_with_role(&rows, "follower");
    let index = cluster.tablet_index(&follower);
    cluster.tablets[index].kill9();

    let out = ok(&cluster, "setttl t latest 1");
    assert!(
        out.contains("set ttl ok: 2 replica(s) updated")
            && out.contains("1 will take it when seen again")
            && out.contains(&follower),
        "{out}"
    );
    assert!(
        ok(&cluster, "count t a").contains("count: 1"),
        "reads apply it"
    );
    assert!(ok(&cluster, "showtable t").contains("latest 1"));

    // The tablet returns with the old TTL on disk, and is brought in line.
    cluster.tablets[index].restart().await;
    let latest_one = TtlDesc {
        ttl_type: TtlType::Latest as i32,
        abs_ttl_minutes: 0,
        lat_ttl: 1,
    };
    let tablet = &cluster.tablets[index];
    tessera_tests::wait_until_async(
        std::time::Duration::from_secs(60),
        "the returned replica to take the new ttl",
        || {
            let expected = vec![latest_one];
            async move {
                let Ok(answer) = tablet
                    .client()
                    .await
                    .get_table_status(GetTableStatusRequest {
                        tid: Some(tid),
                        pid: Some(0),
                    })
                    .await
                else {
                    return false;
                };
                answer.into_inner().tables[0].ttls == expected
            }
        },
    )
    .await;

    // Mistakes say what is wrong and change nothing.
    assert!(fails(&cluster, "setttl t latest 1d").contains("not a row count"));
    assert!(fails(&cluster, "setttl t sometimes 1").contains("unknown ttl type"));
    assert!(fails(&cluster, "setttl t absolute 1h nosuch").contains("has no index `nosuch`"));
    assert!(fails(&cluster, "setttl nope absolute 1h").contains("does not exist"));
    assert!(ok(&cluster, "showtable t").contains("latest 1"));
}

/// The schema version and the `city` index count of `oslo` of every partition replica a
/// tablet holds of table `tid` (None where it does not answer, or has no such index yet).
async fn replica_schemas(
    tablet: &tessera_tests::tablet::TabletProcess,
    tid: u32,
    partitions: u32,
) -> Vec<Option<(u32, u64)>> {
    replica_counts(tablet, tid, partitions, "city", "oslo").await
}

/// As [`replica_schemas`], for any index and key.
async fn replica_counts(
    tablet: &tessera_tests::tablet::TabletProcess,
    tid: u32,
    partitions: u32,
    index: &str,
    key: &str,
) -> Vec<Option<(u32, u64)>> {
    use tessera_proto::tablet::{CountRequest, GetTableStatusRequest};
    let mut out = Vec::new();
    for pid in 0..partitions {
        let mut client = tablet.client().await;
        let Ok(status) = client
            .get_table_status(GetTableStatusRequest {
                tid: Some(tid),
                pid: Some(pid),
            })
            .await
        else {
            out.push(None);
            continue;
        };
        let version = status.into_inner().tables[0].schema_version;
        let count = match client
            .count(CountRequest {
                tid,
                pid,
                index: index.into(),
                key: vec![tessera_common::Value::String(key.into()).to_proto()],
                // Any offset: a follower answers too, once it applied that far.
                min_offset: 1,
            })
            .await
        {
            Ok(c) => c,
            Err(_) => {
                out.push(None);
                continue;
            }
        };
        out.push(Some((version, count.into_inner().count)));
    }
    out
}

/// `addindex` builds the index from the rows on every replica, one whose tablet was down
/// included; `addtablefield` appends a column old rows read as NULL; `deleteindex` drops
/// an index. Each is a binlog entry the followers apply in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_reach_every_replica_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = three_tablets(dir.path()).await;
    assert!(ok(
        &cluster,
        "create table t (k string, ts bigint, city string, index(key=k, ts=ts)) \
         options (partitionnum=4, replicanum=3);"
    )
    .contains("Create table t ok"));
    let mut input = String::new();
    for i in 0..20 {
        let city = if i % 2 == 0 { "oslo" } else { "rome" };
        input.push_str(&format!("put t k{i} {i} {city}\n"));
    }
    let (success, _, stderr) = piped(&cluster, &input);
    assert!(success, "{stderr}");

    // A tablet goes down before the change: its replicas take it from the log later.
    let rows = tessera_tests::routed::table_rows(&mut cluster.ns().await, "t").await;
    let tid = rows[0].tid;
    let down = cluster.tablets[2].endpoint.clone();
    cluster.tablets[2].kill9();

    let out = ok(&cluster, "addindex t city");
    assert!(out.contains("addindex ok: schema version 2"), "{out}");
    // Partitions the dead tablet led get the change once a new leader is seen.
    tessera_tests::wait_until_async(
        std::time::Duration::from_secs(60),
        "every partition to count 10 rows of oslo through the new index",
        || async {
            let out = ns_client(&cluster, "count t oslo index=city");
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("count: 10")
        },
    )
    .await;
    assert!(ok(&cluster, "showschema t").contains("city"));

    cluster.tablets[2].restart().await;
    for tablet in &cluster.tablets {
        tessera_tests::wait_until_async(
            std::time::Duration::from_secs(90),
            "every replica to apply the new schema and hold the built index",
            || async {
                let found = replica_schemas(tablet, tid, 4).await;
                let oslo: u64 = found.iter().flatten().map(|(_, count)| *count).sum();
                found.iter().all(|r| r.is_some_and(|(v, _)| v >= 2)) && oslo == 10
            },
        )
        .await;
    }
    assert!(cluster.tablets.iter().any(|t| t.endpoint == down));

    let out = ok(&cluster, "addtablefield t v int");
    assert!(out.contains("addtablefield ok: schema version 3"), "{out}");
    assert!(ok(&cluster, "put t k99 99 oslo 5").contains("put ok"));
    let old = ok(&cluster, "get t k0");
    assert!(old.contains("k0") && old.contains("NULL"), "{old}");
    assert!(ok(&cluster, "get t k99").contains('5'));

    let out = ok(&cluster, "deleteindex t city");
    assert!(out.contains("deleteindex ok: schema version 4"), "{out}");
    assert!(fails(&cluster, "count t oslo index=city").contains("no index `city`"));
    assert!(fails(&cluster, "deleteindex t k").contains("first index"));
    assert!(fails(&cluster, "addindex t nosuch").contains("unknown column"));
    assert!(fails(&cluster, "addtablefield t v int").contains("defined twice"));
    assert!(fails(&cluster, "addtablefield t w money").contains("money"));
    assert!(ok(&cluster, "count t").contains("count: 21"));
}

/// `addindex` is online: puts go on while every leader builds the index, and every row,
/// written before, during or after the build, is in it on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addindex_while_writes_go_on_indexes_every_row_on_every_replica() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tessera_common::Value;

    let dir = tempfile::tempdir().unwrap();
    let cluster = three_tablets(dir.path()).await;
    assert!(ok(
        &cluster,
        "create table w (k string, ts bigint, tag string, index(key=k, ts=ts)) \
         options (partitionnum=4, replicanum=3);"
    )
    .contains("Create table w ok"));
    let sdk = Arc::new(cluster.sdk(std::time::Duration::from_secs(30)).await);
    let row = |i: u64| {
        vec![
            Value::String(format!("k{i}")),
            Value::Int64(i as i64),
            Value::String("a".into()),
        ]
    };
    for i in 0..2000 {
        sdk.put("default", "w", row(i))
            .await
            .expect("put before the change");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (sdk, stop) = (sdk.clone(), stop.clone());
            tokio::spawn(async move {
                let mut written = 0u64;
                let mut i = 1_000_000 * (w + 1);
                while !stop.load(Ordering::Acquire) {
                    sdk.put("default", "w", row(i))
                        .await
                        .expect("put during the change");
                    written += 1;
                    i += 1;
                }
                written
            })
        })
        .collect();
    let added = tokio::task::block_in_place(|| ok(&cluster, "addindex w tag"));
    assert!(added.contains("4 partition(s) updated"), "{added}");
    // Some writes after the change too.
    let during = sdk.count("default", "w", vec![]).await.unwrap();
    tessera_tests::wait_until_async(
        std::time::Duration::from_secs(30),
        "more puts after the change",
        || {
            let sdk = sdk.clone();
            async move { sdk.count("default", "w", vec![]).await.unwrap() > during + 100 }
        },
    )
    .await;
    stop.store(true, Ordering::Release);
    let mut total = 2000;
    for writer in writers {
        total += writer.await.unwrap();
    }
    assert!(total > 2100, "writes went on: {total}");
    assert_eq!(
        sdk.count_index("default", "w", "tag", vec![Value::String("a".into())])
            .await
            .unwrap(),
        total,
        "every row through the new index"
    );
    let rows = tessera_tests::routed::table_rows(&mut cluster.ns().await, "w").await;
    let tid = rows[0].tid;
    for tablet in &cluster.tablets {
        tessera_tests::wait_until_async(
            std::time::Duration::from_secs(30),
            "every replica to hold every row in the new index",
            || async {
                let found = replica_counts(tablet, tid, 4, "tag", "a").await;
                found.iter().all(Option::is_some)
                    && found.iter().flatten().map(|(_, n)| n).sum::<u64>() == total
            },
        )
        .await;
    }
}
