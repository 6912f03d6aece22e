//! Detection rules: one SQL file per rule, each a query over the tables and views whose rows are
//! findings. The built-in rules are the files of `query/rules/`, compiled in; `query.rules_dirs`
//! adds more, and a file there with a built-in rule's id replaces it.
//!
//! A rule file starts with a YAML header in `--` comments, then the query:
//!
//! ```sql
//! -- id: long_lived_token
//! -- title: Token valid for more than 24 hours
//! -- severity: medium            (critical, high, medium or low)
//! -- owasp_nhi: NHI7             (its OWASP Non-Human Identities Top 10 (2025) item)
//! -- description: Why it matters and what to do.
//! -- per: subject                (optional; `chain` for a rule that judges single chains)
//! SELECT time, subject_kind, subject_id, detail, trace_id, span_id FROM ...
//! ```
//!
//! `per` says what one finding stands for, and so how an incident report picks the findings of
//! its scope without running the rule over the whole store: a `subject` rule judges an
//! identity or workload over all it did, and a report filters it by `subject_id` (a filter on
//! the rule's grouping key, which DataFusion pushes down to the scans); a `chain` rule judges
//! one chain, named by its `trace_id` and `span_id` (the side effect's span), and a report runs
//! it over its copy of the chains in scope, keeping the findings on those chains (ADR 14): such
//! a rule may read `chains`, `chains_latest` and `chains_attributed` for the chain it judges,
//! and configuration, but not other chains. The filter must reach the scans for a report to be
//! fast: write a `subject` rule so that its subject is a grouping key and no part of it reads
//! the whole store regardless (ADR 12).
//!
//! The query answers the columns of [`FINDING_COLUMNS`]. Every rule is planned when the engine
//! starts, so a broken rule file stops start-up with its name rather than failing later.
//! The view `findings` is every rule's answer, with the rule's id, title, severity (and
//! `severity_rank`, 0 = critical, for ordering) and OWASP item in front; the table
//! `detection_rules` lists the rules.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use crate::error::{QueryError, Result};
use crate::sql::literal;

/// The built-in rules, by file name (a unit test checks that every file of `query/rules/` is
/// here).
const BUILTIN: &[(&str, &str)] = &[
    (
        "actor_not_allowed_by_may_act.sql",
        include_str!("../rules/actor_not_allowed_by_may_act.sql"),
    ),
    (
        "credential_shared_by_workloads.sql",
        include_str!("../rules/credential_shared_by_workloads.sql"),
    ),
    (
        "delegation_too_deep.sql",
        include_str!("../rules/delegation_too_deep.sql"),
    ),
    (
        "granted_scope_unused.sql",
        include_str!("../rules/granted_scope_unused.sql"),
    ),
    (
        "human_uses_nhi_credential.sql",
        include_str!("../rules/human_uses_nhi_credential.sql"),
    ),
    (
        "long_lived_token.sql",
        include_str!("../rules/long_lived_token.sql"),
    ),
    (
        "scope_beyond_grant.sql",
        include_str!("../rules/scope_beyond_grant.sql"),
    ),
    (
        "staging_credential_in_production.sql",
        include_str!("../rules/staging_credential_in_production.sql"),
    ),
    (
        "unattributed_agent_write.sql",
        include_str!("../rules/unattributed_agent_write.sql"),
    ),
    (
        "use_after_revocation.sql",
        include_str!("../rules/use_after_revocation.sql"),
    ),
];

/// What a rule's query answers, in this order in the `findings` view.
pub const FINDING_COLUMNS: &[&str] = &[
    "time",
    "subject_kind",
    "subject_id",
    "detail",
    "trace_id",
    "span_id",
];

/// The OWASP Non-Human Identities Top 10 (2025).
pub const OWASP_NHI: [(&str, &str); 10] = [
    ("NHI1", "Improper Offboarding"),
    ("NHI2", "Secret Leakage"),
    ("NHI3", "Vulnerable Third-Party NHI"),
    ("NHI4", "Insecure Authentication"),
    ("NHI5", "Overprivileged NHI"),
    ("NHI6", "Insecure Cloud Deployment Configurations"),
    ("NHI7", "Long-Lived Secrets"),
    ("NHI8", "Environment Isolation"),
    ("NHI9", "NHI Reuse"),
    ("NHI10", "Human Use of NHI"),
];

