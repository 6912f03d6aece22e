//! Trace scenarios: builds OTLP `ExportTraceServiceRequest`s full of
//! multi-service identity-lineage traces.
//!
//! Everything random comes from one seeded `SmallRng`, so a seed fixes ids
//! and content; only timestamps follow the clock (and `Clock::Fixed` pins
//! those too, for tests). Attribute names follow OpenTelemetry semantic
//! conventions v1.44 plus the GenAI / MCP conventions. Identity-bearing
//! attributes are added only through `Attrs::id_*`, `auth` and `cred_url`,
//! which is how `--missing-identity-share` traces strip them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use super::tokens::{Minter, UserIdentity};

/// Schema URL stamped on every scope: the semconv version the names follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

// W3C trace flags (sampled) plus the OTLP span-flags bits telling whether
// the parent is remote; receivers may use them to spot service boundaries.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

const MS: u64 = 1_000_000;

/// Where span timestamps come from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// Real time: each trace ends shortly before "now".
    Wall,
    /// Deterministic time for tests: trace n ends at base + n ms.
    Fixed(u64),
}

/// What the generator needs to know (a subset of the CLI arguments).
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub batch_spans: usize,
    pub attrs_per_span: usize,
    pub invalid_share: f64,
    pub missing_identity_share: f64,
    pub canary: Option<String>,
    /// Build ledger lines for valid spans (skipped when no ledger is kept).
    pub ledger: bool,
    pub clock: Clock,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            batch_spans: 512,
            attrs_per_span: 15,
            invalid_share: 0.0,
            missing_identity_share: 0.05,
            canary: None,
            ledger: false,
            clock: Clock::Wall,
        }
    }
}

/// One export request's worth of spans, not yet encoded.
pub struct Batch {
    pub request: ExportTraceServiceRequest,
    pub spans: u64,
    /// Spans with well-formed ids (the rest were corrupted on purpose).
    pub valid_spans: u64,
    pub traces: u64,
    /// `<trace_id_hex> <span_id_hex>\n` per valid span, if `ledger` is set.
    pub ledger: String,
}

impl Batch {
    pub fn encode(&self) -> Vec<u8> {
        self.request.encode_to_vec()
    }
}

// ---------------------------------------------------------------------------
// Services and resources

/// Every service the scenarios use; the discriminant indexes `SERVICES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Svc {
    AgentPortal,
    PlannerAgent,
    McpOrders,
    ApiGateway,
    OrdersService,
    BillingWorker,
    NightlyExport,
    Scheduler,
    Checkout,
    Inventory,
    WebFrontend,
    Catalog,
}

struct SvcDef {
    name: &'static str,
    namespace: &'static str,
    language: &'static str,
    scope: &'static str,
    scope_version: &'static str,
}

const SERVICES: [SvcDef; 12] = [
    svc(
        "agent-portal",
        "ai",
        "python",
        "opentelemetry.instrumentation.fastapi",
        "0.59b0",
    ),
    svc(
        "planner-agent",
        "ai",
        "python",
        "opentelemetry.instrumentation.openai_agents",
        "0.2.0",
    ),
    svc(
        "mcp-orders",
        "ai",
        "python",
        "opentelemetry.instrumentation.mcp",
        "0.2.0",
    ),
    svc("api-gateway", "platform", "lua", "kong-internal", "3.9.1"),
    svc(
        "orders-service",
        "shop",
        "java",
        "io.opentelemetry.spring-webmvc-6.0",
        "2.21.0-alpha",
    ),
    svc(
        "billing-worker",
        "shop",
        "java",
        "io.opentelemetry.kafka-clients-2.6",
        "2.21.0-alpha",
    ),
    svc(
        "nightly-export",
        "platform",
        "python",
        "opentelemetry.instrumentation.requests",
        "0.59b0",
    ),
    svc(
        "scheduler",
        "ai",
        "python",
        "opentelemetry.instrumentation.openai_agents",
        "0.2.0",
    ),
    svc(
        "checkout",
        "shop",
        "go",
        "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
        "0.63.0",
    ),
    svc(
        "inventory",
        "shop",
        "go",
        "go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc",
        "0.63.0",
    ),
    svc(
        "web-frontend",
        "shop",
        "nodejs",
        "@opentelemetry/instrumentation-http",
        "0.207.0",
    ),
    svc(
        "catalog",
        "shop",
        "python",
        "opentelemetry.instrumentation.django",
        "0.59b0",
    ),
];

const fn svc(
    name: &'static str,
    namespace: &'static str,
    language: &'static str,
    scope: &'static str,
    scope_version: &'static str,
) -> SvcDef {
    SvcDef {
        name,
        namespace,
        language,
        scope,
        scope_version,
    }
}

/// Two deployments per service: production (most traffic) and staging.
const ENVS: usize = 2;
const ENV_NAMES: [&str; ENVS] = ["production", "staging"];
const CLUSTERS: [&str; ENVS] = ["prod-eu-1", "staging-1"];
const TRUST_DOMAINS: [&str; ENVS] = ["prod.example.com", "staging.example.com"];

// ---------------------------------------------------------------------------
// Pools drawn from the seeded RNG at startup

const FIRST_NAMES: [&str; 50] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yusuf", "zoe",
    "amir", "bea", "chen", "dmitri", "elena", "farah", "goran", "hana", "igor", "jin", "kofi",
    "lena", "mateo", "nadia", "omar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "vera",
    "wei", "ximena", "yara", "zaid", "anika", "bruno", "chloe",
];
const LAST_NAMES: [&str; 16] = [
    "Smith", "Garcia", "Müller", "Rossi", "Novak", "Kim", "Okafor", "Silva", "Dubois", "Jensen",
    "Tanaka", "Kowalski", "Haddad", "Ivanova", "Nguyen", "Murphy",
];
const ROLES: [&str; 5] = ["customer", "support", "admin", "ops", "finance"];
const PLANNERS: [&str; 3] = ["planner", "orchestrator", "concierge"];
const SUBAGENTS: [&str; 6] = [
    "order-manager",
    "refund-agent",
    "research-agent",
    "inventory-agent",
    "billing-agent",
    "support-agent",
];
const AUTONOMOUS: [&str; 4] = [
    "reconciler",
    "fraud-sweeper",
    "restock-bot",
    "report-writer",
];
/// (provider, model) pairs for gen_ai.provider.name / gen_ai.request.model.
static MODELS: [(&str, &str); 4] = [
    ("openai", "gpt-4.1"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5"),
    ("aws.bedrock", "anthropic.claude-3-5-haiku"),
];
/// Users get this many concurrent tokens (sessions/devices) each: 50 x 4 =
/// 200 distinct user credentials, reused across traces.
const TOKEN_SLOTS: u64 = 4;

/// An MCP tool and the downstream API call and query it ends in.
struct Tool {
    name: &'static str,
    method: &'static str,
    route: &'static str,
    db_op: &'static str,
    table: &'static str,
    query: &'static str,
    status: i64,
}

static TOOLS: [Tool; 7] = [
    Tool {
        name: "delete_order",
        method: "DELETE",
        route: "/orders/{id}",
        db_op: "DELETE",
        table: "orders",
        query: "DELETE FROM orders WHERE id = $1",
        status: 204,
    },
    Tool {
        name: "create_order",
        method: "POST",
        route: "/orders",
        db_op: "INSERT",
        table: "orders",
        query: "INSERT INTO orders (customer_id, total_cents, currency) VALUES ($1, $2, $3)",
        status: 201,
    },
    Tool {
        name: "add_order_item",
        method: "POST",
        route: "/orders/{id}/items",
        db_op: "INSERT",
        table: "order_items",
        query: "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)",
        status: 201,
    },
    Tool {
        name: "remove_order_item",
        method: "DELETE",
        route: "/orders/{id}/items",
        db_op: "DELETE",
        table: "order_items",
        query: "DELETE FROM order_items WHERE order_id = $1 AND sku = $2",
        status: 204,
    },
    Tool {
        name: "cancel_order",
        method: "POST",
        route: "/orders/{id}/cancel",
        db_op: "UPDATE",
        table: "orders",
        query: "UPDATE orders SET status = 'cancelled' WHERE id = $1",
        status: 200,
    },
    Tool {
        name: "get_order",
        method: "GET",
        route: "/orders/{id}",
        db_op: "SELECT",
        table: "orders",
        query: "SELECT id, status, total_cents FROM orders WHERE id = $1",
        status: 200,
    },
    Tool {
        name: "lookup_customer",
        method: "GET",
        route: "/customers/{id}",
        db_op: "SELECT",
        table: "customers",
        query: "SELECT id, tier, country FROM customers WHERE id = $1",
        status: 200,
    },
];

static USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "python-httpx/0.28.1",
    "okhttp/4.12.0",
    "Go-http-client/2.0",
];
static WEB_ROUTES: [(&str, &str); 4] = [
    ("GET", "/products/{id}"),
    ("GET", "/account/orders"),
    ("POST", "/cart/items"),
    ("GET", "/search"),
];

