//! The nameserver's channels to the tablets for its control calls: one long-lived
//! channel (one HTTP/2 connection, calls multiplexed on it) per endpoint, made on first
//! use. A call that finds its tablet unreachable drops the endpoint's channel, so the
//! next call connects afresh (and says so if it cannot). Fences go over it too, and
//! connect afresh only when it fails them; the probes of failure detection always
//! connect afresh: a refused connection is their proof that a process is gone.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tessera_common::cluster_secret::{self, InternalChannel};
use tessera_proto::tablet::tablet_client::TabletClient;

use crate::error::{NsError, Result};

const TABLET_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TABLET_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failed connect answers for the calls after it.
const FAILED_CONNECT_REMEMBERED: Duration = Duration::from_secs(1);

static TABLET_CHANNELS: LazyLock<parking_lot::Mutex<HashMap<String, Arc<ChannelSlot>>>> =
    LazyLock::new(Default::default);

/// An endpoint's pooled channel. The slot's lock is held while connecting, so calls
/// made at once to a tablet not yet connected wait for one connection instead of each
/// making one; a connect that failed is remembered briefly, so they do not then try one
/// after another, each waiting out the connect timeout.
#[derive(Default)]
struct ChannelSlot {
    /// When the tablet last registered in ZooKeeper as a new process (or came back):
    /// a connection made, or a connect that failed, before then was to the old one.
    registered: parking_lot::Mutex<Option<Instant>>,
    /// When the latest control call the tablet answered (an error of its own included)
    /// was sent.
    answered: parking_lot::Mutex<Option<Instant>>,
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// The channel, with when its connect began.
    channel: Option<(Instant, InternalChannel)>,
    /// The failed connect's error, with when the attempt began.
    failed: Option<(Instant, String)>,
}

fn slot(endpoint: &str) -> Arc<ChannelSlot> {
    TABLET_CHANNELS
        .lock()
        .entry(endpoint.to_string())
        .or_default()
        .clone()
}

/// Tells the pool that `endpoint`'s tablet registered afresh (a new process, or one
/// back from offline): the next call connects to it, whatever the pool remembers of
/// the process before. Without this, an operator's command run right after a tablet
/// restart failed with "cannot connect" for a second after any call made while it was
/// down.
pub(crate) fn registered(endpoint: &str) {
    *slot(endpoint).registered.lock() = Some(Instant::now());
}

/// `endpoint`'s tablet answered a call sent at `sent`: its own answer, not a transport
/// error. Failure detection counts it like an answered ping (see `answered_since`). The
/// send time, not the time the answer was read: on a starved nameserver an answer sent
/// just before the tablet stopped may be read much later, and proves nothing of then.
fn note_answered(endpoint: &str, sent: Instant) {
    let shared = slot(endpoint);
    let mut answered = shared.answered.lock();
    *answered = (*answered).max(Some(sent));
}

/// Whether `endpoint`'s tablet answered a call sent at or after `since`. During a mass
/// failover the nameserver calls the surviving tablets hundreds of times a second, and
/// a saturated tablet may be slow to take a new connection for a ping while it answers
/// those calls: then it is not silent, whatever the ping found.
pub(crate) fn answered_since(endpoint: &str, since: Instant) -> bool {
    let shared = TABLET_CHANNELS.lock().get(endpoint).cloned();
    shared.is_some_and(|shared| shared.answered.lock().is_some_and(|at| at >= since))
}

/// Whether a call's outcome came from the tablet itself: an answer, or an error status
/// it built (which carries a structured detail; a transport error carries none).
fn tablet_answered<T>(outcome: &std::result::Result<T, tonic::Status>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(status) => !status.details().is_empty(),
    }
}

