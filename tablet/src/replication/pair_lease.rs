//! Read leases granted per pair of tablets. A follower tablet keeps one grant per leader
//! tablet, shared by every replica there that follows that leader: a batched heartbeat
//! renews it once, whatever the number of partitions, so an idle partition costs its
//! follower and its leader nothing per beat (ARCHITECTURE, *Leases per pair of tablets*).
//!
//! The rule that keeps it safe: a replica leaves the grant (under its own lock, in the
//! same step as the fence, role change or reload that makes it stop following) before
//! anything else can see the change, and every leave moves the grant to a new
//! *generation*. Every answer of the follower names the grant and its generation. The
//! leader counts a renewal for a partition only while the generation it saw when the
//! partition joined is the one the answer names: any leave at the follower, whichever
//! partition it was, makes the leader stop counting the grant for all of them until they
//! join again by a beat of their own. A replica that leaves keeps what the grant
//! promised until then, so a fence still reports every lease it helped renew.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_common::failure_detection::{stretched, LEADER_LEASE};

/// The lease a beat asks for: a longer one than Tessera's own is taken for ours (the
/// nameserver waits no longer than that); none said is taken for ours too.
pub fn lease_asked(lease_ms: u32) -> Duration {
    match lease_ms {
        0 => LEADER_LEASE,
        ms => Duration::from_millis(u64::from(ms)).min(LEADER_LEASE),
    }
}

/// A follower tablet's grant to one leader tablet.
#[derive(Debug)]
pub struct PairGrant {
    /// The leader's endpoint.
    leader: String,
    /// Random, so that a restarted follower's grant is never taken for the one before.
    id: u64,
    state: Mutex<GrantState>,
}

#[derive(Debug)]
struct GrantState {
    generation: u64,
    /// Until when (this clock, drift margin included) a lease renewed through it may last.
    granted_until: Instant,
    /// When the leader was last heard from through it.
    contact: Instant,
}

/// What a replica takes with it when it leaves a grant.
#[derive(Debug, Clone, Copy)]
pub struct LeftGrant {
    pub granted_until: Instant,
    pub contact: Instant,
}

impl PairGrant {
    fn new(leader: &str) -> PairGrant {
        let now = Instant::now();
        PairGrant {
            leader: leader.to_string(),
            id: random_id(),
            state: Mutex::new(GrantState {
                generation: 0,
                granted_until: now,
                contact: now,
            }),
        }
    }

