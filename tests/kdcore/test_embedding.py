"""Task embedding (kdcore.text.embedding): a sentence-transformers teacher made here,
distilled into a 2-layer student through the one loop; its fidelity, its outputs, the
teacher's stored embeddings, and hostile folders refused before anything runs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import kdcore
from kdcore.engine.callbacks import Callbacks
from kdcore.errors import Cancelled, CheckpointError, DataError, SpecError
from kdcore.text.embedding.fidelity import fidelity, spearman
from kdcore.text.embedding.folder import read_archive_pooling, read_pooling
from tests.support.encoders import embedding_spec, write_corpus, write_teacher, zip_folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_teacher(tmp_path_factory.mktemp("teacher") / "st")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("data") / "passages.txt")


@pytest.fixture(scope="module")
def distilled(teacher_dir: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    cache = tmp_path_factory.mktemp("cache")
    spec = embedding_spec(str(teacher_dir), str(corpus))
    report = kdcore.run(spec, out, teacher_cache=cache)
    return report, out, cache, spec


def test_the_student_moves_to_the_teachers_embeddings(distilled) -> None:
    """The toy teacher's space is too anisotropic for rank figures to mean much (its
    passages share one direction); the real MiniLM's Spearman and neighbour overlap are
    checked in tests/app/test_embedding_jobs.py."""
    report, _, _, _ = distilled
    s, before = report["student"], report["baseline"]
    assert report["task"] == "embedding" and report["initialised_from_teacher_layers"] == [0, 3]
    assert s["mse"] < before["mse"] / 2
    assert s["cosine"] > before["cosine"] + 0.2
    history = [h["mse"] for h in report["history"]]
    assert history[-1] < history[0]
    gain = report["fidelity_gain"]["spearman"]
    assert gain == pytest.approx(s["spearman"] - before["spearman"], abs=1e-3)
    assert s["parameters"] < report["teacher"]["parameters"]
    assert report["pooling"] == {
        "mode": "mean",
        "normalize": True,
        "dimension": 64,
        "projection": False,
    }
    assert report["teacher_preflight"]["passed"] is True
    # selection reads the validation MSE, lower is better
    assert all("mse" in h and "cosine" in h for h in report["history"])


def test_outputs_a_sentence_transformers_folder_and_onnx(distilled) -> None:
    report, out, _, _ = distilled
    assert {"safetensors", "sentence_transformer", "onnx", "curves"} <= set(report["files"])
    assert report["onnx_max_abs_error"] < 1e-4
    with zipfile.ZipFile(out / "student_sentence_transformer.zip") as zf:
        names = set(zf.namelist())
    assert {"modules.json", "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "1_Pooling/config.json" in names
    modules = json.loads((out / "student_sentence_transformer" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    config = json.loads((out / "student_sentence_transformer" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
    # the folder is itself a valid teacher for a later job (read as files)
    pooling, max_len = read_pooling(out / "student_sentence_transformer", "student")
    assert pooling.mode == "mean" and pooling.normalize and max_len == 32


def test_the_onnx_graph_gives_the_students_embeddings(distilled, corpus: Path) -> None:
    import onnxruntime as ort

    from kdcore.text.embedding.encoder import SentenceEncoder, build_encoder_backbone
    from kdcore.text.embedding.folder import read_encoder_folder
    from kdcore.text.embedding.passages import Batcher

    _, out, _, _ = distilled
    folder = read_encoder_folder(out / "student_sentence_transformer")
    backbone = build_encoder_backbone("hf:BertModel", folder.model.config, 0, "/student")
    from kdcore.text.embedding.encoder import load_encoder_weights

    assert folder.model.weights is not None and folder.model.tokenizer is not None
    load_encoder_weights(backbone, folder.model.weights, "student")
    encoder = SentenceEncoder(backbone, folder.pooling).eval()
    ids, mask = Batcher(folder.model.tokenizer, 32)(corpus.read_text().splitlines()[:5])
    with torch.no_grad():
        ref = encoder(ids, mask).numpy()
    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert np.abs(got - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)  # the Normalize module
    folder.close()


def test_a_later_job_reads_the_teachers_embeddings_from_the_cache(
    distilled, tmp_path: Path
) -> None:
    report, _, cache, spec = distilled
    assert report["teacher_embeddings"]["from_cache"] is False
    assert report["teacher_embeddings"]["computed"] == report["dataset"]["passages"]
    again = kdcore.run(
        {**spec, "baseline": False, "export": ["safetensors"]}, tmp_path, teacher_cache=cache
    )
    assert again["teacher_embeddings"]["from_cache"] is True
    assert again["teacher_embeddings"]["computed"] == 0
    assert again["teacher_embeddings"]["key"] == report["teacher_embeddings"]["key"]
    # the same values: the same training gives the same student
    assert again["student"]["spearman"] == pytest.approx(report["student"]["spearman"], abs=1e-6)


class _StopAfter(Callbacks):
    def __init__(self, answers: int):
        self.answers, self.seen = answers, 0

    def on_step(self, progress) -> None:  # type: ignore[no-untyped-def]
        if progress.stage == "generating":
            self.seen = progress.step

    def should_stop(self) -> bool:
        return self.seen >= self.answers


def test_a_stopped_job_embeds_only_the_passages_left(teacher_dir: Path, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "big.txt", n=600, seed=1)
    spec = embedding_spec(str(teacher_dir), str(corpus), training={"epochs": 1}, baseline=False)
    spec["export"] = ["safetensors"]
    with pytest.raises(Cancelled):
        kdcore.run(spec, tmp_path / "out", callbacks=_StopAfter(256))
    report = kdcore.run(spec, tmp_path / "out")
    assert report["teacher_embeddings"]["computed"] == 600 - 256


def test_a_projection_joins_a_narrower_student_to_the_teachers_width(
    teacher_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    spec = embedding_spec(
        str(teacher_dir),
        str(corpus),
        student={
            "config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64},
            "init_from_teacher": False,
        },
        training={"epochs": 1},
        baseline=False,
    )
    report = kdcore.run(spec, tmp_path)
    assert report["pooling"]["projection"] is True
    dense = json.loads(
        (tmp_path / "student_sentence_transformer" / "2_Dense" / "config.json").read_text()
    )
    assert (dense["in_features"], dense["out_features"]) == (32, 64)
    assert "cosine_to_teacher" in report["student"]


ST = "sentence_transformers.models."


@pytest.mark.parametrize(
    ("modules", "pooling_config", "says"),
    [
        (
            [
                {"path": "", "type": ST + "Transformer"},
                {"path": "1_Pooling", "type": "evil.Module"},
            ],
            None,
            "never code",
        ),
        (
            [
                {"path": "", "type": ST + "Transformer"},
                {"path": "1_Pooling", "type": ST + "Pooling"},
                {"path": "2_Dense", "type": ST + "Dense"},
            ],
            None,
            "never code",
        ),
        (
            [
                {"path": "", "type": ST + "Transformer"},
                {"path": "../1_Pooling", "type": ST + "Pooling"},
            ],
            None,
            "folder like 1_Pooling",
        ),
        ([{"path": "", "type": ST + "Transformer"}], None, "one Pooling"),
        (None, {"word_embedding_dimension": 64, "pooling_mode_max_tokens": True}, "one mode"),
        (
            None,
            {
                "word_embedding_dimension": 64,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": True,
            },
            "one mode",
        ),
        (
            None,
            {"word_embedding_dimension": 10**12, "pooling_mode_mean_tokens": True},
            "out of range",
        ),
        (
            None,
            {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True, "code": "x"},
            "without keys",
        ),
    ],
)
def test_hostile_folders_are_refused_before_anything_runs(
    modules, pooling_config, says: str, corpus: Path, tmp_path: Path
) -> None:
    folder = write_teacher(tmp_path / "st", modules=modules, pooling_config=pooling_config)
    with pytest.raises(CheckpointError, match=says):
        read_archive_pooling(zip_folder(folder, tmp_path / "st.zip"))  # at admission
    with pytest.raises(CheckpointError, match=says):  # and where the job runs
        kdcore.run(embedding_spec(str(folder), str(corpus)), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_max_seq_length_out_of_range_is_refused(teacher_dir: Path, tmp_path: Path) -> None:
    import shutil

    folder = shutil.copytree(teacher_dir, tmp_path / "st")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 10**9}))
    with pytest.raises(CheckpointError, match="max_seq_length"):
        read_pooling(folder, "st")


def test_a_teacher_given_the_wrong_tokenizer_fails_fast(
    teacher_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    """A tokenizer whose every word is unknown to the teacher: all passages embed alike."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(
        models.WordPiece({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}, unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(tmp_path / "wrong.json"))
    spec = embedding_spec(
        str(teacher_dir), str(corpus), dataset={"tokenizer": str(tmp_path / "wrong.json")}
    )
    with pytest.raises(DataError, match="embeds .* alike"):
        kdcore.run(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"distillation": {"method": "kd"}}, "/distillation/method"),
        ({"student": {"arch": "hf:GPT2LMHeadModel"}}, "/student/arch"),
        ({"dataset": {"name": "digits"}}, "/dataset/name"),
        ({"export": ["safetensors", "torchscript"]}, "/export"),
        ({"resources": {"gpus": 2}}, "/resources/gpus"),
    ],
)
def test_embedding_specs_are_checked_at_their_pointer(change, pointer: str) -> None:
    from kdcore.checks.validate import parse_spec

    spec = embedding_spec("t", "d.txt")
    for key, value in change.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert pointer in [p for p, _ in err.value.errors]


