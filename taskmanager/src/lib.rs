//! The taskmanager: two or more instances, one elected through ZooKeeper
//! (`/taskmanager/leader`) runs jobs — CSV import into a table, export of a table to CSV,
//! a snapshot of every table — the others stand by and take over, resuming unfinished
//! jobs from the records and checkpoints kept in ZooKeeper.

pub mod error;
mod export;
pub mod files;
mod http;
mod import;
pub mod jobs;
pub mod metrics;
mod server;
mod service;
mod snapshot;
pub mod state;

pub use server::{run, TaskManagerConfig};
