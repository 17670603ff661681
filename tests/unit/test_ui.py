"""The dashboard at /ui of `tunelab serve`, on a tiny served run: each page answers with what it must show, the
key rules (login cookie, 403 for Cancel and Promote without the right key), escaping of hostile names, the report
link and no way to another file, live promote and rollback; then each page rendered in headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import pytest

try:
    import httpx2 as httpx  # the HTTP client openai (the test extra) and starlette's TestClient bring
except ImportError:
    import httpx

from tests.conftest import reverse_rows, tiny_recipe, write_jsonl
from tests.unit.test_serve import ADMIN, KEY, LiveServer, train_run
from tunelab.deploy import versions
from tunelab.monitor.scores import Point, Score, Series
from tunelab.serve.settings import ServeSettings

FINE_TUNE = "test-fine-tune"
NAME = "support-bot"
HOSTILE = "<script>alert(1)</script>"
HOSTILE_RUN = "<img src=x onerror=alert(2)>"
HELLO = [{"role": "user", "content": "abcd"}]


def evaluated_run(tmp: Path, checkpoint: Path) -> Path:
    """A tiny run trained and evaluated (eval.json, report.html), as `tunelab train` leaves it."""
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.train.lifecycle import run_recipe

    data = write_jsonl(tmp / "evaluated.jsonl", reverse_rows(60, seed=3))
    recipe = tiny_recipe(tmp, checkpoint, data, train={"max_steps": 4, "lr": 1e-2},
                         eval={"bootstrap": 50, "max_new_tokens": 6, "forgetting": {"enabled": False}},
                         output={"dir": str(tmp / "run-evaluated")})
    recipe["objective"] = {"metric": "exact_match", "min": 1.0}
    return run_recipe(validate_recipe(recipe), tmp / "home", Console(quiet=True)).run.root


def plant_jobs(serve_dir: Path, run: Path) -> dict[str, str]:
    """A running job with a hostile suffix and event, and a succeeded one whose run is `run`."""
    from tunelab.jobs.db import connect, new_id
    from tunelab.jobs.queue import add_event

    connection = connect(serve_dir)
    ids = {"running": new_id("ftjob-"), "done": new_id("ftjob-")}
    hyper = json.dumps({"batch_size": 4, "learning_rate_multiplier": 1.0, "n_epochs": 1})
    for seq, (state, job_id) in enumerate(ids.items(), 1):
        connection.execute(
            "INSERT INTO jobs (id, seq, created_at, model, training_file, suffix, seed, request, recipe, "
            "hyperparameters, status, run_dir, fine_tuned_model) VALUES (?, ?, ?, 'tiny', 'file-x', ?, 42, '{}', "
            "'{}', ?, ?, ?, ?)",
            (job_id, seq, int(time.time()), HOSTILE, hyper, "running" if state == "running" else "succeeded",
             None if state == "running" else str(run), None if state == "running" else f"ft:tiny:{job_id}"))
    add_event(connection, ids["running"], f"Validating {HOSTILE}")
    add_event(connection, ids["running"], "Step 3/10: train loss=1.5", kind="metrics",
              data={"step": 3, "train_loss": 1.5, "total_steps": 10})
    connection.close()
    return ids


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    started = start_dashboard(tmp_path_factory.mktemp("ui"), tiny_checkpoint)
    yield started
    started["server"].stop()


def start_dashboard(tmp: Path, tiny_checkpoint: Path) -> dict:
    """Two runs (one evaluated), a name in service with a candidate, two jobs, a live server with keys that has
    answered a few requests and one error (also used by the screenshot script for the integrator's notes)."""
    from tunelab.serve.server import build_service

    roots = tmp / "runs"
    roots.mkdir()
    first = evaluated_run(roots, tiny_checkpoint)
    second = train_run(roots, tiny_checkpoint, "run-second", seed=2)
    hostile = roots / HOSTILE_RUN  # a run folder whose name is markup: the pages must show it as text
    hostile.mkdir()
    shutil.copy(second / "run.json", hostile / "run.json")
    serve_dir = tmp / "serve"
    versions.promote(serve_dir, NAME, versions.record(serve_dir, NAME, first).number, by="setup")
    versions.record(serve_dir, NAME, second)  # a candidate
    jobs = plant_jobs(serve_dir, first)
    settings = ServeSettings(serve_dir=serve_dir, api_keys=frozenset({KEY}), fine_tune_keys=frozenset({FINE_TUNE}),
                             admin_key=ADMIN, max_tokens=32, batch_wait=0.002, runs_roots=(roots,))
    service = build_service([], str(tiny_checkpoint), settings, roots / "home", say=lambda _: None)
    server = LiveServer(service)
    client = server.client()
    for _ in range(3):
        client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=4, temperature=0)
    try:
        client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=4000)  # an error for the error plot
    except Exception:
        pass
    else:
        raise AssertionError("max_tokens over the server's limit was accepted")
    return {"server": server, "first": first, "second": second, "jobs": jobs, "url": f"http://127.0.0.1:{server.port}"}