def test_fidelity_figures_on_known_embeddings() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(40, 16, generator=g)
    same = fidelity(teacher.clone(), teacher)
    assert same["spearman"] == pytest.approx(1.0) and same["top10_overlap"] == 1.0
    assert same["cosine_to_teacher"] == pytest.approx(1.0)
    noise = fidelity(torch.randn(40, 16, generator=g), teacher)
    assert abs(noise["spearman"]) < 0.2 and noise["top10_overlap"] < 0.5
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([30.0, 20, 10])) == pytest.approx(-1.0)


def test_hostile_passage_files_are_refused_with_a_readable_error(tmp_path: Path) -> None:
    """The passages file is a client's: too few passages, a line over the cap, bytes that
    are not UTF-8 and a link are each refused before a teacher runs."""
    from kdcore.text.embedding.passages import MAX_PASSAGE_BYTES, index_passages, load_passages

    few = tmp_path / "few.txt"
    few.write_text("one passage\n\n" * 29)
    with pytest.raises(DataError, match="holds 29 passages"):
        index_passages(few, None)
    long = tmp_path / "long.txt"
    long.write_bytes(b"a\n" * 40 + b"x" * (MAX_PASSAGE_BYTES + 1) + b"\n")
    with pytest.raises(DataError, match="line 41 is over"):
        index_passages(long, None)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"".join(b"passage %d\n" % i for i in range(40)) + b"bad byte \xff\n")
    data = load_passages(latin, 0.0, 0.9, 0, None)  # everything but one passage held out
    with pytest.raises(DataError, match="not UTF-8"):
        for split in (data.train, data.test):
            split.texts(np.arange(len(split)))
    link = tmp_path / "link.txt"
    link.symlink_to(few)
    with pytest.raises(DataError):
        index_passages(link, None)
