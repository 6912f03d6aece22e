//! The OTLP/gRPC path after tonic: protobuf decoding of an export request, then extraction
//! (validation, attribute flattening, secret scrubbing, JWT decoding, the lineage columns).
//! Nothing may panic; every span is either extracted or counted as rejected.
#![no_main]

use idtrail_collector::receiver::http::{Encoding, decode};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

mod support;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode(Encoding::Protobuf, data) else {
        return;
    };
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    // Re-encoding what decoded must decode to the same request (prost round trip).
    let again = ExportTraceServiceRequest::decode(&request.encode_to_vec()[..]);
    assert_eq!(again.as_ref().ok(), Some(&request));
    let extracted = support::extractor().extract(request, Some("fuzz".into()), 1);
    assert_eq!(extracted.batch.spans.len() + extracted.rejected_count(), spans);
});
