"""Golden values computed independently with numpy, by the textbook formulas."""

import numpy as np
import pytest
import torch

from kdcore.losses import LOSSES, attention_map, build_loss, kd_term
from kdcore.registry import UnknownNameError
from kdcore.spec import DistillationSpec

RNG = np.random.default_rng(1234)
ZS = RNG.normal(size=(5, 7)) * 3
ZT = RNG.normal(size=(5, 7)) * 3
Y = np.array([0, 3, 6, 2, 2])


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_ce(z, y):
    p = np_softmax(z)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def np_kl(p, q):
    """KL(p || q) per row."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 8.0])
def test_kd_term_is_batchmean_forward_kl_times_t_squared(temperature):
    expected = np_kl(np_softmax(ZT / temperature), np_softmax(ZS / temperature)).mean()
    expected *= temperature**2
    got = kd_term(t(ZS), t(ZT), temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # the classic mistakes give different numbers
    wrong_reduction = expected / ZS.shape[1]
    reverse = np_kl(np_softmax(ZS / temperature), np_softmax(ZT / temperature)).mean()
    reverse *= temperature**2
    no_t2 = expected / temperature**2
    for wrong in (wrong_reduction, reverse) + ((no_t2,) if temperature != 1 else ()):
        assert got != pytest.approx(wrong, rel=1e-3)


def test_kd_loss_combines_ce_and_kd():
    spec = DistillationSpec(method="kd", temperature=4.0, ce_weight=0.3, kd_weight=0.7)
    terms = build_loss(spec)(t(ZS), t(ZT), torch.tensor(Y))
    kd = np_kl(np_softmax(ZT / 4), np_softmax(ZS / 4)).mean() * 16
    assert terms["ce"].item() == pytest.approx(np_ce(ZS, Y), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.3 * np_ce(ZS, Y) + 0.7 * kd, rel=1e-6)


def test_kd_gradient_matches_closed_form():
    # d/dz_s [T^2 * mean_b KL(p_t || p_s)] = T * (softmax(z_s/T) - softmax(z_t/T)) / B
    temperature = 3.0
    zs = t(ZS, grad=True)
    kd_term(zs, t(ZT), temperature).backward()
    expected = temperature * (np_softmax(ZS / temperature) - np_softmax(ZT / temperature)) / 5
    np.testing.assert_allclose(zs.grad.numpy(), expected, rtol=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda z: kd_term(z, t(ZT), temperature), (t(ZS, True),))


def test_regression_mse_loss():
    spec = DistillationSpec(method="mse", kd_weight=0.25)
    pred, y, teacher = RNG.normal(size=6), RNG.normal(size=6), RNG.normal(size=6)
    terms = build_loss(spec)(t(pred), t(teacher), t(y))
    expected = ((pred - y) ** 2).mean() + 0.25 * ((pred - teacher) ** 2).mean()
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    p = t(pred, grad=True)
    build_loss(spec)(p, t(teacher), t(y))["loss"].backward()
    grad = 2 * (pred - y) / 6 + 0.25 * 2 * (pred - teacher) / 6
    np.testing.assert_allclose(p.grad.numpy(), grad, rtol=1e-6)


def np_attention(f):
    a = (f**2).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_attention_transfer_golden():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 4, 4))
    spec = DistillationSpec(method="at", ce_weight=0.0, kd_weight=0.0, feature_weight=1000.0)
    terms = build_loss(spec)(t(ZS[:2]), t(ZT[:2]), torch.tensor(Y[:2]), [t(fs)], [t(ft)])
    expected = ((np_attention(fs) - np_attention(ft)) ** 2).mean()
    assert terms["at"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(1000 * expected, rel=1e-6)
    np.testing.assert_allclose(attention_map(t(fs)).numpy(), np_attention(fs), rtol=1e-6)
    assert torch.autograd.gradcheck(lambda f: attention_map(f).sum(), (t(fs, True),))


def test_fitnet_hint_with_adapter_golden():
    fs, ft = RNG.normal(size=(2, 3, 4, 4)), RNG.normal(size=(2, 5, 4, 4))
    spec = DistillationSpec(method="fitnet", ce_weight=1.0, kd_weight=0.0, feature_weight=2.0)
    loss = build_loss(spec)
    loss.setup([torch.Size(fs.shape)], [torch.Size(ft.shape)])
    loss.double()
    w = loss.adapters[0].weight.detach().numpy()[:, :, 0, 0]  # (5, 3) 1x1 conv
    adapted = np.einsum("oc,bchw->bohw", w, fs)
    hint = ((adapted - ft) ** 2).mean()
    terms = loss(t(ZS[:2]), t(ZT[:2]), torch.tensor(Y[:2]), [t(fs)], [t(ft)])
    assert terms["hint"].item() == pytest.approx(hint, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(np_ce(ZS[:2], Y[:2]) + 2 * hint, rel=1e-6)
    assert list(loss.parameters()), "the adapter must be trainable"


def test_dkd_golden_from_the_papers_definition():
    temperature, alpha, beta = 2.0, 1.0, 8.0
    ps, pt = np_softmax(ZS / temperature), np_softmax(ZT / temperature)
    rows = np.arange(len(Y))
    bs = np.stack([ps[rows, Y], 1 - ps[rows, Y]], axis=1)
    bt = np.stack([pt[rows, Y], 1 - pt[rows, Y]], axis=1)
    tckd = np_kl(bt, bs).mean() * temperature**2
    # NCKD: KL between the distributions over the non-target classes only
    nckd = []
    for i, y in enumerate(Y):
        keep = np.arange(ZS.shape[1]) != y
        nckd.append(
            np_kl(
                np_softmax(ZT[i : i + 1, keep] / temperature),
                np_softmax(ZS[i : i + 1, keep] / temperature),
            )[0]
        )
    nckd = np.mean(nckd) * temperature**2
    spec = DistillationSpec(
        method="dkd", temperature=temperature, alpha=alpha, beta=beta, ce_weight=1.0
    )
    terms = build_loss(spec)(t(ZS), t(ZT), torch.tensor(Y))
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    expected = np_ce(ZS, Y) + alpha * tckd + beta * nckd
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    zs = t(ZS, grad=True)
    assert torch.autograd.gradcheck(
        lambda z: build_loss(spec)(z, t(ZT), torch.tensor(Y))["loss"], (zs,)
    )


def test_unknown_method_lists_the_choices():
    with pytest.raises(UnknownNameError) as info:
        LOSSES.get("kdd")
    message = str(info.value)
    assert "kd" in message and "dkd" in message and "fitnet" in message
    assert "Did you mean" in message
