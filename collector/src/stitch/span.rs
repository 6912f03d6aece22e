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
    pub credential: Option<CredentialFacts>,
    pub api: Option<ApiFacts>,
    pub effect: Option<EffectFacts>,
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
        let workload_id = row
            .workload_id
            .clone()
            .or_else(|| resource.and_then(|r| r.workload_id.clone()));
        let credential = row.credential.as_ref().map(|c| {
            let token = row.token.as_ref();
            CredentialFacts {
                fingerprint: c.fingerprint.clone(),
                kind: c.kind.as_str(),
                token_sub: token.and_then(|t| t.sub.clone()),
                token_client_id: token.and_then(|t| t.client_id.clone()),
                scopes: token.map(|t| t.scopes.clone()).unwrap_or_default(),
                actors: token.map(|t| t.actors.clone()).unwrap_or_default(),
            }
        });
        let api = row.api_protocol.map(|_| ApiFacts {
            method: row.api_method.clone(),
            route: row.api_route.clone(),
            target: row.api_target.clone(),
        });
        let effect = row.effect_kind.map(|kind| EffectFacts {
            kind: kind.as_str(),
            operation: row.effect_operation.clone(),
            target: row.effect_target.clone(),
            is_write: row.effect_is_write.unwrap_or(false),
        });
        let agent = row.agent_id.clone().or_else(|| row.agent_name.clone());
        let has_facts = row.user_id.is_some()
            || row.session_id.is_some()
            || agent.is_some()
            || row.tool_name.is_some()
            || row.tool_call_id.is_some()
            || workload_id.is_some()
            || credential.is_some()
            || api.is_some()
            || effect.is_some()
            || !row.links.is_empty()
            // Entry points name the operation a side effect is charged to when no API call
            // stands above it (a queue consumer, a cron job).
            || matches!(row.kind, SpanKind::Server | SpanKind::Consumer)
            || row.parent_span_id.is_none();
        let facts = has_facts.then(|| {
            Box::new(Facts {
                name: row.name.clone(),
                user_id: row.user_id.clone(),
                session_id: row.session_id.clone(),
                agent,
                tool_name: row.tool_name.clone(),
                tool_call_id: row.tool_call_id.clone(),
                workload_id,
                credential,
                api,
                effect,
                links: row.links.clone(),
            })
        });
        LineageSpan {
            span_id: row.span_id,
            parent_span_id: row.parent_span_id,
            start_time: row.start_time,
            kind: row.kind,
            service,
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
        self.facts()?.credential.as_ref()
    }

    pub fn api(&self) -> Option<&ApiFacts> {
        self.facts()?.api.as_ref()
    }

    pub fn effect(&self) -> Option<&EffectFacts> {
        self.facts()?.effect.as_ref()
    }

    pub fn name(&self) -> Option<&str> {
        self.facts().map(|f| f.name.as_str())
    }

    /// Approximate heap and inline size, for the buffer's memory bound.
    pub fn estimated_bytes(&self) -> usize {
        let inline = std::mem::size_of::<LineageSpan>();
        let Some(f) = self.facts() else {
            return inline;
        };
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::len);
        let mut bytes = inline + std::mem::size_of::<Facts>() + f.name.len();
        bytes += s(&f.user_id) + s(&f.session_id) + s(&f.agent) + s(&f.tool_name);
        bytes += s(&f.tool_call_id) + s(&f.workload_id) + f.links.len() * 24;
        if let Some(c) = &f.credential {
            bytes += c.fingerprint.len() + s(&c.token_sub) + s(&c.token_client_id);
            bytes += c
                .scopes
                .iter()
                .chain(&c.actors)
                .map(|x| x.len() + 24)
                .sum::<usize>();
        }
        if let Some(a) = &f.api {
            bytes += s(&a.method) + s(&a.route) + s(&a.target);
        }
        if let Some(e) = &f.effect {
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
