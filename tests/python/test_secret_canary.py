"""Secret canaries: unique secrets planted everywhere a client can put one (headers, keys,
passwords, span names, status messages, resource attributes, URLs, events, the export
request's own headers, rejected spans, malformed requests) over OTLP/gRPC and OTLP/HTTP JSON. None of them may reach any file the
collector writes (Parquet, WAL, anything else under the data directory or beside the key file)
or its log; the fingerprints that replace them must be there, so the test cannot pass vacuously.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from pathlib import Path

import duckdb
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from conftest import b64url, make_jwt, query_spans, wait_for_rows

FP = r"k[0-9a-f]{8}:[0-9a-f]{32}"
FP_RE = re.compile(rf"^{FP}$")


def canary(label: str) -> str:
    return f"canary-{label}-{secrets.token_hex(12)}"


class Canaries:
    """One protocol's planted secrets, and every form of them that must never be stored."""

    def __init__(self, protocol: str):
        p = protocol
        self.opaque_bearer = canary(f"{p}-bearer")
        self.api_key = canary(f"{p}-apikey")
        self.db_password = canary(f"{p}-dbpass")
        self.name_token = canary(f"{p}-name")
        self.resource_token = canary(f"{p}-res")
        self.url_password = canary(f"{p}-urlpass")
        self.url_signature = canary(f"{p}-urlsig")
        self.event_token = canary(f"{p}-event")
        self.export_auth = canary(f"{p}-exportauth")
        self.basic_password = canary(f"{p}-basicpw")
        self.malformed = canary(f"{p}-malformed")
        self.rejected = canary(f"{p}-rejected")
        # A JWT whose signature and one (dropped) claim are unique to this test.
        self.jwt_signature = b64url(secrets.token_bytes(48))
        self.jwt_nonce = canary(f"{p}-nonce")
        now = int(time.time())
        self.jwt = make_jwt(
            {
                "iss": "https://idp.example.com",
                "sub": "carol",
                "client_id": "shop-web",
                "scope": "orders:read",
                "jti": f"jti-{p}-{secrets.token_hex(6)}",
                "iat": now,
                "exp": now + 600,
                "auth_time": now - 5,
                "nonce": self.jwt_nonce,
            },
            signature=self.jwt_signature,
        )
        self.jwt_payload = self.jwt.split(".")[1]
        self.url = (
            f"https://svc-user:{self.url_password}@files.example.com/p/report.csv"
            f"?X-Amz-Signature={self.url_signature}&region=eu"
        )
        self.basic = base64.b64encode(f"svc-user:{self.basic_password}".encode()).decode()

    def forbidden(self) -> dict[str, bytes]:
        """label -> bytes that must appear nowhere."""
        items = {
            "opaque bearer token": self.opaque_bearer,
            "x-api-key": self.api_key,
            "db.password": self.db_password,
            "token in span name": self.name_token,
            "resource app.secret_token": self.resource_token,
            "url.full password": self.url_password,
            "url.full X-Amz-Signature": self.url_signature,
            "token in event": self.event_token,
            "basic password": self.basic_password,
            "basic credentials (base64)": self.basic,
            "JWT": self.jwt,
            "JWT signature": self.jwt_signature,
            "JWT payload (base64url)": self.jwt_payload,
            "JWT dropped claim": self.jwt_nonce,
            "exporter's own Authorization header": self.export_auth,
        }
        return {k: v.encode() for k, v in items.items()}


class RecordingExporter(SpanExporter):
    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()


def send_grpc(server, c: Canaries) -> int:
    """The canaries through the SDK's OTLP/gRPC exporter; returns the number of spans sent."""
    resource = Resource.create(
        {"service.name": "canary-grpc", "app.secret_token": c.resource_token}
    )
    provider = TracerProvider(resource=resource)
    recorder = RecordingExporter(
        OTLPSpanExporter(
            endpoint=server.grpc_endpoint,
            insecure=True,
            timeout=10,
            # Credentials for the collector itself (gRPC metadata): not span data, never stored.
            headers={"authorization": f"Bearer {c.export_auth}"},
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(recorder))
    tracer = provider.get_tracer("canary")
    with tracer.start_as_current_span(
        "POST /v1/orders",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "POST",
            "http.request.header.authorization": ["Bearer " + c.jwt],
            "url.full": c.url,
        },
    ) as root:
        root.add_event("exception", {"exception.message": f"upstream said Bearer {c.event_token}"})
        with tracer.start_as_current_span(
            f"retry with Bearer {c.name_token}",
            kind=SpanKind.CLIENT,
            attributes={"http.request.header.x-api-key": c.api_key},
        ) as span:
            span.set_status(Status(StatusCode.ERROR, f"token {c.jwt} expired"))
        with tracer.start_as_current_span(
            "SELECT orders",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": "SELECT",
                "db.password": c.db_password,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "call inventory",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.header.authorization": f"Bearer {c.opaque_bearer}",
                "http.request.header.proxy-authorization": f"Basic {c.basic}",
            },
        ):
            pass
    provider.shutdown()
    assert len(recorder.results) == 4
    assert all(r == SpanExportResult.SUCCESS for r in recorder.results), recorder.results
    return 4


