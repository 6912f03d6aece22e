"""TLS and mTLS on every listener, checked with clients nobody here wrote: the OpenTelemetry
SDK's gRPC and HTTP exporters, the ADBC Flight SQL driver, requests and Python's ssl module.

One CA signs the server certificate and the exporter's client certificate (a SPIFFE id in its
URI SAN); a second, untrusted CA signs a rogue client. The server runs with
`receivers.tls` and `query.tls` both set to mTLS and reloads its files every 200 ms.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import grpc
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from conftest import _count, _teardown, start_server, wait_for_rows
from test_otel_sdk_exporters import flush, make_provider

EXPORTER_ID = "spiffe://idtrail.test/ns/otel/sa/exporter"


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    _ca_key: object
    _ca_cert: object

    def reissue_server_certificate(self) -> int:
        """Writes a new server certificate and key in place (as a rotation would, each file
        replaced atomically); returns the new serial."""
        key, cert = _issue(self._ca_key, self._ca_cert, "idtrail rotated", server=True)
        _write(self.server_key.with_suffix(".tmp"), _key_pem(key))
        os.replace(self.server_key.with_suffix(".tmp"), self.server_key)
        _write(self.server_cert.with_suffix(".tmp"), _cert_pem(cert))
        os.replace(self.server_cert.with_suffix(".tmp"), self.server_cert)
        return cert.serial_number


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(ca_key, ca_cert, cn: str, *, server: bool = False, uri: str | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    else:
        names = [x509.UniformResourceIdentifier(uri)] if uri else []
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # OpenSSL 3's strict verification (Python 3.13's default) wants the issuer's key id.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def pki(tmp_path) -> Pki:
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca_cert = _ca("idtrail test CA")
    server_key, server_cert = _issue(ca_key, ca_cert, "idtrail", server=True)
    client_key, client_cert = _issue(ca_key, ca_cert, "otel-exporter", uri=EXPORTER_ID)
    rogue_ca_key, rogue_ca_cert = _ca("someone else's CA")
    rogue_key, rogue_cert = _issue(rogue_ca_key, rogue_ca_cert, "rogue", uri=EXPORTER_ID)
    return Pki(
        ca=_write(d / "ca.pem", _cert_pem(ca_cert)),
        server_cert=_write(d / "server.pem", _cert_pem(server_cert)),
        server_key=_write(d / "server.key", _key_pem(server_key)),
        client_cert=_write(d / "client.pem", _cert_pem(client_cert)),
        client_key=_write(d / "client.key", _key_pem(client_key)),
        rogue_cert=_write(d / "rogue.pem", _cert_pem(rogue_cert)),
        rogue_key=_write(d / "rogue.key", _key_pem(rogue_key)),
        _ca_key=ca_key,
        _ca_cert=ca_cert,
    )


@pytest.fixture
def mtls_server(tmp_path, pki):
    args = []
    for section in ("receivers", "query"):
        args += [
            "--set", f"{section}.tls.cert_file={pki.server_cert}",
            "--set", f"{section}.tls.key_file={pki.server_key}",
            "--set", f"{section}.tls.client_ca_file={pki.ca}",
            "--set", f"{section}.tls.reload_interval=200ms",
        ]
    server = start_server(tmp_path, extra_args=args, tls_ca=pki.ca)
    try:
        yield server
    finally:
        _teardown(server)


def _grpc_credentials(pki: Pki, with_client_certificate: bool = True):
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if with_client_certificate else None,
        certificate_chain=pki.client_cert.read_bytes() if with_client_certificate else None,
    )


def _flight(server, pki: Pki, with_client_certificate: bool = True):
    options = {adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value: pki.ca.read_text()}
    if with_client_certificate:
        options[adbc_driver_flightsql.DatabaseOptions.MTLS_CERT_CHAIN.value] = (
            pki.client_cert.read_text()
        )
        options[adbc_driver_flightsql.DatabaseOptions.MTLS_PRIVATE_KEY.value] = (
            pki.client_key.read_text()
        )
    return flight_sql.connect(f"grpc+tls://127.0.0.1:{server.flight_port}", db_kwargs=options)


def _http_exporter(server, pki: Pki) -> HttpSpanExporter:
    """The SDK's OTLP/HTTP exporter with the test CA and the exporter's client certificate."""
    return HttpSpanExporter(
        endpoint=f"{server.http_base}/v1/traces",
        certificate_file=str(pki.ca),
        client_certificate_file=str(pki.client_cert),
        client_key_file=str(pki.client_key),
        timeout=10,
    )


def _export_request() -> bytes:
    """One valid span, as an OTLP/HTTP protobuf body."""
    from opentelemetry.proto.trace.v1 import trace_pb2

    span = trace_pb2.Span(
        trace_id=os.urandom(16), span_id=os.urandom(8), name="raw",
        start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns(),
    )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    )
    return request.SerializeToString()


def test_sdk_exporters_over_mtls_record_the_client_identity(mtls_server, pki):
    """Both SDK exporters export over mTLS; every span records the certificate's SPIFFE id;
    Flight SQL (ADBC) and POST /v1/query answer over mTLS too."""
    server = mtls_server
    grpc_exporter = GrpcSpanExporter(
        endpoint=f"https://127.0.0.1:{server.grpc_port}",
        credentials=_grpc_credentials(pki),
        timeout=10,
    )
    http_exporter = _http_exporter(server, pki)
    for service, exporter in (("svc-grpc", grpc_exporter), ("svc-http", http_exporter)):
        provider, recorder = make_provider(exporter, service=service)
        with provider.get_tracer("t").start_as_current_span("work", kind=SpanKind.SERVER):
            pass
        flush(provider, recorder, 1)
        assert recorder.results == [SpanExportResult.SUCCESS]

    rows = wait_for_rows(server.data_dir, 2)
    assert sorted((r["service_name"], r["ingest_principal"]) for r in rows) == [
        ("svc-grpc", f"mtls:{EXPORTER_ID}"),
        ("svc-http", f"mtls:{EXPORTER_ID}"),
    ]

    with _flight(server, pki) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT ingest_principal, count(*) AS n FROM spans WHERE service_name LIKE ? "
            "GROUP BY ingest_principal",
            parameters=("svc-%",),
        )
        assert cur.fetch_arrow_table().to_pylist() == [
            {"ingest_principal": f"mtls:{EXPORTER_ID}", "n": 2}
        ]

    answer = requests.post(
        f"{server.http_base}/v1/query",
        json={"sql": "SELECT count(*) AS n FROM spans"},
        verify=str(pki.ca),
        cert=(str(pki.client_cert), str(pki.client_key)),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [{"n": 2}]
    server.stop()


def test_missing_or_untrusted_client_certificates_are_refused(mtls_server, pki):
    """Without a client certificate: UNAUTHENTICATED / 401 on every endpoint (exporters do not
    retry those). With one from another CA, or without TLS at all: no connection. Nothing of
    it is stored; health probes need no certificate."""
    server = mtls_server
    body = _export_request()
    headers = {"Content-Type": "application/x-protobuf"}

    no_cert = requests.post(
        f"{server.http_base}/v1/traces", data=body, headers=headers, verify=str(pki.ca), timeout=10
    )
    assert no_cert.status_code == 401, no_cert.text
    no_cert_query = requests.post(
        f"{server.http_base}/v1/query", json={"sql": "SELECT 1"}, verify=str(pki.ca), timeout=10
    )
    assert no_cert_query.status_code == 401, no_cert_query.text
    assert "client certificate" in no_cert_query.json()["error"]

    channel = grpc.secure_channel(
        f"127.0.0.1:{server.grpc_port}", _grpc_credentials(pki, with_client_certificate=False)
    )
    with channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Export(trace_service_pb2.ExportTraceServiceRequest.FromString(body), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "client certificate" in refused.value.details()

    with pytest.raises(adbc_driver_manager.Error) as flight_refused:
        with _flight(server, pki, with_client_certificate=False) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
    assert "unauthenticated" in str(flight_refused.value).lower()

    with pytest.raises(requests.exceptions.SSLError):
        requests.post(
            f"{server.http_base}/v1/traces", data=body, headers=headers, verify=str(pki.ca),
            cert=(str(pki.rogue_cert), str(pki.rogue_key)), timeout=10,
        )
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(
            f"http://127.0.0.1:{server.http_port}/v1/traces", data=body, headers=headers,
            timeout=10,
        )
    assert requests.get(f"{server.http_base}/readyz", verify=str(pki.ca), timeout=5).ok

    time.sleep(1)  # a few flush periods: anything accepted would be published by now
    assert _count(server.data_dir) == 0
    server.stop()


def _handshake(port: int, ca: Path, maximum: ssl.TLSVersion, minimum=None) -> tuple[str, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    context.maximum_version = maximum
    if minimum is not None:
        context.minimum_version = minimum
        # Let OpenSSL offer the old versions at all, so any refusal is the server's.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), tls.getpeercert(binary_form=True)


def test_tls_1_2_is_the_floor(mtls_server, pki):
    for port in (mtls_server.grpc_port, mtls_server.http_port, mtls_server.flight_port):
        assert _handshake(port, pki.ca, ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
        assert _handshake(port, pki.ca, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
        with pytest.raises(ssl.SSLError) as old:
            _handshake(port, pki.ca, ssl.TLSVersion.TLSv1_1, minimum=ssl.TLSVersion.TLSv1)
        reason = str(old.value)
        if "NO_PROTOCOLS_AVAILABLE" in reason or "UNSUPPORTED_PROTOCOL" in reason:
            pytest.skip(f"this OpenSSL cannot offer TLS 1.1 at all ({reason})")
        # An alert received from the server (rustls answers handshake_failure), not a
        # client-side refusal.
        assert "ALERT" in reason.upper(), reason
    mtls_server.stop()


def test_certificates_reload_without_a_restart(mtls_server, pki):
    """A rotated certificate is served to new connections within the reload interval; a
    half-written one is ignored (the previous stays) until the files are whole again."""
    server = mtls_server

    def serial(port: int) -> int:
        der = _handshake(port, pki.ca, ssl.TLSVersion.TLSv1_3)[1]
        return x509.load_der_x509_certificate(der).serial_number

    def wait_for_serial(expected: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(serial(p) == expected for p in (server.grpc_port, server.http_port,
                                                   server.flight_port)):
                return
            time.sleep(0.1)
        pytest.fail(f"certificate serial {expected} not served within 10 s")

    original = serial(server.http_port)
    rotated = pki.reissue_server_certificate()
    assert rotated != original
    wait_for_serial(rotated)

    # A torn rotation: the certificate file is garbage for a while.
    pki.server_cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    time.sleep(1)  # five reload periods
    assert serial(server.http_port) == rotated
    assert "TLS files changed but do not load" in server.log_text()

    again = pki.reissue_server_certificate()
    wait_for_serial(again)

    # Exports work across the rotations.
    provider, recorder = make_provider(_http_exporter(server, pki), service="after-rotation")
    with provider.get_tracer("t").start_as_current_span("work", kind=SpanKind.SERVER):
        pass
    flush(provider, recorder, 1)
    assert recorder.results == [SpanExportResult.SUCCESS]
    server.stop()
