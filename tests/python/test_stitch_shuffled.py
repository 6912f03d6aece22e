"""The stitcher does not depend on arrival order: the spans of one trace sent by three separate
processes in shuffled order (children before parents, gRPC and HTTP mixed) give the same
`chains` and `edges` rows as the same spans sent in one ordered export.

The trace is a delegated agent run, built span by span with fixed ids, parents and times so both
runs send exactly the same spans:

    agent-portal      SERVER   POST /v1/runs            user.id, session.id, Bearer <user JWT>
    planner-agent     INTERNAL invoke_agent planner     gen_ai.agent.id = agent-planner-7
    planner-agent     CLIENT   chat gpt-4o
    order-clerk-agent INTERNAL invoke_agent order-clerk gen_ai.agent.id = agent-order-clerk-3
    order-clerk-agent INTERNAL execute_tool cancel_order
    order-clerk-agent CLIENT   tools/call cancel_order  MCP, Bearer <user JWT>
    mcp-orders        SERVER   tools/call cancel_order  MCP, Bearer <user JWT>
    mcp-orders        CLIENT   POST /oauth2/token       RFC 8693 token exchange   (effect: http)
    mcp-orders        CLIENT   DELETE /orders/{id}      Bearer <exchanged JWT>
    api-gateway       SERVER   DELETE /orders/{id}      Bearer <exchanged JWT>
    orders-service    SERVER   DELETE /orders/{id}
    orders-service    CLIENT   DELETE orders            postgresql                (effect: db)
    orders-service    PRODUCER send order-events        kafka                (effect: messaging)

Each span is a `ReadableSpan` handed straight to the SDK's OTLP exporters. This file doubles as
the sender process: `python test_stitch_shuffled.py send` reads its share of the spans and a
schedule on stdin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from conftest import _teardown, start_server, wait_for_rows

HERE = Path(__file__).resolve().parent

QUIET_WINDOW_S = 1.0
SERVER_ARGS = [
    "--set", f"stitcher.quiet_window={int(QUIET_WINDOW_S * 1000)}ms",
    "--set", "writer.max_file_age=200ms",
]
TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
SENDERS = ["grpc", "http", "grpc"]  # one OS process each
SLOT_S = 0.08  # between consecutive sends across all processes: far below the quiet window
SETTLE_S = QUIET_WINDOW_S + 1.5  # after the last send: the trace goes quiet, then one flush
TIMEOUT_S = 30.0
SEED = 20240917

USER = "alice@example.com"
PLANNER = "agent-planner-7"
CLERK = "agent-order-clerk-3"

SPAN_IDS = {
    "portal": 0x1A00000000000001,
    "planner": 0x2B00000000000002,
    "chat": 0x3C00000000000003,
    "clerk": 0x4D00000000000004,
    "tool": 0x5E00000000000005,
    "mcp_client": 0x6F00000000000006,
    "mcp_server": 0x7A00000000000007,
    "token_exchange": 0x8B00000000000008,
    "gw_client": 0x9C00000000000009,
    "gw_server": 0xAD0000000000000A,
    "orders": 0xBE0000000000000B,
    "db_delete": 0xCF0000000000000C,
    "kafka_send": 0xD00000000000000D,
}
# The spans with a chain. `gw_client` is an unsafe HTTP call too, but its server side is in the
# trace, so its effect is the one traced further down (the DB delete), not a chain of its own.
EFFECTS = {"token_exchange", "db_delete", "kafka_send"}


def hex16(span_id: int) -> str:
    return format(span_id, "016x")


def hex_id(label: str) -> str:
    return hex16(SPAN_IDS[label])


# -- the trace -------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_jwt(claims: dict) -> str:
    """A well-formed HS256 JWT (signed with a test secret idtrail does not know)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = hmac.new(b"idtrail-test-secret", signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def build_trace(base_ns: int) -> tuple[list[dict], dict[str, str]]:
    """The spans, parents first, as JSON-able specs; and the two raw tokens."""
    now_s = base_ns // 1_000_000_000
    user_jwt = hs256_jwt(
        {
            "iss": "https://idp.example.com",
            "sub": USER,
            "aud": "https://api.example.com",
            "client_id": "agent-portal",
            "scope": "orders:read orders:write",
            "iat": now_s - 600,
            "exp": now_s + 3000,
            "auth_time": now_s - 700,
            "amr": ["pwd", "mfa"],
            "jti": "jti-user-0001",
        }
    )
    exchanged_jwt = hs256_jwt(
        {
            "iss": "https://idp.example.com",
            "sub": USER,
            "aud": "https://orders.example.com",
            "client_id": CLERK,
            "scope": "orders:write",
            "iat": now_s - 1,
            "exp": now_s + 3599,
            "jti": "jti-xchg-0002",
            "act": {"sub": CLERK, "act": {"sub": PLANNER}},
            "may_act": {"sub": PLANNER},
        }
    )
    ms = 1_000_000

    def span(label, parent, service, name, kind, start_ms, end_ms, attributes):
        return {
            "label": label,
            "span_id": SPAN_IDS[label],
            "parent_id": SPAN_IDS[parent] if parent else None,
            "service": service,
            "name": name,
            "kind": kind,
            "start": base_ns + start_ms * ms,
            "end": base_ns + end_ms * ms,
            "attributes": attributes,
        }

    def http_server(method, route, path, host, status):
        return {
            "http.request.method": method,
            "http.route": route,
            "url.path": path,
            "url.scheme": "https",
            "server.address": host,
            "server.port": 443,
            "network.protocol.version": "1.1",
            "http.response.status_code": status,
        }

    def http_client(method, template, host, url, status):
        return {
            "http.request.method": method,
            "url.template": template,
            "server.address": host,
            "server.port": 443,
            "url.full": url,
            "http.response.status_code": status,
        }

    mcp = {
        "mcp.method.name": "tools/call",
        "mcp.session.id": "3f9c2a7d41e84b1c",
        "mcp.protocol.version": "2025-06-18",
        "gen_ai.tool.name": "cancel_order",
        "gen_ai.operation.name": "execute_tool",
        "jsonrpc.request.id": "17",
        "network.transport": "tcp",
        "network.protocol.name": "http",
    }
    agent = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.conversation.id": "conv_q8Zr2LmX0pTf6Wb1Yd4K",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
    }
    user_bearer = ["Bearer " + user_jwt]
    xchg_bearer = ["Bearer " + exchanged_jwt]
    spans = [
        span("portal", None, "agent-portal", "POST /v1/runs", "server", 0, 2400,
             {**http_server("POST", "/v1/runs", "/v1/runs", "portal.example.com", 200),
              "client.address": "10.12.3.4",
              "user.id": USER,
              "user.roles": ["support", "orders-admin"],
              "session.id": "sess-7HqN2vB9kLm4Xc8R",
              "http.request.header.authorization": user_bearer}),
        span("planner", "portal", "planner-agent", "invoke_agent planner", "internal", 20, 2350,
             {**agent, "gen_ai.agent.id": PLANNER, "gen_ai.agent.name": "planner"}),
        span("chat", "planner", "planner-agent", "chat gpt-4o", "client", 40, 420,
             {"gen_ai.operation.name": "chat",
              "gen_ai.provider.name": "openai",
              "gen_ai.request.model": "gpt-4o",
              "gen_ai.usage.input_tokens": 1834,
              "gen_ai.usage.output_tokens": 212,
              "gen_ai.response.finish_reasons": ["tool_calls"],
              "server.address": "api.openai.com",
              "server.port": 443}),
        span("clerk", "planner", "order-clerk-agent", "invoke_agent order-clerk", "internal",
             450, 2300,
             {**agent, "gen_ai.agent.id": CLERK, "gen_ai.agent.name": "order-clerk"}),
        span("tool", "clerk", "order-clerk-agent", "execute_tool cancel_order", "internal",
             480, 2250,
             {"gen_ai.operation.name": "execute_tool",
              "gen_ai.tool.name": "cancel_order",
              "gen_ai.tool.call.id": "call_Xr4pQ9sT2vW8yZ1a",
              "gen_ai.tool.type": "extension"}),
        span("mcp_client", "tool", "order-clerk-agent", "tools/call cancel_order", "client",
             500, 2200,
             {**mcp, "server.address": "mcp-orders.ai.svc.cluster.local", "server.port": 8080,
              "http.request.header.authorization": user_bearer}),
        span("mcp_server", "mcp_client", "mcp-orders", "tools/call cancel_order", "server",
             520, 2180,
             {**mcp, "client.address": "10.12.7.21",
              "http.request.header.authorization": user_bearer}),
        span("token_exchange", "mcp_server", "mcp-orders", "POST /oauth2/token", "client",
             540, 700,
             http_client("POST", "/oauth2/token", "idp.example.com",
                         "https://idp.example.com/oauth2/token", 200)),
        span("gw_client", "mcp_server", "mcp-orders", "DELETE /orders/{id}", "client",
             720, 2150,
             {**http_client("DELETE", "/orders/{id}", "gateway.example.com",
                            "https://gateway.example.com/orders/4821937", 204),
              "http.request.header.authorization": xchg_bearer}),
        span("gw_server", "gw_client", "api-gateway", "DELETE /orders/{id}", "server",
             740, 2130,
             {**http_server("DELETE", "/orders/{id}", "/orders/4821937",
                            "gateway.example.com", 204),
              "client.address": "10.12.7.21",
              "kong.consumer": CLERK,
              "http.request.header.authorization": xchg_bearer}),
        span("orders", "gw_server", "orders-service", "DELETE /orders/{id}", "server", 800, 2100,
             {**http_server("DELETE", "/orders/{id}", "/orders/4821937",
                            "orders.shop.svc.cluster.local", 204),
              "client.address": "10.12.9.2",
              "app.order_id": "4821937"}),
        span("db_delete", "orders", "orders-service", "DELETE orders", "client", 850, 1300,
             {"db.system.name": "postgresql",
              "db.operation.name": "DELETE",
              "db.namespace": "orders",
              "db.collection.name": "orders",
              "db.query.text": "DELETE FROM orders WHERE id = $1",
              "server.address": "orders-db.shop.svc.cluster.local",
              "server.port": 5432}),
        span("kafka_send", "orders", "orders-service", "send order-events", "producer",
             1400, 1450,
             {"messaging.system": "kafka",
              "messaging.operation.type": "send",
              "messaging.operation.name": "send",
              "messaging.destination.name": "order-events",
              "messaging.kafka.message.key": "order-4821937",
              "messaging.message.id": "0c5e7a4e-61f1-4f3e-9a55-1c2d3e4f5a6b",
              "server.address": "kafka-0.platform.svc.cluster.local",
              "server.port": 9092}),
    ]
    assert {s["label"] for s in spans} == set(SPAN_IDS)
    service = {s["span_id"]: s["service"] for s in spans}
    for s in spans:  # a parent in another service came over the wire
        s["parent_remote"] = s["parent_id"] is not None and service[s["parent_id"]] != s["service"]
    return spans, {"user": user_jwt, "exchanged": exchanged_jwt}


