from app.db.models import Job
from app.db.session import session_scope
from tests.app.conftest import tiny_job


def test_create_returns_201_location_and_queue_position(any_db_api):
    api = any_db_api
    r = api.post("/v1/jobs", json=tiny_job(name="first"))
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["status_transitions"][0]["to_status"] == "queued"
    second = api.post("/v1/jobs", json=tiny_job(name="second")).json()
    assert second["queue_position"] == 2
    assert api.get(f"/v1/jobs/{job['id']}").json()["spec"]["training"]["epochs"] == 2


def test_invalid_spec_is_422_with_pointers(api):
    spec = tiny_job(
        training={"epochs": 10**9, "batch_size": 0, "lr": "NaN"}, student={"arch": "resnet9000"}
    )
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    locs = {e["loc"] for e in r.json()["errors"]}
    assert {"/training/epochs", "/training/batch_size", "/training/lr"} <= locs
    r = api.post("/v1/jobs", json=tiny_job(student={"arch": "resnet9000"}))
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == "/student/arch"
    assert api.get("/v1/jobs").json()["data"] == []


def test_missing_or_foreign_files_are_rejected(api):
    spec = tiny_job(kind="distill", teacher={"arch": "mlp", "checkpoint": "file_doesnotexist"})
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == "/teacher/checkpoint"
    spec = tiny_job(dataset={"builtin": "digits", "path": "/etc/passwd"})
    assert api.post("/v1/jobs", json=spec).json()["errors"][0]["loc"] == "/dataset/path"


def test_idempotency_key_replays_and_rejects_another_body(api):
    headers = {"Idempotency-Key": "abc-123"}
    first = api.post("/v1/jobs", json=tiny_job(), headers=headers)
    replay = api.post("/v1/jobs", json=tiny_job(), headers=headers)
    assert first.status_code == replay.status_code == 201
    assert first.json() == replay.json()
    other = api.post("/v1/jobs", json=tiny_job(name="other"), headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    assert len(api.get("/v1/jobs").json()["data"]) == 1
    # keys are per tenant
    assert api.post("/v1/jobs", json=tiny_job(), headers=headers, tenant="b").status_code == 201


def test_validate_is_a_dry_run(api):
    ok = api.post("/v1/jobs/validate", json=tiny_job()).json()
    assert ok == {"valid": True, "errors": [], "warnings": []}
    bad = api.post("/v1/jobs/validate", json=tiny_job(training={"epochs": 0})).json()
    assert not bad["valid"] and bad["errors"][0]["loc"] == "/training/epochs"
    warn = api.post(
        "/v1/jobs/validate",
        json=tiny_job(kind="distill", teacher={"arch": "mlp"}, augment={"crop_padding": 1}),
    ).json()
    assert warn["valid"] and len(warn["warnings"]) == 2
    assert api.get("/v1/jobs").json()["data"] == []


def test_list_paginates_and_filters_before_the_limit(any_db_api):
    api = any_db_api
    ids = [api.post("/v1/jobs", json=tiny_job(name=f"run-{i}")).json()["id"] for i in range(5)]
    api.post(f"/v1/jobs/{ids[0]}/cancel")
    page = api.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    page2 = api.get("/v1/jobs", params={"limit": 2, "after": page["next_after"]}).json()
    assert [j["id"] for j in page2["data"]] == ids[::-1][2:4]
    page3 = api.get("/v1/jobs", params={"limit": 2, "after": page2["next_after"]}).json()
    assert [j["id"] for j in page3["data"]] == [ids[0]] and not page3["has_more"]
    cancelled = api.get("/v1/jobs", params={"status": "cancelled", "limit": 1}).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]] and not cancelled["has_more"]
    named = api.get("/v1/jobs", params={"name": "run-3"}).json()
    assert [j["id"] for j in named["data"]] == [ids[3]]
    assert api.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert api.get("/v1/jobs", params={"after": "job_nope"}).status_code == 404


def test_cancel_retry_delete_lifecycle(api):
    job = api.post("/v1/jobs", json=tiny_job()).json()
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 409  # not terminal
    assert api.post(f"/v1/jobs/{job['id']}/retry").status_code == 409
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    assert (
        api.post(f"/v1/jobs/{job['id']}/retry", params={"from_checkpoint": True}).status_code == 409
    )  # no checkpoint
    retry = api.post(f"/v1/jobs/{job['id']}/retry")
    assert retry.status_code == 201
    assert retry.json()["retry_of"] == job["id"] and retry.json()["status"] == "queued"
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_cancel_of_a_running_job_asks_the_worker(api):
    job = api.post("/v1/jobs", json=tiny_job()).json()
    with session_scope(api.settings.db_url) as session:
        session.get(Job, job["id"]).status = "running"
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    assert r.json()["status_transitions"][-1]["reason"] == "cancel requested by the client"


def test_events_are_numbered_and_paginated(api):
    job = api.post("/v1/jobs", json=tiny_job()).json()
    api.post(f"/v1/jobs/{job['id']}/cancel")
    events = api.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1}).json()
    assert [e["seq"] for e in events["data"]] == [1] and events["has_more"]
    rest = api.get(f"/v1/jobs/{job['id']}/events", params={"after": 1}).json()
    assert [e["seq"] for e in rest["data"]] == [2] and not rest["has_more"]
    assert rest["data"][0]["data"]["status"] == "cancelled"


def test_capabilities_lists_the_registries(api):
    caps = api.get("/v1/capabilities").json()
    assert "cifar_resnet56" in caps["architectures"] and "kd" in caps["methods"]
    assert caps["executor"] == "local" and caps["limits"]["max_upload_bytes"] > 0
    defaults = caps["method_defaults"]
    assert set(defaults) == set(caps["methods"]) | set(caps["text_methods"]["causal_lm"])
    lm_methods = ["forward_kl", "reverse_kl", "gkd", "uld", "sequence"]
    assert caps["text_methods"]["causal_lm"] == lm_methods
    assert defaults["gkd"]["jsd_beta"] == 0.5 and "text" in caps["datasets"]
    assert {"causal_lm", "text_classification"} <= set(caps["tasks"])
    assert defaults["at"] == {"ce_weight": 1.0, "kd_weight": 0.0, "feature_weight": 1000.0}
    assert defaults["fitnet"]["feature_weight"] == 100.0 and defaults["dkd"]["ce_weight"] == 1.0
    assert api.get("/v1/tenant").json()["webhook_secret"]


def test_unknown_route_and_method_are_problem_json(api):
    r = api.get("/v1/nothing-here")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = api.client.put("/v1/jobs", headers=api.a)
    assert r.status_code == 405 and r.json()["status"] == 405


def test_a_text_job_cannot_name_a_path_on_the_worker(api):
    """dataset.tokenizer is a path (library, CLI): the service refuses it, and a text
    set by reference; nothing on the worker's disk is named by a client."""
    spec = {
        "kind": "train",
        "task": "causal_lm",
        "student": {
            "arch": "hf:GPT2LMHeadModel",
            "config": {"n_layer": 1, "n_embd": 8, "n_head": 2},
        },
        "dataset": {"name": "text", "path": "local://root/corpus.txt", "tokenizer": "/etc/passwd"},
    }
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    locs = {e["loc"]: e["msg"] for e in r.json()["errors"]}
    assert "model folder" in locs["/dataset/tokenizer"]
    assert "uploaded .txt or .jsonl" in locs["/dataset/path"]