def browser_client(setup, key: str | None = None) -> httpx.Client:
    """A client signed in through the login form (the cookie it sets), or not signed in."""
    client = httpx.Client(base_url=setup["url"], follow_redirects=False, timeout=30)
    if key is not None:
        answer = client.post("/ui/login", data={"key": key})
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/runs"
    return client


def test_pages_need_a_key_and_the_login_form_sets_a_cookie_that_is_not_the_key(setup):
    anonymous = browser_client(setup)
    assert anonymous.get("/ui").status_code == 303 and anonymous.get("/ui/jobs").headers["location"] == "/ui/login"
    assert "API key" in anonymous.get("/ui/login").text
    assert anonymous.post("/ui/login", data={"key": "wrong"}).status_code == 401
    assert anonymous.post(f"/ui/jobs/{setup['jobs']['running']}/cancel").status_code == 401
    anonymous.cookies.set("tunelab_ui", KEY, path="/ui")  # the key itself is no cookie of ours
    assert anonymous.get("/ui/runs").status_code == 303
    answer = httpx.post(setup["url"] + "/ui/login", data={"key": KEY})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and KEY not in cookie
    for key in (KEY, FINE_TUNE, ADMIN):
        client = browser_client(setup, key)
        for path in ("/ui", "/ui/runs", "/ui/jobs", "/ui/models", "/ui/monitor"):
            page = client.get(path)
            assert page.status_code == 200 and "Log out" in page.text, path
            assert "nonce-" in page.headers["content-security-policy"]
    bearer = httpx.get(setup["url"] + "/ui/models", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200 and "Models in service" in bearer.text
    logged_out = browser_client(setup, KEY)
    assert logged_out.post("/ui/logout").status_code == 303
    assert logged_out.get("/ui/runs").status_code == 303
    # the dashboard's polling is not written to the request log
    import sqlite3

    database = Path(setup["server"].service.settings.serve_dir) / "requests.sqlite"
    time.sleep(0.3)
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM requests WHERE endpoint LIKE '/ui%'").fetchone()[0] == 0


def test_runs_page_lists_the_runs_with_headline_verdict_loss_curve_and_report(setup):
    client = browser_client(setup, KEY)
    page = client.get("/ui/runs").text
    for run in (setup["first"], setup["second"]):
        assert f"<strong>{run.name}</strong>" in page
    assert "serving as " in page and "<code>support-bot</code>" in page
    assert "exact_match: " in page and '<span class="bad">not met</span>' in page  # the objective min 100% fails
    assert page.count('<path class="line"') >= 3  # a training loss curve per trained run (two share one log)
    links = re.findall(r'href="(/ui/runs/[0-9a-f]{16}/report)"', page)
    assert len(links) == 1  # only the evaluated run has a report
    report = client.get(links[0])
    assert report.status_code == 200 and "Objective NOT met" in report.text
    assert report.headers["content-type"].startswith("text/html")
    for path in ("/ui/runs/0000000000000000/report", "/ui/runs/..%2F..%2F..%2Fetc%2Fpasswd/report",
                 "/ui/runs/../../../etc/passwd/report", f"/ui/runs/{setup['first']}/report"):
        answer = client.get(path)
        assert answer.status_code in (401, 404) and "root:" not in answer.text, path  # 401: left /ui


def test_every_text_from_data_is_escaped(setup):
    client = browser_client(setup, ADMIN)
    pages = [client.get(path).text for path in ("/ui/runs", "/ui/jobs", f"/ui/jobs/{setup['jobs']['running']}",
                                               "/ui/models", "/ui/monitor")]
    joined = "".join(pages)
    assert HOSTILE not in joined and HOSTILE_RUN not in joined
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1] and "&lt;script&gt;" in pages[2]
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[0]
    assert all(page.count("<script") == 0 for page in pages[:2])  # only the live job page carries a script
    assert pages[2].count("<script nonce=") == 1 and pages[2].count("<script") == 1


