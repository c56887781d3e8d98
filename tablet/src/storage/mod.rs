//! Storage of partition replicas: memtable, binlog, snapshots and the table that ties
//! them together.

pub mod apply;
pub mod binlog;
pub mod crashsafe;
pub mod durability;
pub mod entry;
pub mod error;
pub mod journal;
pub mod memtable;
pub mod page;
pub mod replica;
pub mod sessions;
pub mod snapshot;
mod state_slots;
pub mod table;

pub use binlog::{BinlogOptions, FsyncPolicy};
pub use durability::{Durability, FlushPool};
pub use error::{Result, StorageError};
pub use journal::Journal;
pub use page::{Page, PageLimit};
pub use table::{Logged, Table, TableOptions};
