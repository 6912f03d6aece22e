"""The OpenTelemetry Python SDK's own OTLP exporters (gRPC and HTTP/protobuf) against idtrail:
a realistic agent trace goes in, and DuckDB reads the extracted identity, credential, API and
side-effect columns back out of the published Parquet files."""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind

from conftest import hex_span_id, hex_trace_id, make_jwt, sql, wait_for_rows

FP_RE = re.compile(r"^k[0-9a-f]{8}:[0-9a-f]{32}$")


class RecordingExporter(SpanExporter):
    """Delegates to a real exporter and keeps every export result."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.results: list[SpanExportResult] = []
        self.exported = 0

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        self.exported += len(spans)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def make_exporter(protocol: str, server) -> SpanExporter:
    if protocol == "grpc":
        return GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=10)
    return HttpSpanExporter(endpoint=server.traces_url, timeout=10)


def make_provider(exporter: SpanExporter, service: str = "orders-api"):
    resource = Resource.create(
        {
            "service.name": service,
            "service.namespace": "shop",
            "k8s.cluster.name": "prod-eu-1",
        }
    )
    provider = TracerProvider(resource=resource)
    recorder = RecordingExporter(exporter)
    provider.add_span_processor(BatchSpanProcessor(recorder, schedule_delay_millis=60_000))
    return provider, recorder


def flush(provider: TracerProvider, recorder: RecordingExporter, expected_spans: int) -> None:
    assert provider.force_flush(timeout_millis=15_000), "force_flush timed out"
    assert recorder.exported == expected_spans, recorder.exported
    assert recorder.results and all(r == SpanExportResult.SUCCESS for r in recorder.results), (
        recorder.results
    )


def user_jwt(sub: str = "alice") -> str:
    now = int(time.time())
    return make_jwt(
        {
            "iss": "https://idp.example.com",
            "sub": sub,
            "client_id": "orders-web",
            "scope": "orders:read orders:write",
            "jti": "jti-" + secrets.token_hex(8),
            "act": {"sub": "sub-agent", "act": {"sub": "planner"}},
            "iat": now,
            "exp": now + 3600,
            "auth_time": now - 60,
            "email": "alice@example.com",
        }
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_agent_trace_columns(idtrail, protocol):
    jwt = user_jwt()
    api_key = "sk-live-" + secrets.token_hex(20)
    provider, recorder = make_provider(make_exporter(protocol, idtrail))
    tracer = provider.get_tracer("shop.orders", "1.2.3")

    with tracer.start_as_current_span(
        "POST /v1/runs",
        kind=SpanKind.SERVER,
        attributes={
            "user.id": "alice@example.com",
            "session.id": "sess-42",
            "http.request.method": "POST",
            "http.route": "/v1/runs",
            "server.address": "orders.shop.svc",
            "http.response.status_code": 202,
            "http.request.header.authorization": ["Bearer " + jwt],
        },
    ) as server_span:
        with tracer.start_as_current_span(
            "invoke_agent planner",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.id": "agent-planner-7",
                "gen_ai.agent.name": "planner",
            },
        ) as agent_span:
            with tracer.start_as_current_span(
                "DELETE orders",
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system.name": "postgresql",
                    "db.operation.name": "DELETE",
                    "db.namespace": "orders",
                    "db.collection.name": "orders",
                    "server.address": "pg.shop.svc",
                },
            ) as db_span:
                pass
            with tracer.start_as_current_span(
                "POST /v1/chat/completions",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": "POST",
                    "server.address": "llm.example.com",
                    "url.full": "https://llm.example.com/v1/chat/completions",
                    "http.request.header.x-api-key": api_key,
                },
            ) as key_span:
                pass
            # The user's token forwarded to a downstream service: the same credential again.
            with tracer.start_as_current_span(
                "GET /orders/{id}",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": "GET",
                    "http.route": "/orders/{id}",
                    "server.address": "inventory.shop.svc",
                    "http.request.header.authorization": ["Bearer " + jwt],
                },
            ) as fwd_span:
                pass

    spans = {
        "server": server_span,
        "agent": agent_span,
        "db": db_span,
        "key": key_span,
        "fwd": fwd_span,
    }
    flush(provider, recorder, len(spans))
    provider.shutdown()

    rows = wait_for_rows(idtrail.data_dir, len(spans))
    assert len(rows) == len(spans), [r["name"] for r in rows]
    by_id = {r["span_id"]: r for r in rows}
    trace_id = hex_trace_id(server_span.get_span_context())
    got = {}
    for label, span in spans.items():
        sid = hex_span_id(span.get_span_context())
        assert sid in by_id, f"{label} span {sid} missing; have {sorted(by_id)}"
        row = by_id[sid]
        assert row["trace_id"] == trace_id
        assert re.fullmatch(r"[0-9a-f]{32}", row["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", sid)
        expected_parent = hex_span_id(span.parent) if span.parent is not None else None
        assert row["parent_span_id"] == expected_parent, label
        assert row["name"] == span.name
        # Resource columns on every span.
        assert row["service_name"] == "orders-api"
        assert row["service_namespace"] == "shop"
        assert row["k8s_cluster"] == "prod-eu-1"
        got[label] = row

    # Timestamps keep the SDK's nanoseconds.
    times = {
        r[0]: (r[1], r[2])
        for r in sql(idtrail.data_dir, "SELECT span_id, epoch_ns(start_time), epoch_ns(end_time) FROM spans")
    }
    for label, span in spans.items():
        assert times[hex_span_id(span.get_span_context())] == (span.start_time, span.end_time), label

    srv, agent, db, key, fwd = (got[k] for k in ("server", "agent", "db", "key", "fwd"))

    # Kinds.
    assert srv["kind"] == "server"
    assert agent["kind"] == "internal"
    assert db["kind"] == "client"
    assert key["kind"] == "client"
    assert fwd["kind"] == "client"
    assert agent["parent_span_id"] == srv["span_id"]
    assert db["parent_span_id"] == agent["span_id"]
    assert srv["parent_span_id"] is None

    # Identity and credential on the server span.
    assert srv["user_id"] == "alice@example.com"
    assert srv["session_id"] == "sess-42"
    assert srv["credential_kind"] == "jwt"
    assert srv["credential_attr"] == "http.request.header.authorization"
    assert FP_RE.match(srv["credential_fp"]), srv["credential_fp"]
    assert srv["token_sub"] == "alice"
    assert srv["token_client_id"] == "orders-web"
    assert list(srv["token_scopes"]) == ["orders:read", "orders:write"]
    assert list(srv["token_actors"]) == ["sub-agent", "planner"]
    assert srv["token_iss"] == "https://idp.example.com"
    assert srv["token_verified"] is False
    # The header stays in the attributes, fingerprinted, as a JSON array.
    attrs = dict(srv["attributes"])
    assert json.loads(attrs["http.request.header.authorization"]) == [srv["credential_fp"]]
    assert "user.id" not in attrs, "moved into user_id"
    assert jwt not in json.dumps(srv, default=str)

    # API call columns.
    assert srv["api_protocol"] == "http"
    assert srv["api_method"] == "POST"
    assert srv["api_route"] == "/v1/runs"
    assert srv["api_target"] == "orders.shop.svc"
    assert srv["http_status"] == 202

    # The same token on two spans gives one fingerprint.
    assert fwd["credential_fp"] == srv["credential_fp"]
    assert fwd["credential_kind"] == "jwt"
    # A JWT with auth_time is a user token: its sub stands for the user when no user attribute.
    assert fwd["user_id"] == "alice"

    # The agent span.
    assert agent["agent_id"] == "agent-planner-7"
    assert agent["agent_name"] == "planner"
    assert agent["genai_operation"] == "invoke_agent"
    assert agent["credential_fp"] is None

    # The DB side effect.
    assert db["effect_kind"] == "db"
    assert db["effect_operation"] == "DELETE"
    assert db["effect_target"] == "orders.orders"
    assert db["effect_is_write"] is True

    # The API key.
    assert key["credential_kind"] == "api_key"
    assert key["credential_attr"] == "http.request.header.x-api-key"
    assert FP_RE.match(key["credential_fp"]), key["credential_fp"]
    assert key["credential_fp"] != srv["credential_fp"]
    assert dict(key["attributes"])["http.request.header.x-api-key"] == key["credential_fp"]
    assert api_key not in json.dumps(key, default=str)
    assert key["api_protocol"] == "http"
    assert key["api_target"] == "llm.example.com"

    # Both fingerprints are under the same key id.
    assert key["credential_fp"].split(":")[0] == srv["credential_fp"].split(":")[0]

    metrics = idtrail.metrics()
    m = re.search(r"^idtrail_spans_accepted_total(?:\{[^}]*\})? (\d+)", metrics, re.M)
    assert m and int(m.group(1)) == len(spans), metrics

    idtrail.stop()


def test_same_jwt_same_fingerprint_across_exporters(idtrail):
    """One token exported once over gRPC and once over OTLP/HTTP fingerprints identically."""
    jwt = user_jwt(sub="bob")
    contexts = {}
    for protocol in ("grpc", "http"):
        provider, recorder = make_provider(make_exporter(protocol, idtrail), service=f"svc-{protocol}")
        tracer = provider.get_tracer("fp-test")
        with tracer.start_as_current_span(
            f"GET /{protocol}",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.request.header.authorization": ["Bearer " + jwt],
            },
        ) as span:
            contexts[protocol] = span.get_span_context()
        flush(provider, recorder, 1)
        provider.shutdown()

    rows = wait_for_rows(idtrail.data_dir, 2)
    by_id = {r["span_id"]: r for r in rows}
    grpc_row = by_id[hex_span_id(contexts["grpc"])]
    http_row = by_id[hex_span_id(contexts["http"])]
    assert grpc_row["service_name"] == "svc-grpc"
    assert http_row["service_name"] == "svc-http"
    for row in (grpc_row, http_row):
        assert row["credential_kind"] == "jwt"
        assert FP_RE.match(row["credential_fp"]), row["credential_fp"]
        # No user attribute: the user token's sub is the user.
        assert row["user_id"] == "bob"
    assert grpc_row["credential_fp"] == http_row["credential_fp"]
    idtrail.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ingest_auth_with_the_sdk_exporters(tmp_path, protocol):
    """With `receivers.auth_keys_file`, the SDK's exporter sending the key in its headers is
    accepted and its spans carry `ingest_principal = key:<id>`; the same exporter without the key
    fails at once (401 / UNAUTHENTICATED are not retried) and nothing of it is stored."""
    from conftest import start_server, _teardown

    key = "ik_" + secrets.token_hex(16)
    keys = tmp_path / "ingest.keys"
    keys.write_text(f"sdk-{protocol} {key}\n")
    server = start_server(tmp_path, extra_args=["--set", f"receivers.auth_keys_file={keys}"])
    try:
        def exporter(headers):
            if protocol == "grpc":
                return GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=10,
                                        headers=headers)
            return HttpSpanExporter(endpoint=server.traces_url, timeout=10, headers=headers)

        refused, refused_recorder = make_provider(exporter({}), service="no-key")
        with refused.get_tracer("t").start_as_current_span("refused", kind=SpanKind.SERVER):
            pass
        started = time.monotonic()
        refused.force_flush(timeout_millis=15_000)
        assert refused_recorder.results == [SpanExportResult.FAILURE]
        assert time.monotonic() - started < 5, "the exporter retried a 401 / UNAUTHENTICATED"

        accepted, recorder = make_provider(exporter({"authorization": f"Bearer {key}"}),
                                           service="with-key")
        with accepted.get_tracer("t").start_as_current_span("accepted", kind=SpanKind.SERVER):
            pass
        flush(accepted, recorder, 1)
        rows = wait_for_rows(server.data_dir, 1)
        assert [(r["service_name"], r["ingest_principal"]) for r in rows] == [
            ("with-key", f"key:sdk-{protocol}")
        ]
    finally:
        _teardown(server)
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the ingest key is in {path}"
    assert key not in server.log_text()
