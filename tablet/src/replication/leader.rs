//! The leader's side of log shipping: one task per follower, each holding a long-lived
//! AppendEntries stream. A task sends what the follower lacks in batches (everything
//! appended since the previous batch, up to 1 MiB), keeps up to four batches on the way
//! (the follower answers in order), and tells a new commit offset at once. Heartbeats go
//! batched per follower tablet (`heartbeat`); an idle link sends on its stream only when
//! a heartbeat's answer wakes it, and otherwise every `IDLE_PROBE`. A follower the
//! binlog no longer reaches gets the snapshot first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_common::cluster_secret;
use tessera_common::failure_detection::LEADER_LEASE;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{
    AppendEntriesRequest, AppendEntriesResponse, AppendResult, FollowerStatus, LogRecord,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::heartbeat::{Beat, Quiet};
use super::history;
use super::link_channels::LinkChannels;
use super::pair_lease::{PairGrants, PeerGrant, PeerGrants};
use super::reach::{Reach, Turn};
use super::transfer;
use crate::catalog::Catalog;
use crate::storage::binlog::{BinlogReader, ReadError};
use crate::storage::Table;

/// Records per AppendEntries batch, at most about this many payload bytes.
const BATCH_BYTES: usize = 1 << 20;
/// A follower at most this many records behind, read by a reader already positioned, is
/// read for on the async worker (the records are fresh in the page cache); otherwise
/// the read (which may scan a segment to find its start) runs on the blocking pool.
const NEAR_TAIL: u64 = 1024;
/// A follower that does not answer within this is taken for gone; the link restarts.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches a link keeps on the way to its follower before it waits for an answer, so a
/// round trip does not cap throughput.
const MAX_IN_FLIGHT: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// An idle link probes on its own stream this often even when the batched heartbeats
/// need nothing of it: a check that the stream still carries.
const IDLE_PROBE: Duration = Duration::from_secs(10);

/// What the leader knows of one follower link, for GetFollowerStatus.
#[derive(Debug, Clone, Default)]
pub struct LinkStatus {
    pub connected: bool,
    pub error: String,
}

struct Link {
    stop: watch::Sender<bool>,
    status: Arc<Mutex<LinkStatus>>,
    /// The term the link ships for; a new term gets new links.
    term: u64,
    /// The replica it ships for (the catalog's, as of the last `sync_table`).
    table: Weak<Table>,
    /// What the heartbeat loop needs of the link.
    beating: Arc<Beating>,
}

/// A link as the heartbeat loop needs it: shared, so a round copies one pointer per
/// link.
pub(super) struct Beating {
    /// Makes the link probe on its stream now.
    pub(super) kick: Notify,
    /// Where the partition stood when the follower last answered its beat in step.
    pub(super) quiet: Quiet,
    /// The follower tablet's grant, as this tablet knows it.
    pub(super) grant: Arc<PeerGrant>,
}

/// A partition's links as the heartbeat rounds walk them.
struct RosterTable {
    table: Weak<Table>,
    term: u64,
    /// Each link with its follower's index in [`Roster::followers`].
    links: Vec<(usize, Arc<Beating>)>,
}

/// What every heartbeat round walks: each partition led here with its links, and the
/// follower tablets. Built again only after the links change, so an idle round looks up
/// no table and copies nothing but the few beats that go.
struct Roster {
    followers: Vec<String>,
    tables: Vec<RosterTable>,
}

impl Roster {
    fn of(links: &HashMap<(u32, u32), HashMap<String, Link>>) -> Roster {
        let mut followers: Vec<String> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut tables = Vec::new();
        for table_links in links.values() {
            // Every link of a partition ships for its term now (`sync_table`).
            let Some(first) = table_links.values().next() else {
                continue;
            };
            debug_assert!(table_links.values().all(|link| link.term == first.term));
            let links = table_links
                .iter()
                .filter(|(_, link)| link.term == first.term)
                .map(|(follower, link)| {
                    let at = *index.entry(follower).or_insert_with(|| {
                        followers.push(follower.clone());
                        followers.len() - 1
                    });
                    (at, link.beating.clone())
                })
                .collect();
            tables.push(RosterTable {
                table: first.table.clone(),
                term: first.term,
                links,
            });
        }
        Roster { followers, tables }
    }
}

/// Every replicator of this tablet.
pub struct Replicators {
    catalog: Arc<Catalog>,
    /// This tablet's endpoint, named as leader in every request.
    endpoint: String,
    links: Mutex<HashMap<(u32, u32), HashMap<String, Link>>>,
    /// Per partition, the change number of the replica's state the links were last
    /// synced to (see `sync_table`); taken only under `links`.
    applied: Mutex<HashMap<(u32, u32), u64>>,
    /// The heartbeat rounds' view of `links`; `None` once they changed.
    roster: Mutex<Option<Arc<Roster>>>,
    /// The connections the links share (see `link_channels`).
    channels: LinkChannels,
    /// Which followers answer: a silent one is tried by one link at a time (see `reach`).
    reach: Reach,
    /// As a follower tablet: this tablet's grant to each leader tablet.
    grants: PairGrants,
    /// As a leader tablet: each follower tablet's grant, as its answers tell it.
    peer_grants: PeerGrants,
}

impl Replicators {
    pub fn new(catalog: Arc<Catalog>, endpoint: String) -> Arc<Replicators> {
        Arc::new(Replicators {
            catalog,
            endpoint,
            links: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
            roster: Mutex::new(None),
            channels: LinkChannels::default(),
            reach: Reach::default(),
            grants: PairGrants::default(),
            peer_grants: PeerGrants::default(),
        })
    }

    pub fn grants(&self) -> &PairGrants {
        &self.grants
    }

    pub(super) fn peer_grants(&self) -> &PeerGrants {
        &self.peer_grants
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Starts and stops links so they match the table's role and followers now.
    pub fn sync_table(self: &Arc<Self>, table: &Arc<Table>) {
        let meta = table.meta();
        let (tid, pid) = (meta.tid, meta.pid);
        // A caller may hold a copy the catalog has replaced since (reloaded while a role
        // change waited): the links follow the catalog's. One the catalog no longer
        // holds (dropped, or failed) has no links: made for the caller's copy, they would
        // retry for ever.
        let Ok(current) = self.catalog.get(tid, pid) else {
            self.stop_table_unless_loaded(tid, pid);
            return;
        };
        let table = &current;
        // Read before the links' lock is taken: the replica's lock is held across the
        // fsync of a state change, and the links' lock is every partition's.
        let view = table.shipping_view();
        let wanted = view.followers;
        let mut links = self.links.lock();
        // Looked up again under the lock (the catalog's lock is never held across an
        // fsync): a copy dropped meanwhile gets no links; one replaced meanwhile is
        // synced by whoever replaced it.
        match self.catalog.get(tid, pid) {
            Err(_) => {
                self.forget_table(&mut links, tid, pid);
                return;
            }
            Ok(now) if !Arc::ptr_eq(&now, &current) => return,
            Ok(_) => {}
        }
        // Two syncs of one partition apply what they read in the order of its changes:
        // one that read an older role or follower set, late to the lock, is dropped
        // instead of undoing the newer one (a leader left shipping to nobody).
        {
            let mut applied = self.applied.lock();
            let last = applied.entry((tid, pid)).or_insert(0);
            if *last > view.seq {
                return;
            }
            *last = view.seq;
        }
        let term = view.term;
        if wanted.is_empty() && !links.contains_key(&(tid, pid)) {
            // A follower's replica: nothing to ship, and no entry to walk past.
            return;
        }
        let table_links = links.entry((tid, pid)).or_default();
        let before = table_links.len();
        table_links.retain(|follower, link| {
            let keep = wanted.contains(follower) && link.term == term;
            if !keep {
                let _ = link.stop.send(true);
            }
            keep
        });
        let mut changed = table_links.len() != before;
        for link in table_links.values_mut() {
            // The catalog may hold a new copy of the replica (loaded again).
            if !std::ptr::eq(link.table.as_ptr(), Arc::as_ptr(table)) {
                link.table = Arc::downgrade(table);
                // What the follower answered was about the other copy.
                link.beating.quiet.clear();
                changed = true;
            }
        }
        for follower in wanted {
            if table_links.contains_key(&follower) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let status = Arc::new(Mutex::new(LinkStatus::default()));
            let beating = Arc::new(Beating {
                kick: Notify::new(),
                quiet: Quiet::default(),
                grant: self.peer_grants.of(&follower),
            });
            let task = LinkTask {
                beating: beating.clone(),
                replicators: self.clone(),
                tid,
                pid,
                term,
                follower: follower.clone(),
                status: status.clone(),
            };
            tokio::spawn(task.run(stopped));
            table_links.insert(
                follower,
                Link {
                    stop,
                    status,
                    term,
                    table: Arc::downgrade(table),
                    beating,
                },
            );
            changed = true;
        }
        if table_links.is_empty() {
            links.remove(&(tid, pid));
        }
        if changed {
            *self.roster.lock() = None;
        }
    }

    /// Whether any replication link of the table runs.
    pub fn ships(&self, tid: u32, pid: u32) -> bool {
        self.links.lock().contains_key(&(tid, pid))
    }

    /// Stops every link of a table.
    pub fn stop_table(&self, tid: u32, pid: u32) {
        self.remove_links(&mut self.links.lock(), tid, pid);
    }

    /// Stops every link of a table the catalog no longer holds. Checked under the links'
    /// lock, as `sync_table` reads the catalog: a load of the table racing this call
    /// either finds its links stopped first and starts them again, or is seen here.
    pub fn stop_table_unless_loaded(&self, tid: u32, pid: u32) {
        let mut links = self.links.lock();
        if self.catalog.get(tid, pid).is_err() {
            self.forget_table(&mut links, tid, pid);
        }
    }

    /// Stops the links of a table the catalog no longer holds and forgets the state
    /// they were synced to: a later copy numbers its states above it, and a sync of the
    /// old copy finds it gone. (A table still in the catalog keeps the number, or a sync
    /// that read an older state could land after `stop_table`.)
    fn forget_table(
        &self,
        links: &mut HashMap<(u32, u32), HashMap<String, Link>>,
        tid: u32,
        pid: u32,
    ) {
        self.remove_links(links, tid, pid);
        self.applied.lock().remove(&(tid, pid));
    }

    fn remove_links(
        &self,
        links: &mut HashMap<(u32, u32), HashMap<String, Link>>,
        tid: u32,
        pid: u32,
    ) {
        if let Some(links) = links.remove(&(tid, pid)) {
            for link in links.values() {
                let _ = link.stop.send(true);
            }
            *self.roster.lock() = None;
        }
    }

    pub fn stop_all(&self) {
        let mut links = self.links.lock();
        self.applied.lock().clear();
        for (_, links) in links.drain() {
            for link in links.values() {
                let _ = link.stop.send(true);
            }
        }
        *self.roster.lock() = None;
    }

    /// The roster as the links stand now.
    fn roster(&self) -> Arc<Roster> {
        let links = self.links.lock();
        let mut roster = self.roster.lock();
        roster
            .get_or_insert_with(|| Arc::new(Roster::of(&links)))
            .clone()
    }

    /// For each follower tablet, a beat for every partition led here in the term its
    /// link ships for, but those the follower's grant renews that have not moved since
    /// the follower last answered in step: a follower with nothing to hear still gets a
    /// (then empty) beat, which renews its grant.
    pub(super) fn beats_by_follower(&self) -> HashMap<String, Vec<Beat>> {
        let roster = self.roster();
        let mut batches: Vec<Vec<Beat>> = roster.followers.iter().map(|_| Vec::new()).collect();
        for entry in &roster.tables {
            // Dropped since, or not leading in the links' term: nothing to beat for.
            let Some(table) = entry.table.upgrade() else {
                continue;
            };
            if table.leading_term() != Some(entry.term) {
                continue;
            }
            let last_offset = table.last_offset();
            let commit_offset = table.commit_offset();
            // The term of the last record, looked up only for a beat that goes.
            let mut last_term = None;
            for (follower, link) in &entry.links {
                let quiet = link
                    .quiet
                    .still(last_offset, commit_offset)
                    .is_some_and(|mark| table.paired(mark, &link.grant));
                if quiet {
                    continue;
                }
                let last_term = *last_term.get_or_insert_with(|| table.term_at(last_offset));
                batches[*follower].push(Beat {
                    table: table.clone(),
                    term: entry.term,
                    link: link.clone(),
                    last_offset,
                    last_term,
                    commit_offset,
                });
            }
        }
        roster.followers.iter().cloned().zip(batches).collect()
    }

    pub fn follower_status(&self, table: &Table) -> Vec<FollowerStatus> {
        let meta = table.meta();
        let acked = table.quorum_acked();
        let links = self.links.lock();
        let table_links = links.get(&(meta.tid, meta.pid));
        acked
            .into_iter()
            .map(|(endpoint, acked_offset)| {
                let status = table_links
                    .and_then(|l| l.get(&endpoint))
                    .map(|l| l.status.lock().clone())
                    .unwrap_or_default();
                FollowerStatus {
                    endpoint,
                    acked_offset,
                    connected: status.connected,
                    error: status.error,
                }
            })
            .collect()
    }
}

/// What the leader does with a follower's answer.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Go on from the follower's `last_offset + 1`, crediting it with `credit` if set
    /// (from a fresh reader position when `resend`).
    Continue {
        credit: Option<u64>,
        resend: bool,
    },
    /// The follower is in a newer term.
    Superseded {
        term: u64,
    },
    SendSnapshot,
    Fail(String),
}

/// Whether a call failed in the transport (no connection, a broken one, no answer in
/// time) rather than with the follower's own answer: tonic keeps the local error as the
/// status's source, and a status the follower sent has none.
fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Decides what an answer proves. Only `Ok` is an acknowledgement: the follower checked
/// that its log continues the leader's at `prev_offset` (same term there), appended the
/// entries and made them durable, so its log agrees with the leader's through
/// `last_offset`. A `Mismatch` only says where the follower's log ends; it may hold
/// other records there, so it proves nothing and is not counted toward the quorum.
fn on_response(response: &AppendEntriesResponse) -> Step {
    match response.result() {
        AppendResult::Ok => Step::Continue {
            credit: Some(response.last_offset),
            resend: false,
        },
        AppendResult::Mismatch => Step::Continue {
            credit: None,
            resend: true,
        },
        AppendResult::StaleTerm => Step::Superseded {
            term: response.term,
        },
        AppendResult::NeedSnapshot => Step::SendSnapshot,
        AppendResult::Unavailable => {
            Step::Fail(format!("follower unavailable: {}", response.message))
        }
    }
}

/// The sending half of a link: requests on the way and what they told the follower.
struct Outbox {
    requests: mpsc::Sender<AppendEntriesRequest>,
    /// The requests still unanswered, oldest first (answers come in order).
    in_flight: VecDeque<Sent>,
    /// The commit offset the follower was last told: it applies up to it.
    told_commit: u64,
    last_sent: Instant,
}

impl Outbox {
    fn has_room(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT
    }

    async fn send(&mut self, request: AppendEntriesRequest) -> Result<(), String> {
        self.told_commit = self.told_commit.max(request.commit_offset);
        // Taken before the request can reach the follower: a lease dated from it never
        // starts after the follower answered.
        let at = Instant::now();
        self.requests
            .send(request)
            .await
            .map_err(|_| "stream closed".to_string())?;
        self.last_sent = at;
        self.in_flight.push_back(Sent { at, due_from: at });
        Ok(())
    }
}

/// A request on the way.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When it was sent: an answer renews the lease from here.
    at: Instant,
    /// Its answer is due `RESPONSE_TIMEOUT` after this (moved on by a snapshot transfer).
    due_from: Instant,
}

