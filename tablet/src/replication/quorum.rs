//! The commit offset of a leader: the highest offset a majority of the replicas, leader
//! included, holds durably. Quorum writes wait on it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// The leader's own durable offset.
    local: u64,
    /// Each follower's acknowledged (durable) offset.
    followers: BTreeMap<String, u64>,
    commit: u64,
}

impl State {
    fn recompute(&mut self) {
        let mut offsets: Vec<u64> = self.followers.values().copied().collect();
        offsets.push(self.local);
        offsets.sort_unstable_by(|a, b| b.cmp(a));
        let majority = offsets.len() / 2 + 1;
        // Never backwards: a replica leaving the set does not un-commit anything.
        self.commit = self.commit.max(offsets[majority - 1]);
    }
}

#[derive(Debug, Default)]
pub struct Quorum {
    state: Mutex<State>,
    advanced: Condvar,
}

/// How long a quorum write waited before giving up.
#[derive(Debug, PartialEq, Eq)]
pub struct QuorumTimeout {
    pub commit: u64,
}

impl Quorum {
    /// Replaces the follower set, keeping what is known of the ones that stay.
    pub fn set_followers(&self, followers: &[String]) {
        let mut state = self.state.lock();
        let old = std::mem::take(&mut state.followers);
        state.followers = followers
            .iter()
            .map(|f| (f.clone(), old.get(f).copied().unwrap_or(0)))
            .collect();
        state.recompute();
        self.advanced.notify_all();
    }

    pub fn set_local(&self, durable: u64) {
        let mut state = self.state.lock();
        if durable > state.local {
            state.local = durable;
            state.recompute();
            self.advanced.notify_all();
        }
    }

    /// A follower holds everything through `offset` durably.
    pub fn ack(&self, follower: &str, offset: u64) {
        let mut state = self.state.lock();
        if let Some(acked) = state.followers.get_mut(follower) {
            if offset > *acked {
                *acked = offset;
                state.recompute();
                self.advanced.notify_all();
            }
        }
    }

    /// Forgets acknowledgements above `offset` (the log was cut back there).
    pub fn reset(&self, offset: u64) {
        let mut state = self.state.lock();
        state.local = state.local.min(offset);
        for acked in state.followers.values_mut() {
            *acked = (*acked).min(offset);
        }
        state.commit = state.commit.min(offset);
    }

    pub fn commit(&self) -> u64 {
        self.state.lock().commit
    }

    pub fn acked(&self) -> BTreeMap<String, u64> {
        self.state.lock().followers.clone()
    }

    /// Blocks until `offset` is committed, or `timeout` passes.
    pub fn wait(&self, offset: u64, timeout: Duration) -> Result<(), QuorumTimeout> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        while state.commit < offset {
            if self.advanced.wait_until(&mut state, deadline).timed_out() && state.commit < offset {
                return Err(QuorumTimeout {
                    commit: state.commit,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn followers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn majority_of_three_needs_one_follower() {
        let q = Quorum::default();
        q.set_followers(&followers(&["b", "c"]));
        q.set_local(10);
        assert_eq!(q.commit(), 0);
        q.ack("c", 7);
        assert_eq!(q.commit(), 7);
        q.ack("b", 12);
        assert_eq!(q.commit(), 10, "the leader's own durable offset bounds it");
        q.ack("x", 100);
        assert_eq!(q.commit(), 10, "unknown followers do not vote");
    }

    #[test]
    fn alone_the_leader_commits_what_it_holds() {
        let q = Quorum::default();
        q.set_local(5);
        assert_eq!(q.commit(), 5);
        assert!(q.wait(5, Duration::from_millis(1)).is_ok());
    }

    #[test]
    fn waiting_times_out_without_a_majority() {
        let q = Quorum::default();
        q.set_followers(&followers(&["b", "c"]));
        q.set_local(3);
        assert_eq!(
            q.wait(3, Duration::from_millis(20)),
            Err(QuorumTimeout { commit: 0 })
        );
        let q = std::sync::Arc::new(q);
        let acker = {
            let q = q.clone();
            std::thread::spawn(move || q.ack("b", 3))
        };
        assert!(q.wait(3, Duration::from_secs(5)).is_ok());
        acker.join().unwrap();
    }

    #[test]
    fn five_replicas_need_three() {
        let q = Quorum::default();
        q.set_followers(&followers(&["b", "c", "d", "e"]));
        q.set_local(9);
        q.ack("b", 9);
        assert_eq!(q.commit(), 0);
        q.ack("c", 4);
        assert_eq!(q.commit(), 4);
    }
}
