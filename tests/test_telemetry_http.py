"""An HTTP submit sits under the Functions host's invocation span when the request brings no ``traceparent``
(``shared.telemetry.asgi``): through ``function_app``'s HTTP function, as the host calls it, with the
invocation's trace context where ``azure.functions`` puts it. The real worker's path is in
test_telemetry_worker.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.context import set_context
from shared.telemetry import api, parse_traceparent, trace_id_of
from shared.telemetry.asgi import HOST_TRACE_KEY, host_traceparent_scope
from tests.control_plane import local_context, tiny_spec
from tests.fakes.scripted import ScriptedBackend
from tests.telemetry_fixtures import otel  # noqa: F401  (the fixture)
from tests.test_function_app import FUNCTIONS

HOST = "00-" + "1a" * 16 + "-" + "2b" * 8 + "-01"
CALLER = "00-" + "3c" * 16 + "-" + "4d" * 8 + "-01"


class HostTraceContext(func._abc.TraceContext):
    """The invocation's trace context as the worker hands it to a function (``Context.trace_context``)."""

    def __init__(self, trace_parent: str, trace_state: str = "") -> None:
        self._parent, self._state = trace_parent, trace_state

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def trace_state(self) -> str:
        return self._state

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class HostContext(func.Context):
    """``azure.functions.Context`` as the worker builds it for one invocation."""

    def __init__(self, trace_context: HostTraceContext) -> None:
        self._trace = trace_context

    invocation_id = property(lambda self: "invocation-1")
    function_name = property(lambda self: "http_app_func")
    function_directory = property(lambda self: ".")
    trace_context = property(lambda self: self._trace)
    retry_context = property(lambda self: None)
    thread_local_storage = property(lambda self: SimpleNamespace(invocation_id="invocation-1"))


@pytest.fixture
def ctx(tmp_path):
    context = local_context(tmp_path)
    context.backends["local"] = ScriptedBackend()
    set_context(context)
    yield context
    set_context(None)


def submit(headers: dict[str, str], host: str = HOST, state: str = "") -> str:
    """POST /api/experiments through the HTTP function under a host invocation; the record's traceparent."""
    request = func.HttpRequest(
        method="POST",
        url="http://localhost/api/experiments",
        body=json.dumps(tiny_spec()).encode(),
        headers={"content-type": "application/json", **headers},
    )
    handler = FUNCTIONS["http_app_func"].get_user_function()
    response = asyncio.run(handler(request, HostContext(HostTraceContext(host, state))))
    assert response.status_code == 202, response.get_body()
    return str(json.loads(response.get_body())["id"])


def server_span(otel: Any, trace_id: str) -> Any:  # noqa: F811
    return next(
        s
        for s in otel.spans.get_finished_spans()
        if f"{s.context.trace_id:032x}" == trace_id and s.kind.name == "SERVER"
    )


def test_a_submit_without_a_traceparent_is_a_child_of_the_hosts_invocation(ctx, otel):  # noqa: F811
    experiment_id = submit({})
    record = ctx.store.get_experiment(experiment_id)
    assert trace_id_of(record.traceparent) == "1a" * 16  # the experiment's trace is the host's
    request = server_span(otel, "1a" * 16)
    assert f"{request.parent.span_id:016x}" == "2b" * 8 and request.parent.is_remote
    submit_span = next(s for s in otel.spans.get_finished_spans() if s.name == "submit experiment")
    assert f"{submit_span.context.trace_id:032x}" == "1a" * 16


def test_a_callers_valid_traceparent_is_kept(ctx, otel):  # noqa: F811
    record = ctx.store.get_experiment(submit({"traceparent": CALLER}))
    assert trace_id_of(record.traceparent) == "3c" * 16
    assert f"{server_span(otel, '3c' * 16).parent.span_id:016x}" == "4d" * 8


@pytest.mark.parametrize(
    "hostile",
    [
        "00-" + "0" * 32 + "-" + "4d" * 8 + "-01",
        CALLER.upper(),
        CALLER + "-x",
        "zz",
        CALLER + "," + CALLER,  # two values folded into one header
    ],
)
def test_a_malformed_traceparent_header_gives_way_to_the_hosts(ctx, otel, hostile):  # noqa: F811
    record = ctx.store.get_experiment(submit({"traceparent": hostile, "tracestate": "x=1"}))
    assert trace_id_of(record.traceparent) == "1a" * 16


def test_without_a_valid_host_context_a_request_starts_its_own_trace(ctx, otel):  # noqa: F811
    record = ctx.store.get_experiment(submit({}, host="junk"))
    assert trace_id_of(record.traceparent) not in (None, "1a" * 16)


def test_off_the_scope_is_not_touched():
    from shared.telemetry.asgi import HostTraceASGI

    api.deactivate()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "http", "headers": [], HOST_TRACE_KEY: HostTraceContext(HOST)}
    asyncio.run(HostTraceASGI(app)(scope, None, None))
    assert seen == [scope] and seen[0] is scope


headers = st.lists(
    st.tuples(
        st.sampled_from([b"traceparent", b"TraceParent", b"tracestate", b"x-other"]),
        st.one_of(st.binary(max_size=70), st.just(CALLER.encode())),
    ),
    max_size=4,
)


@given(headers, st.one_of(st.text(max_size=60), st.just(HOST), st.none()), st.text(max_size=600))
def test_the_scope_ends_with_one_valid_traceparent_or_is_left_alone(given_headers, host, state):
    scope = {
        "type": "http",
        "headers": given_headers,
        HOST_TRACE_KEY: SimpleNamespace(trace_parent=host, trace_state=state),
    }
    result = host_traceparent_scope(scope)
    if result is scope:
        return
    assert parse_traceparent(host) == host
    parents = [v for n, v in result["headers"] if n.lower() == b"traceparent"]
    assert parents == [host.encode()]
    states = [v for n, v in result["headers"] if n.lower() == b"tracestate"]
    assert len(states) <= 1 and all(len(s) <= 512 for s in states)
    others = [(n, v) for n, v in given_headers if n.lower() not in (b"traceparent", b"tracestate")]
    assert [(n, v) for n, v in result["headers"] if n.lower() not in (b"traceparent", b"tracestate")] == others
