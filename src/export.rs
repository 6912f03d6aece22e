//! `idtrail export`: the lineage graph in another tool's format, read from the data directory
//! through the same read-only engine as `idtrail query` (so it runs beside a collector).
//!
//! - `idtrail export bloodhound`: a BloodHound OpenGraph JSON file
//!   ([`idtrail_query::export::bloodhound`]), on standard output or `--output FILE`.
//!
//! Errors print as `error: <message>` and exit 1; a one-line summary goes to standard error.

use std::io;
use std::path::PathBuf;

use anyhow::{Context, bail};
use idtrail_query::export::{TimeWindow, bloodhound};

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub format: ExportFormat,
}

#[derive(clap::Subcommand)]
pub enum ExportFormat {
    /// The lineage graph (observed edges, declared owners and grants) as BloodHound OpenGraph
    /// JSON, to upload in BloodHound CE or Enterprise (File Ingest).
    #[command(after_help = "Examples:
  idtrail export bloodhound --output idtrail-opengraph.json
  idtrail export bloodhound --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z > nov.json")]
    Bloodhound(BloodhoundArgs),
}

#[derive(clap::Args)]
pub struct BloodhoundArgs {
    #[command(flatten)]
    pub data: crate::DataArgs,
    /// Write the JSON to FILE (replaced whole once complete) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only edges last seen at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub since: Option<i64>,
    /// Only edges first seen before this time (RFC 3339, exclusive).
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub until: Option<i64>,
}

impl BloodhoundArgs {
    pub fn window(&self) -> anyhow::Result<TimeWindow> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            bail!("--since must be before --until");
        }
        Ok(TimeWindow {
            since: self.since,
            until: self.until,
        })
    }
}

/// Runs `idtrail export`; returns the process exit code (errors are printed here).
pub fn run(args: ExportArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    crate::init_cli_logging();
    crate::exit_code(match &args.format {
        ExportFormat::Bloodhound(args) => run_bloodhound(args, runtime),
    })
}

fn run_bloodhound(args: &BloodhoundArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let window = args.window()?;
    let summary = runtime.block_on(async {
        let engine = args.data.open_engine().await?;
        match &args.output {
            None => {
                let stdout = io::stdout();
                Ok(bloodhound::export(&engine, window, stdout.lock()).await?)
            }
            Some(path) => crate::write_replacing(path, |file| async move {
                Ok(bloodhound::export(&engine, window, file).await?)
            })
            .await
            .with_context(|| format!("writing {}", path.display())),
        }
    })?;
    let mut line = format!(
        "exported {} nodes and {} edges",
        summary.nodes, summary.edges
    );
    if let Some(path) = &args.output {
        line += &format!(" to {}", path.display());
    }
    if summary.skipped_edges > 0 {
        line += &format!(
            "; {} edges of kinds this version does not know left out",
            summary.skipped_edges
        );
    }
    if summary.skipped_declared > 0 {
        line += &format!(
            "; {} owner or grant rows naming an unknown kind left out",
            summary.skipped_declared
        );
    }
    eprintln!("{line}");
    Ok(())
}
