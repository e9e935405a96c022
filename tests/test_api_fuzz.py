"""Property-based hostile input over the OpenAPI document (schemathesis): every operation gets
generated valid and invalid requests, a bounded number of examples each (not a time limit), and
must answer without a 5xx, with a documented status and a body that matches the document."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from dermground.platform.api import create_app
from dermground.platform.settings import Settings

READ, ADMIN = "fuzz-read-key", "fuzz-admin-key"
EXAMPLES_PER_OPERATION = 60  # per generation mode: bounded by count, never by time
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [("GET", "/health"), ("GET", "/attributes"), ("GET", "/examples"), ("POST", "/search"),
              ("POST", "/search/upload"), ("GET", "/images/{isic_id}"), ("POST", "/predict"), ("POST", "/sql"),
              ("GET", "/collections")]


@pytest.fixture(scope="module")
def api_schema(search_collection, tiny_backbone):
    # Greedy, one view: a generated valid image costs the tiny model 16 short answers, not 8 x 4 x 16.
    config = Settings(home=search_collection["home"], api_read_key=READ, api_admin_key=ADMIN,
                      max_upload_bytes=200_000, max_image_pixels=4_000_000, predict_samples=0, predict_views=1,
                      api_model_work_per_client=64)
    app = create_app(config, backbone=tiny_backbone)
    with TestClient(app):  # runs the lifespan: the store opens, and closes at the end of the module
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_fuzzed_operations_are_all_of_them(api_schema) -> None:
    found = sorted((op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations())
    assert found == sorted(OPERATIONS)


# Operations without parameters or body have no invalid request to generate.
NO_INPUT = {("GET", "/health"), ("GET", "/attributes"), ("GET", "/collections")}
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode is GenerationMode.POSITIVE or (m, p) not in NO_INPUT]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_5xx_and_every_answer_is_documented(api_schema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    answered: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:  # noqa: ANN001 - a schemathesis Case
        response = case.call_and_validate(headers={"X-API-Key": ADMIN}, checks=CHECKS)
        answered.append(response.status_code)

    run()
    assert answered and max(answered) < 500
