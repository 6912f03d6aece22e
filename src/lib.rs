//! Library side of the `idtrail` binary: the parts of the command line that are more than
//! wiring. The pipeline itself lives in the workspace crates (`idtrail-collector`, …).

pub mod compact;
pub mod demo;
pub mod export;
pub mod findings;
pub mod query;
pub mod remote;
pub mod report;
pub mod restitch;
pub mod serve;
pub mod workload;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use idtrail_collector::Config;
use idtrail_query::{QueryEngine, QueryOptions};

/// The config of a subcommand: the YAML file, then `IDTRAIL__…` variables, then `--set
/// PATH=VALUE` items, then the subcommand's own flags (`(config path, value)`, unset ones
/// skipped), later ones winning.
pub fn load_config(
    file: Option<&Path>,
    set: &[String],
    flags: &[(&str, Option<String>)],
) -> anyhow::Result<Config> {
    let mut overrides = Vec::new();
    for item in set {
        let (path, value) = item
            .split_once('=')
            .with_context(|| format!("--set {item:?}: expected PATH=VALUE"))?;
        overrides.push((path.trim().to_string(), value.to_string()));
    }
    for (path, value) in flags {
        if let Some(value) = value {
            overrides.push((path.to_string(), value.clone()));
        }
    }
    Ok(Config::load(file, std::env::vars(), &overrides)?)
}

/// The config of an offline subcommand (`restitch`, `query`): the file, `--set` items and its
/// `--data-dir` flag.
pub fn load_data_dir_config(
    file: Option<&Path>,
    set: &[String],
    data_dir: Option<&Path>,
) -> anyhow::Result<Config> {
    load_config(
        file,
        set,
        &[("data_dir", data_dir.map(|p| p.display().to_string()))],
    )
}

/// Where an offline subcommand (`query`, `findings`, `report`, `export`, `restitch`) finds the
/// tables: the collector's config, its data directory, and overrides.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// YAML config file, the collector's: its data_dir and query section (owners and grants
    /// files, detection rules, memory limit, timeout); restitch also uses its writer settings.
    #[arg(long, short, env = "IDTRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (default: the config's, else ./idtrail-data).
    #[arg(long, env = "IDTRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Override any config field: `--set query.timeout=5m` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

impl DataArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        load_data_dir_config(self.config.as_deref(), &self.set, self.data_dir.as_deref())
    }

    /// The read-only query engine over the data directory (refused when there is none).
    pub async fn open_engine(&self) -> anyhow::Result<QueryEngine> {
        let config = self.load()?;
        if !idtrail_query::store::is_url(&config.data_dir) && !config.data_dir.is_dir() {
            bail!(
                "no data directory at {}: pass --data-dir, or --config with the collector's config",
                config.data_dir.display()
            );
        }
        QueryEngine::new(QueryOptions::from_config(
            config.data_dir.clone(),
            &config.query,
        ))
        .await
        .with_context(|| format!("opening the tables in {}", config.data_dir.display()))
    }
}

/// How a maintenance command (`restitch`, `compact`) ends: a line for people on stderr unless
/// `quiet`, and its summary as JSON on stdout for programs.
pub fn print_summary(
    quiet: bool,
    for_people: &str,
    summary: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if !quiet {
        eprintln!("{for_people}");
    }
    println!("{}", serde_json::to_string(summary)?);
    Ok(())
}

pub fn parse_time_ns(s: &str) -> Result<i64, String> {
    idtrail_query::sql::parse_rfc3339(s)?
        .timestamp_nanos_opt()
        .ok_or_else(|| "out of the range of ns timestamps (1677–2262)".to_string())
}

/// Logging of the commands whose output is the answer: warnings only (`RUST_LOG` for more),
/// on standard error.
pub fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The exit code of a command's result, printing `error: …` (with its causes) for a failure.
pub fn exit_code(result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Writes `path` through a hidden temporary file beside it, renamed over `path` only once
/// `write` succeeded: a failed or interrupted run leaves no truncated file behind.
pub async fn write_replacing<T, F, Fut>(path: &Path, write: F) -> anyhow::Result<T>
where
    F: FnOnce(std::fs::File) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let file =
        std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
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
            parse_time_ns("2026-11-22T12:00:00+02:00"),
            Ok(1_795_341_600_000_000_000)
        );
        assert!(parse_time_ns("last week").is_err());
    }
}
