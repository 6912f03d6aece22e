//! `idtrail compact`: one compaction pass over the data directory, on demand
//! ([`idtrail_collector::compact`]); `serve` runs the same pass every `compaction.interval`.
//! It may run beside a collector using the directory: only one compaction runs at a time.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use idtrail_collector::Config;
use idtrail_collector::compact::{self, Summary};

#[derive(clap::Args)]
pub struct CompactArgs {
    /// The data directory and config (compaction merges the files of the config's `writer_id`
    /// with its `writer` settings).
    #[command(flatten)]
    pub data: crate::DataArgs,
    /// Merge files published at least this long ago (overrides `compaction.min_age`; `0s`
    /// merges every file, as for a store filled at once like the benchmark's).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_age: Option<Duration>,
    /// No summary on stderr (the JSON summary still goes to stdout).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs one pass, then prints its summary.
pub fn run(args: &CompactArgs, config: &Config) -> anyhow::Result<()> {
    let mut config = config.clone();
    if let Some(min_age) = args.min_age {
        config.compaction.min_age = min_age;
    }
    let summary = compact::compact(&config, SystemTime::now())
        .with_context(|| format!("compacting {}", config.data_dir.display()))?;
    crate::print_summary(args.quiet, &human(&summary), &summary)
}

/// One line for people.
pub fn human(s: &Summary) -> String {
    let mut line = format!(
        "compacted {} partition(s): {} files merged into {} ({} rows) in {:.1} s",
        s.partitions, s.files_merged, s.files_written, s.rows, s.seconds
    );
    if s.leftovers_deleted > 0 {
        line.push_str(&format!(
            "; {} file(s) already compacted before an interruption deleted",
            s.leftovers_deleted
        ));
    }
    if s.runs_skipped > 0 {
        line.push_str(&format!(
            "; {} run(s) of files left alone (no common sort order or schema)",
            s.runs_skipped
        ));
    }
    line
}
