//! Fast failure detection, the nameserver's half. ZooKeeper stays the source of truth
//! for membership, but a tablet's session outlives its process by the session timeout.
//! So when a follower reports that it no longer hears from its leader (see the tablet's
//! `watchdog`), the nameserver checks the leader's tablet itself, at once:
//!
//! - a refused connection proves its process is gone (nothing listens on its port), so
//!   no lease of it can be in force: it is *gone*;
//! - a ping unanswered within `PROBE_TIMEOUT` makes it *silent*: it may be paused or cut
//!   off, and may still hold read leases, which ChangeLeader waits out;
//! - an answer makes the report a false alarm, counted and otherwise ignored.
//!
//! A silence counts only against a responsive baseline: the reporter and up to two
//! other healthy tablets are pinged at the same time, and if none of them answers in
//! time either, the cluster (or this nameserver) is too slow for a silence to mean
//! anything. The report is then *inconclusive* and nothing is done; the follower reports
//! again while the silence lasts, and the tablet's ZooKeeper session stays the last
//! word. The baseline also says how loaded the cluster is: the leader is given
//! `LOADED_FACTOR` times the slowest baseline answer to answer in turn (at least
//! `PROBE_TIMEOUT`, at most `LOADED_PROBE_LIMIT`). On a quiet cluster the tablets answer
//! in milliseconds and a paused leader is still found silent after `PROBE_TIMEOUT`; on a
//! saturated machine, where every tablet takes a few hundred milliseconds to answer a
//! new connection, the busiest one is not failed over whole for being the slowest.
//!
//! A gone or silent tablet counts as unhealthy for the planner (its partitions fail over
//! at once) until it answers a ping again or registers under a new session. Only an
//! answer from the process holding the registration it knows counts: a ping names the
//! ZooKeeper session of the answering process's registration, and a new process on the
//! endpoint, not registered yet, is still suspected until its registration is seen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_common::failure_detection::PROBE_TIMEOUT;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::PingRequest;
use tracing::{info, warn};

use crate::state::Nameserver;

/// How often a suspected tablet is pinged to see whether it is back.
const RECHECK_EVERY: Duration = Duration::from_millis(500);

/// What a check of a tablet found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Alive,
    /// Its port refused the connection: the process is gone.
    Gone,
    /// No answer in time.
    Silent,
}

impl Probe {
    pub fn name(self) -> &'static str {
        match self {
            Probe::Alive => "alive",
            Probe::Gone => "gone",
            Probe::Silent => "silent",
        }
    }
}

/// Why the registry takes a tablet ZooKeeper still lists for unhealthy.
#[derive(Debug, Clone, Copy)]
pub struct Suspicion {
    /// `Gone` or `Silent`.
    pub probe: Probe,
    pub since: Instant,
}

/// Whether an error (or any error it wraps) is a refused TCP connection.
pub fn is_connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// Pings a tablet, with `PROBE_TIMEOUT` for the connection and the answer each.
pub async fn probe(endpoint: &str) -> Probe {
    probe_within(endpoint, PROBE_TIMEOUT).await.0
}

/// Pings a tablet, with `timeout` for the connection and the answer each; an answer
/// comes with the ZooKeeper session the answering process holds its registration in (0:
/// none; `None`: a tablet too old to say), which tells the process the nameserver knows
/// from a new one on its endpoint.
///
/// A connection that breaks (reset or closed) instead of being refused or left
/// unanswered is tried again for up to `timeout`: a process being killed
/// accepts connections and drops them for a few milliseconds while it exits, then
/// refuses, and only the refusal proves it gone (saving the wait for its lease).
async fn probe_within(endpoint: &str, timeout: Duration) -> (Probe, Option<i64>) {
    let retry_until = Instant::now() + timeout;
    // The first try has the whole timeout for each step; the tries after a broken
    // connection share what is left of it, so a probe never takes longer than that.
    let mut limit = timeout;
    // Doubled after each broken try, so a long timeout does not mean a hundred new
    // connections to a tablet that is already struggling.
    let mut pause = PROBE_RETRY;
    loop {
        match probe_once(endpoint, limit).await {
            Attempt::Answered { registered_session } => return (Probe::Alive, registered_session),
            Attempt::Refused => return (Probe::Gone, None),
            Attempt::NoAnswer => return (Probe::Silent, None),
            Attempt::Broken if Instant::now() + pause >= retry_until => {
                return (Probe::Silent, None)
            }
            Attempt::Broken => {
                tokio::time::sleep(pause).await;
                pause *= 2;
                limit = retry_until
                    .saturating_duration_since(Instant::now())
                    .max(PROBE_RETRY);
            }
        }
    }
}

