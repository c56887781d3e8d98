//! Users in ZooKeeper (`<root>/users/<name>`, a `UserRecord` each), logins, and the
//! check every nameserver RPC makes (see `tessera_common::auth`).

use prost::Message;
use tessera_common::auth::{self, Caller, Need, Privilege, Scope, ROOT};
use tessera_common::zk_auth;
use tessera_proto::nameserver::{GrantEntry, UserRecord};
use tonic::{Request, Status};
use tracing::{info, warn};
use zookeeper_client::{CreateMode, Error as ZkError};

use crate::error::{NsError, Result};
use crate::state::{check_name, Nameserver};

fn secret_node() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(zk_auth::secret_acls())
}

/// A user as shown: without the password hash.
fn shown(mut record: UserRecord) -> UserRecord {
    record.password_hash.clear();
    record
}

impl Nameserver {
    /// The user's record, read from ZooKeeper (any nameserver can, the standbys too).
    pub(crate) async fn user(&self, name: &str) -> Result<Option<(UserRecord, i32)>> {
        let client = self.client()?;
        match client.get_data(&self.paths.user(name)).await {
            Ok((data, stat)) => {
                let record = UserRecord::decode(data.as_slice())
                    .map_err(|e| NsError::Zk(format!("user {name}: {e}")))?;
                Ok(Some((record, stat.version)))
            }
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every user, without password hashes, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        let mut users = Vec::new();
        for (name, data) in self.read_children(&self.paths.users()).await? {
            let record = UserRecord::decode(data.as_slice())
                .map_err(|e| NsError::Zk(format!("user {name}: {e}")))?;
            users.push(shown(record));
        }
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    /// Makes `root` with this password hash if the cluster has no root yet (its first
    /// start with authentication). Called by a new leader.
    pub(crate) async fn ensure_root(
        &self,
        lock: &zookeeper_client::OwnedLockClient,
        password_hash: Option<&str>,
    ) -> Result<()> {
        if self.user(ROOT).await?.is_some() {
            return Ok(());
        }
        let Some(password_hash) = password_hash else {
            if auth::enabled() {
                warn!(
                    "the cluster has no root user and this nameserver was given no \
                     --root_password_file: nobody can log in until one is"
                );
            }
            return Ok(());
        };
        if self
            .make_user(lock, ROOT, password_hash.to_string())
            .await?
        {
            info!("made the root user from --root_password_file");
        }
        Ok(())
    }

    /// Writes a new user without grants; false if one of that name exists.
    async fn make_user(
        &self,
        lock: &zookeeper_client::OwnedLockClient,
        name: &str,
        password_hash: String,
    ) -> Result<bool> {
        let record = UserRecord {
            name: name.into(),
            password_hash,
            generation: auth::new_generation().map_err(NsError::InvalidArgument)?,
            grants: Vec::new(),
        };
        let node = self.paths.user(name);
        match lock
            .create(&node, &record.encode_to_vec(), &secret_node())
            .await
        {
            Ok(_) => Ok(true),
            Err(ZkError::NodeExists) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks `password` and answers a session token and its lifetime in seconds.
    pub async fn login(&self, name: &str, password: &str) -> Result<(String, u64)> {
        let wrong =
            || NsError::PermissionDenied("permission denied: wrong user or password".into());
        let Some((record, _)) = self.user(name).await? else {
            // As slow as a wrong password, so a guess does not learn who exists.
            let _ = hash("no such user").await;
            return Err(wrong());
        };
        let (given, hash) = (password.to_string(), record.password_hash.clone());
        let matches = slow(move || auth::verify_password(&given, &hash))
            .await
            .unwrap_or(false);
        if !matches {
            return Err(wrong());
        }
        let token = auth::issue_token(name, record.generation).ok_or_else(|| {
            NsError::InvalidArgument(
                "this cluster runs without authentication (no --cluster_secret_file): there \
                 is nothing to log in to"
                    .into(),
            )
        })?;
        Ok((token, auth::TOKEN_LIFETIME.as_secs()))
    }

    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        check_name("user", name)?;
        auth::check_password_strength(password).map_err(NsError::InvalidArgument)?;
        let password_hash = hash(password).await?;
        let lock = self.lock().await?;
        if !self.make_user(&lock, name, password_hash).await? {
            return Err(NsError::UserExists(name.into()));
        }
        info!(user = name, "user created");
        Ok(())
    }

    /// A new password; sessions opened with the old one end.
    pub async fn alter_user(&self, name: &str, password: &str) -> Result<()> {
        auth::check_password_strength(password).map_err(NsError::InvalidArgument)?;
        let password_hash = hash(password).await?;
        self.change_user(name, move |record| {
            record.password_hash = password_hash.clone();
            record.generation += 1;
            Ok(())
        })
        .await?;
        info!(user = name, "password changed");
        Ok(())
    }

    pub async fn drop_user(&self, name: &str) -> Result<()> {
        if name == ROOT {
            return Err(NsError::InvalidArgument("root cannot be dropped".into()));
        }
        let lock = self.lock().await?;
        match lock.delete(&self.paths.user(name), None).await {
            Ok(()) => {
                info!(user = name, "user dropped");
                Ok(())
            }
            Err(ZkError::NoNode) => Err(NsError::UserNotFound(name.into())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn grant(&self, name: &str, entry: GrantEntry) -> Result<()> {
        let (privilege, scope) = parse_grant(&entry)?;
        let entry = auth::grant_entry(privilege, &scope);
        self.change_user(name, move |record| {
            if !record.grants.contains(&entry) {
                record.grants.push(entry.clone());
            }
            Ok(())
        })
        .await?;
        info!(user = name, privilege = privilege.as_str(), %scope, "granted");
        Ok(())
    }

    /// Takes back exactly a grant given before (an error names the grants held).
    pub async fn revoke(&self, name: &str, entry: GrantEntry) -> Result<()> {
        let (privilege, scope) = parse_grant(&entry)?;
        let entry = auth::grant_entry(privilege, &scope);
        self.change_user(name, move |record| {
            let before = record.grants.len();
            record.grants.retain(|held| *held != entry);
            if record.grants.len() == before {
                let held: Vec<String> = record
                    .grants
                    .iter()
                    .map(|g| format!("{} on {}.{}", g.privilege, g.db, g.table))
                    .collect();
                return Err(NsError::InvalidArgument(format!(
                    "{} holds no {} on {}.{} (it holds: {})",
                    record.name,
                    entry.privilege,
                    entry.db,
                    entry.table,
                    if held.is_empty() {
                        "nothing".into()
                    } else {
                        held.join(", ")
                    }
                )));
            }
            Ok(())
        })
        .await?;
        info!(user = name, privilege = privilege.as_str(), %scope, "revoked");
        Ok(())
    }

    /// Rewrites a user's record, retrying if it changed meanwhile.
    async fn change_user(
        &self,
        name: &str,
        change: impl Fn(&mut UserRecord) -> Result<()>,
    ) -> Result<()> {
        let lock = self.lock().await?;
        loop {
            let (mut record, version) = self
                .user(name)
                .await?
                .ok_or_else(|| NsError::UserNotFound(name.into()))?;
            change(&mut record)?;
            match lock
                .set_data(
                    &self.paths.user(name),
                    &record.encode_to_vec(),
                    Some(version),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(ZkError::BadVersion) => continue,
                Err(ZkError::NoNode) => return Err(NsError::UserNotFound(name.into())),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Refuses `request` unless its caller may do `need` on `db`/`table`: internal
    /// callers and processes without authentication may do everything.
    pub async fn authorize<T>(
        &self,
        request: &Request<T>,
        need: Need,
        db: Option<&str>,
        table: Option<&str>,
    ) -> std::result::Result<(), Status> {
        match auth::caller(request)? {
            Caller::Unchecked | Caller::Internal => Ok(()),
            Caller::User(session) => {
                let record = self.user(&session.user).await?.map(|(record, _)| record);
                auth::check_session(&session, record.as_ref(), need, db, table)
            }
        }
    }

    /// Who may change `target`'s password: the user themselves (any valid session, with
    /// or without grants), root for anyone, an administrator of the cluster for anyone
    /// but root.
    pub async fn authorize_user_change<T>(
        &self,
        request: &Request<T>,
        target: &str,
    ) -> std::result::Result<(), Status> {
        let session = match auth::caller(request)? {
            Caller::Unchecked | Caller::Internal => return Ok(()),
            Caller::User(session) => session,
        };
        let record = self.user(&session.user).await?.map(|(record, _)| record);
        let record = record.filter(|r| r.generation == session.generation);
        let Some(record) = record else {
            return auth::check_session(&session, None, Need::LoggedIn, None, None);
        };
        if session.user == target || session.user == ROOT {
            return Ok(());
        }
        if target == ROOT {
            return Err(NsError::PermissionDenied(format!(
                "permission denied: {} cannot change root's password (only root can)",
                session.user
            ))
            .into());
        }
        auth::check_session(&session, Some(&record), Need::Admin, None, None)
    }
}

fn parse_grant(entry: &GrantEntry) -> Result<(Privilege, Scope)> {
    let privilege = Privilege::parse(&entry.privilege).map_err(NsError::InvalidArgument)?;
    let scope =
        Scope::parse(&format!("{}.{}", entry.db, entry.table)).map_err(NsError::InvalidArgument)?;
    Ok((privilege, scope))
}

/// Password hashes verified or made at once: each takes about 19 MiB and tens of
/// milliseconds of a core, and logins need no session, so a flood of them must queue
/// rather than take the nameserver's memory.
static SLOW_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs password hashing off the async workers, two at a time.
async fn slow<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _turn = SLOW_WORK
        .acquire()
        .await
        .map_err(|e| NsError::InvalidArgument(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| NsError::InvalidArgument(format!("password hashing failed: {e}")))
}

async fn hash(password: &str) -> Result<String> {
    let password = password.to_string();
    slow(move || auth::hash_password(&password))
        .await?
        .map_err(NsError::InvalidArgument)
}

/// The hash of the password in `path` (its first line), for `--root_password_file`.
pub fn root_password_hash(path: &std::path::Path) -> std::result::Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the root password {}: {e}", path.display()))?;
    let password = text.lines().next().unwrap_or("").trim();
    auth::check_password_strength(password)
        .map_err(|e| format!("the root password in {}: {e}", path.display()))?;
    auth::hash_password(password)
}
