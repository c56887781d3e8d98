//! Seeded fault schedules: the same seed gives the same schedule, printed before a run so
//! a failing one can be replayed (`CHAOS_SEED=<seed>`).

use std::fmt;
use std::time::Duration;

use crate::netbed::Node;

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
    /// `kill -9` of a process, restarted after `hold`.
    Kill { node: Node, hold: Duration },
    /// SIGSTOP of a process for `hold` (shorter or longer than its session timeout).
    Pause { node: Node, hold: Duration },
    /// Two tablets killed at once, restarted together after `hold`.
    KillTwoTablets {
        tablets: (usize, usize),
        hold: Duration,
    },
    /// One host cut off from every other host of the cluster.
    Isolate { node: Node, hold: Duration },
    /// The cluster split in two: `minority` on one side, the rest on the other.
    Split { minority: Vec<Node>, hold: Duration },
    /// Packets from `from` to `to` dropped; the other way still passes.
    OneWay {
        from: Node,
        to: Node,
        hold: Duration,
    },
    /// `left` and `right` cannot reach each other; `bridge` reaches both.
    Bridge {
        bridge: Node,
        left: Vec<Node>,
        right: Vec<Node>,
        hold: Duration,
    },
    /// Two of the three ZooKeeper members killed: no quorum until they return.
    ZooKeeperQuorumLoss { hold: Duration },
    /// Tablet 0's filesystem filled to the last byte for `hold`.
    FullDisk { hold: Duration },
    /// Every process killed at once, brought back and repaired with `recoverdata`.
    WholeCluster,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Kill { node, .. } => match node {
                Node::ZooKeeper(_) => "kill_zookeeper",
                Node::Nameserver(_) => "kill_nameserver",
                Node::Tablet(_) => "kill_tablet",
            },
            Fault::Pause { node, .. } => match node {
                Node::ZooKeeper(_) => "pause_zookeeper",
                Node::Nameserver(_) => "pause_nameserver",
                Node::Tablet(_) => "pause_tablet",
            },
            Fault::KillTwoTablets { .. } => "kill_two_tablets",
            Fault::Isolate { .. } => "isolate",
            Fault::Split { .. } => "split",
            Fault::OneWay { .. } => "one_way",
            Fault::Bridge { .. } => "bridge",
            Fault::ZooKeeperQuorumLoss { .. } => "zookeeper_quorum_loss",
            Fault::FullDisk { .. } => "full_disk",
            Fault::WholeCluster => "whole_cluster_restart",
        }
    }

    /// Every fault kind [`schedule`] can produce.
    pub const KINDS: usize = 14;
}

fn names(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(Node::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { node, hold } => write!(f, "kill -9 {node}, restart after {hold:?}"),
            Fault::Pause { node, hold } => write!(f, "SIGSTOP {node} for {hold:?}"),
            Fault::KillTwoTablets { tablets, hold } => write!(
                f,
                "kill -9 t{} and t{}, restart after {hold:?}",
                tablets.0, tablets.1
            ),
            Fault::Isolate { node, hold } => write!(f, "isolate {node} for {hold:?}"),
            Fault::Split { minority, hold } => {
                write!(f, "split off {{{}}} for {hold:?}", names(minority))
            }
            Fault::OneWay { from, to, hold } => {
                write!(f, "drop packets {from} -> {to} for {hold:?}")
            }
            Fault::Bridge {
                bridge,
                left,
                right,
                hold,
            } => write!(
                f,
                "cut {{{}}} from {{{}}}, {bridge} sees both, for {hold:?}",
                names(left),
                names(right)
            ),
            Fault::ZooKeeperQuorumLoss { hold } => {
                write!(f, "kill -9 two ZooKeeper members, restart after {hold:?}")
            }
            Fault::FullDisk { hold } => write!(f, "fill t0's disk for {hold:?}"),
            Fault::WholeCluster => write!(f, "kill -9 everything, restart, recoverdata"),
        }
    }
}

/// One step: a fault, then `settle` of calm before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub fault: Fault,
    pub settle: Duration,
}

/// The processes a schedule can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub zookeepers: usize,
    pub nameservers: usize,
    pub tablets: usize,
    /// Whether tablet 0 has a small filesystem to fill.
    pub small_disk: bool,
}

impl Layout {
    fn nodes(&self) -> Vec<Node> {
        (0..self.zookeepers)
            .map(Node::ZooKeeper)
            .chain((0..self.nameservers).map(Node::Nameserver))
            .chain((0..self.tablets).map(Node::Tablet))
            .collect()
    }
}

/// `nodes` shuffled (Fisher-Yates).
fn shuffled(rng: &mut Rng, mut nodes: Vec<Node>) -> Vec<Node> {
    for i in (1..nodes.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        nodes.swap(i, j);
    }
    nodes
}