struct LinkTask {
    replicators: Arc<Replicators>,
    tid: u32,
    pid: u32,
    term: u64,
    follower: String,
    status: Arc<Mutex<LinkStatus>>,
    beating: Arc<Beating>,
}

/// Why a link ended without an error.
enum LinkEnd {
    /// This replica no longer leads this follower in this term.
    NotLeading,
}

impl LinkTask {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        // Failures in a row: the first is a warning, the retries after it only debug
        // lines (a dead follower of thousands of partitions would fill the log).
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let mut turn = tokio::select! {
                turn = self.replicators.reach.turn(&self.follower) => turn,
                _ = stop.changed() => return,
            };
            let outcome = tokio::select! {
                outcome = self.link(&mut turn) => outcome,
                _ = stop.changed() => return,
            };
            let silent = turn.found_silent();
            drop(turn);
            let was_connected = {
                let mut status = self.status.lock();
                let was_connected = std::mem::replace(&mut status.connected, false);
                if let Err(e) = &outcome {
                    status.error = e.clone();
                }
                was_connected
            };
            match outcome {
                Ok(LinkEnd::NotLeading) => return,
                Err(e) => {
                    // A link the follower answered before it failed starts a new run.
                    if was_connected {
                        failures = 0;
                        backoff = Duration::from_millis(50);
                    }
                    failures += 1;
                    if failures == 1 {
                        warn!(tid = self.tid, pid = self.pid, follower = %self.follower, error = %e, "replication link failed");
                    } else {
                        debug!(tid = self.tid, pid = self.pid, follower = %self.follower, error = %e, failures, "replication link failed again");
                    }
                    // A silent follower is paced by the probes of `reach`; a link whose
                    // follower answered with an error waits on its own backoff.
                    if silent {
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn still_leading(&self, table: &Table) -> bool {
        let view = table.shipping_view();
        view.term == self.term && view.followers.contains(&self.follower)
    }

    async fn link(&self, turn: &mut Turn) -> Result<LinkEnd, String> {
        let table = self
            .replicators
            .catalog
            .get(self.tid, self.pid)
            .map_err(|e| e.to_string())?;
        if !self.still_leading(&table) {
            return Ok(LinkEnd::NotLeading);
        }
        // Held for the link's life: its share of a connection to the follower.
        let shared = self
            .replicators
            .channels
            .acquire(&self.follower, CONNECT_TIMEOUT)?;
        let mut client = TabletClient::new(cluster_secret::internal(shared.channel.clone()))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let (requests, outgoing) = mpsc::channel::<AppendEntriesRequest>(MAX_IN_FLIGHT + 1);
        let mut outbox = Outbox {
            requests,
            in_flight: VecDeque::new(),
            told_commit: 0,
            last_sent: Instant::now(),
        };
        // The first request goes before the call, so the stream opens with it: a probe
        // at our log end, which the follower answers with where its log stands.
        let mut next = table.last_offset() + 1;
        outbox.send(self.request(&table, next, Vec::new())).await?;
        let opened = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            client.append_entries(ReceiverStream::new(outgoing)),
        );
        let mut responses = match opened.await {
            Err(_) => {
                turn.not_answered();
                return Err(format!(
                    "no answer to the stream within {RESPONSE_TIMEOUT:?}"
                ));
            }
            Ok(Err(status)) => {
                if is_transport_failure(&status) {
                    turn.not_answered();
                } else {
                    turn.answered();
                }
                return Err(format!("stream refused: {}", status.message()));
            }
            Ok(Ok(opened)) => {
                turn.answered();
                opened.into_inner()
            }
        };
        let mut appended = table.subscribe_appended();
        let mut commits = table.subscribe_commit();
        let mut reader: Option<BinlogReader> = None;
        // Answers still due for requests sent before the last resend: they may credit
        // the follower, but cannot move `next`.
        let mut stale = 0usize;
        // A batched heartbeat asked for a probe on this stream.
        let mut probe_now = false;
        loop {
            if !self.still_leading(&table) {
                return Ok(LinkEnd::NotLeading);
            }
            let last = table.last_offset();
            // Keep up to MAX_IN_FLIGHT batches on the way.
            if outbox.has_room() && next <= last && stale == 0 {
                match self.read(&table, &mut reader, next).await? {
                    Ok(records) if !records.is_empty() => {
                        let end = records.last().map_or(next - 1, |r| r.offset);
                        outbox.send(self.request(&table, next, records)).await?;
                        next = end + 1;
                        continue;
                    }
                    Ok(_) => {}
                    Err(ReadError::NotRetained { .. }) if outbox.in_flight.is_empty() => {
                        next = self.send_snapshot(&table).await? + 1;
                        reader = None;
                        continue;
                    }
                    // Let the answers on the way come back first.
                    Err(ReadError::NotRetained { .. }) => {}
                }
            }
            let caught_up = next > last;
            if outbox.in_flight.is_empty() {
                // Nothing on the way. An empty request goes at once when the commit
                // offset moved (followers apply, and serve reads, up to it), when a
                // batched heartbeat found the follower out of step, and now and then.
                if probe_now
                    || table.commit_offset() > outbox.told_commit
                    || outbox.last_sent.elapsed() >= IDLE_PROBE
                {
                    probe_now = false;
                    outbox.send(self.request(&table, next, Vec::new())).await?;
                    continue;
                }
                let idle_probe = tokio::time::sleep_until((outbox.last_sent + IDLE_PROBE).into());
                tokio::select! {
                    _ = appended.changed(), if caught_up => {}
                    _ = commits.changed() => {}
                    _ = self.beating.kick.notified() => probe_now = true,
                    _ = idle_probe => {}
                    // With nothing asked, the stream only ends or breaks (a follower
                    // restarted): find out now, not at the next write.
                    unasked = responses.message() => return Err(match unasked {
                        Ok(Some(_)) => "the follower answered nothing asked".to_string(),
                        Ok(None) => "follower closed the stream".to_string(),
                        Err(e) => self.stream_failed(&e),
                    }),
                }
                continue;
            }
            let oldest = *outbox.in_flight.front().expect("requests in flight");
            let overdue = tokio::time::sleep_until((oldest.due_from + RESPONSE_TIMEOUT).into());
            let response = tokio::select! {
                answer = responses.message() => answer
                    .map_err(|e| self.stream_failed(&e))?
                    .ok_or_else(|| "follower closed the stream".to_string())?,
                _ = overdue => {
                    self.replicators.reach.not_answered(&self.follower);
                    return Err("follower did not answer in time".into());
                }
                // Room in the pipeline and new records: go and send them.
                _ = appended.changed(), if caught_up && outbox.has_room() => continue,
            };
            let answered = outbox.in_flight.pop_front().expect("requests in flight");
            {
                let mut status = self.status.lock();
                status.connected = true;
                status.error.clear();
            }
            let moot = stale > 0;
            stale = stale.saturating_sub(1);
            match on_response(&response) {
                Step::Continue { credit, resend } => {
                    // The follower answered in our term: it renews the read lease.
                    table.lease_heard(&self.follower, self.term, answered.at);
                    if let Some(offset) = credit {
                        table.quorum_ack(&self.follower, offset);
                    }
                    if resend && !moot {
                        // Everything sent after it is moot: the follower rejects it.
                        next = response.last_offset + 1;
                        reader = None;
                        stale = outbox.in_flight.len();
                    }
                }
                Step::Superseded { term } => {
                    info!(tid = self.tid, pid = self.pid, follower = %self.follower, term,
                        "a follower is in a newer term: this replica no longer leads");
                    // The fence writes the replica's state to disk: off the runtime.
                    let fencing = table.clone();
                    match tokio::task::spawn_blocking(move || fencing.fence(term)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(error = %e, "fencing after a stale term failed"),
                        Err(e) => warn!(error = %e, "fencing after a stale term failed"),
                    }
                    return Ok(LinkEnd::NotLeading);
                }
                Step::SendSnapshot if moot => {}
                Step::SendSnapshot => {
                    next = self.send_snapshot(&table).await? + 1;
                    reader = None;
                    stale = outbox.in_flight.len();
                    // The transfer took its time; the answers still on the way get theirs.
                    let now = Instant::now();
                    outbox
                        .in_flight
                        .iter_mut()
                        .for_each(|sent| sent.due_from = now);
                }
                Step::Fail(reason) => return Err(reason),
            }
        }
    }

    /// Why an open stream failed; a failure of the transport (the follower's process or
    /// connection gone) marks the follower silent, so the links that try it again take
    /// turns (see `reach`).
    fn stream_failed(&self, status: &tonic::Status) -> String {
        if is_transport_failure(status) {
            self.replicators.reach.not_answered(&self.follower);
        }
        format!("stream failed: {}", status.message())
    }

    /// Reads the next batch from the binlog on the blocking pool.
    async fn read(
        &self,
        table: &Arc<Table>,
        reader: &mut Option<BinlogReader>,
        next: u64,
    ) -> Result<Result<Vec<LogRecord>, ReadError>, String> {
        let mut current = match reader.take() {
            Some(r) if r.next_offset() == next => r,
            _ => BinlogReader::new(&table.dir().join("binlog"), next),
        };
        let upto = table.last_offset();
        let (current, read) = if current.is_positioned() && upto.saturating_sub(next) < NEAR_TAIL {
            // Just written, so in the page cache: cheaper here than a thread hand-off.
            let read = current.read(upto, BATCH_BYTES);
            (current, read)
        } else {
            tokio::task::spawn_blocking(move || {
                let read = current.read(upto, BATCH_BYTES);
                (current, read)
            })
            .await
            .map_err(|e| e.to_string())?
        };
        *reader = Some(current);
        match read.map_err(|e| e.to_string())? {
            Ok(records) => Ok(Ok(records
                .into_iter()
                .map(|r| LogRecord {
                    term: r.term,
                    offset: r.offset,
                    payload: r.payload,
                })
                .collect())),
            Err(e) => Ok(Err(e)),
        }
    }

    fn request(&self, table: &Table, next: u64, entries: Vec<LogRecord>) -> AppendEntriesRequest {
        let prev_offset = next - 1;
        let term_history = table.term_history();
        AppendEntriesRequest {
            tid: self.tid,
            pid: self.pid,
            term: self.term,
            leader: self.replicators.endpoint.clone(),
            prev_offset,
            prev_term: history::term_at(&term_history, prev_offset),
            entries,
            commit_offset: table.commit_offset(),
            leader_term_history: term_history,
            leader_last_offset: table.last_offset(),
            lease_ms: LEADER_LEASE.as_millis() as u32,
        }
    }

    async fn send_snapshot(&self, table: &Arc<Table>) -> Result<u64, String> {
        info!(tid = self.tid, pid = self.pid, follower = %self.follower, "follower is behind the binlog: sending a snapshot");
        let offset = transfer::send_snapshot(
            table.clone(),
            self.term,
            &self.replicators.endpoint,
            &self.follower,
        )
        .await
        .map_err(|e| format!("sending the snapshot failed: {e}"))?;
        table.quorum_ack(&self.follower, offset);
        Ok(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The links tell a follower that is not there from one that answers with an
    /// error by the status's source (see `is_transport_failure`): pinned here against
    /// the transport's way of reporting a refused connection.
    #[tokio::test]
    async fn a_refused_connection_is_a_failure_of_the_transport() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let channel = tessera_common::tls::endpoint(&format!("127.0.0.1:{port}"), CONNECT_TIMEOUT)
            .unwrap()
            .connect_lazy();
        let refused = TabletClient::new(channel)
            .ping(tessera_proto::tablet::PingRequest::default())
            .await
            .expect_err("nothing listens there");
        assert!(is_transport_failure(&refused), "{refused:?}");
        // A status the follower sends carries no local error.
        assert!(!is_transport_failure(&tonic::Status::not_found(
            "no such replica"
        )));
    }

    fn answer(result: AppendResult, last_offset: u64) -> AppendEntriesResponse {
        AppendEntriesResponse {
            result: result as i32,
            term: 4,
            last_offset,
            message: "m".into(),
        }
    }

    /// Point 3: a mismatch names where the follower's log ends, which may hold records
    /// the leader never had; crediting it would count a log that disagrees.
    #[test]
    fn only_a_successful_append_is_an_acknowledgement() {
        assert_eq!(
            on_response(&answer(AppendResult::Ok, 7)),
            Step::Continue {
                credit: Some(7),
                resend: false
            }
        );
        assert_eq!(
            on_response(&answer(AppendResult::Mismatch, 7)),
            Step::Continue {
                credit: None,
                resend: true
            }
        );
        assert_eq!(
            on_response(&answer(AppendResult::StaleTerm, 7)),
            Step::Superseded { term: 4 }
        );
        assert_eq!(
            on_response(&answer(AppendResult::NeedSnapshot, 7)),
            Step::SendSnapshot
        );
        assert!(matches!(
            on_response(&answer(AppendResult::Unavailable, 0)),
            Step::Fail(_)
        ));
    }
}
