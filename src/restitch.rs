//! `idtrail restitch`: the command line around
//! [`idtrail_collector::stitch::rebuild::rebuild`]: flags, a progress bar on stderr, a summary
//! for people on stderr and one for programs (JSON) on stdout.

use std::time::Duration;

use anyhow::{Context, bail};
use idtrail_collector::Config;
use idtrail_collector::stitch::rebuild::{self, Progress, Summary, TimeRange};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(clap::Args)]
pub struct RestitchArgs {
    /// The data directory and config (restitch writes under the config's `writer_id` with its
    /// `writer` and `stitcher` settings).
    #[command(flatten)]
    pub data: crate::DataArgs,
    /// Rebuild the hour partitions from the one holding this time (RFC 3339, e.g.
    /// 2026-11-22T10:00:00Z); earlier ones are left as they are.
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub from: Option<i64>,
    /// Rebuild the hour partitions up to this time (RFC 3339, exclusive: 11:00:00Z stops after
    /// hour 10); later ones are left as they are.
    #[arg(long, value_parser = crate::parse_time_ns)]
    pub to: Option<i64>,
    /// No progress bar and no summary on stderr (the JSON summary still goes to stdout).
    #[arg(long, short)]
    pub quiet: bool,
}

impl RestitchArgs {
    /// The `[from, to)` range, when either end is given.
    pub fn range(&self) -> anyhow::Result<Option<TimeRange>> {
        if self.from.is_none() && self.to.is_none() {
            return Ok(None);
        }
        let range = TimeRange {
            start: self.from.unwrap_or(i64::MIN),
            end: self.to.unwrap_or(i64::MAX),
        };
        if range.start >= range.end {
            bail!("--from must be before --to");
        }
        Ok(Some(range))
    }
}

/// Runs the rebuild, then prints its summary.
pub fn run(args: &RestitchArgs, config: &Config) -> anyhow::Result<()> {
    let range = args.range()?;
    let mut bar = if args.quiet {
        Bar::hidden()
    } else {
        Bar::stderr()
    };
    let result = rebuild::rebuild(config, range, &mut bar);
    bar.bar.finish_and_clear();
    let summary = result.with_context(|| {
        format!(
            "restitching {} (nothing of a partition is removed before its replacement is written)",
            config.data_dir.display()
        )
    })?;
    crate::print_summary(args.quiet, &human(&summary), &summary)
}

/// One line for people.
pub fn human(s: &Summary) -> String {
    let mut line = format!(
        "restitched {} partition{}: {} spans from {} file{} ({}) into {} traces, {} chains, {} edges; \
         {} file{} written, {} replaced, in {:.1} s",
        s.partitions,
        plural(s.partitions as u64),
        s.spans_read,
        s.files_read,
        plural(s.files_read as u64),
        indicatif::HumanBytes(s.bytes_read),
        s.traces,
        s.chains,
        s.edges,
        s.files_written,
        plural(s.files_written as u64),
        s.files_removed,
        Duration::from_millis(s.elapsed_ms).as_secs_f64(),
    );
    if s.spans_skipped > 0 {
        line += &format!("; {} malformed spans skipped", s.spans_skipped);
    }
    if s.traces_split > 0 {
        line += &format!(
            "; {} traces stitched early to stay within stitcher.max_buffer_bytes",
            s.traces_split
        );
    }
    line
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The progress bar: bytes of spans read, with files, spans and traces alongside.
struct Bar {
    bar: ProgressBar,
    files: usize,
}

impl Bar {
    fn stderr() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar { bar, files: 0 }
    }

    fn hidden() -> Bar {
        Bar {
            bar: ProgressBar::hidden(),
            files: 0,
        }
    }
}

impl Progress for Bar {
    fn planned(&mut self, files: usize, bytes: u64) {
        self.files = files;
        self.bar.set_length(bytes);
    }

    fn advanced(&mut self, s: &Summary) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_position(s.bytes_read);
        self.bar.set_message(format!(
            "files {}/{} · spans {} · traces {} · chains {} · edges {}",
            s.files_read, self.files, s.spans_read, s.traces, s.chains, s.edges
        ));
    }
}
