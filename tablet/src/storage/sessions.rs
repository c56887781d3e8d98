//! The idempotence table of a partition replica: for each client, the results of its
//! recent writes by sequence number, so that a retried put or delete is answered with its
//! first result instead of being applied twice.
//!
//! It is state derived from the log: every write with a request id records it in its
//! binlog entry, every replica rebuilds the table by applying those entries (replay,
//! catch-up, follower appends), and a snapshot stores the table as it was at its offset.
//! Expiry is decided by the entries' own write times, so all replicas agree on it.
//!
//! A writer that outlives its process (a taskmanager job, resumed by the next leader)
//! keeps one client id across runs and numbers each run with an epoch. A run registers
//! its epoch (a logged entry) before it writes; from then on writes of older epochs are
//! refused, while the sequence numbers, shared by all runs, still find what an earlier
//! run applied.

use std::collections::{BTreeMap, HashMap};

use tessera_proto::tablet::{AppliedRequest, ClientSession};

use super::entry::RequestId;

/// Sequence numbers this far below a client's highest are forgotten: a retry that old is
/// refused as of unknown outcome rather than risk applying it twice.
pub const SEQ_WINDOW: u64 = 16_384;
/// How often (by write time) silent clients are looked for.
const SWEEP_EVERY_MS: i64 = 60_000;

/// What a write's request id says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not applied yet.
    New,
    /// Applied before, with this result.
    Applied(Applied),
    /// Older than the window: it may or may not have been applied.
    TooOld { highest: u64 },
    /// Sent by a run of the writer other than the one registered (0: none is): refused
    /// unapplied.
    Fenced { registered: u64 },
}

/// Where a write went and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub term: u64,
    pub offset: u64,
    /// Rows a delete removed.
    pub deleted: u64,
}

#[derive(Debug, Clone, Default)]
struct Client {
    last_seen_ms: i64,
    highest: u64,
    applied: BTreeMap<u64, Applied>,
    /// The newest epoch registered (0: none).
    epoch: u64,
}

#[derive(Debug, Clone)]
pub struct Sessions {
    clients: HashMap<u64, Client>,
    /// A client silent for longer than this (by write time) is forgotten.
    expiry_ms: i64,
    last_sweep_ms: i64,
}

impl Sessions {
    pub fn new(expiry_ms: i64) -> Sessions {
        Sessions {
            clients: HashMap::new(),
            expiry_ms,
            last_sweep_ms: i64::MIN,
        }
    }

    pub fn check(&self, id: RequestId) -> Seen {
        let client = self.clients.get(&id.client_id);
        // A run of a registering writer writes only as the epoch registered here: an
        // older run was taken over, and a writer this replica does not know (forgotten
        // after client_expiry) must register again before its retries can be judged.
        if id.epoch > 0 {
            let registered = client.map_or(0, |c| c.epoch);
            if registered != id.epoch {
                return Seen::Fenced { registered };
            }
        }
        let Some(client) = client else {
            return Seen::New;
        };
        if let Some(applied) = client.applied.get(&id.seq) {
            return Seen::Applied(*applied);
        }
        if id.seq.saturating_add(SEQ_WINDOW) <= client.highest {
            return Seen::TooOld {
                highest: client.highest,
            };
        }
        Seen::New
    }

    /// Records an applied write; `write_time_ms` is its entry's.
    pub fn record(&mut self, id: RequestId, applied: Applied, write_time_ms: i64) {
        let client = self.clients.entry(id.client_id).or_default();
        client.last_seen_ms = client.last_seen_ms.max(write_time_ms);
        client.highest = client.highest.max(id.seq);
        client.applied.insert(id.seq, applied);
        let floor = client.highest.saturating_sub(SEQ_WINDOW);
        while let Some((&seq, _)) = client.applied.first_key_value() {
            if seq > floor {
                break;
            }
            client.applied.remove(&seq);
        }
        if write_time_ms.saturating_sub(self.last_sweep_ms) >= SWEEP_EVERY_MS {
            self.last_sweep_ms = write_time_ms;
            let expiry = self.expiry_ms;
            self.clients
                .retain(|_, c| write_time_ms.saturating_sub(c.last_seen_ms) <= expiry);
        }
    }

    /// Whether `client_id` may register `epoch`: not if a newer one is registered.
    pub fn check_register(&self, client_id: u64, epoch: u64) -> Result<(), u64> {
        match self.clients.get(&client_id) {
            Some(client) if client.epoch > epoch => Err(client.epoch),
            _ => Ok(()),
        }
    }

    /// Records a logged registration: older epochs of the writer are refused from now on.
    pub fn register(&mut self, client_id: u64, epoch: u64, write_time_ms: i64) {
        let client = self.clients.entry(client_id).or_default();
        client.epoch = client.epoch.max(epoch);
        client.last_seen_ms = client.last_seen_ms.max(write_time_ms);
    }

    /// The epoch `client_id` registered last (0: none, or forgotten).
    pub fn epoch(&self, client_id: u64) -> u64 {
        self.clients.get(&client_id).map_or(0, |c| c.epoch)
    }

    /// The highest sequence number of `client_id` this replica remembers (0: none).
    pub fn highest(&self, client_id: u64) -> u64 {
        self.clients.get(&client_id).map_or(0, |c| c.highest)
    }

