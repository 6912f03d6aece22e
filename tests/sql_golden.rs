//! Golden SQL tests: every `tests/sql/*.slt` file (sqllogictest format) runs against one fixed
//! data set, built by sending every scenario under `tests/scenarios/stitch/` and
//! `tests/scenarios/sql/` through a real collector over OTLP/HTTP, with the owners and grants of
//! `tests/sql/owners.yaml` and `tests/sql/grants.csv`.
//!
//! Ids and fingerprints differ between runs (the fingerprint key is new each time), so answers
//! show them by the names the scenarios gave them — `scenario/name` for traces and spans,
//! `fp(scenario/secret)` for credentials — and SQL refers to them as `{{trace:scenario/name}}`,
//! `{{span:scenario/name}}` and `{{fp:scenario/secret}}`.
//!
//! Regenerate the expected answers after an intended change with
//! `IDTRAIL_BLESS=1 cargo test --test sql_golden`, then review the diff.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use common::TestServer;
use common::scenario::{self, Names, name_fingerprints, wait_stitched};
use idtrail_query::{QueryEngine, QueryError, QueryOptions};
use sqllogictest::{DBOutput, DefaultColumnType};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Names of the data set: hex → name for answers, `{{kind:name}}` → hex for SQL.
#[derive(Default)]
struct Symbols {
    to_name: Vec<(String, String)>,
    to_hex: HashMap<String, String>,
}

impl Symbols {
    fn add(&mut self, names: &Names) {
        for (hex, name) in &names.by_hex {
            self.to_name.push((hex.clone(), name.clone()));
            let kind = if name.starts_with("fp(") {
                "fp"
            } else if hex.len() == 32 {
                "trace"
            } else {
                "span"
            };
            let bare = name
                .strip_prefix("fp(")
                .and_then(|n| n.strip_suffix(')'))
                .unwrap_or(name);
            self.to_hex
                .insert(format!("{{{{{kind}:{bare}}}}}"), hex.clone());
        }
    }

    fn substitute(&self, sql: &str) -> String {
        let mut out = sql.to_string();
        while let Some(start) = out.find("{{") {
            let Some(len) = out[start..].find("}}") else {
                break;
            };
            let token = &out[start..start + len + 2];
            let hex = self
                .to_hex
                .get(token)
                .unwrap_or_else(|| panic!("unknown name {token} in golden SQL"));
            out = out.replacen(token, hex, 1);
        }
        out
    }

    fn symbolize(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (hex, name) in &self.to_name {
            if out.contains(hex.as_str()) {
                out = out.replace(hex.as_str(), name);
            }
        }
        out
    }
}

struct DataSet {
    _dir: tempfile::TempDir,
    data_dir: PathBuf,
    symbols: Arc<Symbols>,
}

async fn build_data_set() -> DataSet {
    let server = TestServer::start(&[
        ("stitcher.quiet_window", "300ms"),
        ("writer.max_file_age", "100ms"),
    ])
    .await;
    let mut played = Vec::new();
    for dir in ["tests/scenarios/stitch", "tests/scenarios/sql"] {
        for path in scenario::files(&root().join(dir)) {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("file name")
                .to_string();
            let (scenario, secrets) = scenario::load(
                &path,
                Some("# ---- expected (regenerate with IDTRAIL_BLESS=1) ----"),
            );
            let mut names = Names {
                prefix: format!("{stem}/"),
                ..Names::default()
            };
            scenario::play(&server, &scenario, &mut names, &secrets).await;
            played.push((scenario, names));
        }
    }
    wait_stitched(&server).await;
    let dir = server.stop().await;
    let data_dir = dir.path().join("data");
    let mut symbols = Symbols::default();
    for (scenario, mut names) in played {
        name_fingerprints(&data_dir, &scenario, &mut names);
        symbols.add(&names);
    }
    DataSet {
        _dir: dir,
        data_dir,
        symbols: Arc::new(symbols),
    }
}

/// The engine under test, as sqllogictest sees it.
struct Idtrail {
    engine: QueryEngine,
    symbols: Arc<Symbols>,
}

