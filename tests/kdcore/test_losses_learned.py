"""Losses with learned parts (FitNets' ConvReg, CRD's embeddings and memory banks):
golden values from numpy re-implementations of the reference code's formulas."""

import numpy as np
import pytest
import torch

from kdcore.losses import build_loss
from kdcore.losses.contrastive import NegativeSampler
from kdcore.losses.feature_maps import ConvReg
from kdcore.spec import DistillationSpec

RNG = np.random.default_rng(99)


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize(
    ("s_hw", "t_hw", "conv"),
    [(8, 4, "Conv2d/stride2"), (4, 8, "ConvTranspose2d"), (6, 4, "Conv2d/k3"), (4, 4, "Conv2d/k1")],
)
def test_convreg_picks_its_conv_from_the_shapes(s_hw, t_hw, conv):
    reg = ConvReg((2, 3, s_hw, s_hw), (2, 5, t_hw, t_hw))
    kind, _, detail = conv.partition("/")
    assert type(reg.conv).__name__ == kind
    if detail == "stride2":
        assert reg.conv.stride == (2, 2)
    if detail.startswith("k"):
        k = int(detail[1:])
        assert reg.conv.kernel_size == (k, k)
    out = reg(torch.randn(2, 3, s_hw, s_hw))
    assert out.shape == (2, 5, t_hw, t_hw)
    assert (out >= 0).all()  # ends in a ReLU


def test_convreg_refuses_a_student_map_it_cannot_reach():
    with pytest.raises(ValueError, match='regressor to "conv1x1"'):
        ConvReg((2, 3, 3, 3), (2, 5, 5, 5))


def test_fitnet_convreg_hint_golden():
    """valid conv (kernel 1 + dH) -> BatchNorm in training mode (batch statistics,
    biased variance, eps 1e-5, gamma 1, beta 0) -> ReLU -> MSE to the teacher map."""
    fs, ft = RNG.normal(size=(3, 2, 5, 5)), RNG.normal(size=(3, 4, 3, 3))
    loss = build_loss(DistillationSpec(method="fitnet"))
    loss.setup([torch.Size(fs.shape)], [torch.Size(ft.shape)])
    loss.double()
    conv = loss.adapters[0].conv
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    out = np.zeros((3, 4, 3, 3))
    for i in range(3):
        for j in range(3):
            patch = fs[:, :, i : i + 3, j : j + 3]
            out[:, :, i, j] = np.einsum("bckl,ockl->bo", patch, w) + b
    mean = out.mean(axis=(0, 2, 3), keepdims=True)
    var = out.var(axis=(0, 2, 3), keepdims=True)
    normed = np.maximum((out - mean) / np.sqrt(var + 1e-5), 0)
    hint = ((normed - ft) ** 2).mean()
    zs, zt, y = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 4)), torch.tensor([0, 1, 2])
    terms = loss(t(zs), t(zt), y, [t(fs)], [t(ft)])
    assert terms["hint"].item() == pytest.approx(hint, rel=1e-9)
    assert terms["loss"].item() == pytest.approx(terms["ce"].item() + 100 * hint, rel=1e-9)


def test_negatives_come_from_other_classes_uniformly():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    sampler = NegativeSampler(labels)
    batch = torch.tensor([0, 1, 2] * 4)
    draws = sampler.draw(batch, 3000, torch.Generator().manual_seed(0))
    assert draws.shape == (12, 3000)
    assert (labels[draws] != batch[:, None]).all()
    # class 0 samples draw among the 50 others uniformly: each about 3000/50 times
    counts = torch.bincount(draws[0], minlength=100)[labels != 0].float()
    assert counts.min() > 30 and counts.max() < 95
    again = sampler.draw(batch, 3000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def np_normalize(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_crd_golden_one_step_and_memory_update():
    """RepDistiller's CRD by hand: embeddings, scores against the other model's bank
    (positive first), Z from the first batch, NCE, and the momentum update."""
    n, k, dim, temp, mom = 40, 7, 6, 0.07, 0.5
    labels = torch.arange(n) % 4
    spec = DistillationSpec(
        method="crd", crd_feature_dim=dim, crd_negatives=k, crd_temperature=temp, crd_momentum=mom
    )
    loss = build_loss(spec)
    fs, ft = RNG.normal(size=(5, 3, 2, 2)), RNG.normal(size=(5, 9))
    loss.setup([torch.Size(fs.shape)], [torch.Size(ft.shape)])
    loss.bind_train_labels(labels)
    loss.double()
    mem_s0 = loss.memory_s.numpy().copy()
    mem_t0 = loss.memory_t.numpy().copy()
    idx = torch.tensor([3, 10, 17, 22, 39])
    targets = labels[idx]
    gen_seed = 5
    loss.set_batch(idx, torch.Generator().manual_seed(gen_seed))
    zs, zt = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
    terms = loss(t(zs), t(zt), targets, [t(fs)], [t(ft)])

    negatives = NegativeSampler(labels).draw(targets, k, torch.Generator().manual_seed(gen_seed))
    contrast = np.concatenate([idx.numpy()[:, None], negatives.numpy()], axis=1)
    ws, bs = loss.embed_s.weight.detach().numpy(), loss.embed_s.bias.detach().numpy()
    wt, bt = loss.embed_t.weight.detach().numpy(), loss.embed_t.bias.detach().numpy()
    v_s = np_normalize(fs.mean(axis=(2, 3)) @ ws.T + bs)
    v_t = np_normalize(ft @ wt.T + bt)

    def nce(v, memory):
        scores = np.exp(np.einsum("bkd,bd->bk", memory[contrast], v) / temp)
        scores = scores / (scores.mean() * n)
        noise = k / n
        log_d1 = np.log(scores[:, 0] / (scores[:, 0] + noise + 1e-7))
        log_d0 = np.log(noise / (scores[:, 1:] + noise + 1e-7))
        return -(log_d1.sum() + log_d0.sum()) / len(v)

    expected = nce(v_s, mem_t0) + nce(v_t, mem_s0)
    assert terms["crd"].item() == pytest.approx(expected, rel=1e-9)
    assert terms["loss"].item() == pytest.approx(terms["ce"].item() + 0.8 * expected, rel=1e-9)
    moved = np_normalize(mem_s0[idx.numpy()] * mom + v_s * (1 - mom))
    np.testing.assert_allclose(loss.memory_s.numpy()[idx.numpy()], moved, rtol=1e-9)
    untouched = np.setdiff1d(np.arange(n), idx.numpy())
    np.testing.assert_array_equal(loss.memory_t.numpy()[untouched], mem_t0[untouched])
    terms["loss"].backward()
    assert loss.embed_s.weight.grad is not None and loss.embed_t.weight.grad is not None
