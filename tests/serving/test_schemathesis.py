"""Property-based run over the service's OpenAPI document: whatever is sent, never a 5xx."""

from __future__ import annotations

import zlib

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.server


@pytest.fixture()
def api_schema(service):
    """The OpenAPI document the running service publishes, with requests sent to that service."""
    schema = schemathesis.openapi.from_url(f"{service.url}/v1/openapi.json")
    return schema.configure(base_url=f"{service.url}/v1") if hasattr(schema, "configure") else schema


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@lazy_schema.parametrize()
@settings(
    max_examples=8,
    deadline=20_000,  # ms per example: generous for a loaded CI machine, still bounded
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_whatever_is_sent(case, service) -> None:
    # Half the cases authenticated, so the generated bodies reach the validation code.
    headers = service.headers() if zlib.crc32(repr(case.body).encode()) % 2 == 0 else {}
    response = case.call(base_url=f"{service.url}/v1", headers=headers, timeout=60)
    case.validate_response(response, checks=[not_a_server_error])
