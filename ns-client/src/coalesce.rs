//! Coalescing of concurrent puts: puts that tasks sharing one [`crate::Client`] send to
//! the same partition leader at the same time go out together as one `PutBatch`.
//!
//! Each partition leader has a lane. A put joins its lane's queue; if fewer than
//! [`SENDERS_PER_LANE`] batches are on the way, a sender task takes everything queued
//! and sends it, and keeps doing so until the queue is empty. A lone put therefore goes
//! out at once, alone (no waiting to gather more); under load, the puts that arrive while
//! a batch is on the way make up the next one, the way a group commit batches fsyncs.
//! Every row keeps its own sequence number and gets its own answer, so a put's retries
//! and its outcome are the same as if it had gone alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;
use tessera_common::auth::AuthChannel;
use tessera_common::wire_error::status_from_detail;
use tessera_proto::common::Row;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{BatchRow, PutBatchRequest, PutRequest, PutResult};
use tokio::sync::oneshot;

/// Batches of one lane on the way at once. Two keep the link busy while an answer comes
/// back without splitting the queue into many small batches, and a batch that hangs (a
/// paused leader) does not hold up the lane alone.
const SENDERS_PER_LANE: usize = 2;
/// Rows in one batch at most (far below a tablet's `max_writes_in_flight`).
const MAX_BATCH_ROWS: usize = 512;
/// Encoded bytes of rows in one batch at most (a single bigger row goes alone), well
/// under what a tablet takes in one request.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// (leader endpoint, tid, pid)
type LaneKey = (String, u32, u32);

/// What a coalesced put gets back: its version or why it failed.
pub(crate) type PutAnswer = Result<(u64, u64), tonic::Status>;

struct Waiting {
    row: BatchRow,
    /// The connection the put's caller had: a batch goes through its newest put's, so a
    /// connection the caller replaced after a failure is not kept in use.
    client: TabletClient<AuthChannel>,
    answer: oneshot::Sender<PutAnswer>,
}

#[derive(Default)]
struct Lane {
    queue: Vec<Waiting>,
    senders: usize,
}

/// How a client's puts travelled, for observability.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Puts sent (each try of each put counts).
    pub puts: u64,
    /// Requests that carried them.
    pub requests: u64,
}

/// The lanes of one client.
#[derive(Default)]
pub(crate) struct Coalescer {
    lanes: Mutex<HashMap<LaneKey, Arc<Mutex<Lane>>>>,
    stats: Arc<Mutex<WriteStats>>,
    /// Set once a tablet answered that it has no PutBatch: puts then go one by one.
    singles: Arc<AtomicBool>,
}

impl Coalescer {
    /// Queues `row` (with its sequence number) for the leader at `endpoint`, to go with
    /// whatever other puts to the same partition are waiting; the future is its answer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put(
        &self,
        client: TabletClient<AuthChannel>,
        endpoint: &str,
        tid: u32,
        pid: u32,
        client_id: u64,
        row: Row,
        seq: u64,
    ) -> impl std::future::Future<Output = PutAnswer> + Send + 'static {
        if self.singles.load(Ordering::Relaxed) {
            let request = PutRequest {
                tid,
                pid,
                row: Some(row),
                client_id,
                seq,
                epoch: 0,
            };
            let mut client = client;
            return futures_util::future::Either::Left(async move {
                let answer = client.put(request).await?.into_inner();
                Ok((answer.term, answer.offset))
            });
        }
        let lane = self
            .lanes
            .lock()
            .entry((endpoint.to_string(), tid, pid))
            .or_default()
            .clone();
        let (answer, answered) = oneshot::channel();
        let start_sender = {
            let mut queued = lane.lock();
            queued.queue.push(Waiting {
                row: BatchRow {
                    row: Some(row),
                    seq,
                },
                client,
                answer,
            });
            let start = queued.senders < SENDERS_PER_LANE;
            if start {
                queued.senders += 1;
            }
            start
        };
        if start_sender {
            let shared = (self.stats.clone(), self.singles.clone());
            tokio::spawn(send_lane(lane, shared, tid, pid, client_id));
        }
        futures_util::future::Either::Right(async move {
            answered.await.unwrap_or_else(|_| {
                Err(tonic::Status::unavailable(
                    "the batch carrying this put was abandoned; its outcome is unknown",
                ))
            })
        })
    }
}

