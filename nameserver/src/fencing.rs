//! ChangeLeader's fencing round, and the wait that keeps reads linearizable across a
//! change of leader.
//!
//! Every replica is fenced at the op's term, in parallel, each call bounded by
//! `FENCE_TIMEOUT`. A replica that answered is fenced: it leads no more in an older term.
//! One whose tablet refused the connection has no process, hence no lease. One whose
//! tablet left ZooKeeper lost its ZooKeeper lease before its session ended. Any other
//! replica that did not answer is *unsettled*: it may still lead in an older term and
//! serve reads under its lease. Before the new leader is promoted (and acknowledges a
//! write), every such lease must have run out:
//!
//! - quorum mode: a leader's read lease is renewed only by answers from a majority of
//!   its voting members, and the answers the failover rule requires meet every such
//!   majority, so each renewal after the fence would need an answer from a fenced
//!   replica, which refuses the old term. Each fenced replica reports how much longer a
//!   lease it helped renew may last (`lease_remaining_ms`, by its clock, drift margin
//!   included); the nameserver waits that long, stretched again for its own clock;
//! - async mode: a leader's read lease is its tablet's ZooKeeper lease alone, so the
//!   nameserver waits until the unsettled replica's tablet leaves ZooKeeper (its session
//!   expired, and its lease lapsed before), or answers a fence.

use std::time::{Duration, Instant};

use tessera_common::failure_detection::{stretched, LEADER_LEASE, PROBE_TIMEOUT};
use tessera_common::{cluster_secret, wire_error};
use tessera_proto::nameserver::{OpInfo, PartitionMeta, TableInfo};
use tessera_proto::tablet::{self as tpb, tablet_client::TabletClient};
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::detection::{is_connection_refused, Probe, PROBE_RETRY};
use crate::error::Result;
use crate::planner::Fenced;
use crate::state::{Nameserver, Presence};

/// How long one fence may take, connection included.
const FENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an async partition's unsettled replicas are looked at again.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// What a fencing round found.
#[derive(Debug, Default)]
pub(crate) struct FenceRound {
    /// The replicas that answered, but the failed one the op names.
    pub answered: Vec<Fenced>,
    /// The highest term a refusal named (a replica already in that term).
    pub ahead: Option<u64>,
    /// Replicas that did not answer and are not known to be down.
    pub unsettled: Vec<String>,
    /// When every lease the answering replicas helped renew has ended, by this clock.
    pub leases_end: Option<Instant>,
}

/// How one fence ended.
enum FenceOutcome {
    Fenced(tpb::FenceResponse),
    /// The tablet's port refused the connection: no process.
    Refused,
    /// The tablet answered that it holds no such replica: it leads nothing of it.
    NoReplica,
    Failed {
        reason: String,
        stale_term: Option<u64>,
    },
}

/// The op's fence: its partition, at its term.
fn fence_request(table: &TableInfo, op: &OpInfo) -> tpb::FenceRequest {
    tpb::FenceRequest {
        tid: table.tid,
        pid: op.pid,
        term: op.term,
    }
}

/// What a fence's answer says: the replica's log, or why it was not fenced.
fn fence_answer(
    answer: std::result::Result<tonic::Response<tpb::FenceResponse>, tonic::Status>,
) -> FenceOutcome {
    match answer {
        Ok(answer) => FenceOutcome::Fenced(answer.into_inner()),
        Err(status)
            if wire_error::detail_of(&status)
                .is_some_and(|d| d.code() == wire_error::ErrorCode::TableNotFound) =>
        {
            FenceOutcome::NoReplica
        }
        Err(status) => FenceOutcome::Failed {
            stale_term: wire_error::detail_of(&status)
                .filter(|d| d.code() == wire_error::ErrorCode::StaleTerm)
                .map(|d| d.term),
            reason: status.message().to_string(),
        },
    }
}

