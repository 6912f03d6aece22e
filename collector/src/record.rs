//! The unit that flows from the receivers through the WAL to the Parquet writer.
//!
//! A [`SpanBatch`] is what one export request became after validation, scrubbing and extraction:
//! every string in it is already safe to persist. Resource-level facts are stored once per batch
//! (in [`BatchHeader`]) rather than once per span, which keeps both the WAL and memory small.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Facts shared by all spans of one export request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BatchHeader {
    /// Who exported the request (mTLS identity or ingest key id), when ingest auth is on.
    pub ingest_principal: Option<String>,
    /// When the collector accepted the request, ns since the epoch.
    pub ingested_at: i64,
    /// The request's resources; [`SpanRow::resource`] indexes this list.
    pub resources: Vec<ResourceInfo>,
}

/// The typed columns of an OTLP resource plus its remaining (scrubbed) attributes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResourceInfo {
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub service_instance_id: Option<String>,
    pub k8s_cluster: Option<String>,
    pub k8s_namespace: Option<String>,
    pub k8s_pod: Option<String>,
    /// A SPIFFE ID found among the resource attributes.
    pub workload_id: Option<String>,
    pub attributes: Vec<(String, String)>,
}

/// One accepted span with its extracted identity, credential, API and side-effect fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SpanRow {
    /// Index into [`BatchHeader::resources`].
    pub resource: u32,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub start_time: i64,
    pub end_time: i64,
    pub name: String,
    pub kind: SpanKind,
    pub status_code: StatusCode,
    pub status_message: Option<String>,

    pub user_id: Option<String>,
    pub user_roles: Vec<String>,
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub genai_operation: Option<String>,
    pub tool_name: Option<String>,
    pub tool_call_id: Option<String>,
    pub workload_id: Option<String>,
    pub client_address: Option<String>,

    pub credential: Option<Credential>,
    pub token: Option<TokenClaims>,

    pub api_protocol: Option<ApiProtocol>,
    pub api_method: Option<String>,
    pub api_route: Option<String>,
    pub api_target: Option<String>,
    pub http_status: Option<i32>,

    pub effect_kind: Option<EffectKind>,
    pub effect_operation: Option<String>,
    pub effect_target: Option<String>,
    pub effect_is_write: Option<bool>,

    pub links: Vec<([u8; 16], [u8; 8])>,
    pub attributes: Vec<(String, String)>,
}

/// The credential presented on a span: never the secret itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Credential {
    /// `k<key id>:<hex>` keyed fingerprint, or `jti:<id>` / `gw:<id>` for non-secret ids.
    pub fingerprint: String,
    pub kind: CredentialKind,
    /// The attribute key the credential came from.
    pub attribute: String,
}

/// The kept claims of a decoded JWT (`iss sub aud client_id jti scope iat exp act may_act`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenClaims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub jti: Option<String>,
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
    /// ns since the epoch
    pub issued_at: Option<i64>,
    /// ns since the epoch
    pub expires_at: Option<i64>,
    /// RFC 8693 `act` chain, outermost (current actor) first.
    pub actors: Vec<String>,
    /// RFC 8693 `may_act` subjects.
    pub may_act: Vec<String>,
    /// The signature was checked against a configured JWKS.
    pub verified: bool,
}

impl TokenClaims {
    /// The bytes of the kept claims' text, for memory bounds.
    pub fn kept_bytes(&self) -> usize {
        let text = [&self.iss, &self.sub, &self.client_id, &self.jti];
        let lists = [&self.scopes, &self.audience, &self.actors, &self.may_act];
        text.iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>()
            + lists
                .iter()
                .flat_map(|list| list.iter())
                .map(|s| s.len() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

/// Where a credential was found and what shape it had.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum CredentialKind {
    Jwt,
    Bearer,
    Basic,
    ApiKey,
    Cookie,
    UrlSecret,
    GatewayId,
}

impl CredentialKind {
    /// The value stored in the `credential_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Jwt => "jwt",
            CredentialKind::Bearer => "bearer",
            CredentialKind::Basic => "basic",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Cookie => "cookie",
            CredentialKind::UrlSecret => "url_secret",
            CredentialKind::GatewayId => "gateway_id",
        }
    }
}

/// How an API call was made (`api_protocol`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ApiProtocol {
    Http,
    Rpc,
    Mcp,
    A2a,
}

impl ApiProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiProtocol::Http => "http",
            ApiProtocol::Rpc => "rpc",
            ApiProtocol::Mcp => "mcp",
            ApiProtocol::A2a => "a2a",
        }
    }
}

/// What a side effect touched (`effect_kind`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EffectKind {
    Db,
    Messaging,
    Http,
    McpResource,
}

impl EffectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Db => "db",
            EffectKind::Messaging => "messaging",
            EffectKind::Http => "http",
            EffectKind::McpResource => "mcp_resource",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    pub fn from_otlp(kind: i32) -> SpanKind {
        match kind {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }

    /// The value stored in the `kind` column. OTLP's UNSPECIFIED is treated as internal, as the
    /// OTLP spec says receivers should.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified | SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    pub fn from_otlp(code: i32) -> StatusCode {
        match code {
            1 => StatusCode::Ok,
            2 => StatusCode::Error,
            _ => StatusCode::Unset,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// What one export request became: its header and accepted spans.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanBatch {
    pub header: Arc<BatchHeader>,
    pub spans: Vec<SpanRow>,
}

impl SpanBatch {
    pub fn resource_of(&self, row: &SpanRow) -> Option<&ResourceInfo> {
        self.header.resources.get(row.resource as usize)
    }
}
