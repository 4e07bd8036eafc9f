"""schemathesis against /openapi.json: generated requests never get a 5xx, and every response
matches its documented status code, content type and schema."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import api_keys
from sms_bulk_app import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# every route of api.py (19), api_templates.py (10) and phones_api.py (3)
OPERATIONS = 32


@pytest.fixture(scope="module")
def operations(tmp_path_factory) -> tuple[list, str]:
    """The document's operations, read from one app, and an API key with every scope."""
    data_dir = tmp_path_factory.mktemp("openapi") / "data"
    app = create_app({"DATA_DIR": str(data_dir), "LOG_LEVEL": "warning", "API_KEY": "configured"})
    _, key = api_keys.create(app.extensions["sms_bulk_app"].store, "schemathesis", list(api_keys.SCOPES), None)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()], key


def test_the_document_has_every_operation(operations):
    assert len(operations[0]) == OPERATIONS


@pytest.mark.parametrize("index", range(OPERATIONS))
def test_each_operation_conforms_to_the_document(operations, index):
    """One test per operation, so that the runners share them."""
    operation, key = operations[0][index], operations[1]

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def conforms(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    conforms()
