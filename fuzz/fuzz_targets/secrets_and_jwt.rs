//! Secret detection and JWT decoding on arbitrary text: scrubbing a value by key and as free
//! text, and decoding it as a token. Nothing may panic, and no scrubbed output may still hold
//! a JWT-shaped value it found.
#![no_main]

use idtrail_collector::extract::attributes::Value;
use idtrail_collector::extract::jwt::JwtDecoder;
use idtrail_collector::extract::secrets::{KeyCache, is_jwt};
use libfuzzer_sys::fuzz_target;

mod support;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (key, value) = text.split_once('=').unwrap_or(("http.request.header.authorization", &text));
    let scrubber = support::scrubber();
    let mut found = Vec::new();
    let mut cache = KeyCache::default();
    let mut scrubbed = Value::Text(value.to_string());
    scrubber.scrub_attribute(key, &mut scrubbed, &mut found, &mut cache);
    let mut free_text = value.to_string();
    scrubber.scrub_text("name", &mut free_text, &mut found);
    for word in free_text.split(|c: char| c.is_whitespace() || c == '"' || c == ',') {
        assert!(!is_jwt(word), "a JWT survived scrubbing: {word}");
    }
    static DECODER: std::sync::OnceLock<JwtDecoder> = std::sync::OnceLock::new();
    let decoder = DECODER.get_or_init(|| JwtDecoder::new(None).expect("no JWKS file needed"));
    let _ = decoder.decode(value);
});
