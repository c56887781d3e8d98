//! Errors of the nameserver and their wire statuses.

use tessera_common::wire_error::{self, ErrorCode, ErrorDetail};
use thiserror::Error;
use tonic::Status;

use crate::placement::PlacementError;

#[derive(Debug, Error)]
pub enum NsError {
    #[error("this nameserver is a standby (leader: {})", if leader.is_empty() { "unknown" } else { leader })]
    NotLeader { leader: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("table `{0}` already exists")]
    TableExists(String),
    #[error("table `{0}` does not exist")]
    TableNotFound(String),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("ZooKeeper: {0}")]
    Zk(String),
    #[error("tablet {endpoint}: {message}")]
    Tablet { endpoint: String, message: String },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("user `{0}` does not exist")]
    UserNotFound(String),
    #[error("user `{0}` already exists")]
    UserExists(String),
}

pub type Result<T, E = NsError> = std::result::Result<T, E>;

impl From<zookeeper_client::Error> for NsError {
    fn from(e: zookeeper_client::Error) -> Self {
        NsError::Zk(e.to_string())
    }
}

impl From<tessera_common::table_layout::LayoutError> for NsError {
    fn from(e: tessera_common::table_layout::LayoutError) -> Self {
        NsError::Zk(e.to_string())
    }
}

impl From<NsError> for Status {
    fn from(error: NsError) -> Status {
        let message = error.to_string();
        match error {
            NsError::NotLeader { leader } => wire_error::status_from_detail(ErrorDetail {
                code: ErrorCode::NotLeader as i32,
                message,
                leader,
                ..Default::default()
            }),
            NsError::InvalidArgument(_) | NsError::Placement(_) => {
                wire_error::status(ErrorCode::InvalidArgument, message)
            }
            NsError::TableExists(_) => wire_error::status(ErrorCode::TableExists, message),
            NsError::TableNotFound(_) => wire_error::status(ErrorCode::TableNotFound, message),
            NsError::PermissionDenied(_) => {
                wire_error::status(ErrorCode::PermissionDenied, message)
            }
            NsError::UserNotFound(_) | NsError::UserExists(_) => {
                wire_error::status(ErrorCode::InvalidArgument, message)
            }
            NsError::Zk(_) | NsError::Tablet { .. } => {
                wire_error::status(ErrorCode::PartitionUnavailable, message)
            }
        }
    }
}
