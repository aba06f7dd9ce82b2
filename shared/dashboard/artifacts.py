"""The charts saved as an experiment's artifacts under ``plots/`` when it ends.

Made on the compute, at the end of the driver (:mod:`shared.hpo.run_driver`): the compute already has
every trial, Optuna for the importances and matplotlib for the PNGs, and it writes only its own
experiment's artifacts. The Function App renders nothing heavy: it serves these files, and draws the
SVG/HTML forms itself (pure Python), on request: for a run still going, and for an experiment whose
compute saved none (an AzureML sweep; :mod:`shared.dashboard.routes` lists them for it).

Files: ``<chart>.svg``, ``<chart>.html`` (self-contained) and ``<chart>.png`` for each of
:data:`~shared.dashboard.charts.CHART_NAMES`, ``report.html`` (every chart and the trial table) and
``importances.json``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from shared.dashboard.charts import build_charts
from shared.dashboard.importance import IMPORTANCES_ARTIFACT, compute_importances
from shared.dashboard.pages import chart_page, report_page
from shared.dashboard.svg import render
from shared.ports import TrialStore
from shared.records import ExperimentRecord, TrialRecord

PLOTS_PREFIX = "plots/"
MEDIA_TYPES = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
}
log = logging.getLogger("rapids_hpo.dashboard")


def png_renderer() -> Any:
    """``render_png`` when matplotlib is installed, else ``None`` (the PNGs are then left out)."""
    try:
        from shared.dashboard.png import render_png
    except ImportError:
        return None
    return render_png


def write_plots(store: TrialStore, record: ExperimentRecord) -> list[str]:
    """Compute the importances and save every chart of ``record``; returns the names written."""
    trials = store.list_trials(record.id)
    importance_doc: dict[str, Any] = compute_importances(record, trials)
    store.put_artifact(record.id, IMPORTANCES_ARTIFACT, json.dumps(importance_doc, indent=2).encode())
    to_png = png_renderer()
    if to_png is None:
        log.warning("matplotlib is not installed: plots/ gets no PNG files")
    return [IMPORTANCES_ARTIFACT, *_save_charts(store, record, trials, importance_doc, to_png)]


def _save_charts(
    store: TrialStore,
    record: ExperimentRecord,
    trials: list[TrialRecord],
    importance_doc: dict[str, Any] | None,
    to_png: Any,
) -> list[str]:
    written = []
    charts = build_charts(record, trials, importance_doc)
    for chart in charts:  # CHART_NAMES, and the Pareto front's with several objectives
        name = chart.name
        files = {f"{name}.svg": render(chart).encode(), f"{name}.html": chart_page(record, chart).encode()}
        if to_png is not None:
            files[f"{name}.png"] = to_png(chart)
        for file_name, data in files.items():
            store.put_artifact(record.id, PLOTS_PREFIX + file_name, data)
            written.append(PLOTS_PREFIX + file_name)
    store.put_artifact(record.id, PLOTS_PREFIX + "report.html", report_page(record, trials, importance_doc).encode())
    written.append(PLOTS_PREFIX + "report.html")
    return written


def save_plots_safely(store: TrialStore, record: ExperimentRecord) -> list[str]:
    """:func:`write_plots`, logging instead of raising: a chart never fails an experiment."""
    try:
        return write_plots(store, record)
    except Exception:
        log.warning("plots of %s not saved", record.id, exc_info=True)
        return []


class DashboardReports:
    """The dashboard's part of a run on the compute, whichever backend runs the driver
    (:class:`shared.hpo.run_driver.Reports`): importances refreshed as trials end, every chart at the end."""

    def __init__(self, store: TrialStore, record: ExperimentRecord) -> None:
        from shared.dashboard.importance import ImportanceRefresher

        self.store, self.record = store, record
        self.on_trial_end = ImportanceRefresher(store, record)

    def at_end(self) -> None:
        save_plots_safely(self.store, self.record)
