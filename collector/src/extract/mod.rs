//! From an OTLP export request to a [`SpanBatch`]: validate each span, scrub secrets, and fill
//! the identity, credential, API and side-effect columns by the configured mapping.

pub mod attributes;
pub mod fingerprint;
pub mod jwt;
pub mod mapping;
pub mod secrets;

use std::collections::BTreeMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::config::{Config, SpanLimitsConfig};
use crate::error::Result;
use crate::record::{
    ApiProtocol, BatchHeader, Credential, CredentialKind, EffectKind, ResourceInfo, SpanBatch,
    SpanKind, SpanRow, StatusCode,
};
use crate::telemetry::Telemetry;
use attributes::Value;
use fingerprint::Fingerprinter;
use jwt::JwtDecoder;
use mapping::{Field, Mapping};
use secrets::{FoundSecret, KeyCache, SecretScrubber};

/// What one request became.
#[derive(Debug, Default)]
pub struct Extracted {
    pub batch: SpanBatch,
    /// Spans that failed validation, by reason.
    pub rejected: BTreeMap<&'static str, usize>,
}

impl Extracted {
    pub fn rejected_count(&self) -> usize {
        self.rejected.values().sum()
    }

    /// The `partial_success.error_message` for the rejected spans, or `None` when all passed.
    pub fn rejection_message(&self) -> Option<String> {
        if self.rejected.is_empty() {
            return None;
        }
        let reasons: Vec<String> = self
            .rejected
            .iter()
            .map(|(reason, n)| format!("{n} × {reason}"))
            .collect();
        Some(format!(
            "{} invalid spans rejected: {}",
            self.rejected_count(),
            reasons.join("; ")
        ))
    }
}

pub struct Extractor {
    mapping: Mapping,
    limits: SpanLimitsConfig,
    scrubber: SecretScrubber,
    telemetry: Arc<Telemetry>,
}

impl Extractor {
    pub fn new(
        config: &Config,
        fingerprinter: Fingerprinter,
        telemetry: Arc<Telemetry>,
    ) -> Result<Extractor> {
        let jwt = JwtDecoder::new(config.secrets.jwks_file.as_deref())?;
        Ok(Extractor {
            mapping: Mapping::new(&config.extraction),
            limits: config.span_limits.clone(),
            scrubber: SecretScrubber::new(
                &config.secrets,
                &config.extraction.url_full,
                fingerprinter,
                jwt,
            ),
            telemetry,
        })
    }

