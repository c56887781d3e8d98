//! The cluster secret (`--cluster_secret_file`): a cluster whose processes share it
//! works end to end, failover included, and a tablet refuses internal calls made
//! without it (or with a wrong one); with it, data calls need a login (see `users.rs`).
//! This test process holds the secret, so it has a binary of its own.

use std::time::Duration;

use tessera_common::cluster_secret::HEADER;
use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_common::Value;
use tessera_proto::nameserver::LeaderTroubleRequest;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::*;
use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::process::http_get;
use tessera_tests::routed::{leaders, table_rows};
use tessera_tests::workload::sdk_row;
use tonic::{Request, Status};

fn refused(result: Result<impl std::fmt::Debug, Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(
        detail_of(&status).map(|d| d.code()),
        Some(ErrorCode::PermissionDenied),
        "{what}: {status:?}"
    );
    assert!(
        status.message().contains("permission denied"),
        "{what}: {}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_calls_need_the_cluster_secret() {
    let dir = tempfile::tempdir().unwrap();
    // The harness gives every server the cluster secret (tessera_tests::credentials),
    // and this process too: its harness and SDK calls carry it.
    let cluster = NsCluster::start(dir.path(), NsClusterSpec::fast_failover()).await;
    let table = cluster.create_table("t1", 1, 3).await;
    let client = cluster.sdk(Duration::from_secs(60)).await;
    client
        .put("default", "t1", sdk_row("before", 1))
        .await
        .expect("a put through the SDK, carrying the secret");

    // A stranger calls a tablet's internal RPCs directly.
    let mut ns = cluster.ns().await;
    let leader = leaders(&table_rows(&mut ns, "t1").await)[&0].clone();
    let index = cluster.tablet_index(&leader);
    let mut stranger = TabletClient::new(
        tessera_tests::channel(&leader)
            .await
            .expect("connect to the tablet"),
    );
    let (tid, pid) = (table.tid, 0);
    refused(
        stranger
            .change_role(ChangeRoleRequest {
                tid,
                pid,
                role: TableRole::Follower as i32,
                term: 1_000,
                ..Default::default()
            })
            .await,
        "ChangeRole",
    );
    refused(
        stranger
            .fence(FenceRequest {
                tid,
                pid,
                term: 1_000,
            })
            .await,
        "Fence",
    );
    refused(
        stranger.drop_table(DropTableRequest { tid, pid }).await,
        "DropTable",
    );
    refused(
        stranger
            .send_snapshot(SendSnapshotRequest {
                tid,
                pid,
                endpoint: "127.0.0.1:1".into(),
            })
            .await,
        "SendSnapshot",
    );
    refused(
        stranger
            .receive_snapshot(tokio_stream::iter(vec![SnapshotChunk::default()]))
            .await,
        "ReceiveSnapshot",
    );
    let mut forged = Request::new(DropTableRequest { tid, pid });
    forged
        .metadata_mut()
        .insert(HEADER, "not-the-cluster-secret-000".parse().unwrap());
    refused(
        stranger.drop_table(forged).await,
        "DropTable with a wrong secret",
    );
    // With a secret, authentication is on: a stranger's data call needs a login.
    refused(
        stranger
            .get(GetRequest {
                tid,
                pid,
                key: vec![Value::String("before".into()).to_proto()],
                ..Default::default()
            })
            .await,
        "a get without a login",
    );

    // The nameserver's internal RPC, the tablets' report of a silent leader, too.
    let report = LeaderTroubleRequest {
        reporter: cluster.tablets[(index + 1) % 3].endpoint.clone(),
        leader: leader.clone(),
        reason: "forged".into(),
    };
    let mut stranger_ns = tessera_proto::nameserver::nameserver_client::NameserverClient::new(
        tessera_tests::channel(&cluster.nameserver.endpoint)
            .await
            .expect("connect to the nameserver"),
    );
    refused(
        stranger_ns.report_leader_trouble(report).await,
        "ReportLeaderTrouble",
    );

    // The cluster's own internal calls carry it: a failover works, found by the
    // followers' reports (a paused leader refuses no connection).
    cluster.tablets[index].pause();
    client
        .put("default", "t1", sdk_row("after", 2))
        .await
        .expect("a put after the failover");
    let (_, metrics) = http_get(&cluster.nameserver.endpoint, "/metrics");
    let reports: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("tessera_leader_reports_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        reports > 0,
        "the followers' reports, which carry the secret, were refused:\n{metrics}"
    );
    cluster.tablets[index].resume();
    for key in ["before", "after"] {
        assert!(
            client
                .get("default", "t1", vec![Value::String(key.into())])
                .await
                .expect("get")
                .is_some(),
            "{key} is still there"
        );
    }
}
