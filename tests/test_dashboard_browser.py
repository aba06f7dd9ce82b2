"""The dashboard in a real browser: Debian's chromium driven by Playwright, against ``rapids-hpo serve``.

Opens the index and the pages of a finished and a running experiment, checks the rows, that every chart
drew its marks, that links keep the Functions key (``code``), that a running page refreshes itself and
cancels, and fails on any console error. ``RAPIDS_HPO_SCREENSHOTS=DIR`` also saves the screenshots there
(how ``docs/dashboard-*.png`` were made).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.dashboard.artifacts import write_plots
from shared.dashboard.charts import CHART_NAMES
from shared.dashboard.importance import ImportanceRefresher
from shared.records import ExperimentStatus, TrialState
from tests.control_plane import local_context
from tests.dashboard_data import make_experiment
from tests.test_end_to_end import served, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINISHED, RUNNING = "exp-20261130090000-aaaaaa", "exp-20261130100000-bbbbbb"
FAILED = "exp-20261130080000-cccccc"  # made by the last test: the index test sees two experiments

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev requirement")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, object, object]]:
    """A served store with a finished experiment (plots saved, a model) and a running one."""
    home = tmp_path_factory.mktemp("dashboard")
    ctx = local_context(home)
    finished = make_experiment(ctx.store, FINISHED, trials=12, status=ExperimentStatus.COMPLETED)
    write_plots(ctx.store, finished)
    ctx.store.put_artifact(FINISHED, "model/model.json", b'{"trees": []}')
    running = make_experiment(ctx.store, RUNNING, trials=5, running=2, status=ExperimentStatus.RUNNING)
    ImportanceRefresher(ctx.store, running)(next(t for t in ctx.store.list_trials(RUNNING) if t.value))
    with served(home) as client:  # with the key this start of serve made (the client sends it)
        yield str(client.base_url), ctx, client


def key_of(client) -> str:
    return client.headers["x-functions-key"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A page that collects console errors and uncaught exceptions; the test fails if there are any."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == [], errors


def screenshot(page, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    target = os.environ.get("RAPIDS_HPO_SCREENSHOTS")
    if target:
        shutil.copy(path, Path(target) / name)


def check_charts(page) -> None:
    """Every chart is drawn: visible, with its marks (points, lines, bars) laid out."""
    charts = page.locator("svg.chart")
    assert charts.count() == len(CHART_NAMES)
    for name in CHART_NAMES:
        chart = page.locator(f'svg.chart[data-chart="{name}"]')
        box = chart.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 150, name
        assert int(chart.get_attribute("data-marks")) > 0, name
        marks = chart.locator("circle, polyline, path, rect[fill='#2563eb']")
        assert marks.count() > 0 and marks.first.bounding_box() is not None, name


def test_index_lists_the_experiments_and_links_keep_the_key(site, page, tmp_path):
    base, _, client = site
    key = key_of(client)
    page.goto(f"{base}/api/ui?code={key}")
    rows = page.locator("#experiments tbody tr")
    assert rows.count() == 2
    assert "RUNNING" in rows.nth(0).inner_text() and "COMPLETED" in rows.nth(1).inner_text()
    page.set_viewport_size({"width": 1400, "height": 200})  # the page's own height, not an empty screen
    screenshot(page, "dashboard-index.png", tmp_path)
    page.locator(f'a[href*="{FINISHED}"]').click()
    page.wait_for_load_state()
    assert page.url.endswith(f"/api/ui/experiments/{FINISHED}?code={key}")


def test_finished_experiment_page(site, page, tmp_path):
    base, _, client = site
    key = key_of(client)
    page.goto(f"{base}/api/ui/experiments/{FINISHED}?code={key}")
    assert page.locator("#trials tbody tr").count() == 12
    assert page.locator("#trials tbody tr .PRUNED").count() == 3
    check_charts(page)
    assert page.locator("#cancel").count() == 0
    assert page.locator("#download").get_attribute("href").endswith(f"/model?code={key}")
    with page.expect_download() as download:
        page.locator("#download").click()
    assert download.value.suggested_filename == f"{FINISHED}-model.zip"
    screenshot(page, "dashboard-experiment.png", tmp_path)
    png = f"/api/experiments/{FINISHED}/plots/history.png?code={key}"
    loaded = (
        "src => new Promise((ok, no) => "
        "{ const i = new Image(); i.onload = () => ok(i.naturalWidth); i.onerror = no; i.src = src; })"
    )
    assert page.evaluate(loaded, png) == 640
    page.goto(f"{base}/api/experiments/{FINISHED}/plots/report.html?code={key}")
    assert page.locator("svg.chart").count() == len(CHART_NAMES)
    # (a saved plot is served sandboxed: no script, Playwright's included, runs in it)


def test_running_experiment_page_refreshes_itself_then_cancels(site, page, tmp_path):
    base, ctx, client = site
    key = key_of(client)
    page.goto(f"{base}/api/ui/experiments/{RUNNING}?code={key}")
    assert page.locator("#trials tbody tr").count() == 7
    assert page.locator("#trials tbody tr .RUNNING").count() == 2
    check_charts(page)
    screenshot(page, "dashboard-running.png", tmp_path)
    trial = next(t for t in ctx.store.list_trials(RUNNING) if t.state is TrialState.RUNNING)
    ctx.store.put_trial(trial.model_copy(update={"state": TrialState.PRUNED, "intermediate": {1: 0.80, 2: 0.81}}))
    expect = sync_api.expect  # waits without eval (the page's policy forbids it)
    expect(page.locator("#trials tbody tr .RUNNING")).to_have_count(1, timeout=20_000)  # refreshed in place
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#cancel").click()
    expect(page.locator("#action-result")).to_have_text("cancel requested", timeout=10_000)
    wait_for(client, RUNNING, lambda body: body["status"] == "CANCELLED", timeout=60)
    page.wait_for_selector('#content[data-live="false"]', timeout=20_000)
    assert page.locator("#status").inner_text() == "CANCELLED"


def test_parallel_axis_labels_do_not_overlap_as_drawn(site, page):
    """Measured in the browser (the font it really uses): no two axis names of the parallel chart overlap."""
    base, _, client = site
    page.goto(f"{base}/api/ui/experiments/{FINISHED}?code={key_of(client)}")
    labels = page.locator('svg.chart[data-chart="parallel"] text[font-weight="600"]')
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    boxes = [b for b in boxes[1:] if b]  # the first bold text is the chart's title
    assert len(boxes) == 5  # four parameters and the metric
    for a, b in itertools.combinations(boxes, 2):
        apart = a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
        assert apart or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"], (a, b)


def test_a_failed_experiments_page_says_why_without_empty_charts(site, page, tmp_path):
    base, ctx, client = site
    failed = ctx.store.get_experiment(FINISHED).model_copy(
        update={
            "id": FAILED,
            "status": ExperimentStatus.FAILED,
            "best": None,
            "trials_done": 0,
            "error": "data check failed: target column 'churn' not found in /data/t.csv; 3 columns: a, b, c",
        }
    )
    ctx.store.create_experiment(failed)
    page.goto(f"{base}/api/ui/experiments/{FAILED}?code={key_of(client)}")
    assert "target column 'churn' not found" in page.locator("#failure").inner_text()
    assert page.locator("svg.chart").count() == 0 and page.locator("#no-charts").is_visible()
    page.locator("#spec summary").click()
    assert "search_space:" in page.locator("#spec pre").inner_text()
    screenshot(page, "dashboard-failed.png", tmp_path)