/// A client for `endpoint` over its pooled channel; each call on it is bounded by
/// [`TABLET_CALL_TIMEOUT`], and HTTP/2 pings find a connection whose peer went silent.
pub(crate) async fn tablet(endpoint: &str) -> Result<TabletClient<InternalChannel>> {
    let shared = slot(endpoint);
    let mut slot = shared.slot.lock().await;
    // Read after taking the slot, so a registration noted while waiting for it counts.
    let registered = *shared.registered.lock();
    let before_registration = |at: Instant| registered.is_some_and(|r| at < r);
    if let Some((connected_at, channel)) = &slot.channel {
        if !before_registration(*connected_at) {
            return Ok(TabletClient::new(channel.clone()));
        }
    }
    let cannot_connect = |e: &str| NsError::Tablet {
        endpoint: endpoint.to_string(),
        message: format!("cannot connect: {e}"),
    };
    if let Some((at, error)) = &slot.failed {
        if at.elapsed() < FAILED_CONNECT_REMEMBERED && !before_registration(*at) {
            return Err(cannot_connect(error));
        }
    }
    let attempt = Instant::now();
    let connected = tessera_common::tls::endpoint(endpoint, TABLET_CONNECT_TIMEOUT)
        .map_err(|e| NsError::InvalidArgument(e.to_string()))?
        .timeout(TABLET_CALL_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await;
    let channel = match connected {
        Ok(channel) => cluster_secret::internal(channel),
        Err(e) => {
            *slot = Slot {
                channel: None,
                failed: Some((attempt, e.to_string())),
            };
            return Err(cannot_connect(&e.to_string()));
        }
    };
    crate::metrics::METRICS.tablet_connected();
    *slot = Slot {
        channel: Some((attempt, channel.clone())),
        failed: None,
    };
    Ok(TabletClient::new(channel))
}

/// Drops `endpoint`'s pooled channel after a call found the tablet unreachable or the
/// connection broken, so the next call connects afresh; a connect under way is left be.
fn forget_channel(endpoint: &str) {
    let shared = TABLET_CHANNELS.lock().get(endpoint).cloned();
    if let Some(shared) = shared {
        if let Ok(mut slot) = shared.slot.try_lock() {
            slot.channel = None;
        }
    }
}

/// The error of a failed tablet call; an unreachable tablet (or a broken connection)
/// drops the endpoint's pooled channel. A timeout does not: the tablet may only be
/// slow.
pub(crate) fn tablet_error(endpoint: &str, status: tonic::Status) -> NsError {
    if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown
    ) {
        forget_channel(endpoint);
    }
    NsError::Tablet {
        endpoint: endpoint.to_string(),
        message: status.message().to_string(),
    }
}

/// Awaits a tablet call as it came back, noting an answer of the tablet's own for
/// failure detection (see `note_answered`).
pub(crate) async fn observed<T>(
    endpoint: &str,
    rpc: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> std::result::Result<T, tonic::Status> {
    let sent = Instant::now();
    let outcome = rpc.await;
    if tablet_answered(&outcome) {
        note_answered(endpoint, sent);
    }
    outcome
}

/// Awaits a tablet call (see [`observed`], [`tablet_error`]).
pub(crate) async fn call<T>(
    endpoint: &str,
    rpc: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    observed(endpoint, rpc)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| tablet_error(endpoint, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tablets_own_answers_count_as_answered() {
        assert!(tablet_answered(&Ok::<(), tonic::Status>(())));
        let built = tessera_common::wire_error::status(
            tessera_common::wire_error::ErrorCode::TableNotFound,
            "no such table",
        );
        assert!(
            tablet_answered::<()>(&Err(built)),
            "an error the tablet built"
        );
        let transport = tonic::Status::unavailable("connection reset");
        assert!(!tablet_answered::<()>(&Err(transport)), "a transport error");

        let endpoint = "192.0.2.1:1";
        let before = Instant::now();
        assert!(!answered_since(endpoint, before), "never answered");
        note_answered(endpoint, before);
        assert!(answered_since(endpoint, before));
        // An answer to a call sent before the judging began proves nothing of it, even
        // if it is read later, and an older one read last does not move the mark back.
        let judging = before + Duration::from_millis(10);
        assert!(!answered_since(endpoint, judging));
        note_answered(endpoint, before - Duration::from_millis(5));
        note_answered(endpoint, judging);
        assert!(answered_since(endpoint, judging));
    }

    #[tokio::test]
    async fn a_tablet_registering_again_is_called_at_once_despite_a_failed_connect() {
        // Bound but not listening: connects are refused, and no other test takes the port.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let endpoint = socket.local_addr().unwrap().to_string();
        let failed_at = Instant::now();
        let err = tablet(&endpoint).await.expect_err("nothing listens yet");
        assert!(err.to_string().contains("cannot connect"), "{err}");

        // The tablet comes up. Until it registers, the failed connect still answers
        // (for a second), so concurrent calls do not each wait out a connect timeout.
        let listener = socket.listen(64).unwrap();
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let remembered = tablet(&endpoint).await;
        if failed_at.elapsed() < FAILED_CONNECT_REMEMBERED {
            let err = remembered.expect_err("the failed connect is remembered");
            assert!(err.to_string().contains("cannot connect"), "{err}");
        }

        registered(&endpoint);
        tablet(&endpoint)
            .await
            .expect("a registered tablet is connected to at once");
        accepting.abort();
    }

    #[tokio::test]
    async fn a_channel_to_the_process_before_a_registration_is_not_reused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        let connections = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        let wait_for = |n: usize| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while connections() < n {
                assert!(Instant::now() < deadline, "{n} connections expected");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };

        tablet(&endpoint).await.expect("first connect");
        wait_for(1).await;
        tablet(&endpoint).await.expect("pooled");
        assert_eq!(connections(), 1, "a second call reuses the channel");

        registered(&endpoint);
        tablet(&endpoint).await.expect("reconnect");
        wait_for(2).await;
        accepting.abort();
    }
}