    /// Fills in the rows a delete removed, once it is applied.
    pub fn set_deleted(&mut self, id: RequestId, deleted: u64) {
        if let Some(applied) = self
            .clients
            .get_mut(&id.client_id)
            .and_then(|c| c.applied.get_mut(&id.seq))
        {
            applied.deleted = deleted;
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The table as it stands at `through` (a snapshot's offset): requests logged after
    /// it are left out, since the log after the snapshot may still be cut. The newest
    /// epoch is kept even if registered later: an epoch exists only once its run took
    /// the writer over, so refusing older runs early is never wrong.
    pub fn to_proto(&self, through: u64) -> Vec<ClientSession> {
        let mut out: Vec<ClientSession> = self
            .clients
            .iter()
            .map(|(&client_id, c)| ClientSession {
                client_id,
                last_seen_ms: c.last_seen_ms,
                epoch: c.epoch,
                applied: c
                    .applied
                    .iter()
                    .filter(|(_, a)| a.offset <= through)
                    .map(|(&seq, a)| AppliedRequest {
                        seq,
                        term: a.term,
                        offset: a.offset,
                        deleted: a.deleted,
                    })
                    .collect(),
            })
            .filter(|c| !c.applied.is_empty() || c.epoch > 0)
            .collect();
        out.sort_by_key(|c| c.client_id);
        out
    }

    pub fn load_proto(&mut self, sessions: &[ClientSession]) {
        for session in sessions {
            let client = self.clients.entry(session.client_id).or_default();
            client.last_seen_ms = session.last_seen_ms;
            client.epoch = client.epoch.max(session.epoch);
            for a in &session.applied {
                client.highest = client.highest.max(a.seq);
                client.applied.insert(
                    a.seq,
                    Applied {
                        term: a.term,
                        offset: a.offset,
                        deleted: a.deleted,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client_id: u64, seq: u64) -> RequestId {
        RequestId {
            client_id,
            seq,
            epoch: 0,
        }
    }

    fn at(offset: u64) -> Applied {
        Applied {
            term: 1,
            offset,
            deleted: 0,
        }
    }

    #[test]
    fn a_retry_finds_its_first_result_even_out_of_order() {
        let mut s = Sessions::new(3_600_000);
        assert_eq!(s.check(id(1, 5)), Seen::New);
        s.record(id(1, 5), at(10), 0);
        s.record(id(1, 3), at(11), 0);
        assert_eq!(s.check(id(1, 5)), Seen::Applied(at(10)));
        assert_eq!(s.check(id(1, 3)), Seen::Applied(at(11)));
        assert_eq!(
            s.check(id(1, 4)),
            Seen::New,
            "a concurrent request not seen yet"
        );
        assert_eq!(s.check(id(2, 5)), Seen::New, "another client");
    }

    #[test]
    fn the_window_forgets_old_sequences_and_says_so() {
        let mut s = Sessions::new(3_600_000);
        s.record(id(1, 1), at(1), 0);
        s.record(id(1, 1 + SEQ_WINDOW), at(2), 0);
        assert_eq!(
            s.check(id(1, 1)),
            Seen::TooOld {
                highest: 1 + SEQ_WINDOW
            }
        );
        assert_eq!(s.to_proto(u64::MAX)[0].applied.len(), 1);
    }

    #[test]
    fn silent_clients_expire_by_write_time() {
        let mut s = Sessions::new(1_000);
        s.record(id(1, 1), at(1), 0);
        s.record(id(2, 1), at(2), 500);
        s.record(id(3, 1), at(3), 70_000);
        assert_eq!(s.check(id(1, 1)), Seen::New, "client 1 was silent too long");
        assert_eq!(s.client_count(), 1);
    }

    #[test]
    fn round_trips_through_the_snapshot_form() {
        let mut s = Sessions::new(3_600_000);
        s.record(id(7, 2), at(4), 9);
        let mut back = Sessions::new(3_600_000);
        s.record(id(7, 3), at(5), 9);
        back.load_proto(&s.to_proto(4));
        assert_eq!(back.check(id(7, 2)), Seen::Applied(at(4)));
        assert_eq!(
            back.check(id(7, 3)),
            Seen::New,
            "a request logged after the snapshot's offset is not in it"
        );
        assert_eq!(back.to_proto(u64::MAX), s.to_proto(4));
    }

    #[test]
    fn a_registered_epoch_fences_older_runs_but_keeps_their_writes() {
        let mut s = Sessions::new(3_600_000);
        let run = |epoch, seq| RequestId {
            client_id: 5,
            seq,
            epoch,
        };
        assert_eq!(
            s.check(run(1, 1)),
            Seen::Fenced { registered: 0 },
            "a run writes only once registered"
        );
        s.register(5, 1, 0);
        assert_eq!(s.check(run(1, 1)), Seen::New);
        s.record(run(1, 1), at(1), 0);
        assert_eq!(s.check_register(5, 2), Ok(()));
        s.register(5, 2, 0);
        assert_eq!(s.check(run(1, 2)), Seen::Fenced { registered: 2 });
        assert_eq!(
            s.check(run(2, 1)),
            Seen::Applied(at(1)),
            "the new run finds what the old one wrote"
        );
        assert_eq!(s.check(run(2, 2)), Seen::New);
        assert_eq!(
            s.check(run(3, 2)),
            Seen::Fenced { registered: 2 },
            "a run that has not registered here"
        );
        assert_eq!(s.epoch(5), 2);
        assert_eq!(s.check_register(5, 1), Err(2));
        assert_eq!(s.check_register(5, 2), Ok(()), "a retried registration");
        assert_eq!(s.highest(5), 1);
        let mut back = Sessions::new(3_600_000);
        back.load_proto(&s.to_proto(0));
        assert_eq!(
            back.check(run(1, 9)),
            Seen::Fenced { registered: 2 },
            "a snapshot keeps the epoch even with no request in it"
        );
    }
}
