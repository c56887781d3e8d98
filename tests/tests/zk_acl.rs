//! ZooKeeper ACLs: with `--zk_auth_schema=digest --zk_cert=user:password` the cluster's
//! metadata can be changed only with that identity, while anyone (the SDK, ns_client)
//! still reads it; a cluster that turns authentication on closes the nodes it made
//! before.

use std::time::Duration;

use tessera_tests::nscluster::{NsCluster, NsClusterSpec};
use tessera_tests::workload::sdk_row;
use tessera_tests::NameserverProcess;
use zookeeper_client::{Client, CreateMode, Error as ZkError};

const AUTH: &[&str] = &["--zk_auth_schema=digest", "--zk_cert=tessera:s3cret"];
const TABLE_NODE: &str = "/tessera/table/table_data/default.t1";

/// Every way an unauthenticated client could change the metadata is refused, and it can
/// still read it.
async fn assert_closed_to_strangers(zk_connect: &str) {
    let stranger = Client::connect(zk_connect)
        .await
        .expect("connect to ZooKeeper");
    let (data, stat) = stranger
        .get_data(TABLE_NODE)
        .await
        .expect("anyone may read the metadata");
    assert!(!data.is_empty());
    assert_eq!(
        stranger
            .set_data(TABLE_NODE, b"forged", None)
            .await
            .unwrap_err(),
        ZkError::NoAuth,
        "rewriting the table's metadata"
    );
    assert_eq!(
        stranger
            .delete(TABLE_NODE, Some(stat.version))
            .await
            .unwrap_err(),
        ZkError::NoAuth,
        "deleting the table's metadata"
    );
    assert_eq!(
        stranger
            .set_data(&format!("{TABLE_NODE}/chunk-00000"), b"forged", None)
            .await
            .unwrap_err(),
        ZkError::NoAuth,
        "rewriting a chunk of the table's partitions"
    );
    let open = CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    assert_eq!(
        stranger
            .create("/tessera/table/table_data/default.forged", b"x", &open)
            .await
            .unwrap_err(),
        ZkError::NoAuth,
        "creating a table node"
    );
    assert_eq!(
        stranger
            .set_data("/tessera/config/auto_failover", b"false", None)
            .await
            .unwrap_err(),
        ZkError::NoAuth,
        "turning auto_failover off"
    );
    let (acls, _) = stranger.get_acl(TABLE_NODE).await.expect("read the ACL");
    assert!(
        acls.iter()
            .any(|a| a.scheme() == "digest" && a.id().starts_with("tessera:")),
        "{acls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_digest_only_the_cluster_changes_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NsCluster::start(
        dir.path(),
        NsClusterSpec {
            tablet_args: AUTH,
            nameserver_args: AUTH,
            ..NsClusterSpec::defaults()
        },
    )
    .await;
    cluster.create_table("t1", 2, 3).await;
    // Clients need no credentials: they only read ZooKeeper.
    let client = cluster.sdk(Duration::from_secs(30)).await;
    client
        .put("default", "t1", sdk_row("k", 1))
        .await
        .expect("put through the SDK");
    assert_closed_to_strangers(&cluster.zk.connect_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turning_the_digest_on_closes_the_nodes_made_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NsCluster::start(dir.path(), NsClusterSpec::defaults()).await;
    cluster.create_table("t1", 2, 3).await;
    let stranger = Client::connect(&cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    let (data, _) = stranger.get_data(TABLE_NODE).await.unwrap();
    stranger
        .set_data(TABLE_NODE, &data, None)
        .await
        .expect("without authentication the metadata is open to anyone");

    // A nameserver with the digest takes over.
    let secured =
        NameserverProcess::start_with(&dir.path().join("ns2"), &cluster.zk, 10_000, AUTH).await;
    cluster.nameserver.kill9();
    secured.wait_leader().await;
    assert!(
        secured
            .log()
            .contains("ZooKeeper nodes made writable by this cluster's identity only"),
        "{}",
        secured.log()
    );
    assert_closed_to_strangers(&cluster.zk.connect_string()).await;
}
