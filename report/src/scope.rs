//! What an incident report covers: one identity, a trace, a resource, or only a time window; and
//! the SQL that selects the side effects (chains) inside it.
//!
//! Every section's query starts from the same `scoped` CTE, so each one printed in the report
//! runs again as it stands.

use chrono::{DateTime, Utc};
pub use idtrail_query::sql::{literal, rfc3339, timestamp};
use serde::Serialize;

use crate::error::{ReportError, Result};

/// The subject of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A credential, by its keyed fingerprint (`credential_fp`).
    Credential(String),
    /// A human, by `user_id`.
    User(String),
    /// An agent, by `agent_id` (any depth of the chain).
    Agent(String),
    /// A trace, and the chains of traces that link to it.
    Trace(String),
    /// A resource: `effect_kind:target` (`db:shop.orders`) or the bare target.
    Resource(String),
    /// Nothing but the time window.
    Window,
}

/// The subject and the time window of a report.
#[derive(Debug, Clone)]
pub struct Scope {
    pub subject: Subject,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// The scope as the report prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ScopeInfo {
    pub kind: &'static str,
    pub id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Scope {
    pub fn new(
        subject: Subject,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Scope> {
        if subject == Subject::Window && from.is_none() && to.is_none() {
            return Err(ReportError::Invalid(
                "a report needs a subject (credential, user, agent, trace, resource) or a time \
                 window (--from/--to)"
                    .into(),
            ));
        }
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(ReportError::Invalid(format!(
                "--from {} is not before --to {}",
                rfc3339(&from),
                rfc3339(&to)
            )));
        }
        if let Some(id) = self_id(&subject)
            && id.trim().is_empty()
        {
            return Err(ReportError::Invalid("the report's subject is empty".into()));
        }
        Ok(Scope { subject, from, to })
    }

    pub fn info(&self) -> ScopeInfo {
        ScopeInfo {
            kind: self.kind(),
            id: self_id(&self.subject).map(str::to_string),
            from: self.from.as_ref().map(rfc3339),
            to: self.to.as_ref().map(rfc3339),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.subject {
            Subject::Credential(_) => "credential",
            Subject::User(_) => "user",
            Subject::Agent(_) => "agent",
            Subject::Trace(_) => "trace",
            Subject::Resource(_) => "resource",
            Subject::Window => "window",
        }
    }

    /// `kind id` of the lineage node the report is about, when it is one `blast_radius` takes.
    pub fn identity(&self) -> Option<(&'static str, &str)> {
        match &self.subject {
            Subject::Credential(id) => Some(("credential", id)),
            Subject::User(id) => Some(("user", id)),
            Subject::Agent(id) => Some(("agent", id)),
            _ => None,
        }
    }

    /// One line naming the scope, for titles.
    pub fn describe(&self) -> String {
        let mut text = match &self.subject {
            Subject::Window => "all activity".to_string(),
            other => format!("{} {}", self.kind(), self_id(other).unwrap_or_default()),
        };
        if let Some(from) = &self.from {
            text.push_str(&format!(" from {}", rfc3339(from)));
        }
        if let Some(to) = &self.to {
            text.push_str(&format!(" until {}", rfc3339(to)));
        }
        text
    }

    /// `WITH scoped AS (…)`: the newest revision of every chain in scope, with its attribution
    /// (`chains_attributed`). Sections add their own CTEs after it with `, name AS (…)`.
    pub fn scoped_cte(&self) -> String {
        let window = self.window_predicate("c.time");
        match &self.subject {
            Subject::Credential(fp) => {
                // Only traces where the credential appears are unpacked; the spans lookup uses
                // the bloom filters on credential_fp. A chain is in scope when the credential is
                // anywhere on its path (any hop, not only the one closest to the effect).
                let fp = literal(fp);
                format!(
                    "WITH hits AS (\n  \
                       SELECT DISTINCT trace_id, effect_span_id\n  \
                       FROM (SELECT trace_id, effect_span_id, unnest(path) AS step FROM chains\n        \
                             WHERE trace_id IN (SELECT trace_id FROM spans WHERE credential_fp = {fp}))\n  \
                       WHERE step['kind'] = 'credential' AND step['id'] = {fp}),\n\
                     scoped AS (\n  \
                       SELECT c.* FROM chains_attributed c\n  \
                       JOIN hits h ON c.trace_id = h.trace_id AND c.effect_span_id = h.effect_span_id\n  \
                       WHERE {window})"
                )
            }
            other => {
                let subject = match other {
                    Subject::User(id) => format!("c.user_id = {}", literal(id)),
                    Subject::Agent(id) => format!("array_has(c.agents, {})", literal(id)),
                    Subject::Trace(id) => format!(
                        "(c.trace_id = {id} OR array_has(c.linked_trace_ids, {id}))",
                        id = literal(id)
                    ),
                    Subject::Resource(id) => format!(
                        "(concat(c.effect_kind, ':', c.effect_target) = {id} OR c.effect_target = {id})",
                        id = literal(id)
                    ),
                    _ => "true".to_string(),
                };
                format!(
                    "WITH scoped AS (\n  \
                       SELECT c.* FROM chains_attributed c\n  \
                       WHERE {subject} AND {window})"
                )
            }
        }
    }

    /// The time window as a predicate on `column` (`true` without one).
    pub fn window_predicate(&self, column: &str) -> String {
        let mut parts = Vec::new();
        if let Some(from) = &self.from {
            parts.push(format!("{column} >= {}", timestamp(from)));
        }
        if let Some(to) = &self.to {
            parts.push(format!("{column} < {}", timestamp(to)));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }
}

fn self_id(subject: &Subject) -> Option<&str> {
    match subject {
        Subject::Credential(id)
        | Subject::User(id)
        | Subject::Agent(id)
        | Subject::Trace(id)
        | Subject::Resource(id) => Some(id),
        Subject::Window => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_needs_a_subject_or_a_window() {
        assert!(Scope::new(Subject::Window, None, None).is_err());
        let from = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc();
        assert!(Scope::new(Subject::Window, Some(from), None).is_ok());
        assert!(Scope::new(Subject::User("a".into()), Some(from), Some(from)).is_err());
        assert!(Scope::new(Subject::User(" ".into()), None, None).is_err());
    }

    #[test]
    fn quotes_in_ids_stay_inside_their_literal() {
        let scope = Scope::new(Subject::User("o'brien".into()), None, None).unwrap();
        assert!(scope.scoped_cte().contains("c.user_id = 'o''brien'"));
    }
}
