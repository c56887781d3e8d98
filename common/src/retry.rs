//! Retrying a call: how long to wait between attempts, and which failures are worth
//! another one. One policy for every client of the cluster — the SDK, ns_client,
//! `tessera-ops` and the taskmanager (through the SDK and the leader connections).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays between attempts: from about `first`, doubling up to `max`, each lengthened by a
/// random jitter (up to the delay itself) so that clients failing together do not retry
/// in step. Endless: the caller stops at its deadline.
pub fn backoff(first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Whether a failure that carries no error detail of the server's own — the transport's
/// or the gRPC layer's, gRPC code `code` — may pass on another attempt: a lost or refused
/// connection, a reset, a timeout. An answer too large for the client, a request too
/// large for the server, a call it does not know or a refused credential would fail the
/// same way every time.
pub fn transport_may_recover(code: tonic::Code) -> bool {
    use tonic::Code;
    !matches!(
        code,
        Code::OutOfRange
            | Code::ResourceExhausted
            | Code::InvalidArgument
            | Code::Unimplemented
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let first = Duration::from_millis(10);
        let max = Duration::from_millis(80);
        let delays: Vec<Duration> = backoff(first, max).take(12).collect();
        assert_eq!(delays.len(), 12, "endless");
        for d in &delays {
            // Jitter adds up to the delay itself.
            assert!(*d >= first && *d <= max * 2, "{d:?}");
        }
        assert!(
            delays[8..].iter().all(|d| *d >= max),
            "capped at {max:?}: {delays:?}"
        );
    }

    #[test]
    fn only_passing_transport_failures_are_retried() {
        assert!(transport_may_recover(tonic::Code::Unavailable));
        assert!(transport_may_recover(tonic::Code::Unknown));
        assert!(transport_may_recover(tonic::Code::DeadlineExceeded));
        assert!(!transport_may_recover(tonic::Code::OutOfRange));
        assert!(!transport_may_recover(tonic::Code::Unimplemented));
    }
}
