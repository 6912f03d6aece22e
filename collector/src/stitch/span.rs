//! The part of a span the stitcher keeps: ids, parentage and the lineage fields, nothing else.
//!
//! A trace sits in the buffer for the whole quiet window (30 s by default), so at full load the
//! buffer holds millions of spans. Most spans carry no identity, credential, API or effect
//! field at all; they keep only their ids, parent, time and service (about 64 bytes). The
//! lineage fields of the others live behind one box.

use std::collections::HashSet;
use std::sync::Arc;

use crate::record::{ResourceInfo, SpanKind, SpanRow};

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Debug, Clone, PartialEq)]
pub struct LineageSpan {
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub start_time: i64,
    pub kind: SpanKind,
    /// `service.name` of the span's resource, shared by every span of that service.
    pub service: Option<Arc<str>>,
    /// Identity, credential, API and effect fields, when the span has any.
    pub facts: Option<Box<Facts>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub name: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    /// `agent_id`, or `agent_name` when the span has no id.
    pub agent: Option<String>,
    pub tool_name: Option<String>,
    pub tool_call_id: Option<String>,
    pub workload_id: Option<String>,
    // Boxed: each is absent from most spans, and inline they would triple the size of every
    // span that has any fact at all.
    pub credential: Option<Box<CredentialFacts>>,
    pub api: Option<Box<ApiFacts>>,
    pub effect: Option<Box<EffectFacts>>,
    pub links: Vec<(TraceId, SpanId)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CredentialFacts {
    pub fingerprint: String,
    pub kind: &'static str,
    pub token_sub: Option<String>,
    pub token_client_id: Option<String>,
    pub scopes: Vec<String>,
    /// RFC 8693 `act` chain, current actor first.
    pub actors: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiFacts {
    pub method: Option<String>,
    pub route: Option<String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectFacts {
    pub kind: &'static str,
    pub operation: Option<String>,
    pub target: Option<String>,
    pub is_write: bool,
}

/// A stored span's fields as the stitcher reads them, borrowed from either source: a WAL row
/// ([`LineageSpan::from_row`]) or a row of the `spans` table (`from_spans.rs`). Both fill one of
/// these and call [`LineageSpan::new`], so the same span gives the same [`LineageSpan`] whichever
/// way it came in.
#[derive(Debug, Clone, Default)]
pub struct SpanFields<'a> {
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub start_time: i64,
    pub kind: SpanKind,
    /// `service.name` of the span's resource, interned.
    pub service: Option<Arc<str>>,
    pub name: &'a str,
    pub user_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub agent_name: Option<&'a str>,
    pub tool_name: Option<&'a str>,
    pub tool_call_id: Option<&'a str>,
    /// The span's SPIFFE ID, else its resource's.
    pub workload_id: Option<&'a str>,
    /// Fingerprint and kind of the presented credential.
    pub credential: Option<(&'a str, &'static str)>,
    /// Claims of the presented token; read only when a credential was presented.
    pub token: Option<TokenFields<'a>>,
    /// The span is an API call (`api_protocol` is set).
    pub is_api: bool,
    pub api_method: Option<&'a str>,
    pub api_route: Option<&'a str>,
    pub api_target: Option<&'a str>,
    pub effect_kind: Option<&'static str>,
    pub effect_operation: Option<&'a str>,
    pub effect_target: Option<&'a str>,
    pub effect_is_write: Option<bool>,
    pub links: &'a [(TraceId, SpanId)],
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TokenFields<'a> {
    pub sub: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub scopes: &'a [String],
    pub actors: &'a [String],
}

impl LineageSpan {
    /// The lineage part of a stored span. `service` comes from `resource`, interned.
    pub fn from_row(
        row: &SpanRow,
        resource: Option<&ResourceInfo>,
        interner: &mut Interner,
    ) -> LineageSpan {
        let service = resource
            .and_then(|r| r.service_name.as_deref())
            .map(|s| interner.intern(s));
        let token = row.token.as_ref().map(|t| TokenFields {
            sub: t.sub.as_deref(),
            client_id: t.client_id.as_deref(),
            scopes: &t.scopes,
            actors: &t.actors,
        });
        LineageSpan::new(SpanFields {
            span_id: row.span_id,
            parent_span_id: row.parent_span_id,
            start_time: row.start_time,
            kind: row.kind,
            service,
            name: &row.name,
            user_id: row.user_id.as_deref(),
            session_id: row.session_id.as_deref(),
            agent_id: row.agent_id.as_deref(),
            agent_name: row.agent_name.as_deref(),
            tool_name: row.tool_name.as_deref(),
            tool_call_id: row.tool_call_id.as_deref(),
            workload_id: row
                .workload_id
                .as_deref()
                .or_else(|| resource.and_then(|r| r.workload_id.as_deref())),
            credential: row
                .credential
                .as_ref()
                .map(|c| (c.fingerprint.as_str(), c.kind.as_str())),
            token,
            is_api: row.api_protocol.is_some(),
            api_method: row.api_method.as_deref(),
            api_route: row.api_route.as_deref(),
            api_target: row.api_target.as_deref(),
            effect_kind: row.effect_kind.map(|k| k.as_str()),
            effect_operation: row.effect_operation.as_deref(),
            effect_target: row.effect_target.as_deref(),
            effect_is_write: row.effect_is_write,
            links: &row.links,
        })
    }

    /// The lineage part of a span, from its fields (see [`SpanFields`]).
    pub fn new(f: SpanFields<'_>) -> LineageSpan {
        let owned = |s: Option<&str>| s.map(str::to_string);
        let credential = f.credential.map(|(fingerprint, kind)| {
            let token = f.token.as_ref();
            Box::new(CredentialFacts {
                fingerprint: fingerprint.to_string(),
                kind,
                token_sub: owned(token.and_then(|t| t.sub)),
                token_client_id: owned(token.and_then(|t| t.client_id)),
                scopes: token.map(|t| t.scopes.to_vec()).unwrap_or_default(),
                actors: token.map(|t| t.actors.to_vec()).unwrap_or_default(),
            })
        });
        let api = f.is_api.then(|| {
            Box::new(ApiFacts {
                method: owned(f.api_method),
                route: owned(f.api_route),
                target: owned(f.api_target),
            })
        });
        let effect = f.effect_kind.map(|kind| {
            Box::new(EffectFacts {
                kind,
                operation: owned(f.effect_operation),
                target: owned(f.effect_target),
                is_write: f.effect_is_write.unwrap_or(false),
            })
        });
        let agent = f.agent_id.or(f.agent_name);
        let has_facts = f.user_id.is_some()
            || f.session_id.is_some()
            || agent.is_some()
            || f.tool_name.is_some()
            || f.tool_call_id.is_some()
            || f.workload_id.is_some()
            || credential.is_some()
            || api.is_some()
            || effect.is_some()
            || !f.links.is_empty()
            // Entry points name the operation a side effect is charged to when no API call
            // stands above it (a queue consumer, a cron job).
            || matches!(f.kind, SpanKind::Server | SpanKind::Consumer)
            || f.parent_span_id.is_none();
        let facts = has_facts.then(|| {
            Box::new(Facts {
                name: f.name.to_string(),
                user_id: owned(f.user_id),
                session_id: owned(f.session_id),
                agent: owned(agent),
                tool_name: owned(f.tool_name),
                tool_call_id: owned(f.tool_call_id),
                workload_id: owned(f.workload_id),
                credential,
                api,
                effect,
                links: f.links.to_vec(),
            })
        });
        LineageSpan {
            span_id: f.span_id,
            parent_span_id: f.parent_span_id,
            start_time: f.start_time,
            kind: f.kind,
            service: f.service,
            facts,
        }
    }

    pub fn facts(&self) -> Option<&Facts> {
        self.facts.as_deref()
    }

    pub fn user_id(&self) -> Option<&str> {
        self.facts()?.user_id.as_deref()
    }

    pub fn agent(&self) -> Option<&str> {
        self.facts()?.agent.as_deref()
    }

    pub fn credential(&self) -> Option<&CredentialFacts> {
        self.facts()?.credential.as_deref()
    }

    pub fn api(&self) -> Option<&ApiFacts> {
        self.facts()?.api.as_deref()
    }

    pub fn effect(&self) -> Option<&EffectFacts> {
        self.facts()?.effect.as_deref()
    }

    pub fn name(&self) -> Option<&str> {
        self.facts().map(|f| f.name.as_str())
    }

    /// Approximate heap and inline size, for the buffer's memory bound. Each heap allocation
    /// is charged its contents plus the allocator's ~16 bytes of overhead.
    pub fn estimated_bytes(&self) -> usize {
        const ALLOC: usize = 16;
        let inline = std::mem::size_of::<LineageSpan>();
        let Some(f) = self.facts() else {
            return inline;
        };
        let s = |o: &Option<String>| o.as_ref().map_or(0, |x| x.len() + ALLOC);
        let mut bytes = inline + std::mem::size_of::<Facts>() + ALLOC + f.name.len() + ALLOC;
        bytes += s(&f.user_id) + s(&f.session_id) + s(&f.agent) + s(&f.tool_name);
        bytes += s(&f.tool_call_id) + s(&f.workload_id);
        if !f.links.is_empty() {
            bytes += f.links.len() * 24 + ALLOC;
        }
        if let Some(c) = &f.credential {
            bytes += std::mem::size_of::<CredentialFacts>() + ALLOC;
            bytes += c.fingerprint.len() + ALLOC + s(&c.token_sub) + s(&c.token_client_id);
            bytes += c
                .scopes
                .iter()
                .chain(&c.actors)
                .map(|x| x.len() + 24 + ALLOC)
                .sum::<usize>();
        }
        if let Some(a) = &f.api {
            bytes += std::mem::size_of::<ApiFacts>() + ALLOC;
            bytes += s(&a.method) + s(&a.route) + s(&a.target);
        }
        if let Some(e) = &f.effect {
            bytes += std::mem::size_of::<EffectFacts>() + ALLOC;
            bytes += s(&e.operation) + s(&e.target);
        }
        bytes
    }
}

/// Shares one allocation per distinct service name across the buffer.
#[derive(Default)]
pub struct Interner {
    names: HashSet<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.get(name) {
            return known.clone();
        }
        // Service names are few; a flood of distinct ones (a misconfigured exporter) must not
        // grow this set without bound.
        if self.names.len() >= 65_536 {
            self.names.clear();
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(name.clone());
        name
    }
}
