"""HTTP routes of the dashboard (``/api/ui``) and of the saved plots, an ``APIRouter`` the API includes.

Pages are HTML rendered here from the store, charts are inline SVG (pure Python): nothing is fetched
from the Internet and nothing heavy is imported. The Functions host checks the key (``code`` query
parameter from a browser); the pages pass it on in every link they make.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from shared.auth import Principal, Role, check_visible, require, settings_of, visible_page
from shared.backends.outcome import read_data_check
from shared.config import EXPERIMENT_ID_PATTERN, MODEL_PREFIX
from shared.context import Context, get_context
from shared.dashboard.artifacts import MEDIA_TYPES, PLOTS_PREFIX
from shared.dashboard.charts import CHART_NAMES, PARETO, build_charts
from shared.dashboard.importance import IMPORTANCES_ARTIFACT, ImportanceDocument
from shared.dashboard.pages import chart_page, experiment_page, index_page, report_page
from shared.dashboard.svg import render
from shared.errors import NotFound
from shared.pareto import pareto_view, stored_members
from shared.records import ExperimentRecord, ExperimentStatus, TrialRecord, UnreadableRecord
from shared.spec import ExperimentSpec

PLOT_NAME = r"^[a-z][a-z0-9_-]{0,40}\.(png|svg|html|json)$"
EXPERIMENT_ID = EXPERIMENT_ID_PATTERN  # one id rule at every edge (shared.config)


def page_headers(nonce: str | None = None) -> dict[str, str]:
    """Nothing on a page may come from, or go to, anywhere but this app (a violation is a console error);
    scripts run only by this response's ``nonce`` (none at all without one)."""
    scripts = f"'nonce-{nonce}'" if nonce else "'none'"
    return {
        "Cache-Control": "no-store",  # the page's links carry the key
        "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; script-src {scripts}; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
    }


PLOT_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}
"""Saved plots are written by the compute: served so that no script in one can run in this origin."""

router = APIRouter(prefix="/api")
ContextDep = Annotated[Context, Depends(get_context)]
Code = Annotated[str | None, Query(max_length=512, description="the Functions key, passed on in links")]
ExperimentId = Annotated[str, Path(pattern=EXPERIMENT_ID, max_length=64)]
Reader = Annotated[Principal, require(Role.READ, "reading experiments")]


def _record(ctx: Context, experiment_id: str, caller: Principal, request: Request) -> ExperimentRecord:
    """The experiment, if it exists and the caller may see it (else 404, the same answer)."""
    try:
        record = ctx.store.get_experiment(experiment_id)
    except (NotFound, ValueError):
        raise HTTPException(404, f"experiment {experiment_id!r} not found") from None
    return check_visible(caller, settings_of(request), record)


DRAWN_PLOTS = ("report.html", *(f"{chart}.{form}" for chart in CHART_NAMES for form in ("svg", "html")))
"""The plots :func:`get_plot` draws from the records (pure Python) when the compute saved none."""


def _plot_names(ctx: Context, record: ExperimentRecord) -> list[str]:
    """The plots this route serves: the names the compute saved that fit :data:`PLOT_NAME` and, for an
    experiment that ended without saving its report (an AzureML sweep, a driver that died), the SVG and
    HTML forms drawn on request (so no step of the state machine draws plots)."""
    names = (n.removeprefix(PLOTS_PREFIX) for n in ctx.store.list_artifacts(record.id, PLOTS_PREFIX))
    saved = [n for n in names if re.fullmatch(PLOT_NAME, n)]
    if record.status.terminal and "report.html" not in saved:
        saved += [name for name in DRAWN_PLOTS if name not in saved]
    return saved


def _importances(ctx: Context, experiment_id: str) -> dict[str, Any] | None:
    try:
        return ImportanceDocument.read(ctx.store.get_artifact(experiment_id, IMPORTANCES_ARTIFACT))
    except (NotFound, ValueError):
        return None


@router.get("/ui", response_class=HTMLResponse, summary="Dashboard: the experiments, newest first")
def ui_index(
    ctx: ContextDep,
    caller: Reader,
    request: Request,
    code: Code = None,
    status: ExperimentStatus | None = None,
    page_token: Annotated[str | None, Query(max_length=512)] = None,
) -> HTMLResponse:
    try:
        records, token = visible_page(
            ctx.store, caller, settings_of(request), status=status, limit=50, page_token=page_token
        )
    except ValueError as exc:
        raise HTTPException(422, f"invalid page_token: {exc}") from None
    readable = [r for r in records if isinstance(r, ExperimentRecord)]
    unreadable = [r for r in records if isinstance(r, UnreadableRecord)]
    return HTMLResponse(index_page(readable, code, token, unreadable=unreadable), headers=page_headers())


