"""Arrow Flight SQL inside `idtrail serve`, driven by ADBC's Flight SQL driver (the Go driver
behind `adbc_driver_flightsql`, as pandas, Polars and DBeaver-style tools use it): spans sent
with the OpenTelemetry SDK are queried back with and without bind parameters, the answers agree
with DuckDB reading the same Parquet files, anything that would write is refused, and bearer
keys guard every call when `query.auth_keys_file` is set."""

from __future__ import annotations

import secrets
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from conftest import _teardown, make_jwt, sql, start_server, wait_for_rows

# service → number of traces; every trace has two spans (a request and an agent under it).
TRACES = {"orders-api": 3, "billing-worker": 2}
SPANS_PER_TRACE = 2
TOTAL_SPANS = sum(TRACES.values()) * SPANS_PER_TRACE
# Stitching after 2 s of quiet, so the chains table fills during the test as well.
SERVER_ARGS = ["--set", "writer.max_file_age=300ms", "--set", "stitcher.quiet_window=2s"]


def send_traces(server) -> list[str]:
    """Sends TRACES through the SDK's gRPC exporter; returns the bearer tokens used."""
    tokens = []
    for service, traces in TRACES.items():
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=10),
                schedule_delay_millis=60_000,
            )
        )
        tracer = provider.get_tracer("idtrail.tests.flight_sql")
        for i in range(traces):
            now = int(time.time())
            token = make_jwt({"iss": "https://idp.example.com", "sub": f"user-{i}", "iat": now, "exp": now + 600})
            tokens.append(token)
            with tracer.start_as_current_span(
                "POST /v1/runs",
                kind=SpanKind.SERVER,
                attributes={
                    "user.id": f"user-{i}@example.com",
                    "http.request.method": "POST",
                    "http.route": "/v1/runs",
                    "http.request.header.authorization": ["Bearer " + token],
                },
            ):
                with tracer.start_as_current_span(
                    "invoke_agent planner",
                    kind=SpanKind.INTERNAL,
                    attributes={
                        "gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.id": f"agent-{service}",
                    },
                ):
                    pass
        assert provider.force_flush(timeout_millis=15_000), "force_flush timed out"
        provider.shutdown()
    return tokens


@pytest.fixture
def server_with_spans(tmp_path):
    server = start_server(tmp_path, extra_args=SERVER_ARGS)
    try:
        tokens = send_traces(server)
        wait_for_rows(server.data_dir, TOTAL_SPANS)
        yield server, tokens
    finally:
        _teardown(server)


def connect(server, **db_kwargs):
    """An ADBC DB-API connection to the server's Flight SQL port. Autocommit, since idtrail has
    no transactions (ADBC would otherwise warn that it cannot turn autocommit off)."""
    return flight_sql.connect(server.flight_uri, db_kwargs=db_kwargs, autocommit=True)


def fetch(conn, query: str, parameters=None) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(query, parameters)
        return cur.fetch_arrow_table()


def test_queries_with_and_without_parameters(server_with_spans):
    server, tokens = server_with_spans
    with connect(server) as conn:
        # A bind parameter: ADBC prepares the statement, binds the row with DoPut, then fetches.
        for service, traces in TRACES.items():
            table = fetch(conn, "SELECT count(*) AS n FROM spans WHERE service_name = ?", (service,))
            assert table.schema == pa.schema([pa.field("n", pa.int64(), nullable=False)])
            assert table.column("n").to_pylist() == [traces * SPANS_PER_TRACE]
        # Two parameters of different types, and the same prepared statement run again.
        with conn.cursor() as cur:
            query = (
                "SELECT span_id, agent_id FROM spans "
                "WHERE service_name = ? AND agent_id IS NOT NULL AND length(span_id) = ? "
                "ORDER BY span_id"
            )
            cur.execute(query, ("billing-worker", 16))
            first = cur.fetch_arrow_table()
            assert first.num_rows == TRACES["billing-worker"]
            assert set(first.column("agent_id").to_pylist()) == {"agent-billing-worker"}
            cur.execute(query, ("orders-api", 16))
            assert cur.fetch_arrow_table().num_rows == TRACES["orders-api"]
            cur.execute(query, ("orders-api", 3))
            assert cur.fetch_arrow_table().num_rows == 0

        # No parameters: the per-service counts, as DuckDB sees the same Parquet files.
        table = fetch(
            conn,
            "SELECT service_name, count(*) AS n FROM spans GROUP BY service_name ORDER BY service_name",
        )
        assert table.column_names == ["service_name", "n"]
        ours = dict(zip(table.column("service_name").to_pylist(), table.column("n").to_pylist()))
        duckdb_counts = dict(
            sql(server.data_dir, "SELECT service_name, count(*) FROM spans GROUP BY service_name")
        )
        assert ours == duckdb_counts == {s: t * SPANS_PER_TRACE for s, t in TRACES.items()}

        # Identity columns came through, and the bearer tokens are fingerprints, never the JWT.
        table = fetch(
            conn,
            "SELECT user_id, credential_fp, credential_kind FROM spans "
            "WHERE user_id IS NOT NULL ORDER BY user_id",
        )
        assert table.num_rows == sum(TRACES.values())
        assert set(table.column("user_id").to_pylist()) == {
            f"user-{i}@example.com" for i in range(max(TRACES.values()))
        }
        fingerprints = table.column("credential_fp").to_pylist()
        assert all(fp and fp.startswith("k") for fp in fingerprints), fingerprints
        everything = fetch(conn, "SELECT * FROM spans")
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, everything.schema) as writer:
            writer.write_table(everything)
        raw = sink.getvalue().to_pybytes()
        for token in tokens:
            assert token.encode() not in raw and token.split(".")[1].encode() not in raw

        # The delta-encoded columns (ids without dictionary, times as deltas) read the same in
        # DuckDB as through idtrail, and the files really use those encodings.
        columns = "span_id, parent_span_id, epoch_ns(start_time), epoch_ns(end_time), duration_ns"
        ours = fetch(
            conn,
            "SELECT span_id, parent_span_id, CAST(start_time AS BIGINT), "
            "CAST(end_time AS BIGINT), duration_ns FROM spans ORDER BY span_id",
        )
        assert [tuple(r.values()) for r in ours.to_pylist()] == sql(
            server.data_dir, f"SELECT {columns} FROM spans ORDER BY span_id"
        )
        files = list((server.data_dir / "spans").rglob("*.parquet"))
        encodings = {}
        for row_group in (pq.ParquetFile(f).metadata.row_group(0) for f in files):
            for i in range(row_group.num_columns):
                column = row_group.column(i)
                encodings.setdefault(column.path_in_schema, set()).update(column.encodings)
        assert "DELTA_BINARY_PACKED" in encodings["start_time"]
        assert "DELTA_LENGTH_BYTE_ARRAY" in encodings["span_id"]
        assert "RLE_DICTIONARY" not in encodings["span_id"]

        # Timestamps arrive as Arrow timestamps.
        table = fetch(conn, "SELECT min(start_time) AS first FROM spans")
        assert pa.types.is_timestamp(table.schema.field("first").type)

        # A client still connected does not hold up a clean shutdown.
        server.stop()


