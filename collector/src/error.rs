//! The collector's one error type, and the one place errors become gRPC and HTTP statuses.
//!
//! Messages never include attribute values or request bytes: a value could be a secret, and
//! error messages end up in client logs and ours.

use std::time::Duration;

use http::StatusCode as HttpStatus;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long clients are asked to wait before retrying a refused request.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The body is not a valid OTLP ExportTraceServiceRequest.
    #[error("request could not be decoded: {0}")]
    Decode(String),
    /// The body, after decompression, is larger than `max_request_bytes`.
    #[error("request exceeds the size limit of {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("unsupported content type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}: use gzip, zstd or none")]
    UnsupportedEncoding(String),
    /// The write-ahead log cannot be written: nothing in the request was acknowledged.
    #[error("write-ahead log unavailable: {0}")]
    WalUnavailable(String),
    /// Too much data in flight: nothing in the request was acknowledged.
    #[error("collector overloaded: {0}")]
    Overloaded(String),
    /// No valid bearer key (`receivers.auth_keys_file`) or no client certificate on an mTLS
    /// listener: not retried by clients. Says what was missing, never what was sent.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("collector is starting: replaying the write-ahead log")]
    NotReady,
    #[error("collector is shutting down")]
    ShuttingDown,
    #[error("parquet: {0}")]
    Parquet(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn config(msg: impl Into<String>) -> Error {
        Error::Config(msg.into())
    }

    /// Whether the client should retry the same request later (OTLP "retryable" errors).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::WalUnavailable(_) | Error::Overloaded(_) | Error::NotReady | Error::ShuttingDown
        )
    }

    /// The gRPC status for this error, per the OTLP/gRPC spec: retryable errors are UNAVAILABLE
    /// with RetryInfo; an oversized request is RESOURCE_EXHAUSTED *without* RetryInfo, so
    /// clients do not retry it.
    pub fn to_grpc_status(&self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let message = self.to_string();
        match self {
            Error::Decode(_) | Error::UnsupportedEncoding(_) | Error::UnsupportedMediaType(_) => {
                tonic::Status::invalid_argument(message)
            }
            Error::TooLarge { .. } => tonic::Status::resource_exhausted(message),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            e if e.is_retryable() => tonic::Status::with_error_details(
                tonic::Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            ),
            _ => tonic::Status::internal(message),
        }
    }

    /// The HTTP status for this error, per the OTLP/HTTP spec. Retryable errors are 503 (the
    /// caller adds Retry-After); overload is never a 500.
    pub fn http_status(&self) -> HttpStatus {
        match self {
            Error::Decode(_) | Error::UnsupportedEncoding(_) => HttpStatus::BAD_REQUEST,
            Error::UnsupportedMediaType(_) => HttpStatus::UNSUPPORTED_MEDIA_TYPE,
            Error::TooLarge { .. } => HttpStatus::PAYLOAD_TOO_LARGE,
            Error::Unauthenticated(_) => HttpStatus::UNAUTHORIZED,
            e if e.is_retryable() => HttpStatus::SERVICE_UNAVAILABLE,
            _ => HttpStatus::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn retryable_errors_carry_retry_info_and_size_errors_do_not() {
        let unavailable = Error::WalUnavailable("disk full".into()).to_grpc_status();
        assert_eq!(unavailable.code(), tonic::Code::Unavailable);
        assert!(unavailable.get_details_retry_info().is_some());

        let too_large = Error::TooLarge { limit: 10 }.to_grpc_status();
        assert_eq!(too_large.code(), tonic::Code::ResourceExhausted);
        assert!(too_large.get_details_retry_info().is_none());

        assert_eq!(
            Error::Overloaded("x".into()).http_status(),
            HttpStatus::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            Error::Decode("x".into()).to_grpc_status().code(),
            tonic::Code::InvalidArgument
        );
        let unauthenticated = Error::Unauthenticated("no key".into());
        assert!(!unauthenticated.is_retryable());
        assert_eq!(
            unauthenticated.to_grpc_status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(unauthenticated.http_status(), HttpStatus::UNAUTHORIZED);
    }
}
