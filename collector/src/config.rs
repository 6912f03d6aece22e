//! Configuration of `idtrail serve`. Every field has a default, so no config file is needed.
//!
//! Precedence, lowest to highest: defaults, the YAML file, `IDTRAIL__SECTION__FIELD` environment
//! variables, then `--set section.field=value` and the dedicated CLI flags. Overrides are applied
//! to the YAML tree before it is typed, so every field can be overridden the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the WAL (`wal/`) and the tables (`spans/`, `chains/`, `edges/`).
    pub data_dir: PathBuf,
    /// HMAC key file for credential fingerprints. Created (32 random bytes, mode 0600) on first
    /// start when absent. Keep it outside the data directory: the Parquet files alone must not be
    /// enough to brute-force low-entropy secrets. Default: `<data_dir>.fingerprint.key`.
    pub key_file: Option<PathBuf>,
    /// Name of this collector in published file names. Give each collector writing to one store
    /// its own; it must stay the same across restarts of one collector (WAL replay relies on it).
    pub writer_id: String,
    /// OTLP receivers.
    pub receivers: ReceiversConfig,
    /// Write-ahead log.
    pub wal: WalConfig,
    /// Parquet writer.
    pub writer: WriterConfig,
    /// Merging a closed hour's small files into a few large ones.
    pub compaction: CompactionConfig,
    /// Retry deduplication of (trace_id, span_id).
    pub dedup: DedupConfig,
    /// The trace buffer and the stitching of chains and edges.
    pub stitcher: StitcherConfig,
    /// SQL over the tables: Flight SQL, `POST /v1/query` and `idtrail query`.
    pub query: QueryConfig,
    /// Which OTel attributes fill which lineage columns.
    pub extraction: ExtractionConfig,
    /// How much of one span is kept: attributes, links and value lengths.
    pub span_limits: SpanLimitsConfig,
    /// Detection of secret-bearing attributes.
    pub secrets: SecretsConfig,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./idtrail-data"),
            key_file: None,
            writer_id: "local".into(),
            receivers: ReceiversConfig::default(),
            wal: WalConfig::default(),
            writer: WriterConfig::default(),
            compaction: CompactionConfig::default(),
            dedup: DedupConfig::default(),
            stitcher: StitcherConfig::default(),
            query: QueryConfig::default(),
            extraction: ExtractionConfig::default(),
            span_limits: SpanLimitsConfig::default(),
            secrets: SecretsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiversConfig {
    /// OTLP/gRPC listen address (TraceService/Export). Loopback by default: expose it
    /// deliberately, with ingest auth.
    pub grpc_address: SocketAddr,
    /// OTLP/HTTP listen address: `POST /v1/traces`, plus `/healthz`, `/readyz` and `/metrics`.
    pub http_address: SocketAddr,
    /// Largest request accepted, in bytes, checked after decompression on every path. Larger
    /// requests get RESOURCE_EXHAUSTED / HTTP 413 and are not retried by clients.
    pub max_request_bytes: usize,
    /// Decoded request bytes allowed in flight at once. Past it, requests are refused as
    /// UNAVAILABLE / HTTP 503 with a retry hint instead of queueing without bound.
    pub max_inflight_bytes: usize,
    /// Longest a request waits for its spans to become durable. Past it the request is refused
    /// as UNAVAILABLE / HTTP 503 with a retry hint (the spans may still land; the retry is then
    /// deduplicated), so a stalled disk or store never leaves exporters hanging.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// File of bearer keys, one per line as `<key id> <key>` (`#` comments). When set, every
    /// export on both protocols must carry `Authorization: Bearer <key>`; others get
    /// UNAUTHENTICATED / HTTP 401, which exporters do not retry. The key id (never the key) is
    /// stored in `ingest_principal` as `key:<id>` on every span the request carried.
    pub auth_keys_file: Option<PathBuf>,
    /// Memory in use (the allocator's count of bytes handed out; resident memory where that
    /// is unknown) past which new exports are refused as UNAVAILABLE / HTTP 503 with a retry
    /// hint, until it falls back under. Exporters back off and resend; nothing acknowledged is
    /// affected. 0 turns it off.
    pub memory_soft_limit_bytes: u64,
    /// Anonymous resident memory (heap and stacks; not the mapped binary or files) past
    /// which, besides refusing exports, the writer publishes what it buffers at once and the
    /// allocator returns its free pages (at most once a second). Above the soft limit; 0
    /// turns it off.
    pub memory_hard_limit_bytes: u64,
    /// TLS on both OTLP listeners (and so on `POST /v1/query`, which shares the HTTP port).
    /// Off by default. With `client_ca_file`, exporters must also present a client certificate
    /// (mTLS), and its identity is stored in `ingest_principal` as `mtls:<identity>`.
    pub tls: Option<TlsConfig>,
}