# -- sending ---------------------------------------------------------------------------------

KINDS = {
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "internal": SpanKind.INTERNAL,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
SCOPE = InstrumentationScope("idtrail.tests.stitch", "1.0.0")


def readable_span(spec: dict) -> ReadableSpan:
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(TRACE_ID, spec["span_id"], is_remote=False, trace_flags=flags)
    parent = None
    if spec["parent_id"] is not None:
        parent = SpanContext(
            TRACE_ID, spec["parent_id"], is_remote=spec["parent_remote"], trace_flags=flags
        )
    resource = Resource.create(
        {
            "service.name": spec["service"],
            "service.namespace": "shop",
            "k8s.cluster.name": "prod-eu-1",
        }
    )
    return ReadableSpan(
        name=spec["name"],
        context=context,
        parent=parent,
        resource=resource,
        attributes={
            k: tuple(v) if isinstance(v, list) else v for k, v in spec["attributes"].items()
        },
        kind=KINDS[spec["kind"]],
        instrumentation_scope=SCOPE,
        start_time=spec["start"],
        end_time=spec["end"],
    )


def make_exporter(protocol: str, endpoint: str):
    if protocol == "grpc":
        return GrpcSpanExporter(endpoint=endpoint, insecure=True, timeout=10)
    return HttpSpanExporter(endpoint=endpoint, timeout=10)


def sender_main() -> int:
    """One sender process. stdin: a JSON line {protocol, endpoint, sends: [[offset_s, spec]]};
    prints `ready`, then waits for `go <t0>` and exports each span alone at t0 + offset."""
    job = json.loads(sys.stdin.readline())
    exporter = make_exporter(job["protocol"], job["endpoint"])
    sends = [(offset, readable_span(spec)) for offset, spec in job["sends"]]
    print("ready", flush=True)
    t0 = float(sys.stdin.readline().split()[1])
    results = []
    for offset, span in sends:
        time.sleep(max(0.0, t0 + offset - time.time()))
        started = time.time()
        result = exporter.export([span])
        span_id = hex16(span.context.span_id)
        results.append([span_id, str(result), started, time.time()])
    exporter.shutdown()
    print(json.dumps(results), flush=True)
    ok = all(r == str(SpanExportResult.SUCCESS) for _, r, _, _ in results)
    return 0 if ok else 1


def shuffled_schedule(specs: list[dict], seed: int) -> list[tuple[int, float, dict]]:
    """(sender, offset, span): deepest spans first, shuffled within a depth, so every child is
    sent before its parent; consecutive sends alternate between the senders."""
    rng = random.Random(seed)
    by_id = {s["span_id"]: s for s in specs}

    def depth(s):
        return 0 if s["parent_id"] is None else 1 + depth(by_id[s["parent_id"]])

    order = sorted(specs, key=lambda s: (-depth(s), rng.random()))
    return [(k % len(SENDERS), k * SLOT_S, s) for k, s in enumerate(order)]


def send_shuffled(server, specs: list[dict], seed: int) -> float:
    """Sends through three sender processes on the schedule; returns when the last send ended.
    Fails if the sends, as they really happened, left a gap as long as the quiet window (the
    machine stalled: the trace would legitimately be stitched in parts, with revisions)."""
    schedule = shuffled_schedule(specs, seed)
    procs = []
    sends = {}  # span id -> (export started, export acknowledged), wall clock
    try:
        for n, protocol in enumerate(SENDERS):
            endpoint = server.grpc_endpoint if protocol == "grpc" else server.traces_url
            job = {
                "protocol": protocol,
                "endpoint": endpoint,
                "sends": [[offset, s] for who, offset, s in schedule if who == n],
            }
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "send"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=HERE,
            )
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            procs.append(proc)
        for n, proc in enumerate(procs):  # every exporter built before the first send
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(f"sender {n} did not start: {line!r}\n{err}")
        t0 = time.time() + 0.2
        for proc in procs:
            proc.stdin.write(f"go {t0}\n")
            proc.stdin.flush()
        for n, proc in enumerate(procs):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"sender {n} ({SENDERS[n]}) failed:\n{out}\n{err}"
            sent = json.loads(out.strip().splitlines()[-1])
            expected = [hex16(s["span_id"]) for who, _, s in schedule if who == n]
            assert [sid for sid, _, _, _ in sent] == expected
            sends.update({sid: (started, acked) for sid, _, started, acked in sent})
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    acked = sorted(a for _, a in sends.values())
    gap = max(b - a for a, b in zip(acked, acked[1:]))
    assert gap < 0.8 * QUIET_WINDOW_S, (
        f"senders stalled {gap:.2f}s between two acknowledged spans (quiet window "
        f"{QUIET_WINDOW_S}s): too slow a machine for this test, not a stitcher failure"
    )
    # Children really arrived before their parents (acknowledged before the parent's export).
    pairs = [(hex16(s["span_id"]), hex16(s["parent_id"])) for s in specs if s["parent_id"]]
    early = sum(sends[child][1] < sends[parent][0] for child, parent in pairs)
    assert early >= len(pairs) // 2, f"only {early} of {len(pairs)} children arrived first"
    return time.monotonic()


