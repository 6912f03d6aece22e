"""The query layer over an S3 bucket instead of a local directory (ADR 7).

The tables come from a real run (`idtrail demo`: OTLP through the collector, stitched chains
and edges) and are uploaded with boto3 to moto's S3 server, an S3 implementation nobody here
wrote. `idtrail query`, `idtrail findings` and the lineage functions then read
`s3://bucket/prefix` with the AWS SDK's own environment variables, and must give exactly the
answers they give over the local directory. Files uploaded while a session is open are in its
next query; a missing bucket is a clear error naming the URL; the secret access key appears in
no output.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from conftest import free_ports, idtrail_bin

BUCKET = "idtrail-evidence"
PREFIX = "prod/eu-1"
TABLES = ("spans", "chains", "edges")
# Planted in the environment as the AWS secret: no output may ever hold it.
SECRET_ACCESS_KEY = "wJalrXUtnFEMI-canary-" + secrets.token_hex(12)

QUERIES = {
    "spans per service": "SELECT service_name, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1",
    "side effects": (
        "SELECT effect_kind, count(*) AS n, count(DISTINCT user_id) AS users "
        "FROM chains_latest GROUP BY 1 ORDER BY 1"
    ),
    "edges per kind": "SELECT relation, count(*) AS n, sum(count) AS uses FROM edges GROUP BY 1 ORDER BY 1",
    # A pruned partition read: the time bound becomes date/hour predicates on the listing.
    "recent spans": (
        "SELECT count(*) AS n FROM spans "
        "WHERE start_time >= (SELECT max(start_time) FROM spans) - INTERVAL '1 second'"
    ),
}


@pytest.fixture(scope="module")
def demo_tables(tmp_path_factory) -> Path:
    """The demo's directory: its config (owners, grants) and the tables it stored."""
    directory = tmp_path_factory.mktemp("object-store") / "idtrail-demo"
    run = subprocess.run(
        [str(idtrail_bin()), "demo", "--dir", str(directory), "--seconds", "2", "--rate", "1000"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"idtrail demo failed:\n{run.stdout}\n{run.stderr}"
    for table in TABLES:
        assert list((directory / "data" / table).rglob("*.parquet")), f"the demo wrote no {table}"
    return directory


@pytest.fixture(scope="module")
def s3(demo_tables):
    """moto's S3 server on a free port, the demo's tables uploaded under BUCKET/PREFIX, and the
    environment the AWS SDKs (and object_store) read."""
    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIAIDTRAILTEST",
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    client.create_bucket(Bucket=BUCKET)
    data = demo_tables / "data"
    for table in TABLES:
        for path in sorted((data / table).rglob("*.parquet")):
            client.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(data).as_posix()}")
    try:
        yield client, env
    finally:
        server.stop()


def idtrail(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(idtrail_bin()), *args], capture_output=True, text=True, timeout=300, env=full_env, **kwargs
    )


def query_json(demo_tables: Path, location: str, sql: str, env=None) -> list[dict]:
    run = idtrail(
        ["query", "-c", str(demo_tables / "idtrail.yaml"), "--data-dir", location, "--format", "json", sql],
        env,
    )
    assert run.returncode == 0, f"{location}: {sql}\n{run.stderr}"
    assert SECRET_ACCESS_KEY not in run.stdout + run.stderr
    return json.loads(run.stdout)


def s3_url() -> str:
    return f"s3://{BUCKET}/{PREFIX}"


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_bucket_answers_as_the_local_directory(demo_tables, s3, name):
    _, env = s3
    local = query_json(demo_tables, str(demo_tables / "data"), QUERIES[name])
    remote = query_json(demo_tables, s3_url(), QUERIES[name], env)
    assert local, f"{name}: no rows over the local directory"
    assert remote == local


def test_lineage_functions_and_findings_read_the_bucket(demo_tables, s3):
    """The lineage graph (blast_radius, chain_of) is built from the bucket's edges and chains,
    and every detection rule runs over it."""
    _, env = s3
    local_dir = str(demo_tables / "data")
    busiest = query_json(
        demo_tables, local_dir,
        "SELECT credential_fp FROM chains_latest WHERE credential_fp IS NOT NULL "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
    )[0]["credential_fp"]
    effect = query_json(
        demo_tables, local_dir,
        "SELECT trace_id, effect_span_id FROM chains_latest ORDER BY time DESC, trace_id LIMIT 1",
    )[0]
    lineage = {
        "blast_radius": (
            f"SELECT kind, id, depth, reach FROM blast_radius('credential', '{busiest}', 6) "
            "ORDER BY depth, kind, id"
        ),
        "chain_of": (
            f"SELECT * FROM chain_of('{effect['trace_id']}', '{effect['effect_span_id']}') "
            "ORDER BY 1, 2, 3"
        ),
    }
    for name, sql in lineage.items():
        local = query_json(demo_tables, local_dir, sql)
        assert local, f"{name}: no rows over the local directory"
        assert query_json(demo_tables, s3_url(), sql, env) == local, name

    def findings(location: str, env=None) -> str:
        run = idtrail(
            ["findings", "-c", str(demo_tables / "idtrail.yaml"), "--data-dir", location,
             "--summary", "--format", "csv"],
            env,
        )
        assert run.returncode == 0, run.stderr
        assert SECRET_ACCESS_KEY not in run.stdout + run.stderr
        return run.stdout

    local = findings(local_dir)
    assert "unattributed_agent_write" in local
    assert findings(s3_url(), env) == local


def test_files_uploaded_during_a_session_are_in_its_next_query(demo_tables, s3):
    """One engine (the prompt, fed by a pipe) lists the bucket per query: an object put after
    the first query is counted by the second, with no restart."""
    client, env = s3
    data = demo_tables / "data"
    late_file = sorted((data / "spans").rglob("*.parquet"))[0]
    late_key = f"{PREFIX}/{late_file.parent.relative_to(data).as_posix()}/late-arrival.parquet"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full_env.update(env)
    session = subprocess.Popen(
        [str(idtrail_bin()), "query", "-i", "-c", str(demo_tables / "idtrail.yaml"),
         "--data-dir", s3_url(), "--format", "csv"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=full_env,
    )
    try:
        def count() -> int:
            session.stdin.write("SELECT count(*) AS n FROM spans;\n")
            session.stdin.flush()
            header = session.stdout.readline()
            assert header.strip() == "n", f"unexpected output {header!r}: {session.stderr.read()}"
            return int(session.stdout.readline())

        before = count()
        client.upload_file(str(late_file), BUCKET, late_key)
        after = count()
        assert after == before + pq.read_metadata(late_file).num_rows, (
            f"the object put during the session is not read ({before} → {after})"
        )
    finally:
        session.stdin.close()
        session.wait(timeout=60)
        client.delete_object(Bucket=BUCKET, Key=late_key)
    assert SECRET_ACCESS_KEY not in session.stderr.read()


def test_a_missing_bucket_is_a_clear_error_without_the_secret(demo_tables, s3):
    _, env = s3
    run = idtrail(["query", "--data-dir", "s3://no-such-bucket/tables", "SELECT count(*) FROM spans"], env)
    assert run.returncode != 0
    assert "no-such-bucket" in run.stderr and "does not exist" in run.stderr, run.stderr
    assert SECRET_ACCESS_KEY not in run.stdout + run.stderr


def test_urls_that_are_not_table_stores_are_refused(demo_tables):
    run = idtrail(["query", "--data-dir", "memory:///tables", "SELECT 1"])
    assert run.returncode != 0
    assert "memory:///tables" in run.stderr and "not a table store" in run.stderr, run.stderr
