"""Property-based API tests from the OpenAPI schema (schemathesis 4): no 5xx, documented answers.

Every operation is exercised with generated valid and invalid inputs; each response must be a
documented status code with a body matching its schema (which includes the JSON error shapes).
Example counts are kept small so the whole module runs in about a minute on 2 cores.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from figsearch.core.config import Settings
from tests.figsearch.api_fixtures import loaded_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(small_index_data_dir, tiny_model_dir):
    app_settings = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir), device="cpu",
                            rate_limit_per_minute=0, dedup_threshold=0.99999, admin_token="")
    return schemathesis.openapi.from_asgi("/openapi.json", loaded_app(app_settings))


def _operations(api_schema) -> list:
    return [result.ok() for result in api_schema.get_all_operations()]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_schema(api_schema, mode):
    operations = _operations(api_schema)
    assert len(operations) >= 12
    failures, calls = [], []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=8, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call_and_validate(checks=CHECKS)
            calls.append(response.status_code)

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to make invalid (no parameters)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(calls) >= 3 * len(operations) and max(calls) < 500
    if mode is GenerationMode.NEGATIVE:
        assert sum(400 <= c < 500 for c in calls) > len(calls) / 2  # invalid input was refused


def test_openapi_documents_the_error_shapes(small_index_data_dir, tiny_model_dir):
    from fastapi.testclient import TestClient

    app_settings = Settings(data_dir=small_index_data_dir, model=str(tiny_model_dir))
    spec = TestClient(loaded_app(app_settings)).get("/openapi.json").json()
    search = spec["paths"]["/v1/search"]["get"]
    assert search["summary"] and {"400", "422", "503"} <= set(search["responses"])
    ref = search["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ValidationErrorResponse")
    assert "errors" in spec["components"]["schemas"]["ValidationErrorResponse"]["properties"]