@router.get(
    "/ui/experiments/{experiment_id}",
    response_class=HTMLResponse,
    summary="Dashboard: one experiment's trials and charts (refreshes while it runs)",
)
def ui_experiment(
    ctx: ContextDep, caller: Reader, request: Request, experiment_id: ExperimentId, code: Code = None
) -> HTMLResponse:
    record = _record(ctx, experiment_id, caller, request)
    trials = ctx.store.list_trials(experiment_id)
    plots = _plot_names(ctx, record)
    has_model = bool(ctx.store.list_artifacts(experiment_id, MODEL_PREFIX))
    nonce = secrets.token_urlsafe(18)
    importances = _importances(ctx, experiment_id)
    may_act = caller.has(Role.ADMIN) or caller.owns(record.submitted_by)  # what the API would allow
    check = read_data_check(ctx.store, experiment_id)
    spec = record.spec
    front = None
    if spec is not None and spec.objective.multi:
        front = pareto_view(spec, trials, record.id, stored_members(ctx.store, record, trials))
    page = experiment_page(
        record,
        trials,
        importances,
        code,
        has_model=has_model,
        plots=plots,
        nonce=nonce,
        may_act=may_act,
        data=None if check is None else check.describe(),
        front=front,
    )
    return HTMLResponse(page, headers=page_headers(nonce))


class StudyExport(BaseModel):
    """What Optuna's tools need of an experiment: its normalized spec and its trials (a page of them)."""

    id: str
    name: str
    status: ExperimentStatus
    spec: ExperimentSpec | None = Field(description="the admitted spec (none for a request refused at intake)")
    trials: list[TrialRecord]


STUDY_PAGE = 100
"""Trials per ``/study`` page unless the caller asks for another size (at most 1000)."""


@router.get(
    "/experiments/{experiment_id}/study",
    response_model=StudyExport,
    summary="The spec and the trials, a page at a time, for `rapids-hpo export --optuna-journal` and other tools",
    description=(
        "Trials numbered above `after`, at most `limit`, as `GET /trials` pages them: when more follow, the "
        '`Link` header names the next page (`rel="next"`) and `X-Next-After` its `after`.'
    ),
)
def get_study(
    ctx: ContextDep,
    caller: Reader,
    request: Request,
    response: Response,
    experiment_id: ExperimentId,
    after: Annotated[int, Query(ge=-1, le=10**10)] = -1,
    limit: Annotated[int, Query(ge=1, le=1000)] = STUDY_PAGE,
) -> StudyExport:
    record = _record(ctx, experiment_id, caller, request)
    trials = ctx.store.list_trials(experiment_id, after=after, limit=limit + 1)
    if len(trials) > limit:
        trials = trials[:limit]
        following = trials[-1].number
        response.headers["X-Next-After"] = str(following)
        response.headers["Link"] = (
            f'</api/experiments/{experiment_id}/study?after={following}&limit={limit}>; rel="next"'
        )
    return StudyExport(id=record.id, name=record.name, status=record.status, spec=record.spec, trials=trials)


@router.get(
    "/experiments/{experiment_id}/plots",
    response_model=list[str],
    summary="Names of the plots of an ended experiment (PNG, SVG, HTML; SVG and HTML drawn when none was saved)",
)
def list_plots(ctx: ContextDep, caller: Reader, request: Request, experiment_id: ExperimentId) -> list[str]:
    return _plot_names(ctx, _record(ctx, experiment_id, caller, request))


@router.get(
    "/experiments/{experiment_id}/plots/{name}",
    responses={
        200: {"content": {t.split(";")[0]: {} for t in MEDIA_TYPES.values()}},
        404: {"description": "no such experiment or plot"},
    },
    summary="One saved plot; SVG and HTML forms are drawn from the records when none was saved",
)
def get_plot(
    ctx: ContextDep,
    caller: Reader,
    request: Request,
    experiment_id: ExperimentId,
    name: Annotated[str, Path(pattern=PLOT_NAME, max_length=48)],
) -> Response:
    record = _record(ctx, experiment_id, caller, request)
    media_type = MEDIA_TYPES["." + name.rsplit(".", 1)[1]]
    try:
        data = ctx.store.get_artifact(experiment_id, PLOTS_PREFIX + name)
        return Response(data, media_type=media_type, headers=PLOT_HEADERS)
    except NotFound:
        pass
    stem, suffix = name.rsplit(".", 1)
    trials = ctx.store.list_trials(experiment_id)
    importance_doc = _importances(ctx, experiment_id)
    if stem == "report" and suffix == "html":
        return Response(report_page(record, trials, importance_doc), media_type=media_type, headers=PLOT_HEADERS)
    if stem in (*CHART_NAMES, PARETO) and suffix in {"svg", "html"}:
        chart = next((c for c in build_charts(record, trials, importance_doc) if c.name == stem), None)
        if chart is not None:  # the Pareto front's only with several objectives
            body = render(chart) if suffix == "svg" else chart_page(record, chart)
            return Response(body, media_type=media_type, headers=PLOT_HEADERS)
    raise HTTPException(404, f"experiment {experiment_id!r} has no plot {name!r} (status {record.status.value})")