    pub fn extract(
        &self,
        request: ExportTraceServiceRequest,
        ingest_principal: Option<String>,
        ingested_at: i64,
    ) -> Extracted {
        let mut header = BatchHeader {
            ingest_principal,
            ingested_at,
            resources: Vec::with_capacity(request.resource_spans.len()),
        };
        let mut out = Extracted::default();
        let mut keys = KeyCache::default();
        for resource_spans in request.resource_spans {
            let resource_index = header.resources.len() as u32;
            let resource = self.resource(resource_spans.resource, &mut keys);
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.map(|s| (s.name, s.version));
                for span in scope_spans.spans {
                    match self.span(span, resource_index, &resource, scope.as_ref(), &mut keys) {
                        Ok(row) => out.batch.spans.push(row),
                        Err(reason) => *out.rejected.entry(reason).or_default() += 1,
                    }
                }
            }
            header.resources.push(resource);
        }
        out.batch.header = Arc::new(header);
        out
    }

    fn scrub_all(&self, attrs: &mut [(String, Value)], keys: &mut KeyCache) -> Vec<FoundSecret> {
        let mut found = Vec::new();
        for (key, value) in attrs.iter_mut() {
            self.scrubber.scrub_attribute(key, value, &mut found, keys);
        }
        found
    }

    fn count_secrets(&self, found: &[FoundSecret]) {
        for secret in found {
            self.telemetry.secret_fingerprinted(secret.kind.as_str());
        }
    }

    fn resource(&self, resource: Option<Resource>, keys: &mut KeyCache) -> ResourceInfo {
        let mut attrs = Vec::new();
        if let Some(resource) = resource {
            let dropped =
                attributes::flatten(resource.attributes, self.limits.max_attributes, &mut attrs);
            self.telemetry.span_limit_cut("attributes", dropped);
        }
        let found = self.scrub_all(&mut attrs, keys);
        self.count_secrets(&found);
        let truncated = attributes::truncate_values(&mut attrs, self.limits.max_value_bytes);
        self.telemetry.span_limit_cut("values", truncated);
        let mut info = ResourceInfo {
            workload_id: spiffe_id(&attrs),
            ..ResourceInfo::default()
        };
        for (key, value) in attrs {
            let slot = match key.as_str() {
                "service.name" => &mut info.service_name,
                "service.namespace" => &mut info.service_namespace,
                "service.instance.id" => &mut info.service_instance_id,
                "k8s.cluster.name" => &mut info.k8s_cluster,
                "k8s.namespace.name" => &mut info.k8s_namespace,
                "k8s.pod.name" => &mut info.k8s_pod,
                _ => {
                    info.attributes.push((key, value.into_map_value()));
                    continue;
                }
            };
            *slot = Some(value.into_map_value());
        }
        info
    }

    fn span(
        &self,
        span: Span,
        resource_index: u32,
        resource: &ResourceInfo,
        scope: Option<&(String, String)>,
        keys: &mut KeyCache,
    ) -> Result<SpanRow, &'static str> {
        let trace_id: [u8; 16] =
            valid_id(&span.trace_id).ok_or("trace_id must be 16 bytes and not all zero")?;
        let span_id: [u8; 8] =
            valid_id(&span.span_id).ok_or("span_id must be 8 bytes and not all zero")?;
        let parent_span_id = match span.parent_span_id.len() {
            0 => None,
            _ => Some(
                valid_id(&span.parent_span_id)
                    .ok_or("parent_span_id must be empty or 8 bytes, not all zero")?,
            ),
        };
        if span.start_time_unix_nano == 0 {
            return Err("start_time_unix_nano is missing");
        }
        if span.end_time_unix_nano < span.start_time_unix_nano {
            return Err("end_time_unix_nano precedes start_time_unix_nano");
        }
        let start_time = i64::try_from(span.start_time_unix_nano)
            .map_err(|_| "start_time_unix_nano is out of range")?;
        let end_time = i64::try_from(span.end_time_unix_nano)
            .map_err(|_| "end_time_unix_nano is out of range")?;

        let max_value = self.limits.max_value_bytes;
        let mut attrs =
            Vec::with_capacity(span.attributes.len().min(self.limits.max_attributes) + 2);
        let dropped_attributes =
            attributes::flatten(span.attributes, self.limits.max_attributes, &mut attrs);
        if let Some((name, version)) = scope.filter(|(name, _)| !name.is_empty()) {
            attrs.push(("otel.scope.name".into(), Value::Text(name.clone())));
            if !version.is_empty() {
                attrs.push(("otel.scope.version".into(), Value::Text(version.clone())));
            }
        }
        let mut found = self.scrub_all(&mut attrs, keys);
        let mut name = span.name;
        self.scrubber.scrub_text("name", &mut name, &mut found);
        let status = span.status.unwrap_or_default();
        let mut status_message = Some(status.message).filter(|m| !m.is_empty());
        if let Some(message) = status_message.as_mut() {
            self.scrubber
                .scrub_text("status.message", message, &mut found);
        }
        self.count_secrets(&found);
        // Long values are cut only now: scrubbing saw each whole, so no cut can leave part of
        // a raw secret behind.
        let mut truncated = attributes::truncate_values(&mut attrs, max_value);
        truncated += usize::from(attributes::truncate(&mut name, max_value));
        if let Some(message) = status_message.as_mut() {
            truncated += usize::from(attributes::truncate(message, max_value));
        }
        let dropped_links = span.links.len().saturating_sub(self.limits.max_links);

        let kind = SpanKind::from_otlp(span.kind);
        let mut row = SpanRow {
            resource: resource_index,
            trace_id,
            span_id,
            parent_span_id,
            start_time,
            end_time,
            name,
            kind,
            status_code: StatusCode::from_otlp(status.code),
            status_message,
            links: span
                .links
                .iter()
                .take(self.limits.max_links)
                .filter_map(|l| Some((valid_id(&l.trace_id)?, valid_id(&l.span_id)?)))
                .collect(),
            ..SpanRow::default()
        };

        let workload = spiffe_id(&attrs);
        let mut m = self.mapping.match_attributes(&attrs);
        identity(&mut m, &mut row);
        credential(&mut m, &mut row, found);
        api_call(&mut m, &mut row);
        side_effect(&mut m, &mut row);
        row.workload_id = workload.or_else(|| resource.workload_id.clone());
        let mut consumed = m.into_consumed();
        consumed.sort_unstable();
        consumed.dedup();
        row.attributes = attrs
            .into_iter()
            .enumerate()
            .filter(|(i, _)| consumed.binary_search(i).is_err())
            .map(|(_, (k, v))| (k, v.into_map_value()))
            .collect();
        // What the limits cut is recorded on the span, so the evidence says it is incomplete.
        for (key, kind, n) in [
            (
                "idtrail.dropped_attributes_count",
                "attributes",
                dropped_attributes,
            ),
            ("idtrail.dropped_links_count", "links", dropped_links),
            ("idtrail.truncated_values_count", "values", truncated),
        ] {
            if n > 0 {
                row.attributes.push((key.to_string(), n.to_string()));
                self.telemetry.span_limit_cut(kind, n);
            }
        }
        Ok(row)
    }
}

