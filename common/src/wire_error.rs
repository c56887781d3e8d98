//! Structured errors on the wire: every error status carries an encoded [`ErrorDetail`]
//! in its details, so clients act on a code (reroute on `NotLeader`, retry on
//! `PartitionUnavailable`) instead of parsing text.

use prost::Message;
use tonic::{Code, Status};

pub use tessera_proto::common::{ErrorCode, ErrorDetail};

/// A status with the given code and message.
pub fn status(code: ErrorCode, message: impl Into<String>) -> Status {
    status_from_detail(ErrorDetail {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    })
}

/// A status about one column (bad input naming the column).
pub fn column_status(message: impl Into<String>, column: &str) -> Status {
    status_from_detail(ErrorDetail {
        code: ErrorCode::InvalidArgument as i32,
        message: message.into(),
        column: column.to_string(),
        ..Default::default()
    })
}

pub fn status_from_detail(detail: ErrorDetail) -> Status {
    let code = grpc_code(detail.code());
    Status::with_details(code, detail.message.clone(), detail.encode_to_vec().into())
}

/// The structured reason of a status; `None` when the peer sent none (for example a
/// transport error).
pub fn detail_of(status: &Status) -> Option<ErrorDetail> {
    if status.details().is_empty() {
        return None;
    }
    ErrorDetail::decode(status.details()).ok()
}

/// The structured code of a status, `Unspecified` when there is none.
/// The detail a status carries, or one of `code` with its message when it carries none
/// (a transport error, a status from elsewhere).
pub fn detail_or(status: &Status, code: ErrorCode) -> ErrorDetail {
    detail_of(status).unwrap_or_else(|| ErrorDetail {
        code: code as i32,
        message: status.message().to_string(),
        ..Default::default()
    })
}

pub fn code_of(status: &Status) -> ErrorCode {
    detail_of(status).map_or(ErrorCode::Unspecified, |d| d.code())
}

fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument | ErrorCode::RowTooLarge => Code::InvalidArgument,
        ErrorCode::TableNotFound => Code::NotFound,
        ErrorCode::TableExists => Code::AlreadyExists,
        ErrorCode::Corruption => Code::DataLoss,
        ErrorCode::NotLeader | ErrorCode::StaleTerm | ErrorCode::WriterFenced => {
            Code::FailedPrecondition
        }
        ErrorCode::PartitionUnavailable
        | ErrorCode::ShuttingDown
        | ErrorCode::NotEnoughReplicas => Code::Unavailable,
        ErrorCode::OutcomeUnknown => Code::DeadlineExceeded,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Io | ErrorCode::Internal | ErrorCode::Unspecified => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_round_trips_through_status() {
        let s = column_status("column `v` expects int64", "v");
        assert_eq!(s.code(), Code::InvalidArgument);
        let d = detail_of(&s).unwrap();
        assert_eq!(d.code(), ErrorCode::InvalidArgument);
        assert_eq!(d.column, "v");
        assert_eq!(
            code_of(&status(ErrorCode::TableNotFound, "x")),
            ErrorCode::TableNotFound
        );
        assert_eq!(code_of(&Status::internal("plain")), ErrorCode::Unspecified);
        let plain = detail_or(&Status::internal("plain"), ErrorCode::Internal);
        assert_eq!(
            (plain.code(), plain.message.as_str()),
            (ErrorCode::Internal, "plain")
        );
        assert_eq!(detail_or(&s, ErrorCode::Internal).column, "v");
    }
}
