//! Users, their privileges, and the session tokens they log in for.
//!
//! Authentication is on when the cluster runs with a cluster secret
//! (`--cluster_secret_file`, see [`crate::cluster_secret`]): the key that signs session
//! tokens is derived from it, so any process of the cluster can check a token without
//! asking the nameserver.
//!
//! - **Users** live in ZooKeeper under `<root>/users/<name>`: a salted argon2 hash of the
//!   password, a generation that changes with the password, and grants. `root` is made
//!   on the cluster's first start from the nameserver's `--root_password_file` and may
//!   do everything.
//! - **Grants** give `select` (read data), `insert` (write data) or `all` (both, and
//!   administer) on `DB.TABLE`, `DB.*` or `*.*`. Administering a table or a database
//!   (DDL) needs `all` on it; administering the cluster (ops, `confset`, users) needs
//!   `all` on `*.*`.
//! - **Sessions**: `Login` checks the password once and answers a token naming the user,
//!   the password's generation and an expiry, signed with HMAC-SHA256. Calls carry it in
//!   the `authorization: Bearer <token>` header. A token of an older generation (the
//!   password changed) or of a dropped user is refused.
//! - **Internal calls** (carrying the cluster secret) may do everything.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tessera_proto::nameserver::{GrantEntry, UserRecord};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::wire_error::{self, ErrorCode};

/// The user made on the cluster's first start, who may do everything.
pub const ROOT: &str = "root";
/// How long a session token is valid: a client logs in again after it.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The metadata header carrying the token (`Bearer <token>`).
pub const HEADER: &str = "authorization";
/// Shorter passwords are refused.
pub const MIN_PASSWORD_LEN: usize = 8;

/// The database of requests that name none.
pub const DEFAULT_DB: &str = "default";

/// The database a request means: its own, or `default` when it names none.
pub fn db_or_default(db: &str) -> &str {
    if db.is_empty() {
        DEFAULT_DB
    } else {
        db
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read rows.
    Read,
    /// Write rows.
    Write,
    /// DDL on the scope; on the whole cluster (no database), ops, `confset` and users.
    Admin,
    /// Any logged-in user (reading the metadata: `showtable`, `showtablet`, …).
    LoggedIn,
}

impl Need {
    fn verb(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Write => "write",
            Need::Admin => "administer",
            Need::LoggedIn => "use",
        }
    }
}

/// A privilege a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Select,
    Insert,
    All,
}

impl Privilege {
    pub fn parse(text: &str) -> Result<Privilege, String> {
        match text.to_ascii_lowercase().as_str() {
            "select" => Ok(Privilege::Select),
            "insert" => Ok(Privilege::Insert),
            "all" | "all privileges" => Ok(Privilege::All),
            other => Err(format!(
                "unknown privilege `{other}` (expected select, insert or all)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Select => "select",
            Privilege::Insert => "insert",
            Privilege::All => "all",
        }
    }

    fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Privilege::All, _)
                | (_, Need::LoggedIn)
                | (Privilege::Select, Need::Read)
                | (Privilege::Insert, Need::Write)
        )
    }
}

/// A grant's scope: `DB.TABLE`, `DB.*` or `*.*` (`None` stands for `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub db: Option<String>,
    pub table: Option<String>,
}

impl Scope {
    /// Parses `db.table`, `db.*` or `*.*`.
    pub fn parse(text: &str) -> Result<Scope, String> {
        let bad = || format!("`{text}` is not a scope (expected DB.TABLE, DB.* or *.*)");
        let (db, table) = text.trim().split_once('.').ok_or_else(bad)?;
        let name = |part: &str| -> Result<Option<String>, String> {
            match part {
                "*" => Ok(None),
                "" => Err(bad()),
                name if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    Ok(Some(name.to_string()))
                }
                _ => Err(bad()),
            }
        };
        let scope = Scope {
            db: name(db)?,
            table: name(table)?,
        };
        if scope.db.is_none() && scope.table.is_some() {
            return Err(bad());
        }
        Ok(scope)
    }

    /// Whether the scope covers `db` and `table` (`None`: the whole database, or the
    /// whole cluster).
    fn covers(&self, db: Option<&str>, table: Option<&str>) -> bool {
        let matches = |granted: &Option<String>, asked: Option<&str>| match (granted, asked) {
            (None, _) => true,
            (Some(granted), Some(asked)) => granted == asked,
            (Some(_), None) => false,
        };
        matches(&self.db, db) && matches(&self.table, table)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".into());
        write!(f, "{}.{}", part(&self.db), part(&self.table))
    }
}

