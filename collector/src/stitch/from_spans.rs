//! Rows of the `spans` table back into stitcher input: what `idtrail restitch` reads.
//!
//! A row becomes the same [`LineageSpan`] the live stitcher built from the WAL row it was written
//! from: both paths fill [`SpanFields`] and call [`LineageSpan::new`]. Only the columns the
//! stitcher needs are read ([`projection`]). One difference cannot be undone: the table stores
//! OTLP's UNSPECIFIED kind as `internal`, so such spans come back as [`SpanKind::Internal`],
//! which the stitcher treats alike.

use arrow::array::{
    Array, BooleanArray, ListArray, RecordBatch, StringArray, StructArray, TimestampNanosecondArray,
};
use parquet::arrow::ProjectionMask;
use parquet::schema::types::SchemaDescriptor;

use super::span::{Interner, LineageSpan, SpanFields, SpanId, TokenFields, TraceId};
use crate::error::{Error, Result};
use crate::record::{CredentialKind, EffectKind, SpanKind};

/// The `spans` columns the stitcher reads.
pub const COLUMNS: [&str; 29] = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "start_time",
    "kind",
    "service_name",
    "name",
    "user_id",
    "session_id",
    "agent_id",
    "agent_name",
    "tool_name",
    "tool_call_id",
    "workload_id",
    "credential_fp",
    "credential_kind",
    "token_sub",
    "token_client_id",
    "token_scopes",
    "token_actors",
    "api_protocol",
    "api_method",
    "api_route",
    "api_target",
    "effect_kind",
    "effect_operation",
    "effect_target",
    "effect_is_write",
    "links",
];

/// Reads only [`COLUMNS`] of a spans file (nested columns whole).
pub fn projection(schema: &SchemaDescriptor) -> ProjectionMask {
    ProjectionMask::columns(schema, COLUMNS)
}

/// The spans of one record batch, with their trace ids.
#[derive(Default)]
pub struct Decoded {
    pub spans: Vec<(TraceId, LineageSpan)>,
    /// Rows whose ids are not hex of the right length (never written by idtrail; counted, not
    /// guessed at).
    pub skipped: usize,
}

/// Turns a `spans` record batch (all of [`COLUMNS`] present, as [`projection`] reads them) into
/// stitcher input. A batch not in the spans schema is an error; a malformed row is skipped.
pub fn decode(batch: &RecordBatch, interner: &mut Interner) -> Result<Decoded> {
    let c = Columns::of(batch)?;
    let mut out = Decoded {
        spans: Vec::with_capacity(batch.num_rows()),
        skipped: 0,
    };
    // Reused across rows: the constructor copies what it keeps.
    let mut scopes = Vec::new();
    let mut actors = Vec::new();
    let mut links = Vec::new();
    for i in 0..batch.num_rows() {
        let ids = (
            hex_id::<16>(str_at(c.trace_id, i)),
            hex_id::<8>(str_at(c.span_id, i)),
            str_at(c.parent_span_id, i).map(|p| hex_id::<8>(Some(p))),
        );
        let (Some(trace_id), Some(span_id), parent) = ids else {
            out.skipped += 1;
            continue;
        };
        let parent_span_id: Option<SpanId> = match parent {
            None => None,
            Some(Some(parent)) => Some(parent),
            Some(None) => {
                out.skipped += 1;
                continue;
            }
        };
        if c.start_time.is_null(i) {
            out.skipped += 1;
            continue;
        }
        c.token_scopes.strings(i, &mut scopes);
        c.token_actors.strings(i, &mut actors);
        c.links(i, &mut links);
        let span = LineageSpan::new(SpanFields {
            span_id,
            parent_span_id,
            start_time: c.start_time.value(i),
            kind: span_kind(str_at(c.kind, i).unwrap_or("")),
            service: str_at(c.service_name, i).map(|s| interner.intern(s)),
            name: str_at(c.name, i).unwrap_or(""),
            user_id: str_at(c.user_id, i),
            session_id: str_at(c.session_id, i),
            agent_id: str_at(c.agent_id, i),
            agent_name: str_at(c.agent_name, i),
            tool_name: str_at(c.tool_name, i),
            tool_call_id: str_at(c.tool_call_id, i),
            workload_id: str_at(c.workload_id, i),
            credential: str_at(c.credential_fp, i).map(|fp| {
                let kind = str_at(c.credential_kind, i).unwrap_or("");
                (fp, credential_kind(kind))
            }),
            // An absent token (null claims, null lists) reads the same as an empty one.
            token: Some(TokenFields {
                sub: str_at(c.token_sub, i),
                client_id: str_at(c.token_client_id, i),
                scopes: &scopes,
                actors: &actors,
            }),
            is_api: !c.api_protocol.is_null(i),
            api_method: str_at(c.api_method, i),
            api_route: str_at(c.api_route, i),
            api_target: str_at(c.api_target, i),
            effect_kind: str_at(c.effect_kind, i).map(effect_kind),
            effect_operation: str_at(c.effect_operation, i),
            effect_target: str_at(c.effect_target, i),
            effect_is_write: (!c.effect_is_write.is_null(i)).then(|| c.effect_is_write.value(i)),
            links: &links,
        });
        out.spans.push((trace_id, span));
    }
    Ok(out)
}

