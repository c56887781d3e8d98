//! The Tessera client SDK.
//!
//! A [`Client`] finds the table metadata in ZooKeeper (kept fresh by watching
//! `/notify/table_changed`), sends each write and read to the leader of the row's
//! partition, and rides through failovers by itself: on `NOT_LEADER`, an unavailable
//! partition or a dead connection it refreshes the metadata and retries with backoff
//! until the call's deadline ([`ClientOptions::deadline`], or [`Client::within`]).
//! Failures no retry can mend (bad input, a refused permission, a full disk) come back
//! at once. Large results come page by page ([`Client::scan`] with limit 0 reads a
//! whole key; [`Client::scan_page`] hands the cursor to the caller); any index can be
//! read ([`Client::scan_index`]); the client outlives an expired ZooKeeper session.
//! Programs without a Tokio runtime use [`blocking::Client`].
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
//!
//! // Every row of a key, however many, newest first; then many rows in one call.
//! let rows = client
//!     .scan("default", "t1", vec![Value::String("user1".into())], None, None, 0)
//!     .await?;
//! client
//!     .put_batch(
//!         "default",
//!         "t1",
//!         (0..100)
//!             .map(|i| vec![Value::String(format!("user{i}")), Value::Timestamp(i), Value::Double(0.0)])
//!             .collect(),
//!     )
//!     .await?;
//! # Ok(())
//! # }
//! ```

pub mod blocking;
mod client;
mod coalesce;
mod error;
pub mod nameserver;

pub use client::{
    Client, ClientOptions, FollowerRead, ReadMoment, ReadStats, RowPage, Writer,
    WriterRegistration, DEFAULT_MAX_RESPONSE_BYTES,
};
pub use coalesce::WriteStats;
pub use error::ClientError;
