"""The dashboard's pages: data (data.py) -> HTML. Every text that comes from data (a run's folder name, a job's
suffix, an event message, an error) goes through `esc`; the few lines of script are inline with the response's
nonce (routes.py sets a Content-Security-Policy that allows no other script)."""

from __future__ import annotations

import html
import json
import time
from typing import Any, Iterable

from tunelab.monitor.scores import Score, Series
from tunelab.present.format import format_change, format_interval, format_number, format_value
from tunelab.serve.ui import svg
from tunelab.serve.ui.data import JobView, ModelsData, MonitorData, RunView

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
header { background: #24292f; color: #fff; padding: 0.6rem 1.5rem; display: flex; gap: 1.2rem; align-items: center; }
header a { color: #fff; text-decoration: none; } header a.here { font-weight: bold; text-decoration: underline; }
header form { margin-left: auto; } main { padding: 1rem 1.5rem; max-width: 90rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; text-align: left; } td { vertical-align: top; } .num { text-align: right; }
.good { color: #1a7f37; } .bad, .flagged { color: #cf222e; font-weight: bold; } .note { color: #666; }
.message { padding: 0.5rem 0.8rem; background: #ffebe9; border: 1px solid #cf222e; }
.plots { display: flex; flex-wrap: wrap; gap: 0.8rem; } svg.plot { border: 1px solid #eee; }
"""
NAV = (("runs", "/ui/runs", "Runs"), ("jobs", "/ui/jobs", "Jobs"), ("models", "/ui/models", "Models"),
       ("monitor", "/ui/monitor", "Monitor"))
TRAIN_COLOUR, VALIDATION_COLOUR = svg.PALETTE[0], svg.PALETTE[1]


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def layout(title: str, here: str, body: str, signed_in: bool = False, nonce: str = "", script: str = "") -> str:
    links = "".join(f'<a href="{href}" class="{"here" if key == here else ""}">{name}</a>'
                    for key, href, name in NAV)
    logout = ('<form method="post" action="/ui/logout"><button type="submit">Log out</button></form>'
              if signed_in else "")
    tail = f'<script nonce="{esc(nonce)}">{script}</script>' if script else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)} - tunelab</title>"
            "<link rel='icon' href='data:,'>"
            f"<style>{STYLE}</style></head><body><header><strong>tunelab</strong>{links}{logout}</header>"
            f"<main><h1>{esc(title)}</h1>{body}</main>{tail}</body></html>")


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], css: str = "") -> str:
    """Cells are HTML already (escaped by the caller)."""
    names = list(headers)
    head = f"<thead><tr>{''.join(f'<th>{esc(name)}</th>' for name in names)}</tr></thead>" if any(names) else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}<tbody>{body}</tbody></table>'


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def message_box(message: str | None) -> str:
    return f'<p class="message" role="alert">{esc(message)}</p>' if message else ""


def post_button(action: str, label: str, fields: dict[str, str] | None = None) -> str:
    hidden = "".join(f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'
                     for name, value in (fields or {}).items())
    return f'<form method="post" action="{esc(action)}">{hidden}<button type="submit">{esc(label)}</button></form>'


# ---- login ------------------------------------------------------------------------------------------------------
def login_page(message: str | None = None) -> str:
    form = ('<form method="post" action="/ui/login"><label>API key <input type="password" name="key" '
            'autocomplete="current-password" autofocus></label> <button type="submit">Sign in</button></form>'
            '<p class="note">Any key of this server opens the dashboard; cancelling a job needs a fine-tuning or '
            'the admin key, promoting and rolling back the admin key.</p>')
    return layout("Sign in", "", message_box(message) + form)


def error_page(message: str, signed_in: bool) -> str:
    return layout("Refused", "", message_box(message), signed_in)


# ---- runs -------------------------------------------------------------------------------------------------------
def runs_page(runs: list[RunView], signed_in: bool) -> str:
    if not runs:
        return layout("Runs", "runs", "<p>No runs known to this server.</p>", signed_in)
    rows = [run_row(run) for run in runs]
    headers = ["run", "status", "task / method", "headline: base -> tuned", "change [interval]", "objective",
               "loss", "report"]
    body = (f'<p class="note">{len(runs)} runs: the served models\' runs, the fine-tuning jobs\' runs and the runs '
            "under --runs-root.</p>" + table(headers, rows, "runs"))
    return layout("Runs", "runs", body, signed_in)


def run_row(run: RunView) -> list[str]:
    summary = run.summary
    name = f"<strong>{esc(summary.path.name)}</strong><br><span class='note'>{esc(summary.path)}</span>"
    if run.served_as:
        name += "<br>serving as " + ", ".join(f"<code>{esc(model)}</code>" for model in run.served_as)
    if summary.note:
        name += f"<br><span class='note'>{esc(summary.note)}</span>"
    task = f"{esc(summary.task or '-')} / {esc(summary.method or '-')}<br><span class='note'>{esc(summary.model)}"\
           f"</span>"
    headline, change = "-", "-"
    if summary.primary is not None:
        metric = summary.primary
        headline = (f"{esc(metric)}: {esc(format_value(metric, summary.base))} -> "
                    f"{esc(format_value(metric, summary.tuned))}")
        delta = None if summary.base is None or summary.tuned is None else summary.tuned - summary.base
        change = f"{esc(format_change(metric, delta))} {esc(format_interval(metric, summary.interval, signed=True))}"
    verdict = {True: '<span class="good">met</span>', False: '<span class="bad">not met</span>',
               None: '<span class="note">-</span>'}[summary.verdict]
    report = f'<a href="/ui/runs/{run.id}/report">report</a>' if run.has_report else "-"
    return [name, esc(summary.status), task, headline, change, verdict, loss_plot(run), report]


def loss_plot(run: RunView) -> str:
    if not run.train_loss:
        return '<span class="note">no training log</span>'
    lines = [svg.Line("training", list(run.train_loss), TRAIN_COLOUR)]
    if run.validation_loss:
        lines.append(svg.Line("validation", list(run.validation_loss), VALIDATION_COLOUR))
    return svg.line_chart(lines, x_label="step", y_label="loss", width=300, height=150)


# ---- jobs -------------------------------------------------------------------------------------------------------
def jobs_page(jobs: list[JobView] | None, signed_in: bool) -> str:
    if jobs is None:
        return layout("Jobs", "jobs", "<p>Fine-tuning is off on this server.</p>", signed_in)
    if not jobs:
        return layout("Jobs", "jobs", "<p>No fine-tuning jobs yet.</p>", signed_in)
    rows = [[f'<a href="/ui/jobs/{esc(view.job["id"])}">{esc(view.job["id"])}</a>', esc(view.job["status"]),
             esc(view.job["model"]), esc(view.job["suffix"] or ""), esc(view.job["fine_tuned_model"] or "-"),
             progress_text(view), when(view.job["created_at"])] for view in jobs]
    body = table(["job", "status", "model", "suffix", "fine-tuned model", "progress", "created"], rows, "jobs")
    return layout("Jobs", "jobs", body, signed_in)


def progress_text(view: JobView) -> str:
    if view.step is None:
        return "-"
    return f"step {view.step}" + (f" of {view.total_steps}" if view.total_steps else "")


def job_page(view: JobView, signed_in: bool, nonce: str, message: str | None = None) -> str:
    job = view.job
    facts = [("status", f'<span id="status">{esc(job["status"])}</span>'
                        + (f" (requested: {esc(job['tunelab']['requested'])})" if job["tunelab"]["requested"] else "")),
             ("model", esc(job["model"])), ("suffix", esc(job["suffix"] or "")),
             ("fine-tuned model", esc(job["fine_tuned_model"] or "-")),
             ("progress", f'<span id="progress">{esc(progress_text(view))}</span>'),
             ("created", when(job["created_at"])), ("finished", when(job["finished_at"]))]
    if job["error"]:
        facts.append(("error", f'<span class="bad">{esc(job["error"].get("message"))}</span>'))
    verdict = job["tunelab"]["verdict"]
    if verdict:
        facts.append(("verdict", esc(verdict.get("summary", verdict))))
    if view.run_id:
        facts.append(("run", f'<a href="/ui/runs/{view.run_id}/report">report</a>'))
    body = message_box(message) + table(["", ""], [[esc(key), value] for key, value in facts], "job")
    if not view.finished:
        body += post_button(f"/ui/jobs/{job['id']}/cancel", "Cancel")
    body += "<h2>Events</h2>" + table(["time", "level", "message"], [event_row(event) for event in view.events],
                                      "events")
    script = "" if view.finished else live_script(f"/ui/jobs/{job['id']}/live.json")
    return layout(f"Job {job['id']}", "jobs", body, signed_in, nonce, script)


def event_row(event: dict[str, Any]) -> list[str]:
    return [when(event["created_at"]), esc(event["level"]), esc(event["message"])]


def job_live(view: JobView) -> dict[str, Any]:
    """The JSON the job page polls: status, progress and the newest events (text only; the page sets textContent)."""
    return {"status": view.job["status"], "progress": progress_text(view), "finished": view.finished,
            "events": [[when(event["created_at"]), event["level"], event["message"]] for event in view.events]}


def live_script(url: str) -> str:
    """Every 2 s: fetch the job's JSON, put status, progress and events in place as text, stop once it finished."""
    return f"""
const url = {json.dumps(url)};
async function poll() {{
  const answer = await fetch(url, {{credentials: "same-origin"}});
  if (!answer.ok) return;
  const live = await answer.json();
  document.getElementById("status").textContent = live.status;
  document.getElementById("progress").textContent = live.progress;
  const body = document.querySelector("table.events tbody");
  body.replaceChildren(...live.events.map(cells => {{
    const row = document.createElement("tr");
    for (const text of cells) {{ const cell = document.createElement("td"); cell.textContent = text;
                                 row.appendChild(cell); }}
    return row; }}));
  if (!live.finished) setTimeout(poll, 2000);
}}
setTimeout(poll, 2000);
"""


# ---- models in service ------------------------------------------------------------------------------------------
def models_page(data: ModelsData, signed_in: bool, message: str | None = None) -> str:
    rows = [[f"<code>{esc(model.id)}</code>", esc(model.parent or "(base)"), run_link(model.root, data.run_ids)]
            for model in data.served]
    body = message_box(message) + "<h2>Served models</h2>" + table(["id", "parent", "run folder"], rows, "served")
    if not data.versions:
        body += ("<h2>Versions</h2><p class='note'>No name in service has versions yet (`tunelab promote NAME RUN` "
                 "makes one).</p>")
    for name, versions in data.versions.items():
        body += versions_section(name, versions, data.run_ids)
    return layout("Models in service", "models", body, signed_in)


def run_link(folder: str, run_ids: dict[str, str]) -> str:
    key = run_ids.get(folder)
    text = f"<span class='note'>{esc(folder)}</span>"
    return text + (f' (<a href="/ui/runs/{key}/report">report</a>)' if key else "")


def versions_section(name: str, versions: list[Any], run_ids: dict[str, str]) -> str:
    rows = []
    for version in versions:
        actions = ""
        if version.status != "serving":  # a candidate; or a version served before (promoting it again)
            actions = post_button(f"/ui/models/{name}/promote", "Promote", {"version": str(version.number)})
        rows.append([str(version.number), esc(version.status), run_link(version.run_dir, run_ids),
                     headline(version.metrics), gate(version.verdict, version.reason),
                     when(version.promoted_at), esc(version.promoted_by or "-"), actions])
    rollback = post_button(f"/ui/models/{name}/rollback", "Roll back") \
        if any(version.status == "serving" for version in versions) else ""
    return (f"<h2>{esc(name)}</h2>" + table(["version", "status", "run", "headline", "gate", "promoted at", "by",
                                               ""], rows, "versions") + rollback)


def headline(metrics: dict[str, Any] | None) -> str:
    if not metrics or "metric" not in metrics:
        return "-"
    metric = metrics["metric"]
    text = f"{esc(metric)}: {esc(format_value(metric, metrics.get('base')))} -> " \
           f"{esc(format_value(metric, metrics.get('tuned')))}"
    serving = metrics.get("vs_serving") or {}
    by_slice = metrics.get("vs_serving_by_slice") or {}
    parts = [f"{format_change(entry['metric'], entry.get('change'))} "
             f"{format_interval(entry['metric'], entry.get('interval'), signed=True)} "
             f"on {entry.get('rows')} {label} rows"
             for label, entry in by_slice.items() if entry.get("change") is not None]
    if parts:
        text += (f"<br><span class='note'>vs {esc(serving.get('against', 'the version in service'))}: "
                 f"{esc('; '.join(parts))}</span>")
    return text


def gate(verdict: dict[str, Any] | None, reason: str | None) -> str:
    text = "-"
    if verdict:
        css = "good" if verdict.get("met") else "bad"
        text = f'<span class="{css}">{"met" if verdict.get("met") else "not met"}</span> {esc(verdict.get("summary"))}'
    if reason:
        text += f"<br><span class='note'>{esc(reason)}</span>"
    return text


# ---- monitor ----------------------------------------------------------------------------------------------------
TRAFFIC = (("error_rate", "error rate"), ("requests", "requests"))  # plotted alone; the latencies share a plot


def monitor_page(data: MonitorData, since: str, signed_in: bool) -> str:
    window = (data.now - data.since_s, data.now)
    choose = "".join(f'<a href="/ui/monitor?since={window}">{window}</a> ' for window in ("15m", "1h", "6h", "1d",
                                                                                         "7d"))
    body = (f"<p>Window: the last {esc(since)} (buckets of {format_number(data.bucket_s / 60)} min). {choose}</p>"
            + "<h2>Scores</h2>" + scores_table(data.scores)
            + "<h2>Traffic</h2>" + traffic_plots(data.traffic, window)
            + "<h2>Drift and quality over time</h2>" + series_plots(data.series, window))
    return layout("Monitor", "monitor", body, signed_in)


def scores_table(scores: list[Score]) -> str:
    if not scores:
        return "<p class='note'>No drift or quality scores in this window.</p>"
    rows = []
    for score in scores:
        interval = "" if score.low is None or score.high is None else f"[{shown(score.low)}, {shown(score.high)}]"
        state = '<span class="flagged">FLAGGED</span>' if score.flagged else "ok"
        threshold = "-" if score.threshold is None else f"{score.flag_when} {score.threshold:.4g}"
        rows.append([esc(score.model), esc(score.version or "-"), esc(score.kind), esc(score.name),
                     "n/a" if score.value is None else f"{score.value:.4g}", interval, threshold, state,
                     str(score.count), esc(score.detail)])
    return table(["model", "version", "kind", "score", "value", "interval (95%)", "flagged when", "state", "rows",
                  "detail"], rows, "scores")


def shown(value: float) -> str:
    """A score's bound: 4 significant digits, and a float's round-off next to zero (3e-18) as the 0 it is."""
    return "0" if abs(value) < 1e-9 else f"{value:.4g}"


def traffic_plots(traffic: list[Series], window: tuple[float, float]) -> str:
    if not traffic:
        return "<p class='note'>No requests in this window.</p>"
    by_model: dict[str, dict[str, Series]] = {}
    for series in traffic:
        by_model.setdefault(series.model, {})[series.name] = series
    parts = []
    for model, named in by_model.items():
        plots = []
        latency = [line(named[name], label, colour) for name, label, colour in
                   (("latency_p50_ms", "p50", svg.PALETTE[0]), ("latency_p95_ms", "p95", svg.PALETTE[3]))
                   if name in named]
        plots.append(svg.line_chart(latency, title="latency (ms)", time_axis=True, x_range=window))
        for name, title in TRAFFIC:
            if name in named:
                plots.append(svg.line_chart([line(named[name], name, svg.PALETTE[0])], title=title, time_axis=True,
                                            x_range=window))
        parts.append(f"<h3>{esc(model)}</h3><div class='plots traffic'>{''.join(plots)}</div>")
    return "".join(parts)


def series_plots(series: list[Series], window: tuple[float, float]) -> str:
    if not series:
        return "<p class='note'>No drift or quality series in this window.</p>"
    plots = [svg.line_chart([line(one, one.name, svg.PALETTE[0])], threshold=one.threshold, time_axis=True,
                            x_range=window, title=series_title(one)) for one in series]
    return f"<div class='plots series'>{''.join(plots)}</div>"


def series_title(series: Series) -> str:
    return f"{series.model}{' @ ' + series.version if series.version else ''}: {series.name}"


def line(series: Series, label: str, colour: str) -> svg.Line:
    band = [(point.ts, point.low, point.high) for point in series.points
            if point.low is not None and point.high is not None]
    return svg.Line(label, [(point.ts, point.value) for point in series.points], colour, band)
