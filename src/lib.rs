//! Library side of the `idtrail` binary: the parts of the command line that are more than
//! wiring. The pipeline itself lives in the workspace crates (`idtrail-collector`, …).

pub mod demo;
pub mod export;
pub mod findings;
pub mod query;
pub mod report;
pub mod restitch;
pub mod serve;
pub mod workload;

use std::path::Path;

use anyhow::Context;
use idtrail_collector::Config;

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