/// Between two tries of a probe whose connection broke.
pub(crate) const PROBE_RETRY: Duration = Duration::from_millis(10);

enum Attempt {
    Answered {
        /// The answering process's registration (see `PingResponse`).
        registered_session: Option<i64>,
    },
    Refused,
    /// Nothing came back in time.
    NoAnswer,
    /// The connection failed otherwise (reset, closed before the answer).
    Broken,
}

/// One try, each step (connection, answer) bounded by `limit`.
async fn probe_once(endpoint: &str, limit: Duration) -> Attempt {
    let Ok(target) = tessera_common::tls::endpoint(endpoint, limit) else {
        return Attempt::NoAnswer;
    };
    // The timeout around the connection is the only one, so an error from inside is a
    // refusal or a broken connection, never a timeout.
    let channel = match tokio::time::timeout(limit, target.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) if is_connection_refused(&e) => return Attempt::Refused,
        Ok(Err(_)) => return Attempt::Broken,
        Err(_) => return Attempt::NoAnswer,
    };
    let answer = tokio::time::timeout(limit, TabletClient::new(channel).ping(PingRequest {})).await;
    match answer {
        Ok(Ok(answer)) => Attempt::Answered {
            registered_session: answer.into_inner().registered_session,
        },
        Ok(Err(_)) => Attempt::Broken,
        Err(_) => Attempt::NoAnswer,
    }
}

/// What a report of a silent leader comes to, from the probes of the leader and of
/// other tablets (the baseline) made at the same time: a leader that does not answer
/// is taken for silent only if another tablet did answer.
pub fn verdict(leader: Probe, reporter: Probe) -> Option<Probe> {
    match (leader, reporter) {
        (Probe::Silent, Probe::Alive) => Some(Probe::Silent),
        (Probe::Silent, _) => None,
        (found, _) => Some(found),
    }
}

/// Counts of what follower reports led to, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReportCounts {
    /// The leader answered: a false alarm.
    pub alive: u64,
    pub gone: u64,
    pub silent: u64,
    /// Neither the leader nor any tablet of the baseline answered in time: nothing was
    /// concluded.
    pub inconclusive: u64,
    /// Already suspected, already being checked, or not a healthy tablet.
    pub known: u64,
}

/// Other tablets probed beside a silent leader, the reporter first: a silence counts
/// if any of them answers.
const BASELINE_TABLETS: usize = 3;

/// A reported leader is given this many times the slowest answer of the baseline.
const LOADED_FACTOR: u32 = 4;

/// The longest a reported leader is given to answer, however loaded the cluster: well
/// within the 1 s a follower waits for the verdict on its report.
const LOADED_PROBE_LIMIT: Duration = Duration::from_millis(800);

/// How long a reported leader is given to answer when the baseline's slowest answer
/// took `slowest` (`None`: none answered).
fn leader_allowance(slowest: Option<Duration>) -> Duration {
    slowest
        .map_or(PROBE_TIMEOUT, |slowest| slowest * LOADED_FACTOR)
        .clamp(PROBE_TIMEOUT, LOADED_PROBE_LIMIT)
}

/// A leader being judged, in `Nameserver::probing` while this lives (however the
/// judging ends: a report whose caller hung up must not leave it there).
struct Judging {
    ns: Arc<Nameserver>,
    leader: String,
}

impl Drop for Judging {
    fn drop(&mut self) {
        self.ns.probing.lock().remove(&self.leader);
    }
}

impl Nameserver {
    /// A follower on `reporter` no longer hears from `leader`'s tablet: check it and, if
    /// it is gone or silent, take it for unhealthy and wake the op pipeline. Returns the
    /// verdict.
    pub async fn leader_trouble(
        self: &Arc<Self>,
        reporter: &str,
        leader: &str,
        reason: &str,
    ) -> String {
        if !self.is_healthy(leader) || !self.probing.lock().insert(leader.to_string()) {
            self.report_counts.lock().known += 1;
            return "known".into();
        }
        let judging = Judging {
            ns: self.clone(),
            leader: leader.to_string(),
        };
        let (first, verdict) = tokio::sync::oneshot::channel();
        let (reporter, reason) = (reporter.to_string(), reason.to_string());
        // On a task of its own, so the caller hanging up stops nothing.
        tokio::spawn(self.clone().judge(judging, reporter, reason, first));
        verdict.await.unwrap_or_else(|_| "inconclusive".into())
    }