    pub fn leader(&self) -> &str {
        &self.leader
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The generation now; a replica joining notes it (called under the replica's lock).
    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// A beat from the leader: renews the lease of every replica in the grant. Returns
    /// the generation the renewal was made in.
    pub fn renew(&self, lease: Duration) -> u64 {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.granted_until = state.granted_until.max(now + stretched(lease));
        state.contact = now;
        state.generation
    }

    /// A replica leaves (called under the replica's lock): the generation moves on, and
    /// the replica keeps what the grant promised so far.
    pub fn leave(&self) -> LeftGrant {
        let mut state = self.state.lock();
        state.generation += 1;
        LeftGrant {
            granted_until: state.granted_until,
            contact: state.contact,
        }
    }

    pub fn granted_until(&self) -> Instant {
        self.state.lock().granted_until
    }

    pub fn contact(&self) -> Instant {
        self.state.lock().contact
    }
}

fn random_id() -> u64 {
    let id = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 0 means "no grant" in an answer.
    id.max(1)
}

/// A follower tablet's grants, one per leader tablet that beats to it.
#[derive(Debug, Default)]
pub struct PairGrants {
    by_leader: Mutex<HashMap<String, Arc<PairGrant>>>,
}

impl PairGrants {
    pub fn of(&self, leader: &str) -> Arc<PairGrant> {
        shared_entry(&self.by_leader, leader, || PairGrant::new(leader))
    }
}

/// The entry of `map` for `key`, made by `make` the first time (with no allocation for
/// a key already there).
fn shared_entry<T>(
    map: &Mutex<HashMap<String, Arc<T>>>,
    key: &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut map = map.lock();
    if let Some(entry) = map.get(key) {
        return entry.clone();
    }
    let entry = Arc::new(make());
    map.insert(key.to_string(), entry.clone());
    entry
}

/// A leader tablet's view of one follower tablet's grant: which grant and generation it
/// last answered with, and when the latest request it answered was sent. Each change of
/// grant or generation starts a new *epoch*; a partition counts the grant's renewals only
/// in the epoch it joined in.
///
/// An epoch that ended keeps its last renewal: every answer of that epoch named its
/// generation, so each renewal came before the leave that ended it, and a replica that
/// left took that renewal's promise with it. (An epoch ended by a new grant id, a
/// restarted follower, is no different: a replica loaded at the restart owes a whole
/// lease from then, later than any renewal before it.) The partitions of the epoch go on counting
/// it (it runs out by itself) until a beat of their own joins them to the new epoch;
/// dropping it would lapse every idle partition's lease whenever any replica left.
#[derive(Debug, Default)]
pub struct PeerGrant {
    state: Mutex<PeerState>,
    /// The state's epoch, written under its lock and read without it: a heartbeat round
    /// asks whether each idle partition's epoch is still current.
    epoch_now: AtomicU64,
}

/// Ended epochs kept with their last renewal. An epoch lasts at least one heartbeat
/// round (its answers come one call at a time), so this covers several leases.
const ENDED_KEPT: usize = 16;

#[derive(Debug, Default)]
struct PeerState {
    id: u64,
    generation: u64,
    epoch: u64,
    heard: Option<Instant>,
    /// The latest ended epochs, oldest first, with their last renewal.
    ended: VecDeque<(u64, Instant)>,
}

impl PeerGrant {
    /// An answer naming grant `id` in `generation`, to a request sent at `sent`: returns
    /// the epoch it renews. A new grant or generation ends the epoch before it, so no
    /// partition that joined earlier counts this renewal.
    pub fn answered(&self, id: u64, generation: u64, sent: Instant) -> u64 {
        let mut state = self.state.lock();
        if (state.id, state.generation) != (id, generation) {
            if let Some(heard) = state.heard {
                if state.ended.len() == ENDED_KEPT {
                    state.ended.pop_front();
                }
                let epoch = state.epoch;
                state.ended.push_back((epoch, heard));
            }
            state.id = id;
            state.generation = generation;
            state.epoch += 1;
            self.epoch_now.store(state.epoch, Ordering::Release);
            state.heard = None;
        }
        state.heard = Some(state.heard.map_or(sent, |heard| heard.max(sent)));
        state.epoch
    }

    /// When the latest request renewing `epoch` was sent: the current epoch's latest, or
    /// an ended epoch's last.
    pub fn heard_in(&self, epoch: u64) -> Option<Instant> {
        let state = self.state.lock();
        if state.epoch == epoch {
            return state.heard;
        }
        state
            .ended
            .iter()
            .rev()
            .find(|(ended, _)| *ended == epoch)
            .map(|(_, heard)| *heard)
    }

    /// Whether `epoch` is still current: its partitions need no beat of their own.
    pub fn current(&self, epoch: u64) -> bool {
        self.epoch_now.load(Ordering::Acquire) == epoch
    }
}

/// A leader tablet's view of the grants of every follower tablet it beats to. Kept for
/// the life of the process: a partition holds its follower's entry, and a new entry for
/// the same follower would leave it counting one that no answer updates any more.
#[derive(Debug, Default)]
pub struct PeerGrants {
    by_follower: Mutex<HashMap<String, Arc<PeerGrant>>>,
}

impl PeerGrants {
    pub fn of(&self, follower: &str) -> Arc<PeerGrant> {
        shared_entry(&self.by_follower, follower, PeerGrant::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leave_moves_the_generation_and_keeps_the_promise() {
        let grants = PairGrants::default();
        let grant = grants.of("a:1");
        assert!(
            Arc::ptr_eq(&grant, &grants.of("a:1")),
            "one grant per leader"
        );
        let joined_in = grant.generation();
        let renewed_in = grant.renew(LEADER_LEASE);
        assert_eq!(renewed_in, joined_in);
        let promised = grant.granted_until();
        assert!(promised > Instant::now() + LEADER_LEASE - Duration::from_millis(50));
        let left = grant.leave();
        assert_eq!(left.granted_until, promised);
        assert_eq!(grant.renew(LEADER_LEASE), joined_in + 1);
        assert_ne!(grant.id(), grants.of("b:1").id(), "each grant its own id");
    }

    #[test]
    fn a_new_generation_or_grant_ends_the_epoch() {
        let peer = PeerGrant::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(100);
        let epoch = peer.answered(7, 0, t0);
        assert_eq!(peer.heard_in(epoch), Some(t0));
        assert_eq!(
            peer.answered(7, 0, t1),
            epoch,
            "the same grant and generation"
        );
        assert_eq!(peer.heard_in(epoch), Some(t1));
        let t2 = t1 + Duration::from_millis(100);
        let next = peer.answered(7, 1, t2);
        assert_ne!(next, epoch, "a replica left the grant");
        assert!(!peer.current(epoch));
        assert_eq!(
            peer.heard_in(epoch),
            Some(t1),
            "the old epoch keeps its last renewal, not the new epoch's"
        );
        assert_eq!(peer.heard_in(next), Some(t2));
        let restarted = peer.answered(9, 1, t2);
        assert_ne!(restarted, next, "another grant: the follower restarted");
        // An earlier send time never moves the renewal back.
        assert_eq!(peer.answered(9, 1, t0), restarted);
        assert_eq!(peer.heard_in(restarted), Some(t2));
        // Only the latest ended epochs are kept; older ones have run out anyway.
        for generation in 2..2 + ENDED_KEPT as u64 {
            peer.answered(9, generation, t2);
        }
        assert_eq!(peer.heard_in(epoch), None);
        assert_eq!(peer.heard_in(restarted), Some(t2));
    }
}