def send_ordered(server, specs: list[dict]) -> float:
    exporter = make_exporter("grpc", server.grpc_endpoint)
    try:
        result = exporter.export([readable_span(s) for s in specs])
    finally:
        exporter.shutdown()
    assert result == SpanExportResult.SUCCESS
    return time.monotonic()


# -- reading ---------------------------------------------------------------------------------


def table_rows(data_dir: Path, table: str, order_by: str) -> list[dict]:
    pattern = str(Path(data_dir) / table / "**" / "*.parquet").replace("'", "''")
    con = duckdb.connect()
    try:
        cur = con.execute(
            f"SELECT * FROM read_parquet('{pattern}', hive_partitioning=true) ORDER BY {order_by}"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    except duckdb.IOException as e:
        if "No files found" in str(e):
            return []
        raise
    finally:
        con.close()


EDGE_ORDER = "src_kind, src_id, relation, dst_kind, dst_id"


def settled(server, sent_at: float, n_chains: int) -> tuple[list[dict], list[dict]]:
    """Chains and edges once the trace has gone quiet and been published: waits SETTLE_S past
    the last send (an early, partial stitch would have written rows by then that a later
    revision changes) and until `n_chains` chain rows are visible."""
    deadline = sent_at + TIMEOUT_S
    time.sleep(max(0.0, sent_at + SETTLE_S - time.monotonic()))
    while True:
        chains = table_rows(server.data_dir, "chains", "effect_span_id, revision")
        edges = table_rows(server.data_dir, "edges", EDGE_ORDER)
        if len(chains) >= n_chains and edges:
            return chains, edges
        if time.monotonic() > deadline:
            raise AssertionError(
                f"expected {n_chains} chains and some edges within {TIMEOUT_S}s, got "
                f"{len(chains)} chains, {len(edges)} edges; log:\n{server.log_text()}"
            )
        time.sleep(0.1)


def diff_rows(a: list[dict], b: list[dict], key) -> str:
    lines = []
    ka, kb = {key(r): r for r in a}, {key(r): r for r in b}
    for k in sorted(set(ka) | set(kb), key=str):
        ra, rb = ka.get(k), kb.get(k)
        if ra != rb:
            if ra is None or rb is None:
                lines.append(f"{k}: ordered={ra!r}\n    shuffled={rb!r}")
                continue
            for col in ra:
                if ra[col] != rb.get(col):
                    lines.append(f"{k}.{col}: ordered={ra[col]!r} shuffled={rb.get(col)!r}")
    return "\n".join(lines)


# -- the test --------------------------------------------------------------------------------


def test_shuffled_multi_process_send_gives_same_chains(tmp_path):
    base_ns = (time.time_ns() // 1_000_000 - 60_000) * 1_000_000
    specs, tokens = build_trace(base_ns)
    key_dir = tmp_path / "keys"
    for d in (key_dir, tmp_path / "ordered", tmp_path / "shuffled"):
        d.mkdir()
    key_file = key_dir / "shared-fp.key"  # one key: fingerprints comparable across servers

    ordered = start_server(tmp_path / "ordered", extra_args=SERVER_ARGS, key_file=key_file)
    shuffled = None
    try:
        shuffled = start_server(tmp_path / "shuffled", extra_args=SERVER_ARGS, key_file=key_file)

        # Every child is sent before its parent, across three processes.
        schedule = shuffled_schedule(specs, SEED)
        position = {s["span_id"]: k for k, (_, _, s) in enumerate(schedule)}
        assert all(
            position[s["span_id"]] < position[s["parent_id"]] for s in specs if s["parent_id"]
        )
        assert {who for who, _, _ in schedule} == {0, 1, 2}

        ordered_sent = send_ordered(ordered, specs)
        shuffled_sent = send_shuffled(shuffled, specs, SEED)

        a_chains, a_edges = settled(ordered, ordered_sent, len(EFFECTS))
        b_chains, b_edges = settled(shuffled, shuffled_sent, len(EFFECTS))
        # Every span stored once on both sides.
        for server in (ordered, shuffled):
            rows = wait_for_rows(server.data_dir, len(specs))
            assert sorted(r["span_id"] for r in rows) == sorted(map(hex_id, SPAN_IDS))

        # What the ordered send gives, in absolute terms (so equality below is not vacuous).
        assert [c["effect_span_id"] for c in a_chains] == sorted(map(hex_id, EFFECTS))
        assert all(c["revision"] == 1 for c in a_chains)
        by_effect = {c["effect_span_id"]: c for c in a_chains}
        db = by_effect[hex_id("db_delete")]
        assert db["trace_id"] == format(TRACE_ID, "032x")
        assert (db["effect_kind"], db["effect_operation"], db["effect_target"]) == (
            "db", "DELETE", "orders.orders",
        )
        assert db["effect_is_write"] is True
        assert db["effect_service"] == "orders-service"
        assert db["user_id"] == USER
        # The portal's session or a nearer one (the MCP session): the stitcher's choice, as long
        # as both runs agree.
        assert db["session_id"] in ("3f9c2a7d41e84b1c", "sess-7HqN2vB9kLm4Xc8R")
        assert db["agents"] == [PLANNER, CLERK], "outermost first"
        assert db["tool_name"] == "cancel_order"
        assert db["tool_call_id"] == "call_Xr4pQ9sT2vW8yZ1a"
        assert db["attributed"] is True
        assert db["consumer_class"] == "ai_agent"
        assert "user" not in db["missing"]
        assert db["missing"] == [], db["missing"]
        assert db["credential_kind"] == "jwt"
        assert db["credential_fp"].startswith("k"), db["credential_fp"]
        assert db["token_actors"] == [CLERK, PLANNER], "current actor first"
        assert db["token_scopes"] == ["orders:write"]
        # The chain passes both credentials, the user's then the exchanged one (presented last).
        path_credentials = [n["id"] for n in db["path"] if n["kind"] == "credential"]
        assert len(path_credentials) == 2 and path_credentials[-1] == db["credential_fp"]
        assert all(fp.startswith("k") for fp in path_credentials)
        assert [n["kind"] for n in db["path"]][:3] == ["user", "agent", "agent"]
        assert db["path"][-1]["kind"] == "resource" and db["path"][-1]["id"] == "db:orders.orders"
        hop_ids = [h["span_id"] for h in db["api_hops"]]
        assert hex_id("gw_server") in hop_ids and hex_id("orders") in hop_ids
        assert hex_id("gw_client") not in hop_ids, "a call is counted once, at its server side"
        kafka = by_effect[hex_id("kafka_send")]
        assert (kafka["effect_kind"], kafka["effect_target"]) == ("messaging", "order-events")
        assert kafka["user_id"] == USER and kafka["agents"] == [PLANNER, CLERK]

        # No raw token anywhere in chains or edges (fingerprints only).
        text = repr(a_chains) + repr(a_edges) + repr(b_chains) + repr(b_edges)
        for jwt in tokens.values():
            for part in jwt.split("."):
                assert part not in text

        # Edges: a real lineage graph, not a trivial one.
        relations = {e["relation"] for e in a_edges}
        assert {"initiated", "acts_for", "presented", "invoked", "affected"} <= relations, relations
        assert any(
            e["relation"] == "derived_from" and e["src_id"] == db["credential_fp"]
            for e in a_edges
        ), "the exchanged token derives from the user's"

        # The point: shuffled, multi-process arrival gives exactly the same rows.
        assert b_chains == a_chains, "chains differ (ordered vs shuffled):\n" + diff_rows(
            a_chains, b_chains, key=lambda r: (r["effect_span_id"], r["revision"])
        )

        def edge_key(e):
            return tuple(e[k] for k in ("src_kind", "src_id", "relation", "dst_kind", "dst_id"))

        def edge_set(edges):
            return {edge_key(e) + (e["count"],) for e in edges}

        assert edge_set(b_edges) == edge_set(a_edges), "edges differ:\n" + diff_rows(
            a_edges, b_edges, key=edge_key
        )
        assert b_edges == a_edges, "edge rows differ:\n" + diff_rows(a_edges, b_edges, edge_key)

        shuffled.stop()
        ordered.stop()
    finally:
        if shuffled is not None:
            _teardown(shuffled)
        _teardown(ordered)


if __name__ == "__main__":
    if sys.argv[1:] == ["send"]:
        sys.exit(sender_main())
    sys.exit(f"usage: {sys.argv[0]} send")
