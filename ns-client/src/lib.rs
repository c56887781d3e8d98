//! The Tessera client SDK.
//!
//! A [`Client`] finds the table metadata in ZooKeeper (kept fresh by watching
//! `/notify/table_changed`), sends each write and read to the leader of the row's
//! partition, and rides through failovers by itself: on `NOT_LEADER`, an unavailable
//! partition or a dead connection it refreshes the metadata and retries with backoff
//! until an overall deadline.
//!
//! ```no_run
//! # async fn example() -> Result<(), tessera_ns_client::ClientError> {
//! use tessera_common::Value;
//! use tessera_ns_client::Client;
//!
//! let client = Client::connect("127.0.0.1:2181", "/tessera").await?;
//! client
//!     .put("default", "t1", vec![Value::String("user1".into()), Value::Timestamp(1), Value::Double(0.5)])
//!     .await?;
//! let row = client.get("default", "t1", vec![Value::String("user1".into())]).await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod coalesce;
pub mod create_table;
mod error;
pub mod jobs;
pub mod nameserver;
pub mod repl;
pub mod shell;
pub mod users;

pub use client::{
    Client, ClientOptions, FollowerRead, ReadStats, RowPage, DEFAULT_MAX_RESPONSE_BYTES,
};
pub use coalesce::WriteStats;
pub use error::ClientError;
