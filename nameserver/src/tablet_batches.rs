//! The nameserver's fences and role changes to one tablet, gathered into one call.
//!
//! In a mass failover (a tablet leading thousands of partitions dies) dozens of
//! ChangeLeaders at once each fence three replicas and change two roles, on the same few
//! tablets: thousands of small calls a second, each costing the tablet a request to
//! decode, a task and a hop to its blocking pool, on a machine the failover saturates.
//! Here the calls for one tablet queue while one batch of them is out; the next batch
//! takes everything queued (the group commit of [`combining`](crate::combining)), and
//! the tablet runs its items on a few blocking jobs and answers each as the single call
//! would (`FenceMany`, `ChangeRoleMany`). A lone call goes at once: nothing waits for a
//! batch to fill.
//!
//! Each caller gets what the single call would have given it: the tablet's answer, the
//! error the tablet built for that item (with its structured detail), or — when the
//! batch itself failed — the batch's transport error, which carries no detail, as a
//! transport error of the single call would not. So callers tell the tablet's refusals
//! from an unreachable tablet exactly as before. A tablet that does not know the batched
//! calls (an older version, during a rolling upgrade) is sent single calls.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tessera_common::cluster_secret::InternalChannel;
use tessera_common::wire_error;
use tessera_proto::common::CallError;
use tessera_proto::tablet::tablet_client::TabletClient;
use tessera_proto::tablet::{self as tpb, change_role_answer, fence_answer};
use tonic::{Code, Response, Status};

use crate::combining::Combiner;

/// The most items one call carries; more queued go in further calls, one after another.
const MAX_ITEMS_PER_CALL: usize = 256;

/// How long a batch of fences may take: a fence's own bound (`fencing::FENCE_TIMEOUT`),
/// since no caller waits longer for its answer.
const FENCE_BATCH_TIMEOUT: Duration = Duration::from_secs(1);

type Answer<T> = Result<Response<T>, Status>;
type Client = TabletClient<InternalChannel>;
type Queue<Req, Resp> = LazyLock<Arc<Combiner<String, Req, Answer<Resp>>>>;

static FENCES: Queue<tpb::FenceRequest, tpb::FenceResponse> = LazyLock::new(Default::default);
static ROLE_CHANGES: Queue<tpb::ChangeRoleRequest, tpb::ChangeRoleResponse> =
    LazyLock::new(Default::default);

/// Fences a replica on `endpoint`, in one call with the other fences queued for it.
pub(crate) async fn fence(
    endpoint: &str,
    request: tpb::FenceRequest,
) -> Answer<tpb::FenceResponse> {
    let target = endpoint.to_string();
    let send = move |fences: Vec<tpb::FenceRequest>| {
        send_batches(
            target.clone(),
            fences,
            Some(FENCE_BATCH_TIMEOUT),
            |mut client, fences| async move {
                let answers = client
                    .fence_many(tpb::FenceManyRequest { fences })
                    .await?
                    .into_inner()
                    .answers;
                Ok(answers
                    .into_iter()
                    .map(|answer| match answer.outcome {
                        Some(fence_answer::Outcome::Fenced(fenced)) => Ok(Response::new(fenced)),
                        Some(fence_answer::Outcome::Error(error)) => Err(item_error(error)),
                        None => Err(no_outcome()),
                    })
                    .collect())
            },
            |mut client, fence| async move { client.fence(fence).await },
        )
    };
    FENCES
        .submit(endpoint.to_string(), request, send)
        .await
        .unwrap_or_else(|| Err(batch_lost()))
}

