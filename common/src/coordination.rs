//! The small coordination layer over ZooKeeper: a server's registration under
//! `<root>/nodes/<endpoint>` (an ephemeral node, so it disappears with the session) and
//! the lease that registration keeps alive.
//!
//! The lease is what makes an isolated leader stop before anyone replaces it. ZooKeeper
//! expires a session no sooner than its timeout after the last message it got from the
//! client; the lease is renewed only by answered requests, dated when they were sent,
//! and lapses after two thirds of the timeout the server *negotiated* (which may differ
//! from the one asked for). A renewal is a `sync` followed by a read of the
//! registration node: the sync goes through the ZooKeeper leader, so an answer proves
//! the session is alive on a quorum, not only on a server that may itself be cut off.
//! So by the time the nameserver sees the session expire and promotes another replica,
//! the old leader's lease ran out at least a third of a timeout earlier.
//!
//! The lease also counts sessions: a lease that lapsed and is renewed again in the same
//! session (a ZooKeeper stall shorter than the session timeout) lets leaders resume,
//! since nobody could have replaced them; after a new session they wait to be told.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};
use zookeeper_client::{Client, CreateMode, Error as ZkError};

use crate::zk_auth;

/// Where this cluster lives in ZooKeeper.
#[derive(Debug, Clone)]
pub struct ZkSettings {
    /// `host:port[,host:port…]`.
    pub cluster: String,
    /// Root path of this cluster, e.g. `/tessera`.
    pub root: String,
    pub session_timeout: Duration,
}

impl ZkSettings {
    pub fn nodes_path(&self) -> String {
        format!("{}/nodes", self.root.trim_end_matches('/'))
    }
}

/// Valid while ZooKeeper answered recently enough.
#[derive(Debug)]
pub struct Lease {
    epoch: Instant,
    /// Milliseconds after `epoch` at which the last answered request was sent; 0: never.
    renewed_at_ms: AtomicU64,
    /// Two thirds of the session timeout, in milliseconds.
    valid_for_ms: AtomicU64,
    /// Which session renews the lease: 1 for the first, one more for each new one.
    session: AtomicU64,
    /// The ZooKeeper id of the session owning the registration node; 0 while none does.
    registered_session: AtomicI64,
}

impl Lease {
    /// A lease lasting two thirds of `session_timeout` after each renewal (until a
    /// session is established and its negotiated timeout is known).
    pub fn for_session(session_timeout: Duration) -> Arc<Lease> {
        Arc::new(Lease {
            epoch: Instant::now(),
            renewed_at_ms: AtomicU64::new(0),
            valid_for_ms: AtomicU64::new(two_thirds_ms(session_timeout)),
            session: AtomicU64::new(0),
            registered_session: AtomicI64::new(0),
        })
    }

    /// A new session was established with this negotiated timeout: the lease is sized
    /// from it, and only this session's answers renew it from now on.
    pub fn new_session(&self, negotiated: Duration) {
        // The renewal is cleared before the session is counted: whoever reads the new
        // session number then sees no renewal older than it.
        self.renewed_at_ms.store(0, Ordering::Release);
        self.valid_for_ms
            .store(two_thirds_ms(negotiated), Ordering::Release);
        self.session.fetch_add(1, Ordering::AcqRel);
    }

    /// The session renewing the lease (0 before the first).
    pub fn session(&self) -> u64 {
        self.session.load(Ordering::Acquire)
    }

    /// The registration node is now owned by the ZooKeeper session `id` (0: by none).
    pub fn set_registered_session(&self, id: i64) {
        self.registered_session.store(id, Ordering::Release);
    }

    /// The ZooKeeper id of the session owning the registration node; 0 while none does.
    /// Equal to the node's ephemeral owner, which is how others tell this process from
    /// another one on the same endpoint.
    pub fn registered_session(&self) -> i64 {
        self.registered_session.load(Ordering::Acquire)
    }

    /// A request sent at `sent` was answered.
    pub fn renew(&self, sent: Instant) {
        let at = sent.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.renewed_at_ms.fetch_max(at, Ordering::AcqRel);
    }

    pub fn is_valid(&self) -> bool {
        self.is_valid_at(Instant::now())
    }

