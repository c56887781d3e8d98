//! A server's view of the cluster's users (`<root>/users/<name>` in ZooKeeper), for
//! checking the callers of its RPCs (see [`crate::auth`]).
//!
//! A user's record is read on first use and kept for [`FRESH`]: a dropped user, a
//! changed password or a revoked grant takes effect on every server within that time.
//! While ZooKeeper does not answer, a record read in the last [`STALE_LIMIT`] is still
//! used, so a short ZooKeeper outage does not stop the data path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use tessera_proto::nameserver::UserRecord;
use tonic::{Request, Status};
use zookeeper_client::{Client, Error as ZkError};

use crate::auth::{self, Caller, Need};
use crate::coordination::ZkSettings;
use crate::wire_error::{self, ErrorCode};

/// How long a record read from ZooKeeper is used without reading it again.
pub const FRESH: Duration = Duration::from_secs(1);
/// How old a record may be when ZooKeeper does not answer.
pub const STALE_LIMIT: Duration = Duration::from_secs(60);
/// After ZooKeeper failed to answer, how long records are served stale without asking
/// it again (one caller tries; the others do not queue behind it).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Connecting to ZooKeeper, for a lookup.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Cached {
    record: Option<UserRecord>,
    read_at: Instant,
}

pub struct UserDirectory {
    settings: ZkSettings,
    client: tokio::sync::Mutex<Option<Client>>,
    cache: Mutex<HashMap<String, Cached>>,
    /// When ZooKeeper last failed to answer a lookup.
    failed_at: Mutex<Option<Instant>>,
}

impl UserDirectory {
    pub fn new(settings: ZkSettings) -> UserDirectory {
        UserDirectory {
            settings,
            client: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            failed_at: Mutex::new(None),
        }
    }

    fn cached(&self, name: &str, max_age: Duration) -> Option<Option<UserRecord>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(name)
            .filter(|c| c.read_at.elapsed() < max_age)
            .map(|c| c.record.clone())
    }

    /// The user's record (`None`: no such user).
    pub async fn lookup(&self, name: &str) -> Result<Option<UserRecord>, String> {
        if let Some(record) = self.cached(name, FRESH) {
            return Ok(record);
        }
        let failed_recently = self
            .failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE);
        if failed_recently {
            return self
                .cached(name, STALE_LIMIT)
                .ok_or_else(|| "cannot read the users from ZooKeeper (it did not answer)".into());
        }
        match self.read(name).await {
            Ok(record) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(
                    name.to_string(),
                    Cached {
                        record: record.clone(),
                        read_at: Instant::now(),
                    },
                );
                Ok(record)
            }
            Err(e) => {
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                self.cached(name, STALE_LIMIT)
                    .ok_or_else(|| format!("cannot read the users from ZooKeeper: {e}"))
            }
        }
    }

    async fn read(&self, name: &str) -> Result<Option<UserRecord>, String> {
        let mut client = self.client.lock().await;
        // Another caller may have read it while this one waited for the lock.
        if let Some(record) = self.cached(name, FRESH) {
            return Ok(record);
        }
        if client.is_none() {
            let connected = crate::zk_auth::connector()
                .with_session_timeout(self.settings.session_timeout)
                .with_connection_timeout(CONNECT_TIMEOUT)
                .connect(&self.settings.cluster)
                .await
                .map_err(|e| e.to_string())?;
            *client = Some(connected);
        }
        let zk = client.as_ref().expect("connected above");
        let path = format!(
            "{}/{}/{name}",
            self.settings.root.trim_end_matches('/'),
            crate::zk_auth::SECRET_DIR
        );
        match zk.get_data(&path).await {
            Ok((data, _)) => {
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                UserRecord::decode(data.as_slice())
                    .map(Some)
                    .map_err(|e| format!("user {name}: {e}"))
            }
            Err(ZkError::NoNode) => {
                *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(None)
            }
            Err(e) => {
                // A session that ended is made again on the next read.
                *client = None;
                Err(e.to_string())
            }
        }
    }

    /// Refuses `request` unless its caller may do `need` on `db`/`table` (internal
    /// callers, and every caller when authentication is off, may).
    pub async fn authorize<T>(
        directory: Option<&UserDirectory>,
        request: &Request<T>,
        need: Need,
        db: Option<&str>,
        table: Option<&str>,
    ) -> Result<(), Status> {
        let caller = auth::caller(request)?;
        UserDirectory::authorize_caller(directory, caller, need, db, table).await
    }

    /// As [`UserDirectory::authorize`], for a caller already found by
    /// [`auth::caller`] (its token is checked once per request).
    pub async fn authorize_caller(
        directory: Option<&UserDirectory>,
        caller: Caller,
        need: Need,
        db: Option<&str>,
        table: Option<&str>,
    ) -> Result<(), Status> {
        let session = match caller {
            Caller::Unchecked | Caller::Internal => return Ok(()),
            Caller::User(session) => session,
        };
        let Some(directory) = directory else {
            return Err(wire_error::status(
                ErrorCode::PermissionDenied,
                "permission denied: this server has no user directory (it runs outside a \
                 cluster); only the cluster's own processes may call it",
            ));
        };
        let record = directory
            .lookup(&session.user)
            .await
            .map_err(|e| wire_error::status(ErrorCode::PartitionUnavailable, e))?;
        auth::check_session(&session, record.as_ref(), need, db, table)
    }
}