/// A grant as stored.
pub fn grant_entry(privilege: Privilege, scope: &Scope) -> GrantEntry {
    let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".into());
    GrantEntry {
        db: part(&scope.db),
        table: part(&scope.table),
        privilege: privilege.as_str().into(),
    }
}

fn entry_scope(entry: &GrantEntry) -> Option<(Privilege, Scope)> {
    let privilege = Privilege::parse(&entry.privilege).ok()?;
    let scope = Scope::parse(&format!("{}.{}", entry.db, entry.table)).ok()?;
    Some((privilege, scope))
}

/// Whether `user` may do `need` on `db`/`table` (`None`: the whole database or cluster).
pub fn may(user: &UserRecord, need: Need, db: Option<&str>, table: Option<&str>) -> bool {
    if user.name == ROOT {
        return true;
    }
    user.grants
        .iter()
        .filter_map(entry_scope)
        .any(|(privilege, scope)| {
            privilege.allows(need) && (need == Need::LoggedIn || scope.covers(db, table))
        })
}

/// The refusal of `need` on `db`/`table` to `user`.
pub fn denied(user: &str, need: Need, db: Option<&str>, table: Option<&str>) -> Status {
    let what = match (db, table) {
        (Some(db), Some(table)) => format!(" {db}.{table}"),
        (Some(db), None) => format!(" database {db}"),
        (None, _) => " the cluster".to_string(),
    };
    wire_error::status(
        ErrorCode::PermissionDenied,
        format!("permission denied: {user} cannot {}{what}", need.verb()),
    )
}

/// A salted argon2 hash of `password` (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches `hash` (false for a hash that does not parse).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The generation of a new user: random, so the tokens of a dropped user never match a
/// new user of the same name.
pub fn new_generation() -> Result<u64, String> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    // Not 0, and far from u64::MAX so a password change can add one.
    Ok(u64::from_le_bytes(bytes) >> 2 | 1)
}

/// Refuses passwords too short to resist guessing.
pub fn check_password_strength(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!(
            "a password needs at least {MIN_PASSWORD_LEN} characters"
        ));
    }
    Ok(())
}

/// Servers run with authentication unless told otherwise: refuses to go on without a
/// cluster secret unless `insecure`.
pub fn require_secret(insecure: bool) -> Result<(), String> {
    if insecure || enabled() {
        return Ok(());
    }
    Err(
        "no cluster secret: Tessera servers run with authentication unless told \
         otherwise. Give every process of the cluster the same --cluster_secret_file \
         (docs/OPERATIONS.md, \"The cluster secret\"), or --insecure to run without \
         authentication (then anyone who reaches a port may do anything)"
            .into(),
    )
}

/// Whether this process checks users (it runs with a cluster secret).
pub fn enabled() -> bool {
    crate::cluster_secret::secret_bytes().is_some()
}

type HmacSha256 = Hmac<Sha256>;

fn signer(secret: &[u8]) -> HmacSha256 {
    // A key of its own, so a token never reveals anything about the secret's other use.
    let key = Sha256::new()
        .chain_update(b"tessera session token v1\0")
        .chain_update(secret)
        .finalize();
    HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub generation: u64,
    pub expires: u64,
}

/// A token for `user` at password `generation`, valid for [`TOKEN_LIFETIME`]. `None`
/// when the process has no secret to sign with.
pub fn issue_token(user: &str, generation: u64) -> Option<String> {
    let secret = crate::cluster_secret::secret_bytes()?;
    Some(sign(
        secret,
        user,
        generation,
        now_secs() + TOKEN_LIFETIME.as_secs(),
    ))
}

/// The session a token stands for, if it is signed by this cluster and not expired.
pub fn check_token(token: &str) -> Result<Session, String> {
    let secret = crate::cluster_secret::secret_bytes()
        .ok_or_else(|| "this process checks no session tokens".to_string())?;
    verify(secret, token, now_secs())
}

fn sign(secret: &[u8], user: &str, generation: u64, expires: u64) -> String {
    let payload = format!("{user}:{generation}:{expires}");
    let mut mac = signer(secret);
    mac.update(payload.as_bytes());
    format!(
        "{}.{}",
        hex(payload.as_bytes()),
        hex(&mac.finalize().into_bytes())
    )
}

