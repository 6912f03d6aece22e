"""`idtrail demo` end to end, and the incident report it writes, opened in headless Chromium.

The demo runs as the README says (shorter: 4 s of traffic): it must print its progress, the
attribution answers and the findings, and write a report. The report is then opened in Debian's
Chromium through Playwright: every section is there, the chains are drawn (SVG holding the
chain's nodes), the browser logs no console error and fetches nothing, and a screenshot is
taken. `IDTRAIL_SCREENSHOT=docs/report.png` keeps the top of the page (the README shows it).
A server started on the demo's data answers the same report over `GET /v1/report`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from conftest import idtrail_bin, start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SECTIONS = ["summary", "timeline", "chains", "blast_radius", "revoke", "unattributed", "findings"]
# Chromium flags for a closed network: no background fetches that would fail and log.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    directory = tmp / "idtrail-demo"
    run = subprocess.run(
        [str(idtrail_bin()), "demo", "--dir", str(directory), "--seconds", "4", "--rate", "1500"],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )
    assert run.returncode == 0, f"idtrail demo failed:\n{run.stdout}\n{run.stderr}"
    return directory, run


def test_demo_shows_progress_answers_and_next_steps(demo):
    directory, run = demo
    # Progress, step by step (plain lines: standard error is not a terminal here).
    for step in ("collector listening", "sent ", "stitched: ", "collector stopped", "incident report"):
        assert step in run.stderr, f"no {step!r} in the demo's progress:\n{run.stderr}"
    out = run.stdout
    assert "Who started the agent runs that deleted data" in out
    assert "What share of agent actions can be traced" in out
    # The findings summary lists every built-in rule, with a count.
    assert "Findings of the detection rules" in out
    for rule in ("long_lived_token", "unattributed_agent_write", "use_after_revocation"):
        assert rule in out, f"{rule} missing from the findings summary:\n{out}"
    assert f"Open the report: {directory / 'report.html'}" in out
    assert "idtrail query -c" in out and "idtrail findings -c" in out
    assert (directory / "idtrail.yaml").exists()
    # A second run clears its own directory and works again; a foreign directory is refused.
    foreign = directory.parent / "not-a-demo"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    refused = subprocess.run(
        [str(idtrail_bin()), "demo", "--dir", str(foreign), "--seconds", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode != 0 and "not made by `idtrail demo`" in refused.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_report_opens_in_chromium_with_sections_graphs_and_no_errors(demo, tmp_path):
    directory, _ = demo
    report = directory / "report.html"
    html = report.read_text()
    # Nothing that looks like a raw JWT (the generator's tokens all start with eyJ).
    assert not re.search(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", html), "a raw token in the report"
    console: list[str] = []
    failed: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("request", lambda r: failed.append(r.url)
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(report.as_uri(), wait_until="load")
            assert page.title().startswith("idtrail incident report: credential ")
            for section in SECTIONS:
                assert page.locator(f"section#{section} h2").count() == 1, f"no section {section}"
                # Each section shows the SQL behind it.
                assert page.locator(f"section#{section} details pre code").count() >= 1
            figures = page.locator("section#summary .figure .value").all_text_contents()
            assert len(figures) >= 5 and int(figures[0]) > 0, figures
            graphs = page.locator("section#chains figure.chain svg")
            assert graphs.count() >= 1, "no chain drawn"
            box = graphs.first.bounding_box()
            assert box and box["width"] > 150 and box["height"] > 20, box
            labels = " ".join(graphs.first.locator("text").all_text_contents())
            assert "credential" in labels and "operation" in labels, labels
            assert page.locator("section#revoke tbody tr").count() >= 1
            page.screenshot(path=str(shot), full_page=True)
            keep = os.environ.get("IDTRAIL_SCREENSHOT")
            if keep:
                page.screenshot(path=keep, full_page=False)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000, "the screenshot is nearly empty"
    assert not console, console
    assert not failed, f"the report fetched something: {failed}"


def _timeless(text: str) -> str:
    """A report without what differs from one run to the next: when it was made, how long it
    took."""
    text = re.sub(r"Generated \S+", "Generated …", text)
    return re.sub(r"\b\d+ ms\b", "… ms", text)


def _without_timings(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k not in ("generated_at", "elapsed_ms")}
    report["sections"] = [
        {k: v for k, v in section.items() if k != "elapsed_ms"} for section in report["sections"]
    ]
    return report


def test_a_running_server_answers_the_report_the_cli_writes(demo, tmp_path):
    """`GET /v1/report` on `idtrail serve` (and `idtrail report --server`, which asks it) gives the
    report that `idtrail report` builds from the files, behind the query keys, and refuses bad
    parameters with 400 and a message that names the problem."""
    directory, _ = demo
    config = directory / "idtrail.yaml"
    shutil.copytree(directory / "data", tmp_path / "data")
    keys = tmp_path / "query.keys"
    keys.write_text("# analysts\nreport-key-0123456789\n")
    server = start_server(
        tmp_path,
        key_file=directory / "fp.key",
        extra_args=["--config", str(config), "--set", f"query.auth_keys_file={keys}"],
    )
    try:
        auth = {"Authorization": "Bearer report-key-0123456789"}
        base = server.http_base
        top = requests.post(
            f"{base}/v1/query",
            json={"sql": "SELECT credential_fp, count(*) AS n FROM chains_latest "
                         "WHERE credential_fp IS NOT NULL GROUP BY 1 ORDER BY n DESC, 1 LIMIT 1"},
            headers=auth, timeout=30,
        )
        assert top.status_code == 200, top.text
        credential = top.json()["rows"][0]["credential_fp"]

        url = f"{base}/v1/report"
        refused = requests.get(url, params={"credential": credential}, timeout=30)
        assert refused.status_code == 401, refused.text
        assert "auth_keys_file" in refused.json()["error"]

        served = requests.get(url, params={"credential": credential, "format": "json"},
                              headers=auth, timeout=120)
        assert served.status_code == 200, served.text
        assert served.headers["content-type"] == "application/json"
        local = subprocess.run(
            [str(idtrail_bin()), "report", "-c", str(config), "--credential", credential,
             "--format", "json", "--output", "-"],
            capture_output=True, text=True, timeout=300,
        )
        assert local.returncode == 0, local.stderr
        served_sections = _without_timings(served.json())["sections"]
        local_sections = _without_timings(json.loads(local.stdout))["sections"]
        for a, b in zip(served_sections, local_sections):
            assert a == b, json.dumps([a, b], indent=1)[:6000]
        assert _without_timings(served.json()) == _without_timings(json.loads(local.stdout))
        assert sorted(s["id"] for s in served.json()["sections"]) == sorted(SECTIONS)

        html = requests.get(url, params={"credential": credential}, headers=auth, timeout=120)
        assert html.status_code == 200
        assert html.headers["content-type"] == "text/html; charset=utf-8"
        assert html.text.startswith("<!DOCTYPE html>") and 'id="blast_radius"' in html.text

        # `idtrail report --server` writes what the server answers; its key from the environment.
        out = tmp_path / "served.md"
        cli = subprocess.run(
            [str(idtrail_bin()), "report", "--server", base, "--credential", credential,
             "--format", "markdown", "--output", str(out)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "IDTRAIL_QUERY_TOKEN": "report-key-0123456789"},
        )
        assert cli.returncode == 0, cli.stderr
        assert f"by {url}" in cli.stderr, cli.stderr
        markdown = requests.get(url, params={"credential": credential, "format": "markdown"},
                                headers=auth, timeout=120)
        assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
        assert _timeless(out.read_text()) == _timeless(markdown.text)
        assert out.read_text().startswith(f"# idtrail incident report: credential {credential}")

        for params, says in [
            ({}, "needs a subject"),
            ({"user": "alice", "agent": "bot"}, "one subject"),
            ({"credential": credential, "from": "yesterday"}, "RFC 3339"),
            ({"credential": credential, "format": "pdf"}, "pdf"),
            ({"credential": credential, "colour": "red"}, "colour"),
            ({"credential": credential, "from": "2026-11-22T10:00:00Z",
              "to": "2026-11-22T09:00:00Z"}, "is not before"),
        ]:
            bad = requests.get(url, params=params, headers=auth, timeout=30)
            assert bad.status_code == 400, (params, bad.status_code, bad.text)
            assert says in bad.json()["error"], (params, bad.json())
        server.stop()
    finally:
        if server.exit_code is None:
            server.proc.kill()
            server.proc.wait()
    assert "report-key-0123456789" not in server.log_text()
