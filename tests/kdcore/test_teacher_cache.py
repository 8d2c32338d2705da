"""The on-disk teacher cache: top-k soft labels that keep what the loss reads, crop
labels that a later job reuses bit for bit, resume, hostile files and the size bound."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import kdcore
from kdcore.errors import Cancelled
from kdcore.image.teacher_cache import TeacherStore, compress, expand, prune
from tests.support.exploits import PickleExploit
from tests.support.specs import tiny_spec
from tests.support.stops import StopBeforeStep

CROPS = {"crop_padding": 1, "hflip": True}


def test_all_classes_are_the_logits_rounded_to_fp16():
    z = torch.randn(16, 10) * 5
    values, indices = compress(z, 10, 4.0)
    assert values.dtype == np.float16 and values.shape == (16, 11)
    assert torch.equal(expand(values, indices, 10), z.half().float())


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_top_k_keeps_each_top_probability_and_the_rest_s_mass(temperature):
    z = torch.randn(32, 100, generator=torch.Generator().manual_seed(0)) * 3
    k = 10
    out = expand(*compress(z, k, temperature), 100)
    p, q = torch.softmax(z / temperature, 1), torch.softmax(out / temperature, 1)
    top = z.topk(k, dim=1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), rtol=2e-2, atol=1e-4)
    rest_p = 1 - p.gather(1, top).sum(1)
    rest_q = 1 - q.gather(1, top).sum(1)
    assert torch.allclose(rest_q, rest_p, rtol=2e-2, atol=1e-4)
    assert torch.equal(out.argmax(1), z.argmax(1))


def _report(folder):
    return json.loads((folder / "report.json").read_text())


def test_a_later_job_with_the_same_crops_skips_the_teacher_and_trains_the_same_student(tmp_path):
    spec = tiny_spec(augment=CROPS, training={"epochs": 3})
    cache = tmp_path / "cache"
    kdcore.distill(spec, tmp_path / "first", teacher_cache=cache)
    first = _report(tmp_path / "first")["teacher_store"]
    steps = _report(tmp_path / "first")["steps"]
    assert first["computed"] == steps and first["from_disk"] == 0
    assert first["written"] == ["epoch0001", "epoch0002", "epoch0003"]

    kdcore.distill(spec, tmp_path / "second", teacher_cache=cache)
    second = _report(tmp_path / "second")["teacher_store"]
    assert second["key"] == first["key"]
    assert second["from_disk"] == steps and second["computed"] == 0 and second["written"] == []
    a = load_file(tmp_path / "first" / "student.safetensors")
    b = load_file(tmp_path / "second" / "student.safetensors")
    assert all(a[k].equal(b[k]) for k in a)

    other = tiny_spec(augment=CROPS, training={"epochs": 3, "seed": 1})  # other crops
    kdcore.distill(other, tmp_path / "third", teacher_cache=cache)
    third = _report(tmp_path / "third")["teacher_store"]
    assert third["key"] != first["key"] and third["from_disk"] == 0


def test_cached_crop_labels_give_the_losses_of_live_teacher_outputs(tmp_path):
    """The same crops, live fp32 teacher outputs against the stored top-k soft labels
    (every class, fp16): the per-epoch losses agree to fp16 rounding."""
    spec = tiny_spec(
        augment=CROPS,
        distillation={"teacher_precision": "fp32"},
        training={"epochs": 3},
    )
    kdcore.distill(spec, tmp_path / "live")
    kdcore.distill(spec, tmp_path / "write", teacher_cache=tmp_path / "cache")
    kdcore.distill(spec, tmp_path / "read", teacher_cache=tmp_path / "cache")
    assert _report(tmp_path / "read")["teacher_store"]["computed"] == 0

    def losses(name):
        return [h["train_losses"]["kd"] for h in _report(tmp_path / name)["history"]]

    assert losses("read") == losses("write")  # what was written is what is read
    assert losses("read") == pytest.approx(losses("live"), rel=2e-3)


def test_a_resumed_run_writes_only_whole_epochs_and_a_later_job_fills_the_gap(tmp_path):
    spec = tiny_spec(augment=CROPS, training={"epochs": 3})
    cache = tmp_path / "cache"
    kdcore.distill(spec, tmp_path / "straight", teacher_cache=tmp_path / "own")  # same values
    steps = _report(tmp_path / "straight")["steps"]
    per_epoch = steps // 3
    stop = per_epoch + 2  # in the middle of epoch 2
    with pytest.raises(Cancelled):
        kdcore.distill(spec, tmp_path / "run", StopBeforeStep(stop), teacher_cache=cache)
    ckpt = tmp_path / "run" / "checkpoints" / f"interrupted-step{stop}.pt"
    kdcore.distill(spec, tmp_path / "run", resume_from=ckpt, teacher_cache=cache)
    resumed = _report(tmp_path / "run")["teacher_store"]
    assert resumed["written"] == ["epoch0003"]  # epoch 2 was not computed whole here
    assert resumed["from_disk"] == 0 and resumed["computed"] == steps - stop

    kdcore.distill(spec, tmp_path / "later", teacher_cache=cache)
    later = _report(tmp_path / "later")["teacher_store"]
    assert later["from_disk"] == 2 * per_epoch and later["written"] == ["epoch0002"]
    for name in ("run", "later"):
        a = load_file(tmp_path / "straight" / "student.safetensors")
        b = load_file(tmp_path / name / "student.safetensors")
        assert all(a[k].equal(b[k]) for k in a), name


def test_without_augmentation_the_whole_split_is_computed_once(tmp_path):
    spec = tiny_spec()
    kdcore.distill(spec, tmp_path / "a", teacher_cache=tmp_path / "cache")
    kdcore.distill(spec, tmp_path / "b", teacher_cache=tmp_path / "cache")
    a, b = _report(tmp_path / "a"), _report(tmp_path / "b")
    assert a["teacher_cache"] and a["teacher_store"]["written"] == ["full"]
    assert b["teacher_store"]["from_disk"] == 1 and b["teacher_store"]["computed"] == 0
    assert b["history"][-1]["train_losses"] == a["history"][-1]["train_losses"]


def test_hostile_or_foreign_files_are_ignored_never_run(tmp_path):
    store = TeacherStore(tmp_path, "k" * 40, classes=4, k=4, temperature=4.0)
    store.folder.mkdir(parents=True)
    marker = tmp_path / "pwned"
    # an object array: loading it would unpickle, and run `touch pwned`
    np.save(store.folder / "epoch0001.values.npy", np.array([PickleExploit(marker)], dtype=object))
    np.save(store.folder / "epoch0001.indices.npy", np.zeros((1, 4), np.int16))
    assert store.read("epoch0001") is None and not marker.exists()
    np.save(store.folder / "full.values.npy", np.zeros((3, 9), np.float16))  # another k
    np.save(store.folder / "full.indices.npy", np.zeros((3, 8), np.int16))
    assert store.read("full") is None
    (store.folder / "epoch0002.values.npy").write_bytes(b"\x93NUMPY garbage")
    (store.folder / "epoch0002.indices.npy").write_bytes(b"")
    assert store.read("epoch0002") is None


def test_prune_keeps_the_most_recently_used_keys_within_the_bound(tmp_path):
    import os

    for i, age in enumerate((300, 200, 100)):  # key0 oldest
        folder = tmp_path / "tenant" / f"key{i}"
        folder.mkdir(parents=True)
        (folder / "full.values.npy").write_bytes(b"x" * 1000)
        os.utime(folder, (1e9 - age, 1e9 - age))
    removed = prune([tmp_path / "tenant"], max_bytes=2000)
    assert removed == ["key0"]
    assert sorted(p.name for p in (tmp_path / "tenant").iterdir()) == ["key1", "key2"]
    assert prune([tmp_path / "tenant"], max_bytes=0) == ["key1", "key2"]


def test_one_tenant_filling_the_cache_evicts_its_own_keys_first(tmp_path):
    """Security round 2: the caches were one LRU pool, so tenant b's new entries evicted
    tenant a's. Now each tenant has an equal share: b, over its share, loses its own
    oldest keys first, even though a's key is older than all of them."""
    import os

    def key(tenant: str, name: str, age: int) -> None:
        folder = tmp_path / tenant / name
        folder.mkdir(parents=True)
        (folder / "full.values.npy").write_bytes(b"x" * 1000)
        os.utime(folder, (1e9 - age, 1e9 - age))

    key("a", "a-old", 1000)  # a's only key, the oldest of all
    for i, age in enumerate((500, 400, 300, 200)):
        key("b", f"b{i}", age)
    removed = prune([tmp_path / "a", tmp_path / "b"], max_bytes=3000)
    assert removed == ["b0", "b1"]  # b held 4,000 bytes, over its 1,500 share
    assert (tmp_path / "a" / "a-old").is_dir()
    # with b at its share and a still within its own, the bound holds: nothing more goes
    assert prune([tmp_path / "a", tmp_path / "b"], max_bytes=3000) == []