    /// One check of a reported leader against the baseline; its verdict goes to
    /// `verdict`. An inconclusive check does nothing: the follower reports again (at
    /// most once a second) while the silence lasts, and each report is judged afresh.
    /// Checking again on our own would give a busy leader more chances to miss one
    /// ping and be failed over whole long after anyone reported it.
    async fn judge(
        self: Arc<Self>,
        judging: Judging,
        reporter: String,
        reason: String,
        verdict_to: tokio::sync::oneshot::Sender<String>,
    ) {
        let leader = judging.leader.as_str();
        // A suspicion is evidence of this leadership: one that ends while the probes run
        // (a judgement takes up to a second) plants none in the next.
        let leadership = self.leadership_number();
        let started = tokio::time::Instant::now();
        let mut leader_probe = tokio::spawn({
            let leader = leader.to_string();
            async move { probe_within(&leader, LOADED_PROBE_LIMIT).await.0 }
        });
        let baseline = self.baseline(leader, &reporter);
        tokio::pin!(baseline);
        let answered = |slowest: Option<Duration>| {
            if slowest.is_some() {
                Probe::Alive
            } else {
                Probe::Silent
            }
        };
        let (found, baseline) = tokio::select! {
            // An answer or a refusal needs no baseline (see `verdict`).
            found = &mut leader_probe => match found {
                Ok(Probe::Silent) => (Probe::Silent, answered(baseline.await)),
                Ok(found) => (found, Probe::Alive),
                // The probe itself failed: nothing is concluded (see `verdict`).
                Err(_) => (Probe::Silent, Probe::Silent),
            },
            slowest = &mut baseline => {
                let allowed = leader_allowance(slowest);
                match tokio::time::timeout_at(started + allowed, &mut leader_probe).await {
                    Ok(Ok(found)) => (found, answered(slowest)),
                    Ok(Err(_)) => (Probe::Silent, Probe::Silent),
                    Err(_) => {
                        leader_probe.abort();
                        (Probe::Silent, answered(slowest))
                    }
                }
            }
        };
        // A leader that answered another call while it was judged is not silent: one
        // ping it was slow to take says less than that (see `answered_since`).
        let found = match found {
            Probe::Silent if crate::tablet_channels::answered_since(leader, started.into_std()) => {
                Probe::Alive
            }
            found => found,
        };
        let found = verdict(found, baseline);
        {
            let mut counts = self.report_counts.lock();
            match found {
                Some(Probe::Alive) => counts.alive += 1,
                Some(Probe::Gone) => counts.gone += 1,
                Some(Probe::Silent) => counts.silent += 1,
                None => counts.inconclusive += 1,
            }
        }
        let said = match found {
            Some(Probe::Alive) => {
                info!(
                    leader,
                    reporter,
                    reason,
                    "a follower reported its leader, which answers: a false alarm"
                );
                "alive"
            }
            Some(found) => {
                warn!(
                    leader,
                    reporter,
                    reason,
                    probe = found.name(),
                    "leader tablet confirmed down: failing its partitions over"
                );
                let planted =
                    leadership.is_some_and(|number| self.suspect_for(number, leader, found));
                if planted {
                    self.ops_kick.notify_one();
                    tokio::spawn(self.clone().recheck(leader.to_string()));
                }
                found.name()
            }
            None => {
                info!(
                    leader,
                    reporter,
                    reason,
                    "a follower reported its leader, but no other tablet answered in time \
                     either: inconclusive"
                );
                "inconclusive"
            }
        };
        let _ = verdict_to.send(said.to_string());
    }

