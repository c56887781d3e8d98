//! Seeded fault schedules: the same seed gives the same schedule, printed before a run so
//! a failing one can be replayed (`CHAOS_SEED=<seed>`).

use std::fmt;
use std::time::Duration;

/// A small deterministic generator (splitmix64): schedules must not change with a
/// dependency's version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `low..=high` milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// One fault, healed after `hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of a tablet, restarted after `hold`.
    KillTablet { tablet: usize, hold: Duration },
    /// SIGSTOP of a tablet for `hold` (shorter or longer than its session timeout).
    PauseTablet { tablet: usize, hold: Duration },
    /// SIGSTOP of ZooKeeper for `hold`.
    PauseZooKeeper { hold: Duration },
    /// Two tablets killed at once, restarted together after `hold`.
    KillTwoTablets {
        tablets: (usize, usize),
        hold: Duration,
    },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::KillTablet { .. } => "kill_tablet",
            Fault::PauseTablet { .. } => "pause_tablet",
            Fault::PauseZooKeeper { .. } => "pause_zookeeper",
            Fault::KillTwoTablets { .. } => "kill_two_tablets",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillTablet { tablet, hold } => {
                write!(f, "kill -9 tablet {tablet}, restart after {hold:?}")
            }
            Fault::PauseTablet { tablet, hold } => {
                write!(f, "SIGSTOP tablet {tablet} for {hold:?}")
            }
            Fault::PauseZooKeeper { hold } => write!(f, "SIGSTOP ZooKeeper for {hold:?}"),
            Fault::KillTwoTablets { tablets, hold } => write!(
                f,
                "kill -9 tablets {} and {}, restart after {hold:?}",
                tablets.0, tablets.1
            ),
        }
    }
}

/// One step: a fault, then `settle` of calm before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub settle: Duration,
}

/// A schedule of `steps` faults over `tablets` tablets whose sessions time out after
/// `session`: pauses both shorter and longer than it.
pub fn schedule(seed: u64, steps: usize, tablets: usize, session: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let session_ms = session.as_millis() as u64;
    (0..steps)
        .map(|_| {
            let tablet = rng.below(tablets as u64) as usize;
            let fault = match rng.below(10) {
                0..=3 => Fault::KillTablet {
                    tablet,
                    hold: rng.millis(200, 2 * session_ms),
                },
                4..=6 => Fault::PauseTablet {
                    tablet,
                    hold: rng.millis(session_ms / 4, 2 * session_ms),
                },
                7 => Fault::PauseZooKeeper {
                    hold: rng.millis(200, session_ms / 2),
                },
                _ => {
                    let other = (tablet + 1 + rng.below(tablets as u64 - 1) as usize) % tablets;
                    Fault::KillTwoTablets {
                        tablets: (tablet, other),
                        hold: rng.millis(200, session_ms),
                    }
                }
            };
            Step {
                fault,
                settle: rng.millis(500, 2_000),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule() {
        let session = Duration::from_secs(3);
        let a = schedule(42, 20, 4, session);
        assert_eq!(a, schedule(42, 20, 4, session));
        assert_ne!(a, schedule(43, 20, 4, session));
        for step in &a {
            if let Fault::KillTwoTablets { tablets, .. } = step.fault {
                assert_ne!(tablets.0, tablets.1, "two different tablets");
            }
        }
        let kinds: std::collections::BTreeSet<&str> = schedule(7, 200, 4, session)
            .iter()
            .map(|s| s.fault.name())
            .collect();
        assert_eq!(kinds.len(), 4, "every kind of fault comes up: {kinds:?}");
    }
}
