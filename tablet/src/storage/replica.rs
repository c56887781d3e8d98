//! A table as a replica: its role and term, fencing, and the follower's side of log
//! shipping. Every change of term or role is persisted in `replica_state` before it
//! takes effect, so a restarted replica never forgets a term it promised to honour.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::failure_detection::{stretched, LEADER_LEASE};
use tessera_proto::common::TermPair;
use tessera_proto::tablet::{
    AppendEntriesRequest, PartitionBeat, ReplicaState, ReplicationMode, TableRole,
};
use tracing::info;

use super::apply::{note_request, PendingEntry};
use super::error::{Result, StorageError};
use super::table::{ReplicaRuntime, Table, Version};
use super::{snapshot, state_slots};
use crate::replication::history;
use crate::replication::pair_lease::{self, PairGrant, PeerGrant};
use crate::replication::quorum::PairMark;

pub(crate) const STATE_FILE: &str = "replica_state";

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The state stored in replica directory `dir`, or `None` if it has none.
pub fn read_replica_state(dir: &Path) -> Result<Option<ReplicaState>> {
    state_slots::read(&state_path(dir))
}

/// Makes `state` durable in replica directory `dir` (in place; see `state_slots`).
pub fn write_replica_state(dir: &Path, state: &ReplicaState) -> Result<()> {
    state_slots::write(&state_path(dir), state)
}

/// What a follower did with an AppendEntries request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Records appended (or none sent); the log now ends here, durably.
    Appended(u64),
    /// The log does not continue at the leader's `prev_offset`; it ends here and agrees
    /// with the leader up to here.
    Mismatch(u64),
    /// The request's term is older than ours.
    StaleTerm(u64),
    /// The log holds records the leader never had after this offset: cut them, reload,
    /// and answer `Mismatch` with this offset.
    Truncate(u64),
    /// The shared point is below our snapshot: only a snapshot from the leader helps.
    NeedSnapshot,
}

/// What a request wants of a replica's term.
#[derive(Debug, Clone, Copy)]
enum TermClaim<'a> {
    Fence,
    Lead,
    Follow(&'a str),
}

/// One leader per term. A request in an older term is stale. In the replica's own term
/// the replica is either fenced and waiting for its role (a follower of nobody), which
/// anything may settle, or it leads or follows someone in it, which only the same role
/// may repeat: a second fence, a second leader, or another leader's follower in a term
/// that has a leader are refused.
fn check_term(state: &ReplicaState, term: u64, claim: TermClaim<'_>) -> Result<()> {
    if term < state.term {
        return Err(StorageError::StaleTerm {
            current: state.term,
            got: term,
        });
    }
    if term > state.term {
        return Ok(());
    }
    let leading = state.role() == TableRole::Leader;
    // Whether the claim differs from the role the replica holds in this term.
    let differs = match claim {
        TermClaim::Fence => true,
        TermClaim::Lead => !leading,
        TermClaim::Follow(leader) => leading || state.leader != leader,
    };
    let holder = if leading {
        "this replica".to_string()
    } else {
        state.leader.clone()
    };
    if differs && (leading || !state.leader.is_empty()) {
        return Err(StorageError::TermTaken { term, holder });
    }
    Ok(())
}

/// A replica whose binlog was closed is being reloaded or replaced (truncation, a
/// snapshot install): a term it took now could be lost with the old files, so it takes
/// none, and the caller learns it did not.
fn refuse_if_closed(binlog: &super::binlog::Binlog) -> Result<()> {
    if binlog.is_closed() {
        return Err(StorageError::Unavailable(
            "the replica is being reloaded; retry shortly".into(),
        ));
    }
    Ok(())
}

/// Numbers every change of any replica's state in this process (see
/// `ReplicaRuntime::state_seq`).
static STATE_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A leader's voting members that are not offline; none for any other role.
fn shipping_of(state: &ReplicaState) -> Vec<String> {
    if state.role() != TableRole::Leader {
        return Vec::new();
    }
    state
        .followers
        .iter()
        .filter(|f| !state.offline.contains(f))
        .cloned()
        .collect()
}