/// TLS for one listener: TLS 1.2 or 1.3 only, certificates re-read when their files change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM file of the CAs that sign client certificates. When set, every request needs a
    /// client certificate from one of them (mTLS): a connection without one is answered
    /// UNAUTHENTICATED / HTTP 401, an untrusted one fails the handshake. The client's identity
    /// is its certificate's first URI SAN (a SPIFFE id), else its subject CN, else its first
    /// DNS SAN, else the SHA-256 of the certificate.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are checked for changes. A changed set is loaded for new
    /// connections; one that fails to load is logged and the previous one kept, so a rotation
    /// caught half-written never takes the listener down.
    #[serde(
        default = "TlsConfig::default_reload_interval",
        with = "humantime_serde"
    )]
    pub reload_interval: Duration,
}

impl TlsConfig {
    fn default_reload_interval() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for ReceiversConfig {
    fn default() -> Self {
        ReceiversConfig {
            grpc_address: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_address: SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_request_bytes: 64 << 20,
            max_inflight_bytes: 256 << 20,
            ack_timeout: Duration::from_secs(5),
            auth_keys_file: None,
            memory_soft_limit_bytes: 2 << 30,
            memory_hard_limit_bytes: 5 << 29,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// A segment file is closed and a new one started past this many bytes. Whole segments are
    /// deleted once every record in them is in published Parquet files.
    pub segment_bytes: u64,
    /// Longest a commit waits to gather more requests into one fsync. Zero: commit as soon as
    /// the previous fsync returns (concurrent requests still share fsyncs).
    #[serde(with = "humantime_serde")]
    pub commit_delay: Duration,
    /// Largest the WAL may grow while publication is behind (a slow disk or store). Past it
    /// new exports are refused as UNAVAILABLE / HTTP 503 with a retry hint until published
    /// segments are deleted; acknowledged data stays. A segment is deleted only once it is
    /// published and no open or retained trace still needs it, so size this to hold at least
    /// `stitcher.quiet_window + stitcher.late_window` of ingest plus a few segments (the one
    /// being written is never deleted). 0 turns the cap off.
    pub max_bytes: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            commit_delay: Duration::ZERO,
            max_bytes: 4 << 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Buffered spans are written out once the oldest has waited this long, so spans become
    /// visible in Parquet within about this time of arrival.
    #[serde(with = "humantime_serde")]
    pub max_file_age: Duration,
    /// Buffered spans are written out once their in-memory size passes this many bytes. Up to
    /// two buffers exist at once: one being published while the next fills.
    pub max_buffer_bytes: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows per Parquet data page, at most (checked every 1024 rows). The page index keeps each
    /// page's min and max, so a point lookup in a sorted column (one credential's spans) decodes
    /// its page or two instead of the whole column chunk; smaller pages skip more but add a
    /// page header and an index entry each.
    pub page_rows: usize,
    /// zstd level of Parquet pages (1 fastest .. 22 smallest).
    pub zstd_level: i32,
    /// Columns of the spans table that get a Parquet bloom filter, for point lookups by id.
    pub bloom_filter_columns: Vec<String>,
    /// Order the spans of each file by credential fingerprint (spans without one last), then by
    /// start time, instead of by start time alone. One credential's spans then sit together in
    /// a page or two per column of each file, which row-group statistics and the page index find,
    /// so "everything one credential touched" decodes those pages instead of every page of
    /// every file (BENCHMARKS.md, "Query"). Off, `start_time` compresses a little better.
    pub cluster_spans_by_credential: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_file_age: Duration::from_secs(8),
            max_buffer_bytes: 128 << 20,
            row_group_rows: 128 * 1024,
            page_rows: 8 * 1024,
            zstd_level: 3,
            bloom_filter_columns: vec!["trace_id".into(), "credential_fp".into()],
            cluster_spans_by_credential: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// Whether `serve` compacts in the background (`idtrail compact` runs a pass on demand
    /// either way). A query pays a fixed cost per file, and a busy hour is published as
    /// hundreds of files; merged, one credential's spans also sit together across the hour.
    pub enabled: bool,
    /// Time between two passes of `serve`'s compaction thread.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A file is merged once it was published this long ago, in any hour partition (the
    /// current one too), so queries over recent hours also read few files. Later files of the
    /// hour are merged by later passes.
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// Rows per compacted file, at most. Files of half this or more are left as they are.
    pub target_rows: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            interval: Duration::from_secs(300),
            min_age: Duration::from_secs(300),
            target_rows: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// A (trace_id, span_id) seen within this window is dropped as a retry. Exporters retry for
    /// tens of seconds at most, so minutes are plenty.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Upper bound on remembered ids per half-window, which bounds memory (16 bytes each).
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window: Duration::from_secs(300),
            max_entries: 4_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StitcherConfig {
    /// Build chains and edges inside `idtrail serve`. Off, only spans are stored (and
    /// `idtrail restitch` can build chains and edges later).
    pub enabled: bool,
    /// A trace is stitched once no span of it has arrived for this long. Longer windows wait
    /// out slower exporters (batch processors flush every 5 s by default) at the cost of
    /// memory: the buffer holds about this many seconds of traffic.
    #[serde(with = "humantime_serde")]
    pub quiet_window: Duration,
    /// A stitched trace is kept this long, so a late span re-stitches it and writes a new
    /// revision of each chain it changes. Later spans of it start a trace of their own;
    /// `idtrail restitch` rebuilds such traces from the spans files.
    #[serde(with = "humantime_serde")]
    pub late_window: Duration,
    /// Memory bound of open and retained traces (estimated bytes). Past it, retained traces are
    /// forgotten first, then the oldest open traces are stitched early. The same happens,
    /// whatever this bound, while the process's memory in use nears
    /// `receivers.memory_soft_limit_bytes`, so the buffer gives memory back before exports
    /// are refused. Default: a quarter of the soft limit, at most 512 MiB (512 MiB with the
    /// soft limit off). Set explicitly, it must be at most half the soft limit: the rest holds
    /// requests in flight and the writer's buffers.
    pub max_buffer_bytes: Option<usize>,
}

impl StitcherConfig {
    /// The bound when neither the config nor the soft limit sets one.
    pub const DEFAULT_MAX_BUFFER_BYTES: usize = 512 << 20;

    /// The memory bound in force: the configured one (filled in by [`Config::load`]), else the
    /// default.
    pub fn buffer_cap(&self) -> usize {
        self.max_buffer_bytes
            .unwrap_or(Self::DEFAULT_MAX_BUFFER_BYTES)
    }
}

impl Default for StitcherConfig {
    fn default() -> Self {
        StitcherConfig {
            enabled: true,
            quiet_window: Duration::from_secs(30),
            late_window: Duration::from_secs(60),
            max_buffer_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Arrow Flight SQL listen address inside `idtrail serve` (ADBC, JDBC/DBeaver, Grafana).
    /// `null` turns Flight SQL off; `POST /v1/query` on the HTTP port stays.
    pub flight_sql_address: Option<SocketAddr>,
    /// File of bearer keys, one per line (`#` comments). When set, every query over Flight SQL
    /// and HTTP must carry `Authorization: Bearer <key>`. Keys are compared in constant time
    /// and never logged.
    pub auth_keys_file: Option<PathBuf>,
    /// TLS (and with `client_ca_file`, mTLS) on the Flight SQL listener. `POST /v1/query`
    /// follows `receivers.tls`, the HTTP port's setting.
    pub tls: Option<TlsConfig>,
    /// Memory one query may hold in sorts, joins and aggregations; past it the query fails
    /// with a clear error (nothing spills to disk).
    pub memory_limit_bytes: usize,
    /// Wall-clock limit of one query, planning and execution together.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest answer of `POST /v1/query` as JSON, in rows; Arrow IPC and Flight SQL stream
    /// without this cap.
    pub max_json_rows: usize,
    /// Owner files (YAML or CSV) behind the `owners` table: who answers for an identity, and
    /// until when. Re-read when they change.
    pub owners_files: Vec<PathBuf>,
    /// Grant files (YAML or CSV) behind the `grants` table: what an identity or scope may
    /// reach. Potential blast radius follows them.
    pub grants_files: Vec<PathBuf>,
    /// Directories of extra detection rules (`*.sql`, one rule per file, see
    /// `query/rules/`). A rule with a built-in rule's id replaces it. Read at start-up.
    pub rules_dirs: Vec<PathBuf>,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            flight_sql_address: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            auth_keys_file: None,
            tls: None,
            memory_limit_bytes: 1 << 30,
            timeout: Duration::from_secs(60),
            max_json_rows: 100_000,
            owners_files: Vec::new(),
            grants_files: Vec::new(),
            rules_dirs: Vec::new(),
        }
    }
}

/// How much of one span is kept (the OpenTelemetry SDK's span limits, applied again on
/// receipt, since not every exporter applies them). What is cut is counted on the span itself,
/// in its `attributes` map, so an investigator sees the evidence was cut: the keys
/// `idtrail.dropped_attributes_count`, `idtrail.dropped_links_count` and
/// `idtrail.truncated_values_count`. Events are not stored at all.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpanLimitsConfig {
    /// Most attributes kept per span and per resource, after nested maps are flattened into
    /// dotted keys; later ones are dropped.
    pub max_attributes: usize,
    /// Most links kept per span; later ones are dropped.
    pub max_links: usize,
    /// Longest attribute value, span name or status message kept, in bytes (cut at a character
    /// boundary). Secrets are scrubbed from the whole value first, so a cut never leaves part
    /// of a raw secret behind.
    pub max_value_bytes: usize,
}

impl Default for SpanLimitsConfig {
    fn default() -> Self {
        SpanLimitsConfig {
            max_attributes: 128,
            max_links: 128,
            max_value_bytes: 16 << 10,
        }
    }
}

/// Attribute lists, in priority order: the first attribute present wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractionConfig {
    /// The initiating human (`user_id`).
    pub user_id: Vec<String>,
    /// Roles of the user (`user_roles`), as a list.
    pub user_roles: Vec<String>,
    /// Session or conversation (`session_id`).
    pub session_id: Vec<String>,
    /// Agent identifier (`agent_id`); falls back to the agent name.
    pub agent_id: Vec<String>,
    /// Agent name (`agent_name`).
    pub agent_name: Vec<String>,
    /// GenAI operation, e.g. `invoke_agent`, `execute_tool` (`genai_operation`).
    pub genai_operation: Vec<String>,
    /// Tool an agent called (`tool_name`); also the route of MCP calls.
    pub tool_name: Vec<String>,
    /// One tool call (`tool_call_id`).
    pub tool_call_id: Vec<String>,
    /// Caller network address (`client_address`).
    pub client_address: Vec<String>,
    /// Token scopes when no decoded token carries them.
    pub scopes: Vec<String>,
    /// Non-secret credential ids used when no secret is present: token ids (`jti`).
    pub token_id: Vec<String>,
    /// Gateway consumer/credential ids, used when neither a secret nor a token id is present.
    pub gateway_credential: Vec<String>,
    /// HTTP method of an API call (`api_method`) and of an outbound HTTP side effect.
    pub http_method: Vec<String>,
    /// Low-cardinality route of an HTTP call (`api_route`).
    pub http_route: Vec<String>,
    /// HTTP response status (`http_status`).
    pub http_status: Vec<String>,
    /// Marks an RPC call (`api_protocol = rpc`).
    pub rpc_system: Vec<String>,
    /// RPC method (`api_method`).
    pub rpc_method: Vec<String>,
    /// RPC service (`api_route`).
    pub rpc_service: Vec<String>,
    /// MCP JSON-RPC method (`api_protocol = mcp`, `api_method`).
    pub mcp_method: Vec<String>,
    /// MCP resource touched (`effect_kind = mcp_resource`, `effect_target`).
    pub mcp_resource_uri: Vec<String>,
    /// Callee of an API call (`api_target`).
    pub server_address: Vec<String>,
    /// Marks a database side effect (`effect_kind = db`).
    pub db_system: Vec<String>,
    /// Database operation (`effect_operation`); else the first keyword of the query text.
    pub db_operation: Vec<String>,
    /// Database namespace, first half of `effect_target`.
    pub db_namespace: Vec<String>,
    /// Table or collection, second half of `effect_target`.
    pub db_collection: Vec<String>,
    /// Marks a messaging side effect (`effect_kind = messaging`).
    pub messaging_system: Vec<String>,
    /// Messaging operation (`effect_operation`); send/create/publish write.
    pub messaging_operation: Vec<String>,
    /// Queue or topic (`effect_target`).
    pub messaging_destination: Vec<String>,
    /// Full URLs: scanned for secrets, and the path of outbound HTTP side effects.
    pub url_full: Vec<String>,
    /// URL path of outbound HTTP side effects when no route is known.
    pub url_path: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Default for ExtractionConfig {
    fn default() -> Self {
        ExtractionConfig {
            user_id: strings(&["user.id", "enduser.id", "enduser.pseudo.id", "user.hash"]),
            user_roles: strings(&["user.roles", "enduser.role"]),
            session_id: strings(&[
                "session.id",
                "gen_ai.conversation.id",
                "mcp.session.id",
                "a2a.task.id",
            ]),
            agent_id: strings(&["gen_ai.agent.id"]),
            agent_name: strings(&["gen_ai.agent.name"]),
            genai_operation: strings(&["gen_ai.operation.name"]),
            tool_name: strings(&["gen_ai.tool.name"]),
            tool_call_id: strings(&["gen_ai.tool.call.id"]),
            client_address: strings(&["client.address"]),
            scopes: strings(&["enduser.scope"]),
            token_id: strings(&["jti", "token.jti", "auth.token.jti"]),
            gateway_credential: strings(&["kong.credential", "kong.consumer"]),
            http_method: strings(&["http.request.method", "http.method"]),
            http_route: strings(&["http.route", "url.template"]),
            http_status: strings(&["http.response.status_code", "http.status_code"]),
            rpc_system: strings(&["rpc.system.name", "rpc.system"]),
            rpc_method: strings(&["rpc.method"]),
            rpc_service: strings(&["rpc.service"]),
            mcp_method: strings(&["mcp.method.name"]),
            mcp_resource_uri: strings(&["mcp.resource.uri"]),
            server_address: strings(&["server.address", "net.peer.name"]),
            db_system: strings(&["db.system.name", "db.system"]),
            db_operation: strings(&["db.operation.name", "db.operation"]),
            db_namespace: strings(&["db.namespace", "db.name"]),
            db_collection: strings(&["db.collection.name", "db.sql.table"]),
            messaging_system: strings(&["messaging.system"]),
            messaging_operation: strings(&[
                "messaging.operation.type",
                "messaging.operation.name",
                "messaging.operation",
            ]),
            messaging_destination: strings(&["messaging.destination.name"]),
            url_full: strings(&["url.full", "http.url"]),
            url_path: strings(&["url.path", "http.target"]),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// Attribute keys whose string values are secrets, matched case-insensitively against the
    /// whole key or its last dot-separated part (`http.request.header.authorization`).
    pub exact_keys: Vec<String>,
    /// A key containing any of these (case-insensitive) holds a secret.
    pub key_substrings: Vec<String>,
    /// Keys starting with these prefixes are never treated as secrets: they match a substring
    /// above but hold counts, not credentials (`gen_ai.usage.input_tokens`).
    pub exempt_key_prefixes: Vec<String>,
    /// Query parameters of `url.full` whose values are secrets (case-insensitive).
    pub url_query_params: Vec<String>,
    /// A JWKS file (RFC 7517 JSON). When set, JWT signatures are checked against it and the
    /// result recorded in `token_verified`; otherwise claims are decoded unverified.
    pub jwks_file: Option<PathBuf>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            exact_keys: strings(&[
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
                "x-api-key",
            ]),
            key_substrings: strings(&[
                "token", "api_key", "apikey", "api-key", "secret", "password", "passwd",
            ]),
            exempt_key_prefixes: strings(&[
                "gen_ai.usage.",
                "gen_ai.request.max_tokens",
                "gen_ai.token.type",
                "llm.usage.",
            ]),
            url_query_params: strings(&[
                "sig",
                "signature",
                "x-amz-signature",
                "x-amz-security-token",
                "x-goog-signature",
                "token",
                "access_token",
                "id_token",
                "refresh_token",
                "api_key",
                "apikey",
                "key",
                "password",
                "client_secret",
                "code",
            ]),
            jwks_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `idtrail_collector=debug`. `RUST_LOG` wins.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Prefix of environment variables that override config fields: `IDTRAIL__WAL__SEGMENT_BYTES`.
pub const ENV_PREFIX: &str = "IDTRAIL__";

impl Config {
    /// Builds the config from an optional YAML file, environment overrides and `path=value`
    /// overrides (dotted paths, e.g. `writer.max_file_age=2s`), in that order of precedence.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
                let value: serde_json::Value = serde_saphyr::from_str(&text)
                    .map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
                if value.is_null() {
                    serde_json::json!({})
                } else {
                    value
                }
            }
            None => serde_json::json!({}),
        };
        for (key, value) in env {
            if let Some(path) = key.strip_prefix(ENV_PREFIX) {
                let dotted = path.to_ascii_lowercase().replace("__", ".");
                set_path(&mut tree, &dotted, &value)?;
            }
        }
        for (path, value) in overrides {
            set_path(&mut tree, path, value)?;
        }
        let mut config: Config =
            serde_json::from_value(tree).map_err(|e| Error::config(e.to_string()))?;
        config.validate()?;
        let soft_limit = config.receivers.memory_soft_limit_bytes;
        config
            .stitcher
            .max_buffer_bytes
            .get_or_insert(if soft_limit > 0 {
                StitcherConfig::DEFAULT_MAX_BUFFER_BYTES
                    .min(usize::try_from(soft_limit / 4).unwrap_or(usize::MAX))
            } else {
                StitcherConfig::DEFAULT_MAX_BUFFER_BYTES
            });
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if self.writer_id.is_empty()
            || !self
                .writer_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::config(
                "writer_id must be non-empty ASCII letters, digits or '_'",
            ));
        }
        if self.compaction.interval.is_zero() || self.compaction.target_rows < 2 {
            return Err(Error::config(
                "compaction.interval must be above zero and compaction.target_rows at least 2",
            ));
        }
        if self.receivers.max_request_bytes > 256 << 20 {
            return Err(Error::config(
                "receivers.max_request_bytes is at most 256 MiB (the WAL's record limit is 1 GiB)",
            ));
        }
        if self.receivers.max_request_bytes == 0 || self.wal.segment_bytes == 0 {
            return Err(Error::config(
                "receivers.max_request_bytes and wal.segment_bytes must be positive",
            ));
        }
        let receivers = &self.receivers;
        if receivers.memory_soft_limit_bytes > 0
            && receivers.memory_hard_limit_bytes > 0
            && receivers.memory_hard_limit_bytes <= receivers.memory_soft_limit_bytes
        {
            return Err(Error::config(
                "receivers.memory_hard_limit_bytes must be above receivers.memory_soft_limit_bytes",
            ));
        }
        if let Some(stitch_cap) = self.stitcher.max_buffer_bytes
            && self.stitcher.enabled
            && receivers.memory_soft_limit_bytes > 0
            && stitch_cap as u64 > receivers.memory_soft_limit_bytes / 2
        {
            // A buffer allowed to fill the soft limit keeps memory over it until its traces
            // go quiet, refusing every export meanwhile (BENCHMARKS.md, stop 14's burst).
            return Err(Error::config(format!(
                "stitcher.max_buffer_bytes ({stitch_cap}) must be at most half of \
                 receivers.memory_soft_limit_bytes ({}): the rest holds requests in flight and \
                 the writer's buffers. Lower it, or leave it unset for a quarter of the soft limit",
                receivers.memory_soft_limit_bytes
            )));
        }
        if self.span_limits.max_value_bytes < 64 {
            return Err(Error::config(
                "span_limits.max_value_bytes must be at least 64",
            ));
        }
        if !(1..=22).contains(&self.writer.zstd_level) {
            return Err(Error::config("writer.zstd_level must be within 1..=22"));
        }
        Ok(())
    }

    /// The key file, defaulting to a sibling of the data directory.
    pub fn key_file(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| crate::extract::fingerprint::default_key_path(&self.data_dir))
    }
}

