//! A ZooKeeper session for clients that must outlive any one session.
//!
//! ZooKeeper ends a session its client has not been heard from for the session timeout
//! (a paused process, a long network cut, ZooKeeper itself paused), and a client handle
//! whose session ended is dead for good: every operation fails with `SessionExpired`.
//! Servers treat that as the loss of what their session held (leadership, registration)
//! and act on it. A client that only reads and watches (the SDK, ns_client, tessera-ops)
//! simply needs a new session: [`ZkSession::run`] opens one when an operation finds the
//! old one expired and runs the operation again, and [`ZkSession::renewals`] tells the
//! owner's watch loops that their watches (which died with the old session) must be set
//! again and whatever they cached re-read.
//!
//! The session closes when the last [`ZkSession`] handle and the clients taken from it
//! are dropped.

use std::future::Future;
use std::time::Duration;

use parking_lot::RwLock;
use zookeeper_client::{Client, Error, SessionId};

pub struct ZkSession {
    cluster: String,
    timeout: Duration,
    current: RwLock<Client>,
    /// One renewal at a time: callers that saw the same expired session share it.
    renewing: tokio::sync::Mutex<()>,
    renewals: tokio::sync::watch::Sender<u64>,
}

/// Whether `e` says the session is gone for good (a new one is needed).
pub fn is_session_lost(e: &Error) -> bool {
    matches!(e, Error::SessionExpired | Error::ClientClosed)
}

impl ZkSession {
    /// Opens the first session (with this process's ZooKeeper credentials, if any).
    pub async fn connect(cluster: &str, timeout: Duration) -> Result<ZkSession, Error> {
        let client = open(cluster, timeout).await?;
        Ok(ZkSession {
            cluster: cluster.to_string(),
            timeout,
            current: RwLock::new(client),
            renewing: tokio::sync::Mutex::new(()),
            renewals: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The current session's client.
    pub fn client(&self) -> Client {
        self.current.read().clone()
    }

    /// Changes each time a new session replaces an expired one: watches set on the old
    /// one are gone, and what they guarded must be read again.
    pub fn renewals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.renewals.subscribe()
    }

    /// Runs `op` on the current session; if it finds the session lost, opens a new one and
    /// runs `op` once more on it.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let client = self.client();
        match op(client.clone()).await {
            Err(e) if is_session_lost(&e) => {
                let fresh = self.renew(client.session_id()).await?;
                op(fresh).await
            }
            other => other,
        }
    }

    /// A new session in place of `lost` (the session the caller found gone), or the one
    /// that already replaced it.
    pub async fn renew(&self, lost: SessionId) -> Result<Client, Error> {
        let _one_at_a_time = self.renewing.lock().await;
        let current = self.client();
        if current.session_id() != lost && !is_lost(&current) {
            return Ok(current);
        }
        let fresh = open(&self.cluster, self.timeout).await?;
        tracing::info!(
            old = %lost,
            new = %fresh.session_id(),
            "ZooKeeper session expired; opened a new one"
        );
        *self.current.write() = fresh.clone();
        self.renewals.send_modify(|n| *n = n.wrapping_add(1));
        Ok(fresh)
    }
}

fn is_lost(client: &Client) -> bool {
    client.state().is_terminated()
}

async fn open(cluster: &str, timeout: Duration) -> Result<Client, Error> {
    crate::zk_auth::connector()
        .with_session_timeout(timeout)
        .connect(cluster)
        .await
}
