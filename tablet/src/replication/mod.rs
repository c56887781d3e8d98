//! Replication: term histories, the quorum commit, and the leader's replicators.

pub use tessera_common::history;
pub mod heartbeat;
pub mod leader;
pub mod link_channels;
pub mod pair_lease;
pub mod quorum;
pub mod reach;
pub mod transfer;