/// How bad a finding is, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    /// 0 for critical … 3 for low: `ORDER BY severity_rank` puts the worst first.
    pub fn rank(self) -> i32 {
        self as i32
    }
}

/// What one finding of a rule stands for (the header's `per`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    /// An identity or workload, judged over all it did: matched to an incident by
    /// `subject_kind`/`subject_id`.
    #[default]
    Subject,
    /// One chain: matched to an incident by its `trace_id` and `span_id` (the effect's).
    Chain,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Subject => "subject",
            Per::Chain => "chain",
        }
    }
}

/// One detection rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    /// `NHI1` … `NHI10`.
    pub owasp_nhi: String,
    pub description: String,
    pub per: Per,
    /// The query, without its header.
    pub sql: String,
    /// Where it came from: `built-in` or the file's path.
    pub origin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    id: String,
    title: String,
    severity: Severity,
    owasp_nhi: String,
    description: String,
    #[serde(default)]
    per: Per,
}

impl Rule {
    /// Parses a rule file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Rule> {
        let invalid = |why: String| QueryError::BadRequest(format!("rule {origin}: {why}"));
        let mut header = String::new();
        let mut body = Vec::new();
        let mut in_header = true;
        for line in text.lines() {
            let trimmed = line.trim_start();
            if in_header && let Some(comment) = trimmed.strip_prefix("--") {
                header.push_str(comment.strip_prefix(' ').unwrap_or(comment));
                header.push('\n');
                continue;
            }
            if in_header && trimmed.is_empty() {
                continue;
            }
            in_header = false;
            body.push(line);
        }
        let header: Header = serde_saphyr::from_str(&header)
            .map_err(|e| invalid(format!("header (YAML in leading `--` comments): {e}")))?;
        if header.id.is_empty()
            || !header
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(format!(
                "id {:?} must be lowercase letters, digits and _",
                header.id
            )));
        }
        if !OWASP_NHI.iter().any(|(item, _)| *item == header.owasp_nhi) {
            return Err(invalid(format!(
                "owasp_nhi {:?} is not one of NHI1 … NHI10",
                header.owasp_nhi
            )));
        }
        let sql = body.join("\n").trim().trim_end_matches(';').to_string();
        if sql.is_empty() {
            return Err(invalid("no query after the header".into()));
        }
        Ok(Rule {
            id: header.id,
            title: header.title.trim().to_string(),
            severity: header.severity,
            owasp_nhi: header.owasp_nhi,
            description: header.description.trim().to_string(),
            per: header.per,
            sql,
            origin: origin.to_string(),
        })
    }

    /// The rule's findings as the `findings` view holds them (the view is the `UNION ALL` of
    /// these): the rule's metadata in front of its own columns. A report queries one rule
    /// through this rather than through the view, whose plan of every rule took longer to
    /// make than a scoped rule takes to run.
    pub fn findings_sql(&self) -> String {
        // Text columns as plain Utf8 whatever the rule's functions return (concat gives
        // Utf8View): Grafana's Flight SQL datasource reads Utf8View as nulls.
        let columns = FINDING_COLUMNS
            .iter()
            .map(|c| match *c {
                "time" => c.to_string(),
                _ => format!("arrow_cast({c}, 'Utf8') AS {c}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {id} AS rule_id, {title} AS title, {severity} AS severity, \
             CAST({rank} AS INT) AS severity_rank, {nhi} AS owasp_nhi, {columns} \
             FROM (\n{sql}\n) AS {alias}",
            rank = self.severity.rank(),
            id = literal(&self.id),
            title = literal(&self.title),
            severity = literal(self.severity.as_str()),
            nhi = literal(&self.owasp_nhi),
            sql = self.sql,
            alias = format_args!("rule_{}", self.id),
        )
    }

    /// The OWASP item's name (`Long-Lived Secrets` for `NHI7`).
    pub fn owasp_title(&self) -> &'static str {
        OWASP_NHI
            .iter()
            .find(|(item, _)| *item == self.owasp_nhi)
            .map(|(_, title)| *title)
            .unwrap_or("")
    }
}