/// An id of exactly `N` bytes that is not all zero, as OTLP requires.
fn valid_id<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    let id: [u8; N] = bytes.try_into().ok()?;
    id.iter().any(|b| *b != 0).then_some(id)
}

/// A SPIFFE ID found in any attribute value.
fn spiffe_id(attrs: &[(String, Value)]) -> Option<String> {
    attrs.iter().find_map(|(_, v)| match v {
        Value::Text(s) if s.starts_with("spiffe://") => Some(s.clone()),
        Value::List(items) => items.iter().find(|s| s.starts_with("spiffe://")).cloned(),
        _ => None,
    })
}

fn identity(m: &mut mapping::Matches<'_>, row: &mut SpanRow) {
    row.user_id = m.take_string(Field::UserId);
    row.user_roles = m
        .take(Field::UserRoles)
        .map(Value::to_list)
        .unwrap_or_default();
    row.session_id = m.take_string(Field::SessionId);
    row.agent_name = m.take_string(Field::AgentName);
    row.agent_id = m
        .take_string(Field::AgentId)
        .or_else(|| row.agent_name.clone());
    row.genai_operation = m.take_string(Field::GenaiOperation);
    row.tool_name = m.peek_str(Field::ToolName).map(str::to_string);
    if row.tool_name.is_some() {
        m.take(Field::ToolName);
    }
    row.tool_call_id = m.take_string(Field::ToolCallId);
    row.client_address = m.take_string(Field::ClientAddress);
}

/// The credential the span presented: a secret (Authorization first), else a token id, else a
/// gateway credential id. Its JWT claims fill the token columns and, for user tokens, the user.
fn credential(m: &mut mapping::Matches<'_>, row: &mut SpanRow, found: Vec<FoundSecret>) {
    let presented = found.into_iter().min_by_key(FoundSecret::rank);
    if let Some(secret) = presented {
        if let Some(token) = secret.token {
            if row.user_id.is_none() && token.is_user_token {
                row.user_id = token.claims.sub.clone();
            }
            row.token = Some(token.claims);
        }
        row.credential = Some(Credential {
            fingerprint: secret.fingerprint,
            kind: secret.kind,
            attribute: secret.attribute,
        });
    } else if let Some(key) = m.key(Field::TokenId).map(str::to_string)
        && let Some(jti) = m.take_string(Field::TokenId)
    {
        row.credential = Some(Credential {
            fingerprint: format!("jti:{jti}"),
            kind: CredentialKind::Jwt,
            attribute: key,
        });
    } else if let Some(key) = m.key(Field::GatewayCredential).map(str::to_string)
        && let Some(id) = m.take_string(Field::GatewayCredential)
    {
        row.credential = Some(Credential {
            fingerprint: format!("gw:{id}"),
            kind: CredentialKind::GatewayId,
            attribute: key,
        });
    }
    let token_has_scopes = row.token.as_ref().is_some_and(|t| !t.scopes.is_empty());
    if !token_has_scopes && let Some(scopes) = m.take_string(Field::Scopes) {
        let token = row.token.get_or_insert_with(Default::default);
        token.scopes = scopes.split_whitespace().map(str::to_string).collect();
    }
}

