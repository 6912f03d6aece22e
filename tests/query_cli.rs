//! `idtrail query`: every output format over a real data directory, bind parameters, a file of
//! statements and SQL on standard input, errors (read-only refusals, bad SQL) as one line and
//! exit 1, the prompt driven through a pipe, and `--server` answering what local mode answers,
//! bearer key included, while the collector runs on the same directory.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::{Ports, free_port, sigterm, start_server};
use common::{TestServer, request, span, text};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::Span;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;

fn at(mut s: Span, offset_ms: u64, kind: i32, parent: Option<&[u8]>) -> Span {
    s.start_time_unix_nano += offset_ms * 1_000_000;
    s.end_time_unix_nano = s.start_time_unix_nano + 1_000_000;
    s.kind = kind;
    s.parent_span_id = parent.map(<[u8]>::to_vec).unwrap_or_default();
    s
}

/// alice → the planner agent → DELETE on shop.orders; bob → UPDATE on billing.payments.
fn traffic() -> Vec<ExportTraceServiceRequest> {
    let alice = [0x11; 16];
    let bob = [0x22; 16];
    let db = |trace: &[u8], id: u8, operation: &str, namespace: &str, table: &str| {
        span(
            trace,
            &[id; 8],
            &format!("{operation} {table}"),
            vec![
                text("db.system.name", "postgresql"),
                text("db.operation.name", operation),
                text("db.namespace", namespace),
                text("db.collection.name", table),
            ],
        )
    };
    vec![
        request(
            "shop-api",
            vec![
                at(
                    span(
                        &alice,
                        &[1; 8],
                        "POST /cleanup",
                        vec![text("user.id", "alice")],
                    ),
                    0,
                    SERVER,
                    None,
                ),
                at(
                    span(
                        &alice,
                        &[2; 8],
                        "invoke_agent planner",
                        vec![
                            text("gen_ai.operation.name", "invoke_agent"),
                            text("gen_ai.agent.id", "planner"),
                        ],
                    ),
                    1,
                    INTERNAL,
                    Some(&[1; 8]),
                ),
                at(
                    db(&alice, 3, "DELETE", "shop", "orders"),
                    2,
                    CLIENT,
                    Some(&[2; 8]),
                ),
            ],
        ),
        request(
            "billing",
            vec![
                at(
                    span(&bob, &[4; 8], "POST /pay", vec![text("user.id", "bob")]),
                    0,
                    SERVER,
                    None,
                ),
                at(
                    db(&bob, 5, "UPDATE", "billing", "payments"),
                    1,
                    CLIENT,
                    Some(&[4; 8]),
                ),
            ],
        ),
    ]
}

/// A stopped collector's directory (`dir/data`, `dir/fp.key`) holding 5 spans and 2 chains.
async fn populated() -> tempfile::TempDir {
    let server = TestServer::start(&[
        ("stitcher.quiet_window", "200ms"),
        ("writer.max_file_age", "100ms"),
    ])
    .await;
    let mut client = TraceServiceClient::connect(server.grpc_url())
        .await
        .expect("connect");
    for request in traffic() {
        let response = client.export(request).await.expect("export").into_inner();
        assert!(
            response
                .partial_success
                .is_none_or(|p| p.rejected_spans == 0)
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while common::read_table(&server.data_dir(), "chains")
        .iter()
        .map(|b| b.num_rows())
        .sum::<usize>()
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "chains never came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await
}

/// `idtrail query ARGS` with `stdin` as standard input, outside any user config or history.
fn query(args: &[&str], stdin: &str, state: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idtrail"))
        .arg("query")
        .args(args)
        .env_remove("IDTRAIL_CONFIG")
        .env_remove("IDTRAIL_DATA_DIR")
        .env_remove("IDTRAIL_QUERY_TOKEN")
        .env("XDG_STATE_HOME", state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn idtrail query");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("idtrail query")
}

fn local(data: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--data-dir", data.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    query(&all, "", data)
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "idtrail query failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 answer")
}

/// The one-line error of a failed run.
fn failed(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    stderr
}

const CHAINS: &str =
    "SELECT user_id, effect_operation, effect_target, agents FROM chains ORDER BY user_id";

#[tokio::test]
async fn every_format_prints_the_answer() {
    let dir = populated().await;
    let data = dir.path().join("data");

    let csv = ok(&local(&data, &["--format", "csv", CHAINS]));
    assert_eq!(
        csv,
        "user_id,effect_operation,effect_target,agents\n\
         alice,DELETE,shop.orders,[planner]\n\
         bob,UPDATE,billing.payments,[]\n"
    );

    let table = local(&data, &[CHAINS]);
    let printed = ok(&table);
    assert!(printed.contains("| user_id "), "{printed}");
    assert!(printed.contains("| alice "), "{printed}");
    assert!(printed.contains("[planner]"), "{printed}");
    let stderr = String::from_utf8_lossy(&table.stderr);
    assert!(
        stderr.contains("2 rows in ") && stderr.contains(" ms"),
        "{stderr}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&local(&data, &["--format", "json", CHAINS]))).expect("JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    assert_eq!(json[0]["user_id"], "alice");
    assert_eq!(json[0]["agents"], serde_json::json!(["planner"]));
    assert_eq!(json[1]["effect_target"], "billing.payments");

    let ndjson = ok(&local(&data, &["--format", "ndjson", CHAINS]));
    let lines: Vec<serde_json::Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["user_id"], "bob");

    // An empty answer still has its columns.
    let empty = "SELECT user_id FROM chains WHERE user_id = 'nobody'";
    assert_eq!(ok(&local(&data, &["--format", "csv", empty])), "user_id\n");
    assert_eq!(ok(&local(&data, &["--format", "json", empty])), "[]\n");

    let file = dir.path().join("answer.parquet");
    let written = local(
        &data,
        &[
            "--format",
            "parquet",
            "--output",
            file.to_str().expect("utf-8"),
            "SELECT span_id, name FROM spans ORDER BY span_id",
        ],
    );
    assert_eq!(ok(&written), "", "parquet goes to the file");
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).expect("open"))
            .expect("a Parquet file")
            .build()
            .expect("reader");
    let batches: Vec<_> = reader.map(|b| b.expect("batch")).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    assert_eq!(batches[0].schema().field(1).name(), "name");

    // Parquet needs a file or a pipe, and one statement.
    let two = local(&data, &["--format", "parquet", "SELECT 1; SELECT 2"]);
    assert!(failed(&two).contains("one statement"));
}