/// Sets `a.b.c` in a JSON tree to `raw`, read as a YAML scalar (so `8s`, `true`, `12`, `[a, b]`
/// get their natural types).
fn set_path(tree: &mut serde_json::Value, dotted: &str, raw: &str) -> Result<()> {
    let value: serde_json::Value =
        serde_saphyr::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
    let mut node = tree;
    let parts: Vec<&str> = dotted.split('.').filter(|p| !p.is_empty()).collect();
    let Some((last, parents)) = parts.split_last() else {
        return Err(Error::config(format!("empty override path {dotted:?}")));
    };
    for part in parents {
        if !node.is_object() {
            *node = serde_json::json!({});
        }
        node = node
            .as_object_mut()
            .map(|m| m.entry(part.to_string()).or_insert(serde_json::json!({})))
            .ok_or_else(|| Error::config(format!("cannot override {dotted}")))?;
    }
    match node.as_object_mut() {
        Some(map) => {
            map.insert(last.to_string(), value);
            Ok(())
        }
        None => Err(Error::config(format!("cannot override {dotted}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.receivers.grpc_address.to_string(), "127.0.0.1:4317");
        assert_eq!(c.data_dir, PathBuf::from("./idtrail-data"));
    }

    #[test]
    fn env_and_overrides_win_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "data_dir: /from/file\nwal:\n  segment_bytes: 1000\nwriter:\n  max_file_age: 3s\n",
        )
        .unwrap();
        let env = vec![
            (
                "IDTRAIL__WAL__SEGMENT_BYTES".to_string(),
                "2000".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::load(
            Some(&file),
            env,
            &[("writer.max_file_age".into(), "1500ms".into())],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.wal.segment_bytes, 2000);
        assert_eq!(c.writer.max_file_age, Duration::from_millis(1500));
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = Config::load(
            None,
            Vec::new(),
            &[("wal.segmnet_bytes".into(), "1".into())],
        );
        assert!(err.is_err());
    }

    #[test]
    fn the_stitch_buffer_fits_under_the_soft_memory_limit() {
        let load = |overrides: &[(&str, &str)]| {
            let overrides: Vec<(String, String)> = overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Config::load(None, Vec::new(), &overrides)
        };
        let defaults = load(&[]).unwrap();
        assert_eq!(defaults.stitcher.max_buffer_bytes, Some(512 << 20));
        // Unset, it follows a lowered soft limit.
        let small = load(&[("receivers.memory_soft_limit_bytes", "536870912")]).unwrap();
        assert_eq!(small.stitcher.max_buffer_bytes, Some(128 << 20));
        let off = load(&[("receivers.memory_soft_limit_bytes", "0")]).unwrap();
        assert_eq!(off.stitcher.max_buffer_bytes, Some(512 << 20));
        // Set, it must leave half the soft limit to the rest.
        let refused = load(&[
            ("receivers.memory_soft_limit_bytes", "536870912"),
            ("stitcher.max_buffer_bytes", "536870912"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("stitcher.max_buffer_bytes (536870912) must be at most half"),
            "{refused}"
        );
        let half = load(&[
            ("receivers.memory_soft_limit_bytes", "536870912"),
            ("stitcher.max_buffer_bytes", "268435456"),
        ])
        .unwrap();
        assert_eq!(half.stitcher.max_buffer_bytes, Some(256 << 20));
        // Nothing to fit when stitching is off.
        assert!(
            load(&[
                ("receivers.memory_soft_limit_bytes", "536870912"),
                ("stitcher.max_buffer_bytes", "536870912"),
                ("stitcher.enabled", "false"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../idtrail.example.yaml");
        let c = Config::load(Some(&path), Vec::new(), &[]).unwrap();
        // The example shows the defaults: loading it must change nothing.
        let defaults = Config::load(None, Vec::new(), &[]).unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }
}
