"""The memory-bounded token-level loss (kdcore/text/losses.py): the same values and
gradients as the plain form, for every method, full logits and top-k, in any chunking;
what it keeps for backward is one gradient the size of the student's logits."""

from __future__ import annotations

import weakref

import pytest
import torch

from kdcore.text import losses
from kdcore.text.losses import TOKEN_METHODS, teacher_topk, token_kd_loss, token_kd_loss_unchunked


def _batch(vocab: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 17, vocab, generator=g).to(dtype).requires_grad_()
    teacher = torch.randn(3, 17, vocab, generator=g)
    ids = torch.randint(0, vocab, (3, 17), generator=g)
    targets = torch.rand(3, 17, generator=g) > 0.3  # padding and prompts: not predicted
    targets[2] = False  # a row with nothing to predict
    return student, teacher, ids, targets


@pytest.mark.parametrize("method", TOKEN_METHODS)
@pytest.mark.parametrize("topk", [None, 13])
@pytest.mark.parametrize("chunk_positions", [1, 5, 10_000])
def test_the_chunked_loss_equals_the_plain_one_with_its_gradient(
    monkeypatch, method, topk, chunk_positions
):
    vocab = 301
    monkeypatch.setitem(losses.CHUNK_ELEMENTS, "cpu", chunk_positions * vocab)
    student, logits, ids, targets = _batch(vocab)
    teacher = teacher_topk(logits, topk) if topk else logits
    args = (teacher, ids, targets, 2.0, 0.3, 0.7, 0.4)
    chunked = token_kd_loss(method, student, *args)
    plain = token_kd_loss_unchunked(method, student, *args)
    for key in ("loss", "ce", "kd"):
        assert torch.allclose(chunked[key], plain[key], atol=1e-5, rtol=0), key
    (g_chunked,) = torch.autograd.grad(chunked["loss"] * 1.7, student)
    (g_plain,) = torch.autograd.grad(plain["loss"] * 1.7, student)
    assert g_plain.abs().max() > 1e-3  # a gradient worth comparing
    assert torch.allclose(g_chunked, g_plain, atol=1e-7, rtol=1e-5)
    assert g_chunked[:, -1].abs().max() == 0  # the last position predicts nothing


def test_bf16_logits_get_a_bf16_gradient_equal_to_the_plain_forms():
    student, teacher, ids, targets = _batch(257, torch.bfloat16)
    args = (teacher, ids, targets, 1.0, 0.5, 0.5)
    (g_chunked,) = torch.autograd.grad(token_kd_loss("gkd", student, *args)["loss"], student)
    (g_plain,) = torch.autograd.grad(
        token_kd_loss_unchunked("gkd", student, *args)["loss"], student
    )
    assert g_chunked.dtype == torch.bfloat16
    assert torch.equal(g_chunked, g_plain)


def _saved(fn) -> tuple[int, list[int]]:
    """What autograd holds for backward once `fn` has built the graph (bytes, each
    storage once), and the size of every tensor saved on the way, including those
    a chunk's own graph saves and frees inside the forward."""
    saved: list[weakref.ref[torch.Tensor]] = []
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(t))
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()["loss"]
    live = {
        s.data_ptr(): s.nbytes()
        for r in saved
        if (t := r()) is not None
        for s in [t.untyped_storage()]
    }
    loss.backward()
    return sum(live.values()), sizes


def test_every_tensor_autograd_saves_is_one_chunks_and_none_outlives_the_forward(monkeypatch):
    vocab = 4001
    monkeypatch.setitem(losses.CHUNK_ELEMENTS, "cpu", 5 * vocab)
    chunk_bytes = 5 * vocab * 4
    student, teacher, ids, targets = _batch(vocab)
    args = ("forward_kl", student, teacher, ids, targets, 2.0, 0.5, 0.5)
    held, sizes = _saved(lambda: token_kd_loss(*args))
    # each chunk's graph is freed inside the forward; the gradient, computed there, is
    # the one buffer kept (the Function's own, not a saved tensor)
    assert held == 0 and max(sizes) <= chunk_bytes
    held, sizes = _saved(lambda: token_kd_loss_unchunked(*args))
    assert max(sizes) >= 4 * chunk_bytes  # the plain form keeps whole-batch tensors


def test_without_grad_the_values_are_the_same_and_no_gradient_is_built():
    student, teacher, ids, targets = _batch(101)
    args = (teacher, ids, targets, 2.0, 0.5, 0.5)
    with torch.no_grad():
        chunked = token_kd_loss("reverse_kl", student, *args)
    plain = token_kd_loss_unchunked("reverse_kl", student, *args)
    assert not chunked["loss"].requires_grad
    assert torch.allclose(chunked["loss"], plain["loss"], atol=1e-5)


def test_an_unknown_method_is_named():
    student, teacher, ids, targets = _batch(11)
    with pytest.raises(ValueError, match="'kl_forward'"):
        token_kd_loss("kl_forward", student, teacher, ids, targets, 1.0, 0.5, 0.5)
