//! Finding and calling an elected leader: the nameserver's, or the taskmanager's.

use std::time::Duration;

use tessera_common::auth::AuthChannel;
use tessera_common::wire_error::{self, detail_of, ErrorCode};
use tessera_common::zk_session::ZkSession;
use tessera_proto::nameserver::nameserver_client::NameserverClient;
use tessera_proto::taskmanager::task_manager_client::TaskManagerClient;

use crate::error::ClientError;

/// How long a call keeps looking for a leader: beyond a ZooKeeper session timeout, so an
/// election after a crash completes within it.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How often a call waiting on a leader looks whether ZooKeeper still names it.
const LEADER_CHECK: Duration = Duration::from_millis(500);

/// A connection to whichever instance of an elected service leads (the lowest election
/// node under `dir`), re-resolved when it changes. Clones share the ZooKeeper session and
/// the client of the leader, for calls made side by side: a leader found by one is the
/// next call's of every clone.
#[derive(Clone)]
pub struct LeaderConnection<C> {
    /// Renewed when ZooKeeper expires it, so a long-lived connection outlives it.
    zk: std::sync::Arc<ZkSession>,
    dir: String,
    /// `nameserver` or `taskmanager`, for messages.
    what: &'static str,
    make: fn(AuthChannel) -> C,
    /// The leader's endpoint and a client of it, once known.
    client: std::sync::Arc<std::sync::Mutex<Option<(String, C)>>>,
}

/// The nameserver leader.
pub type NameserverConnection = LeaderConnection<NameserverClient<AuthChannel>>;
/// The taskmanager leader.
pub type TaskManagerConnection = LeaderConnection<TaskManagerClient<AuthChannel>>;

impl NameserverConnection {
    pub async fn connect(
        zk_cluster: &str,
        zk_root_path: &str,
    ) -> Result<NameserverConnection, ClientError> {
        let root = zk_root_path.trim_end_matches('/');
        LeaderConnection::open(
            zk_cluster,
            format!("{root}/leader"),
            "nameserver",
            NameserverClient::new,
        )
        .await
    }
}

/// Logs this process in as `user` and keeps it logged in (see
/// [`NameserverConnection::keep_logged_in`]): every client of the process then acts as
/// that user.
pub async fn log_in_process(
    zk_cluster: &str,
    zk_root_path: &str,
    user: &str,
    password: &str,
) -> Result<(), ClientError> {
    let mut ns = NameserverConnection::connect(zk_cluster, zk_root_path).await?;
    ns.login(user, password).await?;
    NameserverConnection::keep_logged_in(zk_cluster, zk_root_path, user, password);
    Ok(())
}

impl NameserverConnection {
    /// Logs in as `user` again before each session expires, for as long as the process
    /// runs (a failed attempt is retried every 30 s).
    pub fn keep_logged_in(zk_cluster: &str, zk_root_path: &str, user: &str, password: &str) {
        let (zk_cluster, zk_root_path, user, password) = (
            zk_cluster.to_string(),
            zk_root_path.to_string(),
            user.to_string(),
            password.to_string(),
        );
        tokio::spawn(async move {
            let mut wait = tessera_common::auth::TOKEN_LIFETIME / 2;
            loop {
                tokio::time::sleep(wait).await;
                let renewed = async {
                    let mut ns = NameserverConnection::connect(&zk_cluster, &zk_root_path).await?;
                    ns.login(&user, &password).await
                };
                wait = match renewed.await {
                    Ok(()) => tessera_common::auth::TOKEN_LIFETIME / 2,
                    Err(e) => {
                        tracing::warn!(%user, error = %e, "cannot renew the session; retrying in 30 s");
                        Duration::from_secs(30)
                    }
                };
            }
        });
    }

    /// Logs in as `user`: every later call of this process carries the session.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let request = tessera_proto::nameserver::LoginRequest {
            user: user.to_string(),
            password: password.to_string(),
        };
        let token = self
            .call(|mut c| {
                let r = request.clone();
                async move { c.login(r).await }
            })
            .await
            .map_err(|status| ClientError::PermissionDenied(status.message().to_string()))?
            .into_inner()
            .token;
        tessera_common::auth::use_token(&token).map_err(ClientError::InvalidArgument)
    }

    /// (database, table) of every table, database by database, names sorted.
    pub async fn table_names(&mut self) -> Result<Vec<(String, String)>, tonic::Status> {
        use tessera_proto::nameserver::{ShowDbRequest, ShowTableRequest};
        let dbs = self
            .call(|mut c| async move { c.show_db(ShowDbRequest {}).await })
            .await?
            .into_inner()
            .dbs;
        let mut out = Vec::new();
        for db in dbs {
            let request = ShowTableRequest {
                db: db.clone(),
                name: String::new(),
            };
            let rows = self
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.show_table(r).await }
                })
                .await?
                .into_inner()
                .rows;
            // One row per replica: each name once.
            let names: std::collections::BTreeSet<String> =
                rows.into_iter().map(|r| r.name).collect();
            out.extend(names.into_iter().map(|name| (db.clone(), name)));
        }
        Ok(out)
    }
}

/// Whether an op of the pipeline has ended: done, failed or cancelled.
pub fn op_ended(op: &tessera_proto::nameserver::OpInfo) -> bool {
    matches!(op.status.as_str(), "kDone" | "kFailed" | "kCanceled")
}

impl TaskManagerConnection {
    pub async fn connect(
        zk_cluster: &str,
        zk_root_path: &str,
    ) -> Result<TaskManagerConnection, ClientError> {
        let root = zk_root_path.trim_end_matches('/');
        LeaderConnection::open(
            zk_cluster,
            format!("{root}/taskmanager/leader"),
            "taskmanager",
            TaskManagerClient::new,
        )
        .await
    }
}

