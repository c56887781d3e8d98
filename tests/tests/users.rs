//! Users on a cluster with authentication (a cluster secret and a root password): the
//! nameserver refuses callers that have not logged in, a user can do what their grants
//! say and no more, and a changed password ends the sessions opened with the old one.
//! This test process holds the cluster secret (the harness's own calls are internal), so
//! it has a binary of its own.

use std::process::{Command, Output};
use std::time::Duration;

use tessera_common::auth::HEADER;
use tessera_common::Value;
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::nameserver::{LoginRequest, ShowTableRequest, UserRequest};
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::GetRequest;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::{binary, wait_until_async};
use tonic::transport::Channel;
use tonic::Request;

use tessera_tests::credentials::ROOT_PASSWORD;

fn ns_client(cluster: &NsCluster, login: Option<(&str, &str)>, cmd: &str) -> Output {
    let mut command = Command::new(binary("ns_client"));
    command
        .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
        .arg("--zk_root_path=/tessera")
        .arg(format!("--cmd={cmd}"))
        .env_remove("TESSERA_PASSWORD");
    if let Some((user, password)) = login {
        command.arg(format!("--user={user}"));
        command.env("TESSERA_PASSWORD", password);
    }
    command.output().expect("run ns_client")
}

fn succeeds(cluster: &NsCluster, login: Option<(&str, &str)>, cmd: &str) -> String {
    let out = ns_client(cluster, login, cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{cmd}` as {login:?} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn refused(cluster: &NsCluster, login: Option<(&str, &str)>, cmd: &str, expected: &str) {
    let out = ns_client(cluster, login, cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(expected),
        "`{cmd}` as {login:?}: expected a refusal with `{expected}`, got {stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn plain_client(cluster: &NsCluster) -> NameserverClient<Channel> {
    NameserverClient::new(
        tessera_tests::channel(&cluster.nameserver.endpoint)
            .await
            .expect("connect"),
    )
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(HEADER, format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_log_in_and_may_do_what_they_are_granted() {
    let dir = tempfile::tempdir().unwrap();
    // The harness gives every server the cluster secret and the nameserver root's
    // password (tessera_tests::credentials), and this process the secret.
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    let _taskmanager = cluster.start_taskmanager(dir.path(), &[]).await;
    let root = Some(("root", ROOT_PASSWORD));
    let alice = Some(("alice", "alice-password"));

    // Without logging in, nothing.
    for cmd in [
        "showtable",
        "showtablet",
        "create table t1 (k string, v int64, index(key=k)) options (partitionnum=1, replicanum=1)",
        "drop table t1",
        "confset auto_failover false",
        "show users",
    ] {
        refused(&cluster, None, cmd, "permission denied: log in first");
    }
    refused(
        &cluster,
        Some(("root", "not-the-password")),
        "showtable",
        "wrong user or password",
    );
    refused(
        &cluster,
        Some(("mallory", "whatever-password")),
        "showtable",
        "wrong user or password",
    );

    // Root may do everything.
    succeeds(
        &cluster,
        root,
        "create table t1 (k string, v int64, index(key=k)) options (partitionnum=1, replicanum=3)",
    );
    succeeds(
        &cluster,
        root,
        "create user alice options (password='alice-password')",
    );
    refused(
        &cluster,
        root,
        "create user bob options (password='short')",
        "at least 8 characters",
    );
    succeeds(&cluster, root, "grant select on default.* to alice");
    let users = succeeds(&cluster, root, "show users");
    assert!(
        users.contains("alice") && users.contains("select on default.*"),
        "{users}"
    );
    assert!(!users.contains("argon2"), "hashes are never shown: {users}");
    let users: serde_json::Value =
        serde_json::from_str(&succeeds(&cluster, root, "show users --format=json")).unwrap();
    assert!(
        users["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user"] == "alice" && u["grants"] == "select on default.*"),
        "{users}"
    );

    // Rows: nothing without logging in; alice reads but does not write.
    succeeds(&cluster, root, "put t1 a 1");
    refused(
        &cluster,
        None,
        "get t1 a",
        "permission denied: log in first",
    );
    refused(
        &cluster,
        None,
        "put t1 b 2",
        "permission denied: log in first",
    );
    let row = succeeds(&cluster, alice, "get t1 a");
    assert!(row.contains('a') && row.contains('1'), "{row}");
    refused(
        &cluster,
        alice,
        "put t1 b 2",
        "permission denied: alice cannot write default.t1",
    );
    refused(
        &cluster,
        alice,
        "delete t1 a",
        "permission denied: alice cannot write default.t1",
    );
    // Jobs are judged the same way by the taskmanager.
    refused(
        &cluster,
        alice,
        "load data infile 'rows.csv' into table t1",
        "permission denied: alice cannot write default.t1",
    );

    // Alice reads the metadata but administers nothing.
    assert!(succeeds(&cluster, alice, "showtable").contains("t1"));
    refused(
        &cluster,
        alice,
        "drop table t1",
        "permission denied: alice cannot administer default.t1",
    );
    refused(
        &cluster,
        alice,
        "create table t2 (k string, index(key=k))",
        "permission denied: alice cannot administer database default",
    );
    for cmd in [
        "confset auto_failover false",
        "create user eve options (password='eve-password')",
        "grant all on *.* to alice",
        "show users",
    ] {
        refused(
            &cluster,
            alice,
            cmd,
            "permission denied: alice cannot administer the cluster",
        );
    }
    // Granted `all` on the database, she may drop its tables.
    succeeds(&cluster, root, "grant all on default.* to alice");
    succeeds(
        &cluster,
        alice,
        "create table t2 (k string, index(key=k)) options (partitionnum=1, replicanum=1)",
    );
    succeeds(&cluster, alice, "drop table t2");
    succeeds(&cluster, root, "revoke all on default.* from alice");
    refused(&cluster, alice, "drop table t1", "cannot administer");
    refused(
        &cluster,
        root,
        "revoke insert on default.* from alice",
        "holds no insert on default.*",
    );

    // A session survives until the password changes.
    let mut plain = plain_client(&cluster).await;
    let token = plain
        .login(LoginRequest {
            user: "alice".into(),
            password: "alice-password".into(),
        })
        .await
        .expect("alice logs in")
        .into_inner()
        .token;
    let show = || ShowTableRequest {
        db: String::new(),
        name: String::new(),
    };
    plain
        .show_table(with_token(show(), &token))
        .await
        .expect("a call with the token");
    // A token whose payload was changed (its last hex digit: still hex, another expiry)
    // no longer matches its signature.
    let (payload, signature) = token.split_once('.').expect("payload.signature");
    let last = if payload.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}.{signature}", &payload[..payload.len() - 1]);
    let status = plain
        .show_table(with_token(show(), &forged))
        .await
        .expect_err("a damaged token");
    assert!(status.message().contains("not valid"), "{status:?}");
    // Alice changes her own password: her old session ends.
    plain
        .alter_user(with_token(
            UserRequest {
                name: "alice".into(),
                password: "alice-new-password".into(),
            },
            &token,
        ))
        .await
        .expect("a user changes her own password");
    let status = plain
        .show_table(with_token(show(), &token))
        .await
        .expect_err("the old session");
    assert!(status.message().contains("has ended"), "{status:?}");
    refused(&cluster, alice, "showtable", "wrong user or password");
    succeeds(&cluster, Some(("alice", "alice-new-password")), "showtable");

    // A session of hers, on the tablet leading t1's partition too.
    let token = plain
        .login(LoginRequest {
            user: "alice".into(),
            password: "alice-new-password".into(),
        })
        .await
        .expect("alice logs in")
        .into_inner()
        .token;
    let rows = table_rows(&mut cluster.ns().await, "t1").await;
    let leader = leaders(&rows)[&0].clone();
    let tid = rows[0].tid;
    let tablet = TabletClient::new(tessera_tests::channel(&leader).await.expect("connect"));
    let get = move || GetRequest {
        tid,
        pid: 0,
        key: vec![Value::String("a".into()).to_proto()],
        ..Default::default()
    };
    // The tablet may still hold her record from before her password changed, for up
    // to a second.
    wait_until_async(
        Duration::from_secs(10),
        "alice's new session to read on the tablet",
        || {
            let (mut tablet, token) = (tablet.clone(), token.clone());
            async move { tablet.get(with_token(get(), &token)).await.is_ok() }
        },
    )
    .await;

    // Dropped, she cannot log in, and her sessions end, on the nameserver and on the
    // tablets, even when a new user of the same name is made.
    succeeds(&cluster, root, "drop user alice");
    succeeds(
        &cluster,
        root,
        "create user alice options (password='alice-new-password')",
    );
    succeeds(&cluster, root, "grant select on default.* to alice");
    let status = plain
        .show_table(with_token(show(), &token))
        .await
        .expect_err("the dropped user's session");
    assert!(status.message().contains("has ended"), "{status:?}");
    wait_until_async(
        Duration::from_secs(10),
        "the tablet to refuse the dropped user's session",
        || {
            let (mut tablet, token) = (tablet.clone(), token.clone());
            async move {
                tablet
                    .get(with_token(get(), &token))
                    .await
                    .is_err_and(|status| status.message().contains("has ended"))
            }
        },
    )
    .await;
    succeeds(&cluster, root, "drop user alice");
    refused(
        &cluster,
        Some(("alice", "alice-new-password")),
        "showtable",
        "wrong user or password",
    );
    refused(&cluster, root, "drop user root", "root cannot be dropped");

    // Passwords: anyone changes their own (no grant needed), only root changes root's.
    succeeds(
        &cluster,
        root,
        "create user carl options (password='carl-password')",
    );
    succeeds(
        &cluster,
        Some(("carl", "carl-password")),
        "alter user carl set options (password='carl-password-2')",
    );
    succeeds(&cluster, root, "grant all on *.* to carl");
    refused(
        &cluster,
        Some(("carl", "carl-password-2")),
        "alter user root set options (password='carl-owns-root')",
        "only root can",
    );

    // The cluster's own calls (this process holds the secret) need no login.
    tokio::time::timeout(Duration::from_secs(30), cluster.ns())
        .await
        .expect("the harness's client")
        .show_tablet(tessera_proto::nameserver::ShowTabletRequest {})
        .await
        .expect("an internal call");
}

/// Servers run with authentication unless told otherwise: without a cluster secret they
/// refuse to start and say why, and a nameserver also wants root's password; with
/// `--insecure` they start without either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_refuse_to_start_without_credentials_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let secret = tessera_tests::credentials::secret_flag();
    for (server, flags, expected) in [
        ("tessera-tablet", vec![], "no cluster secret"),
        ("tessera-nameserver", vec![], "no cluster secret"),
        ("tessera-taskmanager", vec![], "no cluster secret"),
        (
            "tessera-nameserver",
            vec![secret.clone()],
            "no --root_password_file",
        ),
    ] {
        let mut command = Command::new(binary(server));
        command
            .arg("--endpoint=127.0.0.1:1")
            .arg("--zk_cluster=127.0.0.1:1")
            .args(&flags);
        if server == "tessera-tablet" {
            command.arg(format!("--db_root_path={}", dir.path().display()));
        }
        let out = command.output().expect("run the server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected) && stderr.contains("--insecure"),
            "{server} {flags:?}: expected a refusal naming `{expected}` and --insecure, got {stderr}"
        );
    }
    // An insecure tablet starts and serves anyone.
    let tablet = tessera_tests::TabletProcess::start(&dir.path().join("t"), &["--insecure"]).await;
    let mut stranger = TabletClient::new(
        tessera_tests::channel(&tablet.endpoint)
            .await
            .expect("connect"),
    );
    // Even an internal call: refused as unknown, not as forbidden.
    let status = stranger
        .drop_table(tessera_proto::tablet::DropTableRequest { tid: 999, pid: 0 })
        .await
        .expect_err("no such table");
    assert_ne!(
        tessera_common::wire_error::detail_of(&status).map(|d| d.code()),
        Some(tessera_common::wire_error::ErrorCode::PermissionDenied),
        "{status:?}"
    );
}

/// `tessera-ops` holds the cluster secret for the tablets' internal calls, but acts on
/// the nameserver as the user it logs in as: without `--user` it refuses to start, a
/// user who may only read is refused the changes an operation makes (although the
/// process holds the secret), and root may make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_ops_acts_with_its_users_grants() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    let root = Some(("root", ROOT_PASSWORD));
    succeeds(
        &cluster,
        root,
        "create user reader options (password='reader-password')",
    );
    succeeds(&cluster, root, "grant select on *.* to reader");
    let ops = |login: Option<(&str, &str)>| {
        let mut command = Command::new(binary("tessera-ops"));
        command
            .arg(format!("--zk_cluster={}", cluster.zk.connect_string()))
            .arg("--zk_root_path=/tessera")
            .arg("--cmd=scaleout")
            .arg("--timeout=30")
            .arg(tessera_tests::credentials::secret_flag());
        if let Some((user, password)) = login {
            command
                .arg(format!("--user={user}"))
                .env("TESSERA_PASSWORD", password);
        }
        let out = command.output().expect("run tessera-ops");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = ops(None);
    assert!(!ok && text.contains("--user"), "without a user: {text}");
    let (ok, text) = ops(Some(("reader", "wrong-password")));
    assert!(!ok && text.contains("cannot log in as reader"), "{text}");
    let (ok, text) = ops(Some(("reader", "reader-password")));
    assert!(
        !ok && text.contains("permission denied: reader cannot"),
        "a reader holding the secret still may not change the cluster: {text}"
    );
    let (ok, text) = ops(root);
    assert!(ok, "root may: {text}");
    assert!(
        !text.contains("an earlier run"),
        "the refused run changed nothing and left nothing to restore: {text}"
    );
    let conf = succeeds(&cluster, root, "confget auto_failover");
    assert!(conf.contains("true"), "auto_failover was put back: {conf}");
}