fn verify(secret: &[u8], token: &str, now: u64) -> Result<Session, String> {
    let invalid = || "the session token is not valid: log in again".to_string();
    let (payload, signature) = token.split_once('.').ok_or_else(invalid)?;
    let (payload, signature) = (
        unhex(payload).ok_or_else(invalid)?,
        unhex(signature).ok_or_else(invalid)?,
    );
    let mut mac = signer(secret);
    mac.update(&payload);
    mac.verify_slice(&signature).map_err(|_| invalid())?;
    let payload = String::from_utf8(payload).map_err(|_| invalid())?;
    let mut parts = payload.rsplitn(3, ':');
    let expires: u64 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    let generation: u64 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(invalid)?;
    let user = parts.next().ok_or_else(invalid)?.to_string();
    if expires <= now {
        return Err("the session has expired: log in again".into());
    }
    Ok(Session {
        user,
        generation,
        expires,
    })
}

/// Who makes a call, as far as the token and the secret tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off in this process.
    Unchecked,
    /// A process of the cluster (it carries the cluster secret).
    Internal,
    /// A logged-in user; the user's record still has to be looked up.
    User(Session),
}

/// Who calls, or the refusal of a call that carries neither the secret nor a valid
/// token. A call with a session token is judged as its user even when it also carries
/// the secret: a tool that holds the secret for the tablets' internal calls and logged
/// in (`tessera-ops --user`) acts on the cluster with its user's grants, not as the
/// cluster.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    if !enabled() {
        return Ok(Caller::Unchecked);
    }
    let refused = |why: String| wire_error::status(ErrorCode::PermissionDenied, why);
    let Some(header) = request.metadata().get(HEADER) else {
        if crate::cluster_secret::is_internal(request) {
            return Ok(Caller::Internal);
        }
        return Err(refused(
            "permission denied: log in first (ns_client --user, or the SDK's user and \
             password options)"
                .into(),
        ));
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| refused("permission denied: a malformed authorization header".into()))?;
    check_token(token)
        .map(Caller::User)
        .map_err(|why| refused(format!("permission denied: {why}")))
}

/// Checks a logged-in caller's session against the user's current record.
pub fn check_session(
    session: &Session,
    record: Option<&UserRecord>,
    need: Need,
    db: Option<&str>,
    table: Option<&str>,
) -> Result<(), Status> {
    let Some(record) = record.filter(|r| r.generation == session.generation) else {
        return Err(wire_error::status(
            ErrorCode::PermissionDenied,
            format!(
                "permission denied: the session of {} has ended (user dropped or password \
                 changed): log in again",
                session.user
            ),
        ));
    };
    if may(record, need, db, table) {
        Ok(())
    } else {
        Err(denied(&session.user, need, db, table))
    }
}

static TOKEN: std::sync::RwLock<Option<MetadataValue<tonic::metadata::Ascii>>> =
    std::sync::RwLock::new(None);

/// Makes `token` (from `Login`) the session of this process: every call made through an
/// [`AuthChannel`] carries it from now on.
pub fn use_token(token: &str) -> Result<(), String> {
    let value = bearer(token)?;
    *TOKEN
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
    Ok(())
}

/// The environment variable a client takes its password from when no flag gives it.
pub const PASSWORD_ENV: &str = "TESSERA_PASSWORD";

/// The login flags of the clients that act as a user (`ns_client`, `tessera-ops`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "flags", derive(clap::Args))]
#[cfg_attr(feature = "flags", command(rename_all = "snake_case"))]
pub struct LoginFlags {
    /// User to log in as (a cluster with authentication refuses calls without one).
    #[cfg_attr(feature = "flags", arg(long))]
    pub user: Option<String>,
    /// The user's password; or the TESSERA_PASSWORD environment variable (ns_client's
    /// interactive shell asks for it when neither is given).
    #[cfg_attr(feature = "flags", arg(long))]
    pub password: Option<String>,
}

impl LoginFlags {
    /// The password the flag or the environment gives, if any.
    pub fn given_password(&self) -> Option<String> {
        self.password
            .clone()
            .or_else(|| std::env::var(PASSWORD_ENV).ok())
    }
}

/// Adds this process's credentials to every request: the cluster secret, if the process
/// has one, and the session token, once logged in.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachCredentials;

impl Interceptor for AttachCredentials {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let mut request = crate::cluster_secret::AttachSecret.call(request)?;
        let token = TOKEN
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(token) = token {
            request.metadata_mut().insert(HEADER, token);
        }
        Ok(request)
    }
}

/// A channel whose requests carry this process's credentials.
pub type AuthChannel = InterceptedService<Channel, AttachCredentials>;

