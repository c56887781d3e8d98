//! Finding and calling the nameserver leader.

use std::time::Duration;

use tessera_common::wire_error::{detail_of, ErrorCode};
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tonic::transport::Channel;

use crate::error::ClientError;

/// A connection to whichever nameserver leads, re-resolved when it changes.
pub struct NameserverConnection {
    zk: zookeeper_client::Client,
    root: String,
    client: Option<(String, NameserverClient<Channel>)>,
}

impl NameserverConnection {
    pub async fn connect(
        zk_cluster: &str,
        zk_root_path: &str,
    ) -> Result<NameserverConnection, ClientError> {
        let zk = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(10))
            .connect(zk_cluster)
            .await?;
        Ok(NameserverConnection {
            zk,
            root: zk_root_path.trim_end_matches('/').to_string(),
            client: None,
        })
    }

    /// The leader's endpoint: the data of the lowest election node.
    async fn leader_endpoint(&self) -> Result<String, ClientError> {
        let dir = format!("{}/leader", self.root);
        let mut children = self.zk.list_children(&dir).await.map_err(|e| match e {
            zookeeper_client::Error::NoNode => ClientError::Unavailable {
                attempts: 1,
                last: format!("no nameserver has ever run under {}", self.root),
            },
            other => other.into(),
        })?;
        children.sort_by_key(|c| {
            c.rsplit('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        });
        let first = children.first().ok_or_else(|| ClientError::Unavailable {
            attempts: 1,
            last: "no nameserver is running".into(),
        })?;
        let (data, _) = self.zk.get_data(&format!("{dir}/{first}")).await?;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    /// The cached client, or one for `hint` (where a standby said the leader is), or for
    /// the endpoint ZooKeeper names.
    async fn client(
        &mut self,
        fresh: bool,
        hint: Option<String>,
    ) -> Result<NameserverClient<Channel>, ClientError> {
        if !fresh {
            if let Some((_, client)) = &self.client {
                return Ok(client.clone());
            }
        }
        let endpoint = match hint {
            Some(endpoint) => endpoint,
            None => self.leader_endpoint().await?,
        };
        let client = NameserverClient::connect(format!("http://{endpoint}"))
            .await
            .map_err(|e| ClientError::Unavailable {
                attempts: 1,
                last: format!("cannot reach the nameserver at {endpoint}: {e}"),
            })?;
        self.client = Some((endpoint, client.clone()));
        Ok(client)
    }

    /// Calls the leader, following a leadership change a few times before giving up.
    pub async fn call<T, F, Fut>(&mut self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(NameserverClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = tonic::Status::unavailable("no nameserver answered");
        // Right after a restart the lowest election node may still be a dead session's,
        // naming a process that is now a standby; the standby's answer names the leader.
        let mut hint = None;
        for attempt in 0..8 {
            let client = match self.client(attempt > 0, hint.take()).await {
                Ok(client) => client,
                Err(e) => {
                    last = tonic::Status::unavailable(e.to_string());
                    tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                    continue;
                }
            };
            match call(client).await {
                Ok(value) => return Ok(value),
                Err(status) => {
                    let retry = match detail_of(&status) {
                        Some(d) if d.code() == ErrorCode::NotLeader => {
                            hint = (!d.leader.is_empty()).then_some(d.leader);
                            true
                        }
                        Some(_) => false,
                        // No structured reason: the connection itself failed.
                        None => true,
                    };
                    if !retry {
                        return Err(status);
                    }
                    last = status;
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1).min(5))).await;
                    }
                }
            }
        }
        Err(last)
    }
}