def s(v: str) -> dict:
    return {"stringValue": v}


def kv(key: str, value: dict) -> dict:
    return {"key": key, "value": value}


def json_span(trace_id, span_id, name, kind, attributes, parent="", status=None, events=None):
    start = time.time_ns()
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": kind,  # OTLP/JSON: the enum as an integer
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 1_500_000),
        "attributes": attributes,
    }
    if status:
        span["status"] = status
    if events:
        span["events"] = events
    return span


def send_json(server, c: Canaries) -> tuple[int, list[str]]:
    """The canaries as a hand-written OTLP/JSON request; returns (spans stored, response texts)."""
    trace_id = secrets.token_hex(16)
    ids = [secrets.token_hex(8) for _ in range(4)]
    spans = [
        json_span(
            trace_id, ids[0], "POST /v1/orders", 2,
            [
                kv("http.request.method", s("POST")),
                kv("http.response.status_code", {"intValue": "401"}),
                kv("http.request.header.authorization", {"arrayValue": {"values": [s("Bearer " + c.jwt)]}}),
                kv("url.full", s(c.url)),
            ],
            events=[{
                "timeUnixNano": str(time.time_ns()),
                "name": "exception",
                "attributes": [kv("exception.message", s(f"upstream said Bearer {c.event_token}"))],
            }],
        ),
        json_span(
            trace_id, ids[1], f"retry with Bearer {c.name_token}", 3,
            [kv("http.request.header.x-api-key", s(c.api_key))],
            parent=ids[0],
            status={"code": 2, "message": f"token {c.jwt} expired"},
        ),
        json_span(
            trace_id, ids[2], "SELECT orders", 3,
            [
                kv("db.system.name", s("postgresql")),
                kv("db.operation.name", s("SELECT")),
                kv("db.password", s(c.db_password)),
            ],
            parent=ids[0],
        ),
        json_span(
            trace_id, ids[3], "call inventory", 3,
            [
                # A header map as a kvlist: flattened to http.request.header.<name>.
                kv("http.request.header", {"kvlistValue": {"values": [
                    kv("authorization", s(f"Bearer {c.opaque_bearer}")),
                    kv("proxy-authorization", s(f"Basic {c.basic}")),
                ]}}),
            ],
            parent=ids[0],
        ),
        # Invalid (all-zero trace id): rejected, and its name must not be stored or logged.
        json_span("0" * 32, secrets.token_hex(8), f"bad span Bearer {c.rejected}", 1, []),
    ]
    body = {
        "resourceSpans": [{
            "resource": {"attributes": [
                kv("service.name", s("canary-json")),
                kv("app.secret_token", s(c.resource_token)),
            ]},
            "scopeSpans": [{"scope": {"name": "canary-json", "version": "1"}, "spans": spans}],
        }]
    }
    texts = []
    r = requests.post(
        server.traces_url, json=body, timeout=10,
        headers={"Authorization": f"Bearer {c.export_auth}"},
    )
    texts.append(r.text)
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    partial = r.json().get("partialSuccess") or {}
    assert int(partial.get("rejectedSpans", 0)) == 1, r.text

    # Malformed requests carrying a canary: refused with 400, the canary echoed nowhere.
    bad_bodies = [
        # Truncated JSON.
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"Bearer ' + c.malformed + '"',
        # Valid JSON, wrong types (a number where a string belongs, the canary in the value).
        json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": c.malformed, "spanId": 7, "name": ["Bearer " + c.malformed]}
        ]}]}]}),
        # Not JSON at all.
        "Authorization: Bearer " + c.malformed,
    ]
    for bad in bad_bodies:
        r = requests.post(
            server.traces_url, data=bad.encode(),
            headers={"Content-Type": "application/json"}, timeout=10,
        )
        texts.append(r.text)
        assert r.status_code == 400, (r.status_code, r.text)
    return 4, texts