    pub fn is_valid_at(&self, now: Instant) -> bool {
        let renewed = self.renewed_at_ms.load(Ordering::Acquire);
        if renewed == 0 {
            return false;
        }
        let now = now.saturating_duration_since(self.epoch).as_millis() as u64;
        now.saturating_sub(renewed) < self.valid_for_ms.load(Ordering::Acquire)
    }

    pub fn valid_for(&self) -> Duration {
        Duration::from_millis(self.valid_for_ms.load(Ordering::Acquire))
    }
}

/// How often the lease is renewed, and how long one renewal may take, for a session
/// timeout.
fn renewal_timing(session_timeout: Duration) -> (Duration, Duration) {
    (
        (session_timeout / 10).max(Duration::from_millis(20)),
        session_timeout / 3,
    )
}

fn two_thirds_ms(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64 * 2 / 3).max(1)
}

/// What a look at the lease found, for the one who fences leaders by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Valid, as it was.
    Held,
    /// Valid again, in a later session than the one it lapsed in (or for the first time):
    /// leaders stay fenced until told their role.
    Acquired,
    /// Valid again in the very session it lapsed in: nobody can have replaced the
    /// leaders, they may serve again.
    Regained,
    /// It just lapsed.
    Lapsed,
    /// Still not valid.
    Lost,
}

/// Follows the lease from one look to the next (decisions only; the caller acts).
#[derive(Debug, Default)]
pub struct LeaseTracker {
    was_valid: bool,
    /// The session the lease was last seen valid in.
    valid_in: Option<u64>,
    /// The session it lapsed in, while it stays lapsed.
    lapsed_in: Option<u64>,
}

impl LeaseTracker {
    /// Looks at the lease once. The session is read before and after the validity, so a
    /// renewal is always attributed to the session it came from (a new session clears
    /// the renewal before it is counted).
    pub fn look(&mut self, lease: &Lease) -> LeaseEvent {
        loop {
            let before = lease.session();
            let valid = lease.is_valid();
            if lease.session() == before {
                return self.observe(before, valid);
            }
        }
    }

    /// The decision for one look: `valid` as renewed in `session`.
    pub fn observe(&mut self, session: u64, valid: bool) -> LeaseEvent {
        let was_valid = std::mem::replace(&mut self.was_valid, valid);
        match (was_valid, valid) {
            (true, true) => {
                self.valid_in = Some(session);
                LeaseEvent::Held
            }
            (false, true) => {
                self.valid_in = Some(session);
                if self.lapsed_in.take() == Some(session) {
                    LeaseEvent::Regained
                } else {
                    LeaseEvent::Acquired
                }
            }
            (true, false) => {
                self.lapsed_in = self.valid_in;
                LeaseEvent::Lapsed
            }
            (false, false) => LeaseEvent::Lost,
        }
    }
}

/// The registration node's content: who, since when, and that it just started.
fn node_data(endpoint: &str) -> Vec<u8> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{{\"endpoint\":\"{endpoint}\",\"start_time\":{started},\"startup\":true}}")
        .into_bytes()
}