struct User {
    sub: String,
    name: String,
    roles: Vec<String>,
}

struct Agent {
    id: String,
    name: &'static str,
    /// Kong credential id of the consumer named after this agent's client id.
    kong_credential: String,
}

/// Immutable pools; behind an `Arc` so scenario code can hold them while
/// calling `&mut self` methods.
struct Pools {
    users: Vec<User>,
    planners: Vec<Agent>,
    subagents: Vec<Agent>,
    autonomous: Vec<Agent>,
    api_keys: Vec<String>,
    basic_auth: Vec<String>,
    svc_passwords: Vec<String>,
    aws_key_ids: Vec<String>,
    resources: Vec<Resource>,
    scopes: Vec<InstrumentationScope>,
}

impl Pools {
    fn new(rng: &mut SmallRng) -> Self {
        let users = FIRST_NAMES
            .iter()
            .map(|first| {
                let last = pick(rng, &LAST_NAMES);
                let mut cap = first.chars();
                let display: String = cap
                    .next()
                    .map(|c| c.to_ascii_uppercase())
                    .into_iter()
                    .chain(cap)
                    .collect();
                let roles = ROLES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i == 0 || rng.random_bool(0.2))
                    .map(|(_, r)| r.to_string())
                    .collect();
                User {
                    sub: format!("{first}@example.com"),
                    name: format!("{display} {last}"),
                    roles,
                }
            })
            .collect();
        let agents = |rng: &mut SmallRng, names: &[&'static str]| -> Vec<Agent> {
            names
                .iter()
                .map(|n| Agent {
                    id: format!("agt_{}", alnum(rng, 12)),
                    name: n,
                    kong_credential: uuid_like(rng),
                })
                .collect()
        };
        let planners = agents(rng, &PLANNERS);
        let subagents = agents(rng, &SUBAGENTS);
        let autonomous = agents(rng, &AUTONOMOUS);
        let api_keys = (0..20)
            .map(|_| format!("sk_live_{}", alnum(rng, 32)))
            .collect();
        let basic_auth = (0..6)
            .map(|i| {
                let pair = format!("supplier-{i}:{}", alnum(rng, 14));
                format!("Basic {}", B64.encode(pair))
            })
            .collect();
        let svc_passwords = (0..6).map(|_| alnum(rng, 18)).collect();
        let aws_key_ids = (0..3)
            .map(|_| format!("AKIA{}", alnum(rng, 16).to_ascii_uppercase()))
            .collect();

        let mut resources = Vec::with_capacity(SERVICES.len() * ENVS);
        for def in &SERVICES {
            for env in 0..ENVS {
                resources.push(resource(rng, def, env));
            }
        }
        let scopes = SERVICES
            .iter()
            .map(|d| InstrumentationScope {
                name: d.scope.to_string(),
                version: d.scope_version.to_string(),
                ..Default::default()
            })
            .collect();
        Pools {
            users,
            planners,
            subagents,
            autonomous,
            api_keys,
            basic_auth,
            svc_passwords,
            aws_key_ids,
            resources,
            scopes,
        }
    }
}

