//! Integration harness: real Tessera processes (and, for the cluster tests, a real
//! ZooKeeper) on loopback ports, owned by guards that kill them on drop.

pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod credentials;
pub mod fake_tablet;
pub mod jobs;
pub mod nameserver;
pub mod netbed;
pub mod nscluster;
pub mod ops;
pub mod process;
pub mod routed;
pub mod tablet;
pub mod wait;
pub mod workload;
pub mod zookeeper;

pub use nameserver::{ElectedProcess, NameserverProcess};
pub use process::{binary, free_port};
pub use tablet::TabletProcess;
pub use wait::{wait_until, wait_until_async};
pub use zookeeper::ZooKeeper;

/// This machine's time in milliseconds since the epoch: timestamps within a TTL.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64
}

/// A channel to a server of the cluster under test (over TLS when the test process uses
/// it, see `tessera_common::tls`).
pub async fn channel(endpoint: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    tessera_common::tls::endpoint(endpoint, std::time::Duration::from_secs(5))?
        .connect()
        .await
}

/// A tablet's client whose calls carry this process's credentials (the cluster secret,
/// see [`credentials`]).
pub async fn tablet_client(
    endpoint: &str,
) -> Result<
    tessera_proto::tablet::tablet_client::TabletClient<tessera_common::auth::AuthChannel>,
    tonic::transport::Error,
> {
    let channel = channel(endpoint).await?;
    Ok(tessera_proto::tablet::tablet_client::TabletClient::new(
        tessera_common::auth::with_credentials(channel),
    ))
}
