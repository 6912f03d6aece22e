"""`idtrail export bloodhound` output, checked by a third party: bhopengraph (a Python library
for BloodHound OpenGraph files) loads it and validates every node and edge against its reading
of the OpenGraph schema (ids, at most three kinds, primitive properties, `match_by`, edge ends
that exist, no isolated node). The checks bhopengraph does not make (kind names, lowercase
property names, the source kind) are made here.

A user's request goes through an agent to a database write over OTLP/HTTP JSON, with a bearer
JWT that must not reach the export.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import requests
from bhopengraph.OpenGraph import OpenGraph

from conftest import idtrail_bin, make_jwt, start_server, _teardown

KIND = re.compile(r"^IDT_[A-Za-z0-9_]+$")
TRACE = "5b8efff798038103d269b633813fc60c"
BASE_NS = 1_795_341_600_000_000_000  # 2026-11-22T10:00:00Z


def attr(key: str, value: str) -> dict:
    return {"key": key, "value": {"stringValue": value}}


def span(span_id: str, parent: str | None, name: str, kind: int, at_ms: int, attrs: list) -> dict:
    s = {
        "traceId": TRACE,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(BASE_NS + at_ms * 1_000_000),
        "endTimeUnixNano": str(BASE_NS + (at_ms + 5) * 1_000_000),
        "attributes": attrs,
    }
    if parent:
        s["parentSpanId"] = parent
    return s


def request_body(token: str) -> dict:
    spans = [
        span("a000000000000001", None, "POST /cleanup", 2, 0, [
            attr("http.request.method", "POST"),
            attr("http.route", "/cleanup"),
            attr("user.id", "bob@example.com"),
            attr("http.request.header.authorization", f"Bearer {token}"),
        ]),
        span("a000000000000002", "a000000000000001", "invoke_agent janitor", 1, 1, [
            attr("gen_ai.operation.name", "invoke_agent"),
            attr("gen_ai.agent.id", "agt_janitor"),
        ]),
        span("a000000000000003", "a000000000000002", "DELETE shop.orders", 3, 2, [
            attr("db.system.name", "postgresql"),
            attr("db.operation.name", "DELETE"),
            attr("db.namespace", "shop"),
            attr("db.collection.name", "orders"),
        ]),
    ]
    return {
        "resourceSpans": [{
            "resource": {"attributes": [attr("service.name", "shop-api")]},
            "scopeSpans": [{"spans": spans}],
        }]
    }


def wait_for_edges(data_dir: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not list((data_dir / "edges").glob("**/*.parquet")):
        assert time.monotonic() < deadline, "no edges file was published"
        time.sleep(0.1)


def test_export_loads_and_validates_with_bhopengraph(tmp_path):
    server = start_server(tmp_path, extra_args=["--set", "stitcher.quiet_window=500ms"])
    token = make_jwt({
        "iss": "https://idp.example.com", "sub": "bob@example.com", "client_id": "shop-web",
        "scope": "orders:write", "iat": 1795341000, "exp": 1795344600,
    })
    try:
        response = requests.post(
            server.traces_url, json=request_body(token), timeout=10,
        )
        assert response.status_code == 200, response.text
        wait_for_edges(server.data_dir)
        server.stop()
    finally:
        _teardown(server)

    out = tmp_path / "opengraph.json"
    done = subprocess.run(
        [str(idtrail_bin()), "export", "bloodhound",
         "--data-dir", str(server.data_dir), "--output", str(out)],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    doc = json.loads(text)

    # bhopengraph drops what it cannot read, so the counts show it read everything.
    graph = OpenGraph()
    assert graph.import_from_file(str(out))
    assert graph.get_node_count() == len(doc["graph"]["nodes"]) > 0
    assert graph.get_edge_count() == len(doc["graph"]["edges"]) > 0
    valid, errors = graph.validate_graph()
    assert valid, errors
    assert graph.source_kind == "IDT_Base"

    for node in doc["graph"]["nodes"]:
        assert 1 <= len(node["kinds"]) <= 3
        assert all(KIND.match(k) for k in node["kinds"]), node
        assert node["id"].startswith(node["kinds"][0] + ":")
        assert {"name", "displayname"} <= node["properties"].keys()
        assert all(k == k.lower() for k in node["properties"])
    for edge in doc["graph"]["edges"]:
        assert KIND.match(edge["kind"]), edge
        assert edge["start"]["match_by"] == edge["end"]["match_by"] == "id"
        assert all(
            isinstance(v, (str, int, float, bool)) for v in edge["properties"].values()
        ), edge

    edges = {(e["start"]["value"], e["kind"], e["end"]["value"]) for e in doc["graph"]["edges"]}
    assert ("IDT_User:bob@example.com", "IDT_Initiated", "IDT_Agent:agt_janitor") in edges
    assert ("IDT_Agent:agt_janitor", "IDT_ActsFor", "IDT_User:bob@example.com") in edges
    assert any(
        kind == "IDT_Affected" and end == "IDT_Resource:db:shop.orders"
        for _, kind, end in edges
    ), edges
    # The bearer token is known only by its fingerprint.
    assert token not in text
    assert token.split(".")[2] not in text
    credentials = [n for n in doc["graph"]["nodes"] if n["kinds"][0] == "IDT_Credential"]
    assert credentials and all(n["properties"]["name"].startswith("k") for n in credentials)