pub(crate) fn next_state_seq() -> u64 {
    STATE_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// What a replica's replication links follow, read at once: the number of the state's
/// latest change (see `ReplicaRuntime::state_seq`), its term, and the followers it
/// ships to (none unless it leads).
#[derive(Debug, Clone)]
pub struct ShippingView {
    pub seq: u64,
    pub term: u64,
    pub followers: Vec<String>,
}

/// Answering promises the leader nothing newer for its lease than now, and counts as
/// hearing from it (see [`pair_lease::lease_asked`] for the lease).
fn grant_lease(replica: &mut ReplicaRuntime, lease_ms: u32) {
    let now = Instant::now();
    let lease = pair_lease::lease_asked(lease_ms);
    replica.granted_until = replica.granted_until.max(now + stretched(lease));
    replica.leader_contact = now;
}

impl Drop for ReplicaRuntime {
    /// A replica dropped without being closed leaves its grant all the same.
    fn drop(&mut self) {
        self.leave_pair();
    }
}

impl ReplicaRuntime {
    /// Leaves the grant to its leader's tablet, if in one, keeping what it promised: a
    /// replica calls it under its lock in the same step as whatever makes it stop
    /// following that leader in that term, so its leader learns of it (by the grant's
    /// new generation) before the grant renews anything more for it.
    pub(crate) fn leave_pair(&mut self) {
        if let Some(grant) = self.pair.take() {
            let left = grant.leave();
            self.granted_until = self.granted_until.max(left.granted_until);
            self.leader_contact = self.leader_contact.max(left.contact);
        }
    }

    /// Every change of role, term or leader goes through here: the replica leaves the
    /// grant of the leader it followed in the same step, so it is never in a grant for
    /// a leadership it no longer follows.
    pub(crate) fn set_state(&mut self, state: ReplicaState) {
        self.leave_pair();
        self.state = state;
        self.state_seq = next_state_seq();
    }

    /// When it last heard from its leader, directly or through the grant it is in.
    fn leader_contact(&self) -> Instant {
        match &self.pair {
            Some(grant) => self.leader_contact.max(grant.contact()),
            None => self.leader_contact,
        }
    }

    /// Until when a lease it helped renew may last, directly or through its grant.
    fn granted_until(&self) -> Instant {
        match &self.pair {
            Some(grant) => self.granted_until.max(grant.granted_until()),
            None => self.granted_until,
        }
    }

    /// Joins `grant` (it follows the grant's leader): returns the grant's generation as
    /// of joining.
    fn join_pair(&mut self, grant: &Arc<PairGrant>) -> u64 {
        if !self.pair.as_ref().is_some_and(|g| Arc::ptr_eq(g, grant)) {
            self.leave_pair();
            self.pair = Some(grant.clone());
        }
        grant.generation()
    }
}

/// What a follower made of one partition's beat in a leader's batched heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeatOutcome {
    /// It follows that leader in that term and renewed the lease.
    pub granted: bool,
    /// Its log ends where the leader's does, in the same term.
    pub in_step: bool,
    /// Its term.
    pub term: u64,
    /// Granted: the generation of the leader's grant when the replica joined it (or
    /// found itself in it).
    pub joined: Option<u64>,
}

/// A change to one follower of a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerChange {
    /// Ship to it (again); a new member joins the voting set.
    Add,
    /// Stop shipping to it; it keeps its vote (OfflineReplica).
    Offline,
    /// Take it out of the voting set (DelReplica, Migrate).
    Remove,
}

/// A change of role, as the nameserver orders it.
#[derive(Debug, Clone)]
pub struct RoleChange {
    pub role: TableRole,
    pub term: u64,
    /// Leader: every other voting member.
    pub followers: Vec<String>,
    pub leader: String,
    /// Leader: the voting members not shipped to (offline).
    pub offline: Vec<String>,
}

impl Table {
    /// The term to write in, if this replica may take writes now.
    pub(super) fn writable_term(&self) -> Result<u64> {
        let replica = self.replica.lock();
        let state = &replica.state;
        if state.role() != TableRole::Leader {
            return Err(StorageError::NotLeader {
                leader: state.leader.clone(),
                term: state.term,
            });
        }
        if replica.fenced {
            return Err(StorageError::Unavailable(
                "the tablet lost its ZooKeeper lease; waiting to be told its role again".into(),
            ));
        }
        Ok(state.term)
    }