def test_the_dataset_cache_evicts_by_tenant_share(tmp_path):
    import os

    from app.services.dataset_refs import MANIFEST, _make_room

    cache = tmp_path / "dataset-cache"

    def cached(tenant: str, name: str, age: int) -> None:
        folder = cache / "bucket" / tenant / name
        folder.mkdir(parents=True)
        (folder / "shard.tar").write_bytes(b"x" * 1000)
        (folder / MANIFEST).write_text("{}")
        os.utime(folder / MANIFEST, (1e9 - age, 1e9 - age))

    cached("tenant-a", "pets", 1000)
    for i, age in enumerate((500, 400)):
        cached("tenant-b", f"set{i}", age)
    keep = cache / "bucket" / "tenant-b" / "new"
    _make_room(cache, need=1002, keep=keep, bound=3500)  # one set of 1,002 bytes must go
    left = sorted(p.parent.name for p in cache.rglob(MANIFEST))
    assert left == ["pets", "set1"]


def test_what_no_state_dict_holds_is_in_the_key(tmp_path):
    """An ONNX teacher's weights are in its graph; an ensemble's weights are numbers in
    the spec: either changing must change the key, or a job would read another
    teacher's outputs."""
    from torch import nn

    from kdcore.image.teacher_cache import model_digest

    a, b = nn.Module(), nn.Module()
    a.graph_sha256, b.graph_sha256 = "1" * 64, "2" * 64
    assert model_digest(a) != model_digest(b)

    def key(weights):
        teachers = [{"arch": "small_cnn", "weight": w} for w in weights]
        spec = tiny_spec(teachers=teachers, augment=CROPS, training={"epochs": 1})
        spec.pop("teacher")
        out = tmp_path / "-".join(map(str, weights))
        kdcore.distill(spec, out, teacher_cache=tmp_path / "cache")
        return _report(out)["teacher_store"]["key"]

    assert key([3, 1]) != key([1, 1])


def test_teacher_topk_is_bounded_and_never_above_the_classes(tmp_path):
    from kdcore.checks.validate import parse_spec
    from kdcore.errors import SpecError
    from kdcore.image.teacher_cache import soft_label_k

    for k in (0, -1, 10**6, "all"):
        with pytest.raises(SpecError):
            parse_spec(tiny_spec(distillation={"teacher_topk": k}))
    assert soft_label_k(4, 50) == 4 and soft_label_k(1000, None) == 32
    spec = tiny_spec(augment=CROPS, distillation={"teacher_topk": 2}, training={"epochs": 1})
    kdcore.distill(spec, tmp_path / "k2", teacher_cache=tmp_path / "cache")
    store = _report(tmp_path / "k2")["teacher_store"]
    assert store["k"] == 2 and store["classes"] == 4
    values = np.load(next((tmp_path / "cache").glob("*/epoch0001.values.npy")))
    assert values.shape[-1] == 3  # two logits and the rest's value