def scan_bytes(blob: bytes, forbidden: dict[str, bytes]) -> list[str]:
    return [label for label, secret in forbidden.items() if secret in blob]


def scan_tree(root: Path, forbidden: dict[str, bytes], skip: set[Path] = frozenset()) -> tuple[list[str], int]:
    """(leaks as 'label in path', number of files read) for every file under root."""
    leaks, files = [], 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path in skip:
            continue
        try:
            blob = path.read_bytes()
        except FileNotFoundError:  # a temp file published or a segment retired meanwhile
            continue
        files += 1
        leaks += [f"{label} in {path}" for label in scan_bytes(blob, forbidden)]
    return leaks, files


def scan_table(data_dir: Path, forbidden: dict[str, bytes]) -> list[str]:
    """Parquet pages are zstd-compressed, so a byte grep cannot see their values: read every
    column of every row (and the files' key-value metadata) back through DuckDB as well."""
    text = json.dumps(query_spans(data_dir), default=str)
    con = duckdb.connect()
    try:
        glob = str(data_dir / "spans" / "**" / "*.parquet").replace("'", "''")
        meta = con.execute(f"SELECT * FROM parquet_kv_metadata('{glob}')").fetchall()
        stats = con.execute(
            f"SELECT stats_min_value, stats_max_value, stats_min, stats_max FROM parquet_metadata('{glob}')"
        ).fetchall()
    finally:
        con.close()
    blob = text.encode() + repr(meta).encode() + repr(stats).encode()
    return [f"{label} in Parquet values/metadata" for label in scan_bytes(blob, forbidden)]


def test_secret_canaries_never_persisted_or_logged(idtrail_debug):
    server = idtrail_debug
    grpc_c = Canaries("grpc")
    json_c = Canaries("json")
    forbidden = {f"grpc {k}": v for k, v in grpc_c.forbidden().items()}
    forbidden |= {f"json {k}": v for k, v in json_c.forbidden().items()}
    forbidden["json malformed request"] = json_c.malformed.encode()
    forbidden["json rejected span"] = json_c.rejected.encode()

    sent = send_grpc(server, grpc_c)
    stored, responses = send_json(server, json_c)
    rows = wait_for_rows(server.data_dir, sent + stored)
    assert len(rows) == sent + stored

    # The responses and /metrics echo nothing either.
    leaks = [f"{label} in an HTTP response" for label in scan_bytes("\n".join(responses).encode(), forbidden)]
    leaks += [f"{label} in /metrics" for label in scan_bytes(server.metrics().encode(), forbidden)]

    # --- The data arrived, fingerprinted (so the scans below are not vacuous). ---
    fingerprints = []
    for service, c in (("canary-grpc", grpc_c), ("canary-json", json_c)):
        mine = {r["name"]: r for r in rows if r["service_name"] == service}
        assert len(mine) == 4, (service, sorted(mine))
        root = mine["POST /v1/orders"]
        assert root["credential_kind"] == "jwt", root
        assert FP_RE.match(root["credential_fp"])
        fingerprints.append(root["credential_fp"].encode())
        assert root["token_sub"] == "carol" and root["user_id"] == "carol"
        attrs = dict(root["attributes"])
        assert json.loads(attrs["http.request.header.authorization"]) == [root["credential_fp"]]
        assert re.fullmatch(
            rf"https://svc-user:{FP}@files\.example\.com/p/report\.csv\?X-Amz-Signature={FP}&region=eu",
            attrs["url.full"].replace("%3A", ":"),
        ), attrs["url.full"]
        assert dict(root["resource_attributes"])["app.secret_token"] != c.resource_token
        assert FP_RE.match(dict(root["resource_attributes"])["app.secret_token"])

        retry = next(r for n, r in mine.items() if n.startswith("retry with Bearer "))
        assert re.fullmatch(rf"retry with Bearer {FP}", retry["name"]), retry["name"]
        assert retry["status_code"] == "error"
        assert re.fullmatch(rf"token {FP} expired", retry["status_message"]), retry["status_message"]
        # The same JWT in the status message fingerprints like the header's.
        assert retry["status_message"] == f"token {root['credential_fp']} expired"
        # (credential_kind here is 'jwt': the JWT quoted in the status message outranks the
        # x-api-key header, as secrets outside Authorization are ranked by kind alone.)
        assert FP_RE.match(dict(retry["attributes"])["http.request.header.x-api-key"])

        db = mine["SELECT orders"]
        assert FP_RE.match(dict(db["attributes"])["db.password"])
        assert db["credential_attr"] == "db.password"
        assert db["credential_kind"] == "basic"

        call = mine["call inventory"]
        assert call["credential_kind"] == "bearer"
        assert call["credential_attr"] == "http.request.header.authorization"
        assert FP_RE.match(dict(call["attributes"])["http.request.header.proxy-authorization"])

    # The same JWT planted over gRPC and JSON were different tokens: different fingerprints;
    # each protocol's copies fingerprint alike (checked above).
    assert grpc_c.jwt != json_c.jwt

    # The stitcher copies credential fingerprints, users and targets into chains and edges:
    # wait for them, so their files are scanned too.
    deadline = time.monotonic() + 30
    while not all(list((server.data_dir / t).rglob("*.parquet")) for t in ("chains", "edges")):
        assert time.monotonic() < deadline, "no chains or edges were written"
        time.sleep(0.2)

    # --- Scan while running (WAL segments may be retired after publication) ... ---
    key_dir = server.key_file.parent
    running_leaks, running_files = scan_tree(server.data_dir, forbidden)
    wal_files = [p for p in (server.data_dir / "wal").rglob("*") if p.is_file()]
    assert wal_files, "no WAL segment to scan"
    wal_blob = b"".join(p.read_bytes() for p in wal_files)
    assert all(fp in wal_blob for fp in fingerprints), (
        "the WAL does not hold the spans (its scan would be vacuous)"
    )
    leaks += running_leaks

    # --- ... and after a clean shutdown. ---
    server.stop()
    stopped_leaks, stopped_files = scan_tree(server.data_dir, forbidden)
    leaks += stopped_leaks
    key_leaks, _ = scan_tree(key_dir, forbidden, skip={server.key_file})
    leaks += key_leaks
    leaks += scan_table(server.data_dir, forbidden)
    log = server.log_path.read_bytes()
    assert log.strip(), "the server log is empty"
    assert b"idtrail ready" in log
    leaks += [f"{label} in the server log" for label in scan_bytes(log, forbidden)]
    assert running_files >= 2 and stopped_files >= 2, (running_files, stopped_files)

    assert not sorted(set(leaks)), "secrets leaked:\n" + "\n".join(sorted(set(leaks)))


