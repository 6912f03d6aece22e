//! `idtrail query`: SQL over the stored tables from the command line.
//!
//! - `idtrail query "SQL"` runs the statement(s) given; `-f FILE`, or SQL piped into standard
//!   input, runs a file of statements; with neither, and standard input a terminal, a prompt
//!   starts (multi-line statements ended by `;`, history, `\` commands).
//! - Locally (the default) it reads the data directory itself, through the same
//!   [`QueryEngine`] as `idtrail serve`: read-only, so it runs beside a collector on the same
//!   directory without taking its lock. With `--server URL` it asks a running collector's
//!   `POST /v1/query` for an Arrow IPC stream instead.
//! - Answers print as a table (the default), CSV, a JSON array, NDJSON or Parquet.
//!
//! Errors print as `error: <message>` and exit 1. The SQL text is never logged nor echoed in
//! an error: a user may paste a token into a query.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use idtrail_query::QueryEngine;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::remote::Remote;

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
const QUERY_ROUTE: &str = "/v1/query";

#[derive(clap::Args)]
#[command(after_help = "Examples:
  idtrail query \"SELECT user_id, count(*) FROM chains GROUP BY 1\"
  idtrail query --param alice 'SELECT * FROM chains WHERE user_id = $1' --format csv
  idtrail query -f report.sql --format parquet --output report.parquet
  idtrail query --server http://127.0.0.1:4318 \"SHOW TABLES\"
  idtrail query                      # interactive prompt")]
pub struct QueryArgs {
    /// SQL to run; several statements separated by `;` run in order. Without it, statements
    /// come from --file or standard input, or a prompt starts when standard input is a terminal.
    #[arg(value_name = "SQL")]
    pub sql: Option<String>,
    /// Run the statements of FILE (`-` for standard input).
    #[arg(long, short, value_name = "FILE", conflicts_with = "sql")]
    pub file: Option<PathBuf>,
    /// Start the prompt even when standard input is not a terminal (lines are read as typed).
    #[arg(long, short, conflicts_with_all = ["sql", "file"])]
    pub interactive: bool,
    /// Bind `$1`, `$2`, … (or `?`) in order (repeatable). A JSON number, `true`, `false` or
    /// `null` binds as that; a JSON string (`'"42"'`) as that text; anything else as the text
    /// given. Locally a parameter the statement compares with text binds as text anyway.
    #[arg(long = "param", short, value_name = "VALUE")]
    pub param: Vec<String>,
    #[command(flatten)]
    pub answer: AnswerArgs,
}

/// Where answers come from and how they print: the part of `idtrail query`'s arguments that
/// `idtrail findings` shares.
#[derive(clap::Args, Clone)]
pub struct AnswerArgs {
    /// How answers print.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write answers to FILE instead of standard output (required for parquet when standard
    /// output is a terminal).
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub remote: crate::remote::ServerArgs,
    #[command(flatten)]
    pub data: crate::DataArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, with the row count and time on standard error.
    Table,
    /// CSV with a header row (lists and structs as their display text).
    Csv,
    /// One JSON array of objects, nulls included.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A zstd-compressed Parquet file (one statement only).
    Parquet,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Parquet => "parquet",
        }
    }
}

/// Runs `idtrail query`; returns the process exit code (errors are printed here).
pub fn run(args: QueryArgs, runtime: &tokio::runtime::Runtime) -> i32 {
    crate::init_cli_logging();
    crate::exit_code(run_inner(&args, runtime))
}

fn run_inner(args: &QueryArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let answer = &args.answer;
    let stdin_is_terminal = io::stdin().is_terminal();
    // Where the statements come from, read before anything starts so that a missing file is
    // reported first.
    let script = match (&args.sql, &args.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(path)) if path.as_os_str() == "-" => Some(read_stdin()?),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, None) if args.interactive || stdin_is_terminal => None,
        (None, None) => Some(read_stdin()?),
    };
    if answer.format == Format::Parquet && script.is_none() {
        bail!("--format parquet writes one file per run: pass the SQL, or -f FILE");
    }
    let backend = runtime.block_on(Backend::open(answer))?;
    let mut output = Output::open(answer)?;
    let mut session = Session {
        backend,
        params: args.param.clone(),
        format: answer.format,
        timing: true,
    };
    match script {
        Some(script) => {
            let result = run_script(&mut session, &script, &mut output, runtime);
            if result.is_err()
                && let Some(path) = &answer.output
            {
                // A failed run leaves no half-written answer behind (a Parquet file without
                // its footer is unreadable anyway).
                drop(output);
                let _ = std::fs::remove_file(path);
            }
            result
        }
        None => repl(&mut session, &mut output, runtime, stdin_is_terminal),
    }
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .context("reading SQL from standard input")?;
    Ok(text)
}

