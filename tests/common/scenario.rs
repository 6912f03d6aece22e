//! Scenario files: spans described in YAML (ids by name, times as offsets, credentials planted
//! as `${name}`), turned into OTLP requests and sent to a collector; and the way back, hex ids and
//! fingerprints replaced by the names the scenario gave them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Link;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde::Deserialize;
use serde_json::Value;

use super::TestServer;

/// Scenario times are offsets from 2026-11-22T10:00:00Z.
pub const BASE_NANOS: u64 = 1_795_341_600_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[allow(dead_code)]
    pub description: String,
    /// Credentials planted as `${name}` in attribute values.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Resource attributes of a service beside its `service.name` (the deployment environment,
    /// the Kubernetes cluster), by service name.
    #[serde(default)]
    pub resources: BTreeMap<String, BTreeMap<String, Value>>,
    /// Export requests, in order, with optional waits between them.
    pub sends: Vec<Send>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Secret {
    /// A JWT with these claims (HS256 over a test key: well-formed, not verified).
    Jwt(serde_json::Map<String, Value>),
    Raw(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Send {
    Spans(Vec<SpanSpec>),
    /// Wait until every trace sent so far is stitched and published.
    WaitStitched(bool),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanSpec {
    pub trace: String,
    pub id: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub name: String,
    pub kind: String,
    pub service: String,
    pub at_ms: u64,
    pub dur_ms: u64,
    #[serde(default)]
    pub attrs: BTreeMap<String, Value>,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub trace: String,
    pub span: String,
}

/// Symbolic names ↔ ids and fingerprints.
#[derive(Default)]
pub struct Names {
    pub by_hex: HashMap<String, String>,
    /// Prepended to every name, so scenarios sharing one collector get distinct ids.
    pub prefix: String,
}

impl Names {
    fn id<const N: usize>(&mut self, name: &str, salt: u8) -> [u8; N] {
        let name = format!("{}{name}", self.prefix);
        let name = name.as_str();
        let mut out = [0u8; N];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::hash::DefaultHasher::new();
            (salt, i, name).hash(&mut h);
            let bytes = h.finish().to_be_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        self.by_hex.insert(super::hex(&out), name.to_string());
        out
    }

    pub fn trace(&mut self, name: &str) -> [u8; 16] {
        self.id(name, 1)
    }

    pub fn span(&mut self, name: &str) -> [u8; 8] {
        self.id(name, 2)
    }

    /// Replaces every known hex id or fingerprint inside string values by its name.
    pub fn symbolize(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Some(name) = self.by_hex.get(s.as_str()) {
                    *s = name.clone();
                } else {
                    // Operation and resource ids embed nothing secret; fingerprints stand alone.
                    for (hex, name) in &self.by_hex {
                        if s.contains(hex.as_str()) {
                            *s = s.replace(hex.as_str(), name);
                        }
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.symbolize(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.symbolize(v)),
            _ => {}
        }
    }
}

pub fn jwt(claims: &serde_json::Map<String, Value>) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(b"golden-scenario-key");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).expect("encode jwt")
}

pub fn any_value(value: &Value, secrets: &HashMap<String, String>) -> AnyValue {
    let v = match value {
        Value::String(s) => any_value::Value::StringValue(plant(s, secrets)),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) if n.is_i64() => any_value::Value::IntValue(n.as_i64().unwrap_or(0)),
        Value::Number(n) => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        Value::Array(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|i| any_value(i, secrets)).collect(),
        }),
        other => any_value::Value::StringValue(other.to_string()),
    };
    AnyValue { value: Some(v) }
}

pub fn plant(s: &str, secrets: &HashMap<String, String>) -> String {
    let mut out = s.to_string();
    for (name, raw) in secrets {
        out = out.replace(&format!("${{{name}}}"), raw);
    }
    out
}

pub fn kind(name: &str) -> i32 {
    match name {
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        other => panic!("unknown span kind {other}"),
    }
}

