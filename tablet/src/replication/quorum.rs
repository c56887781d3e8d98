//! The commit offset of a leader: the highest offset of its own term that a majority of
//! the partition's voting members, leader included, holds durably. Quorum writes wait
//! on it.
//!
//! Three rules keep an acknowledged write safe:
//! - the majority is of the *voting members* (every replica the metadata lists, dead or
//!   offline ones included), never of the followers shipped to now, so losing replicas
//!   never makes a smaller majority;
//! - a leader counts replicas only for offsets of its own term (earlier entries commit
//!   with the first entry of its term above them), so an entry a later leader may still
//!   overwrite is never reported committed (Raft's "figure 8");
//! - a replica that stops leading wakes its waiting writers with [`WaitError::SteppedDown`]
//!   and never recomputes the commit offset from its own log alone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::pair_lease::PeerGrant;

#[derive(Debug, Default)]
struct State {
    /// The leader's own durable offset.
    local: u64,
    /// Every other voting member and the offset it has acknowledged durably.
    voters: BTreeMap<String, u64>,
    /// The term this replica leads in; `None` while it does not lead.
    leading: Option<u64>,
    /// When it began leading in that term, or its voting members last changed: with no
    /// majority's answer since, its read lease counts as lapsed from then.
    counted_since: Option<Instant>,
    /// The first offset of the leading term: replicas are counted only at or above it.
    term_start: u64,
    commit: u64,
    /// Per voting member, when the leader sent the latest request the member answered in
    /// the leading term (answers that did not refuse the term): the read lease runs from
    /// the send time a majority reached.
    heard: BTreeMap<String, Instant>,
    /// Per voting member, the grant of its tablet this partition joined and the epoch it
    /// joined in: the grant's renewals in that epoch renew the lease too (see
    /// `pair_lease`).
    pair: BTreeMap<String, (Arc<PeerGrant>, u64)>,
    /// While leading: when the local log reached each offset (at most one entry per
    /// [`WRITTEN_AT_STEP`], at most [`WRITTEN_AT_MAX`] entries), trimmed to what every
    /// voter holds: the age of the oldest record a follower lacks, for its lag in seconds.
    written_at: VecDeque<(u64, Instant)>,
}

/// The resolution of the follower lag in seconds.
const WRITTEN_AT_STEP: Duration = Duration::from_millis(50);
/// Bounds the memory a follower that stays behind can cost: past it, the marks after the
/// oldest are thinned, so a follower's lag is exact at the oldest and newest marks and
/// coarser between.
const WRITTEN_AT_MAX: usize = 1024;

/// How far a follower is behind its leader: in offsets, and the age of the oldest record
/// it lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerLag {
    pub follower: String,
    pub offsets: u64,
    pub seconds: f64,
}

impl State {
    /// See [`Quorum::lease_until`].
    fn lease_until(&self, lease: Duration) -> Option<Instant> {
        self.leading?;
        let members = self.voters.len() + 1;
        let others_needed = members / 2; // majority - 1: the leader counts itself
        if others_needed == 0 {
            return Some(Instant::now() + lease);
        }
        let mut times: Vec<Instant> = self
            .voters
            .keys()
            .filter_map(|voter| {
                let direct = self.heard.get(voter).copied();
                let paired = self
                    .pair
                    .get(voter)
                    .and_then(|(peer, epoch)| peer.heard_in(*epoch));
                direct.max(paired)
            })
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(others_needed - 1).map(|sent| *sent + lease)
    }

    /// Forgets the write times every voter is past.
    fn trim_written_at(&mut self) {
        let Some(behind) = self.voters.values().min().copied() else {
            self.written_at.clear();
            return;
        };
        while self
            .written_at
            .front()
            .is_some_and(|(offset, _)| *offset <= behind)
        {
            self.written_at.pop_front();
        }
    }

    fn recompute(&mut self) {
        if self.leading.is_none() {
            return;
        }
        let mut offsets: Vec<u64> = self.voters.values().copied().collect();
        offsets.push(self.local);
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        let majority = offsets.len() / 2 + 1;
        let candidate = offsets[majority - 1];
        // Never backwards, and only at an offset of this leader's term.
        if candidate >= self.term_start {
            self.commit = self.commit.max(candidate);
        }
    }
}

