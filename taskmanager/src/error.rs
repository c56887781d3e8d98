use tessera_common::wire_error::{self, ErrorCode, ErrorDetail};
use tonic::Status;

/// Errors of the taskmanager.
#[derive(Debug, thiserror::Error)]
pub enum TmError {
    #[error("this taskmanager is a standby (leader: {})", if leader.is_empty() { "unknown" } else { leader })]
    NotLeader { leader: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("there is no job {0}")]
    NoSuchJob(u64),
    #[error("ZooKeeper: {0}")]
    Zk(String),
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Io(String),
    /// A newer run of the job took its writer over: this run stops without a word.
    #[error("{0}")]
    Fenced(String),
    /// This leader lost touch with ZooKeeper for a while: what it was doing stops, and
    /// runs again once ZooKeeper answers (or on whichever taskmanager leads then).
    #[error("{0}")]
    Suspended(String),
}

pub type Result<T> = std::result::Result<T, TmError>;

impl From<zookeeper_client::Error> for TmError {
    fn from(e: zookeeper_client::Error) -> Self {
        TmError::Zk(e.to_string())
    }
}

impl From<tessera_ns_client::ClientError> for TmError {
    fn from(e: tessera_ns_client::ClientError) -> Self {
        match e {
            tessera_ns_client::ClientError::Fenced(_) => TmError::Fenced(e.to_string()),
            e => TmError::Cluster(e.to_string()),
        }
    }
}

impl From<TmError> for Status {
    fn from(error: TmError) -> Status {
        let message = error.to_string();
        match error {
            TmError::NotLeader { leader } => wire_error::status_from_detail(ErrorDetail {
                code: ErrorCode::NotLeader as i32,
                message,
                leader,
                ..Default::default()
            }),
            TmError::InvalidArgument(_) | TmError::NoSuchJob(_) => {
                wire_error::status(ErrorCode::InvalidArgument, message)
            }
            TmError::PermissionDenied(_) => {
                wire_error::status(ErrorCode::PermissionDenied, message)
            }
            TmError::Zk(_)
            | TmError::Cluster(_)
            | TmError::Io(_)
            | TmError::Fenced(_)
            | TmError::Suspended(_) => wire_error::status(ErrorCode::Internal, message),
        }
    }
}