#[tokio::test]
async fn parameters_bind_in_order() {
    let dir = populated().await;
    let data = dir.path().join("data");
    let by_user = "SELECT effect_target FROM chains WHERE user_id = $1";
    assert_eq!(
        ok(&local(
            &data,
            &["--format", "csv", "--param", "bob", by_user]
        )),
        "effect_target\nbilling.payments\n"
    );
    // `?` placeholders, a number and a text compared with a text column.
    let output = local(
        &data,
        &[
            "--format",
            "csv",
            "-p",
            "alice",
            "-p",
            "2",
            "SELECT count(*) AS n FROM spans WHERE service_name = 'shop-api' AND (user_id = ? OR ? > 5)",
        ],
    );
    assert_eq!(ok(&output), "n\n1\n");
    assert_eq!(
        ok(&local(
            &data,
            &[
                "--format",
                "csv",
                "-p",
                "41",
                "-p",
                "\"x\"",
                "SELECT $1 + 1 AS n, $2 AS s"
            ]
        )),
        "n,s\n42,x\n"
    );
    let missing = local(&data, &["--format", "csv", by_user]);
    failed(&missing);
}

#[tokio::test]
async fn errors_are_one_line_and_exit_1() {
    let dir = populated().await;
    let data = dir.path().join("data");

    let drop = failed(&local(&data, &["DROP TABLE spans"]));
    assert!(drop.contains("read-only"), "{drop}");
    assert_eq!(drop.trim().lines().count(), 1, "{drop}");

    let insert = failed(&local(&data, &["INSERT INTO spans (name) VALUES ('x')"]));
    assert!(insert.contains("read-only"), "{insert}");

    failed(&local(&data, &["SELEC 1"]));
    let unknown = failed(&local(&data, &["SELECT * FROM no_such_table"]));
    assert!(unknown.contains("no_such_table"), "{unknown}");

    let nowhere = dir.path().join("nowhere");
    let missing = failed(&local(&nowhere, &["SELECT 1"]));
    assert!(missing.contains("no data directory"), "{missing}");

    // A failed run leaves no half-written --output file.
    let answer = dir.path().join("partial.csv");
    let partial = local(
        &data,
        &[
            "--format",
            "csv",
            "--output",
            answer.to_str().expect("utf-8"),
            "SELECT 1 AS a; DROP TABLE spans",
        ],
    );
    assert!(failed(&partial).contains("statement 2"));
    assert!(!answer.exists(), "the partial answer was removed");

    let bad_file = failed(&local(&data, &["-f", "/nonexistent/q.sql"]));
    assert!(bad_file.contains("/nonexistent/q.sql"), "{bad_file}");
}