/// The columns of one batch, typed.
struct Columns<'a> {
    trace_id: &'a StringArray,
    span_id: &'a StringArray,
    parent_span_id: &'a StringArray,
    start_time: &'a TimestampNanosecondArray,
    kind: &'a StringArray,
    service_name: &'a StringArray,
    name: &'a StringArray,
    user_id: &'a StringArray,
    session_id: &'a StringArray,
    agent_id: &'a StringArray,
    agent_name: &'a StringArray,
    tool_name: &'a StringArray,
    tool_call_id: &'a StringArray,
    workload_id: &'a StringArray,
    credential_fp: &'a StringArray,
    credential_kind: &'a StringArray,
    token_sub: &'a StringArray,
    token_client_id: &'a StringArray,
    token_scopes: StringList<'a>,
    token_actors: StringList<'a>,
    api_protocol: &'a StringArray,
    api_method: &'a StringArray,
    api_route: &'a StringArray,
    api_target: &'a StringArray,
    effect_kind: &'a StringArray,
    effect_operation: &'a StringArray,
    effect_target: &'a StringArray,
    effect_is_write: &'a BooleanArray,
    links: &'a ListArray,
    link_traces: &'a StringArray,
    link_spans: &'a StringArray,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Columns<'a>> {
        let s = |name| typed::<StringArray>(batch, name);
        let links = typed::<ListArray>(batch, "links")?;
        let link_items = downcast::<StructArray>(links.values().as_ref(), "links")?;
        let link_field = |name| {
            link_items
                .column_by_name(name)
                .ok_or_else(|| mismatch("links"))
                .and_then(|c| downcast::<StringArray>(c.as_ref(), "links"))
        };
        Ok(Columns {
            trace_id: s("trace_id")?,
            span_id: s("span_id")?,
            parent_span_id: s("parent_span_id")?,
            start_time: typed(batch, "start_time")?,
            kind: s("kind")?,
            service_name: s("service_name")?,
            name: s("name")?,
            user_id: s("user_id")?,
            session_id: s("session_id")?,
            agent_id: s("agent_id")?,
            agent_name: s("agent_name")?,
            tool_name: s("tool_name")?,
            tool_call_id: s("tool_call_id")?,
            workload_id: s("workload_id")?,
            credential_fp: s("credential_fp")?,
            credential_kind: s("credential_kind")?,
            token_sub: s("token_sub")?,
            token_client_id: s("token_client_id")?,
            token_scopes: StringList::of(batch, "token_scopes")?,
            token_actors: StringList::of(batch, "token_actors")?,
            api_protocol: s("api_protocol")?,
            api_method: s("api_method")?,
            api_route: s("api_route")?,
            api_target: s("api_target")?,
            effect_kind: s("effect_kind")?,
            effect_operation: s("effect_operation")?,
            effect_target: s("effect_target")?,
            effect_is_write: typed(batch, "effect_is_write")?,
            link_traces: link_field("trace_id")?,
            link_spans: link_field("span_id")?,
            links,
        })
    }

    /// The valid links of row `i` (an invalid one is dropped, as extraction drops them).
    fn links(&self, i: usize, out: &mut Vec<(TraceId, SpanId)>) {
        out.clear();
        if self.links.is_null(i) {
            return;
        }
        let offsets = self.links.value_offsets();
        for j in item_range(offsets, i) {
            if let (Some(t), Some(s)) = (
                hex_id::<16>(str_at(self.link_traces, j)),
                hex_id::<8>(str_at(self.link_spans, j)),
            ) {
                out.push((t, s));
            }
        }
    }
}

/// A `list<utf8>` column.
struct StringList<'a> {
    list: &'a ListArray,
    values: &'a StringArray,
}

