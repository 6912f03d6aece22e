//! `idtrail report`: an incident report for one credential, user, agent, trace or resource, or
//! a time window, as one self-contained HTML file (or Markdown, or JSON).

use std::path::PathBuf;

use std::io::Write;

use anyhow::Context;
use chrono::{DateTime, Utc};
use idtrail_query::QueryEngine;
use idtrail_report::{Report, ReportOptions, Scope, Subject};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  idtrail report --credential 3f9a…  (a credential_fp, as queries show it)
  idtrail report --user alice@example.com --from 2026-11-22T00:00:00Z --output alice.html
  idtrail report --resource db:warehouse.events --format markdown --output incident.md
  idtrail report --from 2026-11-22T09:00:00Z --to 2026-11-22T10:00:00Z --format json")]
#[command(group(clap::ArgGroup::new("subject").args(["credential", "user", "agent", "trace", "resource"])))]
pub struct ReportArgs {
    /// A credential, by its fingerprint (`credential_fp`).
    #[arg(long, value_name = "FP")]
    pub credential: Option<String>,
    /// A human, by user id.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,
    /// An agent, by agent id.
    #[arg(long, value_name = "ID")]
    pub agent: Option<String>,
    /// A trace (32 hex), with the traces linking to it.
    #[arg(long, value_name = "TRACE_ID")]
    pub trace: Option<String>,
    /// A resource: `db:shop.orders`, or the bare target.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Only side effects at or after this time (RFC 3339).
    #[arg(long, value_parser = idtrail_query::sql::parse_rfc3339)]
    pub from: Option<DateTime<Utc>>,
    /// Only side effects before this time (RFC 3339).
    #[arg(long, value_parser = idtrail_query::sql::parse_rfc3339)]
    pub to: Option<DateTime<Utc>>,
    /// Document format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
    /// Where to write it (`-` for standard output); default `idtrail-report.<html|md|json>`.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Rows kept per table.
    #[arg(long, default_value_t = 500)]
    pub max_rows: usize,
    /// Distinct chains drawn.
    #[arg(long, default_value_t = 25)]
    pub max_chains: usize,
    /// Leave out the findings section (every detection rule, each filtered to the identities
    /// and traces in scope).
    #[arg(long)]
    pub no_findings: bool,
    #[command(flatten)]
    pub data: crate::DataArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Html,
    Markdown,
    Json,
}

impl ReportArgs {
    pub fn scope(&self) -> anyhow::Result<Scope> {
        let subject = if let Some(fp) = &self.credential {
            Subject::Credential(fp.trim().to_string())
        } else if let Some(user) = &self.user {
            Subject::User(user.clone())
        } else if let Some(agent) = &self.agent {
            Subject::Agent(agent.clone())
        } else if let Some(trace) = &self.trace {
            Subject::Trace(trace.trim().to_ascii_lowercase())
        } else if let Some(resource) = &self.resource {
            Subject::Resource(resource.clone())
        } else {
            Subject::Window
        };
        Ok(Scope::new(subject, self.from, self.to)?)
    }

    fn options(&self) -> ReportOptions {
        ReportOptions {
            max_rows: self.max_rows.max(1),
            max_chains: self.max_chains,
            findings: !self.no_findings,
            ..ReportOptions::default()
        }
    }
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: ReportFormat) -> anyhow::Result<String> {
    Ok(match format {
        ReportFormat::Html => idtrail_report::render::html(report),
        ReportFormat::Markdown => idtrail_report::render::markdown(report),
        ReportFormat::Json => {
            serde_json::to_string_pretty(report).context("serialising the report")? + "\n"
        }
    })
}

/// Builds the report of `args` over an open engine.
pub async fn build(engine: &QueryEngine, args: &ReportArgs) -> anyhow::Result<Report> {
    let scope = args.scope()?;
    Ok(idtrail_report::build(engine, &scope, &args.options()).await?)
}

pub fn run(args: &ReportArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    crate::init_cli_logging();
    let scope = args.scope()?;
    let report = runtime.block_on(async {
        let engine = args.data.open_engine().await?;
        anyhow::Ok(idtrail_report::build(&engine, &scope, &args.options()).await?)
    })?;
    let text = render(&report, args.format)?;
    let path = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(match args.format {
            ReportFormat::Html => "idtrail-report.html",
            ReportFormat::Markdown => "idtrail-report.md",
            ReportFormat::Json => "idtrail-report.json",
        })
    });
    if path.as_os_str() == "-" {
        print!("{text}");
        return Ok(());
    }
    runtime
        .block_on(crate::write_replacing(&path, |mut file| async move {
            file.write_all(text.as_bytes())?;
            Ok(())
        }))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} ({}: {} side effects, {} ms)",
        path.display(),
        report.title,
        report
            .summary
            .first()
            .map(|f| idtrail_report::table::value_text(&f.value))
            .unwrap_or_default(),
        report.elapsed_ms
    );
    Ok(())
}
