//! The `idtrail` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use idtrail_collector::Config;
use idtrail_collector::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "idtrail",
    version,
    about = "Identity-lineage observability over OpenTelemetry traces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Try idtrail in a minute: run the pipeline on a local directory, send it generated
    /// traces over OTLP, then answer attribution questions, list findings and write a report.
    Demo(idtrail::demo::DemoArgs),
    /// Run the collector: OTLP/gRPC and OTLP/HTTP in, scrubbed spans out as Parquet.
    Serve(ServeArgs),
    /// Generate realistic identity-lineage traces and export them over OTLP to any endpoint.
    Gen(idtrail::workload::GenArgs),
    /// Rebuild the chains and edges tables from the stored spans (backfill, or after the
    /// stitcher changed). Refuses to run while a collector uses the data directory.
    Restitch(idtrail::restitch::RestitchArgs),
    /// Merge small published files into a few large ones per hour partition, as `serve` does
    /// every `compaction.interval`. Safe beside a running collector and concurrent queries.
    Compact(idtrail::compact::CompactArgs),
    /// Run SQL over the stored tables: one statement, a file of them, or an interactive
    /// prompt; locally (read-only, beside a running collector) or against `--server`.
    Query(idtrail::query::QueryArgs),
    /// Findings of the detection rules (OWASP Non-Human Identities Top 10), or the rules.
    Findings(idtrail::findings::FindingsArgs),
    /// An incident report for a credential, user, agent, trace, resource or time window:
    /// one self-contained HTML file (or Markdown, or JSON).
    Report(idtrail::report::ReportArgs),
    /// Export the lineage graph for another tool: `idtrail export bloodhound` writes
    /// BloodHound OpenGraph JSON.
    Export(idtrail::export::ExportArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML config file (see idtrail.example.yaml); every field has a default.
    #[arg(long, short, env = "IDTRAIL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (WAL and tables).
    #[arg(long, env = "IDTRAIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "IDTRAIL_GRPC_ADDRESS")]
    grpc_address: Option<String>,
    /// OTLP/HTTP listen address (also /healthz, /readyz, /metrics).
    #[arg(long, env = "IDTRAIL_HTTP_ADDRESS")]
    http_address: Option<String>,
    /// Fingerprint key file (default: beside the data directory).
    #[arg(long, env = "IDTRAIL_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Override any config field: `--set writer.max_file_age=2s` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        idtrail::load_config(
            self.config.as_deref(),
            &self.set,
            &[
                (
                    "data_dir",
                    self.data_dir.as_ref().map(|p| p.display().to_string()),
                ),
                ("receivers.grpc_address", self.grpc_address.clone()),
                ("receivers.http_address", self.http_address.clone()),
                (
                    "key_file",
                    self.key_file.as_ref().map(|p| p.display().to_string()),
                ),
            ],
        )
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => {
            idtrail_collector::arm_failpoints_from_env();
            let config = args.config()?;
            init_logging(&config);
            runtime.block_on(idtrail::serve::run(config, shutdown_signal()))?;
        }
        Command::Demo(args) => idtrail::demo::run(&args, &runtime)?,
        Command::Gen(args) => runtime.block_on(idtrail::workload::run(args))?,
        Command::Restitch(args) => {
            let config = args.data.load()?;
            init_logging(&config);
            idtrail::restitch::run(&args, &config)?;
        }
        Command::Compact(args) => {
            let config = args.data.load()?;
            init_logging(&config);
            idtrail::compact::run(&args, &config)?;
        }
        Command::Query(args) => std::process::exit(idtrail::query::run(args, &runtime)),
        Command::Findings(args) => std::process::exit(idtrail::findings::run(args, &runtime)),
        Command::Report(args) => idtrail::report::run(&args, &runtime)?,
        Command::Export(args) => std::process::exit(idtrail::export::run(args, &runtime)),
    }
    Ok(())
}