def test_jobs_page_progress_live_events_and_cancel_needs_a_fine_tuning_key(setup):
    running, done = setup["jobs"]["running"], setup["jobs"]["done"]
    client = browser_client(setup, KEY)
    listing = client.get("/ui/jobs").text
    assert running in listing and done in listing and "step 3 of 10" in listing
    page = client.get(f"/ui/jobs/{running}").text
    assert 'action="/ui/jobs/' + running + '/cancel"' in page and "Step 3/10: train loss=1.5" in page
    assert "report" not in client.get(f"/ui/jobs/{running}").text.split("<h2>Events")[0]
    assert 'href="/ui/runs/' in client.get(f"/ui/jobs/{done}").text  # its run's report
    live = client.get(f"/ui/jobs/{running}/live.json").json()
    assert live["status"] == "running" and live["progress"] == "step 3 of 10" and not live["finished"]
    assert [event[2] for event in live["events"]][-1] == f"Validating {HOSTILE}"  # text; the page sets textContent
    refused = client.post(f"/ui/jobs/{running}/cancel")
    assert refused.status_code == 403 and "fine-tuning key" in refused.text
    assert client.get(f"/ui/jobs/{running}/live.json").json()["events"][0][2] != "Cancellation requested"
    elsewhere = browser_client(setup, FINE_TUNE).post(f"/ui/jobs/{running}/cancel",
                                                       headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403
    cancelled = browser_client(setup, FINE_TUNE).post(f"/ui/jobs/{running}/cancel")
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/ui/jobs/{running}"
    live = client.get(f"/ui/jobs/{running}/live.json").json()
    assert live["events"][0][2].startswith("Cancellation requested")
    again = browser_client(setup, ADMIN).post(f"/ui/jobs/{done}/cancel")
    assert again.status_code == 400 and "already succeeded" in again.text
    assert client.get("/ui/jobs/ftjob-nope").status_code == 404


def test_models_page_versions_promote_and_rollback_live_need_the_admin_key(setup):
    service = setup["server"].service
    client = browser_client(setup, KEY)
    page = client.get("/ui/models").text
    assert '<table class="versions">' in page and "support-bot" in page
    assert page.count("<tr><td>2</td><td>candidate") == 1 and page.count("<tr><td>1</td><td>serving") == 1
    assert "exact_match: " in page  # the evaluated version's headline
    assert client.post(f"/ui/models/{NAME}/promote", data={"version": "2"}).status_code == 403
    assert browser_client(setup, FINE_TUNE).post(f"/ui/models/{NAME}/rollback").status_code == 403
    admin = browser_client(setup, ADMIN)
    promoted = admin.post(f"/ui/models/{NAME}/promote", data={"version": "2"})
    assert promoted.status_code == 303, promoted.text
    assert Path(service.registry.get(NAME).root).resolve() == setup["second"].resolve()
    page = admin.get("/ui/models").text
    assert "<tr><td>2</td><td>serving" in page and "ui:admin" in page
    again = admin.post(f"/ui/models/{NAME}/promote", data={"version": "2"})
    assert again.status_code == 409 and "already in service" in again.text  # the service's refusal, on the page
    assert admin.post(f"/ui/models/{NAME}/rollback").status_code == 303
    assert Path(service.registry.get(NAME).root).resolve() == setup["first"].resolve()
    answer = setup["server"].client().chat.completions.create(model=NAME, messages=HELLO, max_tokens=4)
    assert answer.model == NAME  # served on, no restart


def test_monitor_page_plots_latency_errors_and_volume_per_model(setup):
    client = browser_client(setup, KEY)
    page = client.get("/ui/monitor?since=1h").text
    assert f"<h3>{NAME}</h3>" in page
    assert all(title in page for title in ('aria-label="latency (ms)"', 'aria-label="error rate"',
                                           'aria-label="requests"'))
    assert 'class="band"' in page  # the error rate's interval
    assert client.get("/ui/monitor?since=forever").status_code == 400


def test_scores_and_series_render_with_interval_threshold_and_flag():
    from tunelab.serve.ui import pages
    from tunelab.serve.ui.data import MonitorData

    now = 1_700_000_000.0
    scores = [Score(NAME, "length_distance", "drift", 0.4, 0.2, "above", 0.3, 0.5, count=80, version="v2"),
              Score(NAME, "thumbs_up_rate", "quality", 0.9, 0.6, "below", 0.8, 0.95, count=40),
              Score(NAME, "embedding_drift", "drift", None, 0.1, "above", detail="no content logged")]
    series = [Series(NAME, "thumbs_up_rate", "quality", [Point(now + 60 * i, 0.5 + 0.1 * i, 0.4 + 0.1 * i,
                                                               0.6 + 0.1 * i, 10) for i in range(4)],
                     threshold=0.6)]
    page = pages.monitor_page(MonitorData(3600, 120, now + 600, [], scores, series), "1h", signed_in=True)
    rows = re.findall(r"<tr>(.*?)</tr>", page.split('<table class="scores">')[1].split("</table>")[0])
    assert "FLAGGED" in rows[1] and "FLAGGED" not in rows[2] and "FLAGGED" not in rows[3]
    assert "[0.3, 0.5]" in rows[1] and "above 0.2" in rows[1] and "n/a" in rows[3] and "no content logged" in rows[3]
    assert '<polygon class="band"' in page and '<line class="threshold"' in page and "threshold 0.6" in page
    assert f"{NAME}: thumbs_up_rate" in page


def test_svg_charts_break_lines_at_gaps_and_pick_round_ticks():
    from tunelab.serve.ui import svg

    assert svg.ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert svg.ticks(3, 97) == pytest.approx([20, 40, 60, 80])
    chart = svg.line_chart([svg.Line("a<b", [(0, 1.0), (1, 2.0), (2, None), (3, 1.5), (4, 1.0)])], title="t&t")
    assert chart.count('<path class="line"') == 2 and "t&amp;t" in chart and "a<b" not in chart
    assert svg.line_chart([svg.Line("x", [(0, 1.0)])]).count("<circle") == 1
    assert "no data in this window" in svg.line_chart([])
    bars = svg.bar_chart([("ok", 3.0), ("<bad>", 1.0)])
    assert bars.count('<rect class="bar"') == 2 and "&lt;bad&gt;" in bars


def test_an_open_server_shows_the_dashboard_but_promote_still_needs_the_admin_key(setup):
    from fastapi.testclient import TestClient

    from tunelab.serve.app import create_app

    service = setup["server"].service
    keyed = service.settings
    service.settings = dataclasses.replace(keyed, api_keys=frozenset(), fine_tune_keys=frozenset())
    try:
        client = TestClient(create_app(service), follow_redirects=False)  # no `with`: the service stays open
        assert client.get("/ui/runs").status_code == 200 and "Log out" not in client.get("/ui/runs").text
        refused = client.post(f"/ui/models/{NAME}/rollback")
        assert refused.status_code == 403 and "admin key" in refused.text
    finally:
        service.settings = keyed


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PAGES = {  # path -> a CSS selector that must match in the rendered page
    "/ui/runs": "table.runs svg.plot path.line",
    "/ui/jobs": "table.jobs tbody tr",
    "/ui/models": "table.versions tbody tr",
    "/ui/monitor?since=1h": "div.traffic svg.plot",
}


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs it: apt-get install "
                                               "chromium)")