#[derive(Debug)]
pub struct Quorum {
    state: Mutex<State>,
    /// Wakes blocking waiters.
    advanced: Condvar,
    /// Wakes async waiters; the value is a change counter.
    changes: watch::Sender<u64>,
    /// Takes a new value (under the state's lock) whenever joins to grants may be
    /// forgotten: a new term, a step down, a change of voters. A [`PairMark`] taken before it moved no
    /// longer says the partition is in its grant.
    pair_resets: AtomicU64,
}

impl Default for Quorum {
    fn default() -> Quorum {
        Quorum {
            state: Mutex::default(),
            advanced: Condvar::new(),
            changes: watch::Sender::new(0),
            pair_resets: AtomicU64::new(fresh_reset()),
        }
    }
}

/// Values of `Quorum::pair_resets`, unique in the process: a mark taken from one copy of
/// a replica (before a reload, say) never matches another copy's.
static NEXT_PAIR_RESET: AtomicU64 = AtomicU64::new(1);

fn fresh_reset() -> u64 {
    NEXT_PAIR_RESET.fetch_add(1, Ordering::Relaxed)
}

/// A partition's join to a follower tablet's grant, as [`Quorum::join_pair`] recorded it:
/// while neither the grant's epoch nor the quorum's joins moved since, the grant's
/// renewals renew the partition's lease (see [`Quorum::paired`]). Checked without a lock,
/// so a heartbeat round can look at thousands of idle partitions cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairMark {
    pub epoch: u64,
    pub resets: u64,
}

/// Why a quorum wait ended without the offset committed.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// No majority within the timeout; the write may still commit later.
    Timeout { commit: u64 },
    /// The replica stopped leading in the writer's term; the write may or may not survive.
    SteppedDown,
}

