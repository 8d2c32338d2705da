import pytest

from app.db.session import session_scope
from app.services.keys import create_key, hash_key, revoke_key
from tests.app.conftest import tiny_job

PUBLIC = {"/healthz", "/readyz"}


def _v1_routes(app):
    """Every operation the app serves, from its own OpenAPI document: a new route cannot
    slip past these checks."""
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/v1"):
            for method in operations:
                yield method.upper(), path


def _fill(path, value="x_missing"):
    return (
        path.replace("{job_id}", value).replace("{file_id}", value).replace("{artifact_id}", value)
    )


def test_every_v1_route_needs_a_key(api):
    routes = list(_v1_routes(api.client.app))
    assert len(routes) >= 17
    for method, path in routes:
        r = api.client.request(method, _fill(path))
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer nope", "Basic dXNlcjpwYXNz", "Bearer", "kd_abc"])
def test_malformed_or_unknown_keys_are_401(api, header):
    r = api.client.get("/v1/jobs", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["title"] == "Unauthorized"


def test_revoked_key_is_401(api):
    with session_scope(api.settings.db_url) as session:
        row, plain = create_key(session, "short-lived")
    headers = {"Authorization": f"Bearer {plain}"}
    assert api.client.get("/v1/jobs", headers=headers).status_code == 200
    with session_scope(api.settings.db_url) as session:
        assert revoke_key(session, row.id)
    assert api.client.get("/v1/jobs", headers=headers).status_code == 401


def test_keys_are_stored_hashed(api):
    from sqlalchemy import select

    from app.db.models import ApiKey

    with session_scope(api.settings.db_url) as session:
        hashes = list(session.scalars(select(ApiKey.key_hash)))
    assert hash_key(api.key_a) in hashes
    assert api.key_a not in hashes


def test_every_id_route_answers_404_for_another_tenants_object(api):
    job = api.post("/v1/jobs", json=tiny_job()).json()
    for method, path in _v1_routes(api.client.app):
        if "{job_id}" not in path:
            continue
        r = api.client.request(method, _fill(path, job["id"]), headers=api.b)
        assert r.status_code == 404, (method, path, r.status_code)
    # the owner still sees it
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_health_is_public(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