impl<'a> StringList<'a> {
    fn of(batch: &'a RecordBatch, name: &str) -> Result<StringList<'a>> {
        let list = typed::<ListArray>(batch, name)?;
        let values = downcast::<StringArray>(list.values().as_ref(), name)?;
        Ok(StringList { list, values })
    }

    /// The items of row `i` (none for a null list), replacing `out`'s contents.
    fn strings(&self, i: usize, out: &mut Vec<String>) {
        out.clear();
        if self.list.is_null(i) {
            return;
        }
        let offsets = self.list.value_offsets();
        out.extend(
            item_range(offsets, i)
                .filter_map(|j| str_at(self.values, j))
                .map(str::to_string),
        );
    }
}

fn item_range(offsets: &[i32], i: usize) -> std::ops::Range<usize> {
    let at = |k: usize| {
        offsets
            .get(k)
            .map_or(0, |&o| usize::try_from(o).unwrap_or(0))
    };
    at(i)..at(i + 1).max(at(i))
}

fn str_at(array: &StringArray, i: usize) -> Option<&str> {
    (i < array.len() && !array.is_null(i)).then(|| array.value(i))
}

fn hex_id<const N: usize>(hex: Option<&str>) -> Option<[u8; N]> {
    let mut id = [0u8; N];
    hex::decode_to_slice(hex?, &mut id).ok()?;
    Some(id)
}

fn typed<'a, T: Array + 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    let column = batch.column_by_name(name).ok_or_else(|| mismatch(name))?;
    downcast(column.as_ref(), name)
}

fn downcast<'a, T: Array + 'static>(array: &'a dyn Array, name: &str) -> Result<&'a T> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| mismatch(name))
}

fn mismatch(column: &str) -> Error {
    Error::Parquet(format!(
        "not a spans file of schema version {}: column {column} is missing or of another type",
        idtrail_schemas::SCHEMA_VERSION
    ))
}

fn span_kind(s: &str) -> SpanKind {
    match s {
        "server" => SpanKind::Server,
        "client" => SpanKind::Client,
        "producer" => SpanKind::Producer,
        "consumer" => SpanKind::Consumer,
        _ => SpanKind::Internal,
    }
}

const CREDENTIAL_KINDS: [CredentialKind; 7] = [
    CredentialKind::Jwt,
    CredentialKind::Bearer,
    CredentialKind::Basic,
    CredentialKind::ApiKey,
    CredentialKind::Cookie,
    CredentialKind::UrlSecret,
    CredentialKind::GatewayId,
];

const EFFECT_KINDS: [EffectKind; 4] = [
    EffectKind::Db,
    EffectKind::Messaging,
    EffectKind::Http,
    EffectKind::McpResource,
];

/// Adding a kind fails to compile here until it is listed above.
const _: fn(CredentialKind, EffectKind) = |c, e| {
    match c {
        CredentialKind::Jwt
        | CredentialKind::Bearer
        | CredentialKind::Basic
        | CredentialKind::ApiKey
        | CredentialKind::Cookie
        | CredentialKind::UrlSecret
        | CredentialKind::GatewayId => {}
    }
    match e {
        EffectKind::Db | EffectKind::Messaging | EffectKind::Http | EffectKind::McpResource => {}
    }
};

/// The stored `credential_kind` as the static string the stitcher carries; a value this
/// version does not know (a newer writer's) reads as `unknown`.
fn credential_kind(s: &str) -> &'static str {
    CREDENTIAL_KINDS
        .iter()
        .map(|k| k.as_str())
        .find(|k| *k == s)
        .unwrap_or("unknown")
}

