//! Group commit for writes that contend on one ZooKeeper node.
//!
//! Dozens of ops run at once, and many of them change the same node: the partitions of
//! one metadata chunk, the term counter. Each writing on its own, they race with
//! compare-and-set, and all but one of every round reads and writes again. Here the
//! requests for one node queue up; one writer at a time takes every request waiting,
//! makes a single read and write for all of them, and answers each. Requests that arrive
//! during a write go together into the next one.
//!
//! The writer runs on a task of its own, so a caller that stops waiting (an op task's
//! timeout) never leaves the queue without a writer.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::oneshot;

pub(crate) struct Combiner<K, Req, Out> {
    queues: parking_lot::Mutex<HashMap<K, Queue<Req, Out>>>,
}

struct Queue<Req, Out> {
    /// A writer task is running for this key: it takes what is queued before it ends.
    writing: bool,
    waiting: Vec<(Req, oneshot::Sender<Out>)>,
}

impl<K, Req, Out> Default for Combiner<K, Req, Out> {
    fn default() -> Self {
        Combiner {
            queues: parking_lot::Mutex::new(HashMap::new()),
        }
    }
}

impl<K, Req, Out> Combiner<K, Req, Out>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    Req: Send + 'static,
    Out: Send + 'static,
{
    /// Queues `request` for `key` and waits for its answer; `None` if the writer failed
    /// without answering (it panicked). `write` answers a batch, one output per request
    /// in order; it is used if this call has to start a writer.
    pub(crate) async fn submit<W, Fut>(
        self: &Arc<Self>,
        key: K,
        request: Req,
        write: W,
    ) -> Option<Out>
    where
        W: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Out>> + Send,
    {
        let (answer, answered) = oneshot::channel();
        let start_writer = {
            let mut queues = self.queues.lock();
            let queue = queues.entry(key.clone()).or_insert_with(|| Queue {
                writing: false,
                waiting: Vec::new(),
            });
            queue.waiting.push((request, answer));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            let combiner = self.clone();
            tokio::spawn(async move {
                let mut ends = WriterEnds {
                    combiner: &combiner,
                    key: &key,
                    cut_short: true,
                };
                while let Some(batch) = combiner.take(&key) {
                    let (requests, answers): (Vec<Req>, Vec<oneshot::Sender<Out>>) =
                        batch.into_iter().unzip();
                    let outputs = write(requests).await;
                    for (answer, output) in answers.into_iter().zip(outputs) {
                        let _ = answer.send(output);
                    }
                }
                // `take` ended the turn: the key may already have a new writer.
                ends.cut_short = false;
            });
        }
        answered.await.ok()
    }

    /// Everything queued for `key`, or `None` (and the writer's turn ends) if nothing is.
    fn take(&self, key: &K) -> Option<Vec<(Req, oneshot::Sender<Out>)>> {
        let mut queues = self.queues.lock();
        let queue = queues.get_mut(key)?;
        if queue.waiting.is_empty() {
            queues.remove(key);
            return None;
        }
        Some(std::mem::take(&mut queue.waiting))
    }
}

/// A writer task cut short (a panic) leaves its key without a writer and with nobody
/// waiting forever: requests still queued see their answer dropped.
struct WriterEnds<'a, K: Hash + Eq, Req, Out> {
    combiner: &'a Combiner<K, Req, Out>,
    key: &'a K,
    cut_short: bool,
}

impl<K: Hash + Eq, Req, Out> Drop for WriterEnds<'_, K, Req, Out> {
    fn drop(&mut self) {
        if self.cut_short {
            self.combiner.queues.lock().remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn requests_waiting_during_a_write_share_the_next_one() {
        let combiner: Arc<Combiner<&str, u32, u32>> = Arc::default();
        let writes = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let write = {
            let writes = writes.clone();
            move |batch: Vec<u32>| {
                let (writes, mut released) = (writes.clone(), released.clone());
                async move {
                    writes.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    batch.iter().map(|n| n * 10).collect()
                }
            }
        };
        let first = tokio::spawn({
            let (combiner, write) = (combiner.clone(), write.clone());
            async move { combiner.submit("chunk", 1, write).await }
        });
        // The first write is under way (and held) before the others queue.
        while writes.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=9)
            .map(|n| {
                let (combiner, write) = (combiner.clone(), write.clone());
                tokio::spawn(async move { combiner.submit("chunk", n, write).await })
            })
            .collect();
        while combiner
            .queues
            .lock()
            .get("chunk")
            .map_or(0, |q| q.waiting.len())
            < 8
        {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Some(10));
        for (n, waiting) in (2..=9).zip(rest) {
            assert_eq!(
                waiting.await.unwrap(),
                Some(n * 10),
                "each gets its own answer"
            );
        }
        assert_eq!(
            writes.load(Ordering::SeqCst),
            2,
            "the eight waiting shared one write"
        );
        assert!(
            combiner.queues.lock().is_empty(),
            "no writer is left behind"
        );
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_stop_the_writer() {
        let combiner: Arc<Combiner<u8, u32, u32>> = Arc::default();
        let written = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let write = {
            let written = written.clone();
            move |batch: Vec<u32>| {
                let (written, mut released) = (written.clone(), released.clone());
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    written.lock().extend(batch.iter().copied());
                    batch
                }
            }
        };
        // The caller that started the writer gives up while its write is held.
        let gives_up = tokio::spawn({
            let (combiner, write) = (combiner.clone(), write.clone());
            async move { combiner.submit(1, 1, write).await }
        });
        while combiner.queues.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        gives_up.abort();
        assert!(gives_up.await.unwrap_err().is_cancelled());
        release.send(true).unwrap();
        assert_eq!(combiner.submit(1, 2, write).await, Some(2));
        assert_eq!(
            *written.lock(),
            vec![1, 2],
            "the abandoned request was written too"
        );
    }

    #[tokio::test]
    async fn a_writer_that_panics_leaves_no_one_waiting_forever() {
        let combiner: Arc<Combiner<u8, u32, u32>> = Arc::default();
        let panics = |batch: Vec<u32>| async move {
            if !batch.is_empty() {
                panic!("the write failed");
            }
            batch
        };
        assert_eq!(combiner.submit(1, 1, panics).await, None);
        let works = |batch: Vec<u32>| async move { batch };
        assert_eq!(combiner.submit(1, 2, works).await, Some(2));
    }
}
