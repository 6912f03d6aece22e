//! What an incident report covers: one identity, a trace, a resource, or only a time window; and
//! the SQL that selects the side effects (chains) inside it.
//!
//! Every section's query starts from the same `scoped` CTE, so each one printed in the report
//! runs again as it stands.

use chrono::{DateTime, Utc};
pub use idtrail_query::sql::{in_list, literal, rfc3339, timestamp};
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
                 window (from, to)"
                    .into(),
            ));
        }
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(ReportError::Invalid(format!(
                "the window's start (from) {} is not before its end (to) {}",
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

    /// The query listing the traces that can hold a chain in scope, `None` when only the time
    /// window bounds it. The report runs it first and hands its answer to
    /// [`scoped_ctes`](Self::scoped_ctes) as a literal list, so that the trace filter reaches
    /// the Parquet bloom filters of `chains` through the views.
    pub fn traces_sql(&self) -> Option<String> {
        let window = self.window_predicate("time");
        let sql = match &self.subject {
            // The credential may sit on any hop, so its traces come from the spans that carried
            // it (bloom filters on credential_fp); the path check below keeps the chains it is on.
            Subject::Credential(fp) => format!(
                "SELECT DISTINCT trace_id FROM spans WHERE credential_fp = {}",
                literal(fp)
            ),
            Subject::User(id) => format!(
                "SELECT DISTINCT trace_id FROM chains WHERE user_id = {} AND {window}",
                literal(id)
            ),
            Subject::Agent(id) => format!(
                "SELECT DISTINCT trace_id FROM chains WHERE array_has(agents, {}) AND {window}",
                literal(id)
            ),
            Subject::Trace(id) => format!(
                "SELECT {id} AS trace_id UNION \
                 SELECT trace_id FROM chains WHERE array_has(linked_trace_ids, {id})",
                id = literal(id)
            ),
            Subject::Resource(id) => format!(
                "SELECT DISTINCT trace_id FROM chains \
                 WHERE (concat(effect_kind, ':', effect_target) = {id} OR effect_target = {id}) \
                 AND {window}",
                id = literal(id)
            ),
            Subject::Window => return None,
        };
        Some(sql)
    }

    /// The CTEs (without `WITH`) that end in `scoped`: the newest revision of every chain in
    /// scope, with its attribution (`chains_attributed`). `traces` restricts the chains read:
    /// the answer of [`traces_sql`](Self::traces_sql), or `None` to print that query in place,
    /// which gives the same rows and runs as it stands.
    pub fn scoped_ctes(&self, traces: Option<&[String]>) -> Vec<String> {
        let window = self.window_predicate("c.time");
        let in_traces = |column: &str| match (traces, self.traces_sql()) {
            (_, None) => "true".to_string(),
            (Some(ids), _) => in_list(column, ids),
            (None, Some(query)) => format!("{column} IN ({query})"),
        };
        match &self.subject {
            Subject::Credential(fp) => {
                // A chain is in scope when the credential is anywhere on its path (any hop, not
                // only the one closest to the effect).
                let fp = literal(fp);
                vec![
                    format!(
                        "hits AS (\n  \
                           SELECT DISTINCT trace_id, effect_span_id\n  \
                           FROM (SELECT trace_id, effect_span_id, unnest(path) AS step FROM chains\n        \
                                 WHERE {})\n  \
                           WHERE step['kind'] = 'credential' AND step['id'] = {fp})",
                        in_traces("trace_id")
                    ),
                    format!(
                        "scoped AS (\n  \
                           SELECT c.* FROM chains_attributed c\n  \
                           JOIN hits h ON c.trace_id = h.trace_id AND c.effect_span_id = h.effect_span_id\n  \
                           WHERE {} AND {window})",
                        in_traces("c.trace_id")
                    ),
                ]
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
                vec![format!(
                    "scoped AS (\n  \
                       SELECT c.* FROM chains_attributed c\n  \
                       WHERE {} AND {subject} AND {window})",
                    in_traces("c.trace_id")
                )]
            }
        }
    }

    /// `WITH …, scoped AS (…)` as printed in the report: the scope's CTEs, then `extra` ones.
    pub fn with_clause(&self, extra: &[&str]) -> String {
        with_clause(
            self.scoped_ctes(None)
                .iter()
                .map(String::as_str)
                .chain(extra.iter().copied()),
        )
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

/// `WITH a, b, …` (empty without CTEs).
pub fn with_clause<'a>(ctes: impl IntoIterator<Item = &'a str>) -> String {
    let ctes: Vec<&str> = ctes.into_iter().collect();
    if ctes.is_empty() {
        String::new()
    } else {
        format!("WITH {}\n", ctes.join(",\n"))
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
        assert!(scope.with_clause(&[]).contains("c.user_id = 'o''brien'"));
    }
}