fn resource(rng: &mut SmallRng, def: &SvcDef, env: usize) -> Resource {
    let pod = format!(
        "{}-{}-{}",
        def.name,
        hex(rng, 5).get(..9).unwrap_or("7d9f6c8b5"),
        alnum(rng, 5)
    );
    let k8s_ns = if env == 0 {
        def.namespace.to_string()
    } else {
        format!("{}-staging", def.namespace)
    };
    let attributes = vec![
        kv_str("service.name", def.name),
        kv_str("service.namespace", def.namespace),
        kv_str("service.instance.id", uuid_like(rng)),
        kv_str(
            "service.version",
            format!("1.{}.{}", rng.random_range(0..30), rng.random_range(0..10)),
        ),
        kv_str("k8s.cluster.name", CLUSTERS[env]),
        kv_str("k8s.namespace.name", k8s_ns),
        kv_str("k8s.pod.name", pod),
        kv_str("deployment.environment.name", ENV_NAMES[env]),
        kv_str("telemetry.sdk.name", "opentelemetry"),
        kv_str("telemetry.sdk.language", def.language),
        kv_str("telemetry.sdk.version", "1.38.0"),
    ];
    Resource {
        attributes,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Small helpers (kept free functions so they borrow nothing but the RNG)

fn pick<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    // Pools are non-empty constants or built with fixed sizes above.
    &items[rng.random_range(0..items.len())]
}

fn alnum(rng: &mut SmallRng, n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn hex(rng: &mut SmallRng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        push_hex(&mut s, &[rng.random::<u8>()]);
    }
    s
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
}

fn uuid_like(rng: &mut SmallRng) -> String {
    let h = hex(rng, 16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn pod_ip(rng: &mut SmallRng) -> String {
    format!(
        "10.{}.{}.{}",
        rng.random_range(0..8),
        rng.random_range(0..255),
        rng.random_range(1..255)
    )
}

fn any(v: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: any(value),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// Span attribute list under construction. Identity-bearing attributes go
/// through the `id_*` methods, which drop them for identity-less traces.
struct Attrs {
    v: Vec<KeyValue>,
    strip: bool,
}

impl Attrs {
    fn str(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.v.push(kv_str(k, v));
        self
    }
    fn int(&mut self, k: &str, v: i64) -> &mut Self {
        self.v.push(kv(k, Value::IntValue(v)));
        self
    }
    fn strs(&mut self, k: &str, vals: Vec<String>) -> &mut Self {
        let values = vals
            .into_iter()
            .map(|s| AnyValue {
                value: Some(Value::StringValue(s)),
            })
            .collect();
        self.v.push(kv(k, Value::ArrayValue(ArrayValue { values })));
        self
    }
    fn id_str(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        if !self.strip {
            self.str(k, v);
        }
        self
    }
    fn id_strs(&mut self, k: &str, vals: Vec<String>) -> &mut Self {
        if !self.strip {
            self.strs(k, vals);
        }
        self
    }
    /// `http.request.header.authorization`, recorded as a string array the
    /// way OTel HTTP instrumentations capture headers.
    fn auth(&mut self, value: String) -> &mut Self {
        self.id_strs("http.request.header.authorization", vec![value])
    }
    /// `url.full` that embeds a credential: the plain form for identity-less
    /// traces, the credential-bearing one otherwise.
    fn cred_url(&mut self, plain: String, with_cred: impl FnOnce() -> String) -> &mut Self {
        if self.strip {
            self.str("url.full", plain)
        } else {
            self.str("url.full", with_cred())
        }
    }
}

/// Parent relation of a span being emitted.
#[derive(Clone, Copy)]
enum Parent {
    Root,
    Local(u64),
    Remote(u64),
}

/// Per-trace state shared by all its spans.
struct Trace {
    id: [u8; 16],
    env: usize,
    strip: bool,
    canary: bool,
}

/// Timestamps of a span, nanoseconds since the Unix epoch.
type Span2 = (u64, u64);

/// Placement of a span being emitted: service, parent, kind, time, plus
/// the rarer links and error status.
struct At {
    svc: Svc,
    parent: Parent,
    kind: SpanKind,
    t: Span2,
    links: Vec<Link>,
    error: Option<&'static str>,
}

impl At {
    fn new(svc: Svc, parent: Parent, kind: SpanKind, t: Span2) -> Self {
        At {
            svc,
            parent,
            kind,
            t,
            links: Vec::new(),
            error: None,
        }
    }
    fn server(svc: Svc, parent: Parent, t: Span2) -> Self {
        At::new(svc, parent, SpanKind::Server, t)
    }
    fn client(svc: Svc, parent: Parent, t: Span2) -> Self {
        At::new(svc, parent, SpanKind::Client, t)
    }
    fn internal(svc: Svc, parent: Parent, t: Span2) -> Self {
        At::new(svc, parent, SpanKind::Internal, t)
    }
    fn producer(svc: Svc, parent: Parent, t: Span2) -> Self {
        At::new(svc, parent, SpanKind::Producer, t)
    }
    fn consumer(svc: Svc, parent: Parent, t: Span2) -> Self {
        At::new(svc, parent, SpanKind::Consumer, t)
    }
    fn links(mut self, links: Vec<Link>) -> Self {
        self.links = links;
        self
    }
    fn error(mut self, error: Option<&'static str>) -> Self {
        self.error = error;
        self
    }
}

/// A client DB call: database, operation, table and parameterised query.
struct DbQuery {
    db: &'static str,
    op: &'static str,
    table: &'static str,
    query: &'static str,
}

// ---------------------------------------------------------------------------
// Generator

/// Seeded, stateful workload generator. Not `Clone`: one per sender thread.
pub struct Generator {
    cfg: GenConfig,
    rng: SmallRng,
    pools: Arc<Pools>,
    minter: Minter,
    /// Cached credentials, keyed so they repeat realistically; cleared when
    /// the run-relative hour changes (tokens are "re-minted each hour").
    token_hour: u64,
    user_tokens: HashMap<(usize, u64, Svc), String>,
    exchanged_tokens: HashMap<(usize, usize, usize), String>,
    cc_tokens: HashMap<usize, String>,
    /// Spans of the batch being built, per (service, env) resource.
    buckets: Vec<Vec<Span>>,
    batch_spans: u64,
    batch_valid: u64,
    batch_traces: u64,
    ledger: String,
    invalid_rot: u8,
    seq: u64,
    traces_made: u64,
    start_nanos: u64,
}

fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Generator {
    pub fn new(cfg: GenConfig) -> anyhow::Result<Self> {
        for (name, v) in [
            ("invalid-share", cfg.invalid_share),
            ("missing-identity-share", cfg.missing_identity_share),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{name} must be within 0..=1, got {v}"
            );
        }
        anyhow::ensure!(cfg.batch_spans > 0, "batch-spans must be at least 1");
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let pools = Arc::new(Pools::new(&mut rng));
        let start_nanos = match cfg.clock {
            Clock::Wall => wall_nanos(),
            Clock::Fixed(base) => base,
        };
        Ok(Generator {
            rng,
            buckets: (0..SERVICES.len() * ENVS).map(|_| Vec::new()).collect(),
            pools,
            minter: Minter::new(),
            token_hour: 0,
            user_tokens: HashMap::new(),
            exchanged_tokens: HashMap::new(),
            cc_tokens: HashMap::new(),
            batch_spans: 0,
            batch_valid: 0,
            batch_traces: 0,
            ledger: String::new(),
            invalid_rot: 0,
            seq: 0,
            traces_made: 0,
            start_nanos,
            cfg,
        })
    }

    /// Traces generated so far (every distinct trace id counts, including
    /// the linked consumer traces).
    pub fn traces_made(&self) -> u64 {
        self.traces_made
    }

    /// Builds the next request: whole traces until `batch_spans` is reached
    /// (a batch may overshoot by one trace) or `trace_budget` runs out.
    /// Returns `None` when the budget was already spent.
    pub fn next_batch(&mut self, trace_budget: &mut u64) -> anyhow::Result<Option<Batch>> {
        while self.batch_spans < self.cfg.batch_spans as u64 && *trace_budget > 0 {
            let made = self.trace(*trace_budget)?;
            *trace_budget = trace_budget.saturating_sub(made);
        }
        if self.batch_spans == 0 {
            return Ok(None);
        }
        let pools = Arc::clone(&self.pools);
        let mut resource_spans = Vec::new();
        for (i, bucket) in self.buckets.iter_mut().enumerate() {
            if bucket.is_empty() {
                continue;
            }
            let svc_idx = i / ENVS;
            resource_spans.push(ResourceSpans {
                resource: Some(pools.resources[i].clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(pools.scopes[svc_idx].clone()),
                    spans: std::mem::take(bucket),
                    schema_url: SCHEMA_URL.to_string(),
                }],
                schema_url: String::new(),
            });
        }
        let batch = Batch {
            request: ExportTraceServiceRequest { resource_spans },
            spans: self.batch_spans,
            valid_spans: self.batch_valid,
            traces: self.batch_traces,
            ledger: std::mem::take(&mut self.ledger),
        };
        self.batch_spans = 0;
        self.batch_valid = 0;
        self.batch_traces = 0;
        Ok(Some(batch))
    }

    /// Generates one scenario instance; returns how many traces it made.
    fn trace(&mut self, budget: u64) -> anyhow::Result<u64> {
        let now = match self.cfg.clock {
            Clock::Wall => wall_nanos(),
            Clock::Fixed(base) => base + self.traces_made * MS,
        };
        let hour = now.saturating_sub(self.start_nanos) / (3600 * 1_000_000_000);
        if hour != self.token_hour {
            self.token_hour = hour;
            self.user_tokens.clear();
            self.exchanged_tokens.clear();
            self.cc_tokens.clear();
        }
        let before = self.traces_made;
        let tr = self.new_trace();
        match self.rng.random_range(0..100) {
            0..40 => self.agent_delegation(&tr, now, budget)?,
            40..60 => self.batch_job(&tr, now),
            60..75 => self.autonomous_agent(&tr, now)?,
            75..85 => self.workload_identity(&tr, now),
            _ => self.web_traffic(&tr, now)?,
        }
        Ok(self.traces_made - before)
    }

    fn new_trace(&mut self) -> Trace {
        let mut id: [u8; 16] = self.rng.random();
        if id == [0; 16] {
            id[15] = 1;
        }
        self.traces_made += 1;
        self.batch_traces += 1;
        let env = usize::from(self.rng.random_bool(0.1));
        // The first trace always carries the canary so even tiny runs plant it.
        let canary =
            self.cfg.canary.is_some() && (self.traces_made == 1 || self.rng.random_bool(0.05));
        let strip = !canary && self.rng.random_bool(self.cfg.missing_identity_share);
        Trace {
            id,
            env,
            strip,
            canary,
        }
    }

    fn attrs(&self, tr: &Trace) -> Attrs {
        Attrs {
            v: Vec::with_capacity(self.cfg.attrs_per_span.max(12) + 2),
            strip: tr.strip,
        }
    }

    fn span_id(&mut self) -> u64 {
        loop {
            let v = self.rng.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    /// Child interval of `parent` covering fractions `a..b` of it, with a
    /// little jitter; always strictly inside the parent.
    fn within(&mut self, parent: Span2, a: f64, b: f64) -> Span2 {
        let (s, e) = parent;
        let d = e.saturating_sub(s) as f64;
        let jitter = self.rng.random_range(0.0..0.5) * (b - a) * 0.1;
        let start = s + (d * (a + jitter)) as u64 + 1;
        let end = (s + (d * b) as u64).min(e);
        (start.min(end.saturating_sub(1)), end)
    }

    /// Pads, optionally corrupts, and files one span; returns its span id.
    fn emit(&mut self, tr: &Trace, at: At, name: String, mut attrs: Attrs) -> u64 {
        let At {
            svc,
            parent,
            kind,
            t,
            links,
            error,
        } = at;
        let id = self.span_id();
        self.pad(&mut attrs.v, tr.env);
        let (parent_span_id, flags) = match parent {
            Parent::Root => (Vec::new(), FLAG_SAMPLED | FLAG_HAS_IS_REMOTE),
            Parent::Local(p) => (p.to_be_bytes().to_vec(), FLAG_SAMPLED | FLAG_HAS_IS_REMOTE),
            Parent::Remote(p) => (
                p.to_be_bytes().to_vec(),
                FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE,
            ),
        };
        let mut trace_id = tr.id.to_vec();
        let mut span_id = id.to_be_bytes().to_vec();
        let invalid = self.cfg.invalid_share > 0.0 && self.rng.random_bool(self.cfg.invalid_share);
        if invalid {
            // Rotate through the malformed id shapes a receiver must reject.
            match self.invalid_rot {
                0 => trace_id = vec![0; 16],
                1 => span_id.truncate(5),
                _ => trace_id.truncate(10),
            }
            self.invalid_rot = (self.invalid_rot + 1) % 3;
        } else {
            self.batch_valid += 1;
            if self.cfg.ledger {
                push_hex(&mut self.ledger, &trace_id);
                self.ledger.push(' ');
                push_hex(&mut self.ledger, &span_id);
                self.ledger.push('\n');
            }
        }
        let status = error.map(|msg| Status {
            message: msg.to_string(),
            code: StatusCode::Error as i32,
        });
        let span = Span {
            trace_id,
            span_id,
            parent_span_id,
            flags,
            name,
            kind: kind as i32,
            start_time_unix_nano: t.0,
            end_time_unix_nano: t.1,
            attributes: attrs.v,
            links,
            status,
            ..Default::default()
        };
        self.buckets[svc as usize * ENVS + tr.env].push(span);
        self.batch_spans += 1;
        id
    }

    /// Tops the attribute list up to `attrs_per_span` with the kind of
    /// incidental attributes real instrumentations add. Keys never collide
    /// with the scenario attributes.
    fn pad(&mut self, v: &mut Vec<KeyValue>, env: usize) {
        let target = self.cfg.attrs_per_span;
        let mut k = 0usize;
        while v.len() < target {
            let rng = &mut self.rng;
            let attr = match k {
                0 => kv_str("deployment.environment", ENV_NAMES[env]),
                1 => kv_str("http.user_agent", *pick(rng, &USER_AGENTS)),
                2 => kv(
                    "net.peer.port",
                    Value::IntValue(rng.random_range(1024..65535)),
                ),
                3 => kv_str("network.peer.address", pod_ip(rng)),
                4 => kv("thread.id", Value::IntValue(rng.random_range(1..512))),
                5 => kv_str(
                    "thread.name",
                    *pick(
                        rng,
                        &[
                            "tokio-runtime-worker",
                            "http-nio-8080-exec-3",
                            "MainThread",
                            "worker-2",
                        ],
                    ),
                ),
                6 => kv_str(
                    "code.function.name",
                    *pick(
                        rng,
                        &[
                            "handle_request",
                            "OrderController.delete",
                            "run_step",
                            "dispatch",
                        ],
                    ),
                ),
                7 => kv_str(
                    "code.file.path",
                    *pick(
                        rng,
                        &[
                            "/app/src/handlers.py",
                            "/app/main.go",
                            "OrderController.java",
                        ],
                    ),
                ),
                8 => kv(
                    "code.line.number",
                    Value::IntValue(rng.random_range(10..900)),
                ),
                9 => kv_str("app.request_id", hex(rng, 8)),
                10 => kv_str(
                    "app.tenant",
                    *pick(rng, &["acme", "globex", "initech", "umbrella", "hooli"]),
                ),
                11 => kv_str(
                    "app.region",
                    *pick(rng, &["eu-west-1", "eu-central-1", "us-east-1"]),
                ),
                12 => kv_str(
                    "app.feature_flag",
                    *pick(rng, &["new-checkout", "agent-v2", "none"]),
                ),
                13 => kv("app.retry_count", Value::IntValue(rng.random_range(0..3))),
                14 => kv("app.cache_hit", Value::BoolValue(rng.random_bool(0.7))),
                15 => kv_str(
                    "app.build",
                    format!(
                        "2025.{}.{}",
                        rng.random_range(1..13),
                        rng.random_range(0..40)
                    ),
                ),
                16 => kv("app.shard", Value::IntValue(rng.random_range(0..64))),
                17 => kv_str("app.plan", *pick(rng, &["free", "pro", "enterprise"])),
                18 => kv("app.queue_depth", Value::IntValue(rng.random_range(0..200))),
                19 => kv_str(
                    "app.locale",
                    *pick(rng, &["en-GB", "de-DE", "fr-FR", "pl-PL"]),
                ),
                20 => kv(
                    "app.payload_bytes",
                    Value::IntValue(rng.random_range(64..65536)),
                ),
                21 => kv("app.sampled_ratio", Value::DoubleValue(1.0)),
                n => kv_str(&format!("app.attr_{n}"), alnum(rng, 8)),
            };
            v.push(attr);
            k += 1;
        }
    }

    // -- credentials --------------------------------------------------------

    fn now_s(now: u64) -> u64 {
        now / 1_000_000_000
    }

    fn user_token(&mut self, user: usize, client: Svc, now: u64) -> anyhow::Result<String> {
        let slot = self.rng.random_range(0..TOKEN_SLOTS);
        if let Some(t) = self.user_tokens.get(&(user, slot, client)) {
            return Ok(t.clone());
        }
        let pools = Arc::clone(&self.pools);
        let u = &pools.users[user];
        let ident = UserIdentity {
            sub: &u.sub,
            email: &u.sub,
            name: &u.name,
        };
        let client_id = SERVICES[client as usize].name;
        let t = self
            .minter
            .user_token(&mut self.rng, &ident, client_id, Self::now_s(now))?;
        self.user_tokens.insert((user, slot, client), t.clone());
        Ok(t)
    }

    fn exchanged_token(
        &mut self,
        user: usize,
        planner: usize,
        sub: usize,
        now: u64,
    ) -> anyhow::Result<String> {
        if let Some(t) = self.exchanged_tokens.get(&(user, planner, sub)) {
            return Ok(t.clone());
        }
        let pools = Arc::clone(&self.pools);
        let (p, s) = (&pools.planners[planner].id, &pools.subagents[sub].id);
        let t = self.minter.exchanged_token(
            &mut self.rng,
            &pools.users[user].sub,
            s,
            &[s, p],
            p,
            Self::now_s(now),
        )?;
        self.exchanged_tokens
            .insert((user, planner, sub), t.clone());
        Ok(t)
    }

    fn cc_token(&mut self, agent: usize, now: u64) -> anyhow::Result<String> {
        if let Some(t) = self.cc_tokens.get(&agent) {
            return Ok(t.clone());
        }
        let pools = Arc::clone(&self.pools);
        let t = self.minter.client_credentials_token(
            &mut self.rng,
            &pools.autonomous[agent].id,
            Self::now_s(now),
        )?;
        self.cc_tokens.insert(agent, t.clone());
        Ok(t)
    }

    /// Plants `--canary` as a raw credential on a root span: as an API-key
    /// header and as an access_token query parameter.
    fn plant_canary(&self, tr: &Trace, a: &mut Attrs, host: &str, path: &str) {
        if let (true, Some(c)) = (tr.canary, self.cfg.canary.as_deref()) {
            a.strs("http.request.header.x-api-key", vec![c.to_string()]);
            a.str("url.full", format!("https://{host}{path}?access_token={c}"));
        }
    }

    // -- shared span shapes -------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn http_server(
        &mut self,
        tr: &Trace,
        method: &str,
        route: &str,
        path: &str,
        host: &str,
        status: i64,
    ) -> Attrs {
        let mut a = self.attrs(tr);
        let client = pod_ip(&mut self.rng);
        a.str("http.request.method", method)
            .str("http.route", route)
            .str("url.path", path)
            .str("url.scheme", "https")
            .str("server.address", host)
            .int("server.port", 443)
            .str("client.address", client)
            .str("network.protocol.version", "1.1")
            .int("http.response.status_code", status);
        a
    }

    fn http_client(
        &mut self,
        tr: &Trace,
        method: &str,
        template: &str,
        host: &str,
        status: i64,
    ) -> Attrs {
        let mut a = self.attrs(tr);
        a.str("http.request.method", method)
            .str("url.template", template)
            .str("server.address", host)
            .int("server.port", 443)
            .int("http.response.status_code", status);
        a
    }

    fn db_client(&mut self, tr: &Trace, svc: Svc, parent: u64, t: Span2, q: DbQuery) {
        let DbQuery {
            db,
            op,
            table,
            query,
        } = q;
        let mut a = self.attrs(tr);
        a.str("db.system.name", "postgresql")
            .str("db.operation.name", op)
            .str("db.namespace", db)
            .str("db.collection.name", table)
            .str("db.query.text", query)
            .str("server.address", format!("{db}-db.shop.svc.cluster.local"))
            .int("server.port", 5432);
        let error = if self.rng.random_bool(0.01) {
            a.str("error.type", "40P01");
            Some("deadlock detected")
        } else {
            None
        };
        let name = format!("{op} {table}");
        self.emit(
            tr,
            At::client(svc, Parent::Local(parent), t).error(error),
            name,
            a,
        );
    }

    fn gen_ai_agent(
        &mut self,
        tr: &Trace,
        agent: &Agent,
        conv: &str,
        model: (&str, &str),
    ) -> Attrs {
        let mut a = self.attrs(tr);
        a.str("gen_ai.operation.name", "invoke_agent")
            .id_str("gen_ai.agent.id", agent.id.clone())
            .id_str("gen_ai.agent.name", agent.name)
            .str("gen_ai.conversation.id", conv)
            .str("gen_ai.provider.name", model.0)
            .str("gen_ai.request.model", model.1);
        a
    }

    fn chat(&mut self, tr: &Trace, svc: Svc, parent: u64, t: Span2, model: (&str, &str)) {
        let mut a = self.attrs(tr);
        let host = match model.0 {
            "openai" => "api.openai.com",
            "anthropic" => "api.anthropic.com",
            _ => "bedrock-runtime.eu-west-1.amazonaws.com",
        };
        let (inp, out) = (
            self.rng.random_range(200..8000),
            self.rng.random_range(20..800),
        );
        a.str("gen_ai.operation.name", "chat")
            .str("gen_ai.provider.name", model.0)
            .str("gen_ai.request.model", model.1)
            .str("gen_ai.response.model", model.1)
            .int("gen_ai.usage.input_tokens", inp)
            .int("gen_ai.usage.output_tokens", out)
            .strs(
                "gen_ai.response.finish_reasons",
                vec!["tool_calls".to_string()],
            )
            .str("server.address", host)
            .int("server.port", 443);
        let name = format!("chat {}", model.1);
        self.emit(tr, At::client(svc, Parent::Local(parent), t), name, a);
    }

    /// execute_tool -> MCP tools/call client -> MCP server span. Returns the
    /// MCP server span id and interval, where the tool's work happens.
    fn mcp_tool_call(
        &mut self,
        tr: &Trace,
        caller: Svc,
        parent: u64,
        t: Span2,
        tool: &Tool,
        bearer: &str,
    ) -> (u64, Span2) {
        let call_id = format!(
            "call_{:06x}{}",
            self.seq & 0xff_ffff,
            alnum(&mut self.rng, 18)
        );
        self.seq += 1;
        let rpc_id = self.seq.to_string();
        let mcp_session = hex(&mut self.rng, 16);

        let mut a = self.attrs(tr);
        a.str("gen_ai.operation.name", "execute_tool")
            .str("gen_ai.tool.name", tool.name)
            .str("gen_ai.tool.call.id", call_id)
            .str("gen_ai.tool.type", "extension");
        let exec = self.emit(
            tr,
            At::internal(caller, Parent::Local(parent), t),
            format!("execute_tool {}", tool.name),
            a,
        );

        let tc = self.within(t, 0.02, 0.98);
        let mut a = self.attrs(tr);
        a.str("mcp.method.name", "tools/call")
            .str("mcp.session.id", mcp_session.clone())
            .str("mcp.protocol.version", "2025-06-18")
            .str("gen_ai.tool.name", tool.name)
            .str("gen_ai.operation.name", "execute_tool")
            .str("jsonrpc.request.id", rpc_id.clone())
            .str("network.transport", "tcp")
            .str("network.protocol.name", "http")
            .str("server.address", "mcp-orders.ai.svc.cluster.local")
            .int("server.port", 8080)
            .auth(format!("Bearer {bearer}"));
        let name = format!("tools/call {}", tool.name);
        let client = self.emit(
            tr,
            At::client(caller, Parent::Local(exec), tc),
            name.clone(),
            a,
        );

        let ts = self.within(tc, 0.03, 0.97);
        let mut a = self.attrs(tr);
        let peer = pod_ip(&mut self.rng);
        a.str("mcp.method.name", "tools/call")
            .str("mcp.session.id", mcp_session)
            .str("mcp.protocol.version", "2025-06-18")
            .str("gen_ai.tool.name", tool.name)
            .str("gen_ai.operation.name", "execute_tool")
            .str("jsonrpc.request.id", rpc_id)
            .str("network.transport", "tcp")
            .str("network.protocol.name", "http")
            .str("client.address", peer)
            .auth(format!("Bearer {bearer}"));
        let server = self.emit(
            tr,
            At::server(Svc::McpOrders, Parent::Remote(client), ts),
            name,
            a,
        );
        (server, ts)
    }

    /// Caller CLIENT -> api-gateway SERVER -> orders-service SERVER -> DB.
    /// Returns the orders-service span (id, interval).
    #[allow(clippy::too_many_arguments)]
    fn gateway_call(
        &mut self,
        tr: &Trace,
        caller: Svc,
        parent: u64,
        t: Span2,
        tool: &Tool,
        bearer: &str,
        consumer: &Agent,
    ) -> (u64, Span2) {
        let order_id = self.rng.random_range(100_000..9_999_999u32).to_string();
        let path = tool.route.replace("{id}", &order_id);
        let span_name = format!("{} {}", tool.method, tool.route);

        let mut a = self.http_client(
            tr,
            tool.method,
            tool.route,
            "gateway.example.com",
            tool.status,
        );
        a.str("url.full", format!("https://gateway.example.com{path}"))
            .auth(format!("Bearer {bearer}"));
        let call = self.emit(
            tr,
            At::client(caller, Parent::Local(parent), t),
            span_name.clone(),
            a,
        );

        let tg = self.within(t, 0.02, 0.98);
        let mut a = self.http_server(
            tr,
            tool.method,
            tool.route,
            &path,
            "gateway.example.com",
            tool.status,
        );
        a.id_str("kong.consumer", consumer.id.clone())
            .id_str("kong.credential", consumer.kong_credential.clone())
            .auth(format!("Bearer {bearer}"));
        let gw = self.emit(
            tr,
            At::server(Svc::ApiGateway, Parent::Remote(call), tg),
            span_name.clone(),
            a,
        );

        let to = self.within(tg, 0.1, 0.95);
        let mut a = self.http_server(
            tr,
            tool.method,
            tool.route,
            &path,
            "orders.shop.svc.cluster.local",
            tool.status,
        );
        a.str("app.order_id", order_id);
        let ord = self.emit(
            tr,
            At::server(Svc::OrdersService, Parent::Remote(gw), to),
            span_name,
            a,
        );

        let td = self.within(to, 0.1, 0.6);
        self.db_client(
            tr,
            Svc::OrdersService,
            ord,
            td,
            DbQuery {
                db: "orders",
                op: tool.db_op,
                table: tool.table,
                query: tool.query,
            },
        );
        (ord, to)
    }

    fn kafka_send(
        &mut self,
        tr: &Trace,
        svc: Svc,
        parent: u64,
        t: Span2,
        topic: &str,
        key: String,
    ) -> u64 {
        let mut a = self.attrs(tr);
        let msg_id = uuid_like(&mut self.rng);
        a.str("messaging.system", "kafka")
            .str("messaging.operation.type", "send")
            .str("messaging.operation.name", "send")
            .str("messaging.destination.name", topic)
            .str("messaging.kafka.message.key", key)
            .str("messaging.message.id", msg_id)
            .str("server.address", "kafka-0.platform.svc.cluster.local")
            .int("server.port", 9092);
        self.emit(
            tr,
            At::producer(svc, Parent::Local(parent), t),
            format!("send {topic}"),
            a,
        )
    }

    /// Interval of a root span of `min_ms..max_ms`, ending `lag_ms` before now.
    fn root_time(&mut self, now: u64, min_ms: u64, max_ms: u64, lag_ms: u64) -> Span2 {
        let total = self.rng.random_range(min_ms * MS..max_ms * MS);
        let end = now.saturating_sub(lag_ms * MS);
        (end - total, end)
    }

    // -- scenarios ----------------------------------------------------------

    /// 1. Human -> agent -> sub-agent -> MCP tool -> token exchange ->
    ///    gateway -> DB, optionally publishing to Kafka with a linked
    ///    consumer trace in billing-worker.
    fn agent_delegation(&mut self, tr: &Trace, now: u64, budget: u64) -> anyhow::Result<()> {
        let pools = Arc::clone(&self.pools);
        let ui = self.rng.random_range(0..pools.users.len());
        let pi = self.rng.random_range(0..pools.planners.len());
        let si = self.rng.random_range(0..pools.subagents.len());
        let (user, planner, sub) = (&pools.users[ui], &pools.planners[pi], &pools.subagents[si]);
        let tool = pick(&mut self.rng, &TOOLS);
        let model = *pick(&mut self.rng, &MODELS);
        let user_jwt = self.user_token(ui, Svc::AgentPortal, now)?;
        let xchg_jwt = self.exchanged_token(ui, pi, si, now)?;
        let conv = format!("conv_{}", alnum(&mut self.rng, 20));
        let kafka = budget >= 2 && self.rng.random_bool(0.3);

        let t0 = self.root_time(now, 400, 4000, 1500);
        let mut a = self.http_server(
            tr,
            "POST",
            "/v1/runs",
            "/v1/runs",
            "portal.example.com",
            200,
        );
        let session = alnum(&mut self.rng, 24);
        a.id_str("user.id", user.sub.clone())
            .id_strs("user.roles", user.roles.clone())
            .id_str("session.id", session)
            .auth(format!("Bearer {user_jwt}"));
        self.plant_canary(tr, &mut a, "portal.example.com", "/v1/runs");
        let root = self.emit(
            tr,
            At::server(Svc::AgentPortal, Parent::Root, t0),
            "POST /v1/runs".into(),
            a,
        );

        let tp = self.within(t0, 0.02, 0.97);
        let a = self.gen_ai_agent(tr, planner, &conv, model);
        let name = format!("invoke_agent {}", planner.name);
        let plan = self.emit(
            tr,
            At::internal(Svc::PlannerAgent, Parent::Remote(root), tp),
            name,
            a,
        );

        let tc = self.within(tp, 0.01, 0.2);
        self.chat(tr, Svc::PlannerAgent, plan, tc, model);

        let ts = self.within(tp, 0.22, 0.95);
        let a = self.gen_ai_agent(tr, sub, &conv, model);
        let name = format!("invoke_agent {}", sub.name);
        let suba = self.emit(
            tr,
            At::internal(Svc::PlannerAgent, Parent::Local(plan), ts),
            name,
            a,
        );

        let tt = self.within(ts, 0.05, 0.95);
        let (mcp, tm) = self.mcp_tool_call(tr, Svc::PlannerAgent, suba, tt, tool, &user_jwt);

        // RFC 8693 token exchange at the IdP, then the downstream call.
        let tx = self.within(tm, 0.03, 0.2);
        let mut a = self.http_client(tr, "POST", "/oauth2/token", "idp.example.com", 200);
        a.str("url.full", "https://idp.example.com/oauth2/token");
        self.emit(
            tr,
            At::client(Svc::McpOrders, Parent::Local(mcp), tx),
            "POST /oauth2/token".into(),
            a,
        );

        let tg = self.within(tm, 0.25, 0.95);
        let (ord, to) = self.gateway_call(tr, Svc::McpOrders, mcp, tg, tool, &xchg_jwt, sub);

        if kafka {
            let tk = self.within(to, 0.7, 0.9);
            let key = format!("order-{}", self.rng.random_range(100_000..9_999_999u32));
            let producer = self.kafka_send(tr, Svc::OrdersService, ord, tk, "order-events", key);
            self.billing_consumer(tr, tk.1, producer)?;
        }
        Ok(())
    }

    /// Separate trace started by consuming the producer's message; linked,
    /// not parented, as messaging conventions prescribe.
    fn billing_consumer(
        &mut self,
        producer_tr: &Trace,
        sent_at: u64,
        producer: u64,
    ) -> anyhow::Result<()> {
        let tr = self.new_trace();
        let lag = self.rng.random_range(5 * MS..400 * MS);
        let dur = self.rng.random_range(20 * MS..300 * MS);
        let t = (sent_at + lag, sent_at + lag + dur);
        let link = Link {
            trace_id: producer_tr.id.to_vec(),
            span_id: producer.to_be_bytes().to_vec(),
            flags: FLAG_SAMPLED | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE,
            ..Default::default()
        };
        let mut a = self.attrs(&tr);
        let (partition, offset) = (
            self.rng.random_range(0..12),
            self.rng.random_range(0..5_000_000),
        );
        a.str("messaging.system", "kafka")
            .str("messaging.operation.type", "process")
            .str("messaging.operation.name", "process")
            .str("messaging.destination.name", "order-events")
            .str("messaging.consumer.group.name", "billing")
            .str("messaging.destination.partition.id", partition.to_string())
            .int("messaging.kafka.offset", offset);
        let c = self.emit(
            &tr,
            At::consumer(Svc::BillingWorker, Parent::Root, t).links(vec![link]),
            "process order-events".into(),
            a,
        );
        let td = self.within(t, 0.2, 0.8);
        self.db_client(&tr, Svc::BillingWorker, c, td, DbQuery { db: "billing", op: "INSERT", table: "invoices", query: "INSERT INTO invoices (order_id, amount_cents, currency) VALUES ($1, $2, $3)" });
        Ok(())
    }

    /// 2. Service-only batch job: API key in, S3 presigned PUTs out, DB read.
    fn batch_job(&mut self, tr: &Trace, now: u64) {
        let pools = Arc::clone(&self.pools);
        let key = pick(&mut self.rng, &pools.api_keys).clone();
        let t0 = self.root_time(now, 2000, 20000, 10);
        let host = "nightly-export.platform.svc.cluster.local";
        let mut a = self.http_server(
            tr,
            "POST",
            "/jobs/{job}/run",
            "/jobs/orders-daily/run",
            host,
            202,
        );
        a.id_strs("http.request.header.x-api-key", vec![key]);
        self.plant_canary(tr, &mut a, host, "/jobs/orders-daily/run");
        let root = self.emit(
            tr,
            At::server(Svc::NightlyExport, Parent::Root, t0),
            "POST /jobs/{job}/run".into(),
            a,
        );

        let tj = self.within(t0, 0.01, 0.99);
        let mut a = self.attrs(tr);
        let run_id = uuid_like(&mut self.rng);
        a.str("app.job.name", "orders-daily")
            .str("app.job.run_id", run_id);
        let job = self.emit(
            tr,
            At::internal(Svc::NightlyExport, Parent::Local(root), tj),
            "export orders".into(),
            a,
        );

        let td = self.within(tj, 0.01, 0.3);
        self.db_client(tr, Svc::NightlyExport, job, td, DbQuery { db: "orders", op: "SELECT", table: "orders", query: "SELECT id, customer_id, total_cents, created_at FROM orders WHERE created_at >= $1" });

        let parts = self.rng.random_range(1..=3u32);
        let bucket_host = "idtrail-exports.s3.eu-west-1.amazonaws.com";
        for part in 0..parts {
            let lo = 0.32 + 0.22 * f64::from(part);
            let tp = self.within(tj, lo, lo + 0.2);
            let path = format!(
                "/orders/dt=2025-11-0{}/part-{part:04}.parquet",
                self.rng.random_range(1..10)
            );
            let plain = format!("https://{bucket_host}{path}");
            let akid = pick(&mut self.rng, &pools.aws_key_ids).clone();
            let sig = hex(&mut self.rng, 32);
            let size = self.rng.random_range(100_000..50_000_000);
            let mut a = self.http_client(tr, "PUT", "/{key}", bucket_host, 200);
            a.cred_url(plain.clone(), || {
                format!(
                    "{plain}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={akid}%2F20251101%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20251101T020000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
                )
            })
            .int("http.request.body.size", size);
            self.emit(
                tr,
                At::client(Svc::NightlyExport, Parent::Local(job), tp),
                "PUT".into(),
                a,
            );
        }
    }

    /// 3. Autonomous agent: client-credentials token, MCP tool, gateway,
    ///    event publish. No human anywhere.
    fn autonomous_agent(&mut self, tr: &Trace, now: u64) -> anyhow::Result<()> {
        let pools = Arc::clone(&self.pools);
        let ai = self.rng.random_range(0..pools.autonomous.len());
        let agent = &pools.autonomous[ai];
        let tool = pick(&mut self.rng, &TOOLS);
        let model = *pick(&mut self.rng, &MODELS);
        let cc = self.cc_token(ai, now)?;
        let conv = format!("conv_{}", alnum(&mut self.rng, 20));

        let t0 = self.root_time(now, 500, 5000, 10);
        let mut a = self.gen_ai_agent(tr, agent, &conv, model);
        a.str("app.trigger", "cron");
        self.plant_canary(
            tr,
            &mut a,
            "scheduler.ai.svc.cluster.local",
            "/internal/run",
        );
        let name = format!("invoke_agent {}", agent.name);
        let root = self.emit(tr, At::internal(Svc::Scheduler, Parent::Root, t0), name, a);

        let tc = self.within(t0, 0.01, 0.25);
        self.chat(tr, Svc::Scheduler, root, tc, model);

        let tt = self.within(t0, 0.27, 0.85);
        let (mcp, tm) = self.mcp_tool_call(tr, Svc::Scheduler, root, tt, tool, &cc);
        let tg = self.within(tm, 0.05, 0.95);
        self.gateway_call(tr, Svc::McpOrders, mcp, tg, tool, &cc, agent);

        let tk = self.within(t0, 0.88, 0.97);
        let key = agent.id.clone();
        self.kafka_send(tr, Svc::Scheduler, root, tk, "agent-events", key);
        Ok(())
    }

    /// 4. Workload identity: SPIFFE-authenticated gRPC between services, a
    ///    session cookie at the edge and Basic auth to a supplier API.
    fn workload_identity(&mut self, tr: &Trace, now: u64) {
        let pools = Arc::clone(&self.pools);
        let ui = self.rng.random_range(0..pools.users.len());
        let t0 = self.root_time(now, 80, 900, 10);
        let mut a = self.http_server(
            tr,
            "POST",
            "/checkout",
            "/checkout",
            "shop.example.com",
            200,
        );
        let cookie = format!("session={}", alnum(&mut self.rng, 32));
        a.id_str("user.id", pools.users[ui].sub.clone())
            .id_strs("http.request.header.cookie", vec![cookie]);
        self.plant_canary(tr, &mut a, "shop.example.com", "/checkout");
        let root = self.emit(
            tr,
            At::server(Svc::Checkout, Parent::Root, t0),
            "POST /checkout".into(),
            a,
        );

        const METHOD: &str = "inventory.v1.Inventory/Reserve";
        const HOST: &str = "inventory.shop.svc.cluster.local";
        let tc = self.within(t0, 0.1, 0.8);
        let mut a = self.attrs(tr);
        a.str("rpc.system.name", "grpc")
            .str("rpc.method", METHOD)
            .str("rpc.response.status_code", "OK")
            .str("server.address", HOST)
            .int("server.port", 50051);
        let client = self.emit(
            tr,
            At::client(Svc::Checkout, Parent::Local(root), tc),
            METHOD.into(),
            a,
        );

        let ts = self.within(tc, 0.05, 0.95);
        let mut a = self.attrs(tr);
        let spiffe = format!("spiffe://{}/ns/shop/sa/checkout", TRUST_DOMAINS[tr.env]);
        // Both spellings occur in the wild; rotate so receivers handle both.
        let spiffe_key = if self.rng.random_bool(0.5) {
            "peer.spiffe_id"
        } else {
            "tls.client.subject"
        };
        let peer = pod_ip(&mut self.rng);
        a.str("rpc.system.name", "grpc")
            .str("rpc.method", METHOD)
            .str("rpc.response.status_code", "OK")
            .str("server.address", HOST)
            .int("server.port", 50051)
            .str("client.address", peer)
            .id_str(spiffe_key, spiffe);
        let server = self.emit(
            tr,
            At::server(Svc::Inventory, Parent::Remote(client), ts),
            METHOD.into(),
            a,
        );

        let td = self.within(ts, 0.05, 0.4);
        self.db_client(tr, Svc::Inventory, server, td, DbQuery { db: "inventory", op: "UPDATE", table: "stock", query: "UPDATE stock SET reserved = reserved + $1 WHERE sku = $2 AND available >= $1" });

        let tsup = self.within(ts, 0.45, 0.95);
        let basic = pick(&mut self.rng, &pools.basic_auth).clone();
        let mut a = self.http_client(
            tr,
            "POST",
            "/v2/reservations",
            "api.supplier.example.net",
            201,
        );
        a.str(
            "url.full",
            "https://api.supplier.example.net/v2/reservations",
        )
        .auth(basic);
        self.emit(
            tr,
            At::client(Svc::Inventory, Parent::Local(server), tsup),
            "POST".into(),
            a,
        );
    }

    /// 5. Plain web traffic: a user (user.id or enduser.id), sometimes a
    ///    bearer token, and a service URL with a password in its userinfo.
    fn web_traffic(&mut self, tr: &Trace, now: u64) -> anyhow::Result<()> {
        let pools = Arc::clone(&self.pools);
        let ui = self.rng.random_range(0..pools.users.len());
        let (method, route) = *pick(&mut self.rng, &WEB_ROUTES);
        let item = self.rng.random_range(1000..99_999u32).to_string();
        let path = route.replace("{id}", &item);
        let bearer = if self.rng.random_bool(0.5) {
            Some(self.user_token(ui, Svc::WebFrontend, now)?)
        } else {
            None
        };
        let t0 = self.root_time(now, 20, 600, 10);
        let mut a = self.http_server(tr, method, route, &path, "shop.example.com", 200);
        let user_key = if self.rng.random_bool(0.5) {
            "user.id"
        } else {
            "enduser.id"
        };
        let session = alnum(&mut self.rng, 24);
        a.id_str(user_key, pools.users[ui].sub.clone())
            .id_str("session.id", session);
        if let Some(b) = bearer {
            a.auth(format!("Bearer {b}"));
        }
        self.plant_canary(tr, &mut a, "shop.example.com", &path);
        let name = format!("{method} {route}");
        let root = self.emit(tr, At::server(Svc::WebFrontend, Parent::Root, t0), name, a);

        let tc = self.within(t0, 0.1, 0.9);
        let host = "catalog.shop.svc.cluster.local";
        let cpath = format!("/v1/products/{item}");
        let pw = pick(&mut self.rng, &pools.svc_passwords).clone();
        let mut a = self.http_client(tr, "GET", "/v1/products/{id}", host, 200);
        let plain = format!("https://{host}:8443{cpath}");
        a.cred_url(plain, || format!("https://svc:{pw}@{host}:8443{cpath}"));
        let client = self.emit(
            tr,
            At::client(Svc::WebFrontend, Parent::Local(root), tc),
            "GET".into(),
            a,
        );

        let ts = self.within(tc, 0.05, 0.95);
        let a = self.http_server(tr, "GET", "/v1/products/{id}", &cpath, host, 200);
        let server = self.emit(
            tr,
            At::server(Svc::Catalog, Parent::Remote(client), ts),
            "GET /v1/products/{id}".into(),
            a,
        );

        let td = self.within(ts, 0.1, 0.8);
        self.db_client(
            tr,
            Svc::Catalog,
            server,
            td,
            DbQuery {
                db: "catalog",
                op: "SELECT",
                table: "products",
                query: "SELECT id, title, price_cents FROM products WHERE id = $1",
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::tokens::decode_payload;
    use std::collections::HashSet;

    fn cfg(seed: u64) -> GenConfig {
        GenConfig {
            seed,
            ledger: true,
            clock: Clock::Fixed(1_760_000_000_000_000_000),
            ..Default::default()
        }
    }

    fn spans(b: &Batch) -> impl Iterator<Item = &Span> {
        b.request
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .flat_map(|s| s.spans.iter())
    }

    fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
        s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(v) => Some(v.as_str()),
                Value::ArrayValue(a) => match a.values.first()?.value.as_ref()? {
                    Value::StringValue(v) => Some(v.as_str()),
                    _ => None,
                },
                _ => None,
            }
        })
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_ids() -> anyhow::Result<()> {
        let mut budget = u64::MAX;
        let a = Generator::new(cfg(42))?.next_batch(&mut budget)?;
        let b = Generator::new(cfg(42))?.next_batch(&mut budget)?;
        let c = Generator::new(cfg(43))?.next_batch(&mut budget)?;
        let (a, b, c) = (a.expect("batch"), b.expect("batch"), c.expect("batch"));
        assert_eq!(
            a.encode(),
            b.encode(),
            "fixed clock + seed must be byte-identical"
        );
        assert_eq!(a.ledger, b.ledger);
        assert_ne!(a.ledger, c.ledger);

        // With the wall clock only timestamps (and JWT times) may differ.
        let mut wall = cfg(42);
        wall.clock = Clock::Wall;
        let w1 = Generator::new(wall.clone())?
            .next_batch(&mut budget)?
            .expect("batch");
        let w2 = Generator::new(wall)?
            .next_batch(&mut budget)?
            .expect("batch");
        assert_eq!(w1.ledger, w2.ledger);
        let names = |b: &Batch| {
            spans(b)
                .map(|s| (s.name.clone(), s.parent_span_id.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&w1), names(&w2));
        Ok(())
    }

    #[test]
    fn batches_are_sized_and_trees_are_consistent() -> anyhow::Result<()> {
        let mut g = Generator::new(cfg(1))?;
        let mut budget = u64::MAX;
        for _ in 0..5 {
            let b = g.next_batch(&mut budget)?.expect("batch");
            assert!(b.spans >= 512 && b.spans < 512 + 40, "spans {}", b.spans);
            assert_eq!(spans(&b).count() as u64, b.spans);
            assert_eq!(b.ledger.lines().count() as u64, b.valid_spans);
            let by_id: HashMap<(&[u8], &[u8]), &Span> = spans(&b)
                .map(|s| ((s.trace_id.as_slice(), s.span_id.as_slice()), s))
                .collect();
            let mut trace_ids = HashSet::new();
            for s in spans(&b) {
                assert_eq!((s.trace_id.len(), s.span_id.len()), (16, 8));
                assert!(s.start_time_unix_nano < s.end_time_unix_nano, "{}", s.name);
                trace_ids.insert(s.trace_id.clone());
                let keys: HashSet<&str> = s.attributes.iter().map(|kv| kv.key.as_str()).collect();
                assert_eq!(
                    keys.len(),
                    s.attributes.len(),
                    "duplicate attribute keys on {}",
                    s.name
                );
                if !s.parent_span_id.is_empty() {
                    let p = by_id
                        .get(&(s.trace_id.as_slice(), s.parent_span_id.as_slice()))
                        .expect("parent in same batch");
                    assert!(
                        p.start_time_unix_nano <= s.start_time_unix_nano,
                        "{} starts before {}",
                        s.name,
                        p.name
                    );
                    assert!(
                        p.end_time_unix_nano >= s.end_time_unix_nano,
                        "{} ends after {}",
                        s.name,
                        p.name
                    );
                }
                for l in &s.links {
                    assert!(by_id.contains_key(&(l.trace_id.as_slice(), l.span_id.as_slice())));
                    assert_ne!(l.trace_id, s.trace_id);
                }
            }
            assert_eq!(trace_ids.len() as u64, b.traces);
        }
        Ok(())
    }

    #[test]
    fn invalid_share_produces_the_three_invalid_shapes() -> anyhow::Result<()> {
        let mut c = cfg(5);
        c.invalid_share = 0.2;
        let mut g = Generator::new(c)?;
        let b = g.next_batch(&mut u64::MAX.clone())?.expect("batch");
        let (mut zero, mut short_span, mut short_trace) = (0u64, 0u64, 0u64);
        for s in spans(&b) {
            if s.trace_id == [0u8; 16] {
                zero += 1;
            } else if s.span_id.len() == 5 {
                short_span += 1;
            } else if s.trace_id.len() == 10 {
                short_trace += 1;
            }
        }
        let invalid = zero + short_span + short_trace;
        assert_eq!(invalid, b.spans - b.valid_spans);
        assert!(zero > 0 && short_span > 0 && short_trace > 0);
        let share = invalid as f64 / b.spans as f64;
        assert!((0.12..0.3).contains(&share), "share {share}");
        // The ledger never names an invalid span.
        assert!(!b.ledger.contains("00000000000000000000000000000000"));
        assert!(b.ledger.lines().all(|l| l.len() == 32 + 1 + 16));
        Ok(())
    }

    #[test]
    fn attrs_per_span_target_is_reached() -> anyhow::Result<()> {
        for target in [5usize, 15, 40] {
            let mut c = cfg(9);
            c.attrs_per_span = target;
            let b = Generator::new(c)?
                .next_batch(&mut u64::MAX.clone())?
                .expect("batch");
            let total: usize = spans(&b).map(|s| s.attributes.len()).sum();
            let avg = total as f64 / b.spans as f64;
            assert!(avg >= target as f64, "target {target}, avg {avg}");
            if target >= 15 {
                assert!(avg < target as f64 + 2.0, "target {target}, avg {avg}");
            }
        }
        Ok(())
    }

    #[test]
    fn jwts_in_spans_decode_with_expected_claims() -> anyhow::Result<()> {
        let mut g = Generator::new(cfg(3))?;
        let b = g.next_batch(&mut u64::MAX.clone())?.expect("batch");
        let (mut user, mut exchanged, mut cc) = (0, 0, 0);
        for s in spans(&b) {
            let Some(h) = str_attr(s, "http.request.header.authorization") else {
                continue;
            };
            let Some(jwt) = h.strip_prefix("Bearer ") else {
                assert!(h.starts_with("Basic "));
                continue;
            };
            let c = decode_payload(jwt)?;
            assert_eq!(c["iss"], "https://idp.example.com");
            if c.get("act").is_some() {
                exchanged += 1;
                assert!(c["act"]["act"]["sub"].is_string());
                assert_eq!(c["may_act"]["sub"], c["act"]["act"]["sub"]);
            } else if c["sub"] == c["client_id"] {
                cc += 1;
                assert!(c.get("auth_time").is_none());
            } else {
                user += 1;
                assert!(
                    c["sub"]
                        .as_str()
                        .is_some_and(|s| s.ends_with("@example.com"))
                );
                assert!(c["auth_time"].is_u64());
            }
        }
        assert!(
            user > 0 && exchanged > 0 && cc > 0,
            "{user} {exchanged} {cc}"
        );
        Ok(())
    }

    #[test]
    fn missing_identity_and_canary() -> anyhow::Result<()> {
        let mut c = cfg(11);
        c.missing_identity_share = 1.0;
        let b = Generator::new(c)?
            .next_batch(&mut u64::MAX.clone())?
            .expect("batch");
        for s in spans(&b) {
            for key in [
                "user.id",
                "enduser.id",
                "http.request.header.authorization",
                "gen_ai.agent.id",
                "kong.consumer",
                "http.request.header.cookie",
                "peer.spiffe_id",
                "tls.client.subject",
                "http.request.header.x-api-key",
            ] {
                assert!(str_attr(s, key).is_none(), "{key} on {}", s.name);
            }
            if let Some(u) = str_attr(s, "url.full") {
                assert!(!u.contains('@') && !u.contains("X-Amz-Signature"), "{u}");
            }
        }

        let mut c = cfg(11);
        c.canary = Some("CANARY-d3adb33f".into());
        let b = Generator::new(c)?
            .next_batch(&mut u64::MAX.clone())?
            .expect("batch");
        let bytes = b.encode();
        let hits = bytes
            .windows(15)
            .filter(|w| *w == b"CANARY-d3adb33f")
            .count();
        assert!(hits >= 2, "canary planted {hits} times");
        Ok(())
    }

    #[test]
    fn trace_budget_is_exact() -> anyhow::Result<()> {
        let mut g = Generator::new(cfg(2))?;
        let mut budget = 1000;
        let mut traces = 0;
        while let Some(b) = g.next_batch(&mut budget)? {
            traces += b.traces;
        }
        assert_eq!(traces, 1000);
        assert_eq!(g.traces_made(), 1000);
        Ok(())
    }
}