# --- Regressions: secrets the first canary run found stored in the clear. ---


def _export_json(server, spans: list[dict], resource_attrs: list[dict] | None = None) -> None:
    body = {"resourceSpans": [{
        "resource": {"attributes": [kv("service.name", s("canary-bugs"))] + (resource_attrs or [])},
        "scopeSpans": [{"scope": {"name": "canary-bugs"}, "spans": spans}],
    }]}
    r = requests.post(server.traces_url, json=body, timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)


def test_bytes_valued_secret_is_fingerprinted(idtrail, tmp_path):
    key = secrets.token_bytes(24)
    encoded = base64.b64encode(key).decode()
    _export_json(idtrail, [json_span(
        secrets.token_hex(16), secrets.token_hex(8), "call payments", 3,
        [kv("app.api_key", {"bytesValue": encoded})],
    )])
    row = wait_for_rows(idtrail.data_dir, 1)[0]
    idtrail.stop()
    stored = dict(row["attributes"]).get("app.api_key")
    # Observed: stored == base64(key), credential_fp NULL.
    assert stored != encoded, f"app.api_key stored in the clear: {stored!r}"
    assert FP_RE.match(stored or "")


def test_jwt_at_end_of_sentence_is_scrubbed(idtrail):
    sig = b64url(secrets.token_bytes(32))
    jwt = make_jwt({"sub": "dave", "iat": int(time.time())}, signature=sig)
    _export_json(idtrail, [json_span(
        secrets.token_hex(16), secrets.token_hex(8), f"rejected {jwt}.", 2,
        [kv("exception.message", s(f"invalid token: {jwt}."))],
        status={"code": 2, "message": f"invalid token: {jwt}."},
    )])
    row = wait_for_rows(idtrail.data_dir, 1)[0]
    idtrail.stop()
    # Observed: name, status_message and exception.message all keep the JWT verbatim.
    stored = json.dumps(row, default=str)
    assert sig not in stored, f"JWT stored in the clear: {row['status_message']!r}"