async fn fence_one(endpoint: &str, request: tpb::FenceRequest) -> FenceOutcome {
    let failed = |reason: String| FenceOutcome::Failed {
        reason,
        stale_term: None,
    };
    let deadline = tokio::time::Instant::now() + FENCE_TIMEOUT;
    // Over the tablet's long-lived channel first: a connection per fence cost a
    // handshake each, hundreds at once when a dead tablet's partitions fail over, and
    // fences of live tablets then ran out of time. Only an answer of the tablet's own
    // counts here. A transport failure, or no answer in half the time (a connection that
    // died silently, a connect under way), is looked into on a connection of its own,
    // whose refusal proves the process gone, while the pooled call may still answer.
    let pooled = async {
        let mut client = crate::tablet_channels::tablet(endpoint).await.ok()?;
        match crate::tablet_channels::observed(endpoint, client.fence(request)).await {
            Err(status) if wire_error::detail_of(&status).is_none() => {
                // Drops the pooled channel if the tablet is unreachable.
                crate::tablet_channels::tablet_error(endpoint, status);
                None
            }
            answer => Some(fence_answer(answer)),
        }
    };
    let mut pooled = Box::pin(pooled);
    let slow = tokio::select! {
        outcome = &mut pooled => match outcome {
            Some(outcome) => return outcome,
            None => false,
        },
        _ = tokio::time::sleep_until(deadline - FENCE_TIMEOUT / 2) => true,
    };
    if slow {
        // The pooled call may yet answer; a refused connection meanwhile settles it.
        let outcome = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                outcome = &mut pooled => outcome,
                () = refused(endpoint) => Some(FenceOutcome::Refused),
            }
        })
        .await;
        match outcome {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => {}
            Err(_) => return failed("no answer in time".into()),
        }
    }
    tokio::time::timeout_at(deadline, fresh_fence(endpoint, request))
        .await
        .unwrap_or_else(|_| failed("no answer in time".into()))
}

/// A connection of its own to `endpoint`, or how connecting ended: `Refused` proves the
/// tablet's process gone.
async fn connect_afresh(endpoint: &str) -> std::result::Result<Channel, FenceOutcome> {
    let failed = |reason: String| FenceOutcome::Failed {
        reason,
        stale_term: None,
    };
    let target = tessera_common::tls::endpoint(endpoint, FENCE_TIMEOUT)
        .map_err(|e| failed(e.to_string()))?;
    // A connection broken rather than refused may be a process in the middle of
    // exiting: try again briefly, for the refusal that proves it gone.
    let retry_until = Instant::now() + PROBE_TIMEOUT;
    loop {
        match target.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if is_connection_refused(&e) => return Err(FenceOutcome::Refused),
            Err(e) if Instant::now() + PROBE_RETRY >= retry_until => {
                return Err(failed(format!("cannot connect: {e}")))
            }
            Err(_) => tokio::time::sleep(PROBE_RETRY).await,
        }
    }
}

/// Resolves only if a connection to `endpoint` is refused.
async fn refused(endpoint: &str) {
    if !matches!(connect_afresh(endpoint).await, Err(FenceOutcome::Refused)) {
        std::future::pending::<()>().await;
    }
}

/// A fence over a connection of its own.
async fn fresh_fence(endpoint: &str, request: tpb::FenceRequest) -> FenceOutcome {
    match connect_afresh(endpoint).await {
        Ok(channel) => fence_answer(
            TabletClient::new(cluster_secret::internal(channel))
                .fence(request)
                .await,
        ),
        Err(outcome) => outcome,
    }
}