/// Changes a replica's role on `endpoint`, in one call with the other role changes
/// queued for it.
pub(crate) async fn change_role(
    endpoint: &str,
    request: tpb::ChangeRoleRequest,
) -> Answer<tpb::ChangeRoleResponse> {
    let target = endpoint.to_string();
    let send = move |changes: Vec<tpb::ChangeRoleRequest>| {
        send_batches(
            target.clone(),
            changes,
            None,
            |mut client, changes| async move {
                let answers = client
                    .change_role_many(tpb::ChangeRoleManyRequest { changes })
                    .await?
                    .into_inner()
                    .answers;
                Ok(answers
                    .into_iter()
                    .map(|answer| match answer.outcome {
                        Some(change_role_answer::Outcome::Changed(changed)) => {
                            Ok(Response::new(changed))
                        }
                        Some(change_role_answer::Outcome::Error(error)) => Err(item_error(error)),
                        None => Err(no_outcome()),
                    })
                    .collect())
            },
            |mut client, change| async move { client.change_role(change).await },
        )
    };
    ROLE_CHANGES
        .submit(endpoint.to_string(), request, send)
        .await
        .unwrap_or_else(|| Err(batch_lost()))
}

/// Sends `items` to `endpoint` in calls of at most [`MAX_ITEMS_PER_CALL`] (`many`), and
/// answers each item, in order. `timeout` bounds each call beyond the channel's own bound.
/// A tablet that does not know the batched call is sent the items one by one (`one`),
/// all at once.
async fn send_batches<Req, Resp, Many, ManyFut, One, OneFut>(
    endpoint: String,
    items: Vec<Req>,
    timeout: Option<Duration>,
    many: Many,
    one: One,
) -> Vec<Answer<Resp>>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    Many: Fn(Client, Vec<Req>) -> ManyFut,
    ManyFut: Future<Output = Result<Vec<Answer<Resp>>, Status>>,
    One: Fn(Client, Req) -> OneFut,
    OneFut: Future<Output = Answer<Resp>> + Send + 'static,
{
    let mut answers = Vec::with_capacity(items.len());
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let part: Vec<Req> = items.by_ref().take(MAX_ITEMS_PER_CALL).collect();
        let count = part.len();
        let client = match crate::tablet_channels::tablet(&endpoint).await {
            Ok(client) => client,
            Err(e) => {
                let unreachable = Status::unavailable(e.to_string());
                answers.extend((0..count).map(|_| Err(unreachable.clone())));
                continue;
            }
        };
        let call = many(client.clone(), part.clone());
        let sent = match timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time"))),
            None => call.await,
        };
        match sent {
            Ok(answered) if answered.len() == count => answers.extend(answered),
            Ok(answered) => {
                let short = Status::internal(format!(
                    "the tablet answered {} of {count} items",
                    answered.len()
                ));
                answers.extend((0..count).map(|_| Err(short.clone())));
            }
            Err(status) if status.code() == Code::Unimplemented => {
                answers.extend(one_by_one(client, part, &one).await);
            }
            Err(status) => answers.extend((0..count).map(|_| Err(status.clone()))),
        }
    }
    answers
}

/// The items as single calls, all at once, answered in order.
async fn one_by_one<Req, Resp, One, OneFut>(
    client: Client,
    items: Vec<Req>,
    one: &One,
) -> Vec<Answer<Resp>>
where
    Resp: Send + 'static,
    One: Fn(Client, Req) -> OneFut,
    OneFut: Future<Output = Answer<Resp>> + Send + 'static,
{
    let calls: Vec<_> = items
        .into_iter()
        .map(|item| tokio::spawn(one(client.clone(), item)))
        .collect();
    let mut answers = Vec::with_capacity(calls.len());
    for call in calls {
        answers.push(
            call.await
                .unwrap_or_else(|e| Err(Status::internal(format!("call task failed: {e}")))),
        );
    }
    answers
}

/// An item's error, as the tablet would have answered the single call.
fn item_error(error: CallError) -> Status {
    wire_error::status_of_call(error)
}

fn no_outcome() -> Status {
    Status::internal("the tablet's answer had no outcome for an item")
}

/// The batch's task ended without answering (it panicked).
fn batch_lost() -> Status {
    Status::internal("the batched call ended without an answer")
}
