//! The Tessera nameserver: elected through ZooKeeper, keeps the table metadata, follows
//! the tablets, and places new tables' replicas.

pub mod alignment;
pub mod combining;
pub mod commands;
pub mod databases;
pub mod detection;
pub mod error;
pub mod fencing;
pub mod group_writes;
pub mod http;
pub mod metadata_cache;
pub mod metrics;
pub mod op_book;
pub mod ops;
pub mod paths;
pub mod placement;
pub mod planner;
pub mod reconcile;
pub mod schedule;
pub mod schema_change;
pub mod server;
pub mod service;
pub mod state;
pub mod status_page;
pub mod tablet_channels;
pub mod ttl;
pub mod users;
pub mod voting;

pub use server::{run, NameserverConfig};
