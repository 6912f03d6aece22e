#![allow(dead_code)] // each target uses part of it
//! One extractor and one scrubber per fuzzing process, built as `idtrail serve` builds it (default config, a
//! fixed fingerprint key).

use std::sync::{Arc, OnceLock};

use idtrail_collector::Config;
use idtrail_collector::extract::Extractor;
use idtrail_collector::extract::fingerprint::Fingerprinter;
use idtrail_collector::extract::jwt::JwtDecoder;
use idtrail_collector::extract::secrets::SecretScrubber;
use idtrail_collector::telemetry::Telemetry;

pub fn extractor() -> &'static Extractor {
    static EXTRACTOR: OnceLock<Extractor> = OnceLock::new();
    EXTRACTOR.get_or_init(|| {
        let fingerprinter = Fingerprinter::from_key(&[7; 32]);
        Extractor::new(&Config::default(), fingerprinter, Arc::new(Telemetry::new()))
            .expect("the default config builds an extractor")
    })
}

pub fn scrubber() -> &'static SecretScrubber {
    static SCRUBBER: OnceLock<SecretScrubber> = OnceLock::new();
    SCRUBBER.get_or_init(|| {
        let config = Config::default();
        SecretScrubber::new(
            &config.secrets,
            &config.extraction.url_full,
            Fingerprinter::from_key(&[7; 32]),
            JwtDecoder::new(None).expect("no JWKS file needed"),
        )
    })
}