/// A schedule of `steps` faults over `layout`, whose sessions time out after `session`:
/// holds both shorter and longer than it.
pub fn schedule(seed: u64, steps: usize, layout: Layout, session: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let session_ms = session.as_millis() as u64;
    let nodes = layout.nodes();
    (0..steps)
        .map(|_| {
            let hold = rng.millis(200, 2 * session_ms);
            let tablet = rng.below(layout.tablets as u64) as usize;
            let any = nodes[rng.below(nodes.len() as u64) as usize];
            let fault = match rng.below(24) {
                0..=4 => Fault::Kill {
                    node: Node::Tablet(tablet),
                    hold,
                },
                5..=7 => Fault::Pause {
                    node: Node::Tablet(tablet),
                    hold,
                },
                8 => Fault::Kill {
                    node: Node::Nameserver(rng.below(layout.nameservers as u64) as usize),
                    hold,
                },
                9 => Fault::Pause {
                    node: Node::Nameserver(rng.below(layout.nameservers as u64) as usize),
                    hold,
                },
                10 => Fault::Kill {
                    node: Node::ZooKeeper(rng.below(layout.zookeepers as u64) as usize),
                    hold,
                },
                11 => Fault::Pause {
                    node: Node::ZooKeeper(rng.below(layout.zookeepers as u64) as usize),
                    hold,
                },
                12 => {
                    let other = (tablet + 1 + rng.below(layout.tablets as u64 - 1) as usize)
                        % layout.tablets;
                    Fault::KillTwoTablets {
                        tablets: (tablet, other),
                        hold,
                    }
                }
                13..=15 => Fault::Isolate { node: any, hold },
                16..=17 => {
                    let order = shuffled(&mut rng, nodes.clone());
                    let minority = (nodes.len() - 1) / 2;
                    let mut side = order[..1 + rng.below(minority as u64) as usize].to_vec();
                    side.sort();
                    Fault::Split {
                        minority: side,
                        hold,
                    }
                }
                18..=19 => {
                    let order = shuffled(&mut rng, nodes.clone());
                    Fault::OneWay {
                        from: order[0],
                        to: order[1],
                        hold,
                    }
                }
                20 => {
                    let order = shuffled(&mut rng, nodes.clone());
                    let half = (order.len() - 1) / 2;
                    let mut left = order[1..1 + half].to_vec();
                    let mut right = order[1 + half..].to_vec();
                    left.sort();
                    right.sort();
                    Fault::Bridge {
                        bridge: order[0],
                        left,
                        right,
                        hold,
                    }
                }
                21 => Fault::ZooKeeperQuorumLoss { hold },
                22 if layout.small_disk => Fault::FullDisk { hold },
                22 => Fault::Kill {
                    node: Node::Tablet(tablet),
                    hold,
                },
                _ => Fault::WholeCluster,
            };
            Step {
                fault,
                settle: rng.millis(1_000, 3_000),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        zookeepers: 3,
        nameservers: 2,
        tablets: 4,
        small_disk: true,
    };

    #[test]
    fn a_seed_replays_its_schedule() {
        let session = Duration::from_secs(3);
        let a = schedule(42, 20, LAYOUT, session);
        assert_eq!(a, schedule(42, 20, LAYOUT, session));
        assert_ne!(a, schedule(43, 20, LAYOUT, session));
        let many = schedule(7, 500, LAYOUT, session);
        for step in &many {
            match &step.fault {
                Fault::KillTwoTablets { tablets, .. } => {
                    assert_ne!(tablets.0, tablets.1, "two different tablets")
                }
                Fault::Split { minority, .. } => {
                    assert!(!minority.is_empty() && minority.len() < 5, "{minority:?}")
                }
                Fault::OneWay { from, to, .. } => assert_ne!(from, to),
                Fault::Bridge {
                    bridge,
                    left,
                    right,
                    ..
                } => {
                    assert!(!left.contains(bridge) && !right.contains(bridge));
                    assert!(left.iter().all(|n| !right.contains(n)));
                    assert_eq!(left.len() + right.len(), 8);
                }
                _ => {}
            }
        }
        let kinds: std::collections::BTreeSet<&str> = many.iter().map(|s| s.fault.name()).collect();
        assert_eq!(
            kinds.len(),
            Fault::KINDS,
            "every kind of fault comes up: {kinds:?}"
        );
        let without_disk = Layout {
            small_disk: false,
            ..LAYOUT
        };
        assert!(schedule(7, 500, without_disk, session)
            .iter()
            .all(|s| !matches!(s.fault, Fault::FullDisk { .. })));
    }
}
