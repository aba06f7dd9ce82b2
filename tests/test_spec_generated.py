"""The spec reader under generated input (issue 20): Hypothesis writes specs an attacker would, starting
from a valid one and putting arbitrary JSON-ish values (huge integers, non-finite floats, long strings,
deep nesting, unknown keys) at any path, and also whole arbitrary documents.

For each: ``load_spec`` returns a spec or raises ``SpecError`` (never ``OverflowError``, ``RecursionError``,
a bare ``ValueError`` or a ``TypeError``); every error names a field path; at most ``MAX_ERRORS`` are listed;
an accepted spec is valid JSON and loads back equal. Through the API: never a 5xx, and a refusal stores
nothing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.api import create_api
from shared.spec import SpecError, SpecPolicy, load_spec
from shared.spec.errors import MAX_ERRORS
from tests.control_plane import local_context, tiny_spec

FIELD_NAMES = [
    "name", "dataset", "trial", "search_space", "sampling_algorithm", "limits", "objective", "compute",
    "output", "tags", "description", "uri", "target", "max_rows", "params", "model", "cv_folds", "values",
    "type", "upper", "min_value", "max_value", "q", "mu", "sigma", "seed", "timeout", "trial_timeout",
    "max_total_trials", "max_concurrent_trials", "n_estimators", "max_depth", "max_features", "n_workers",
    "network", "allowed_source_prefixes", "security", "backend", "early_termination", "slack_factor",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**53 + 1, 2**63, -(2**64), 0, 1, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([5e-324, 1e308, -1e308, 1e14, 2.5e-300]),
    st.text(max_size=40),
    st.sampled_from(["x" * 5000, "choice", "quniform", "vmcluster", "0.0.0.0/1", "::/0", "AzureCloud"]),
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


values = st.one_of(
    st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=6),
            st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), children, max_size=6),
        ),
        max_leaves=25,
    ),
    st.integers(min_value=30, max_value=400).map(nested),
    st.integers(min_value=1001, max_value=3000).map(lambda n: [1] * n),
)


def put(document: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """``document`` with ``value`` at ``path`` (creating mappings on the way; a non-mapping is replaced)."""
    out = copy.deepcopy(document)
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


BASE = tiny_spec()
REAL_PATHS = [
    ["name"],
    ["description"],
    ["tags"],
    ["dataset", "uri"],
    ["compute", "backend"],
    ["dataset", "max_rows"],
    ["trial", "params"],
    ["trial", "params", "n_bins"],
    ["trial", "cv_folds"],
    ["search_space"],
    ["search_space", "n_estimators"],
    ["search_space", "n_estimators", "values"],
    ["search_space", "max_features", "min_value"],
    ["search_space", "max_features", "q"],
    ["sampling_algorithm"],
    ["sampling_algorithm", "seed"],
    ["limits", "timeout"],
    ["limits", "max_total_trials"],
    ["compute"],
    ["compute", "n_workers"],
    ["early_termination"],
]

mutated = st.builds(
    put,
    st.just(BASE),
    st.one_of(st.sampled_from(REAL_PATHS), st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=4)),
    values,
)
NUMERIC_PATHS = [p for p in REAL_PATHS if p[-1] not in {"name", "description", "tags", "uri", "compute"}]
plausible = st.builds(  # near the valid ranges: most are accepted, the rest refused at an edge
    put,
    st.just(BASE),
    st.sampled_from(NUMERIC_PATHS),
    st.integers(min_value=-3, max_value=6000) | st.floats(min_value=-2, max_value=2) | st.lists(st.integers(1, 64)),
)
uris = st.builds(  # the dataset URI, which hosted mode parses further: odd netlocs, ports, credentials
    put,
    st.just(BASE),
    st.just(["dataset", "uri"]),
    st.builds(
        "".join,
        st.lists(
            st.sampled_from(["https://", "abfss://", "az://", "c@", "[", "]", "::1", "acct.blob.core.windows.net"])
            | st.sampled_from([":", ":99999", ":abc", "/x.csv", "?sig=s", "user:pw@", "%00", "#"])
            | st.text(max_size=5),
            min_size=1,
            max_size=8,
        ),
    ),
)
arbitrary = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=20), values, max_size=8)
documents = st.one_of(mutated, mutated, plausible, uris, arbitrary)


HOSTED = SpecPolicy(hosted=True, data_hosts=(".data.example.org",))


def check(document: dict[str, Any], policy: SpecPolicy | None = None) -> SpecError | None:
    """Load ``document`` (under ``policy``); assert the reader's contract; return the refusal, if any."""
    try:
        spec = load_spec(document, policy)
    except SpecError as exc:
        assert exc.errors or exc.more
        assert len(exc.errors) <= MAX_ERRORS
        for error in exc.errors:
            assert error["loc"], f"an error without a field path: {error}"
            assert len(error["msg"]) < 2_000
        return exc
    text = json.dumps(spec.to_document(), allow_nan=False)
    assert load_spec(text, policy) == spec
    return None


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents, st.sampled_from([None, HOSTED]))
def test_the_reader_refuses_with_field_paths_or_accepts_valid_json(
    document: dict[str, Any], policy: SpecPolicy | None
) -> None:
    check(document, policy)


@pytest.fixture(scope="module", params=["local", "hosted"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, Any]:
    ctx = local_context(Path(tmp_path_factory.mktemp("generated")))
    ctx.settings = replace(ctx.settings, hosted=request.param == "hosted")
    return TestClient(create_api(context=ctx), base_url="http://localhost", raise_server_exceptions=False), ctx


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_the_api_answers_generated_specs_without_a_5xx_and_stores_no_refusal(client, document) -> None:
    api, ctx = client
    before = len(ctx.store.list_experiments(limit=1000)[0])
    body = json.dumps(document)  # Infinity/NaN as Python writes them: the reader takes them, the spec refuses
    response = api.post("/api/experiments", content=body, headers={"content-type": "application/json"})
    assert response.status_code in {202, 413, 422}, response.text[:500]  # read and judged: no 5xx, no edge refusal
    after = len(ctx.store.list_experiments(limit=1000)[0])
    if response.status_code >= 400:
        assert after == before
        assert all(e["loc"] for e in response.json()["errors"]), response.text[:500]
    else:
        assert response.status_code == 202 and after == before + 1
