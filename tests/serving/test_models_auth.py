"""GET /v1/models shows run ids, hashes and load errors: like the prediction endpoints it needs the token."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz"])
def test_models_needs_the_token(client, auth) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    response = client.get("/v1/models", headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate") == "Bearer"
    body = response.json()
    assert "token" in body["error"]
    assert "models" not in body and "sha256" not in response.text


def test_models_with_the_token(client, service, registry) -> None:
    response = client.get("/v1/models", headers=service.headers())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True
    assert body["models"]["win"]["version"] == registry.versions["win"]
    assert body["models"]["win"]["sha256"]


def test_models_openapi_documents_the_401(client) -> None:
    spec = client.get("/v1/openapi.json").json()
    assert "401" in spec["paths"]["/models"]["get"]["responses"]
