"""schemathesis against the served OpenAPI document (issue 10, finding 3: malformed ids gave 500s).

The API is served by uvicorn on a free loopback port over a local store holding one experiment with
trials and a model; schemathesis reads ``/api/openapi.json`` from it and sends the requests it generates
(ids, query strings, headers and bodies from the declared schemas, and values that break them). Every
answer must be below 500.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from gpu_jobs.params import HYPERPARAMETERS
from shared.api import create_api
from shared.handlers import submit_experiment
from shared.records import TrialRecord, TrialState
from shared.spec import ExperimentSpec, load_spec
from tests.control_plane import local_context, tiny_spec
from tests.served import serving

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 60
SPEC_EXAMPLES = 150


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ctx = local_context(Path(tmp_path_factory.mktemp("fuzz")))
    record, _ = submit_experiment(ctx, load_spec(tiny_spec()))
    ctx.store.put_trial(
        TrialRecord(experiment_id=record.id, number=0, params={"max_depth": 4}, state=TrialState.COMPLETED, value=0.8)
    )
    ctx.store.put_artifact(record.id, "model/model.json", b"{}")
    with serving(create_api(context=ctx)) as url:
        yield url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_generated_request_gets_a_server_error(served: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{served}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    sent: list[str] = []
    server_errors: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=served, timeout=30)
            sent.append(f"{case.method} {case.formatted_path}")
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                )

        try:
            call()
        except Unsatisfiable:  # nothing to break (an operation without parameters): negative mode only
            assert mode is GenerationMode.NEGATIVE
    assert len(sent) >= len(operations) * 5, "schemathesis sent (almost) nothing"
    print(f"{mode.value}: {len(sent)} requests over {len(operations)} operations, {len(server_errors)} server errors")
    assert not server_errors, f"{len(server_errors)} server errors in {len(sent)} requests: {server_errors[:5]}"


def spec_shaped(document: dict[str, Any]) -> dict[str, Any]:
    """The served OpenAPI document with the POST body declared as the experiment spec's own JSON schema
    (the served one says only "an object"), so schemathesis writes spec-shaped bodies and breaks them."""
    patched = copy.deepcopy(document)
    schema = ExperimentSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    patched.setdefault("components", {}).setdefault("schemas", {}).update(schema.pop("$defs", {}))
    names = sorted({name for table in HYPERPARAMETERS.values() for name in table})
    schema["properties"]["search_space"]["propertyNames"] = {"enum": names}  # else nearly all unknown names
    patched["components"]["schemas"]["ExperimentSpecDocument"] = schema
    body = patched["paths"]["/api/experiments"]["post"]["requestBody"]
    body["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ExperimentSpecDocument"}}}
    return patched


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_generated_spec_gets_a_server_error(served: str, mode: GenerationMode) -> None:
    """Issue 20: spec-shaped bodies with values the schema allows and values that break it (huge
    numbers, wrong types, missing sections) are each a 202 or a 4xx naming a field, never a 5xx."""
    document = httpx.get(f"{served}/api/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec_shaped(document))
    [operation] = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().method.upper() == "POST" and result.ok().path == "/api/experiments"
    ]
    answers: list[int] = []
    server_errors: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=SPEC_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def call(case: schemathesis.Case) -> None:
        response = case.call(base_url=served, timeout=30)
        answers.append(response.status_code)
        if response.status_code >= 500:
            server_errors.append(f"{response.status_code}: {json.dumps(case.body)[:300]} -> {response.text[:300]}")
        elif response.status_code >= 400:
            errors = response.json().get("errors", [])
            assert errors and all(e["loc"] for e in errors), response.text[:500]

    call()
    print(f"{mode.value}: {len(answers)} specs, answers {sorted(set(answers))}, {len(server_errors)} server errors")
    assert len(answers) >= SPEC_EXAMPLES // 2, "schemathesis sent (almost) nothing"
    assert not server_errors, f"{len(server_errors)} server errors in {len(answers)} specs: {server_errors[:3]}"
