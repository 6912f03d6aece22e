//! The OTLP/HTTP body path: content type and encoding chosen by the first byte, then
//! decompression under the size cap, protobuf or JSON decoding, and extraction, exactly as
//! `POST /v1/traces` runs them. Nothing may panic, and a decoded body is never over the cap.
#![no_main]

use idtrail_collector::receiver::http::{Encoding, decode, decompress};
use libfuzzer_sys::fuzz_target;

mod support;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = if selector & 1 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let content_encoding = match (selector >> 1) % 3 {
        0 => None,
        1 => Some("gzip"),
        _ => Some("zstd"),
    };
    let Ok(raw) = decompress(content_encoding, body, LIMIT) else {
        return;
    };
    assert!(raw.len() <= LIMIT);
    if let Ok(request) = decode(encoding, &raw) {
        let _ = support::extractor().extract(request, None, 1);
    }
});
