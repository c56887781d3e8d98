//! Errors of the client SDK.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("ZooKeeper: {0}")]
    Zk(String),
    #[error("table `{0}` does not exist")]
    TableNotFound(String),
    /// The request is wrong and retrying cannot help (bad row, unknown index, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// The deadline passed while the cluster could not serve the request.
    #[error("gave up after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    /// The call failed in a way no retry can mend (an answer larger than
    /// `max_response_bytes`, a request the tablet cannot take, …).
    #[error("refused: {0}")]
    Refused(String),
    /// The tablet could not store the write (a full disk, a failing device): no retry
    /// helps until an operator acts.
    #[error("storage failure: {0}")]
    Storage(String),
    /// A newer run of this writer registered (see `Writer`), or the partition does not
    /// know this run: this attempt wrote nothing (an earlier attempt of the same call may
    /// have), and this run should stop.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The user may not do this, or is not logged in.
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<zookeeper_client::Error> for ClientError {
    fn from(e: zookeeper_client::Error) -> Self {
        ClientError::Zk(e.to_string())
    }
}
