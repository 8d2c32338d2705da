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
    spec = DistillationSpec(
        method="fitnet", ce_weight=1.0, kd_weight=0.0, feature_weight=2.0, regressor="conv1x1"
    )
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


def np_pool(f, size):
    """Average pooling by equal blocks (the sizes here divide evenly)."""
    b, c, h, w = f.shape
    return f.reshape(b, c, size, h // size, size, w // size).mean(axis=(3, 5))


@pytest.mark.parametrize(("s_size", "t_size"), [(4, 8), (8, 4), (8, 2)])
def test_attention_transfer_pools_the_larger_map_down(s_size, t_size):
    """RepDistiller and mdistiller pool the larger map to the smaller one's size."""
    fs, ft = RNG.normal(size=(3, 2, s_size, s_size)), RNG.normal(size=(3, 6, t_size, t_size))
    small = min(s_size, t_size)
    expected = ((np_attention(np_pool(fs, small)) - np_attention(np_pool(ft, small))) ** 2).mean()
    loss = build_loss(DistillationSpec(method="at", ce_weight=0.0))
    terms = loss(t(ZS[:3]), t(ZT[:3]), torch.tensor(Y[:3]), [t(fs)], [t(ft)])
    assert terms["at"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(1000 * expected, rel=1e-6)
    if s_size < t_size:  # resizing the student up (the old way) gives another value
        up = np.repeat(np.repeat(fs, t_size // s_size, axis=2), t_size // s_size, axis=3)
        upsampled = ((np_attention(up) - np_attention(ft)) ** 2).mean()
        assert terms["at"].item() != pytest.approx(upsampled, rel=1e-2)


def np_logsumexp(z, axis=1):
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_tckd_exact(zs, zt, y, temperature):
    """TCKD from log masses computed by log-sum-exp in float64."""
    rows = np.arange(len(y))

    def log_masses(z):
        z = z / temperature
        log_all = np_logsumexp(z)
        rest = z.copy()
        rest[rows, y] = -np.inf
        return np.stack([z[rows, y] - log_all, np_logsumexp(rest) - log_all], axis=1)

    ls, lt = log_masses(zs), log_masses(zt)
    return float((np.exp(lt) * (lt - ls)).sum(axis=1).mean() * temperature**2)


def test_dkd_stays_exact_for_extreme_logit_gaps():
    # the student is sure of a wrong class by 200 logits at T=1: its target mass is
    # e^-200, which a clamp at 1e-12 would turn into e^-27.6
    zs = np.zeros((2, 4))
    zs[:, 1] = 200.0
    zt = np.zeros((2, 4))
    zt[:, 0] = 200.0
    y = np.array([0, 0])
    spec = DistillationSpec(method="dkd", temperature=1.0, beta=0.0)
    z = t(zs, grad=True)
    terms = build_loss(spec)(z, t(zt), torch.tensor(y))
    expected = np_tckd_exact(zs, zt, y, 1.0)
    assert expected > 190  # the clamped version gives about 27.6
    assert terms["tckd"].item() == pytest.approx(expected, rel=1e-9)
    terms["tckd"].backward()
    assert torch.isfinite(z.grad).all()
    # d TCKD / d z_target = -1 per sample, / batch of 2 (the teacher's target mass is 1)
    np.testing.assert_allclose(z.grad[:, 0].numpy(), [-0.5, -0.5], rtol=1e-9)
    assert torch.autograd.gradcheck(
        lambda v: build_loss(spec)(v, t(zt), torch.tensor(y))["tckd"], (t(zs / 20, True),)
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_tckd_matches_log_sum_exp_golden_on_ordinary_logits(temperature):
    spec = DistillationSpec(method="dkd", temperature=temperature)
    terms = build_loss(spec)(t(ZS), t(ZT), torch.tensor(Y))
    assert terms["tckd"].item() == pytest.approx(np_tckd_exact(ZS, ZT, Y, temperature), rel=1e-9)


def test_dkd_warmup_scales_the_distillation_terms_like_mdistiller():
    spec = DistillationSpec(method="dkd", warmup_epochs=4)
    loss = build_loss(spec)
    for epoch, factor in [(1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)]:
        loss.set_epoch(epoch)
        terms = loss(t(ZS), t(ZT), torch.tensor(Y))
        expected = terms["ce"] + factor * (1.0 * terms["tckd"] + 8.0 * terms["nckd"])
        assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-12)
    no_ramp = build_loss(DistillationSpec(method="dkd", warmup_epochs=0))
    no_ramp.set_epoch(1)
    terms = no_ramp(t(ZS), t(ZT), torch.tensor(Y))
    assert terms["loss"].item() == pytest.approx(
        (terms["ce"] + terms["tckd"] + 8 * terms["nckd"]).item(), rel=1e-12
    )


def test_per_method_defaults_fill_only_what_the_spec_leaves_unset():
    at = DistillationSpec(method="at")
    assert (at.ce_weight, at.kd_weight, at.feature_weight) == (1.0, 0.0, 1000.0)
    fitnet = DistillationSpec.model_validate({"method": "fitnet", "feature_weight": 5.0})
    assert (fitnet.ce_weight, fitnet.kd_weight, fitnet.feature_weight) == (1.0, 0.0, 5.0)
    assert fitnet.regressor == "convreg"
    dkd = DistillationSpec(method="dkd")
    assert (dkd.ce_weight, dkd.alpha, dkd.beta) == (1.0, 1.0, 8.0)
    kd = DistillationSpec()
    assert (kd.ce_weight, kd.kd_weight, kd.temperature) == (0.1, 0.9, 4.0)
    # the AT term now outweighs CE, as in the references (it was ~0.007 vs ~2)
    fs, ft = RNG.normal(size=(4, 3, 4, 4)), RNG.normal(size=(4, 5, 4, 4))
    terms = build_loss(at)(t(ZS[:4]), t(ZT[:4]), torch.tensor(Y[:4]), [t(fs)], [t(ft)])
    assert terms["loss"].item() == pytest.approx(
        terms["ce"].item() + 1000 * terms["at"].item(), rel=1e-12
    )


def np_pearson_distance(a, b):
    return 1 - np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(len(a))])


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_golden_from_the_papers_definition(temperature):
    ys, yt = np_softmax(ZS / temperature), np_softmax(ZT / temperature)
    inter = np_pearson_distance(ys, yt) * temperature**2
    intra = np_pearson_distance(ys.T, yt.T) * temperature**2
    spec = DistillationSpec(
        method="dist", temperature=temperature, inter_weight=0.5, intra_weight=3.0
    )
    terms = build_loss(spec)(t(ZS), t(ZT), torch.tensor(Y))
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-6)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-6)
    expected = np_ce(ZS, Y) + 2.0 * (0.5 * inter + 3.0 * intra)  # kd_weight 2 by default
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert torch.autograd.gradcheck(
        lambda z: build_loss(spec)(z, t(ZT), torch.tensor(Y))["loss"], (t(ZS, True),)
    )


