//! The Tessera tablet: storage of partition replicas and the gRPC service over them.

pub mod catalog;
pub mod config;
pub mod error;
pub mod metrics;
pub mod repair;
pub mod replication;
pub mod server;
pub mod service;
pub mod storage;
pub mod watchdog;

pub use config::TabletConfig;
pub use server::run;