/// The stored `effect_kind` as a static string; unknown values read as `unknown`.
fn effect_kind(s: &str) -> &'static str {
    EFFECT_KINDS
        .iter()
        .map(|k| k.as_str())
        .find(|k| *k == s)
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        ApiProtocol, BatchHeader, Credential, ResourceInfo, SpanBatch, SpanRow, TokenClaims,
    };
    use crate::writer::spans_batch;
    use std::sync::Arc;

    fn rows() -> SpanBatch {
        let resource = ResourceInfo {
            service_name: Some("gateway".into()),
            ..Default::default()
        };
        let root = SpanRow {
            trace_id: [1; 16],
            span_id: [1; 8],
            start_time: 10,
            end_time: 20,
            name: "POST /orders".into(),
            kind: SpanKind::Server,
            workload_id: Some("spiffe://corp/gateway".into()),
            user_id: Some("alice".into()),
            session_id: Some("s1".into()),
            credential: Some(Credential {
                fingerprint: "k1:abc".into(),
                kind: CredentialKind::Jwt,
                attribute: "http.request.header.authorization".into(),
            }),
            token: Some(TokenClaims {
                sub: Some("alice".into()),
                client_id: Some("app".into()),
                scopes: vec!["orders:write".into(), "openid".into()],
                actors: vec!["agent-b".into(), "agent-a".into()],
                ..Default::default()
            }),
            api_protocol: Some(ApiProtocol::Http),
            api_method: Some("POST".into()),
            api_route: Some("/orders".into()),
            ..Default::default()
        };
        let agent = SpanRow {
            span_id: [2; 8],
            parent_span_id: Some([1; 8]),
            start_time: 11,
            name: "invoke_agent".into(),
            kind: SpanKind::Internal,
            agent_name: Some("planner".into()),
            tool_name: Some("sql".into()),
            tool_call_id: Some("call-1".into()),
            links: vec![([9; 16], [9; 8])],
            ..root_ids()
        };
        let effect = SpanRow {
            span_id: [3; 8],
            parent_span_id: Some([2; 8]),
            start_time: 12,
            name: "DELETE shop.orders".into(),
            kind: SpanKind::Client,
            workload_id: Some("spiffe://corp/worker".into()),
            effect_kind: Some(EffectKind::Db),
            effect_operation: Some("DELETE".into()),
            effect_target: Some("shop.orders".into()),
            effect_is_write: Some(true),
            ..root_ids()
        };
        // No lineage field at all: no facts on either path.
        let plain = SpanRow {
            span_id: [4; 8],
            parent_span_id: Some([2; 8]),
            start_time: 13,
            name: "serialize".into(),
            kind: SpanKind::Unspecified,
            ..root_ids()
        };
        // A token without a presented credential (enduser.scope only): ignored on both paths.
        let scoped = SpanRow {
            span_id: [5; 8],
            parent_span_id: Some([2; 8]),
            start_time: 14,
            name: "check".into(),
            kind: SpanKind::Internal,
            token: Some(TokenClaims {
                scopes: vec!["read".into()],
                ..Default::default()
            }),
            effect_kind: Some(EffectKind::Messaging),
            effect_is_write: None,
            ..root_ids()
        };
        SpanBatch {
            header: Arc::new(BatchHeader {
                resources: vec![resource],
                ..Default::default()
            }),
            spans: vec![root, agent, effect, plain, scoped],
        }
    }

    fn root_ids() -> SpanRow {
        SpanRow {
            trace_id: [1; 16],
            ..Default::default()
        }
    }

    #[test]
    fn a_stored_span_reads_back_as_the_span_the_live_stitcher_built() {
        let batch = rows();
        let record = spans_batch::to_record_batch(&batch).unwrap();
        let projected = record
            .project(
                &COLUMNS
                    .iter()
                    .map(|c| record.schema().index_of(c).unwrap())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let mut interner = Interner::default();
        let decoded = decode(&projected, &mut interner).unwrap();
        assert_eq!(decoded.skipped, 0);
        let live: Vec<(TraceId, LineageSpan)> = batch
            .spans
            .iter()
            .map(|row| {
                let mut span = LineageSpan::from_row(row, batch.resource_of(row), &mut interner);
                // The table stores UNSPECIFIED as internal.
                if span.kind == SpanKind::Unspecified {
                    span.kind = SpanKind::Internal;
                }
                (row.trace_id, span)
            })
            .collect();
        assert_eq!(decoded.spans, live);
        assert!(decoded.spans[3].1.facts.is_none());
        assert!(decoded.spans[4].1.credential().is_none());
    }

    #[test]
    fn malformed_rows_are_skipped_and_foreign_batches_refused() {
        let batch = rows();
        let record = spans_batch::to_record_batch(&batch).unwrap().slice(0, 1);
        let mut columns = record.columns().to_vec();
        columns[1] = Arc::new(StringArray::from(vec!["not-hex"]));
        let broken = RecordBatch::try_new(record.schema(), columns).unwrap();
        let decoded = decode(&broken, &mut Interner::default()).unwrap();
        assert_eq!((decoded.spans.len(), decoded.skipped), (0, 1));

        let foreign = record.project(&[0, 1]).unwrap();
        assert!(decode(&foreign, &mut Interner::default()).is_err());
        assert_eq!(credential_kind("jwt"), "jwt");
        assert_eq!(credential_kind("quantum"), "unknown");
        assert_eq!(effect_kind("mcp_resource"), "mcp_resource");
    }
}