/// Keeps `<root>/nodes/<endpoint>` registered and the lease renewed until `stop` turns
/// true. Reconnects (and re-registers) after a session expires.
pub async fn run_registration(
    settings: ZkSettings,
    endpoint: String,
    lease: Arc<Lease>,
    mut stop: watch::Receiver<bool>,
) {
    let path = format!("{}/{}", settings.nodes_path(), endpoint);
    let (beat, _) = renewal_timing(settings.session_timeout);
    loop {
        if *stop.borrow() {
            return;
        }
        let session = tokio::select! {
            s = register(&settings, &path, &endpoint) => s,
            _ = stop.changed() => return,
        };
        let client = match session {
            Ok(client) => client,
            Err(e) => {
                warn!(zk_cluster = %settings.cluster, error = %e, "ZooKeeper registration failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(beat) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        info!(path = %path, session_timeout = ?client.session_timeout(), "registered in ZooKeeper");
        lease.new_session(client.session_timeout());
        lease.set_registered_session(client.session_id().0);
        let end = keep_lease(&client, &path, &lease, &mut stop).await;
        lease.set_registered_session(0);
        match end {
            LeaseEnd::Stopped => {
                // Leave cleanly: the node goes away with the session at once.
                drop(client);
                return;
            }
            LeaseEnd::NodeGone => {
                warn!(path = %path, "registration node vanished; registering again")
            }
            LeaseEnd::SessionEnded => warn!("ZooKeeper session expired; registering again"),
        }
    }
}

/// Sizes `lease` for `client`'s new session and renews it from that session (reading
/// `path`) in a task of its own, until the returned sender is dropped (or the session
/// ends). Subscribers of the sender see it dropped when renewals stop.
pub fn renew_for_session(client: &Client, path: String, lease: Arc<Lease>) -> watch::Sender<bool> {
    lease.new_session(client.session_timeout());
    let (renewing, mut stop) = watch::channel(false);
    let client = client.clone();
    tokio::spawn(async move { keep_lease(&client, &path, &lease, &mut stop).await });
    renewing
}

/// Why `keep_lease` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// `stop` turned true.
    Stopped,
    /// The node renewals read is gone.
    NodeGone,
    /// The session expired or was closed.
    SessionEnded,
}

/// Renews `lease` from `client`'s session until it ends: every beat a `sync` (through the
/// ZooKeeper leader) and a read of `path`, each answer renewing the lease from when it
/// was asked. The lease must already be sized for this session (`Lease::new_session`).
pub async fn keep_lease(
    client: &Client,
    path: &str,
    lease: &Lease,
    stop: &mut watch::Receiver<bool>,
) -> LeaseEnd {
    // Renewals follow the timeout the server granted, which the lease is sized from.
    let (beat, request_timeout) = renewal_timing(client.session_timeout());
    loop {
        let sent = Instant::now();
        let renewal = async {
            client.sync(path).await?;
            client.check_stat(path).await
        };
        let answer = tokio::select! {
            a = tokio::time::timeout(request_timeout, renewal) => a,
            _ = stop.changed() => return LeaseEnd::Stopped,
        };
        match answer {
            Ok(Ok(Some(_))) => lease.renew(sent),
            Ok(Ok(None)) => return LeaseEnd::NodeGone,
            Ok(Err(ZkError::SessionExpired)) | Ok(Err(ZkError::ClientClosed)) => {
                return LeaseEnd::SessionEnded
            }
            Ok(Err(e)) => warn!(error = %e, "ZooKeeper request failed"),
            Err(_) => warn!(timeout = ?request_timeout, "ZooKeeper did not answer in time"),
        }
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = stop.changed() => return LeaseEnd::Stopped,
        }
    }
}

async fn register(settings: &ZkSettings, path: &str, endpoint: &str) -> Result<Client, ZkError> {
    let client = zk_auth::connector()
        .with_session_timeout(settings.session_timeout)
        .connect(&settings.cluster)
        .await?;
    let acls = zk_auth::acls();
    match client
        .mkdir(
            &settings.nodes_path(),
            &CreateMode::Persistent.with_acls(acls),
        )
        .await
    {
        Ok(()) | Err(ZkError::NodeExists) => {}
        Err(e) => return Err(e),
    }
    let ephemeral = CreateMode::Ephemeral.with_acls(acls);
    match client.create(path, &node_data(endpoint), &ephemeral).await {
        Ok(_) => {}
        Err(ZkError::NodeExists) => {
            // Left by this endpoint's previous process, whose session has not expired
            // yet: it is ours to replace.
            client.delete(path, None).await.or_else(|e| {
                if e == ZkError::NoNode {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
            client
                .create(path, &node_data(endpoint), &ephemeral)
                .await?;
        }
        Err(e) => return Err(e),
    }
    Ok(client)
}

/// A session for a process elected through ZooKeeper, with `dirs` created.
pub async fn connect_elected(settings: &ZkSettings, dirs: &[String]) -> Result<Client, ZkError> {
    let client = zk_auth::connector()
        .with_session_timeout(settings.session_timeout)
        .connect(&settings.cluster)
        .await?;
    let persistent = CreateMode::Persistent.with_acls(zk_auth::acls());
    for dir in dirs {
        match client.mkdir(dir, &persistent).await {
            Ok(()) | Err(ZkError::NodeExists) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(client)
}

/// Waits to win the election under `election_dir` (nodes `n-<sequence>`, lowest wins,
/// data = `endpoint`). The lock fences every write made through it.
pub async fn contend(
    client: &Client,
    election_dir: &str,
    endpoint: &str,
) -> Result<zookeeper_client::OwnedLockClient, ZkError> {
    let prefix_path = format!("{election_dir}/n-");
    let prefix = zookeeper_client::LockPrefix::new_shared(&prefix_path)?;
    let lock = client
        .lock(prefix, endpoint.as_bytes(), zk_auth::acls())
        .await?;
    Ok(lock.into_owned())
}

/// Completes when the session ends (expired, closed): leadership ends with it.
pub async fn until_session_ends(client: &Client) {
    let mut states = client.state_watcher();
    loop {
        if let zookeeper_client::SessionState::Expired
        | zookeeper_client::SessionState::Closed
        | zookeeper_client::SessionState::AuthFailed = states.changed().await
        {
            return;
        }
    }
}

/// The endpoints contending under `election_dir`, the leader first.
pub async fn election_order(client: &Client, election_dir: &str) -> Result<Vec<String>, ZkError> {
    let mut children = client.list_children(election_dir).await?;
    // `n-<sequence>`: the sequence decides the order.
    children.sort_by_key(|c| {
        c.rsplit('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    let mut out = Vec::with_capacity(children.len());
    for child in children {
        match client.get_data(&format!("{election_dir}/{child}")).await {
            Ok((data, _)) => out.push(String::from_utf8_lossy(&data).into_owned()),
            // It left between the listing and the read.
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lapses_two_thirds_into_the_session() {
        let lease = Lease::for_session(Duration::from_millis(3000));
        let start = lease.epoch;
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!lease.is_valid_at(at(0)), "never renewed");
        assert_eq!(lease.valid_for(), Duration::from_millis(2000));
        lease.renew(at(1000));
        assert!(lease.is_valid_at(at(1000)));
        assert!(lease.is_valid_at(at(2900)));
        assert!(
            !lease.is_valid_at(at(3100)),
            "two thirds of the session after the request was sent"
        );
        // An older answer arriving late does not move the lease back.
        lease.renew(at(500));
        assert!(lease.is_valid_at(at(2900)));
        lease.renew(at(2500));
        assert!(lease.is_valid_at(at(4400)));
    }

    /// Point 6: the lease is sized from the timeout the server negotiated (a server may
    /// grant less than was asked for), and a new session starts it afresh.
    #[test]
    fn a_new_session_sizes_the_lease_from_the_negotiated_timeout() {
        let lease = Lease::for_session(Duration::from_millis(9000));
        let start = lease.epoch;
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(lease.session(), 0);
        lease.new_session(Duration::from_millis(3000));
        assert_eq!(lease.session(), 1);
        assert_eq!(lease.valid_for(), Duration::from_millis(2000));
        lease.renew(at(1000));
        assert!(
            !lease.is_valid_at(at(3100)),
            "valid two thirds of the negotiated 3 s, not of the 9 s asked for"
        );
        lease.new_session(Duration::from_millis(6000));
        assert_eq!(lease.session(), 2);
        assert!(
            !lease.is_valid_at(at(1500)),
            "an earlier session's renewal does not count"
        );
        lease.renew(at(1600));
        assert!(lease.is_valid_at(at(5500)));
    }

    /// Leaders resume only when the lease comes back in the session it lapsed in: a
    /// registration lost and made again (a new session) leaves them fenced, even if the
    /// lapse is first noticed after the new session began.
    #[test]
    fn leaders_resume_only_in_the_session_the_lease_lapsed_in() {
        let mut t = LeaseTracker::default();
        assert_eq!(t.observe(0, false), LeaseEvent::Lost);
        assert_eq!(t.observe(1, true), LeaseEvent::Acquired);
        assert_eq!(t.observe(1, true), LeaseEvent::Held);
        assert_eq!(t.observe(1, false), LeaseEvent::Lapsed);
        assert_eq!(t.observe(1, false), LeaseEvent::Lost);
        assert_eq!(
            t.observe(1, true),
            LeaseEvent::Regained,
            "a stall within session 1"
        );

        // The node vanished and session 2 began before the lapse was seen.
        assert_eq!(t.observe(2, false), LeaseEvent::Lapsed);
        assert_eq!(
            t.observe(2, true),
            LeaseEvent::Acquired,
            "valid in session 2, but it lapsed in session 1: stay fenced"
        );
    }
}
