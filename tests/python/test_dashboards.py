"""The Grafana dashboards in dashboards/json run against a real `idtrail serve`.

A store is filled through real OTLP (`idtrail gen`, with the stitcher's windows shortened so
chains and edges are written within seconds). Then the SQL of every panel (and of every query
variable) of every dashboard is expanded the way Grafana and the InfluxData Flight SQL datasource
plugin (`influxdata-flightsql-datasource`) expand it, sent through the ADBC Flight SQL driver,
and the answer is checked against what the panel needs: the columns named in EXPECTED with
their broad types, the columns its field overrides, sort and bar-chart x field name, the
`time` column a time-series query must return (sorted, as the plugin's long-to-wide conversion
requires), only Arrow types the plugin converts to Grafana fields, and rows where the generated
traffic must produce some.

How a panel's SQL becomes a query (facts from the plugin's and Grafana's sources):

1. Grafana's frontend: the plugin's `applyTemplateVariables` runs `getTemplateSrv().replace(
   queryText, scopedVars, interpolateVariable)` (src/datasource.ts). A single-valued variable is
   inserted as its value with `'` doubled (the SQL supplies the quotes); a multi-value or
   include-All variable becomes `'v1','v2',…`. Grafana's own `${__from:date:iso}` is the range
   start as an ISO 8601 string with milliseconds.
2. The plugin's backend (pkg/flightsql/query_data.go `decodeQueryRequest`) reads `queryText`,
   `format` (`time_series` or `table`) and `intervalMs`, then `sqlutil.Interpolate(query,
   macros)` from grafana-plugin-sdk-go (data/sqlutil/macros.go) with the plugin's macros
   (pkg/flightsql/macro.go):
   - `$__timeFilter(col)` (SDK default) → `col >= '<from>' AND col <= '<to>'`, RFC 3339 UTC,
     whole seconds;
   - `$__dateBin(col)` → `date_bin(interval '<interval s> second', col,
     timestamp '1970-01-01T00:00:00Z')`; `$__dateBinAlias(col)` adds ` as col_binned`;
   - `$__interval` → `interval '<interval s> second'`.
   `$__timeFrom`/`$__timeTo`/`$__timeGroup` expand differently from one plugin version to the
   next (a bare `cast('…' as timestamp)` or a `col >= '…'` condition; `datepart` lists), so the
   dashboards do not use them and this test refuses them.
3. Format `time_series` (pkg/flightsql/arrow.go `newQueryDataResponse`): the frame must have a
   field named `time`, and a long frame (time, string labels, numbers) goes through
   `data.LongToWide`, which needs rows sorted by time. Arrow types are converted by `newField`:
   utf8, (u)int8-64, float32/64, bool, timestamp, date32/64 (decimal becomes a string); anything
   else (utf8 view, large utf8, lists, structs, maps) is filled with nulls.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pytest

from conftest import REPO, _teardown, idtrail_bin, start_server

DASHBOARDS = REPO / "dashboards" / "json"
PROVISIONING = REPO / "dashboards" / "provisioning"
DATASOURCE_TYPE = "influxdata-flightsql-datasource"
DATASOURCE_UID = "idtrail-flightsql"
# The interval Grafana would send: range / max data points, rounded; any value works for the
# SQL, a fixed one keeps the expanded queries reproducible.
INTERVAL = timedelta(seconds=10)
GEN_SECONDS = 4
GEN_RATE = 2000

# ------------------------------------------------------------------------------------------
# What each panel must return: column name → broad type (time, string, number, bool), in
# order; `rows` says whether the generated traffic must produce at least one row. Every panel
# of every dashboard needs an entry (a new panel without one fails), and an entry without a
# panel fails too.
T, S, N, B = "time", "string", "number", "bool"
EXPECTED: dict[tuple[str, int], dict] = {
    # identity activity
    ("idtrail-identity-activity", 1): {"columns": {"spans": N, "users": N, "agents": N, "workloads": N,
                                                   "credentials": N, "writes": N}, "rows": True},
    ("idtrail-identity-activity", 2): {"columns": {"time": T, "user_id": S, "spans": N}, "rows": True},
    ("idtrail-identity-activity", 3): {"columns": {"time": T, "agent": S, "actions": N}, "rows": True},
    ("idtrail-identity-activity", 4): {"columns": {"time": T, "credential": S, "spans": N}, "rows": True},
    ("idtrail-identity-activity", 5): {"columns": {"time": T, "credential_kind": S, "spans": N}, "rows": True},
    ("idtrail-identity-activity", 6): {"columns": {"service_name": S, "spans": N, "traces": N, "users": N,
                                                   "agents": N, "credentials": N, "writes": N, "errors": N},
                                       "rows": True},
    # lineage coverage
    ("idtrail-lineage-coverage", 1): {"columns": {"action_coverage": N, "write_coverage": N,
                                                  "untraceable_actions": N, "untraceable_writes": N}, "rows": True},
    ("idtrail-lineage-coverage", 2): {"columns": {"time": T, "action_coverage": N, "write_coverage": N},
                                      "rows": True},
    ("idtrail-lineage-coverage", 3): {"columns": {"time": T, "agent": S, "action_coverage": N}, "rows": True},
    ("idtrail-lineage-coverage", 4): {"columns": {"agent": S, "traceable_writes": N, "untraceable_writes": N},
                                      "rows": True},
    ("idtrail-lineage-coverage", 5): {"columns": {"agent": S, "actions": N, "traceable_actions": N, "writes": N,
                                                  "traceable_writes": N, "untraceable_writes": N,
                                                  "action_coverage": N, "write_coverage": N}, "rows": True},
    # blast radius
    ("idtrail-blast-radius", 1): {"columns": {"credential": S, "credential_kind": S, "resources": N,
                                              "operations": N, "derived_credentials": N,
                                              "potential_resources": N, "granted_unused": N, "calls": N,
                                              "last_seen": T}, "rows": True},
    ("idtrail-blast-radius", 2): {"columns": {"resource": S, "credentials": N}, "rows": True},
    ("idtrail-blast-radius", 3): {"columns": {"kind": S, "observed": N, "potential": N}, "rows": True},
    ("idtrail-blast-radius", 4): {"columns": {"depth": N, "kind": S, "id": S, "reach": S, "relation": S,
                                              "granted": B, "last_seen": T, "count": N, "path": S},
                                  "rows": True},
    # findings (the `findings` view)
    ("idtrail-findings", 1): {"columns": {"critical": N, "high": N, "medium": N, "low": N}, "rows": True},
    ("idtrail-findings", 2): {"columns": {"time": T, "severity": S, "findings": N}, "rows": True},
    ("idtrail-findings", 3): {"columns": {"time": T, "owasp_nhi": S, "findings": N}, "rows": True},
    ("idtrail-findings", 4): {"columns": {"rule_id": S, "title": S, "severity": S, "owasp_nhi": S,
                                          "findings": N, "subjects": N, "last_seen": T}, "rows": True},
    ("idtrail-findings", 5): {"columns": {"time": T, "severity": S, "owasp_nhi": S, "rule_id": S, "title": S,
                                          "subject_kind": S, "subject_id": S, "detail": S, "trace_id": S,
                                          "span_id": S}, "rows": True},
    # privilege duration
    ("idtrail-privilege-duration", 1): {"columns": {"credentials": N, "with_lifetime": N, "median_lifetime": N,
                                                    "median_observed": N, "longest_lifetime": N}, "rows": True},
    ("idtrail-privilege-duration", 2): {"columns": {"time": T, "credential_kind": S, "credentials": N},
                                        "rows": True},
    ("idtrail-privilege-duration", 3): {"columns": {"lifetime": S, "credentials": N, "spans": N}, "rows": True},
    ("idtrail-privilege-duration", 4): {"columns": {"credential_kind": S, "credentials": N, "avg_lifetime": N,
                                                    "avg_observed": N, "spans": N}, "rows": True},
    ("idtrail-privilege-duration", 5): {"columns": {"credential_fp": S, "credential_kind": S, "issuer": S,
                                                    "subject": S, "lifetime_seconds": N, "observed_seconds": N,
                                                    "unused_seconds": N, "used_share": N, "spans": N,
                                                    "issued_at": T, "expires_at": T, "first_used": T,
                                                    "last_used": T}, "rows": True},
}
# Query variables: (dashboard uid, variable name) → must list at least one value.
EXPECTED_VARIABLES = {("idtrail-blast-radius", "credential")}
# Views a dashboard needs that are built elsewhere; a panel failing because one is missing says so.
PENDING_VIEWS = {"findings"}


# ------------------------------------------------------------------------------------------
# Expansion, as Grafana's frontend and the plugin's backend do it.

@dataclass
class TimeRange:
    start: datetime
    end: datetime


def _rfc3339(t: datetime) -> str:
    """Go's `time.RFC3339` of a UTC time: whole seconds, `Z`."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(t: datetime) -> str:
    """JavaScript's `toISOString()` (Grafana's `:date:iso`): milliseconds, `Z`."""
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _macro_args(sql: str, start: int) -> tuple[list[str] | None, int]:
    """The bracketed argument list right after a macro name (sqlutil `parseArgs`): the
    arguments split at top-level commas and trimmed, and its length; (None, 0) without one."""
    if not sql.startswith("(", start):
        return None, 0
    depth, args, current = 0, [], ""
    for i in range(start, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return args, i + 1 - start
        elif ch == "," and depth == 1:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    raise AssertionError(f"macro arguments without a closing bracket in {sql!r}")


def _date_bin(column: str, interval: timedelta) -> str:
    return f"date_bin(interval '{int(interval.total_seconds())} second', {column}, timestamp '1970-01-01T00:00:00Z')"


def _one_arg(name: str, args: list[str] | None) -> str:
    assert args is not None and len(args) == 1, f"$__{name} takes exactly one argument, got {args}"
    return args[0]


# The macros the dashboards may use, with the plugin's expansions.
MACROS = {
    "timeFilter": lambda args, r, iv: (
        f"{_one_arg('timeFilter', args)} >= '{_rfc3339(r.start)}' AND {args[0]} <= '{_rfc3339(r.end)}'"
    ),
    "dateBinAlias": lambda args, r, iv: f"{_date_bin(_one_arg('dateBinAlias', args), iv)} as {args[0]}_binned",
    "dateBin": lambda args, r, iv: _date_bin(_one_arg("dateBin", args), iv),
    "interval": lambda args, r, iv: f"interval '{int(iv.total_seconds())} second'",
}
# Macros whose expansion differs between plugin versions (see the module docstring).
UNPORTABLE_MACROS = ("timeFrom", "timeTo", "timeGroup", "timeGroupAlias", "timeRange", "timeRangeFrom",
                     "timeRangeTo", "interval_ms", "table", "column")


def expand_macros(sql: str, time_range: TimeRange, interval: timedelta) -> str:
    """sqlutil.Interpolate with the plugin's macros: longest names first, each occurrence
    (`$__name` at a word boundary, with its bracketed arguments) replaced everywhere."""
    for name in UNPORTABLE_MACROS:
        assert not re.search(rf"\$__{name}\b", sql), (
            f"$__{name} expands differently across plugin versions; use $__timeFilter / $__dateBin:\n{sql}"
        )
    for name in sorted(MACROS, key=len, reverse=True):
        pattern = re.compile(rf"\$__{name}\b")
        while (m := pattern.search(sql)) is not None:
            args, length = _macro_args(sql, m.end())
            full = sql[m.start(): m.end() + length]
            sql = sql.replace(full, MACROS[name](args, time_range, interval))
    assert "$__" not in sql, f"an unknown macro is left in the query:\n{sql}"
    return sql


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variables(sql: str, variables: dict, time_range: TimeRange) -> str:
    """`getTemplateSrv().replace(queryText, scopedVars, interpolateVariable)` for the variable
    forms the dashboards use: `$name`, `${name}` and Grafana's `${__from:date:iso}` /
    `${__to:date:iso}`. `variables` maps a name to (values, multi_or_all)."""
    builtins = {"__from:date:iso": _iso_ms(time_range.start), "__to:date:iso": _iso_ms(time_range.end)}

    def replace(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        if name.startswith("__"):
            return m.group(0)  # a macro, for the backend
        assert name in variables, f"query uses ${name}, which is no variable of the dashboard"
        values, multi = variables[name]
        if multi:
            return ",".join(_quote(v) for v in values)
        return values[0].replace("'", "''")

    return re.sub(r"\$\{([\w:]+)\}|\$(\w+)", replace, sql)


# ------------------------------------------------------------------------------------------
# The dashboards.

def load_dashboards() -> list[dict]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, f"no dashboard JSON in {DASHBOARDS}"
    return [json.loads(f.read_text()) for f in files]


def all_panels() -> list[tuple[dict, dict]]:
    out = []
    for dashboard in load_dashboards():
        for panel in dashboard["panels"]:
            if panel.get("type") == "row":
                out.extend((dashboard, p) for p in panel.get("panels", []))
            else:
                out.append((dashboard, panel))
    return out


PANELS = all_panels()


def test_dashboards_are_well_formed():
    uids = set()
    for dashboard in load_dashboards():
        uid = dashboard["uid"]
        assert uid not in uids, f"duplicate dashboard uid {uid}"
        uids.add(uid)
        assert dashboard["schemaVersion"] >= 39, uid
        ids = [p["id"] for d, p in PANELS if d["uid"] == uid]
        assert len(ids) == len(set(ids)), f"{uid}: duplicate panel ids {ids}"
    for dashboard, panel in PANELS:
        where = f"{dashboard['uid']} panel {panel['id']} ({panel['title']})"
        assert panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}, where
        assert len(panel["targets"]) == 1, where
        target = panel["targets"][0]
        assert target["datasource"] == panel["datasource"], where
        # The plugin reads the SQL from `queryText` and the shape from `format`.
        assert target["queryText"].strip(), where
        expected_format = "time_series" if panel["type"] == "timeseries" else "table"
        assert target["format"] == expected_format, where
        assert target.get("rawEditor") is True, f"{where}: raw SQL needs the raw editor"
    for dashboard in load_dashboards():
        for var in dashboard.get("templating", {}).get("list", []):
            if var["type"] == "query":
                assert var["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}


def test_every_panel_has_an_expectation():
    panels = {(d["uid"], p["id"]) for d, p in PANELS}
    assert panels - EXPECTED.keys() == set(), "panels without an entry in EXPECTED"
    assert EXPECTED.keys() - panels == set(), "EXPECTED entries without a panel"
    variables = {(d["uid"], v["name"]) for d in load_dashboards()
                 for v in d.get("templating", {}).get("list", []) if v["type"] == "query"}
    assert variables == EXPECTED_VARIABLES


def test_provisioning_matches_dashboards():
    # A line-level read (no YAML parser among the test dependencies): the datasource the panels
    # name is the one provisioned, and the dashboard provider reads a folder.
    text = (PROVISIONING / "datasources" / "idtrail.yaml").read_text()
    assert re.search(rf"^\s*uid:\s*{DATASOURCE_UID}\s*$", text, re.M)
    assert re.search(rf"^\s*type:\s*{DATASOURCE_TYPE}\s*$", text, re.M)
    assert re.search(r"^\s*host:\s*127\.0\.0\.1:50051\s*$", text, re.M)
    assert re.search(r"^\s*secure:\s*false\s*$", text, re.M)
    assert re.search(r"^\s*token:\s*\$\{IDTRAIL_QUERY_KEY\}\s*$", text, re.M)
    providers = (PROVISIONING / "dashboards" / "idtrail.yaml").read_text()
    assert re.search(r"^\s*type:\s*file\s*$", providers, re.M)
    assert re.search(r"^\s*path:\s*/\S+", providers, re.M)


def test_macro_expansion_matches_the_plugin():
    # The cases of the plugin's pkg/flightsql/macro_test.go (range 2023-01-01T00:00:00Z + 10 min,
    # interval 10 s) and the SDK's behaviour of expanding every occurrence.
    r = TimeRange(datetime(2023, 1, 1, tzinfo=timezone.utc), datetime(2023, 1, 1, 0, 10, tzinfo=timezone.utc))
    iv = timedelta(seconds=10)
    cases = {
        "select * from x": "select * from x",
        "select date_bin($__interval, time, timestamp '1970-01-01T00:00:00Z')":
            "select date_bin(interval '10 second', time, timestamp '1970-01-01T00:00:00Z')",
        "select $__dateBin(time)": "select date_bin(interval '10 second', time, timestamp '1970-01-01T00:00:00Z')",
        "select $__dateBinAlias(time)":
            "select date_bin(interval '10 second', time, timestamp '1970-01-01T00:00:00Z') as time_binned",
        "select * from x where $__timeFilter(time)":
            "select * from x where time >= '2023-01-01T00:00:00Z' AND time <= '2023-01-01T00:10:00Z'",
        "where $__timeFilter(a) or $__timeFilter(CAST(b AS TIMESTAMP))":
            "where a >= '2023-01-01T00:00:00Z' AND a <= '2023-01-01T00:10:00Z' or "
            "CAST(b AS TIMESTAMP) >= '2023-01-01T00:00:00Z' AND CAST(b AS TIMESTAMP) <= '2023-01-01T00:10:00Z'",
    }
    for raw, expanded in cases.items():
        assert expand_macros(raw, r, iv) == expanded
    with pytest.raises(AssertionError):
        expand_macros("select $__timeFrom(time)", r, iv)
    assert interpolate_variables("x = '$v' AND y IN ($m) AND t > '${__from:date:iso}'",
                                 {"v": (["it's"], False), "m": (["a", "b'c"], True)}, r) == \
        "x = 'it''s' AND y IN ('a','b''c') AND t > '2023-01-01T00:00:00.000Z'"


# ------------------------------------------------------------------------------------------
# The store, filled once for every panel.

@dataclass
class Store:
    server: object
    conn: object
    time_range: TimeRange
    grants_file: Path


def fetch(conn, sql: str) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def scalar(conn, sql: str):
    return fetch(conn, sql).column(0)[0].as_py()


def _wait_for(conn, sql: str, what: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = scalar(conn, sql)
        if n:
            return n
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboards")
    grants = tmp / "grants.csv"
    grants.write_text("subject_kind,subject_id,target_kind,target_pattern\n")
    server = start_server(tmp, extra_args=[
        # Traces are stitched after 1 s of quiet, so chains and edges exist seconds after `gen`.
        "--set", "stitcher.quiet_window=1s", "--set", "stitcher.late_window=2s",
        "--set", f"query.grants_files=[{json.dumps(str(grants))}]",
    ])
    conn = None
    try:
        started = datetime.now(timezone.utc)
        gen = subprocess.run(
            [str(idtrail_bin()), "gen", "--endpoint", f"http://{server.grpc_endpoint}",
             "--duration", str(GEN_SECONDS), "--rate", str(GEN_RATE), "--quiet"],
            capture_output=True, text=True, timeout=120,
        )
        assert gen.returncode == 0, f"idtrail gen failed:\n{gen.stdout}\n{gen.stderr}"
        summary = json.loads(gen.stdout)
        assert summary["spans_acked"] > 0, summary
        conn = flight_sql.connect(server.flight_uri, autocommit=True)
        _wait_for(conn, "SELECT count(*) FROM spans", "spans")
        _wait_for(conn, "SELECT count(*) FROM edges WHERE relation = 'affected'", "affected edges")
        _wait_for(conn, "SELECT count(*) FROM chains", "chains")
        # Stitching is done once the chains stop growing (all traces were quiet long ago).
        previous = -1
        while (n := scalar(conn, "SELECT count(*) FROM chains")) != previous:
            previous = n
            time.sleep(2.5)
        # A grant for a scope the generated tokens carry, onto every resource: the potential
        # reach of the blast-radius dashboard has something to show.
        scope = scalar(conn, "SELECT min(s) FROM (SELECT unnest(token_scopes) AS s FROM spans)")
        assert scope, "the generated tokens carry no scopes"
        grants.write_text(f"subject_kind,subject_id,target_kind,target_pattern\nscope,{scope},resource,*\n")
        # The range covers every generated timestamp (the generator may backdate spans a little).
        # (Nanosecond timestamps do not convert to Python datetimes: read them as integers.)
        first_ns = scalar(conn, "SELECT CAST(min(start_time) AS BIGINT) FROM spans")
        last_ns = scalar(conn, "SELECT CAST(max(end_time) AS BIGINT) FROM spans")
        first = datetime.fromtimestamp(first_ns / 1e9, timezone.utc)
        end = max(datetime.now(timezone.utc), datetime.fromtimestamp(last_ns / 1e9, timezone.utc))
        time_range = TimeRange(min(started, first) - timedelta(minutes=5), end + timedelta(minutes=5))
        yield Store(server, conn, time_range, grants)
    finally:
        if conn is not None:
            conn.close()
        _teardown(server)


def dashboard_variables(store: Store, dashboard: dict) -> dict:
    """Each variable's value as Grafana would first select it: a query variable's first value,
    a custom variable's current selection (All: every option)."""
    out = {}
    for var in dashboard.get("templating", {}).get("list", []):
        multi = bool(var.get("multi") or var.get("includeAll"))
        if var["type"] == "query":
            sql = expand_macros(interpolate_variables(var["query"], out, store.time_range),
                                store.time_range, INTERVAL)
            table = fetch(store.conn, sql)
            values = [v for v in table.column(0).to_pylist() if v is not None]
            if (dashboard["uid"], var["name"]) in EXPECTED_VARIABLES:
                assert values, f"variable {var['name']} of {dashboard['uid']} lists no value:\n{sql}"
            out[var["name"]] = (values[:1] or [""], multi)
        elif var["type"] == "custom":
            options = [o["value"] for o in var["options"] if o["value"] != "$__all"]
            current = var["current"]["value"]
            current = current if isinstance(current, list) else [current]
            values = options if "$__all" in current else current
            out[var["name"]] = (values, multi)
        else:
            raise AssertionError(f"variable type {var['type']} is not handled by this test")
    return out


def broad_type(t: pa.DataType) -> str | None:
    """The broad type of an Arrow type the plugin converts faithfully; None for the rest."""
    if pa.types.is_timestamp(t) or pa.types.is_date32(t) or pa.types.is_date64(t):
        return T
    if pa.types.is_string(t):  # utf8 only: the plugin fills large utf8 and utf8 view with nulls
        return S
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return N
    if pa.types.is_boolean(t):
        return B
    return None


def referenced_fields(panel: dict) -> set[str]:
    """Columns the panel's configuration names: field overrides by name, table sort, bar-chart
    x field."""
    names = set()
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"]["id"] == "byName":
            names.add(override["matcher"]["options"])
    for sort in panel.get("options", {}).get("sortBy", []) or []:
        names.add(sort["displayName"])
    if panel["type"] == "barchart" and panel["options"].get("xField"):
        names.add(panel["options"]["xField"])
    for transformation in panel.get("transformations", []):
        names.update(transformation.get("options", {}).get("fields", []) or [])
    return names


def _is_sorted(values: list) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))


def _panel_ids():
    return [f"{d['uid']}:{p['id']}" for d, p in PANELS]


@pytest.mark.parametrize("dashboard, panel", PANELS, ids=_panel_ids())
def test_panel_sql(store, dashboard, panel):
    key = (dashboard["uid"], panel["id"])
    assert key in EXPECTED, f"no expectation for panel {key}: add one to EXPECTED"
    expected = EXPECTED[key]
    target = panel["targets"][0]
    sql = interpolate_variables(target["queryText"], dashboard_variables(store, dashboard), store.time_range)
    sql = expand_macros(sql, store.time_range, INTERVAL)
    where = f"{dashboard['uid']} panel {panel['id']} ({panel['title']})"
    try:
        table = fetch(store.conn, sql)
    except adbc_driver_manager.Error as e:
        missing = [v for v in PENDING_VIEWS if re.search(rf"table '[\w.]*\b{v}' not found", str(e))]
        if missing:
            pytest.fail(f"{where}: the view {missing[0]!r} does not exist in this build yet "
                        f"(built separately); the panel's SQL could not run:\n{e}")
        raise AssertionError(f"{where}: the query failed:\n{sql}\n{e}") from e

    # The columns, in order, with their broad types; every one convertible by the plugin.
    got = {f.name: broad_type(f.type) for f in table.schema}
    unsupported = [f"{f.name}: {f.type}" for f in table.schema if broad_type(f.type) is None]
    assert not unsupported, f"{where}: the plugin cannot convert {unsupported}"
    assert list(got.items()) == list(expected["columns"].items()), f"{where}: columns\n{sql}"
    missing = referenced_fields(panel) - set(got)
    assert not missing, f"{where}: the panel configuration names columns the query lacks: {missing}"

    if target["format"] == "time_series":
        assert got.get("time") == T, f"{where}: a time series needs a `time` timestamp column"
        assert N in got.values(), f"{where}: a time series needs a numeric value column"
        times = table.column("time").cast(pa.int64()).to_pylist()
        assert _is_sorted(times), f"{where}: rows must be sorted by time (long-to-wide conversion)"
        labels = [name for name, kind in got.items() if kind == S]
        keys = list(zip(times, *(table.column(n).to_pylist() for n in labels)))
        assert len(keys) == len(set(keys)), f"{where}: one row per time and label set"
    if panel["type"] == "stat":
        assert set(got.values()) == {N}, f"{where}: a stat panel shows numbers"
    if panel["type"] == "barchart":
        assert got[panel["options"]["xField"]] == S and N in got.values(), where

    if expected["rows"]:
        assert table.num_rows > 0, f"{where}: no rows over the populated store\n{sql}"
        # A query that only aggregates returns one row even over nothing; its figures must not
        # all be zero or null.
        if panel["type"] == "stat":
            assert any(v for v in table.to_pylist()[0].values()), f"{where}: all figures empty"


def test_blast_radius_panel_agrees_with_blast_radius(store):
    """The top-credentials panel computes reach with joins over `edges`; for its widest
    credential, every resource it counts is one `blast_radius()` reaches as observed, and the
    grant written by the fixture shows as potential reach."""
    dashboard = next(d for d in load_dashboards() if d["uid"] == "idtrail-blast-radius")
    panel = next(p for p in dashboard["panels"] if p["id"] == 1)
    sql = expand_macros(panel["targets"][0]["queryText"], store.time_range, INTERVAL)
    top = fetch(store.conn, sql).select(["credential", "resources", "potential_resources"]).to_pylist()
    assert top, "no credential reached anything"
    assert top[0]["resources"] > 0, top[0]
    assert any(row["potential_resources"] > 0 for row in top), "the scope grant shows no potential reach"
    credential = top[0]["credential"]
    reach = fetch(store.conn,
                  f"SELECT kind, reach FROM blast_radius('credential', {_quote(credential)}, 64) "
                  "WHERE kind = 'resource'").to_pylist()
    observed = sum(1 for r in reach if r["reach"] == "observed")
    assert observed >= top[0]["resources"], (credential, observed, top[0])