/// The built-in rules, then those of `dirs` (`*.sql`, in name order), a later rule replacing an
/// earlier one with the same id. Sorted by severity, then id.
pub fn load_rules(dirs: &[PathBuf]) -> Result<Vec<Rule>> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut add = |rule: Rule| match rules.iter_mut().find(|r| r.id == rule.id) {
        Some(existing) => *existing = rule,
        None => rules.push(rule),
    };
    for (name, text) in BUILTIN {
        add(Rule::parse(text, &format!("built-in {name}"))?);
    }
    for dir in dirs {
        for path in sql_files(dir)? {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| QueryError::storage(format!("reading rule {}", path.display()), e))?;
            add(Rule::parse(&text, &path.display().to_string())?);
        }
    }
    rules.sort_by(|a, b| (a.severity, &a.id).cmp(&(b.severity, &b.id)));
    Ok(rules)
}

fn sql_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        QueryError::storage(format!("reading rules directory {}", dir.display()), e)
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| {
                QueryError::storage(format!("reading rules directory {}", dir.display()), e)
            })?
            .path();
        if path.extension().is_some_and(|e| e == "sql") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Plans every rule, checks its columns, and defines the view `findings` over all of them.
pub async fn register(ctx: &SessionContext, rules: &[Rule]) -> Result<()> {
    let mut parts = Vec::new();
    for rule in rules {
        check_columns(ctx, rule).await?;
        parts.push(rule.findings_sql());
    }
    if parts.is_empty() {
        return Err(QueryError::BadRequest(
            "no detection rules to define findings".into(),
        ));
    }
    let body = parts.join("\nUNION ALL\n");
    register_rules_table(ctx, rules)?;
    let defining = |e| QueryError::storage("defining view findings", e);
    ctx.sql(&format!("CREATE VIEW findings AS {body}"))
        .await
        .map_err(defining)?
        .collect()
        .await
        .map_err(defining)?;
    Ok(())
}

/// `detection_rules`: the rules themselves (`idtrail findings --list`, the findings dashboard).
fn register_rules_table(ctx: &SessionContext, rules: &[Rule]) -> Result<()> {
    let text = |f: &dyn Fn(&Rule) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rules.iter().map(f)))
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("id", text(&|r| &r.id)),
        ("title", text(&|r| &r.title)),
        ("severity", text(&|r| r.severity.as_str())),
        ("owasp_nhi", text(&|r| &r.owasp_nhi)),
        ("owasp_title", text(&|r| r.owasp_title())),
        ("description", text(&|r| &r.description)),
        ("per", text(&|r| r.per.as_str())),
        ("origin", text(&|r| &r.origin)),
    ];
    let mut columns = columns;
    columns.insert(
        3,
        (
            "severity_rank",
            Arc::new(Int32Array::from_iter_values(
                rules.iter().map(|r| r.severity.rank()),
            )),
        ),
    );
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
            .collect::<Vec<_>>(),
    ));
    let registering = |e: &dyn std::fmt::Display| {
        QueryError::storage("registering table detection_rules", e.to_string())
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, array)| array).collect(),
    )
    .map_err(|e| registering(&e))?;
    let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(|e| registering(&e))?;
    ctx.register_table("detection_rules", Arc::new(table))
        .map_err(|e| registering(&e))?;
    Ok(())
}

