//! Heartbeats batched per follower tablet. Every `HEARTBEAT`, one `Heartbeat` call to
//! each tablet this one ships to carries a beat for every partition it leads with a
//! replica there that needs one, instead of one message per partition on each
//! partition's stream: at thousands of partitions per tablet, per-partition heartbeats
//! alone would fill the CPU.
//!
//! Each call renews the follower tablet's grant to this tablet (`pair_lease`), which
//! renews the read lease of every partition in it: a partition whose follower answered
//! its beat in step, in the grant, needs no beat of its own until it moves (a write, a
//! new commit offset) or the grant changes generation. A granted beat renews the
//! partition's lease from when the call was sent, as an answer on the stream does. A
//! beat the follower does not grant, or one that finds its log elsewhere, wakes the
//! partition's link, which probes on its own stream where every check of an append
//! applies; so does a follower too old to know the call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::cluster_secret::{self, InternalChannel};
use tessera_common::failure_detection::{HEARTBEAT, LEADER_LEASE};
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{BeatAnswer, HeartbeatRequest, PartitionBeat};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::debug;

use super::leader::{Beating, Replicators};
use super::pair_lease::PeerGrant;
use super::quorum::PairMark;
use crate::storage::Table;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One partition's beat in a batch, and what to do with its answer.
pub(super) struct Beat {
    pub table: Arc<Table>,
    pub term: u64,
    /// The partition's link to this follower.
    pub link: Arc<Beating>,
    pub last_offset: u64,
    pub last_term: u64,
    pub commit_offset: u64,
}

/// A link's last answer in step, in the follower's grant: the partition's last offset
/// and commit offset the beat carried, and the mark of its join to the grant. While the
/// offsets stay there and the join stands, the follower has nothing to learn from a beat
/// of its own. All atomics: a round reads them for every idle partition, with no lock.
#[derive(Debug)]
pub(super) struct Quiet {
    last_offset: AtomicU64,
    commit_offset: AtomicU64,
    epoch: AtomicU64,
    resets: AtomicU64,
}

/// No answer in step yet.
const UNSEEN: u64 = u64::MAX;

impl Default for Quiet {
    fn default() -> Quiet {
        Quiet {
            last_offset: AtomicU64::new(UNSEEN),
            commit_offset: AtomicU64::new(UNSEEN),
            epoch: AtomicU64::new(UNSEEN),
            resets: AtomicU64::new(UNSEEN),
        }
    }
}

impl Quiet {
    /// The mark of the join the follower last answered in step with, if the partition
    /// has not moved from where it stood then.
    pub(super) fn still(&self, last_offset: u64, commit_offset: u64) -> Option<PairMark> {
        let unmoved = self.last_offset.load(Ordering::Acquire) == last_offset
            && self.commit_offset.load(Ordering::Acquire) == commit_offset;
        unmoved.then(|| PairMark {
            epoch: self.epoch.load(Ordering::Acquire),
            resets: self.resets.load(Ordering::Acquire),
        })
    }

    /// Answers of one link are settled one call at a time, so the mark and the offsets
    /// written here are read together: the mark first, then the offsets that make it
    /// count.
    fn set(&self, last_offset: u64, commit_offset: u64, mark: PairMark) {
        self.epoch.store(mark.epoch, Ordering::Release);
        self.resets.store(mark.resets, Ordering::Release);
        self.last_offset.store(last_offset, Ordering::Release);
        self.commit_offset.store(commit_offset, Ordering::Release);
    }

    pub(super) fn clear(&self) {
        self.last_offset.store(UNSEEN, Ordering::Release);
        self.commit_offset.store(UNSEEN, Ordering::Release);
    }
}

/// A follower tablet: one long-lived channel, and whether a call to it is on the way
/// (a slow follower gets no second call piled on the first).
struct Peer {
    client: TabletClient<InternalChannel>,
    calling: Arc<AtomicBool>,
}