#[async_trait]
impl sqllogictest::AsyncDB for Idtrail {
    type Error = QueryError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QueryError> {
        let sql = self.symbols.substitute(sql);
        let (schema, batches) = self.engine.sql(&sql, Vec::new()).await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                    DefaultColumnType::FloatingPoint
                }
                DataType::Decimal128(..) | DataType::Decimal256(..) => {
                    DefaultColumnType::FloatingPoint
                }
                _ => DefaultColumnType::Text,
            })
            .collect();
        Ok(DBOutput::Rows {
            types,
            rows: self.rows(&batches),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "idtrail"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

impl Idtrail {
    fn rows(&self, batches: &[RecordBatch]) -> Vec<Vec<String>> {
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in batches {
            let formatters: Vec<ArrayFormatter> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
                .collect();
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| {
                            let text = f.value(row).to_string();
                            if text.is_empty() {
                                "(empty)".to_string()
                            } else {
                                self.symbols.symbolize(&text)
                            }
                        })
                        .collect(),
                );
            }
        }
        rows
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sql_files_answer_as_recorded() {
    let data = build_data_set().await;
    let options = QueryOptions {
        data_dir: data.data_dir.clone(),
        memory_limit_bytes: 256 << 20,
        timeout: std::time::Duration::from_secs(60),
        owners_files: vec![root().join("tests/sql/owners.yaml")],
        grants_files: vec![root().join("tests/sql/grants.csv")],
        rules_dirs: Vec::new(),
    };
    let engine = QueryEngine::new(options).await.expect("engine");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/sql"))
        .expect("tests/sql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files under tests/sql");
    let bless = std::env::var_os("IDTRAIL_BLESS").is_some();
    let mut failures = Vec::new();
    for file in files {
        let engine = engine.clone();
        let symbols = data.symbols.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let db = Idtrail {
                engine: engine.clone(),
                symbols: symbols.clone(),
            };
            async move { Ok(db) }
        });
        if bless {
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{}: {}", file.display(), e.display(true)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The same data set answers incident reports (idtrail-report), section by section.
    reports_answer_for_the_scenarios(&engine, &data.symbols).await;
}

/// Reports over the golden data set: what each section holds for a credential, a resource and
/// an empty window, and that the documents render without a raw secret.
async fn reports_answer_for_the_scenarios(engine: &QueryEngine, symbols: &Symbols) {
    use idtrail_report::{ReportOptions, Scope, Subject, render};
    let fp = |name: &str| symbols.substitute(&format!("{{{{fp:{name}}}}}"));
    let column = |table: &idtrail_report::table::Table, name: &str| -> Vec<String> {
        (0..table.rows.len())
            .map(|r| symbols.symbolize(&table.text(r, name)))
            .collect()
    };
    let build = |subject: Subject| async {
        let scope = Scope::new(subject, None, None).expect("scope");
        idtrail_report::build(engine, &scope, &ReportOptions::default())
            .await
            .expect("report")
    };

    // Alice's token: the delegated chain to the deleted order, both tokens to revoke, the
    // scopes she never used, and what the token reaches.
    let alice = build(Subject::Credential(fp(
        "human_agent_delegation/alice_token",
    )))
    .await;
    let chains = alice.section("chains").expect("chains section");
    assert!(
        chains.chains.iter().any(|c| {
            c.steps
                .iter()
                .any(|s| s.id == fp("human_agent_delegation/delegated_token"))
                && c.steps.iter().any(|s| s.id == "db:shop.orders")
                && c.steps.first().is_some_and(|s| s.id == "alice@example.com")
        }),
        "no drawn chain alice → … → delegated token → db:shop.orders: {:?}",
        chains.chains.iter().map(|c| &c.steps).collect::<Vec<_>>()
    );
    assert!(chains.chains.iter().all(|c| !c.svg.is_empty()));
    let revoke = column(
        &alice.section("revoke").expect("revoke").table,
        "credential_fp",
    );
    for token in [
        "fp(human_agent_delegation/alice_token)",
        "fp(human_agent_delegation/delegated_token)",
    ] {
        assert!(
            revoke.iter().any(|c| c == token),
            "{token} not in {revoke:?}"
        );
    }
    let findings = alice.section("findings").expect("findings").table.clone();
    let rules = column(&findings, "rule_id");
    let subjects = column(&findings, "subject_id");
    assert!(
        rules
            .iter()
            .zip(&subjects)
            .any(|(r, s)| r == "granted_scope_unused"
                && s == "fp(human_agent_delegation/alice_token)"),
        "{rules:?} {subjects:?}"
    );
    let blast = &alice.section("blast_radius").expect("blast radius").table;
    let reached: Vec<(String, String)> = column(blast, "reach")
        .into_iter()
        .zip(column(blast, "id"))
        .collect();
    assert!(
        reached.contains(&("observed".into(), "db:shop.orders".into())),
        "{reached:?}"
    );
    assert!(
        reached.iter().any(|(reach, _)| reach == "potential"),
        "{reached:?}"
    );

    // A resource: the rogue agent's delete, nobody behind it, and its findings.
    let events = build(Subject::Resource("db:warehouse.events".into())).await;

    // Carol's late root span re-stitched the cleaner agent's delete as revision 2, attributed
    // to her. The agent's report copies both revisions and must count the newest only.
    let cleaner = build(Subject::Agent("agt_cleaner".into())).await;
    let timeline = &cleaner.section("timeline").expect("timeline").table;
    assert_eq!(column(timeline, "user_id"), vec!["carol@example.com"]);
    assert!(
        cleaner
            .section("unattributed")
            .expect("unattributed")
            .table
            .rows
            .is_empty()
    );
    // A chain's newer revisions that no longer match the subject are copied too, so that
    // chains_latest still sees them: here, a subject neither revision matches.
    let late = symbols.substitute("{{trace:late_span_revision/late}}");
    let nobody = Scope::new(Subject::User("nobody@example.com".into()), None, None).expect("scope");
    let later = nobody.later_revisions_sql(&[late]).expect("a subject");
    let (_, batches) = engine.sql(&later, Vec::new()).await.expect(&later);
    let revisions: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let table = idtrail_report::table::Table::from_batches(
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
                std::slice::from_ref(b),
                10,
            );
            (0..table.rows.len())
                .map(|r| table.text(r, "revision"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(revisions, vec!["2"], "{later}");

    // The report runs its sections over its scope materialised once; the SQL it prints derives
    // the scope in place. Both must give the same rows, or the printed SQL misleads.
    for report in [&alice, &events, &cleaner] {
        for section in &report.sections {
            let [printed] = section.sql.as_slice() else {
                continue;
            };
            if section.id == "chains" {
                continue; // folded into shapes while streaming
            }
            let (schema, batches) = engine.sql(printed, Vec::new()).await.expect(printed);
            let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
            let rerun = idtrail_report::table::Table::from_batches(columns, &batches, 500);
            assert_eq!(
                rerun.rows, section.table.rows,
                "section {} of {} answers otherwise when its SQL is run again",
                section.id, report.title
            );
        }
    }
    let timeline = &events.section("timeline").expect("timeline").table;
    assert_eq!(column(timeline, "agents"), vec!["agt_rogue"]);
    let unattributed = &events.section("unattributed").expect("unattributed").table;
    assert_eq!(column(unattributed, "operation"), vec!["DELETE"]);
    let rules = column(
        &events.section("findings").expect("findings").table,
        "rule_id",
    );
    for rule in ["unattributed_agent_write", "long_lived_token"] {
        assert!(rules.iter().any(|r| r == rule), "{rule} not in {rules:?}");
    }

    // An empty window: every section answers, with nothing in it.
    let from = chrono::DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").expect("time");
    let to = chrono::DateTime::parse_from_rfc3339("2020-01-02T00:00:00Z").expect("time");
    let scope = Scope::new(Subject::Window, Some(from.to_utc()), Some(to.to_utc())).expect("scope");
    let empty = idtrail_report::build(engine, &scope, &ReportOptions::default())
        .await
        .expect("empty report");
    assert_eq!(
        idtrail_report::table::value_text(&empty.summary[0].value),
        "0"
    );
    assert!(
        empty
            .sections
            .iter()
            .skip(1)
            .all(|s| s.table.rows.is_empty())
    );

    // The documents: every section, its SQL, and no JWT-shaped text.
    let html = render::html(&alice);
    for id in [
        "summary",
        "chains",
        "timeline",
        "blast_radius",
        "revoke",
        "unattributed",
        "findings",
    ] {
        assert!(
            html.contains(&format!("<section id=\"{id}\">")),
            "no section {id}"
        );
    }
    assert!(html.contains("<svg") && html.contains("WITH hits AS"));
    assert!(!html.contains("eyJ"), "a JWT in the report");
    let markdown = render::markdown(&alice);
    assert!(markdown.contains("## Credentials to revoke") && markdown.contains("```sql"));
    let json = serde_json::to_value(&alice).expect("json");
    assert_eq!(json["sections"].as_array().map(|s| s.len()), Some(7));
}
