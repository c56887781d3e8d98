//! ZooKeeper authentication, and the ACLs of the nodes Tessera creates.
//!
//! Without authentication every node is created open to anyone (ZooKeeper's
//! `world:anyone` with every permission). With `--zk_auth_schema=digest
//! --zk_cert=user:password` (OpenMLDB's flag names) a process authenticates its session
//! with that identity and creates every node so that only that identity may change it
//! (`auth` with every permission) while anyone may read it: clients and tools that
//! only read the metadata need no credentials.
//!
//! The identity is a setting of the whole process, given once at start-up by its flags
//! ([`use_auth`]): every session and every node creation of a server uses it.

use std::sync::OnceLock;

use zookeeper_client::{Acl, Acls, Client, Connector, Error as ZkError, Permission};

/// The identity a process authenticates its ZooKeeper sessions with.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkAuth {
    scheme: String,
    cert: String,
}

impl std::fmt::Debug for ZkAuth {
    /// The user only: the password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:***", self.scheme, self.user())
    }
}

impl ZkAuth {
    /// From `--zk_auth_schema` and `--zk_cert`: both empty for none, or `digest` and
    /// `user:password`.
    pub fn from_flags(schema: &str, cert: &str) -> Result<Option<ZkAuth>, String> {
        match (schema.is_empty(), cert.is_empty()) {
            (true, true) => return Ok(None),
            (false, true) => {
                return Err(format!(
                    "--zk_auth_schema={schema} needs --zk_cert=user:password"
                ))
            }
            (true, false) => return Err("--zk_cert needs --zk_auth_schema=digest".into()),
            (false, false) => {}
        }
        if schema != "digest" {
            return Err(format!(
                "unsupported --zk_auth_schema `{schema}` (only digest is supported)"
            ));
        }
        match cert.split_once(':') {
            Some((user, _)) if !user.is_empty() => Ok(Some(ZkAuth {
                scheme: schema.to_string(),
                cert: cert.to_string(),
            })),
            _ => Err("--zk_cert must be user:password".into()),
        }
    }

    pub fn user(&self) -> &str {
        self.cert.split_once(':').map_or("", |(user, _)| user)
    }
}

/// The two flags, for the binaries that take them as they are (the tablet reads them
/// from its configuration file too).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "flags", derive(clap::Args))]
#[cfg_attr(feature = "flags", command(rename_all = "snake_case"))]
pub struct ZkAuthFlags {
    /// ZooKeeper authentication scheme: `digest`, with --zk_cert. Nodes are then
    /// created writable by that identity only, readable by anyone.
    #[cfg_attr(feature = "flags", arg(long, default_value = ""))]
    pub zk_auth_schema: String,
    /// `user:password` for --zk_auth_schema=digest. Every process of the cluster that
    /// writes to ZooKeeper (nameservers, tablets, taskmanagers, tessera-ops) uses the
    /// same.
    #[cfg_attr(feature = "flags", arg(long, default_value = ""))]
    pub zk_cert: String,
}

impl ZkAuthFlags {
    /// Checks the flags and makes them this process's identity.
    pub fn apply(&self) -> Result<(), String> {
        apply(&self.zk_auth_schema, &self.zk_cert)
    }
}

/// Checks `schema` and `cert` and, unless both are empty, makes them this process's
/// identity.
pub fn apply(schema: &str, cert: &str) -> Result<(), String> {
    match ZkAuth::from_flags(schema, cert)? {
        Some(auth) => use_auth(auth),
        None => Ok(()),
    }
}

static AUTH: OnceLock<ZkAuth> = OnceLock::new();

/// The only identity creates, changes and deletes; anyone reads.
static CREATOR_ALL_ANYONE_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// Sets this process's identity, once, before its first session. A second call with
/// a different identity is refused.
pub fn use_auth(auth: ZkAuth) -> Result<(), String> {
    let set = AUTH.get_or_init(|| auth.clone());
    if *set == auth {
        Ok(())
    } else {
        Err("the ZooKeeper identity of a process is set once".into())
    }
}

/// Whether this process has a ZooKeeper identity.
pub fn enabled() -> bool {
    AUTH.get().is_some()
}