impl Peer {
    fn connect(follower: &str) -> Option<Peer> {
        let endpoint = tessera_common::tls::endpoint(follower, CONNECT_TIMEOUT).ok()?;
        Some(Peer {
            client: TabletClient::new(cluster_secret::internal(endpoint.connect_lazy())),
            calling: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Sends the batched heartbeats until `stop` turns true.
pub async fn run(replicators: Arc<Replicators>, mut stop: watch::Receiver<bool>) {
    let mut peers: HashMap<String, Peer> = HashMap::new();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let batches = replicators.beats_by_follower();
        // A peer with a call on the way is kept, so no second call overlaps it.
        peers.retain(|follower, peer| {
            batches.contains_key(follower) || peer.calling.load(Ordering::Acquire)
        });
        for (follower, beats) in batches {
            if !peers.contains_key(&follower) {
                match Peer::connect(&follower) {
                    Some(peer) => peers.insert(follower.clone(), peer),
                    None => continue,
                };
            }
            let peer = &peers[&follower];
            if peer.calling.swap(true, Ordering::AcqRel) {
                continue;
            }
            let call = Call {
                client: peer.client.clone(),
                _calling: Calling(peer.calling.clone()),
                leader: replicators.endpoint().to_string(),
                grant: replicators.peer_grants().of(&follower),
                follower,
                beats,
            };
            tokio::spawn(call.run());
        }
    }
}

/// A peer's call on the way; the flag drops with the call, however it ends.
struct Calling(Arc<AtomicBool>);

impl Drop for Calling {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// One batched heartbeat to one follower tablet.
struct Call {
    client: TabletClient<InternalChannel>,
    _calling: Calling,
    leader: String,
    follower: String,
    /// The follower tablet's grant, as this tablet knows it.
    grant: Arc<PeerGrant>,
    beats: Vec<Beat>,
}

impl Call {
    async fn run(mut self) {
        let request = HeartbeatRequest {
            leader: self.leader.clone(),
            lease_ms: LEADER_LEASE.as_millis() as u32,
            beats: self
                .beats
                .iter()
                .map(|beat| {
                    let meta = beat.table.meta();
                    PartitionBeat {
                        tid: meta.tid,
                        pid: meta.pid,
                        term: beat.term,
                        last_offset: beat.last_offset,
                        last_term: beat.last_term,
                        commit_offset: beat.commit_offset,
                    }
                })
                .collect(),
        };
        // Taken before the call can reach the follower: a lease dated from it never
        // starts after the follower granted it.
        let sent = Instant::now();
        // An answer later than a lease renews nothing.
        let answer = tokio::time::timeout(LEADER_LEASE, self.client.heartbeat(request)).await;
        match answer {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                if answer.answers.len() != self.beats.len() {
                    debug!(follower = %self.follower, "a heartbeat answer of the wrong length");
                    return self.kick_all();
                }
                // The grant's renewal counts first for the partitions that joined it in
                // this epoch; an answer in a new generation ends the epoch, so none that
                // may have left counts it (a follower too old to have a grant names none).
                let epoch = (answer.grant_id != 0).then(|| {
                    self.grant
                        .answered(answer.grant_id, answer.grant_generation, sent)
                });
                for (beat, answer) in self.beats.iter().zip(&answer.answers) {
                    self.settle(beat, answer, sent, epoch);
                }
            }
            // A follower that does not know the call: its links heartbeat on their
            // streams, as before batching.
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => self.kick_all(),
            // Unreachable or slow: nothing is renewed, and the partitions' streams have
            // nothing better to offer.
            Ok(Err(status)) => {
                debug!(follower = %self.follower, error = %status.message(), "heartbeat failed")
            }
            Err(_) => debug!(follower = %self.follower, "heartbeat unanswered within a lease"),
        }
    }

    fn settle(&self, beat: &Beat, answer: &BeatAnswer, sent: Instant, epoch: Option<u64>) {
        let granted = answer.granted && answer.term == beat.term;
        if granted {
            beat.table.lease_heard(&self.follower, beat.term, sent);
        }
        let joined = match epoch {
            Some(epoch) if granted && answer.in_grant => {
                beat.table
                    .join_pair(&self.follower, beat.term, &self.grant, epoch)
            }
            _ => None,
        };
        match joined {
            Some(mark) if answer.in_step => {
                beat.link
                    .quiet
                    .set(beat.last_offset, beat.commit_offset, mark)
            }
            _ => beat.link.quiet.clear(),
        }
        if !answer.granted || !answer.in_step {
            beat.link.kick.notify_one();
        }
    }

    fn kick_all(&self) {
        for beat in &self.beats {
            beat.link.quiet.clear();
            beat.link.kick.notify_one();
        }
    }
}