/// Runs every statement of `script` in order, stopping at the first that fails.
fn run_script(
    session: &mut Session,
    script: &str,
    output: &mut Output,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let (mut statements, rest) = split_statements(script);
    if let Some(rest) = rest {
        statements.push(rest);
    }
    if statements.is_empty() {
        bail!("no SQL given: pass it as an argument, with -f FILE, or on standard input");
    }
    if session.format == Format::Parquet && statements.len() > 1 {
        bail!(
            "--format parquet writes the answer of one statement, and {} were given",
            statements.len()
        );
    }
    let several = statements.len() > 1;
    for (i, statement) in statements.iter().enumerate() {
        let result = runtime.block_on(session.run(&statement.sql, output));
        if several {
            result.with_context(|| {
                format!(
                    "statement {} (line {}) of {}",
                    i + 1,
                    statement.line,
                    statements.len()
                )
            })?;
        } else {
            result?;
        }
    }
    output.finish()
}

// ---------------------------------------------------------------------------------------------
// Where the answers come from.

enum Backend {
    Local(QueryEngine),
    Remote(Remote),
}

impl Backend {
    async fn open(args: &AnswerArgs) -> anyhow::Result<Backend> {
        if let Some(remote) = args.remote.remote()? {
            return Ok(Backend::Remote(remote));
        }
        let engine = args.data.open_engine().await?;
        Ok(Backend::Local(engine))
    }

    fn describe(&self) -> String {
        match self {
            Backend::Local(engine) => engine.options().data_dir.display().to_string(),
            Backend::Remote(remote) => remote.url(QUERY_ROUTE),
        }
    }