fn api_call(m: &mut mapping::Matches<'_>, row: &mut SpanRow) {
    row.http_status = m
        .peek_str(Field::HttpStatus)
        .and_then(|s| s.parse().ok())
        .inspect(|_| {
            m.take(Field::HttpStatus);
        });
    if !matches!(row.kind, SpanKind::Server | SpanKind::Client) {
        return;
    }
    if let Some(method) = m.take_string(Field::McpMethod) {
        row.api_protocol = Some(ApiProtocol::Mcp);
        row.api_route = row
            .tool_name
            .clone()
            .or_else(|| m.peek_str(Field::McpResourceUri).map(str::to_string));
        row.api_method = Some(method);
    } else if m.peek_str(Field::RpcSystem).is_some() {
        m.take(Field::RpcSystem);
        let service = m.take_string(Field::RpcService);
        let method = m.take_string(Field::RpcMethod);
        row.api_protocol = Some(ApiProtocol::Rpc);
        row.api_route = service.clone().or_else(|| {
            method
                .as_deref()
                .and_then(|m| m.rsplit_once('/'))
                .map(|(s, _)| s.to_string())
        });
        row.api_method = match (service, method) {
            (Some(s), Some(m)) if !m.contains('/') => Some(format!("{s}/{m}")),
            (_, m) => m,
        };
    } else if let Some(method) = m.take_string(Field::HttpMethod) {
        row.api_protocol = Some(ApiProtocol::Http);
        row.api_method = Some(method);
        row.api_route = m.take_string(Field::HttpRoute);
    } else {
        return;
    }
    row.api_target = m.take_string(Field::ServerAddress);
}

const UNSAFE_HTTP_METHODS: &[&str] = &["POST", "PUT", "PATCH", "DELETE"];
const READ_DB_OPERATIONS: &[&str] = &["SELECT", "GET", "FIND", "READ", "SCAN", "QUERY", "MGET"];
const WRITE_MESSAGING_OPERATIONS: &[&str] = &["send", "create", "publish"];