pub fn with_credentials(channel: Channel) -> AuthChannel {
    InterceptedService::new(channel, AttachCredentials)
}

/// The header value for `token`.
pub fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "a session token that is not a header value".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, grants: &[(&str, &str)]) -> UserRecord {
        UserRecord {
            name: name.into(),
            password_hash: String::new(),
            generation: 1,
            grants: grants
                .iter()
                .map(|(privilege, scope)| {
                    grant_entry(
                        Privilege::parse(privilege).unwrap(),
                        &Scope::parse(scope).unwrap(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn scopes_parse_and_cover() {
        assert!(Scope::parse("db.t").is_ok());
        assert!(Scope::parse("db.*").is_ok());
        assert!(Scope::parse("*.*").is_ok());
        for bad in ["*.t", "db", "", "db.", "d b.t", "db.t.x"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Scope::parse("db.*").unwrap().to_string(), "db.*");
    }

    #[test]
    fn grants_give_what_they_name_and_no_more() {
        let reader = user("alice", &[("select", "db.*")]);
        assert!(may(&reader, Need::Read, Some("db"), Some("t")));
        assert!(!may(&reader, Need::Write, Some("db"), Some("t")));
        assert!(!may(&reader, Need::Read, Some("other"), Some("t")));
        assert!(!may(&reader, Need::Admin, Some("db"), Some("t")));
        assert!(may(&reader, Need::LoggedIn, None, None));

        let writer = user("bob", &[("insert", "db.t")]);
        assert!(may(&writer, Need::Write, Some("db"), Some("t")));
        assert!(!may(&writer, Need::Write, Some("db"), Some("u")));
        assert!(!may(&writer, Need::Read, Some("db"), Some("t")));

        let db_admin = user("carol", &[("all", "db.*")]);
        assert!(may(&db_admin, Need::Admin, Some("db"), Some("t")));
        assert!(may(&db_admin, Need::Admin, Some("db"), None));
        assert!(
            !may(&db_admin, Need::Admin, None, None),
            "cluster admin needs *.*"
        );

        let admin = user("dave", &[("all", "*.*")]);
        assert!(may(&admin, Need::Admin, None, None));
        let nobody = user("erin", &[]);
        assert!(!may(&nobody, Need::LoggedIn, None, None));
        assert!(may(&user(ROOT, &[]), Need::Admin, None, None));
    }

    #[test]
    fn refusals_name_the_user_and_the_action() {
        let status = denied("alice", Need::Write, Some("db"), Some("t"));
        assert_eq!(
            status.message(),
            "permission denied: alice cannot write db.t"
        );
        let status = denied("alice", Need::Admin, None, None);
        assert_eq!(
            status.message(),
            "permission denied: alice cannot administer the cluster"
        );
    }

    #[test]
    fn passwords_are_salted_and_checked() {
        let one = hash_password("correct horse").unwrap();
        let two = hash_password("correct horse").unwrap();
        assert_ne!(one, two, "salted");
        assert!(one.starts_with("$argon2"));
        assert!(verify_password("correct horse", &one));
        assert!(!verify_password("correct hors", &one));
        assert!(!verify_password("x", "not a hash"));
        assert!(check_password_strength("short").is_err());
    }

    #[test]
    fn tokens_are_signed_and_expire() {
        let secret = b"a-cluster-secret-0123456789";
        let token = sign(secret, "alice", 3, 1_000);
        let session = verify(secret, &token, 999).unwrap();
        assert_eq!(
            session,
            Session {
                user: "alice".into(),
                generation: 3,
                expires: 1_000
            }
        );
        assert!(verify(secret, &token, 1_000)
            .unwrap_err()
            .contains("expired"));
        assert!(verify(b"another-cluster-secret-000", &token, 999).is_err());
        // A token whose payload was changed (another user, a later expiry) is refused.
        let (_, signature) = token.split_once('.').unwrap();
        let forged = format!("{}.{signature}", hex(b"root:3:1000"));
        assert!(verify(secret, &forged, 999).is_err());
        let forged = format!("{}.{signature}", hex(b"alice:3:99999"));
        assert!(verify(secret, &forged, 999).is_err());
        assert!(verify(secret, "garbage", 999).is_err());
        // A user name with a colon cannot shift the fields.
        let token = sign(secret, "a:b", 1, 1_000);
        assert_eq!(verify(secret, &token, 0).unwrap().user, "a:b");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(b"a:1:2")).unwrap(), b"a:1:2");
        assert!(unhex("abc").is_none());
        assert!(unhex("zz").is_none());
    }
}