    /// Reads see only committed entries. A leader read (`min_offset` 0) is served by the
    /// leader holding its lease; any other replica answers NotLeader. A follower read
    /// (`min_offset` > 0, an offset the client saw committed) is served by a replica
    /// that has applied at least that much, all of it known committed.
    pub fn check_readable(&self, min_offset: u64) -> Result<()> {
        let applied = self.applied_offset();
        let replica = self.replica.lock();
        let leader = replica.state.role() == TableRole::Leader;
        if min_offset == 0 {
            if !leader {
                return Err(StorageError::NotLeader {
                    leader: replica.state.leader.clone(),
                    term: replica.state.term,
                });
            }
            if replica.fenced {
                return Err(StorageError::Unavailable(
                    "the tablet lost its ZooKeeper lease; waiting to be told its role again".into(),
                ));
            }
            let quorum = self.mode() == ReplicationMode::Quorum;
            if quorum && !self.holds_read_lease() {
                return Err(StorageError::Unavailable(
                    "the leader has not heard from a majority of its replicas within its lease; \
                     retry shortly"
                        .into(),
                ));
            }
            // A new leader knows what is committed only once a record of its own term
            // is (Raft's read rule), and serves only once it applied that much.
            if quorum && !self.quorum.committed_in_own_term() {
                return Err(StorageError::Unavailable(
                    "the leader has not yet committed a record of its term; retry shortly".into(),
                ));
            }
            if quorum && applied < self.quorum.commit() {
                return Err(StorageError::Unavailable(
                    "the leader is applying committed records; retry shortly".into(),
                ));
            }
        }
        drop(replica);
        if min_offset > applied {
            return Err(StorageError::Unavailable(format!(
                "this replica has applied offset {applied}, the read needs {min_offset}"
            )));
        }
        let committed = self.known_commit();
        if applied > committed {
            // Loaded from disk with a tail not yet known committed.
            return Err(StorageError::Unavailable(format!(
                "this replica holds offsets up to {applied}, known committed only through \
                 {committed}; retry shortly"
            )));
        }
        Ok(())
    }

