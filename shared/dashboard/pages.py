"""The dashboard's HTML: the experiment index, an experiment's page, and one chart's standalone file.

Plain server-rendered HTML with inline CSS and SVG; the only script re-fetches a running experiment's
page every few seconds and swaps its content, and sends the cancel request; it runs by the response's
nonce (``script-src 'nonce-...'``), so no script injected into a page could. Nothing is loaded from
anywhere else. Every link carries the Functions key (``code``) when the page was opened with one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from shared.dashboard.charts import Chart, build_charts, fold_values, no_best, objective
from shared.dashboard.spec_view import spec_html
from shared.dashboard.svg import render
from shared.pareto import ParetoView
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, UnreadableRecord

REFRESH_MS = 5000
TABLE_LIMIT = 500
FRONT_LIMIT = 100
"""Pareto front rows on an experiment's page (``GET .../pareto`` lists every member)."""
"""Trial rows on an experiment's page (its charts draw every trial; ``report.html`` lists them all)."""
CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#1f2937;color:#fff;padding:10px 20px}header a{color:#fff;text-decoration:none}
main{padding:16px 20px;max-width:1400px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #e5e7eb;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600;padding:1px 6px;border-radius:4px;background:#e5e7eb}
.COMPLETED{background:#dcfce7}.FAILED{background:#fee2e2}.RUNNING{background:#dbeafe}.PRUNED{background:#fef3c7}
.CANCELLED,.CANCELLING,.TIMED_OUT{background:#f3f4f6}.bar{display:inline-block;width:80px;height:8px;
background:#e5e7eb;margin-right:6px}.bar span{display:block;height:8px;background:#2563eb}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:12px}
.charts figure{margin:0;background:#fff;border:1px solid #e5e7eb}.actions a,.actions button{margin-right:8px}
.meta{color:#4b5563;font-size:13px}.error{color:#b91c1c}#experiments td{white-space:nowrap}
.bar span.COMPLETED{background:#16a34a}.bar span.FAILED{background:#dc2626}
.bar span.CANCELLED,.bar span.CANCELLING,.bar span.TIMED_OUT{background:#9ca3af}
tr.best td{background:#fef9c3;font-weight:600}#failure{border:1px solid #fca5a5;background:#fef2f2;color:#991b1b;
padding:8px 12px;margin:8px 0;white-space:pre-wrap}#spec{font-size:13px;margin:4px 0 8px}
#spec pre{background:#fff;border:1px solid #e5e7eb;padding:8px;overflow-x:auto}
"""
SCRIPT = """
(function(){
  var root=document.getElementById('content');
  function refresh(){
    if(root.dataset.live!=='true')return;
    fetch(location.href,{headers:{'Accept':'text/html'}}).then(function(r){return r.ok?r.text():null})
    .then(function(text){
      if(!text)return;
      var next=new DOMParser().parseFromString(text,'text/html').getElementById('content');
      if(next){root.replaceWith(next);root=next;bind();}
    }).catch(function(){}).finally(function(){setTimeout(refresh,REFRESH_MS)});
  }
  function bind(){
    var button=document.getElementById('cancel');
    if(!button)return;
    button.onclick=function(){
      if(!confirm('Cancel this experiment? Its running trials stop and its compute is torn down.'))return;
      fetch(button.dataset.url,{method:'DELETE'}).then(function(r){
        document.getElementById('action-result').textContent=r.ok?'cancel requested':'cancel refused ('+r.status+')';
      });
    };
  }
  bind();
  setTimeout(refresh,REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_MS))


def url(path: str, code: str | None, **query: Any) -> str:
    """``path`` with ``query`` and the function key, when there is one."""
    params = {k: v for k, v in query.items() if v is not None}
    if code:
        params["code"] = code
    return path + ("?" + urlencode(params) if params else "")


def _document(title: str, body: str, script: str = "", nonce: str = "") -> str:
    """A page; its ``script`` runs only under ``nonce``, the one the response's CSP names."""
    tag = f'<script nonce="{escape(nonce)}">{script}</script>' if script and nonce else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title><style>{CSS}</style></head>'
        f"<body>{body}{tag}</body></html>"
    )


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def _duration(record: ExperimentRecord) -> float | None:
    if record.started_at is None:
        return None
    end = record.ended_at or datetime.now(UTC)
    return (end - record.started_at).total_seconds()


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s")


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return escape(str(value))


def cost_text(record: ExperimentRecord) -> str:
    """``$1.23 of $5.00`` from the experiment's cost ledger (``ExperimentRecord.cost``), "" when unpriced."""
    cost = record.cost
    if cost is None:
        return ""
    text = f"${cost.spent_usd:,.2f}" + (f" of ${cost.budget_usd:,.2f}" if cost.budget_usd else "")
    return f'<span title="{escape(cost.basis)}">{text}</span>'


def compute_html(record: ExperimentRecord) -> str:
    """What the compute went through (restarts, evictions, heartbeat) and its Azure page, "" when nothing."""
    text = escape(record.compute.summary(link=False))
    link = record.compute.link
    anchor = (
        f'<a id="compute-link" href="{escape(link)}">open in Azure</a>' if link and link.startswith("https://") else ""
    )
    return ", ".join(part for part in (text, anchor) if part)


def trace_html(record: ExperimentRecord) -> str:
    """The experiment's trace id (OpenTelemetry), linked to Application Insights when the deployment knows
    its component; "" when it has no trace (telemetry was off at its submit)."""
    from shared.telemetry import trace_id_of
    from shared.telemetry.links import transaction_link

    trace_id = trace_id_of(record.traceparent)
    if trace_id is None:
        return ""
    link = transaction_link(record.traceparent)
    code = f'<code id="trace-id">{trace_id}</code>'
    return code + (f' <a id="trace-link" href="{escape(link)}">end-to-end transaction</a>' if link else "")


def _trial_costs(record: ExperimentRecord) -> dict[int, float]:
    return dict(record.cost.per_trial_usd) if record.cost is not None else {}


def index_page(
    records: Sequence[ExperimentRecord],
    code: str | None,
    next_token: str | None = None,
    *,
    unreadable: Sequence[UnreadableRecord] = (),
) -> str:
    """The list of experiments, newest first; records that could not be read are named below the table."""
    show_cost = any(cost_text(r) for r in records)
    head = ["name", "id", "status", "progress", "best", "cost" if show_cost else None, "started"]
    head += ["duration", "backend"]
    rows = []
    for r in records:
        metric, _ = objective(r)
        done, total = r.trials_done, max(r.trials_total, 1)
        share = min(done / total, 1) * 100
        best = (
            f"{_number(r.best.value)} <span class=meta>{escape(metric)}, trial {r.best.number}</span>" if r.best else ""
        )
        cells = [
            f'<a href="{escape(url(f"/api/ui/experiments/{r.id}", code))}">{escape(r.name)}</a>',
            f"<code>{escape(r.id)}</code>",
            f'<span class="status {r.status.value}">{r.status.value}</span>',
            f'<span class=bar><span class="{r.status.value}" style="width:{share:.0f}%"></span></span>'
            f"{done}/{r.trials_total}",
            best,
        ]
        if show_cost:
            cells.append(cost_text(r))
        cells += [_when(r.started_at or r.created_at), _seconds(_duration(r)), escape(r.backend)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = (
        '<table id="experiments"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head if h)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    if not records and not unreadable:
        table += "<p class=meta>No experiments yet: submit one with <code>rapids-hpo submit SPEC</code>.</p>"
    if unreadable:
        named = "".join(f"<li><code>{escape(u.id)}</code>: {escape(u.reason)}</li>" for u in unreadable)
        table += f"<p class=meta>Records that could not be read (left out):</p><ul id=unreadable>{named}</ul>"
    more = f'<p><a href="{escape(url("/api/ui", code, page_token=next_token))}">older experiments</a></p>'
    body = f"{_header(code)}<main><h1>Experiments</h1>{table}{more if next_token else ''}</main>"
    return _document("rapids-hpo experiments", body)


def _header(code: str | None) -> str:
    return f'<header><a href="{escape(url("/api/ui", code))}"><b>rapids-hpo</b> experiments</a></header>'


def trial_table(record: ExperimentRecord, trials: Sequence[TrialRecord], limit: int | None = TABLE_LIMIT) -> str:
    """The trials, newest last; past ``limit`` trials only the latest ``limit`` (the charts keep all)."""
    metric, _ = objective(record)
    names = record.searched
    costs = _trial_costs(record)
    head = ["#", "state", *names, "folds", metric, "duration", "engine", "attempt", *(["cost"] if costs else [])]
    rows = []
    ordered = sorted(trials, key=lambda t: t.number)
    shown = ordered[-limit:] if limit else ordered
    note = ""
    if len(shown) < len(ordered):
        note = (
            f'<p class=meta id="trials-note">the latest {len(shown)} of {len(ordered)} trials; all of them: '
            f"<code>/api/experiments/{escape(record.id)}/trials</code> or the saved <code>report.html</code></p>"
        )
    best = record.best.number if record.best else None
    for t in shown:
        folds = ", ".join(f"{v:.4f}" for v in fold_values(t, metric))
        all_params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        star = ' <span title="the best trial">★</span>' if t.number == best else ""
        cells = [
            f'<td class=num title="{escape(all_params)}">{t.number}{star}</td>',
            f'<td><span class="status {t.state.value}">{t.state.value}</span>'
            + (f' <span class=error title="{escape(t.error)}">!</span>' if t.error else "")
            + "</td>",
            *(f"<td class=num>{_number(t.params.get(n, ''))}</td>" for n in names),
            f"<td class=num>{folds}</td>",
            f"<td class=num>{'' if t.value is None else _number(t.value)}</td>",
            f"<td class=num>{_seconds(t.duration_s)}</td>",
            f"<td>{escape(t.engine or '')}</td>",
            f"<td class=num>{t.attempt}</td>",
            *([f"<td class=num>{f'${costs[t.number]:,.3f}' if t.number in costs else ''}</td>"] if costs else []),
        ]
        rows.append(('<tr class="best" id="best-trial">' if t.number == best else "<tr>") + "".join(cells) + "</tr>")
    return note + (
        '<table id="trials"><thead><tr>'
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def front_table(record: ExperimentRecord, view: ParetoView, code: str | None, may_act: bool) -> str:
    """The Pareto front's members, best first: their objectives and, for each whose model is stored, its
    download (offered only to whom the API would serve it)."""
    names = [o["metric"] for o in view.objectives]
    head = "".join(f"<th>{escape(h)}</th>" for h in ["#", *names, "model"])
    rows = []
    for member in view.front[:FRONT_LIMIT]:
        params = ", ".join(f"{k}={v}" for k, v in member.params.items())
        star = ' <span title="the best model">★</span>' if member.best else ""
        if member.model_uri and may_act:
            model = f'<a class=front-model href="{escape(url(member.model_uri, code))}">download</a>'
        else:
            model = "stored" if member.model_uri else '<span class=meta title="past output.front_models">-</span>'
        cells = [f'<td class=num title="{escape(params)}">{member.number}{star}</td>']
        cells += [f"<td class=num>{_number(member.values[n])}</td>" for n in names]
        rows.append("<tr>" + "".join(cells) + f"<td>{model}</td></tr>")
    note = f"the best {FRONT_LIMIT} of {len(view.front)} members; all: " if len(view.front) > FRONT_LIMIT else ""
    return (
        f"<p class=meta>{note}<code>/api/experiments/{escape(record.id)}/pareto</code> · the first "
        f"{view.models_kept} members' models are kept ({escape(view.best_rule)})</p>"
        f'<table id="front"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def charts_html(charts: Sequence[Chart]) -> str:
    return '<div class="charts">' + "".join(f"<figure>{render(c)}</figure>" for c in charts) + "</div>"


def experiment_page(
    record: ExperimentRecord,
    trials: Sequence[TrialRecord],
    importance_doc: dict[str, Any] | None,
    code: str | None,
    *,
    has_model: bool = False,
    plots: Sequence[str] = (),
    nonce: str = "",
    may_act: bool = True,
    data: str | None = None,
    front: ParetoView | None = None,
) -> str:
    """An experiment's page; while it runs, its script (allowed by ``nonce``; none without one) refreshes
    the content every few seconds. Without ``may_act`` (the viewer neither owns the experiment nor is an
    admin) it offers no model download and no cancel, which the API would refuse. ``data``: what the data
    check learned (the task and why), shown under the status line; ``front``: the Pareto front, with several
    objectives."""
    metric, goal = objective(record)
    live = not record.status.terminal
    base = f"/api/experiments/{record.id}"
    actions = []
    if has_model and may_act:
        actions.append(f'<a id="download" href="{escape(url(base + "/model", code))}">Download the best model</a>')
    if live and may_act:
        actions.append(f'<button id="cancel" data-url="{escape(url(base, code))}">Cancel</button>')
    best = (
        f"best {escape(metric)} <b>{_number(record.best.value)}</b> (trial {record.best.number}, {goal})"
        if record.best
        else no_best(not live)
    )
    cost = cost_text(record)
    compute = compute_html(record)
    trace = trace_html(record)
    meta = (
        f'<span class="status {record.status.value}" id="status">{record.status.value}</span> '
        f"{record.trials_done}/{record.trials_total} trials · {best} · backend {escape(record.backend)} · "
        f"started {_when(record.started_at) or 'not yet'} · duration {_seconds(_duration(record)) or '-'}"
        + (f" · cost {cost}" if cost else "")
        + (f" · compute: {compute}" if compute else "")
        + (f" · submitted by {escape(record.submitted_by.label)}" if record.submitted_by else "")
        + (f" · trace {trace}" if trace else "")
    )
    if data:
        meta += f'<br><span id="data-check">data: {escape(data)}</span>'
    failed = record.status is ExperimentStatus.FAILED
    error = f'<p class="error">{escape(record.error)}</p>' if record.error and not failed else ""
    if failed:
        error = f'<div id="failure"><b>Why it failed:</b> {escape(record.error or "no reason was recorded")}</div>'
    if record.no_model:  # a cancelled run that ended without its best model says why
        error += f'<p class=meta id="no-model"><b>No model:</b> {escape(record.no_model)}</p>'
    scored = any(t.value is not None for t in trials)
    if scored or live:
        charts = charts_html(build_charts(record, list(trials), importance_doc))
    else:  # four empty boxes and links to empty plots say nothing: say why there is nothing to draw
        charts, plots = (
            f'<p class=meta id="no-charts">No trial finished with a score ({escape(metric)}): nothing to chart.</p>',
            (),
        )
    plot_links = " ".join(f'<a href="{escape(url(f"{base}/plots/{name}", code))}">{escape(name)}</a>' for name in plots)
    content = (
        f'<div id="content" data-live="{str(live).lower()}" data-status="{record.status.value}">'
        f"<h1>{escape(record.name)} <code class=meta>{escape(record.id)}</code></h1><p class=meta>{meta}</p>{error}"
        f"{spec_html(record.spec)}"
        f'<p class="actions">{"".join(actions)}<span id="action-result" class=meta></span></p>'
        f"<h2>Charts</h2>{charts}"
        + (f"<h2>Pareto front</h2>{front_table(record, front, code, may_act)}" if front and front.front else "")
        + f"<h2>Trials</h2>{trial_table(record, trials)}"
        + (f"<h2>Saved plots</h2><p>{plot_links}</p>" if plots else "")
        + "</div>"
    )
    return _document(f"{record.name} · rapids-hpo", f"{_header(code)}<main>{content}</main>", SCRIPT, nonce)


def report_page(record: ExperimentRecord, trials: Sequence[TrialRecord], importance_doc: dict[str, Any] | None) -> str:
    """A self-contained file of every chart and the trial table (no script, no link out)."""
    metric, _ = objective(record)
    best = f"best {escape(metric)} {_number(record.best.value)} (trial {record.best.number})" if record.best else ""
    body = (
        f"<main><h1>{escape(record.name)} <code class=meta>{escape(record.id)}</code></h1>"
        f"<p class=meta>{record.status.value} · {len(trials)} trials · {best}</p>"
        f"{charts_html(build_charts(record, list(trials), importance_doc))}"
        f"<h2>Trials</h2>{trial_table(record, trials, limit=None)}</main>"
    )
    return _document(f"{record.name} · report", body)


def chart_page(record: ExperimentRecord, chart: Chart) -> str:
    """One chart as a self-contained HTML file."""
    body = f"<main><h1>{escape(record.name)}: {escape(chart.title)}</h1><figure>{render(chart)}</figure></main>"
    return _document(f"{record.name} · {chart.title}", body)
