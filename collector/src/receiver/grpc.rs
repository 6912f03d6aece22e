//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` on tonic.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use super::Ingest;
use crate::listener::Peer;

pub const PROTOCOL: &str = "grpc";

pub struct GrpcReceiver {
    ingest: Arc<Ingest>,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let peer = Peer::of(request.extensions());
        let principal = match self.ingest.authenticate(authorization, peer) {
            Ok(principal) => principal,
            Err(error) => {
                self.ingest.telemetry().request_refused(PROTOCOL, &error);
                return Err(error.to_grpc_status());
            }
        };
        let request = request.into_inner();
        let size = request.encoded_len();
        match self.ingest.export(PROTOCOL, request, size, principal).await {
            Ok(response) => Ok(Response::new(response)),
            Err(error) => {
                self.ingest.telemetry().request_refused(PROTOCOL, &error);
                Err(error.to_grpc_status())
            }
        }
    }
}

/// The TraceService with OTLP's size limit (checked by tonic after decompression) and the
/// compressions OTLP exporters use.
pub fn service(ingest: Arc<Ingest>) -> TraceServiceServer<GrpcReceiver> {
    let limit = ingest.max_request_bytes;
    TraceServiceServer::new(GrpcReceiver { ingest })
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
}

/// Rewrites tonic's own decode-stage statuses to the ones OTLP specifies. Both happen before
/// our handler runs, so they can only be fixed on the way out:
/// - a message over the size limit is OUT_OF_RANGE when uncompressed (RESOURCE_EXHAUSTED when
///   compressed); OTLP wants RESOURCE_EXHAUSTED, without RetryInfo, for both;
/// - an undecodable protobuf is INTERNAL; OTLP wants INVALID_ARGUMENT.
///
/// Our handler never answers OUT_OF_RANGE or INTERNAL with these messages, so the rewrite is
/// exact.
pub fn otlp_status_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    const OUT_OF_RANGE: &[u8] = b"11";
    const INTERNAL: &[u8] = b"13";
    // grpc-message is percent-encoded (spaces included).
    const DECODE_FAILURES: &[&[u8]] = &[
        b"failed%20to%20decode%20Protobuf%20message",
        b"Unexpected%20EOF%20decoding%20stream",
    ];
    let headers = response.headers();
    let code = headers.get("grpc-status").map(|v| v.as_bytes());
    let message = headers
        .get("grpc-message")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let rewrite = match code {
        Some(OUT_OF_RANGE) => Some("8"), // RESOURCE_EXHAUSTED
        Some(INTERNAL) if DECODE_FAILURES.iter().any(|p| message.starts_with(p)) => Some("3"), // INVALID_ARGUMENT
        _ => None,
    };
    if let Some(code) = rewrite {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}