    /// Whether this leader's read lease holds: a majority of its voting members answered
    /// a request it sent less than a lease ago, so no other leader can have been
    /// promoted (the nameserver waits out what the fenced replicas granted).
    pub fn holds_read_lease(&self) -> bool {
        self.quorum
            .lease_until(LEADER_LEASE)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Leader: how long it has been without its read lease (`None` while it holds it).
    pub fn read_lease_lapsed_for(&self) -> Option<Duration> {
        self.quorum.lease_lapsed_for(LEADER_LEASE)
    }

    /// How much longer, by this replica's clock, a leader it answered before now may
    /// hold a read lease this replica helped renew (drift margin included).
    pub fn granted_lease_remaining(&self) -> Duration {
        self.replica
            .lock()
            .granted_until()
            .saturating_duration_since(Instant::now())
    }

    /// Follower: its leader and how long since it last heard from it.
    pub fn leader_silence(&self) -> Option<(String, Duration)> {
        let replica = self.replica.lock();
        let state = &replica.state;
        (state.role() == TableRole::Follower && !state.leader.is_empty())
            .then(|| (state.leader.clone(), replica.leader_contact().elapsed()))
    }

    /// Follower: its leader and how long since it last heard from it, if that silence
    /// lies in `range`. The watchdog asks every replica ten times a second: the leader's
    /// name is copied only for a replica worth reporting.
    pub fn leader_silent_within(
        &self,
        range: &std::ops::Range<Duration>,
    ) -> Option<(String, Duration)> {
        let replica = self.replica.lock();
        let state = &replica.state;
        if state.role() != TableRole::Follower || state.leader.is_empty() {
            return None;
        }
        let quiet = replica.leader_contact().elapsed();
        range
            .contains(&quiet)
            .then(|| (state.leader.clone(), quiet))
    }

    /// A leader's answer from a voting member to a request sent at `sent`.
    pub fn lease_heard(&self, follower: &str, term: u64, sent: Instant) {
        self.quorum.heard(follower, term, sent);
    }

    /// A leader's follower tablet answered a beat in `term` with this partition in its
    /// grant, in `epoch` of `peer` (see `replication::pair_lease`).
    pub fn join_pair(
        &self,
        follower: &str,
        term: u64,
        peer: &Arc<PeerGrant>,
        epoch: u64,
    ) -> Option<PairMark> {
        self.quorum.join_pair(follower, term, peer, epoch)
    }

    /// Whether the join `mark` stands: the renewals of its grant renew this leader's
    /// lease now.
    pub fn paired(&self, mark: PairMark, peer: &PeerGrant) -> bool {
        self.quorum.paired(mark, peer)
    }

    pub fn replica_state(&self) -> ReplicaState {
        self.replica.lock().state.clone()
    }

    /// Takes an earlier load's `term_at_load` for this one's, before the table is shared
    /// (a reload after a clean close in this process: see the catalog).
    pub(crate) fn keep_term_at_load(&mut self, term_at_load: Option<u64>) {
        self.replica.get_mut().term_at_load = term_at_load;
    }

    /// The term its stored state held when it was loaded, in a cluster: a term it never
    /// leads (see [`Table::change_role`]).
    pub fn term_at_load(&self) -> Option<u64> {
        self.replica.lock().term_at_load
    }

    pub fn role(&self) -> TableRole {
        self.replica.lock().state.role()
    }

    /// Whether this replica already follows `leader` in `term`, so that an AppendEntries
    /// from it changes no persisted state (see `log_append`: adopting a term or a leader
    /// is fsynced first, which the caller keeps off the async runtime). False while the
    /// state is being changed (a fence or role change holds the lock across an fsync).
    pub fn follows(&self, term: u64, leader: &str) -> bool {
        let Some(replica) = self.replica.try_lock() else {
            return false;
        };
        let state = &replica.state;
        state.term == term && state.role() == TableRole::Follower && state.leader == leader
    }

    pub fn term_history(&self) -> Vec<TermPair> {
        self.history.lock().clone()
    }

    /// (term of the last record, last offset).
    pub fn term_pair(&self) -> (u64, u64) {
        let binlog = self.writer.lock();
        let last = binlog.last_offset();
        (history::term_at(&self.history.lock(), last), last)
    }

    /// The term of the record at `offset` (of the last record before it, if none is).
    pub fn term_at(&self, offset: u64) -> u64 {
        history::term_at(&self.history.lock(), offset)
    }

    /// The term this replica leads in (fenced by a lapsed ZooKeeper lease or not: its
    /// followers should not take it for silent), or `None` if it does not lead or its
    /// state is being changed right now (a role change holds the lock across an fsync;
    /// the heartbeat loop does not wait for it).
    pub fn leading_term(&self) -> Option<u64> {
        let replica = self.replica.try_lock()?;
        (replica.state.role() == TableRole::Leader).then_some(replica.state.term)
    }

    pub fn snapshot_offset(&self) -> u64 {
        self.snapshot_offset.load(Ordering::Acquire)
    }

    /// Offset of the last record, readable without locks.
    pub fn last_offset(&self) -> u64 {
        self.last_offset.load(Ordering::Acquire)
    }

    /// Subscribes to the last appended offset (replicators wait on it).
    pub fn subscribe_appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    fn persist(&self, state: &ReplicaState) -> Result<()> {
        write_replica_state(self.dir(), state)?;
        self.term.store(state.term, Ordering::Release);
        Ok(())
    }

    /// Raises the term to `term` and stops acting as leader; returns (last term, last
    /// offset). After it returns, this replica appends nothing more in an older term.
    pub fn fence(&self, term: u64) -> Result<(u64, u64)> {
        let binlog = self.writer.lock();
        refuse_if_closed(&binlog)?;
        let mut replica = self.replica.lock();
        check_term(&replica.state, term, TermClaim::Fence)?;
        let mut state = replica.state.clone();
        state.term = term;
        if state.role() == TableRole::Leader {
            state.role = TableRole::Follower as i32;
            state.followers.clear();
            state.offline.clear();
        }
        state.leader.clear();
        self.persist(&state)?;
        replica.set_state(state);
        // Writers still waiting learn their outcome is unknown; nothing more commits here.
        self.quorum.step_down();
        let last = binlog.last_offset();
        info!(
            tid = self.meta.tid,
            pid = self.meta.pid,
            term,
            offset = last,
            "replica fenced"
        );
        Ok((history::term_at(&self.history.lock(), last), last))
    }

    /// Makes this replica leader (with followers) or follower (of a leader) in `term`.
    pub fn change_role(&self, change: &RoleChange) -> Result<()> {
        let mut binlog = self.writer.lock();
        refuse_if_closed(&binlog)?;
        let mut replica = self.replica.lock();
        let claim = match change.role {
            TableRole::Leader => TermClaim::Lead,
            TableRole::Follower => TermClaim::Follow(&change.leader),
        };
        check_term(&replica.state, change.term, claim)?;
        if change.role == TableRole::Leader && replica.term_at_load == Some(change.term) {
            // It lived in this term before a restart (or a reload the catalog could not
            // prove lossless), which may have lost records it had written and not yet
            // synced: ones it shipped as the term's leader, or ones it reported to the
            // fence that chose it. Leading the term now, it would number new records at
            // offsets other replicas hold with other records of the same term, and no
            // check could tell the logs apart.
            // A resumed promotion fails here; a new ChangeLeader takes a new term, and
            // its fence sees the log as it is now.
            return Err(StorageError::TermTaken {
                term: change.term,
                holder: "this replica or another, before it was loaded".into(),
            });
        }
        let state = match change.role {
            TableRole::Leader => {
                let mut followers = change.followers.clone();
                followers.sort();
                followers.dedup();
                let offline = change
                    .offline
                    .iter()
                    .filter(|f| followers.contains(f))
                    .cloned()
                    .collect();
                ReplicaState {
                    term: change.term,
                    role: TableRole::Leader as i32,
                    followers,
                    leader: String::new(),
                    offline,
                }
            }
            TableRole::Follower => ReplicaState {
                term: change.term,
                role: TableRole::Follower as i32,
                followers: Vec::new(),
                leader: change.leader.clone(),
                offline: Vec::new(),
            },
        };
        self.persist(&state)?;
        if state.role() == TableRole::Leader {
            let mut history = self.history.lock();
            let last = binlog.last_offset();
            let term_start = match history::first_offset_of(&history, change.term) {
                Some(start) => start,
                None => {
                    // Records of the new term: see `term_start_entries`.
                    let mut start = None;
                    for payload in super::table::term_start_entries(last, &self.memtable) {
                        let offset = binlog.append(change.term, &payload)?;
                        history::note_record(&mut history, change.term, offset);
                        self.queue(offset, PendingEntry::Logged(payload));
                        self.last_offset.store(offset, Ordering::Release);
                        self.appended.send_replace(offset);
                        start.get_or_insert(offset);
                    }
                    // Nothing of an earlier term to commit, and no schema change.
                    start.unwrap_or(1)
                }
            };
            self.quorum.lead(change.term, term_start, &state.followers);
            // What it applied as a follower was committed under the earlier leader.
            self.quorum
                .raise_commit(self.follower_commit.load(Ordering::Acquire));
        } else {
            self.quorum.step_down();
        }
        info!(
            tid = self.meta.tid,
            pid = self.meta.pid,
            term = change.term,
            role = ?change.role,
            followers = ?state.followers,
            leader = %state.leader,
            "role changed"
        );
        let leading = state.role() == TableRole::Leader;
        replica.set_state(state);
        replica.fenced = false;
        replica.awaiting_role = false;
        // A new follower gives its leader time to reach it before it reports silence.
        replica.leader_contact = Instant::now();
        drop(replica);
        let last = binlog.last_offset();
        drop(binlog);
        if leading {
            // The leader's own copy counts once durable (its no-op included); a lone
            // leader then commits what it holds at once.
            self.durability.wait(last)?;
            self.quorum.set_local(self.durability.durable_offset());
        }
        self.advance()?;
        Ok(())
    }

    /// Changes one follower of this leader: `Add` ships to it again (a returning
    /// member) or adds it to the voting set, `Offline` stops shipping to it while it
    /// keeps its vote, `Remove` takes it out of the voting set.
    pub fn set_follower(&self, endpoint: &str, change: FollowerChange) -> Result<()> {
        // Under the writer lock like every other change of state, and refused once the
        // replica is closed: a closed replica's directory may already hold another (a
        // snapshot installed), whose state this must not overwrite.
        let binlog = self.writer.lock();
        refuse_if_closed(&binlog)?;
        let mut replica = self.replica.lock();
        if replica.state.role() != TableRole::Leader {
            return Err(StorageError::NotLeader {
                leader: replica.state.leader.clone(),
                term: replica.state.term,
            });
        }
        let mut state = replica.state.clone();
        let member = state.followers.iter().any(|f| f == endpoint);
        let offline = state.offline.iter().any(|f| f == endpoint);
        match change {
            FollowerChange::Add if member && !offline => return Ok(()),
            FollowerChange::Add if member => {
                state.offline.retain(|f| f != endpoint);
                self.quorum.rejoin(endpoint);
            }
            FollowerChange::Add => state.followers.push(endpoint.to_string()),
            FollowerChange::Offline if !member || offline => return Ok(()),
            FollowerChange::Offline => state.offline.push(endpoint.to_string()),
            FollowerChange::Remove if !member => return Ok(()),
            FollowerChange::Remove => {
                state.followers.retain(|f| f != endpoint);
                state.offline.retain(|f| f != endpoint);
            }
        }
        self.persist(&state)?;
        self.quorum.set_voters(&state.followers);
        info!(
            tid = self.meta.tid,
            pid = self.meta.pid,
            endpoint,
            change = ?change,
            followers = ?state.followers,
            offline = ?state.offline,
            "follower changed"
        );
        replica.set_state(state);
        Ok(())
    }

    /// What its replication links follow now (see [`ShippingView`]).
    pub fn shipping_view(&self) -> ShippingView {
        let replica = self.replica.lock();
        ShippingView {
            seq: replica.state_seq,
            term: replica.state.term,
            followers: shipping_of(&replica.state),
        }
    }

    /// The followers a leader ships to now: its voting members that are not offline.
    pub fn shipping_followers(&self) -> Vec<String> {
        shipping_of(&self.replica.lock().state)
    }

    /// Pauses snapshots (and binlog collection) until a matching resume.
    pub fn pause_snapshots(&self) {
        let _one_at_a_time = self.snapshot_lock.lock();
        self.snapshot_pauses.fetch_add(1, Ordering::AcqRel);
    }

    pub fn resume_snapshots(&self) {
        let _ = self
            .snapshot_pauses
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A current snapshot to send, with snapshots paused until [`Table::resume_snapshots`].
    pub fn snapshot_for_transfer(&self) -> Result<snapshot::Manifest> {
        if self.snapshot_pauses.load(Ordering::Acquire) == 0 {
            self.make_snapshot()?;
        }
        self.pause_snapshots();
        match snapshot::read_manifest(&self.dir().join("snapshot")) {
            Ok(Some(manifest)) => Ok(manifest),
            Ok(None) => {
                self.resume_snapshots();
                Err(StorageError::Unavailable(
                    "there is no snapshot to send".into(),
                ))
            }
            Err(e) => {
                self.resume_snapshots();
                Err(e)
            }
        }
    }

    pub fn quorum_ack(&self, follower: &str, offset: u64) {
        self.quorum.ack(follower, offset);
        if let Err(e) = self.advance() {
            tracing::error!(tid = self.meta.tid, pid = self.meta.pid, error = %e,
                "a committed entry could not be applied");
        }
    }

    /// Leader: each voting follower's lag, in offsets and seconds.
    pub fn replication_lag(&self) -> Vec<crate::replication::quorum::FollowerLag> {
        self.quorum.lag()
    }

    pub fn quorum_acked(&self) -> std::collections::BTreeMap<String, u64> {
        self.quorum.acked()
    }

    /// Wakes when the commit offset may have moved (replicators tell followers).
    pub fn subscribe_commit(&self) -> tokio::sync::watch::Receiver<u64> {
        self.quorum.subscribe()
    }

    pub fn commit_offset(&self) -> u64 {
        self.quorum.commit()
    }

    /// The lease was lost: a leader stops serving until told its role again.
    pub fn lease_lost(&self) {
        let mut replica = self.replica.lock();
        replica.awaiting_role = false;
        if replica.state.role() == TableRole::Leader && !replica.fenced {
            replica.fenced = true;
            info!(
                tid = self.meta.tid,
                pid = self.meta.pid,
                "leader stops serving: ZooKeeper lease lost"
            );
        }
    }

    /// The lease is valid again, in a later session than the one it lapsed in: a leader
    /// fenced by the lapse keeps waiting to be told its role, and says so in its status
    /// (the registry may not have seen the tablet go, when ZooKeeper itself was down).
    pub fn lease_acquired_in_new_session(&self) {
        let mut replica = self.replica.lock();
        if replica.state.role() == TableRole::Leader && replica.fenced {
            replica.awaiting_role = true;
        }
    }

    /// The lease was renewed in the session it lapsed in: a leader fenced by the lapse
    /// serves again. (One whose session expired meanwhile stays fenced: another may have
    /// been promoted, and it waits to be told its role.)
    pub fn lease_regained(&self) {
        let mut replica = self.replica.lock();
        if replica.state.role() == TableRole::Leader && replica.fenced {
            replica.fenced = false;
            info!(
                tid = self.meta.tid,
                pid = self.meta.pid,
                term = replica.state.term,
                "leader serves again: ZooKeeper lease renewed in the same session"
            );
        }
    }

    /// The follower's side of log shipping, blocking until what it appended is durable.
    pub fn handle_append(&self, request: &AppendEntriesRequest) -> Result<AppendOutcome> {
        let outcome = self.log_append(request)?;
        if let AppendOutcome::Appended(last) = outcome {
            self.durability.wait(last)?;
            self.settle_append(last)?;
        }
        Ok(outcome)
    }

    /// Waits, without holding a thread, until `offset` is durable here.
    pub async fn durable_offset_reached(&self, offset: u64) -> Result<()> {
        self.durability.wait_async(offset).await
    }

    /// What follows a durable append: this replica's vote, and applying what the leader
    /// said is committed.
    pub fn settle_append(&self, last: u64) -> Result<()> {
        self.quorum.set_local(last);
        self.advance()
    }

    /// A leader's heartbeat for this partition, from a batch. Unlike an AppendEntries it
    /// changes nothing but the lease: a replica that does not already follow the grant's
    /// leader in the beat's term (a newer term, another role, fenced, reloading) grants
    /// nothing, and the leader then probes on the partition's own stream, where every
    /// check of [`Table::log_append`] applies. The checks and the grant happen under the
    /// replica lock, as a fence's change of term does, so no grant follows a fence.
    ///
    /// A granting replica joins `grant` (the leader tablet's, see
    /// `replication::pair_lease`): from then on the grant's renewals renew its lease too,
    /// until it leaves.
    ///
    /// A replica busy appending (its writer lock taken) grants nothing either, rather
    /// than hold up the rest of the batch: the append's own answer renews the lease.
    pub fn heartbeat(
        &self,
        grant: &Arc<PairGrant>,
        lease_ms: u32,
        beat: &PartitionBeat,
    ) -> BeatOutcome {
        let Some(binlog) = self.writer.try_lock() else {
            return BeatOutcome {
                granted: false,
                in_step: false,
                term: beat.term,
                joined: None,
            };
        };
        let mut replica = self.replica.lock();
        let term = replica.state.term;
        let follows = !binlog.is_closed()
            && beat.term == term
            && replica.state.role() == TableRole::Follower
            && replica.state.leader == grant.leader()
            && !replica.fenced
            && !replica.awaiting_role;
        if !follows {
            return BeatOutcome {
                granted: false,
                in_step: false,
                term,
                joined: None,
            };
        }
        grant_lease(&mut replica, lease_ms);
        let joined = replica.join_pair(grant);
        drop(replica);
        let last = binlog.last_offset();
        // A replica just reloaded (a snapshot installed, a truncation) knows no commit
        // yet: its stream must tell it, or it serves no follower read until a write.
        let in_step = beat.last_offset == last
            && history::term_at(&self.history.lock(), last) == beat.last_term
            && self.known_follower_commit() >= beat.commit_offset.min(last);
        BeatOutcome {
            granted: true,
            in_step,
            term,
            joined: Some(joined),
        }
    }

    /// The commit offset learned from the leader.
    fn known_follower_commit(&self) -> u64 {
        self.follower_commit.load(Ordering::Acquire)
    }

    /// Checks and appends what a leader sent (handed to the OS; `Appended` is durable
    /// only once the binlog says so: wait for it, then [`Table::settle_append`]).
    pub fn log_append(&self, request: &AppendEntriesRequest) -> Result<AppendOutcome> {
        let last = {
            let mut binlog = self.writer.lock();
            refuse_if_closed(&binlog)?;
            let mut replica = self.replica.lock();
            if request.term < replica.state.term {
                return Ok(AppendOutcome::StaleTerm(replica.state.term));
            }
            let state = &replica.state;
            if state.role() == TableRole::Leader && request.term == state.term {
                return Err(StorageError::Unavailable(format!(
                    "{} claims leadership in term {}, which this replica leads",
                    request.leader, request.term
                )));
            }
            if request.term == state.term
                && !state.leader.is_empty()
                && state.leader != request.leader
            {
                return Err(StorageError::Unavailable(format!(
                    "{} claims leadership in term {}, which {} leads",
                    request.leader, request.term, state.leader
                )));
            }
            if request.term > state.term
                || state.role() != TableRole::Follower
                || state.leader != request.leader
            {
                let adopted = ReplicaState {
                    term: request.term,
                    role: TableRole::Follower as i32,
                    followers: Vec::new(),
                    leader: request.leader.clone(),
                    offline: Vec::new(),
                };
                self.persist(&adopted)?;
                self.quorum.step_down();
                replica.set_state(adopted);
                replica.fenced = false;
                replica.awaiting_role = false;
            }
            grant_lease(&mut replica, request.lease_ms);
            drop(replica);

            let last = binlog.last_offset();
            let mut history = self.history.lock();
            let continues = request.prev_offset == last
                && history::term_at(&history, request.prev_offset) == request.prev_term;
            if !continues {
                if request.prev_offset > last {
                    return Ok(AppendOutcome::Mismatch(last));
                }
                let shared = history::divergence_point(
                    &history,
                    last,
                    &request.leader_term_history,
                    request.leader_last_offset,
                );
                if shared >= last {
                    // Everything we hold, the leader holds too: continue after it.
                    return Ok(AppendOutcome::Mismatch(last));
                }
                if shared < self.snapshot_offset() {
                    return Ok(AppendOutcome::NeedSnapshot);
                }
                return Ok(AppendOutcome::Truncate(shared));
            }
            // Staged, then written in one go: one `write` for the whole request.
            let mut staged = Ok(());
            for record in &request.entries {
                staged = binlog
                    .stage_at(record.term, record.offset, &record.payload)
                    .and_then(|_| {
                        history::note_record(&mut history, record.term, record.offset);
                        let at = Version {
                            term: record.term,
                            offset: record.offset,
                        };
                        // Each lock on its own: the sessions lock is never held while
                        // taking another (see storage::apply).
                        note_request(&mut self.sessions.lock(), at, &record.payload)
                    });
                if staged.is_err() {
                    break;
                }
                self.queue(record.offset, PendingEntry::Logged(record.payload.clone()));
            }
            // Whatever was staged is written even if a later record failed, so the file
            // and the bookkeeping above agree.
            binlog.write_staged()?;
            self.last_offset
                .store(binlog.last_offset(), Ordering::Release);
            staged?;
            let last = binlog.last_offset();
            // The log now agrees with the leader's through `last`: what the leader says is
            // committed up to there is.
            self.learn_commit(request.commit_offset.min(last));
            last
        };
        Ok(AppendOutcome::Appended(last))
    }
}
