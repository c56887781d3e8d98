//! Errors of the tablet server and their mapping onto wire statuses.

use tessera_common::wire_error::{self, ErrorCode, ErrorDetail};
use thiserror::Error;
use tonic::Status;

use crate::storage::StorageError;

#[derive(Debug, Error)]
pub enum TabletError {
    #[error("table {tid} partition {pid} is not on this tablet")]
    TableNotFound { tid: u32, pid: u32 },
    #[error("table {tid} partition {pid} already exists on this tablet")]
    TableExists { tid: u32, pid: u32 },
    #[error("table {tid} partition {pid} failed to load: {reason}")]
    LoadFailed { tid: u32, pid: u32, reason: String },
    #[error("table {tid} partition {pid} is being reloaded; retry shortly")]
    Reloading { tid: u32, pid: u32 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the tablet is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T, E = TabletError> = std::result::Result<T, E>;

impl From<TabletError> for Status {
    fn from(error: TabletError) -> Status {
        let message = error.to_string();
        match error {
            TabletError::TableNotFound { .. } => {
                wire_error::status(ErrorCode::TableNotFound, message)
            }
            TabletError::TableExists { .. } => wire_error::status(ErrorCode::TableExists, message),
            TabletError::LoadFailed { .. } | TabletError::Reloading { .. } => {
                wire_error::status(ErrorCode::PartitionUnavailable, message)
            }
            TabletError::InvalidArgument(_) => {
                wire_error::status(ErrorCode::InvalidArgument, message)
            }
            TabletError::ShuttingDown => wire_error::status(ErrorCode::ShuttingDown, message),
            TabletError::Storage(e) => storage_status(e, message),
        }
    }
}

fn storage_status(error: StorageError, message: String) -> Status {
    match error {
        StorageError::Row(row) => match row.column() {
            Some(column) => wire_error::column_status(message, column),
            None => wire_error::status(ErrorCode::InvalidArgument, message),
        },
        StorageError::RowTooLarge { .. } => wire_error::status(ErrorCode::RowTooLarge, message),
        StorageError::UnknownIndex(_)
        | StorageError::InvalidArgument(_)
        | StorageError::Schema(_) => wire_error::status(ErrorCode::InvalidArgument, message),
        StorageError::Corruption { .. } => wire_error::status(ErrorCode::Corruption, message),
        StorageError::Io { .. } | StorageError::WriteFailed(_) => {
            wire_error::status(ErrorCode::Io, message)
        }
        StorageError::NotEnoughReplicas { .. } => {
            wire_error::status(ErrorCode::NotEnoughReplicas, message)
        }
        StorageError::OutcomeUnknown(_) => wire_error::status(ErrorCode::OutcomeUnknown, message),
        StorageError::WriterFenced { .. } => wire_error::status(ErrorCode::WriterFenced, message),
        StorageError::Failed(_) | StorageError::Unavailable(_) => {
            wire_error::status(ErrorCode::PartitionUnavailable, message)
        }
        StorageError::NotLeader { leader, term } => wire_error::status_from_detail(ErrorDetail {
            code: ErrorCode::NotLeader as i32,
            message,
            leader,
            term,
            ..Default::default()
        }),
        StorageError::TermTaken { term, .. } => wire_error::status_from_detail(ErrorDetail {
            code: ErrorCode::StaleTerm as i32,
            message,
            term,
            ..Default::default()
        }),
        StorageError::StaleTerm { current, .. } => wire_error::status_from_detail(ErrorDetail {
            code: ErrorCode::StaleTerm as i32,
            message,
            term: current,
            ..Default::default()
        }),
    }
}