def test_each_page_renders_in_headless_chromium(setup, tmp_path):
    """Signed in through the form; each page's expected element is in the DOM and its plot's blue is on screen."""
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright").sync_playwright
    import numpy as np
    from PIL import Image

    shots = render_pages(setup["url"], chromium(), tmp_path)
    for path, (found, shot) in shots.items():
        assert found, f"{path}: {PAGES[path]} not in the rendered page"
        pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
        assert (pixels.sum(axis=1) < 720).mean() > 0.02, f"{path}: the screenshot is blank"
        if "svg" in PAGES[path]:
            blue = np.abs(pixels - [0x1F, 0x77, 0xB4]).sum(axis=1) < 40  # the plots' first colour
            assert blue.sum() > 100, f"{path}: no plot line visible"
    assert_job_page_follows_the_job(setup, sync_playwright)


def assert_job_page_follows_the_job(setup, sync_playwright) -> None:
    """The running job's page polls its JSON: an event the worker writes appears without a reload, as text."""
    from tunelab.jobs.db import connect
    from tunelab.jobs.queue import add_event

    job_id = setup["jobs"]["running"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(f"{setup['url']}/ui/login")
            page.fill("input[name=key]", KEY)
            page.click("button[type=submit]")
            page.wait_for_url("**/ui/runs")
            page.goto(f"{setup['url']}/ui/jobs/{job_id}")
            connection = connect(Path(setup["server"].service.settings.serve_dir))
            add_event(connection, job_id, "Step 5/10: <b>live</b>", kind="metrics",
                      data={"step": 5, "total_steps": 10})
            connection.close()
            page.locator("#progress", has_text="step 5 of 10").wait_for(timeout=10_000)
            assert page.inner_text("table.events tbody tr:first-child td:last-child") == "Step 5/10: <b>live</b>"
            assert page.query_selector("table.events b") is None and not errors, errors
        finally:
            browser.close()


def render_pages(url: str, browser_path: str, folder: Path, key: str = KEY) -> dict[str, tuple[bool, Path]]:
    """Sign in through the login form, open each page; (the expected element was found, the screenshot)."""
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/ui")
            page.fill("input[name=key]", key)
            page.click("button[type=submit]")
            page.wait_for_url("**/ui/runs")
            for path, selector in PAGES.items():
                page.goto(url + path)
                shot = folder / (path.strip("/").split("?")[0].replace("/", "-") + ".png")
                page.screenshot(path=str(shot), full_page=True)
                results[path] = (page.query_selector(selector) is not None, shot)
        finally:
            browser.close()
    return results