impl Nameserver {
    /// Fences every replica of the partition at the op's term, all at once.
    pub(crate) async fn fence_all(
        &self,
        table: &TableInfo,
        partition: &PartitionMeta,
        op: &OpInfo,
    ) -> Result<FenceRound> {
        self.check_leading()?;
        let mut round = FenceRound::default();
        // Until the registry has been read, "not registered" proves nothing.
        let registry_ready = self.registry_ready();
        let mut calls = tokio::task::JoinSet::new();
        // Replicas fenced but not yet answered for: any left (a fence task that failed)
        // counts as unsettled.
        let mut pending = std::collections::BTreeSet::new();
        for replica in &partition.replicas {
            let endpoint = replica.endpoint.clone();
            let presence = self.presence(&endpoint);
            if endpoint == op.endpoint && registry_ready && presence == Presence::Absent {
                // The failed leader left ZooKeeper: its lease lapsed, and its answer
                // would not be used.
                continue;
            }
            if presence == Presence::Suspected(Probe::Silent) {
                // Paused or cut off: a fence would only wait for its timeout.
                round.unsettled.push(endpoint);
                continue;
            }
            let request = fence_request(table, op);
            pending.insert(endpoint.clone());
            calls.spawn(async move {
                let outcome = fence_one(&endpoint, request).await;
                (endpoint, presence, outcome)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let Ok((endpoint, presence, outcome)) = joined else {
                continue;
            };
            pending.remove(&endpoint);
            match outcome {
                FenceOutcome::Fenced(answer) => {
                    // No lease lasts longer than Tessera's own (a bad answer could
                    // otherwise hold the failover for ever).
                    let owed = Duration::from_millis(answer.lease_remaining_ms)
                        .min(stretched(LEADER_LEASE));
                    let end = Instant::now() + stretched(owed);
                    round.leases_end = round.leases_end.max(Some(end));
                    if endpoint != op.endpoint {
                        round.answered.push(Fenced {
                            endpoint,
                            last_term: answer.last_term,
                            last_offset: answer.last_offset,
                        });
                    }
                }
                FenceOutcome::Refused => {
                    info!(op_id = op.op_id, endpoint = %endpoint, "fence: connection refused, the tablet's process is gone");
                }
                FenceOutcome::NoReplica => {
                    info!(op_id = op.op_id, endpoint = %endpoint, "fence: the tablet holds no such replica");
                }
                FenceOutcome::Failed { reason, stale_term } => {
                    warn!(op_id = op.op_id, endpoint = %endpoint, error = %reason, "fence failed");
                    round.ahead = round.ahead.max(stale_term);
                    let lease_lapsed = registry_ready && presence == Presence::Absent;
                    if !lease_lapsed {
                        round.unsettled.push(endpoint);
                    }
                }
            }
        }
        round.unsettled.extend(pending);
        round.unsettled.sort();
        Ok(round)
    }

    /// Returns once no replica the round left unsettled can serve a read as leader of an
    /// older term (see the module's comment).
    pub(crate) async fn wait_out_old_leaders(
        &self,
        table: &TableInfo,
        op: &OpInfo,
        round: FenceRound,
    ) -> Result<()> {
        if round.unsettled.is_empty() {
            return Ok(());
        }
        if table.mode() == tpb::ReplicationMode::Quorum {
            let mut until = round.leases_end.unwrap_or_else(Instant::now);
            if op.force {
                // Forced, the answers may miss a majority the old leader still hears
                // from: give it at least one whole lease to notice.
                until = until.max(Instant::now() + stretched(LEADER_LEASE));
            }
            let wait = until.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                info!(op_id = op.op_id, unsettled = ?round.unsettled, wait = ?wait, "waiting out the old leader's read lease");
                tokio::time::sleep(wait).await;
            }
            return Ok(());
        }
        info!(op_id = op.op_id, unsettled = ?round.unsettled, "async partition: waiting until the unsettled replicas leave ZooKeeper or answer a fence");
        let mut unsettled = round.unsettled;
        while !unsettled.is_empty() {
            self.check_leading()?;
            let mut still = Vec::new();
            for endpoint in unsettled {
                let settled = match self.presence(&endpoint) {
                    Presence::Absent => self.registry_ready(),
                    Presence::Suspected(Probe::Silent) => false,
                    Presence::Registered | Presence::Suspected(_) => {
                        matches!(
                            fence_one(&endpoint, fence_request(table, op)).await,
                            FenceOutcome::Fenced(_)
                                | FenceOutcome::Refused
                                | FenceOutcome::NoReplica
                        )
                    }
                };
                if !settled {
                    still.push(endpoint);
                }
            }
            unsettled = still;
            if !unsettled.is_empty() {
                tokio::time::sleep(SETTLE_POLL).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Fences of many partitions on one tablet share its long-lived connection; and one
    /// that hangs there (a connection that died silently) still finds a refusal, the
    /// proof that the process is gone.
    #[tokio::test]
    async fn fences_share_a_connection_and_still_find_a_refusal() {
        // Accepts one connection, holds it without ever answering, and stops listening:
        // connections after it are refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let accepting = tokio::spawn(async move {
            let (held, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            drop(listener);
            std::future::pending::<()>().await;
            drop(held);
        });
        let fences = (1..=8).map(|pid| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let request = tpb::FenceRequest {
                    tid: 1,
                    pid,
                    term: 7,
                };
                fence_one(&endpoint, request).await
            })
        });
        for fence in fences {
            let outcome = fence.await.unwrap();
            assert!(
                matches!(outcome, FenceOutcome::Refused),
                "the refusal is found despite the silent connection"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for eight fences"
        );
        accepting.abort();
    }
}
