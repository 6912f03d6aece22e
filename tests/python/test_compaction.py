"""Compaction inside a running `idtrail serve`: spans of a closed hour, sent with the
OpenTelemetry SDK's gRPC exporter in several rounds, are merged by the collector's background
pass while exports and Flight SQL queries go on. ADBC (Flight SQL) counts every span exactly
once at every moment, and DuckDB reading the files afterwards agrees with it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from conftest import _teardown, start_server

ROUNDS = 6
SPANS_PER_ROUND = 40
HOURS_AGO = 3
# Files published every 200 ms, a compaction pass every second over hours that have ended.
SERVER_ARGS = [
    "--set", "writer.max_file_age=200ms",
    "--set", "stitcher.quiet_window=1s",
    "--set", "compaction.interval=1s",
    "--set", "compaction.min_age=0s",
]


def send_round(server, round_no: int) -> None:
    """SPANS_PER_ROUND spans timed HOURS_AGO hours back, each presenting one of five keys."""
    provider = TracerProvider(resource=Resource.create({"service.name": "orders-api"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=10))
    )
    tracer = provider.get_tracer("idtrail.tests.compaction")
    start = time.time_ns() - HOURS_AGO * 3600 * 10**9 + round_no * 10**9
    for i in range(SPANS_PER_ROUND):
        span = tracer.start_span(
            "DELETE orders",
            kind=SpanKind.CLIENT,
            start_time=start + i * 1000,
            attributes={
                "user.id": f"user-{i % 7}",
                "http.request.header.authorization": f"Bearer key-{i % 5}-0123456789abcdef",
                "db.system.name": "postgresql",
                "db.operation.name": "DELETE",
                "db.collection.name": "orders",
            },
        )
        span.end(end_time=start + i * 1000 + 500)
    assert provider.force_flush(timeout_millis=15_000), "force_flush timed out"
    provider.shutdown()


def flight_count(server) -> tuple[int, int]:
    with flight_sql.connect(server.flight_uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT span_id) FROM spans")
        return tuple(cur.fetchone())


def metric(server, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", server.metrics(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def spans_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "spans").rglob("*.parquet") if not p.name.startswith("."))


def test_background_compaction_keeps_every_span_visible_once(tmp_path):
    server = start_server(tmp_path, extra_args=SERVER_ARGS)
    try:
        sent = 0
        for round_no in range(ROUNDS):
            send_round(server, round_no)
            sent += SPANS_PER_ROUND
            # Queries during compaction never count a span twice and never miss an
            # acknowledged span once it is published.
            deadline = time.monotonic() + 15
            while True:
                total, distinct = flight_count(server)
                assert total == distinct, f"a span counted twice: {total} rows, {distinct} ids"
                assert total <= sent
                if total == sent or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert total == sent, f"{total} of {sent} acknowledged spans visible"
        deadline = time.monotonic() + 20
        while metric(server, "idtrail_compaction_files_written_total") < 1:
            assert time.monotonic() < deadline, "no compaction pass merged anything"
            time.sleep(0.2)
        # Let a pass merge the last round's files too, then check the end state.
        time.sleep(2.5)
        assert flight_count(server) == (sent, sent)
        assert metric(server, "idtrail_compaction_failures_total") == 0
        assert server.stop() == 0
    finally:
        _teardown(server)

    files = spans_files(server.data_dir)
    compacted = [f for f in files if re.fullmatch(r"local-\d{12,}-\d{12,}\.parquet", f.name)]
    assert compacted, f"no compacted spans file among {[f.name for f in files]}"
    assert len(files) < ROUNDS, f"{len(files)} spans files left for {ROUNDS} rounds"
    glob = str(server.data_dir / "spans" / "**" / "*.parquet")
    con = duckdb.connect()
    try:
        total, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT span_id) FROM read_parquet('{glob}', hive_partitioning=true)"
        ).fetchone()
    finally:
        con.close()
    assert (total, distinct) == (sent, sent)
