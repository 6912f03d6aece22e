//! OTLP/HTTP: `POST /v1/traces` (protobuf or JSON, gzip or zstd), plus the operational
//! endpoints `/healthz`, `/readyz` and `/metrics` on the same port.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::Ingest;
use crate::error::{Error, RETRY_AFTER};
use crate::listener::Peer;

pub const PROTOCOL: &str = "http";

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The body's media type: OTLP/HTTP's protobuf or JSON encoding.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Encoding, Error> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if mime.eq_ignore_ascii_case(PROTOBUF) {
            Ok(Encoding::Protobuf)
        } else if mime.eq_ignore_ascii_case(JSON) {
            Ok(Encoding::Json)
        } else {
            Err(Error::UnsupportedMediaType(mime.chars().take(64).collect()))
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        // The body is read under the limit by the handler, so a 413 carries an OTLP Status.
        .route("/v1/traces", post(export))
        .layer(DefaultBodyLimit::disable())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ingest)
}

async fn readyz(State(ingest): State<Arc<Ingest>>) -> Response {
    if ingest.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "replaying the write-ahead log",
        )
            .into_response()
    }
}

async fn metrics(State(ingest): State<Arc<Ingest>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ingest.telemetry().encode(),
    )
        .into_response()
}

async fn export(
    State(ingest): State<Arc<Ingest>>,
    extensions: http::Extensions,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Errors are answered in the request's encoding when it is known, protobuf otherwise.
    let encoding = Encoding::of(&headers);
    let reply_as = *encoding.as_ref().unwrap_or(&Encoding::Protobuf);
    let result = async {
        let principal = ingest.authenticate(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            Peer::of(&extensions),
        )?;
        // Before the body is read: an overloaded collector spends nothing on refused data.
        ingest.admit()?;
        let encoding = encoding?;
        let body = read_body(body, ingest.max_request_bytes).await?;
        let content_encoding = headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        let raw = decompress(content_encoding, &body, ingest.max_request_bytes)?;
        let request = decode(encoding, &raw)?;
        ingest.export(PROTOCOL, request, raw.len(), principal).await
    }
    .await;
    match result {
        Ok(response) => {
            let body = match reply_as {
                Encoding::Protobuf => response.encode_to_vec(),
                Encoding::Json => serde_json::to_vec(&response).unwrap_or_default(),
            };
            ([(header::CONTENT_TYPE, reply_as.content_type())], body).into_response()
        }
        Err(error) => {
            ingest.telemetry().request_refused(PROTOCOL, &error);
            error_response(&error, reply_as)
        }
    }
}

fn error_response(error: &Error, encoding: Encoding) -> Response {
    // The body OTLP/HTTP errors carry: a google.rpc.Status.
    let code = error.to_grpc_status().code() as i32;
    let message = error.to_string();
    let body = match encoding {
        Encoding::Protobuf => tonic_types::Status {
            code,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
    };
    let mut response = (
        error.http_status(),
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if error.is_retryable() {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER.as_secs()),
        );
    }
    if matches!(error, Error::Unauthenticated(_)) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"idtrail ingest\""),
        );
    }
    response
}

/// The raw body, refused past `limit` bytes (the decompressed limit bounds the wire size too).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge { limit }),
        Err(_) => Err(Error::Decode("the request body could not be read".into())),
    }
}

/// The body after its `Content-Encoding` (`None`: identity), refused past `limit` bytes
/// however small it was on the wire (decompression bombs).
pub fn decompress(
    content_encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let encoding = content_encoding
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let reader: Box<dyn Read + '_> = match encoding.as_str() {
        "" | "identity" => {
            if body.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            return Ok(body.to_vec());
        }
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        "zstd" => Box::new(
            zstd::stream::read::Decoder::new(body)
                .map_err(|_| Error::Decode("invalid zstd stream".into()))?,
        ),
        other => return Err(Error::UnsupportedEncoding(other.chars().take(32).collect())),
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Error::Decode(format!("invalid {encoding} body")))?;
    if out.len() > limit {
        return Err(Error::TooLarge { limit });
    }
    Ok(out)
}

/// A decompressed body as an export request.
pub fn decode(encoding: Encoding, raw: &[u8]) -> Result<ExportTraceServiceRequest, Error> {
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(raw)
            .map_err(|e| Error::Decode(format!("invalid protobuf: {e}"))),
        // serde_json's messages can quote the offending value, which may be a secret: report
        // only the kind of error and where it is.
        Encoding::Json => serde_json::from_slice(raw).map_err(|e| {
            Error::Decode(format!(
                "invalid OTLP/JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        }),
    }
}
