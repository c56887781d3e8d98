//! The fault-injection bed: a cluster of separate hosts on one machine (network
//! namespaces on a bridge of the test's own), with partitions by nftables and a small
//! filesystem for full-disk faults. Needs root; nothing leaves the machine.

pub mod cluster;
pub mod host;
pub mod network;

pub use cluster::{NetCluster, NetClusterSpec, Node};
pub use host::HostProcess;
pub use network::{remove_leftovers, Host, Network};
