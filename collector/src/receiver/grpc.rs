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
        let request = request.into_inner();
        let size = request.encoded_len();
        match self.ingest.export(PROTOCOL, request, size, None).await {
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

/// tonic reports an uncompressed message over the size limit as OUT_OF_RANGE (and a compressed
/// one as RESOURCE_EXHAUSTED). OTLP wants RESOURCE_EXHAUSTED without RetryInfo for both, so
/// non-retryable; our handler never answers OUT_OF_RANGE itself, so the rewrite is exact.
pub fn size_limit_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let out_of_range = http::HeaderValue::from_static("11");
    if response.headers().get("grpc-status") == Some(&out_of_range) {
        response.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from_static("8"), // RESOURCE_EXHAUSTED
        );
    }
    response
}
