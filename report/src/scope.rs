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

    /// What puts a row of `chains` (named `alias`, `""` for none) in scope, `None` when only
    /// the time window bounds it. A credential is matched on any hop of the path: the nearest
    /// (`credential_fp`) or one further up (`upstream_credentials`).
    fn subject_predicate(&self, alias: &str) -> Option<String> {
        let c = |column: &str| format!("{alias}{column}");
        Some(match &self.subject {
            Subject::Credential(fp) => format!(
                "({} = {fp} OR array_has({}, {fp}))",
                c("credential_fp"),
                c("upstream_credentials"),
                fp = literal(fp)
            ),
            Subject::User(id) => format!("{} = {}", c("user_id"), literal(id)),
            Subject::Agent(id) => format!("array_has({}, {})", c("agents"), literal(id)),
            Subject::Trace(id) => format!(
                "({} = {id} OR array_has({}, {id}))",
                c("trace_id"),
                c("linked_trace_ids"),
                id = literal(id)
            ),
            Subject::Resource(id) => format!(
                "(concat({}, ':', {}) = {id} OR {} = {id})",
                c("effect_kind"),
                c("effect_target"),
                c("effect_target"),
                id = literal(id)
            ),
            Subject::Window => return None,
        })
    }

    /// The rows of `chains` to copy for the report (ADR 14), `None` when only the time window
    /// bounds the scope: the revisions that match the subject. A credential's nearest-hop
    /// chains and its upstream ones are two queries, so that the first is a lookup the page
    /// index narrows to the credential's run of each file (chains are sorted by
    /// `credential_fp`) rather than a scan of both columns. The later revisions of the chains
    /// found come from [`later_revisions_sql`](Self::later_revisions_sql).
    pub fn chains_sql(&self) -> Option<String> {
        let window = self.window_predicate("time");
        let sql = match &self.subject {
            Subject::Credential(fp) => format!(
                "SELECT * FROM chains WHERE credential_fp = {fp} AND {window}\n\
                 UNION ALL\n\
                 SELECT * FROM chains WHERE array_has(upstream_credentials, {fp})\n  \
                   AND (credential_fp IS DISTINCT FROM {fp}) AND {window}",
                fp = literal(fp)
            ),
            _ => format!(
                "SELECT * FROM chains WHERE {} AND {window}",
                self.subject_predicate("")?
            ),
        };
        Some(sql)
    }

    /// The later revisions (> 1) of the chains of `traces` that [`chains_sql`](Self::chains_sql)
    /// did not return: a chain's newest revision need not match the subject (a late span can
    /// change it), and `chains_latest` must see it to pick it. Few rows carry a revision above
    /// 1, so the page statistics of `revision` skip nearly every page.
    pub fn later_revisions_sql(&self, traces: &[String]) -> Option<String> {
        let subject = self.subject_predicate("")?;
        Some(format!(
            "SELECT * FROM chains WHERE revision > 1 AND {} AND {}\n  \
               AND NOT coalesce({subject}, false)",
            in_list("trace_id", traces),
            self.window_predicate("time"),
        ))
    }

    /// The CTEs (without `WITH`) that end in `scoped`: the newest revision of every chain in
    /// scope, with its attribution (`chains_attributed`). They run as printed, over the whole
    /// store or over the report's copy of the chains in scope alike.
    pub fn scoped_ctes(&self) -> Vec<String> {
        let window = self.window_predicate("c.time");
        match &self.subject {
            Subject::Credential(_) => {
                // A chain is in scope when the credential is anywhere on its path (any hop, not
                // only the one closest to the effect), in any of its revisions.
                vec![
                    format!(
                        "hits AS (\n  \
                           SELECT DISTINCT trace_id, effect_span_id FROM chains\n  \
                           WHERE {})",
                        self.subject_predicate("").unwrap_or_default()
                    ),
                    format!(
                        "scoped AS (\n  \
                           SELECT c.* FROM chains_attributed c\n  \
                           JOIN hits h ON c.trace_id = h.trace_id AND c.effect_span_id = h.effect_span_id\n  \
                           WHERE {window})"
                    ),
                ]
            }
            _ => vec![format!(
                "scoped AS (\n  \
                   SELECT c.* FROM chains_attributed c\n  \
                   WHERE {} AND {window})",
                self.subject_predicate("c.")
                    .unwrap_or_else(|| "true".to_string())
            )],
        }
    }

    /// `WITH …, scoped AS (…)` as printed in the report: the scope's CTEs, then `extra` ones.
    pub fn with_clause(&self, extra: &[&str]) -> String {
        with_clause(
            self.scoped_ctes()
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
