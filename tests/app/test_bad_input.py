"""Bad input as new users send it: every 422 names the field (a JSON pointer), suggests
the closest names, and says how to fix it, in one wording."""

from __future__ import annotations

import hashlib

from safetensors.torch import save

from kdcore.models import build_model
from tests.support.specs import tiny_spec

INVALID = "the request is invalid"


def _only_error(response) -> dict:
    assert response.status_code == 422, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert len(body["errors"]) == 1, body["errors"]
    # one wording whichever layer refused it; a single reason may be the detail itself
    assert body["detail"] in (INVALID, body["errors"][0]["msg"])
    return body["errors"][0]


def test_a_typo_in_a_field_name_suggests_the_field(api):
    spec = tiny_spec()
    spec["distilation"] = spec.pop("distillation")
    error = _only_error(api.post("/v1/jobs", json=spec))
    assert error["loc"] == "/distilation"
    assert "unknown field 'distilation'" in error["msg"]
    assert "Did you mean 'distillation'?" in error["msg"]
    # validation says the same, at the same pointer
    found = api.post("/v1/jobs/validate", json=spec).json()
    assert found["valid"] is False and found["errors"] == [error]


def test_a_nested_typo_suggests_the_nested_field(api):
    spec = tiny_spec()
    spec["training"]["epoch"] = 3
    error = _only_error(api.post("/v1/jobs", json=spec))
    assert error["loc"] == "/training/epoch"
    assert "Did you mean 'epochs'" in error["msg"] and "weight_decay" in error["msg"]


def test_an_architecture_written_another_way_suggests_the_registry_name(api):
    spec = tiny_spec(kind="train", student={"arch": "resnet-20"})
    spec.pop("teacher")
    error = _only_error(api.post("/v1/jobs", json=spec))
    assert error["loc"] == "/student/arch"
    assert "Did you mean 'cifar_resnet20'?" in error["msg"]
    # the choices are counted and where to list them is said, not dumped on one line
    assert "kdcore list models" in error["msg"] and "GET /v1/capabilities" in error["msg"]
    assert "wide_resnet" not in error["msg"] and len(error["msg"]) < 200


def test_a_body_sent_without_the_json_content_type_names_the_header(api):
    body = b'{"kind": "train", "student": {"arch": "small_cnn"}}'
    for headers in (
        {"Content-Type": "application/x-www-form-urlencoded"},  # what `curl -d` sends
        {"Content-Type": "text/plain"},
    ):
        error = _only_error(api.post("/v1/jobs", content=body, headers=headers))
        assert error["loc"] == "/"
        assert "Content-Type: application/json" in error["msg"]
        assert headers["Content-Type"].split(";")[0] in error["msg"]


def test_broken_json_says_where_it_breaks_in_lines_and_columns(api):
    body = b'{"kind": "train",\n "student": {"arch": "small_cnn"}\n "dataset": {}}'
    error = _only_error(
        api.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    )
    assert error["loc"] == "/"  # not a character offset shaped like a pointer
    assert error["msg"].startswith("the body is not valid JSON")
    assert "line 3, column 2" in error["msg"]


def test_a_csv_uploaded_as_a_dataset_lists_the_formats(api):
    r = api.post(
        "/v1/files", files={"file": ("table.csv", b"a,b\n1,2\n")}, data={"purpose": "dataset"}
    )
    error = _only_error(r)
    assert error["loc"] == "/file"
    assert "table.csv is not a dataset" in error["msg"]
    for form in (".zip", ".tar", ".npz", ".txt", ".jsonl"):
        assert form in error["msg"]


def test_a_csv_uploaded_as_a_checkpoint_is_not_called_a_pickle(api):
    r = api.post(
        "/v1/files", files={"file": ("table.csv", b"a,b\n1,2\n")}, data={"purpose": "checkpoint"}
    )
    error = _only_error(r)
    assert error["loc"] == "/file" and "table.csv is not a checkpoint" in error["msg"]
    assert "Python objects" not in error["msg"]
    assert "safetensors" in error["msg"] and "student_hf.zip" in error["msg"]


def test_a_reference_to_nothing_says_how_to_make_one(api):
    spec = tiny_spec(teacher={"arch": "small_cnn", "checkpoint": "teacher.safetensors"})
    error = _only_error(api.post("/v1/jobs", json=spec))
    assert error["loc"] == "/teacher/checkpoint"
    assert "kd files upload PATH --purpose checkpoint" in error["msg"]
    assert "artifact id" in error["msg"]


def test_files_are_found_by_their_content(api):
    weights = save(build_model("mlp_small", 3, (1, 6, 6)).state_dict())
    digest = hashlib.sha256(weights).hexdigest()
    made = api.post(
        "/v1/files", files={"file": ("t.safetensors", weights)}, data={"purpose": "checkpoint"}
    ).json()
    found = api.get("/v1/files", params={"sha256": digest}).json()["data"]
    assert [f["id"] for f in found] == [made["id"]]
    assert api.get("/v1/files", params={"sha256": "0" * 64}).json()["data"] == []
    assert api.get("/v1/files", params={"sha256": digest}, tenant="b").json()["data"] == []
    error = _only_error(api.get("/v1/files", params={"sha256": "not-hex"}))
    assert error["loc"] == "/query/sha256"


def test_a_huge_unknown_field_name_is_echoed_cut_and_guesses_nothing(api):
    spec = tiny_spec()
    spec["x" * 10_000] = 1
    error = _only_error(api.post("/v1/jobs", json=spec))
    assert error["msg"].startswith("unknown field 'xxxx") and "(10,000 characters)" in error["msg"]
    assert "Did you mean" not in error["msg"] and len(error["msg"]) < 600


def test_a_thousand_bad_fields_get_an_answer_of_bounded_size(api):
    spec = tiny_spec()
    spec.update({f"junk{i}": i for i in range(1000)})
    for route in ("/v1/jobs", "/v1/jobs/validate"):
        r = api.post(route, json=spec)
        errors = r.json()["errors"]
        assert len(errors) <= 51, (route, len(errors))
        assert len(r.content) < 40_000
    assert errors[-1]["msg"] == "more errors follow; fix these first"


def test_a_strange_content_type_is_echoed_bounded(api):
    odd = "text/" + "a" * 5000 + '"; charset=<script>'
    error = _only_error(api.post("/v1/jobs", content=b"{}", headers={"Content-Type": odd}))
    assert "Content-Type: application/json" in error["msg"]
    assert len(error["msg"]) < 400 and "<script>" not in error["msg"]