    /// What the other tablets' pings find, at once (the reporter first, then other
    /// healthy tablets): how long the slowest of those that answered took, `None` if
    /// none answered.
    async fn baseline(&self, leader: &str, reporter: &str) -> Option<Duration> {
        let mut others = vec![reporter.to_string()];
        others.extend(
            self.healthy_tablets()
                .into_iter()
                .filter(|e| e != leader && e != reporter),
        );
        others.truncate(BASELINE_TABLETS);
        let mut probes = tokio::task::JoinSet::new();
        for endpoint in others {
            probes.spawn(async move {
                let started = Instant::now();
                (probe(&endpoint).await, started.elapsed())
            });
        }
        let mut slowest = None;
        while let Some(found) = probes.join_next().await {
            if let Ok((Probe::Alive, took)) = found {
                slowest = slowest.max(Some(took));
            }
        }
        slowest
    }

    /// Pings a suspected tablet until the process it knows answers (it was paused, or
    /// cut off) or the suspicion is lifted otherwise (a new registration). An answer from
    /// a process not holding the registration the nameserver knows is a new process on
    /// the endpoint, started but not registered yet: it has none of the old one's
    /// replicas in its roles, and its registration (a restart, which marks them dead
    /// first) is what brings it back. Taken for the old one, it was planned
    /// RecoverTables at once, then again when its registration was seen.
    async fn recheck(self: Arc<Self>, endpoint: String) {
        let mut newcomer_noted = false;
        loop {
            tokio::time::sleep(RECHECK_EVERY).await;
            if self.suspicion(&endpoint).is_none() {
                return;
            }
            if !self.leadership().keeps_evidence() {
                // Suspicion is the leader's evidence: a nameserver that leads again later
                // must not find the tablet still down without anyone checking it. A
                // leader whose lease lapsed keeps it (and keeps checking: an answer says
                // the tablet is back whoever leads).
                self.clear_suspicion(&endpoint);
                return;
            }
            let (found, answered_in) = probe_within(&endpoint, PROBE_TIMEOUT).await;
            if found != Probe::Alive {
                continue;
            }
            let registered_in = self.registered_session(&endpoint);
            // A tablet too old to name its registration is taken at its word, as before.
            if answered_in.is_none() || answered_in == registered_in {
                info!(endpoint = %endpoint, "suspected tablet answers again");
                self.clear_suspicion(&endpoint);
                self.ops_kick.notify_one();
                return;
            }
            if !newcomer_noted {
                newcomer_noted = true;
                info!(
                    endpoint = %endpoint,
                    answered_in = answered_in.unwrap_or_default(),
                    registered_in = registered_in.unwrap_or_default(),
                    "a process not holding the suspected tablet's registration answers on its \
                     endpoint (restarted, not registered yet): still suspected"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process being killed accepts connections and drops them before its port
    /// refuses: the probe waits for the refusal instead of calling it silent.
    #[tokio::test]
    async fn a_port_that_drops_connections_then_refuses_is_gone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let dying = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_millis(60);
            while let Ok(Ok((connection, _))) =
                tokio::time::timeout_at(until, listener.accept()).await
            {
                drop(connection);
            }
            // The listener goes with the task: the port refuses from now on.
        });
        assert_eq!(probe(&endpoint).await, Probe::Gone);
        dying.await.unwrap();
    }

    #[test]
    fn a_silence_counts_only_when_the_reporter_answers() {
        use Probe::*;
        assert_eq!(verdict(Silent, Alive), Some(Silent));
        assert_eq!(verdict(Silent, Silent), None, "everyone is slow");
        assert_eq!(verdict(Silent, Gone), None);
        assert_eq!(
            verdict(Gone, Silent),
            Some(Gone),
            "a refusal is proof alone"
        );
        assert_eq!(verdict(Alive, Silent), Some(Alive));
    }

    #[test]
    fn a_loaded_cluster_gives_the_leader_longer_to_answer() {
        let ms = Duration::from_millis;
        assert_eq!(
            leader_allowance(Some(ms(2))),
            PROBE_TIMEOUT,
            "quiet: as before"
        );
        assert_eq!(leader_allowance(None), PROBE_TIMEOUT);
        assert_eq!(leader_allowance(Some(ms(200))), ms(800));
        assert_eq!(
            leader_allowance(Some(ms(900))),
            LOADED_PROBE_LIMIT,
            "bounded"
        );
    }

    /// A port that accepts and never answers is silent, not gone.
    #[tokio::test]
    async fn a_port_that_never_answers_is_silent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                connections.push(connection);
            }
        });
        assert_eq!(probe(&endpoint).await, Probe::Silent);
        held.abort();
    }
}
