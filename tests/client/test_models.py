"""The client's models against the server's OpenAPI document: same fields, same
required set, compatible types. A server change that breaks the client fails here."""

from __future__ import annotations

from typing import Any

import pytest

from app.main import create_app
from kdservice.client.models import OPENAPI_COMPONENTS
from tests.app.conftest import make_settings


@pytest.fixture(scope="module")
def components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(make_settings(tmp_path_factory.mktemp("openapi")))
    return app.openapi()["components"]["schemas"]


def _types(schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema:
        return set().union(*(_types(s) for s in schema["anyOf"]))
    if "$ref" in schema:
        return {"object"}
    return {schema.get("type", "any")}


@pytest.mark.parametrize("model", list(OPENAPI_COMPONENTS), ids=lambda m: m.__name__)
def test_model_matches_openapi(model: Any, components: dict[str, Any]) -> None:
    server = components[OPENAPI_COMPONENTS[model]]
    client = model.model_json_schema(ref_template="#/components/schemas/{model}")
    client_props = client["properties"]
    server_props = server["properties"]
    extra = set(client_props) - set(server_props) - {"created_at"}  # SSE events omit it
    assert not extra, f"client fields the server does not send: {extra}"
    missing = set(server_props) - set(client_props)
    assert not missing, f"server fields the client drops: {missing}"
    assert set(client.get("required", [])) <= set(server.get("required", [])) | {"created_at"}
    for name, prop in server_props.items():
        server_types = _types(prop) - {"any"}
        client_types = _types(client_props[name]) - {"any"}
        if server_types and client_types:
            assert client_types & server_types or {"integer", "number"} & client_types & {
                "number",
                "integer",
            }, f"{model.__name__}.{name}: client {client_types} vs server {server_types}"
