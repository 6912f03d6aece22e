"""Shared fixtures for the idtrail end-to-end tests.

Each test gets its own `idtrail serve` process on free loopback ports, with a temporary data
directory and a fingerprint key file kept outside it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]

# Every request in these tests goes to 127.0.0.1: never through a proxy from the environment
# (requests, grpc and urllib all honour no_proxy).
for _var in ("no_proxy", "NO_PROXY"):
    _current = os.environ.get(_var, "")
    os.environ[_var] = ",".join(x for x in (_current, "127.0.0.1", "localhost") if x)
# Exporter settings from the environment must not redirect or reshape the test exports.
for _var in [v for v in os.environ if v.startswith("OTEL_")]:
    del os.environ[_var]
# requests lets these override a session's own `verify` (the HTTP exporter's CA file), which
# would send the TLS tests' exports to the system trust store.
for _var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_var, None)
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
MAX_FILE_AGE = "300ms"


def idtrail_bin() -> Path:
    """The binary under test: $IDTRAIL_BIN, else <repo>/target/debug/idtrail, else
    $CARGO_TARGET_DIR/debug/idtrail."""
    explicit = os.environ.get("IDTRAIL_BIN")
    if explicit:
        return Path(explicit)
    default = REPO / "target" / "debug" / "idtrail"
    if default.exists():
        return default
    target_dir = os.environ.get("CARGO_TARGET_DIR")
    if target_dir:
        candidate = Path(target_dir) / "debug" / "idtrail"
        if candidate.exists():
            return candidate
    return default


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all sockets held open until every port is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Server:
    proc: subprocess.Popen
    grpc_port: int
    http_port: int
    data_dir: Path
    key_file: Path
    log_path: Path
    _log_file: object = field(repr=False, default=None)
    exit_code: int | None = None
    flight_port: int | None = None
    # The CA of the server's certificate when its listeners speak TLS.
    tls_ca: Path | None = None

    @property
    def grpc_endpoint(self) -> str:
        """host:port, for the gRPC exporter (with insecure=True)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def flight_uri(self) -> str:
        """Arrow Flight SQL, for ADBC's `adbc_driver_flightsql.dbapi.connect`."""
        return f"grpc://127.0.0.1:{self.flight_port}"

    @property
    def http_base(self) -> str:
        scheme = "https" if self.tls_ca else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None

    @property
    def traces_url(self) -> str:
        return f"{self.http_base}/v1/traces"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM, wait up to 20 s, assert a clean exit. Idempotent."""
        if self.exit_code is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = -9
                self._close_log()
                pytest.fail(
                    f"idtrail did not exit within {STOP_TIMEOUT_S}s of SIGTERM; log:\n{self.log_text()}"
                )
            self._close_log()
        assert self.exit_code == 0, (
            f"idtrail exited with {self.exit_code} after SIGTERM; log:\n{self.log_text()}"
        )
        return self.exit_code

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"{self.http_base}/metrics", timeout=5, context=self.ssl_context()
        ) as r:
            return r.read().decode()


def _ready(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def start_server(
    tmp_path: Path,
    attempts: int = 3,
    rust_log: str | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    key_file: Path | None = None,
    tls_ca: Path | None = None,
) -> Server:
    """Starts `idtrail serve` with its data in `tmp_path`. `extra_args` are appended to the
    command line (e.g. `--set stitcher.quiet_window=1s`); `key_file` lets several servers share
    one fingerprint key (default: a new one in `tmp_path/keys`); `tls_ca` is the CA to trust
    when `extra_args` turn TLS on."""
    binary = idtrail_bin()
    if not binary.exists():
        pytest.fail(
            f"idtrail binary not found at {binary}: build it with `cargo build` or set IDTRAIL_BIN"
        )
    data_dir = tmp_path / "data"
    if key_file is None:
        key_dir = tmp_path / "keys"
        key_dir.mkdir(exist_ok=True)
        key_file = key_dir / "fp.key"
    last_error = ""
    for attempt in range(attempts):
        # Flight SQL gets a free port too: its default (50051) would collide between servers.
        grpc_port, http_port, flight_port = free_ports(3)
        log_path = tmp_path / f"idtrail-{attempt}.log"
        log_file = open(log_path, "wb")
        env = dict(os.environ)
        env.pop("RUST_LOG", None)
        if rust_log:
            env["RUST_LOG"] = rust_log
        proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--data-dir", str(data_dir),
                "--grpc-address", f"127.0.0.1:{grpc_port}",
                "--http-address", f"127.0.0.1:{http_port}",
                "--key-file", str(key_file),
                "--set", f"writer.max_file_age={MAX_FILE_AGE}",
                "--set", f"query.flight_sql_address=127.0.0.1:{flight_port}",
                *extra_args,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        server = Server(
            proc, grpc_port, http_port, data_dir, key_file, log_path, log_file,
            flight_port=flight_port, tls_ca=tls_ca,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _ready(f"{server.http_base}/readyz", server.ssl_context()):
                return server
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            log_file.close()
            pytest.fail(f"idtrail not ready within {READY_TIMEOUT_S}s; log:\n{server.log_text()}")
        log_file.close()
        # Exited early: most likely a port taken between choosing and binding; try again.
        last_error = server.log_text()
    pytest.fail(f"idtrail failed to start {attempts} times; last log:\n{last_error}")


def _teardown(server: Server) -> None:
    """Stops a server the test did not stop itself (without asserting on its exit)."""
    if server.exit_code is None:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
        server._close_log()


@pytest.fixture
def idtrail(tmp_path):
    """A running `idtrail serve` (default log level), stopped after the test."""
    server = start_server(tmp_path)
    try:
        yield server
    finally:
        _teardown(server)


@pytest.fixture
def idtrail_debug(tmp_path):
    """Like `idtrail`, logging at debug level (more log text that could leak a secret), and
    stitching after 1 s of quiet so chains and edges files exist to be scanned too."""
    server = start_server(
        tmp_path,
        rust_log="debug",
        extra_args=["--set", "stitcher.quiet_window=1s", "--set", "writer.max_file_age=200ms"],
    )
    try:
        yield server
    finally:
        _teardown(server)


def spans_glob(data_dir: Path) -> str:
    return str(Path(data_dir) / "spans" / "**" / "*.parquet")


def _read_parquet_sql(data_dir: Path) -> str:
    quoted = spans_glob(data_dir).replace("'", "''")
    return f"read_parquet('{quoted}', hive_partitioning=true)"


def query_spans(data_dir: Path, sql_tail: str = "", params=None) -> list[dict]:
    """Rows of the spans table as dicts: `SELECT * FROM spans <sql_tail>`."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW spans AS SELECT * FROM {_read_parquet_sql(data_dir)}")
        cur = con.execute(f"SELECT * FROM spans {sql_tail}", params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    finally:
        con.close()


def _count(data_dir: Path) -> int:
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT count(*) FROM {_read_parquet_sql(data_dir)}").fetchone()[0]
    except duckdb.IOException as e:  # "No files found that match the pattern"
        if "No files found" in str(e):
            return 0
        raise
    finally:
        con.close()


def sql(data_dir: Path, query: str) -> list[tuple]:
    """Runs `query` with a `spans` view over the published files."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW spans AS SELECT * FROM {_read_parquet_sql(data_dir)}")
        return con.execute(query).fetchall()
    finally:
        con.close()


def wait_for_rows(data_dir: Path, n: int, timeout: float = 15.0) -> list[dict]:
    """Polls until DuckDB sees at least `n` span rows; returns them all."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        seen = _count(data_dir)
        if seen >= n:
            return query_spans(data_dir)
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {n} span rows within {timeout}s, DuckDB sees {seen}")
        time.sleep(0.1)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict, signature: str | None = None) -> str:
    """A compact JWS with the given claims and a fake (random unless given) signature."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "test-key-1"}
    sig = signature if signature is not None else b64url(secrets.token_bytes(64))
    return ".".join(
        [
            b64url(json.dumps(header, separators=(",", ":")).encode()),
            b64url(json.dumps(claims, separators=(",", ":")).encode()),
            sig,
        ]
    )


def hex_trace_id(ctx) -> str:
    return format(ctx.trace_id, "032x")


def hex_span_id(ctx) -> str:
    return format(ctx.span_id, "016x")