/// A rule must answer the finding columns with their types: a UTC nanosecond `time` and text
/// for the rest.
async fn check_columns(ctx: &SessionContext, rule: &Rule) -> Result<()> {
    let invalid = |why: String| QueryError::BadRequest(format!("rule {}: {why}", rule.origin));
    // Read-only like every user query: a rule file cannot create, drop or change anything.
    let frame = ctx
        .sql_with_options(&rule.sql, crate::engine::read_only())
        .await
        .map_err(|e| invalid(format!("does not plan: {e}")))?;
    // Type checking happens in the analyzer, not in `sql`: run it now so a rule that mixes
    // types fails here, by name, rather than inside the view of all rules.
    frame
        .clone()
        .into_optimized_plan()
        .map_err(|e| invalid(format!("does not type-check: {e}")))?;
    let schema = frame.schema().as_arrow().clone();
    for column in FINDING_COLUMNS {
        let field = schema
            .field_with_name(column)
            .map_err(|_| invalid(format!("answers no column {column}")))?;
        let (fits, expected) = if *column == "time" {
            (
                matches!(field.data_type(), DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) if tz.as_ref() == "UTC" || tz.as_ref() == "+00:00"),
                "a UTC nanosecond timestamp",
            )
        } else {
            (
                matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
                ),
                "text",
            )
        };
        if !fits {
            return Err(invalid(format!(
                "column {column} is {}, not {expected}",
                field.data_type()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_file_is_built_in_and_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let on_disk: Vec<String> = sql_files(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let built_in: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, built_in, "query/rules/ and BUILTIN differ");
        let rules = load_rules(&[]).unwrap();
        assert_eq!(rules.len(), BUILTIN.len());
        for rule in &rules {
            assert!(
                format!("{}.sql", rule.id) == rule.origin.trim_start_matches("built-in "),
                "{} is in a file of another name",
                rule.id
            );
            assert!(!rule.owasp_title().is_empty());
        }
        // Most severe first.
        assert!(rules.windows(2).all(|w| w[0].severity <= w[1].severity));
        // The rules that judge one chain say so; a report matches them by trace (ADR 12).
        let per_chain: Vec<&str> = rules
            .iter()
            .filter(|r| r.per == Per::Chain)
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(
            per_chain,
            ["unattributed_agent_write", "delegation_too_deep"],
            "rules judging one chain"
        );
    }

    #[test]
    fn header_errors_name_the_file() {
        let err = Rule::parse("-- id: x\nSELECT 1", "r.sql").unwrap_err();
        assert!(err.to_string().contains("r.sql"), "{err}");
        let err = Rule::parse(
            "-- id: Bad-Id\n-- title: t\n-- severity: low\n-- owasp_nhi: NHI1\n-- description: d\nSELECT 1",
            "r.sql",
        )
        .unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
        let err = Rule::parse(
            "-- id: ok\n-- title: t\n-- severity: urgent\n-- owasp_nhi: NHI1\n-- description: d\nSELECT 1",
            "r.sql",
        )
        .unwrap_err();
        assert!(err.to_string().contains("header"), "{err}");
        let err = Rule::parse(
            "-- id: ok\n-- title: t\n-- severity: low\n-- owasp_nhi: NHI11\n-- description: d\nSELECT 1",
            "r.sql",
        )
        .unwrap_err();
        assert!(err.to_string().contains("NHI11"), "{err}");
        let err = Rule::parse(
            "-- id: ok\n-- title: t\n-- severity: low\n-- owasp_nhi: NHI1\n-- description: d\n\
             -- per: span\nSELECT 1",
            "r.sql",
        )
        .unwrap_err();
        assert!(err.to_string().contains("per"), "{err}");
    }

    #[test]
    fn a_rule_directory_replaces_a_built_in_rule_by_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.sql"),
            "-- id: long_lived_token\n-- title: Token valid for more than 8 hours\n\
             -- severity: high\n-- owasp_nhi: NHI7\n-- description: stricter\nSELECT 1;\n",
        )
        .unwrap();
        let rules = load_rules(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(rules.len(), BUILTIN.len());
        let rule = rules.iter().find(|r| r.id == "long_lived_token").unwrap();
        assert_eq!(rule.title, "Token valid for more than 8 hours");
        assert_eq!(rule.sql, "SELECT 1");
        assert!(rule.origin.ends_with("mine.sql"));
    }

    #[tokio::test]
    async fn a_rule_answering_the_wrong_columns_is_refused_by_name() {
        let ctx = SessionContext::new();
        let rule = Rule::parse(
            "-- id: bad\n-- title: t\n-- severity: low\n-- owasp_nhi: NHI1\n-- description: d\n\
             SELECT 'x' AS subject_kind",
            "bad.sql",
        )
        .unwrap();
        let err = register(&ctx, &[rule]).await.unwrap_err().to_string();
        assert!(err.contains("bad.sql") && err.contains("time"), "{err}");
    }
}