#[tokio::test]
async fn statements_come_from_a_file_or_standard_input() {
    let dir = populated().await;
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf-8");
    let script = "-- counts; then a literal with a semicolon\n\
                  SELECT count(*) AS spans FROM spans;\n\
                  SELECT 'a;b' AS text, /* ; */ 1 AS one;\n\
                  SELECT count(*) AS chains FROM chains -- no final semicolon\n";
    let expected = "spans\n5\ntext,one\na;b,1\nchains\n2\n";

    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("write script");
    let from_file = query(
        &[
            "--data-dir",
            d,
            "--format",
            "csv",
            "-f",
            file.to_str().expect("utf-8"),
        ],
        "",
        dir.path(),
    );
    assert_eq!(ok(&from_file), expected);

    let from_stdin = query(&["--data-dir", d, "--format", "csv"], script, dir.path());
    assert_eq!(ok(&from_stdin), expected);

    // The first failing statement stops the run, named by its position and line.
    let failing = query(
        &["--data-dir", d, "--format", "csv"],
        "SELECT 1 AS a;\n\nDROP TABLE spans;\nSELECT 3 AS c;",
        dir.path(),
    );
    let stderr = failed(&failing);
    assert!(stderr.contains("statement 2 (line 3) of 3"), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&failing.stdout), "a\n1\n");

    let nothing = failed(&query(&["--data-dir", d], "  -- nothing\n", dir.path()));
    assert!(nothing.contains("no SQL given"), "{nothing}");
}

#[tokio::test]
async fn the_prompt_runs_statements_and_commands_and_survives_errors() {
    let dir = populated().await;
    let data = dir.path().join("data");
    let state = dir.path().join("state");
    let session = "\\format csv\n\
                   SELECT user_id\n\
                   FROM chains\n\
                   ORDER BY user_id;\n\
                   DROP TABLE spans;\n\
                   SELECT 'still here' AS s; SELECT 2 AS two;\n\
                   \\d\n\
                   \\d chains\n\
                   \\nonsense\n\
                   \\q\n\
                   SELECT 'after quit' AS never;\n";
    let output = query(
        &["--data-dir", data.to_str().expect("utf-8"), "-i"],
        session,
        &state,
    );
    let stdout = ok(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.starts_with("user_id\nalice\nbob\ns\nstill here\ntwo\n2\n"),
        "{stdout}"
    );
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains("unknown command"), "{stderr}");
    assert!(stdout.contains(",chains,"), "SHOW TABLES: {stdout}");
    assert!(
        stdout.contains("effect_target,"),
        "DESCRIBE chains: {stdout}"
    );
    assert!(!stdout.contains("after quit"), "{stdout}");

    let history = std::fs::read_to_string(state.join("idtrail").join("query_history"))
        .expect("history saved");
    assert!(history.contains("ORDER BY user_id;"), "{history}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("idtrail").join("query_history"))
        .expect("history")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_running_collector_answers_as_the_files_do() {
    // Not a tokio test: the process helpers block on runtimes of their own.
    let dir = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(populated());
    let data = dir.path().join("data");
    let keys = dir.path().join("query.keys");
    std::fs::write(&keys, "# test key\nsecret-query-key-1\n").expect("keys file");
    let ports = Ports::free();
    let flight = format!("query.flight_sql_address=127.0.0.1:{}", free_port());
    let auth = format!("query.auth_keys_file={}", keys.display());
    let mut server = start_server(dir.path(), ports, "serve.log", &[&flight, &auth]);
    let url = format!("http://127.0.0.1:{}", ports.http);
    let sql = "SELECT service_name, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1";

    // Local mode beside the running collector: no lock taken.
    let here = ok(&local(&data, &["--format", "csv", sql]));
    assert_eq!(here, "service_name,n\nbilling,2\nshop-api,3\n");

    let remote = |args: &[&str], token: Option<&str>| -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idtrail"));
        command
            .args(["query", "--server", &url])
            .args(args)
            .env_remove("IDTRAIL_CONFIG")
            .env_remove("IDTRAIL_DATA_DIR")
            .env_remove("IDTRAIL_QUERY_TOKEN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            command.env("IDTRAIL_QUERY_TOKEN", token);
        }
        command.output().expect("idtrail query --server")
    };
    let key = Some("secret-query-key-1");
    assert_eq!(ok(&remote(&["--format", "csv", sql], key)), here);
    assert_eq!(
        ok(&remote(
            &["--format", "csv", "--token", "secret-query-key-1", sql],
            None
        )),
        here
    );
    let table = ok(&remote(&[sql], key));
    assert_eq!(table, ok(&local(&data, &[sql])));
    assert_eq!(
        ok(&remote(
            &[
                "--format",
                "csv",
                "-p",
                "bob",
                "SELECT effect_target FROM chains WHERE user_id = $1"
            ],
            key
        )),
        "effect_target\nbilling.payments\n"
    );

    let refused = failed(&remote(&["DROP TABLE spans"], key));
    assert!(refused.contains("read-only"), "{refused}");
    let unauthenticated = failed(&remote(&["SELECT 1"], None));
    assert!(
        unauthenticated.contains("unauthenticated"),
        "{unauthenticated}"
    );
    let wrong = failed(&remote(&["SELECT 1"], Some("wrong-key")));
    assert!(!wrong.contains("wrong-key"), "{wrong}");

    sigterm(&mut server);
    let gone = failed(&remote(&["SELECT 1"], key));
    assert!(gone.contains("cannot reach"), "{gone}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(
        !log.contains("secret-query-key-1"),
        "the key is never logged"
    );
}