impl Quorum {
    fn changed(&self) {
        self.advanced.notify_all();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Starts leading in `term` with these other voting members. Records of `term` start
    /// at `term_start`. What followers acknowledged before is forgotten: their logs may
    /// have changed since.
    pub fn lead(&self, term: u64, term_start: u64, voters: &[String]) {
        let mut state = self.state.lock();
        state.leading = Some(term);
        state.counted_since = Some(Instant::now());
        state.term_start = term_start;
        state.voters = voters.iter().map(|v| (v.clone(), 0)).collect();
        state.heard.clear();
        state.pair.clear();
        self.pair_resets.store(fresh_reset(), Ordering::Release);
        state.written_at.clear();
        state.recompute();
        drop(state);
        self.changed();
    }

    /// Stops leading: waiting writers fail with [`WaitError::SteppedDown`]. The commit
    /// offset stays where the last majority put it.
    pub fn step_down(&self) {
        let mut state = self.state.lock();
        state.heard.clear();
        state.pair.clear();
        self.pair_resets.store(fresh_reset(), Ordering::Release);
        state.written_at.clear();
        if state.leading.take().is_some() {
            drop(state);
            self.changed();
        }
    }

    /// Replaces the voting set (a member added or removed), keeping what is known of the
    /// members that stay.
    pub fn set_voters(&self, voters: &[String]) {
        let mut state = self.state.lock();
        let old = std::mem::take(&mut state.voters);
        state.voters = voters
            .iter()
            .map(|v| (v.clone(), old.get(v).copied().unwrap_or(0)))
            .collect();
        let State {
            heard,
            pair,
            voters: members,
            ..
        } = &mut *state;
        heard.retain(|v, _| members.contains_key(v));
        pair.retain(|v, _| members.contains_key(v));
        self.pair_resets.store(fresh_reset(), Ordering::Release);
        // Only a different set counts afresh: marking a member offline or back keeps it.
        if !old.keys().eq(state.voters.keys()) {
            state.counted_since = Some(Instant::now());
        }
        state.recompute();
        drop(state);
        self.changed();
    }

    /// A member returns (its log may have changed while it was away): it counts again
    /// only for what it acknowledges from now on.
    pub fn rejoin(&self, voter: &str) {
        if let Some(acked) = self.state.lock().voters.get_mut(voter) {
            *acked = 0;
        }
    }

    pub fn set_local(&self, durable: u64) {
        let mut state = self.state.lock();
        if durable > state.local {
            state.local = durable;
            if state.leading.is_some() && !state.voters.is_empty() {
                let now = Instant::now();
                let due = state
                    .written_at
                    .back()
                    .is_none_or(|(_, at)| now.duration_since(*at) >= WRITTEN_AT_STEP);
                if due {
                    if state.written_at.len() >= WRITTEN_AT_MAX {
                        // Keep the oldest (a follower far behind) and the newest marks;
                        // thin the ones between.
                        state.written_at.remove(1);
                    }
                    state.written_at.push_back((durable, now));
                }
            }
            state.recompute();
            drop(state);
            self.changed();
        }
    }

    /// A voting member holds everything through `offset` durably, and its log agrees
    /// with the leader's there.
    pub fn ack(&self, voter: &str, offset: u64) {
        let mut state = self.state.lock();
        let Some(acked) = state.voters.get_mut(voter) else {
            return;
        };
        if offset > *acked {
            *acked = offset;
            state.trim_written_at();
            state.recompute();
            drop(state);
            self.changed();
        }
    }

    /// A voting member answered, without refusing the leading term `term`, a request
    /// sent at `sent`: it renews the read lease (an answer on an older term's link
    /// renews nothing).
    pub fn heard(&self, voter: &str, term: u64, sent: Instant) {
        let mut state = self.state.lock();
        if state.leading != Some(term) {
            return;
        }
        // Called for every partition on every heartbeat: one lookup and no allocation
        // once a voter has been heard (`heard` holds voting members only: a change of
        // members trims it).
        if let Some(latest) = state.heard.get_mut(voter) {
            *latest = (*latest).max(sent);
        } else if state.voters.contains_key(voter) {
            state.heard.insert(voter.to_string(), sent);
        }
    }

    /// A voting member's tablet answered a beat in the leading term `term` with this
    /// partition in its grant, in `epoch` of `peer`: the grant's renewals in that epoch
    /// renew the lease from now on, with no beat of the partition's own. Returns the mark
    /// of the join, `None` if it did not count (another term, not a voter).
    pub fn join_pair(
        &self,
        voter: &str,
        term: u64,
        peer: &Arc<PeerGrant>,
        epoch: u64,
    ) -> Option<PairMark> {
        let mut state = self.state.lock();
        if state.leading != Some(term) || !state.voters.contains_key(voter) {
            return None;
        }
        match state.pair.get_mut(voter) {
            Some(joined) => *joined = (peer.clone(), epoch),
            None => {
                state.pair.insert(voter.to_string(), (peer.clone(), epoch));
            }
        }
        Some(PairMark {
            epoch,
            resets: self.pair_resets.load(Ordering::Acquire),
        })
    }

    /// Whether the join `mark` recorded still stands, so that `peer`'s renewals renew
    /// this partition's lease now: nothing forgot the joins since, and `peer` is still
    /// in the epoch joined. The voter's entry is the one the mark's join wrote (each
    /// voter has one link, which joins for it).
    pub fn paired(&self, mark: PairMark, peer: &PeerGrant) -> bool {
        self.pair_resets.load(Ordering::Acquire) == mark.resets && peer.current(mark.epoch)
    }

    /// Until when this leader may serve reads: `lease` after the latest send time that a
    /// majority of the voting members (the leader counting for itself) answered. A lone
    /// member's lease never ends (its ZooKeeper lease bounds it); `None` while it does
    /// not lead or a majority has not answered yet.
    pub fn lease_until(&self, lease: Duration) -> Option<Instant> {
        self.state.lock().lease_until(lease)
    }

    /// How long this leader has been without its read lease: since the lease ran out,
    /// or, if no majority has answered it yet, since it began leading or its voting
    /// members changed (whichever is later). `None` while it holds the lease or does
    /// not lead.
    pub fn lease_lapsed_for(&self, lease: Duration) -> Option<Duration> {
        let state = self.state.lock();
        let since = state.counted_since.filter(|_| state.leading.is_some())?;
        let until = state.lease_until(lease).unwrap_or(since).max(since);
        Instant::now().checked_duration_since(until)
    }

    /// Everything through `offset` is known committed (learned while following the
    /// previous leader).
    pub fn raise_commit(&self, offset: u64) {
        let mut state = self.state.lock();
        if offset > state.commit {
            state.commit = offset;
            drop(state);
            self.changed();
        }
    }

    /// Forgets acknowledgements above `offset` (the log was cut back there).
    pub fn reset(&self, offset: u64) {
        let mut state = self.state.lock();
        state.local = state.local.min(offset);
        for acked in state.voters.values_mut() {
            *acked = (*acked).min(offset);
        }
        state.commit = state.commit.min(offset);
    }

    pub fn commit(&self) -> u64 {
        self.state.lock().commit
    }

    /// What each voting member other than the leader has acknowledged.
    pub fn acked(&self) -> BTreeMap<String, u64> {
        self.state.lock().voters.clone()
    }

    /// Each voting follower's lag behind this leader's durable log (empty unless
    /// leading).
    pub fn lag(&self) -> Vec<FollowerLag> {
        let state = self.state.lock();
        if state.leading.is_none() {
            return Vec::new();
        }
        state
            .voters
            .iter()
            .map(|(follower, &acked)| {
                let offsets = state.local.saturating_sub(acked);
                let oldest_lacking = state
                    .written_at
                    .iter()
                    .find(|(offset, _)| *offset > acked)
                    .or(state.written_at.back());
                let seconds = match oldest_lacking {
                    Some((_, at)) if offsets > 0 => at.elapsed().as_secs_f64(),
                    _ => 0.0,
                };
                FollowerLag {
                    follower: follower.clone(),
                    offsets,
                    seconds,
                }
            })
            .collect()
    }

    /// Whether this replica leads and has committed a record of its own term: only then
    /// does its commit offset cover everything any earlier leader committed, so it may
    /// serve leader reads.
    pub fn committed_in_own_term(&self) -> bool {
        let state = self.state.lock();
        // A log that begins in this term holds nothing an earlier leader committed.
        state.leading.is_some() && (state.commit >= state.term_start || state.term_start <= 1)
    }

    /// Changes whenever the commit offset (or anything else here) may have moved.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Voting members, the leader included.
    pub fn voter_count(&self) -> usize {
        self.state.lock().voters.len() + 1
    }

    /// Whether `offset` is committed; an error once waiting cannot end well.
    fn check(state: &State, offset: u64, term: u64) -> Option<Result<(), WaitError>> {
        if state.commit >= offset {
            return Some(Ok(()));
        }
        if state.leading != Some(term) {
            return Some(Err(WaitError::SteppedDown));
        }
        None
    }

    /// Blocks until `offset` (written in `term`) is committed, the replica stops leading
    /// in `term`, or `timeout` passes.
    pub fn wait_blocking(
        &self,
        offset: u64,
        term: u64,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        loop {
            if let Some(done) = Self::check(&state, offset, term) {
                return done;
            }
            if self.advanced.wait_until(&mut state, deadline).timed_out() {
                return Self::check(&state, offset, term).unwrap_or(Err(WaitError::Timeout {
                    commit: state.commit,
                }));
            }
        }
    }

    /// As [`Quorum::wait_blocking`], without holding a thread.
    pub async fn wait(&self, offset: u64, term: u64, timeout: Duration) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        loop {
            {
                let state = self.state.lock();
                if let Some(done) = Self::check(&state, offset, term) {
                    return done;
                }
            }
            let woke = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(woke, Ok(Ok(()))) {
                let state = self.state.lock();
                return Self::check(&state, offset, term).unwrap_or(Err(WaitError::Timeout {
                    commit: state.commit,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn leader_of(names: &[&str]) -> Quorum {
        let q = Quorum::default();
        q.lead(1, 1, &voters(names));
        q
    }

    #[test]
    fn majority_of_three_needs_one_follower() {
        let q = leader_of(&["b", "c"]);
        q.set_local(10);
        assert_eq!(q.commit(), 0);
        q.ack("c", 7);
        assert_eq!(q.commit(), 7);
        q.ack("b", 12);
        assert_eq!(q.commit(), 10, "the leader's own durable offset bounds it");
        q.ack("x", 100);
        assert_eq!(q.commit(), 10, "unknown members do not vote");
    }

    /// Answers may come back out of order (a heartbeat batch and a stream's answer): a
    /// voter's lease runs from the latest request it answered, never an earlier one.
    #[test]
    fn a_voter_renews_from_its_latest_answered_request() {
        let lease = Duration::from_secs(10);
        let q = leader_of(&["b", "c"]);
        let earlier = Instant::now();
        let later = earlier + Duration::from_millis(30);
        q.heard("b", 1, later);
        q.heard("b", 1, earlier);
        assert_eq!(q.lease_until(lease), Some(later + lease));
        q.heard("b", 1, later + Duration::from_millis(5));
        assert_eq!(
            q.lease_until(lease),
            Some(later + Duration::from_millis(5) + lease)
        );
        // Another term's answer or a non-member renews nothing.
        q.heard("b", 2, later + Duration::from_secs(1));
        q.heard("x", 1, later + Duration::from_secs(1));
        assert_eq!(
            q.lease_until(lease),
            Some(later + Duration::from_millis(5) + lease)
        );
    }

    /// A follower tablet's grant renews the lease of the partitions that joined it, in
    /// the epoch they joined in only: once the follower names a new generation (a
    /// replica left the grant), the grant counts for none of them until they join again.
    #[test]
    fn a_grant_renews_the_lease_of_the_partitions_in_it_until_its_generation_moves() {
        let lease = Duration::from_millis(500);
        let q = leader_of(&["b", "c"]);
        let peer = Arc::new(PeerGrant::default());
        let t0 = Instant::now();
        let epoch = peer.answered(7, 0, t0);
        let mark = q
            .join_pair("b", 1, &peer, epoch)
            .expect("b votes in term 1");
        assert!(q.paired(mark, &peer));
        assert_eq!(q.lease_until(lease), Some(t0 + lease));
        // A later renewal of the same grant renews the partition with no beat of its own.
        let t1 = t0 + Duration::from_millis(100);
        peer.answered(7, 0, t1);
        assert_eq!(q.lease_until(lease), Some(t1 + lease));
        // A direct answer still counts, whichever is later.
        q.heard("b", 1, t1 + Duration::from_millis(5));
        assert_eq!(
            q.lease_until(lease),
            Some(t1 + Duration::from_millis(5) + lease)
        );
        // A new generation: the grant's renewals in it do not count, and the partition
        // needs a beat of its own to join again; the last renewal of the epoch it joined
        // in still counts where it is later than its own answers.
        let t2 = t1 + Duration::from_millis(50);
        peer.answered(7, 0, t2);
        peer.answered(7, 1, t1 + Duration::from_millis(200));
        assert!(!q.paired(mark, &peer));
        assert_eq!(q.lease_until(lease), Some(t2 + lease));
        // Joined again in the new epoch; another term's or a non-member's join counts
        // for nothing; a new term forgets every join.
        let other = Arc::new(PeerGrant::default());
        let other_epoch = other.answered(3, 0, t1 + Duration::from_secs(1));
        assert_eq!(
            q.join_pair("x", 1, &other, other_epoch),
            None,
            "not a voter"
        );
        assert_eq!(
            q.join_pair("c", 2, &other, other_epoch),
            None,
            "another term"
        );
        let epoch = peer.answered(7, 1, t1 + Duration::from_millis(300));
        let mark = q.join_pair("b", 1, &peer, epoch).expect("joined again");
        assert!(q.paired(mark, &peer));
        assert_eq!(
            q.lease_until(lease),
            Some(t1 + Duration::from_millis(300) + lease)
        );
        // A change of voters may drop the join: the mark no longer stands, though a
        // beat of its own joins again.
        q.set_voters(&voters(&["b", "c"]));
        assert!(
            !q.paired(mark, &peer),
            "a change of voters forgets the mark"
        );
        let mark = q.join_pair("b", 1, &peer, epoch).expect("joined again");
        assert!(q.paired(mark, &peer));
        q.lead(2, 1, &voters(&["b", "c"]));
        assert!(!q.paired(mark, &peer), "a new term forgets the joins");
        assert_eq!(q.lease_until(lease), None);
        let mark = q.join_pair("b", 2, &peer, epoch).expect("joined in term 2");
        q.step_down();
        assert!(!q.paired(mark, &peer), "a step down forgets the joins");
    }

    /// The nameserver replaces a leader only after a lasting lapse, so the tablet tells
    /// how long: from its start until a majority first answers, and from the lease's
    /// end after that.
    #[test]
    fn a_lapsed_lease_says_for_how_long() {
        let lease = Duration::from_millis(50);
        let q = leader_of(&["b", "c"]);
        std::thread::sleep(Duration::from_millis(5));
        let unanswered = q.lease_lapsed_for(lease).expect("no majority answered yet");
        assert!(unanswered >= Duration::from_millis(5), "{unanswered:?}");

        q.heard("b", 1, Instant::now());
        assert_eq!(q.lease_lapsed_for(lease), None, "renewed");
        std::thread::sleep(lease + Duration::from_millis(10));
        let lapsed = q.lease_lapsed_for(lease).expect("ran out");
        assert!(lapsed >= Duration::from_millis(10), "{lapsed:?}");
        // The same set again (a member marked offline or back) changes nothing; a new
        // voting set counts afresh, whatever the answers of the old one.
        q.set_voters(&voters(&["b", "c"]));
        assert!(q.lease_lapsed_for(lease).expect("still lapsed") >= lapsed);
        q.set_voters(&voters(&["c", "d"]));
        let recounted = q
            .lease_lapsed_for(lease)
            .expect("no majority of the new set");
        assert!(recounted < lapsed, "{recounted:?} against {lapsed:?}");
        q.step_down();
        assert_eq!(q.lease_lapsed_for(lease), None, "no longer leading");

        assert_eq!(
            leader_of(&[]).lease_lapsed_for(lease),
            None,
            "a lone leader"
        );
        let follower = Quorum::default();
        assert_eq!(follower.lease_lapsed_for(lease), None, "not leading");
    }

    #[test]
    fn alone_the_leader_commits_what_it_holds() {
        let q = leader_of(&[]);
        q.set_local(5);
        assert_eq!(q.commit(), 5);
        assert!(q.wait_blocking(5, 1, Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn waiting_times_out_without_a_majority() {
        let q = leader_of(&["b", "c"]);
        q.set_local(3);
        assert_eq!(
            q.wait_blocking(3, 1, Duration::from_millis(20)),
            Err(WaitError::Timeout { commit: 0 })
        );
        let q = std::sync::Arc::new(q);
        let acker = {
            let q = q.clone();
            std::thread::spawn(move || q.ack("b", 3))
        };
        assert!(q.wait_blocking(3, 1, Duration::from_secs(5)).is_ok());
        acker.join().unwrap();
    }

    #[test]
    fn follower_lag_counts_offsets_and_the_age_of_the_oldest_record_missing() {
        let q = leader_of(&["b", "c"]);
        q.set_local(10);
        q.ack("b", 10);
        q.ack("c", 4);
        std::thread::sleep(Duration::from_millis(60));
        q.set_local(20);
        let lag = q.lag();
        assert_eq!(lag.len(), 2);
        let b = &lag[0];
        let c = &lag[1];
        assert_eq!((b.follower.as_str(), b.offsets), ("b", 10));
        assert_eq!((c.follower.as_str(), c.offsets), ("c", 16));
        assert!(
            c.seconds >= 0.06 && c.seconds > b.seconds,
            "c lacks an older record than b: {lag:?}"
        );
        q.ack("b", 20);
        q.ack("c", 20);
        assert!(q.lag().iter().all(|l| l.offsets == 0 && l.seconds == 0.0));
        q.step_down();
        assert!(q.lag().is_empty(), "a follower has no followers");
    }

    #[test]
    fn five_replicas_need_three() {
        let q = leader_of(&["b", "c", "d", "e"]);
        q.set_local(9);
        q.ack("b", 9);
        assert_eq!(q.commit(), 0);
        q.ack("c", 4);
        assert_eq!(q.commit(), 4);
    }

    /// Point 2: a step-down fails the waiters, and the commit offset is not recomputed
    /// from the leader's own log (before, the follower set was emptied and the commit
    /// jumped to the leader's log end, reporting unreplicated writes as committed).
    #[test]
    fn stepping_down_fails_waiters_and_commits_nothing_more() {
        let q = std::sync::Arc::new(leader_of(&["b", "c"]));
        q.set_local(8);
        q.ack("b", 2);
        assert_eq!(q.commit(), 2);
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || q.wait_blocking(8, 1, Duration::from_secs(10)))
        };
        // Whether the waiter already waits or starts after the fence, it must fail.
        q.step_down();
        assert_eq!(waiter.join().unwrap(), Err(WaitError::SteppedDown));
        assert_eq!(q.commit(), 2, "nothing commits on the leader's word alone");
        q.set_voters(&[]);
        q.set_local(9);
        assert_eq!(q.commit(), 2, "a former leader commits nothing");
        assert_eq!(
            q.wait_blocking(2, 1, Duration::from_millis(1)),
            Ok(()),
            "what was committed stays committed"
        );
        assert_eq!(
            q.wait_blocking(5, 1, Duration::from_millis(1)),
            Err(WaitError::SteppedDown)
        );
    }

    #[tokio::test]
    async fn async_waiters_wake_on_commit_and_on_step_down() {
        let q = std::sync::Arc::new(leader_of(&["b", "c"]));
        q.set_local(4);
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.wait(4, 1, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        q.ack("c", 4);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        q.set_local(6);
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.wait(6, 1, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        q.step_down();
        assert_eq!(waiting.await.unwrap(), Err(WaitError::SteppedDown));
        assert_eq!(
            q.wait(7, 1, Duration::from_millis(5)).await,
            Err(WaitError::SteppedDown)
        );
    }

    #[test]
    fn a_waiter_of_an_older_term_is_not_answered_by_a_newer_one() {
        let q = leader_of(&["b", "c"]);
        q.set_local(3);
        q.lead(2, 4, &voters(&["b", "c"]));
        assert_eq!(
            q.wait_blocking(3, 1, Duration::from_millis(1)),
            Err(WaitError::SteppedDown)
        );
    }

    /// Replicas are counted only for offsets of the leader's own term.
    #[test]
    fn entries_of_earlier_terms_commit_only_under_one_of_this_term() {
        let q = Quorum::default();
        // Offsets 1..=5 are from earlier terms; this term starts at 6.
        q.lead(3, 6, &voters(&["b", "c"]));
        q.set_local(5);
        q.ack("b", 5);
        assert_eq!(q.commit(), 0, "a majority holds 5, but 5 is not of term 3");
        assert!(!q.committed_in_own_term(), "not ready for leader reads yet");
        q.set_local(6);
        q.ack("b", 6);
        assert_eq!(q.commit(), 6, "committing 6 commits everything below it");
        assert!(q.committed_in_own_term());
        // A log that starts in this term has nothing earlier to wait for.
        let fresh = Quorum::default();
        fresh.lead(1, 1, &voters(&["b", "c"]));
        assert!(fresh.committed_in_own_term());
    }

    /// Point 1: offline or dead members still count in the majority.
    #[test]
    fn the_voting_set_does_not_shrink_with_the_followers_shipped_to() {
        let q = leader_of(&["b", "c"]);
        q.set_local(10);
        // b and c are dead: nobody acknowledges; the leader alone is not a majority.
        assert_eq!(q.commit(), 0);
        assert_eq!(q.voter_count(), 3);
        assert_eq!(
            q.wait_blocking(10, 1, Duration::from_millis(5)),
            Err(WaitError::Timeout { commit: 0 })
        );
        // Only removing a member (DelReplica) changes the majority.
        q.set_voters(&voters(&["b"]));
        q.ack("b", 10);
        assert_eq!(q.commit(), 10);
    }
}
