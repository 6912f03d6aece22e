//! `idtrail findings`: the detection rules' findings (the `findings` view), filtered, in any of
//! `idtrail query`'s formats, from the data directory or a running collector.

use chrono::{DateTime, Utc};
use idtrail_query::sql::{literal, timestamp};

use crate::query::{AnswerArgs, QueryArgs};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  idtrail findings                          # every finding, most severe first
  idtrail findings --summary                # one line per rule, with its count
  idtrail findings --list                   # the rules: id, severity, OWASP NHI item, title
  idtrail findings --min-severity high --since 2026-11-22T00:00:00Z --format json
  idtrail findings --rule long_lived_token --rule use_after_revocation")]
pub struct FindingsArgs {
    /// Only these rules (repeatable; ids as `--list` shows them).
    #[arg(long = "rule", value_name = "ID")]
    pub rules: Vec<String>,
    /// Only findings at least this severe.
    #[arg(long, value_enum)]
    pub min_severity: Option<Severity>,
    /// Only findings observed at or after this time (RFC 3339).
    #[arg(long, value_parser = idtrail_query::sql::parse_rfc3339)]
    pub since: Option<DateTime<Utc>>,
    /// Only findings observed before this time (RFC 3339).
    #[arg(long, value_parser = idtrail_query::sql::parse_rfc3339)]
    pub until: Option<DateTime<Utc>>,
    /// One row per rule with its number of findings (rules that found nothing included).
    #[arg(long, conflicts_with = "list")]
    pub summary: bool,
    /// The rules themselves instead of their findings.
    #[arg(long)]
    pub list: bool,
    /// Output, `--server` and the data directory, as `idtrail query` takes them.
    #[command(flatten)]
    pub answer: AnswerArgs,
}

/// The rules' severities, as the command line takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl From<Severity> for idtrail_query::findings::Severity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Critical => Self::Critical,
            Severity::High => Self::High,
            Severity::Medium => Self::Medium,
            Severity::Low => Self::Low,
        }
    }
}

impl FindingsArgs {
    /// The statement this invocation runs.
    pub fn sql(&self) -> String {
        if self.list {
            return "SELECT id, severity, owasp_nhi, owasp_title, title, origin FROM detection_rules \
                    ORDER BY severity_rank, id"
                .to_string();
        }
        if self.summary {
            // Time filters narrow the findings joined in, so a rule that found nothing in the
            // window is still listed, with zero.
            let join: String = self
                .time_filters("f.time")
                .iter()
                .map(|f| format!(" AND {f}"))
                .collect();
            return format!(
                "SELECT r.severity, r.id AS rule_id, r.owasp_nhi, r.title,\n       \
                        count(f.rule_id) AS findings, max(f.time) AS last_seen\n\
                 FROM detection_rules r\n\
                 LEFT JOIN findings f ON f.rule_id = r.id{join}\n\
                 WHERE {filter}\n\
                 GROUP BY r.severity_rank, r.severity, r.id, r.owasp_nhi, r.title\n\
                 ORDER BY r.severity_rank, r.id",
                filter = all(self.rule_filters("r.id", "r.severity")),
            );
        }
        let mut filters = self.rule_filters("rule_id", "severity");
        filters.extend(self.time_filters("time"));
        format!(
            "SELECT severity, rule_id, owasp_nhi, title, subject_kind, subject_id, detail, time,\n       \
                    trace_id, span_id\n\
             FROM findings\n\
             WHERE {filter}\n\
             ORDER BY severity_rank, rule_id, time DESC, subject_id",
            filter = all(filters)
        )
    }

    fn rule_filters(&self, id: &str, severity: &str) -> Vec<String> {
        let mut filters = Vec::new();
        if !self.rules.is_empty() {
            let ids: Vec<String> = self.rules.iter().map(|r| literal(r)).collect();
            filters.push(format!("{id} IN ({})", ids.join(", ")));
        }
        if let Some(min) = self.min_severity {
            let allowed: Vec<String> = [
                Severity::Critical,
                Severity::High,
                Severity::Medium,
                Severity::Low,
            ]
            .into_iter()
            .filter(|s| *s <= min)
            .map(|s| literal(idtrail_query::findings::Severity::from(s).as_str()))
            .collect();
            filters.push(format!("{severity} IN ({})", allowed.join(", ")));
        }
        filters
    }

    fn time_filters(&self, time: &str) -> Vec<String> {
        let mut filters = Vec::new();
        if let Some(since) = &self.since {
            filters.push(format!("{time} >= {}", timestamp(since)));
        }
        if let Some(until) = &self.until {
            filters.push(format!("{time} < {}", timestamp(until)));
        }
        filters
    }

    fn query_args(&self) -> QueryArgs {
        QueryArgs {
            sql: Some(self.sql()),
            file: None,
            interactive: false,
            param: Vec::new(),
            answer: self.answer.clone(),
        }
    }
}

/// `a AND b AND …`, or `true` for none.
fn all(filters: Vec<String>) -> String {
    if filters.is_empty() {
        "true".to_string()
    } else {
        filters.join(" AND ")
    }
}

/// Runs `idtrail findings`; returns the exit code.
pub fn run(args: FindingsArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    crate::query::run(args.query_args(), runtime)
}