def test_metadata(server_with_spans):
    server, _ = server_with_spans
    with connect(server) as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "idtrail"
        schema = conn.adbc_get_table_schema("spans")
        assert {"trace_id", "span_id", "service_name", "user_id", "agent_id", "date", "hour"} <= set(
            schema.names
        )
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = {
            (catalog["catalog_name"], schema["db_schema_name"], table["table_name"])
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for table in schema["db_schema_tables"] or []
        }
        for name in ("spans", "chains", "edges"):
            assert ("idtrail", "public", name) in tables
        assert "BASE TABLE" in conn.adbc_get_table_types()


WRITES = [
    "CREATE TABLE copied AS SELECT * FROM spans",
    "INSERT INTO spans SELECT * FROM spans",
    "COPY (SELECT * FROM spans) TO '{out}'",
    "SET datafusion.execution.batch_size = 10",
    "DROP VIEW chains_latest",
]


def test_writes_are_refused(server_with_spans, tmp_path):
    server, _ = server_with_spans
    out = tmp_path / "copy.parquet"
    with connect(server) as conn:
        for statement in WRITES:
            statement = statement.format(out=out)
            # As a query (ADBC prepares it first).
            with conn.cursor() as cur:
                with pytest.raises(adbc_driver_manager.Error) as refused:
                    cur.execute(statement)
                    cur.fetch_arrow_table()
                assert "read-only" in str(refused.value), (statement, refused.value)
            # As an update (DoPut CommandStatementUpdate).
            with conn.cursor() as cur:
                cur.adbc_statement.set_sql_query(statement)
                with pytest.raises(adbc_driver_manager.Error) as refused:
                    cur.adbc_statement.execute_update()
                assert "read-only" in str(refused.value), (statement, refused.value)
        # Nothing changed.
        assert fetch(conn, "SELECT count(*) AS n FROM spans").column("n").to_pylist() == [TOTAL_SPANS]
        assert fetch(conn, "SELECT count(*) AS n FROM chains_latest").num_rows == 1
    assert not out.exists()


def test_bearer_keys(tmp_path):
    key = "k-" + secrets.token_hex(16)
    keys_file = tmp_path / "query-keys"
    keys_file.write_text(f"# analysts\n{key}\n")
    server = start_server(
        tmp_path, extra_args=[*SERVER_ARGS, "--set", f"query.auth_keys_file={keys_file}"]
    )
    try:
        send_traces(server)
        wait_for_rows(server.data_dir, TOTAL_SPANS)
        query = "SELECT count(*) AS n FROM spans WHERE service_name = ?"

        refusals = [
            {},
            {adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer k-wrong"},
            # Basic credentials (a handshake) are refused with the way to authenticate.
            {"username": "analyst", "password": key},
        ]
        for db_kwargs in refusals:
            with pytest.raises(adbc_driver_manager.Error) as refused:
                with connect(server, **db_kwargs) as conn:
                    fetch(conn, query, ("orders-api",))
            message = str(refused.value)
            assert "unauthenticated" in message.lower() and "Bearer" in message, message
            assert key not in server.log_text()

        with connect(
            server, **{adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {key}"}
        ) as conn:
            table = fetch(conn, query, ("orders-api",))
            assert table.column("n").to_pylist() == [TRACES["orders-api"] * SPANS_PER_TRACE]
            assert conn.adbc_get_info()["vendor_name"] == "idtrail"
        server.stop()
        assert key not in server.log_text()
    finally:
        _teardown(server)