/// A session builder that authenticates with this process's identity, if any.
pub fn connector() -> Connector {
    let connector = Client::connector();
    match AUTH.get() {
        Some(auth) => connector.with_auth(&auth.scheme, auth.cert.as_bytes()),
        None => connector,
    }
}

/// The ACLs of a node this process creates.
pub fn acls() -> Acls<'static> {
    match AUTH.get() {
        Some(_) => Acls::new(&CREATOR_ALL_ANYONE_READ),
        None => Acls::anyone_all(),
    }
}

/// The ACLs of a node holding credentials (a user's password hash): with an identity,
/// only that identity may read or change it.
pub fn secret_acls() -> Acls<'static> {
    match AUTH.get() {
        Some(_) => Acls::creator_all(),
        None => Acls::anyone_all(),
    }
}

/// The folder, under a cluster's root, of the nodes made with [`secret_acls`].
pub const SECRET_DIR: &str = "users";

/// With an identity set, gives every node under `root` (itself included) that anyone
/// may change the ACLs of [`acls`]: nodes made before authentication was turned on.
/// Returns how many it changed. A node gone meanwhile is skipped.
///
/// The root is closed last, so a closed root means the walk was done (nodes created
/// since are closed as they are made): the walk, one read per node, happens once per
/// cluster, not at every change of leader.
pub async fn restrict_open_nodes(client: &Client, root: &str) -> Result<usize, ZkError> {
    if AUTH.get().is_none() {
        return Ok(0);
    }
    let root = root.trim_end_matches('/');
    let Some(root_version) = open_acl_version(client, root).await? else {
        return Ok(0);
    };
    let mut changed = 0;
    let mut pending = children_of(client, root).await?;
    while let Some(path) = pending.pop() {
        if let Some(version) = open_acl_version(client, &path).await? {
            let secret = path
                .strip_prefix(root)
                .and_then(|rest| rest.strip_prefix(&format!("/{SECRET_DIR}/")))
                .is_some();
            let acls = if secret { secret_acls() } else { acls() };
            changed += usize::from(close(client, &path, version, &acls).await?);
        }
        pending.extend(children_of(client, &path).await?);
    }
    changed += usize::from(close(client, root, root_version, &acls()).await?);
    Ok(changed)
}

/// The ACL version of `path` if anyone may change it; `None` if it is closed or gone.
async fn open_acl_version(client: &Client, path: &str) -> Result<Option<i32>, ZkError> {
    match client.get_acl(path).await {
        Ok((current, stat)) => Ok(current
            .iter()
            .any(|acl| acl.scheme() == "world" && acl.permission() != Permission::READ)
            .then_some(stat.aversion)),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives `path` the ACLs `acls`; false if it changed or went meanwhile.
async fn close(
    client: &Client,
    path: &str,
    version: i32,
    acls: &Acls<'static>,
) -> Result<bool, ZkError> {
    match client.set_acl(path, acls, Some(version)).await {
        Ok(_) => Ok(true),
        Err(ZkError::NoNode | ZkError::BadVersion) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn children_of(client: &Client, path: &str) -> Result<Vec<String>, ZkError> {
    match client.list_children(path).await {
        Ok(children) => Ok(children
            .into_iter()
            .map(|c| format!("{path}/{c}"))
            .collect()),
        Err(ZkError::NoNode) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_both_or_neither_and_digest_only() {
        assert_eq!(ZkAuth::from_flags("", "").unwrap(), None);
        let auth = ZkAuth::from_flags("digest", "tessera:secret")
            .unwrap()
            .unwrap();
        assert_eq!(auth.user(), "tessera");
        assert!(!format!("{auth:?}").contains("secret"));
        for (schema, cert, says) in [
            ("digest", "", "needs --zk_cert"),
            ("", "a:b", "needs --zk_auth_schema"),
            ("sasl", "a:b", "only digest"),
            ("digest", "nocolon", "user:password"),
            ("digest", ":password", "user:password"),
        ] {
            let err = ZkAuth::from_flags(schema, cert).unwrap_err();
            assert!(err.contains(says), "{schema} {cert}: {err}");
        }
    }
}
