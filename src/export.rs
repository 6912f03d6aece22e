//! `idtrail export`: the lineage graph in another tool's format, read from the data directory
//! through the same read-only engine as `idtrail query` (so it runs beside a collector).
//!
//! - `idtrail export bloodhound`: a BloodHound OpenGraph JSON file
//!   ([`idtrail_query::export::bloodhound`]), on standard output or `--output FILE`.
//!
//! Errors print as `error: <message>` and exit 1; a one-line summary goes to standard error.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use idtrail_collector::Config;
use idtrail_query::export::{TimeWindow, bloodhound};
use idtrail_query::{QueryEngine, QueryOptions};

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
    /// YAML config file, the collector's: its data_dir and query section (owners and grants
    /// files, memory limit, timeout).
    #[arg(long, short, env = "IDTRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (default: the config's, else ./idtrail-data).
    #[arg(long, env = "IDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Write the JSON to FILE (replaced whole once complete) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only edges last seen at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only edges first seen before this time (RFC 3339, exclusive).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
    /// Override any config field: `--set query.timeout=10m` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

impl BloodhoundArgs {
    pub fn config(&self) -> anyhow::Result<Config> {
        crate::load_data_dir_config(self.config.as_deref(), &self.set, self.data_dir.as_deref())
    }

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

/// An RFC 3339 time as ns since the epoch.
fn parse_time(s: &str) -> Result<i64, String> {
    let time = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-22T10:00:00Z)"))?;
    time.timestamp_nanos_opt()
        .ok_or_else(|| "out of the range of ns timestamps (1677–2262)".to_string())
}

/// Runs `idtrail export`; returns the process exit code (errors are printed here).
pub fn run(args: ExportArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    init_logging();
    let result = match &args.format {
        ExportFormat::Bloodhound(args) => run_bloodhound(args, runtime),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Warnings only (`RUST_LOG` to see more), on standard error: the export may own standard output.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

fn run_bloodhound(args: &BloodhoundArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let window = args.window()?;
    let config = args.config()?;
    if !config.data_dir.is_dir() {
        bail!(
            "no data directory at {}: pass --data-dir, or --config with the collector's config",
            config.data_dir.display()
        );
    }
    let options = QueryOptions::from_config(config.data_dir.clone(), &config.query);
    let summary = runtime.block_on(async {
        let engine = QueryEngine::new(options)
            .await
            .with_context(|| format!("opening the tables in {}", config.data_dir.display()))?;
        match &args.output {
            None => {
                let stdout = io::stdout();
                Ok(bloodhound::export(&engine, window, stdout.lock()).await?)
            }
            Some(path) => write_replacing(path, |file| async move {
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

/// Writes `path` through a hidden temporary file beside it, renamed over `path` only once
/// `write` succeeded: a failed or interrupted export leaves no truncated JSON behind.
async fn write_replacing<T, F, Fut>(path: &Path, write: F) -> anyhow::Result<T>
where
    F: FnOnce(File) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let file = File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
    let written = match file.try_clone() {
        Ok(handle) => write(handle).await,
        Err(e) => Err(e.into()),
    };
    let finished = written.and_then(|value| {
        let mut file = file;
        file.flush()?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        Ok(value)
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_any_offset() {
        assert_eq!(
            parse_time("2026-11-22T12:00:00+02:00"),
            Ok(1_795_341_600_000_000_000)
        );
        assert!(parse_time("last week").is_err());
    }
}
