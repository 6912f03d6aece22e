//! The configured attribute lists, compiled into one lookup: attribute key → the fields it can
//! fill and its priority in each. One pass over a span's attributes finds every field's winner.

use ahash::AHashMap as HashMap;

use crate::config::ExtractionConfig;
use crate::extract::attributes::Value;

/// A lineage field that an attribute can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    UserId,
    UserRoles,
    SessionId,
    AgentId,
    AgentName,
    GenaiOperation,
    ToolName,
    ToolCallId,
    ClientAddress,
    Scopes,
    TokenId,
    GatewayCredential,
    HttpMethod,
    HttpRoute,
    HttpStatus,
    RpcSystem,
    RpcMethod,
    RpcService,
    McpMethod,
    McpResourceUri,
    ServerAddress,
    DbSystem,
    DbOperation,
    DbNamespace,
    DbCollection,
    DbQueryText,
    MessagingSystem,
    MessagingOperation,
    MessagingDestination,
    UrlFull,
    UrlPath,
}

const FIELD_COUNT: usize = Field::UrlPath as usize + 1;

/// Query text is read only to learn a missing DB operation; it is not configurable because it
/// fills no column of its own.
const DB_QUERY_TEXT: &[&str] = &["db.query.text", "db.statement"];

pub struct Mapping {
    lookup: HashMap<String, Vec<(Field, u8)>>,
}

impl Mapping {
    pub fn new(c: &ExtractionConfig) -> Mapping {
        let query_text: Vec<String> = DB_QUERY_TEXT.iter().map(|s| s.to_string()).collect();
        let lists: [(Field, &Vec<String>); FIELD_COUNT] = [
            (Field::UserId, &c.user_id),
            (Field::UserRoles, &c.user_roles),
            (Field::SessionId, &c.session_id),
            (Field::AgentId, &c.agent_id),
            (Field::AgentName, &c.agent_name),
            (Field::GenaiOperation, &c.genai_operation),
            (Field::ToolName, &c.tool_name),
            (Field::ToolCallId, &c.tool_call_id),
            (Field::ClientAddress, &c.client_address),
            (Field::Scopes, &c.scopes),
            (Field::TokenId, &c.token_id),
            (Field::GatewayCredential, &c.gateway_credential),
            (Field::HttpMethod, &c.http_method),
            (Field::HttpRoute, &c.http_route),
            (Field::HttpStatus, &c.http_status),
            (Field::RpcSystem, &c.rpc_system),
            (Field::RpcMethod, &c.rpc_method),
            (Field::RpcService, &c.rpc_service),
            (Field::McpMethod, &c.mcp_method),
            (Field::McpResourceUri, &c.mcp_resource_uri),
            (Field::ServerAddress, &c.server_address),
            (Field::DbSystem, &c.db_system),
            (Field::DbOperation, &c.db_operation),
            (Field::DbNamespace, &c.db_namespace),
            (Field::DbCollection, &c.db_collection),
            (Field::DbQueryText, &query_text),
            (Field::MessagingSystem, &c.messaging_system),
            (Field::MessagingOperation, &c.messaging_operation),
            (Field::MessagingDestination, &c.messaging_destination),
            (Field::UrlFull, &c.url_full),
            (Field::UrlPath, &c.url_path),
        ];
        let mut lookup: HashMap<String, Vec<(Field, u8)>> = HashMap::new();
        for (field, keys) in lists {
            for (priority, key) in keys.iter().enumerate() {
                let priority = u8::try_from(priority).unwrap_or(u8::MAX);
                lookup
                    .entry(key.clone())
                    .or_default()
                    .push((field, priority));
            }
        }
        Mapping { lookup }
    }

    /// Finds, for every field, the highest-priority attribute present.
    pub fn match_attributes<'a>(&self, attrs: &'a [(String, Value)]) -> Matches<'a> {
        let mut best: [Option<(u8, usize)>; FIELD_COUNT] = [None; FIELD_COUNT];
        for (index, (key, _)) in attrs.iter().enumerate() {
            let Some(fields) = self.lookup.get(key.as_str()) else {
                continue;
            };
            for &(field, priority) in fields {
                let slot = &mut best[field as usize];
                if slot.is_none_or(|(p, _)| priority < p) {
                    *slot = Some((priority, index));
                }
            }
        }
        Matches {
            attrs,
            best,
            consumed: Vec::new(),
        }
    }
}

/// The winning attribute of each field for one span, and which of them were put in columns.
pub struct Matches<'a> {
    attrs: &'a [(String, Value)],
    best: [Option<(u8, usize)>; FIELD_COUNT],
    consumed: Vec<usize>,
}

impl<'a> Matches<'a> {
    /// The winning value of `field`, without marking it as used.
    pub fn peek(&self, field: Field) -> Option<&'a Value> {
        self.best[field as usize].map(|(_, i)| &self.attrs[i].1)
    }

    /// The winning attribute key of `field`.
    pub fn key(&self, field: Field) -> Option<&'a str> {
        self.best[field as usize].map(|(_, i)| self.attrs[i].0.as_str())
    }

    /// The winning value of `field`, marked as stored in a typed column (so it is not repeated
    /// in the `attributes` map).
    pub fn take(&mut self, field: Field) -> Option<&'a Value> {
        let (_, index) = self.best[field as usize]?;
        self.consumed.push(index);
        Some(&self.attrs[index].1)
    }

    /// [`Matches::take`] as an owned, non-empty string.
    pub fn take_string(&mut self, field: Field) -> Option<String> {
        let value = self.peek(field)?.as_str()?;
        if value.is_empty() {
            return None;
        }
        let value = value.to_string();
        self.take(field);
        Some(value)
    }

    pub fn peek_str(&self, field: Field) -> Option<&'a str> {
        self.peek(field)?.as_str().filter(|s| !s.is_empty())
    }

    /// Indexes of the attributes stored in typed columns.
    pub fn into_consumed(self) -> Vec<usize> {
        self.consumed
    }
}
