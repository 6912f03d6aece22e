//! `idtrail report`: an incident report for one credential, user, agent, trace or resource, or
//! a time window, as one self-contained HTML file (or Markdown, or JSON).

use std::path::PathBuf;

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use idtrail_query::QueryEngine;
use idtrail_report::{Report, ReportRequest};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  idtrail report --credential 3f9a…  (a credential_fp, as queries show it)
  idtrail report --user alice@example.com --from 2026-11-22T00:00:00Z --output alice.html
  idtrail report --resource db:warehouse.events --format markdown --output incident.md
  idtrail report --from 2026-11-22T09:00:00Z --to 2026-11-22T10:00:00Z --format json

A running `idtrail serve` builds the same report from its warm caches (the lineage graph above all):
  idtrail report --server http://127.0.0.1:4318 --credential 3f9a…
  curl 'http://127.0.0.1:4318/v1/report?credential=3f9a…&format=markdown'")]
pub struct ReportArgs {
    #[command(flatten)]
    pub request: ReportRequest,
    /// Where to write it (`-` for standard output); default `idtrail-report.<html|md|json>`.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub remote: crate::remote::ServerArgs,
    #[command(flatten)]
    pub data: crate::DataArgs,
}

const REPORT_ROUTE: &str = "/v1/report";

/// Builds the report of `args` over an open engine.
pub async fn build(engine: &QueryEngine, args: &ReportArgs) -> anyhow::Result<Report> {
    let scope = args.request.scope()?;
    Ok(idtrail_report::build(engine, &scope, &args.request.options()).await?)
}

pub fn run(args: &ReportArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    crate::init_cli_logging();
    // The scope is checked before the data directory is opened or the server asked.
    args.request.scope()?;
    let started = Instant::now();
    let (text, made) = match args.remote.remote()? {
        Some(remote) => {
            let query = args.request.query_string()?;
            let answer = runtime.block_on(remote.get(REPORT_ROUTE, &query))?;
            let text = String::from_utf8(answer.body).with_context(|| {
                format!(
                    "{} answered with text that is not UTF-8",
                    remote.url(REPORT_ROUTE)
                )
            })?;
            (text, format!("by {}", remote.url(REPORT_ROUTE)))
        }
        None => {
            let report = runtime.block_on(async {
                let engine = args.data.open_engine().await?;
                build(&engine, args).await
            })?;
            let text = idtrail_report::render::document(&report, args.request.format)?;
            let made = format!(
                "{}: {} side effects",
                report.title,
                report
                    .summary
                    .first()
                    .map(|f| idtrail_report::table::value_text(&f.value))
                    .unwrap_or_default()
            );
            (text, made)
        }
    };
    let path = args.output.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "idtrail-report.{}",
            args.request.format.extension()
        ))
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
        "wrote {} ({made}, {} ms)",
        path.display(),
        started.elapsed().as_millis()
    );
    Ok(())
}
