//! Types every Tessera crate shares: identifiers, schemas, the row codec, index keys and
//! partitioning, and the structured errors carried on the wire.

pub mod auth;
pub mod cluster_secret;
pub mod codec;
pub mod coordination;
pub mod failure_detection;
pub mod history;
pub mod key;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod retry;
pub mod schema;
pub mod server_process;
pub mod table_layout;
pub mod tls;
pub mod types;
pub mod user_directory;
pub mod value;
pub mod wire_error;
pub mod zk_auth;
pub mod zk_session;

pub use schema::{Column, ColumnType, Index, Schema, SchemaError, Ttl};
pub use types::{Endpoint, Offset, Pid, Term, Tid};
pub use value::Value;
