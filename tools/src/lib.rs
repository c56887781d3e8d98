//! Operator tools: `tessera-ops` (recoverdata and other cluster-wide operations),
//! `tessera-daemon` (keeps a server running) and `tessera-bench` (a load generator).

pub mod bench;
pub mod daemon;
pub mod ops;
