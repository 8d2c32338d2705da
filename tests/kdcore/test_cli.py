import json

import pytest

from tests.support.kdcore_cli import kdcore_cli, kdcore_here
from tests.support.specs import tiny_spec


def test_list_shows_every_registry():
    out = kdcore_here("list").stdout
    assert "cifar_resnet56" in out and "resnet18" in out
    assert "fashion_mnist" in out and "dkd" in out


def test_list_methods_shows_each_methods_defaults():
    lines = kdcore_here("list", "methods").stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert {"kd", "dkd", "dist", "at", "fitnet", "crd", "mse"} <= rows.keys()
    assert "feature_weight=1000.0" in rows["at"] and "ce_weight=1.0" in rows["at"]
    assert "feature_weight=100.0" in rows["fitnet"] and "regressor=convreg" in rows["fitnet"]
    assert "crd_negatives=16384" in rows["crd"] and "ce_weight=0.1" in rows["kd"]
    assert "jsd_beta=0.5" in rows["gkd"] and "temperature=1.0" in rows["forward_kl"]


@pytest.mark.slow
def test_train_distill_export_round_trip(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(tiny_spec(kind="train", teacher=None)))
    run = kdcore_cli("train", tmp_path / "t.json", "--out", tmp_path / "t")
    assert run.returncode == 0, run.stderr
    assert "epoch 2/2 done" in run.stderr  # plain progress lines when not a terminal
    assert json.loads(run.stdout)["student"]["arch"] == "mlp_small"
    spec = tiny_spec(
        teacher={"arch": "mlp_small", "checkpoint": str(tmp_path / "t" / "student.safetensors")},
        student={"arch": "mlp_small"},
    )
    (tmp_path / "d.json").write_text(json.dumps(spec))
    run = kdcore_cli("distill", tmp_path / "d.json", "--out", tmp_path / "d")
    assert run.returncode == 0, run.stderr
    assert "agreement" in json.loads(run.stdout)
    run = kdcore_cli("export", tmp_path / "d", "--formats", "onnx", "--out", tmp_path / "e")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "e" / "student.onnx").is_file()


def test_bad_spec_is_one_readable_line_and_exit_2(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps(tiny_spec(training={"batch_size": 0})))
    run = kdcore_here("distill", tmp_path / "bad.json", "--out", tmp_path / "o")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "/training/batch_size" in lines[0]
    assert "Traceback" not in run.stderr
    (tmp_path / "broken.json").write_text("{nope")
    run = kdcore_here("train", tmp_path / "broken.json", "--out", tmp_path / "o")
    assert run.returncode == 2 and "not valid JSON" in run.stderr


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    spec = tiny_spec(teacher={"arch": "small_cnn", "checkpoint": str(tmp_path / "nope.pt")})
    (tmp_path / "s.json").write_text(json.dumps(spec))
    run = kdcore_here("distill", tmp_path / "s.json", "--out", tmp_path / "o")
    assert run.returncode == 2 and "nope.pt was not found" in run.stderr


def test_validate_checks_the_files_a_spec_names_as_the_service_does(tmp_path):
    """`kdcore validate` said `ok:` of a spec whose dataset was a CSV; it checks each
    local file now, with the words the service's upload uses, and says where a
    relative path was looked for."""
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    spec = tiny_spec(teacher={"arch": "small_cnn", "checkpoint": "table.csv"})
    spec["dataset"] = {"name": "npz", "path": "table.csv"}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    run = kdcore_here("validate", "s.json", cwd=tmp_path)
    assert run.returncode == 2 and "ok:" not in run.stdout
    assert "/dataset/path: table.csv is not a dataset kdcore reads; accepted:" in run.stderr
    assert ".npz" in run.stderr and ".jsonl" in run.stderr
    assert "/teacher/checkpoint: table.csv is not a checkpoint kdcore reads" in run.stderr
    from kdcore.io.accepted_formats import DATASET_FORMATS

    assert DATASET_FORMATS in run.stderr  # the same list the service's 422 gives
    missing = kdcore_here("validate", str(tmp_path / "s.json"), cwd="/")
    assert "table.csv was not found (looked up relative to the current folder, /)" in (
        missing.stderr
    )


def test_validate_refuses_a_text_set_its_task_cannot_read(tmp_path):
    from tests.support.text import write_corpus

    write_corpus(tmp_path / "plain.txt")
    spec = {
        "kind": "train",
        "task": "text_classification",
        "student": {"arch": "hf:BertForSequenceClassification", "config": {"num_hidden_layers": 1}},
        "dataset": {"name": "text", "path": "plain.txt"},
    }
    (tmp_path / "s.json").write_text(json.dumps(spec))
    run = kdcore_here("validate", "s.json", cwd=tmp_path)
    assert run.returncode == 2 and "ok:" not in run.stdout
    assert (
        '/dataset/path: plain.txt: text_classification needs JSONL records {"text", "label"}'
        in run.stderr
    )


def test_list_datasets_names_text():
    run = kdcore_here("list", "datasets")
    assert run.returncode == 0 and " text" in run.stdout and "digits" in run.stdout
