//! What a caller asks of a report: the same fields as `idtrail report`'s flags (with the `cli`
//! feature this struct *is* those flags) and as `GET /v1/report`'s query parameters, so the
//! two cannot drift apart.

use chrono::{DateTime, Utc};
use idtrail_query::sql::parse_rfc3339;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ReportError, Result};
use crate::scope::{Scope, Subject};
use crate::sections::ReportOptions;

/// A report's scope, size and format.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(group(clap::ArgGroup::new("subject").args(["credential", "user", "agent", "trace", "resource"]))))]
pub struct ReportRequest {
    /// A credential, by its fingerprint (`credential_fp`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FP"))]
    pub credential: Option<String>,
    /// A human, by user id.
    #[cfg_attr(feature = "cli", arg(long, value_name = "ID"))]
    pub user: Option<String>,
    /// An agent, by agent id.
    #[cfg_attr(feature = "cli", arg(long, value_name = "ID"))]
    pub agent: Option<String>,
    /// A trace (32 hex), with the traces linking to it.
    #[cfg_attr(feature = "cli", arg(long, value_name = "TRACE_ID"))]
    pub trace: Option<String>,
    /// A resource: `db:shop.orders`, or the bare target.
    #[cfg_attr(feature = "cli", arg(long, value_name = "RESOURCE"))]
    pub resource: Option<String>,
    /// Only side effects at or after this time (RFC 3339).
    #[serde(
        default,
        deserialize_with = "rfc3339_time",
        serialize_with = "to_rfc3339"
    )]
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_rfc3339))]
    pub from: Option<DateTime<Utc>>,
    /// Only side effects before this time (RFC 3339).
    #[serde(
        default,
        deserialize_with = "rfc3339_time",
        serialize_with = "to_rfc3339"
    )]
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_rfc3339))]
    pub to: Option<DateTime<Utc>>,
    /// Document format.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Format::Html))]
    pub format: Format,
    /// Rows kept per table.
    #[serde(default = "default_max_rows")]
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_max_rows()))]
    pub max_rows: usize,
    /// Distinct chains drawn.
    #[serde(default = "default_max_chains")]
    #[cfg_attr(feature = "cli", arg(long, default_value_t = default_max_chains()))]
    pub max_chains: usize,
    /// Leave out the findings section (every detection rule, each filtered to the identities
    /// and traces in scope).
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_findings: bool,
}

/// A report's document format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Format {
    /// One self-contained HTML file.
    #[default]
    Html,
    Markdown,
    /// The report's data as it is, sections and SQL included.
    Json,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Markdown => "md",
            Format::Json => "json",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Markdown => "text/markdown; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

impl ReportRequest {
    /// The scope asked for: at most one subject, and the window.
    pub fn scope(&self) -> Result<Scope> {
        let named = [
            self.credential
                .as_deref()
                .map(|fp| Subject::Credential(fp.trim().to_string())),
            self.user.clone().map(Subject::User),
            self.agent.clone().map(Subject::Agent),
            self.trace
                .as_deref()
                .map(|t| Subject::Trace(t.trim().to_ascii_lowercase())),
            self.resource.clone().map(Subject::Resource),
        ];
        let mut named = named.into_iter().flatten();
        let subject = named.next().unwrap_or(Subject::Window);
        if named.next().is_some() {
            return Err(ReportError::Invalid(
                "a report has one subject: name one of credential, user, agent, trace and \
                 resource"
                    .into(),
            ));
        }
        Scope::new(subject, self.from, self.to)
    }

    /// The request as `GET /v1/report`'s query string (`idtrail report --server`).
    pub fn query_string(&self) -> Result<String> {
        serde_urlencoded::to_string(self)
            .map_err(|e| ReportError::Invalid(format!("report parameters: {e}")))
    }

    pub fn options(&self) -> ReportOptions {
        ReportOptions {
            max_rows: self.max_rows.max(1),
            max_chains: self.max_chains,
            findings: !self.no_findings,
            ..ReportOptions::default()
        }
    }
}

fn default_max_rows() -> usize {
    ReportOptions::default().max_rows
}

fn default_max_chains() -> usize {
    ReportOptions::default().max_chains
}

fn rfc3339_time<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<DateTime<Utc>>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_rfc3339(&text).map_err(serde::de::Error::custom))
        .transpose()
}

fn to_rfc3339<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    time.map(|t| crate::scope::rfc3339(&t))
        .serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_query(query: &str) -> std::result::Result<ReportRequest, String> {
        serde_urlencoded::from_str(query).map_err(|e| e.to_string())
    }

    #[test]
    fn query_parameters_are_the_cli_flags() {
        let request = from_query(
            "credential=%203f9a%20&from=2026-11-22T11:00:00%2B01:00&format=markdown&max_rows=7&no_findings=true",
        )
        .unwrap();
        let scope = request.scope().unwrap();
        assert_eq!(scope.subject, Subject::Credential("3f9a".into()));
        assert_eq!(
            scope.from.map(|t| crate::scope::rfc3339(&t)).as_deref(),
            Some("2026-11-22T10:00:00Z")
        );
        assert_eq!(request.format, Format::Markdown);
        let options = request.options();
        assert_eq!((options.max_rows, options.findings), (7, false));
        assert_eq!(options.max_chains, ReportOptions::default().max_chains);
        // What `idtrail report --server` sends is read back as it was.
        let sent = request.query_string().unwrap();
        assert!(!sent.contains("user="), "{sent}");
        let back = from_query(&sent).unwrap();
        assert_eq!(back.scope().unwrap().subject, scope.subject);
        assert_eq!(back.from, scope.from);
        assert_eq!(
            (back.format, back.max_rows, back.no_findings),
            (Format::Markdown, 7, true)
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let two = from_query("user=alice&agent=bot").unwrap();
        assert!(two.scope().unwrap_err().to_string().contains("one subject"));
        assert!(
            from_query("").unwrap().scope().is_err(),
            "neither a subject nor a window"
        );
        let time = from_query("user=a&from=yesterday").unwrap_err();
        assert!(time.contains("RFC 3339"), "{time}");
        assert!(from_query("format=pdf").is_err());
        assert!(
            from_query("user=a&colour=red")
                .unwrap_err()
                .contains("colour")
        );
    }
}
