//! The timing of fast failure detection and of leaders' read leases, shared by tablets
//! (which renew and grant leases, and report a silent leader) and the nameserver (which
//! confirms a report and waits out an old leader's lease before promoting another).
//! `docs/ARCHITECTURE.md` ("Fast failover") gives the argument these numbers serve.

use std::time::Duration;

/// An idle replication link sends a heartbeat this often; each answer renews the
/// leader's read lease.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// A leader serves reads for this long after sending a request that a majority of its
/// voting members (itself included) answered in its term.
pub const LEADER_LEASE: Duration = Duration::from_millis(500);

/// A follower that has heard nothing from its leader for this long reports it.
pub const SILENCE_TIMEOUT: Duration = Duration::from_millis(400);

/// A follower reports the same leader again no sooner than this.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(1000);

/// The nameserver takes a tablet that does not answer a ping within this for silent.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// The assumed bound on how far the rate of any process's monotonic clock strays from
/// real time, in percent. Quartz clocks under NTP stay within 0.05%.
pub const CLOCK_DRIFT_PERCENT: u32 = 1;

/// A duration measured on one clock, lengthened so that it lasts at least as long as
/// `d` measured on any other: two clocks each off by the drift bound, with room to
/// spare, plus a millisecond for rounding.
pub fn stretched(d: Duration) -> Duration {
    d + d * (3 * CLOCK_DRIFT_PERCENT) / 100 + Duration::from_millis(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stretched_duration_covers_two_drifting_clocks() {
        let d = LEADER_LEASE;
        // One clock slow by the bound measures `d` while real time runs d / (1 - e); a
        // fast one measures the stretched duration as at least that.
        let e = f64::from(CLOCK_DRIFT_PERCENT) / 100.0;
        let longest_real = d.as_secs_f64() / (1.0 - e);
        let shortest_measured = stretched(d).as_secs_f64() / (1.0 + e);
        assert!(shortest_measured >= longest_real);
    }
}
