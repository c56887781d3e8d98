//! Replication: term histories, the quorum commit, and the leader's replicators.

pub mod history;
pub mod leader;
pub mod quorum;
pub mod transfer;