fn side_effect(m: &mut mapping::Matches<'_>, row: &mut SpanRow) {
    if !matches!(
        row.kind,
        SpanKind::Client | SpanKind::Producer | SpanKind::Internal | SpanKind::Unspecified
    ) {
        return;
    }
    if m.peek_str(Field::DbSystem).is_some() {
        m.take(Field::DbSystem);
        let operation = m.take_string(Field::DbOperation).or_else(|| {
            // Older instrumentations only record the statement: its first keyword is the verb.
            m.peek_str(Field::DbQueryText)
                .and_then(|q| q.split_whitespace().next())
                .map(str::to_ascii_uppercase)
        });
        let namespace = m.take_string(Field::DbNamespace);
        let collection = m.take_string(Field::DbCollection);
        row.effect_kind = Some(EffectKind::Db);
        row.effect_target = match (namespace, collection) {
            (Some(ns), Some(c)) => Some(format!("{ns}.{c}")),
            (ns, c) => c
                .or(ns)
                .or_else(|| m.peek_str(Field::ServerAddress).map(str::to_string)),
        };
        row.effect_is_write = operation.as_deref().map(|op| {
            !READ_DB_OPERATIONS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(op))
        });
        row.effect_operation = operation;
    } else if m.peek_str(Field::MessagingSystem).is_some() {
        m.take(Field::MessagingSystem);
        let operation = m.take_string(Field::MessagingOperation);
        row.effect_kind = Some(EffectKind::Messaging);
        row.effect_target = m.take_string(Field::MessagingDestination);
        row.effect_is_write = Some(operation.as_deref().is_some_and(|op| {
            WRITE_MESSAGING_OPERATIONS
                .iter()
                .any(|w| w.eq_ignore_ascii_case(op))
        }));
        row.effect_operation = operation;
    } else if let Some(uri) = m.peek_str(Field::McpResourceUri) {
        let uri = uri.to_string();
        m.take(Field::McpResourceUri);
        let method = row
            .api_method
            .clone()
            .or_else(|| m.peek_str(Field::McpMethod).map(str::to_string));
        row.effect_kind = Some(EffectKind::McpResource);
        row.effect_is_write = Some(method.as_deref().is_some_and(|m| {
            !matches!(
                m,
                "resources/read"
                    | "resources/list"
                    | "resources/subscribe"
                    | "resources/unsubscribe"
            )
        }));
        row.effect_operation = method;
        row.effect_target = Some(uri);
    } else if row.kind == SpanKind::Client && row.api_protocol == Some(ApiProtocol::Http) {
        let Some(method) = row.api_method.as_deref() else {
            return;
        };
        if !UNSAFE_HTTP_METHODS
            .iter()
            .any(|u| u.eq_ignore_ascii_case(method))
        {
            return;
        }
        let path = row
            .api_route
            .clone()
            .or_else(|| m.peek_str(Field::UrlPath).map(str::to_string))
            .or_else(|| {
                m.peek_str(Field::UrlFull)
                    .and_then(|u| url::Url::parse(u).ok())
                    .map(|u| u.path().to_string())
            });
        row.effect_kind = Some(EffectKind::Http);
        row.effect_operation = Some(method.to_ascii_uppercase());
        row.effect_target = match (row.api_target.as_deref(), path) {
            (Some(host), Some(path)) => Some(format!("{host}{path}")),
            (host, path) => path.or(host.map(str::to_string)),
        };
        row.effect_is_write = Some(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::jwt::tests::make_jwt;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, span::Link};

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn int(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
            ..Default::default()
        }
    }

    fn span(kind: i32, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: "op".into(),
            kind,
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes,
            ..Default::default()
        }
    }

    fn extract_one(resource: Vec<KeyValue>, span: Span) -> (SpanRow, ResourceInfo) {
        let extractor = Extractor::new(
            &Config::default(),
            Fingerprinter::from_key(&[9; 32]),
            Arc::new(Telemetry::new()),
        )
        .unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let out = extractor.extract(request, Some("ingest-key-1".into()), 99);
        assert_eq!(out.rejected_count(), 0, "{:?}", out.rejected);
        let resource = out.batch.header.resources[0].clone();
        assert_eq!(
            out.batch.header.ingest_principal.as_deref(),
            Some("ingest-key-1")
        );
        (out.batch.spans.into_iter().next().unwrap(), resource)
    }

    fn attr<'a>(row: &'a SpanRow, key: &str) -> Option<&'a str> {
        row.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn identity_and_token_claims() {
        let jwt = make_jwt(&serde_json::json!({
            "sub": "alice", "client_id": "portal", "scope": "a b", "jti": "j1",
            "act": {"sub": "planner"}, "auth_time": 1
        }));
        let (row, resource) = extract_one(
            vec![
                kv("service.name", "orders"),
                kv("k8s.cluster.name", "prod"),
                kv("deployment.environment.name", "prod"),
            ],
            span(
                2,
                vec![
                    kv("enduser.id", "bob"),
                    kv("user.id", "alice@example.com"),
                    kv("gen_ai.conversation.id", "conv-1"),
                    kv("gen_ai.agent.name", "planner"),
                    kv("gen_ai.operation.name", "invoke_agent"),
                    kv(
                        "http.request.header.authorization",
                        &format!("Bearer {jwt}"),
                    ),
                    kv("client.address", "10.0.0.1"),
                    kv("tls.client.subject", "spiffe://prod/ns/shop/sa/web"),
                ],
            ),
        );
        assert_eq!(
            row.user_id.as_deref(),
            Some("alice@example.com"),
            "user.id outranks enduser.id"
        );
        assert_eq!(
            attr(&row, "enduser.id"),
            Some("bob"),
            "the loser stays in the map"
        );
        assert_eq!(
            attr(&row, "user.id"),
            None,
            "the winner moved to its column"
        );
        assert_eq!(row.session_id.as_deref(), Some("conv-1"));
        assert_eq!(
            row.agent_id.as_deref(),
            Some("planner"),
            "agent id falls back to the name"
        );
        assert_eq!(row.genai_operation.as_deref(), Some("invoke_agent"));
        assert_eq!(row.client_address.as_deref(), Some("10.0.0.1"));
        assert_eq!(
            row.workload_id.as_deref(),
            Some("spiffe://prod/ns/shop/sa/web")
        );
        let credential = row.credential.as_ref().unwrap();
        assert_eq!(credential.kind, CredentialKind::Jwt);
        assert_eq!(credential.attribute, "http.request.header.authorization");
        assert_eq!(
            attr(&row, "http.request.header.authorization"),
            Some(credential.fingerprint.as_str())
        );
        let token = row.token.as_ref().unwrap();
        assert_eq!(token.actors, vec!["planner"]);
        assert_eq!(token.scopes, vec!["a", "b"]);
        assert_eq!(resource.service_name.as_deref(), Some("orders"));
        assert_eq!(resource.k8s_cluster.as_deref(), Some("prod"));
        assert_eq!(
            resource.attributes,
            vec![(
                "deployment.environment.name".to_string(),
                "prod".to_string()
            )]
        );
    }

    #[test]
    fn user_comes_from_a_user_token_only() {
        let user_token = make_jwt(&serde_json::json!({"sub": "carol", "client_id": "app"}));
        let (row, _) = extract_one(
            vec![],
            span(
                2,
                vec![kv("authorization", &format!("Bearer {user_token}"))],
            ),
        );
        assert_eq!(row.user_id.as_deref(), Some("carol"));
        let service_token = make_jwt(&serde_json::json!({"sub": "batch", "client_id": "batch"}));
        let (row, _) = extract_one(
            vec![],
            span(
                2,
                vec![kv("authorization", &format!("Bearer {service_token}"))],
            ),
        );
        assert_eq!(row.user_id, None);
        assert_eq!(row.token.unwrap().sub.as_deref(), Some("batch"));
    }

    #[test]
    fn credential_falls_back_to_token_id_then_gateway_id() {
        let (row, _) = extract_one(
            vec![],
            span(2, vec![kv("kong.consumer", "c1"), kv("jti", "t-9")]),
        );
        assert_eq!(row.credential.unwrap().fingerprint, "jti:t-9");
        let (row, _) = extract_one(
            vec![],
            span(
                2,
                vec![kv("kong.consumer", "c1"), kv("kong.credential", "cred-7")],
            ),
        );
        let credential = row.credential.unwrap();
        assert_eq!(
            (credential.fingerprint.as_str(), credential.kind),
            ("gw:cred-7", CredentialKind::GatewayId)
        );
        assert_eq!(attr(&SpanRow::default(), "x"), None);
    }

    #[test]
    fn api_calls_by_protocol() {
        let (row, _) = extract_one(
            vec![],
            span(
                2,
                vec![
                    kv("http.request.method", "GET"),
                    kv("url.template", "/v1/x"),
                    kv("http.route", "/v1/{id}"),
                    kv("server.address", "api"),
                    int("http.response.status_code", 404),
                ],
            ),
        );
        assert_eq!(row.api_protocol, Some(ApiProtocol::Http));
        assert_eq!(
            (row.api_method.as_deref(), row.api_route.as_deref()),
            (Some("GET"), Some("/v1/{id}"))
        );
        assert_eq!(
            (row.api_target.as_deref(), row.http_status),
            (Some("api"), Some(404))
        );
        assert_eq!(row.effect_kind, None, "a server span is not a side effect");

        let (row, _) = extract_one(
            vec![],
            span(
                3,
                vec![
                    kv("rpc.system.name", "grpc"),
                    kv("rpc.method", "inventory.v1.Inventory/Reserve"),
                ],
            ),
        );
        assert_eq!(row.api_protocol, Some(ApiProtocol::Rpc));
        assert_eq!(row.api_route.as_deref(), Some("inventory.v1.Inventory"));

        let (row, _) = extract_one(
            vec![],
            span(
                2,
                vec![
                    kv("mcp.method.name", "tools/call"),
                    kv("gen_ai.tool.name", "delete_order"),
                    kv("http.request.method", "POST"),
                ],
            ),
        );
        assert_eq!(row.api_protocol, Some(ApiProtocol::Mcp));
        assert_eq!(row.api_route.as_deref(), Some("delete_order"));
        assert_eq!(row.tool_name.as_deref(), Some("delete_order"));

        let (row, _) = extract_one(vec![], span(1, vec![kv("http.request.method", "GET")]));
        assert_eq!(row.api_protocol, None, "internal spans make no API call");
        assert_eq!(attr(&row, "http.request.method"), Some("GET"));
    }

    #[test]
    fn side_effects_and_writes() {
        let (row, _) = extract_one(
            vec![],
            span(
                3,
                vec![
                    kv("db.system.name", "postgresql"),
                    kv("db.operation.name", "DELETE"),
                    kv("db.namespace", "shop"),
                    kv("db.collection.name", "orders"),
                ],
            ),
        );
        assert_eq!(row.effect_kind, Some(EffectKind::Db));
        assert_eq!(row.effect_target.as_deref(), Some("shop.orders"));
        assert_eq!(row.effect_is_write, Some(true));

        let (row, _) = extract_one(
            vec![],
            span(
                3,
                vec![
                    kv("db.system", "mysql"),
                    kv("db.statement", "select * from t where id = ?"),
                ],
            ),
        );
        assert_eq!(row.effect_operation.as_deref(), Some("SELECT"));
        assert_eq!(row.effect_is_write, Some(false));

        let (row, _) = extract_one(
            vec![],
            span(
                4,
                vec![
                    kv("messaging.system", "kafka"),
                    kv("messaging.operation.type", "send"),
                    kv("messaging.destination.name", "order-events"),
                ],
            ),
        );
        assert_eq!(
            (row.effect_kind, row.effect_is_write),
            (Some(EffectKind::Messaging), Some(true))
        );

        let (row, _) = extract_one(
            vec![],
            span(
                3,
                vec![
                    kv("http.request.method", "PUT"),
                    kv("server.address", "s3.amazonaws.com"),
                    kv(
                        "url.full",
                        "https://s3.amazonaws.com/bucket/key?X-Amz-Signature=deadbeef",
                    ),
                ],
            ),
        );
        assert_eq!(row.effect_kind, Some(EffectKind::Http));
        assert_eq!(
            row.effect_target.as_deref(),
            Some("s3.amazonaws.com/bucket/key")
        );
        assert_eq!(
            row.credential.as_ref().unwrap().kind,
            CredentialKind::UrlSecret
        );
        assert!(
            !attr(&row, "url.full")
                .unwrap_or_default()
                .contains("deadbeef")
        );

        let (row, _) = extract_one(
            vec![],
            span(
                5,
                vec![
                    kv("messaging.system", "kafka"),
                    kv("messaging.operation.type", "process"),
                ],
            ),
        );
        assert_eq!(
            row.effect_kind, None,
            "consumers read, they do not cause effects"
        );
    }

    #[test]
    fn links_scope_and_free_text_secrets() {
        let jwt = make_jwt(&serde_json::json!({"sub": "x"}));
        let mut s = span(1, vec![]);
        s.name = format!("retry with Bearer {jwt}");
        s.links = vec![
            Link {
                trace_id: vec![4; 16],
                span_id: vec![5; 8],
                ..Default::default()
            },
            Link {
                trace_id: vec![0; 16],
                span_id: vec![5; 8],
                ..Default::default()
            },
        ];
        let (row, _) = extract_one(vec![], s);
        assert!(!row.name.contains(&jwt) && row.name.starts_with("retry with Bearer k"));
        assert_eq!(
            row.links,
            vec![([4; 16], [5; 8])],
            "invalid links are dropped"
        );
    }

    #[test]
    fn invalid_spans_are_rejected_by_reason() {
        let extractor = Extractor::new(
            &Config::default(),
            Fingerprinter::from_key(&[9; 32]),
            Arc::new(Telemetry::new()),
        )
        .unwrap();
        let mut bad_parent = span(1, vec![]);
        bad_parent.parent_span_id = vec![1; 3];
        let mut no_start = span(1, vec![]);
        no_start.start_time_unix_nano = 0;
        let mut backwards = span(1, vec![]);
        backwards.end_time_unix_nano = 5;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(1, vec![]), bad_parent, no_start, backwards],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let out = extractor.extract(request, None, 0);
        assert_eq!(out.batch.spans.len(), 1);
        assert_eq!(out.rejected_count(), 3);
        let message = out.rejection_message().unwrap();
        assert!(message.starts_with("3 invalid spans rejected"), "{message}");
        assert!(message.contains("parent_span_id"));
    }
}