/// Sends the lane's queue in batches until it is empty.
async fn send_lane(
    lane: Arc<Mutex<Lane>>,
    (stats, singles): (Arc<Mutex<WriteStats>>, Arc<AtomicBool>),
    tid: u32,
    pid: u32,
    client_id: u64,
) {
    loop {
        let batch: Vec<Waiting> = {
            let mut queued = lane.lock();
            // A put whose caller gave up (it retries elsewhere, with the same sequence
            // number) is not sent.
            queued.queue.retain(|w| !w.answer.is_closed());
            if queued.queue.is_empty() {
                queued.senders -= 1;
                return;
            }
            let take = batch_len(queued.queue.iter().map(|w| w.row.encoded_len()));
            queued.queue.drain(..take).collect()
        };
        let mut client = batch.last().expect("a batch is never empty").client.clone();
        {
            let mut stats = stats.lock();
            stats.puts += batch.len() as u64;
            stats.requests += 1;
        }
        let (rows, answers): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|w| (w.row, w.answer)).unzip();
        let request = PutBatchRequest {
            tid,
            pid,
            client_id,
            rows,
            epoch: 0,
        };
        match client.put_batch(request).await {
            Ok(response) => {
                let results = response.into_inner().results;
                if results.len() != answers.len() {
                    let status = tonic::Status::internal(format!(
                        "a batch of {} puts got {} answers",
                        answers.len(),
                        results.len()
                    ));
                    for answer in answers {
                        let _ = answer.send(Err(status.clone()));
                    }
                    continue;
                }
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(row_answer(result));
                }
            }
            // A tablet that predates PutBatch: from now on each put goes alone; these
            // are retried (same sequence numbers) that way.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                singles.store(true, Ordering::Relaxed);
                for answer in answers {
                    let _ = answer.send(Err(tonic::Status::unavailable(
                        "the tablet takes no batches; retrying puts one by one",
                    )));
                }
            }
            Err(status) => {
                for answer in answers {
                    let _ = answer.send(Err(status.clone()));
                }
            }
        }
    }
}

/// How many of the queued rows (their encoded sizes, in order) make the next batch: at
/// most `MAX_BATCH_ROWS` and `MAX_BATCH_BYTES`, and at least one.
pub(crate) fn batch_len(sizes: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut rows = 0;
    for size in sizes.take(MAX_BATCH_ROWS) {
        if rows > 0 && bytes + size > MAX_BATCH_BYTES {
            break;
        }
        bytes += size;
        rows += 1;
    }
    rows
}

impl Coalescer {
    pub(crate) fn stats(&self) -> WriteStats {
        *self.stats.lock()
    }
}

/// One row's result as a put's answer.
pub(crate) fn row_answer(result: PutResult) -> PutAnswer {
    match result.error {
        Some(detail) => Err(status_from_detail(detail)),
        None => Ok((result.term, result.offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_by_rows_and_bytes_but_never_empty() {
        assert_eq!(batch_len([10, 10, 10].into_iter()), 3);
        assert_eq!(batch_len(std::iter::repeat_n(1, 2000)), MAX_BATCH_ROWS);
        let half = MAX_BATCH_BYTES / 2;
        assert_eq!(batch_len([half, half, 1].into_iter()), 2);
        assert_eq!(
            batch_len([MAX_BATCH_BYTES * 3, 1].into_iter()),
            1,
            "a big row alone"
        );
        assert_eq!(batch_len(std::iter::empty()), 0);
    }
}