    /// Runs one statement, handing the answer's schema and then its batches to `sink`.
    async fn run(&self, sql: &str, params: &[String], sink: &mut Sink<'_>) -> anyhow::Result<()> {
        match self {
            Backend::Local(engine) => {
                let prepared = engine.prepare(sql).await?;
                let types = prepared.parameter_types().unwrap_or_default();
                let values = params
                    .iter()
                    .enumerate()
                    .map(|(i, raw)| {
                        let hint = types.get(i).cloned().flatten();
                        idtrail_query::http::scalar_of(&param_value(raw, hint.as_ref()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut stream = engine.execute(prepared, values).await?;
                sink.begin(stream.schema())?;
                while let Some(batch) = stream.next().await {
                    sink.batch(&batch?)?;
                }
                Ok(())
            }
            Backend::Remote(remote) => {
                let params: Vec<Value> = params.iter().map(|p| param_value(p, None)).collect();
                let body = serde_json::json!({ "sql": sql, "params": params });
                let answer = remote.post_json(QUERY_ROUTE, &body, ARROW_STREAM).await?;
                if !answer.content_type.starts_with(ARROW_STREAM) {
                    bail!(
                        "{} did not answer with an Arrow IPC stream (is it an idtrail collector?)",
                        remote.url(QUERY_ROUTE)
                    );
                }
                let reader =
                    arrow::ipc::reader::StreamReader::try_new(io::Cursor::new(answer.body), None)
                        .context("decoding the Arrow IPC answer")?;
                sink.begin(reader.schema())?;
                for batch in reader {
                    sink.batch(&batch.context("decoding the Arrow IPC answer")?)?;
                }
                Ok(())
            }
        }
    }
}

/// A `--param` as the JSON value bound: a JSON number, boolean, null or string as that, any
/// other text as a string. When the statement compares the parameter with text (`hint`), the
/// text given is bound as it is, so `--param 42` matches the user id "42".
pub fn param_value(raw: &str, hint: Option<&DataType>) -> Value {
    let parsed = serde_json::from_str::<Value>(raw.trim()).ok();
    let is_text = hint
        .is_some_and(|t| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View));
    match parsed {
        Some(Value::String(s)) => Value::String(s),
        _ if is_text => Value::String(raw.to_string()),
        Some(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
        _ => Value::String(raw.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// One session: the backend, the parameters, and how answers print.

struct Session {
    backend: Backend,
    params: Vec<String>,
    format: Format,
    timing: bool,
}

impl Session {
    async fn run(&self, sql: &str, output: &mut Output) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut sink = Sink::new(self.format, output.writer())?;
        self.backend.run(sql, &self.params, &mut sink).await?;
        let rows = sink.finish()?;
        output.flush()?;
        if self.format == Format::Table {
            let mut line = format!("{rows} row{}", if rows == 1 { "" } else { "s" });
            if self.timing {
                line += &format!(" in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
            }
            eprintln!("{line}");
        }
        Ok(())
    }
}

/// Standard output or `--output FILE`.
struct Output {
    writer: Box<dyn Write + Send>,
}

impl Output {
    fn open(args: &AnswerArgs) -> anyhow::Result<Output> {
        let writer: Box<dyn Write + Send> = match &args.output {
            Some(path) => Box::new(BufWriter::new(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            )),
            None => {
                if args.format == Format::Parquet && io::stdout().is_terminal() {
                    bail!(
                        "--format parquet is binary: pass --output FILE, or redirect standard output"
                    );
                }
                Box::new(BufWriter::new(io::stdout()))
            }
        };
        Ok(Output { writer })
    }

    fn writer(&mut self) -> &mut (dyn Write + Send) {
        self.writer.as_mut()
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("writing the answer")
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.flush()
    }
}

type Out<'a> = &'a mut (dyn Write + Send);

/// One answer being written in one format.
enum Sink<'a> {
    Table {
        out: Out<'a>,
        schema: Option<SchemaRef>,
        batches: Vec<RecordBatch>,
    },
    Csv {
        writer: arrow::csv::Writer<Out<'a>>,
        schema: Option<SchemaRef>,
        rows: usize,
        wrote: bool,
    },
    Json {
        writer: arrow::json::ArrayWriter<Out<'a>>,
        rows: usize,
    },
    Ndjson {
        writer: arrow::json::LineDelimitedWriter<Out<'a>>,
        rows: usize,
    },
    Parquet {
        out: Option<Out<'a>>,
        writer: Option<ArrowWriter<Out<'a>>>,
        rows: usize,
    },
}

impl<'a> Sink<'a> {
    fn new(format: Format, out: Out<'a>) -> anyhow::Result<Sink<'a>> {
        Ok(match format {
            Format::Table => Sink::Table {
                out,
                schema: None,
                batches: Vec::new(),
            },
            Format::Csv => Sink::Csv {
                writer: arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out),
                schema: None,
                rows: 0,
                wrote: false,
            },
            Format::Json => Sink::Json {
                writer: arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(out),
                rows: 0,
            },
            Format::Ndjson => Sink::Ndjson {
                writer: arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(out),
                rows: 0,
            },
            Format::Parquet => Sink::Parquet {
                out: Some(out),
                writer: None,
                rows: 0,
            },
        })
    }

    fn begin(&mut self, answer: SchemaRef) -> anyhow::Result<()> {
        match self {
            Sink::Table { schema, .. } => *schema = Some(answer),
            Sink::Csv { schema, .. } => *schema = Some(csv_schema(&answer)),
            Sink::Json { .. } | Sink::Ndjson { .. } => {}
            Sink::Parquet { out, writer, .. } => {
                let out = out.take().context("the Parquet answer began twice")?;
                let properties = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                *writer = Some(
                    ArrowWriter::try_new(out, answer, Some(properties))
                        .context("starting the Parquet file")?,
                );
            }
        }
        Ok(())
    }

    fn batch(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let writing = "writing the answer";
        match self {
            Sink::Table { batches, .. } => batches.push(batch.clone()),
            Sink::Csv {
                writer,
                schema,
                rows,
                wrote,
            } => {
                let schema = schema.clone().context("CSV rows before the schema")?;
                writer.write(&csv_batch(&schema, batch)?).context(writing)?;
                *rows += batch.num_rows();
                *wrote = true;
            }
            Sink::Json { writer, rows } => {
                writer.write(batch).context(writing)?;
                *rows += batch.num_rows();
            }
            Sink::Ndjson { writer, rows } => {
                writer.write(batch).context(writing)?;
                *rows += batch.num_rows();
            }
            Sink::Parquet { writer, rows, .. } => {
                writer
                    .as_mut()
                    .context("Parquet rows before the schema")?
                    .write(batch)
                    .context(writing)?;
                *rows += batch.num_rows();
            }
        }
        Ok(())
    }

    /// Ends the answer; returns its row count.
    fn finish(self) -> anyhow::Result<usize> {
        let writing = "writing the answer";
        match self {
            Sink::Table {
                out,
                schema,
                batches,
            } => {
                let rows = batches.iter().map(RecordBatch::num_rows).sum();
                let schema = schema.unwrap_or_else(|| Arc::new(Schema::empty()));
                let table =
                    arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)
                        .context("formatting the table")?;
                writeln!(out, "{table}").context(writing)?;
                Ok(rows)
            }
            Sink::Csv {
                mut writer,
                schema,
                rows,
                wrote,
            } => {
                // The header alone for an empty answer.
                if !wrote && let Some(schema) = schema {
                    writer
                        .write(&RecordBatch::new_empty(schema))
                        .context(writing)?;
                }
                Ok(rows)
            }
            Sink::Json { mut writer, rows } => {
                writer.finish().context(writing)?;
                writer.get_mut().write_all(b"\n").context(writing)?;
                Ok(rows)
            }
            Sink::Ndjson { mut writer, rows } => {
                writer.finish().context(writing)?;
                Ok(rows)
            }
            Sink::Parquet { writer, rows, .. } => {
                if let Some(writer) = writer {
                    writer.close().context("finishing the Parquet file")?;
                }
                Ok(rows)
            }
        }
    }
}

/// CSV has no lists, structs or maps: those columns are written as their display text.
fn needs_text_in_csv(t: &DataType) -> bool {
    t.is_nested() || matches!(t, DataType::Dictionary(..) | DataType::RunEndEncoded(..))
}

fn csv_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if needs_text_in_csv(f.data_type()) {
                Field::new(f.name(), DataType::Utf8, true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn csv_batch(schema: &SchemaRef, batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    if !batch
        .columns()
        .iter()
        .any(|c| needs_text_in_csv(c.data_type()))
    {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default();
    let columns = batch
        .columns()
        .iter()
        .map(|column| -> anyhow::Result<ArrayRef> {
            if !needs_text_in_csv(column.data_type()) {
                return Ok(column.clone());
            }
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)
                .context("formatting a column as CSV text")?;
            let text: StringArray = (0..column.len())
                .map(|i| (!column.is_null(i)).then(|| formatter.value(i).to_string()))
                .collect();
            Ok(Arc::new(text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).context("formatting the answer as CSV")
}

// ---------------------------------------------------------------------------------------------
// Statements.

/// One statement of a script, without its `;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    /// 1-based line of its first character, for error messages (which never quote the SQL).
    pub line: usize,
}

/// Splits `text` at each `;` outside string literals, quoted identifiers, dollar-quoted strings
/// and comments. Returns the complete statements (empty ones and comment-only ones dropped),
/// and what follows the last `;` if it holds more than blanks and comments.
pub fn split_statements(text: &str) -> (Vec<Statement>, Option<Statement>) {
    let (statements, rest, has_content) = scan(text);
    let rest = has_content.then(|| statement_at(text, rest, text.len()));
    (statements, rest)
}

/// The scanner behind [`split_statements`]: the statements, where the unfinished rest starts,
/// and whether that rest holds anything but blanks and comments.
fn scan(text: &str) -> (Vec<Statement>, usize, bool) {
    let b = text.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut content = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // E'…' strings escape with backslashes; standard ones only double the quote.
                let backslashes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_word_byte(b[i - 2]));
                i = skip_quoted(b, i, b'\'', backslashes);
                content = true;
            }
            q @ (b'"' | b'`') => {
                i = skip_quoted(b, i, q, false);
                content = true;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => {
                content = true;
                i = match dollar_tag(b, i) {
                    Some(tag_end) => {
                        let tag = &b[i..tag_end];
                        find(b, tag, tag_end).map_or(b.len(), |p| p + tag.len())
                    }
                    None => i + 1,
                };
            }
            b';' => {
                if content {
                    statements.push(statement_at(text, start, i));
                }
                start = i + 1;
                content = false;
                i += 1;
            }
            c => {
                if !c.is_ascii_whitespace() {
                    content = true;
                }
                i += 1;
            }
        }
    }
    (statements, start, content)
}

fn statement_at(text: &str, start: usize, end: usize) -> Statement {
    let piece = &text[start..end];
    let leading = piece.len() - piece.trim_start().len();
    Statement {
        sql: piece.trim().to_string(),
        line: text[..start + leading].matches('\n').count() + 1,
    }
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// The index after the quoted run starting at `i` (the end of `b` if it never closes).
fn skip_quoted(b: &[u8], i: usize, quote: u8, backslashes: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslashes && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The index after the (possibly nested) block comment starting at `i`.
fn skip_block_comment(b: &[u8], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

/// At a `$` opening a dollar-quoted string (`$$` or `$tag$`; `$1` is a placeholder), the index
/// after the opening tag.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_word_byte(b[i - 1]) {
        return None;
    }
    let mut j = i + 1;
    if b.get(j).is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

// ---------------------------------------------------------------------------------------------
// The prompt.

const HELP: &str = "\
End each statement with ';' (it may span lines). Ctrl-C clears the statement being typed, or
cancels the running query; Ctrl-D or \\q quits.

  \\d              list the tables and views (SHOW TABLES)
  \\d NAME         describe a table or view (DESCRIBE NAME)
  \\format [FMT]   print answers as table, csv, json or ndjson
  \\timing [on|off] show how long each query takes
  \\?              this help
  \\q              quit

Tables: spans, chains, edges, owners, grants; views and lineage functions alongside.";

enum Meta {
    Quit,
    Sql(String),
    Done,
}

/// A `\` command; messages go to standard error.
fn meta(line: &str, session: &mut Session) -> Meta {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let argument = words.next();
    if words.next().is_some() {
        eprintln!("{command}: too many arguments (\\? lists the commands)");
        return Meta::Done;
    }
    match (command, argument) {
        ("\\q" | "\\quit", None) => Meta::Quit,
        ("\\?" | "\\h" | "\\help", None) => {
            eprintln!("{HELP}");
            Meta::Done
        }
        ("\\d", None) => Meta::Sql("SHOW TABLES".into()),
        ("\\d", Some(name)) => Meta::Sql(format!("DESCRIBE {name}")),
        ("\\format", None) => {
            eprintln!("answers print as {}", session.format.name());
            Meta::Done
        }
        ("\\format", Some(name)) => {
            match name {
                "table" => session.format = Format::Table,
                "csv" => session.format = Format::Csv,
                "json" => session.format = Format::Json,
                "ndjson" => session.format = Format::Ndjson,
                _ => {
                    eprintln!("\\format {name}: expected table, csv, json or ndjson");
                    return Meta::Done;
                }
            }
            eprintln!("answers print as {}", session.format.name());
            Meta::Done
        }
        ("\\timing", argument) => {
            session.timing = match argument {
                None => !session.timing,
                Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    eprintln!("\\timing {other}: expected on or off");
                    return Meta::Done;
                }
            };
            eprintln!("timing is {}", if session.timing { "on" } else { "off" });
            Meta::Done
        }
        _ => {
            eprintln!("unknown command {line:?}: \\? lists the commands");
            Meta::Done
        }
    }
}

/// `$XDG_STATE_HOME/idtrail/query_history`, else `~/.idtrail_history`.
fn history_path() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(state) = non_empty("XDG_STATE_HOME") {
        return Some(PathBuf::from(state).join("idtrail").join("query_history"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".idtrail_history"))
}

/// The history file, created private (queries may hold identifiers worth keeping to oneself).
fn prepare_history_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn repl(
    session: &mut Session,
    output: &mut Output,
    runtime: &tokio::runtime::Runtime,
    terminal: bool,
) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;

    let config = rustyline::Config::builder()
        .max_history_size(10_000)
        .context("configuring the prompt")?
        .history_ignore_dups(true)
        .context("configuring the prompt")?
        .history_ignore_space(true)
        .auto_add_history(false)
        .build();
    let mut editor =
        rustyline::DefaultEditor::with_config(config).context("starting the prompt")?;
    let history = history_path();
    if let Some(path) = &history {
        // A missing or unreadable history only means none.
        let _ = editor.load_history(path);
    }
    if terminal {
        eprintln!(
            "idtrail query on {}. End statements with ';', \\? for help, \\q to quit.",
            session.backend.describe()
        );
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.trim().is_empty() {
            "idtrail> "
        } else {
            "      -> "
        };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(anyhow!(e).context("reading the prompt")),
        };
        if buffer.trim().is_empty() && line.trim_start().starts_with('\\') {
            let _ = editor.add_history_entry(line.trim());
            buffer.clear();
            match meta(line.trim(), session) {
                Meta::Quit => break,
                Meta::Done => {}
                Meta::Sql(sql) => run_interactive(session, &sql, output, runtime),
            }
            continue;
        }
        if buffer.trim().is_empty() && matches!(line.trim(), "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        let (statements, rest, _) = scan(&buffer);
        if statements.is_empty() {
            continue;
        }
        let entered = buffer[..rest].trim().to_string();
        let _ = editor.add_history_entry(entered);
        buffer = buffer[rest..].to_string();
        for statement in statements {
            run_interactive(session, &statement.sql, output, runtime);
        }
    }
    if !buffer.trim().is_empty() {
        eprintln!("the unfinished statement was not run (end statements with ';')");
    }
    if let Some(path) = &history {
        let saved = prepare_history_file(path)
            .map_err(ReadlineError::from)
            .and_then(|()| editor.save_history(path));
        if let Err(e) = saved {
            eprintln!(
                "warning: could not save the history in {}: {e}",
                path.display()
            );
        }
    }
    output.finish()
}

/// Runs one statement at the prompt: errors are printed and the prompt goes on; Ctrl-C
/// cancels the query.
fn run_interactive(
    session: &Session,
    sql: &str,
    output: &mut Output,
    runtime: &tokio::runtime::Runtime,
) {
    let result = runtime.block_on(async {
        tokio::select! {
            result = session.run(sql, output) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("cancelled")),
        }
    });
    if let Err(e) = result {
        // The answer may have stopped midway: end its line before the error.
        let _ = output.flush();
        eprintln!("error: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(text: &str) -> (Vec<String>, Option<String>) {
        let (statements, rest) = split_statements(text);
        (
            statements.into_iter().map(|s| s.sql).collect(),
            rest.map(|s| s.sql),
        )
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(
            sqls("SELECT 1; SELECT 'a;b', \"c;d\" -- e;f\n FROM t; /* g; /* h; */ i; */ SELECT 2"),
            (
                vec![
                    "SELECT 1".to_string(),
                    "SELECT 'a;b', \"c;d\" -- e;f\n FROM t".to_string()
                ],
                Some("/* g; /* h; */ i; */ SELECT 2".to_string())
            )
        );
        assert_eq!(
            sqls("SELECT 'it''s; fine', E'\\'; still', $$ x; $$, $tag$ ; $tag$, $1;"),
            (
                vec![
                    "SELECT 'it''s; fine', E'\\'; still', $$ x; $$, $tag$ ; $tag$, $1".to_string()
                ],
                None
            )
        );
        assert_eq!(sqls(" ; -- only a comment\n;\n"), (vec![], None));
        assert_eq!(
            sqls("SELECT 'open; quote"),
            (vec![], Some("SELECT 'open; quote".into()))
        );
    }

    #[test]
    fn statements_know_their_line() {
        let (statements, _) = split_statements("SELECT 1;\n\n  SELECT\n 2;");
        assert_eq!(statements[0].line, 1);
        assert_eq!(statements[1].line, 3);
    }

    #[test]
    fn params_are_json_scalars_or_text() {
        use serde_json::json;
        assert_eq!(param_value("42", None), json!(42));
        assert_eq!(param_value("2.5", None), json!(2.5));
        assert_eq!(param_value("true", None), json!(true));
        assert_eq!(param_value("null", None), Value::Null);
        assert_eq!(param_value("\"42\"", None), json!("42"));
        assert_eq!(param_value("alice", None), json!("alice"));
        assert_eq!(param_value("[1]", None), json!("[1]"));
        assert_eq!(param_value("42", Some(&DataType::Utf8)), json!("42"));
        assert_eq!(param_value("\"x\"", Some(&DataType::Utf8)), json!("x"));
    }
}
