//! Errors of the storage layer.

use std::io;
use std::path::{Path, PathBuf};

use tessera_common::codec::RowError;
use tessera_common::SchemaError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("i/o error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Data on disk failed a check. Never skipped silently: the replica refuses to load.
    #[error("corrupt data in {} at byte {position}: {reason}", file.display())]
    Corruption {
        file: PathBuf,
        position: u64,
        reason: String,
    },
    /// An earlier write or fsync failed; the binlog accepts nothing more, because the
    /// state of the file after a failed fsync is unknown.
    #[error("binlog is unusable after an earlier failure: {0}")]
    Failed(String),
    /// The binlog could not take this write (it failed now or earlier): nothing of it was
    /// logged, so its outcome is known, and retrying on this replica cannot help.
    #[error("storage failure, the write was not logged: {0}")]
    WriteFailed(String),
    #[error(transparent)]
    Row(#[from] RowError),
    #[error("invalid schema: {0}")]
    Schema(#[from] SchemaError),
    #[error("row of {size} bytes exceeds the limit of {limit} bytes")]
    RowTooLarge { size: usize, limit: usize },
    #[error("table has no index `{0}`")]
    UnknownIndex(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Writes go to the leader; `leader` is empty when this replica does not know it.
    #[error("this replica is not the leader (leader: {}, term {term})", if leader.is_empty() { "unknown" } else { leader })]
    NotLeader { leader: String, term: u64 },
    /// A request from an older term: its sender has been superseded.
    #[error("term {got} is older than this replica's term {current}")]
    StaleTerm { current: u64, got: u64 },
    /// A fence or promotion in a term that already has a leader: one leader per term, so
    /// it needs a higher term.
    #[error("term {term} already has a leader ({holder}); a fence or a change of leader needs a higher term")]
    TermTaken { term: u64, holder: String },
    /// The replica cannot serve this now (lease lost, behind, reloading).
    #[error("partition unavailable: {0}")]
    Unavailable(String),
    /// A quorum write cannot commit: too few voting members are shipped to. Nothing was
    /// written.
    #[error("not enough replicas: {live} of {voters} hold the partition, {needed} needed")]
    NotEnoughReplicas {
        live: usize,
        voters: usize,
        needed: usize,
    },
    /// The write was logged but its commit could not be confirmed: it may or may not
    /// survive. A retry with the same client id and sequence number is safe.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A write of a writer's epoch other than the one registered (a newer run took the
    /// writer over, or the partition does not know the writer: `registered` 0), or a
    /// registration older than the one registered. Nothing was written.
    #[error("writer {client_id:x} epoch {epoch} may not write: the partition has epoch {registered} registered for it (0: none)")]
    WriterFenced {
        client_id: u64,
        epoch: u64,
        registered: u64,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// `map_err` helper: an io error on `path`.
pub fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}