pub fn request(
    specs: &[SpanSpec],
    resources: &BTreeMap<String, BTreeMap<String, Value>>,
    names: &mut Names,
    secrets: &HashMap<String, String>,
) -> ExportTraceServiceRequest {
    // One resource per service, in order of first appearance.
    let mut by_service: Vec<(String, Vec<Span>)> = Vec::new();
    for spec in specs {
        let span = Span {
            trace_id: names.trace(&spec.trace).to_vec(),
            span_id: names.span(&spec.id).to_vec(),
            parent_span_id: spec
                .parent
                .as_deref()
                .map(|p| names.span(p).to_vec())
                .unwrap_or_default(),
            name: spec.name.clone(),
            kind: kind(&spec.kind),
            start_time_unix_nano: BASE_NANOS + spec.at_ms * 1_000_000,
            end_time_unix_nano: BASE_NANOS + (spec.at_ms + spec.dur_ms) * 1_000_000,
            attributes: spec
                .attrs
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(any_value(v, secrets)),
                    ..Default::default()
                })
                .collect(),
            links: spec
                .links
                .iter()
                .map(|l| Link {
                    trace_id: names.trace(&l.trace).to_vec(),
                    span_id: names.span(&l.span).to_vec(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        match by_service.iter_mut().find(|(s, _)| s == &spec.service) {
            Some((_, spans)) => spans.push(span),
            None => by_service.push((spec.service.clone(), vec![span])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: std::iter::once(super::text("service.name", &service))
                        .chain(resources.get(&service).into_iter().flatten().map(|(k, v)| {
                            KeyValue {
                                key: k.clone(),
                                value: Some(any_value(v, secrets)),
                                ..Default::default()
                            }
                        }))
                        .collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

pub fn rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    for batch in batches {
        // arrow's JSON writer needs chrono-tz for named zones; "+00:00" is the same instant.
        let utc = arrow::datatypes::DataType::Timestamp(
            arrow::datatypes::TimeUnit::Nanosecond,
            Some("+00:00".into()),
        );
        let columns: Vec<arrow::array::ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                arrow::datatypes::DataType::Timestamp(..) => {
                    arrow::compute::cast(c, &utc).expect("cast")
                }
                _ => c.clone(),
            })
            .collect();
        let fields: Vec<arrow::datatypes::Field> = batch
            .schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
            .collect();
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
        let batch = RecordBatch::try_new(schema, columns).expect("batch");
        writer.write(&batch).expect("json rows");
    }
    writer.finish().expect("json rows");
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&bytes).expect("json rows")
}

pub async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(server.http_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until no trace is open, then long enough for the stitched rows to be published.
pub async fn wait_stitched(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(server, "idtrail_stitch_buffer_spans").await > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "traces never stitched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// Credential fingerprints → the secret planted on the span that presented them.
pub fn name_fingerprints(data_dir: &Path, scenario: &Scenario, names: &mut Names) {
    let mut planted: HashMap<String, String> = HashMap::new();
    for spec in scenario
        .sends
        .iter()
        .filter_map(|s| match s {
            Send::Spans(specs) => Some(specs),
            Send::WaitStitched(_) => None,
        })
        .flatten()
    {
        let text = serde_json::to_string(&spec.attrs).unwrap_or_default();
        if let Some(secret) = scenario
            .secrets
            .keys()
            .find(|s| text.contains(&format!("${{{s}}}")))
        {
            planted.insert(super::hex(&names.span(&spec.id)), secret.clone());
        }
    }
    for row in rows(&super::read_table(data_dir, "spans")) {
        if let (Some(span), Some(fp)) = (row["span_id"].as_str(), row["credential_fp"].as_str())
            && let Some(secret) = planted.get(span)
            && fp.starts_with('k')
        {
            names
                .by_hex
                .insert(fp.to_string(), format!("fp({}{secret})", names.prefix));
        }
    }
}

/// Reads a scenario file (up to `marker`, if given) and makes its secrets.
pub fn load(path: &Path, marker: Option<&str>) -> (Scenario, HashMap<String, String>) {
    let text = std::fs::read_to_string(path).expect("scenario");
    let input = match marker {
        Some(marker) => text.split(marker).next().unwrap_or_default().to_string(),
        None => text,
    };
    let scenario: Scenario =
        serde_saphyr::from_str(&input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let secrets = scenario
        .secrets
        .iter()
        .map(|(name, s)| {
            let raw = match s {
                Secret::Jwt(claims) => jwt(claims),
                Secret::Raw(raw) => raw.clone(),
            };
            (name.clone(), raw)
        })
        .collect();
    (scenario, secrets)
}

/// Sends every request of the scenario over OTLP/HTTP, waiting where it says so.
pub async fn play(
    server: &TestServer,
    scenario: &Scenario,
    names: &mut Names,
    secrets: &HashMap<String, String>,
) {
    let client = reqwest::Client::new();
    for send in &scenario.sends {
        match send {
            Send::Spans(specs) => {
                let body = request(specs, &scenario.resources, names, secrets).encode_to_vec();
                let response = client
                    .post(server.http_url("/v1/traces"))
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .expect("export");
                assert_eq!(response.status(), 200, "export refused");
            }
            Send::WaitStitched(true) => wait_stitched(server).await,
            Send::WaitStitched(false) => {}
        }
    }
}

/// The scenario files (`*.yaml`) of `dir`, in name order.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("scenario dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}