def np_zscore(z):
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


def test_logit_standardization_z_scores_both_logits_before_kd():
    spec = DistillationSpec(method="kd", temperature=2.0, logit_standardization=True)
    terms = build_loss(spec)(t(ZS), t(ZT), torch.tensor(Y))
    zs, zt = np_zscore(ZS), np_zscore(ZT)
    kd = np_kl(np_softmax(zt / 2), np_softmax(zs / 2)).mean() * 4
    assert terms["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(np_ce(ZS, Y), rel=1e-9)  # raw logits
    # scaling either model's logits changes nothing once they are standardised
    scaled = build_loss(spec)(t(ZS * 5 + 3), t(ZT * 0.1), torch.tensor(Y))
    assert scaled["kd"].item() == pytest.approx(kd, rel=1e-5)


@pytest.mark.parametrize("method", ["dkd", "dist"])
def test_logit_standardization_applies_to_dkd_and_dist(method):
    plain = build_loss(DistillationSpec(method=method))(t(ZS), t(ZT), torch.tensor(Y))
    spec = DistillationSpec(method=method, logit_standardization=True)
    std = build_loss(spec)(t(ZS), t(ZT), torch.tensor(Y))
    again = build_loss(DistillationSpec(method=method))(
        t(np_zscore(ZS)), t(np_zscore(ZT)), torch.tensor(Y)
    )
    assert std["loss"].item() != pytest.approx(plain["loss"].item(), rel=1e-3)
    distill = std["loss"].item() - std["ce"].item()
    assert distill == pytest.approx(again["loss"].item() - again["ce"].item(), rel=1e-6)


def test_logit_standardization_is_refused_for_feature_methods():
    with pytest.raises(ValueError, match="logit_standardization applies to methods kd, dkd"):
        DistillationSpec(method="at", logit_standardization=True)


def test_unknown_method_lists_the_choices():
    with pytest.raises(UnknownNameError) as info:
        LOSSES.get("kdd")
    message = str(info.value)
    for name in ("kd", "dkd", "fitnet", "at", "dist", "crd", "mse"):
        assert name in message
    assert "Did you mean" in message