impl<C: Clone> LeaderConnection<C> {
    async fn open(
        zk_cluster: &str,
        dir: String,
        what: &'static str,
        make: fn(AuthChannel) -> C,
    ) -> Result<LeaderConnection<C>, ClientError> {
        let zk = ZkSession::connect(zk_cluster, Duration::from_secs(10)).await?;
        Ok(LeaderConnection {
            zk: std::sync::Arc::new(zk),
            dir,
            what,
            make,
            client: Default::default(),
        })
    }

    /// The leader's endpoint: the data of the lowest election node.
    async fn leader_endpoint(&self) -> Result<String, ClientError> {
        let dir = &self.dir;
        let order = self
            .zk
            .run(|zk| async move { tessera_common::coordination::election_order(&zk, dir).await })
            .await
            .map_err(|e| match e {
                zookeeper_client::Error::NoNode => ClientError::Unavailable {
                    attempts: 1,
                    last: format!("no {} has ever run here ({dir})", self.what),
                },
                other => other.into(),
            })?;
        order
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Unavailable {
                attempts: 1,
                last: format!("no {} is running", self.what),
            })
    }

    /// The cached client, or one for `hint` (where a standby said the leader is), or for
    /// the endpoint ZooKeeper names; with the endpoint it calls.
    async fn client(&self, fresh: bool, hint: Option<String>) -> Result<(String, C), ClientError> {
        if !fresh {
            if let Some(cached) = self.cached() {
                return Ok(cached);
            }
        }
        let endpoint = match hint {
            Some(endpoint) => endpoint,
            None => self.leader_endpoint().await?,
        };
        let unreachable = |e: String| ClientError::Unavailable {
            attempts: 1,
            last: format!("cannot reach the {} at {endpoint}: {e}", self.what),
        };
        let channel = tessera_common::tls::endpoint(&endpoint, Duration::from_secs(3))
            .map_err(|e| unreachable(e.to_string()))?
            .connect()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let client = (self.make)(tessera_common::auth::with_credentials(channel));
        *self.shared_client() = Some((endpoint.clone(), client.clone()));
        Ok((endpoint, client))
    }

    fn cached(&self) -> Option<(String, C)> {
        self.shared_client().clone()
    }

    fn shared_client(&self) -> std::sync::MutexGuard<'_, Option<(String, C)>> {
        self.client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the cached client if it still calls `endpoint` (a clone may have found
    /// the new leader meanwhile).
    fn forget(&self, endpoint: &str) {
        let mut cached = self.shared_client();
        if cached.as_ref().is_some_and(|(e, _)| e == endpoint) {
            *cached = None;
        }
    }

    /// Waits for `answer` from the leader being called, unless ZooKeeper names another
    /// leader meanwhile (the one called is paused or cut off, and its session expired):
    /// then gives up on it, so the call does not hang on a process that may never
    /// answer, and returns the new leader.
    async fn unless_leader_moves<T>(
        &self,
        calling: &str,
        answer: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<Result<T, tonic::Status>, String> {
        tokio::pin!(answer);
        loop {
            tokio::select! {
                answered = &mut answer => return Ok(answered),
                _ = tokio::time::sleep(LEADER_CHECK) => {
                    // An answer arriving meanwhile waits for this read: keep it short.
                    let named = tokio::time::timeout(LEADER_CHECK, self.leader_endpoint()).await;
                    if let Ok(Ok(leader)) = named {
                        if leader != calling {
                            return Err(leader);
                        }
                    }
                }
            }
        }
    }

    /// Calls the leader, following a leadership change a few times before giving up.
    pub async fn call<T, F, Fut>(&mut self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(C) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = tonic::Status::unavailable(format!("no {} answered", self.what));
        // Right after a restart the lowest election node may still be a dead session's,
        // naming a process that is now a standby (the standby names the leader, which
        // may be that same dead session's): keep trying until a leader is elected, for
        // up to LEADER_WAIT.
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut hint = None;
        let mut backoff =
            tessera_common::retry::backoff(Duration::from_millis(100), Duration::from_secs(1));
        let mut attempt = 0;
        while tokio::time::Instant::now() < deadline {
            attempt += 1;
            match self.client(attempt > 1, hint.take()).await {
                Err(e) => last = tonic::Status::unavailable(e.to_string()),
                Ok((calling, client)) => {
                    match self.unless_leader_moves(&calling, call(client)).await {
                        // The old leader may yet act on the call: not sent again, since not
                        // every call may be applied twice.
                        Err(leader) => {
                            self.forget(&calling);
                            return Err(wire_error::status(
                                ErrorCode::OutcomeUnknown,
                                format!(
                                    "the {} at {calling} stopped answering and {leader} leads \
                                 now; whether the call took effect is not known",
                                    self.what
                                ),
                            ));
                        }
                        Ok(Ok(value)) => return Ok(value),
                        Ok(Err(status)) => {
                            let retry = match detail_of(&status) {
                                Some(d) if d.code() == ErrorCode::NotLeader => {
                                    hint = (!d.leader.is_empty()).then_some(d.leader);
                                    true
                                }
                                Some(_) => false,
                                // No structured reason: the connection's or the gRPC layer's.
                                None => tessera_common::retry::transport_may_recover(status.code()),
                            };
                            if !retry {
                                return Err(status);
                            }
                            last = status;
                        }
                    }
                }
            }
            let pause = backoff.next().unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(
                pause.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
        Err(last)
    }
}
