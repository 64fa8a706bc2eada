import numpy as np
import pytest
import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError
from persona_axes.vectors.methods import probe_direction
from persona_axes.stats import cohens_d
from persona_axes.vectors.probes import LinearProbe, ProbeSweep, probe_sweep

INFO = ModelInfo("toy", n_layers=4, hidden_size=16)


def _acts(values, layers=(0, 1, 2, 3)):
    return Activations(values=values.float(), layers=tuple(layers), items=[{} for _ in range(len(values))], model=INFO)


def _data(n, signal, seed, shift=None):
    """``[n, 4, 16]`` pos and neg: noise, offset so residual-like (non-zero mean), and a class shift of size
    ``signal[L]`` along a fixed direction at layer L."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(16)
    direction[3] = 1.0
    base = torch.randn(16, generator=torch.Generator().manual_seed(99)) * 5
    pos = torch.randn(n, 4, 16, generator=g) + base
    neg = torch.randn(n, 4, 16, generator=g) + base
    for L, s in enumerate(signal):
        pos[:, L] += s / 2 * direction
        neg[:, L] -= s / 2 * direction
    return pos, neg


def test_sweep_numbers_equal_an_independent_sklearn_computation():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    signal = [0.0, 1.0, 4.0, 2.0]
    trp, trn = _data(30, signal, 1)
    tep, ten = _data(25, signal, 2)
    tep = tep[:20]  # unequal held-out counts
    sw = probe_sweep(_acts(trp), _acts(trn), _acts(tep), _acts(ten), C=0.5)
    assert sw.layers == (0, 1, 2, 3) and sw.n_train == (30, 30) and sw.n_test == (20, 25)
    for j, L in enumerate(sw.layers):
        # independent: the documented preprocessing, sklearn's own decision function on the test set
        x = torch.cat([trp[:, j], trn[:, j]]).double().numpy()
        mu, scale = x.mean(0), np.sqrt(x.var(0).mean())
        clf = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit((x - mu) / scale, [1] * 30 + [0] * 30)
        xt = torch.cat([tep[:, j], ten[:, j]]).double().numpy()
        dec = clf.decision_function((xt - mu) / scale)
        y = np.array([1] * 20 + [0] * 25)
        probe = sw.probes[L]
        assert np.allclose(probe.logit(torch.from_numpy(xt)).numpy(), dec, atol=1e-4)  # folded w, b on raw h
        assert sw.accuracy[j] == pytest.approx(((dec > 0) == y).mean())
        assert sw.auroc[j] == pytest.approx(roc_auc_score(y, dec))
        md = trp[:, j].double().mean(0) - trn[:, j].double().mean(0)
        u = (md / md.norm()).numpy()
        a, b = tep[:, j].double().numpy() @ u, ten[:, j].double().numpy() @ u
        sd = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        assert sw.cohens_d[j] == pytest.approx((a.mean() - b.mean()) / sd)
    assert sw.best_layer == 2  # the strongest signal
    assert sw.accuracy[2] > 0.85 and sw.accuracy[0] < 0.75
    recs = sw.to_records()
    assert [r["layer"] for r in recs] == [0, 1, 2, 3] and [r["best"] for r in recs] == [False, False, True, False]
    sub = probe_sweep(_acts(trp), _acts(trn), _acts(tep), _acts(ten), C=0.5, layers=[1, 3])
    assert sub.layers == (1, 3) and sub.best_layer == 3
    assert sub.accuracy.tolist() == [sw.accuracy[1].item(), sw.accuracy[3].item()]
    assert sub.cohens_d.tolist() == pytest.approx([sw.cohens_d[1].item(), sw.cohens_d[3].item()])
    # the same fitting path as probe_direction: same normal up to scale
    pd = probe_direction(_acts(trp), _acts(trn), C=0.5)
    for L in range(4):
        w = sw.probes[L].weight.double()
        assert torch.nn.functional.cosine_similarity(w, pd[L].double(), dim=0) > 1 - 1e-5


def test_best_layer_breaks_ties_by_auroc_then_d():
    probes = {L: LinearProbe(torch.ones(16), 0.0, L, INFO) for L in range(3)}
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    sw = ProbeSweep((0, 1, 2), t(1.0, 1.0, 1.0), t(0.9, 1.0, 1.0), t(5.0, 2.0, 3.0), t(1, 1, 1), probes, (1, 1), (1, 1), 1.0)
    assert sw.best_layer == 2
    sw = ProbeSweep((0, 1, 2), t(0.8, 0.9, 0.9), t(1.0, 0.95, 0.97), t(9.0, 9.0, 1.0), t(1, 1, 1), probes, (1, 1), (1, 1), 1.0)
    assert sw.best_layer == 2 and sw.best_probe is probes[2]
    sw = ProbeSweep((0, 1, 2), t(0.5, 0.5, 0.5), t(float("nan"), 0.5, 0.5), t(1.0, 1.0, 1.0), t(1, 1, 1), probes, (1, 1), (1, 1), 1.0)
    assert sw.best_layer == 1  # NaN ranks last, a full tie goes to the earlier layer


def test_cohens_d_and_bad_inputs():
    assert cohens_d(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])) == pytest.approx(1 / np.sqrt(2))
    assert np.isnan(cohens_d(torch.tensor([1.0]), torch.tensor([0.0, 2.0])))
    p, n = _data(6, [1, 1, 1, 1], 3)
    with pytest.raises(InvalidInputError, match="C"):
        probe_sweep(_acts(p), _acts(n), _acts(p), _acts(n), C=0)
    with pytest.raises(InvalidInputError, match="layers"):
        probe_sweep(_acts(p), _acts(n), _acts(p[:, :2], (0, 1)), _acts(n))
    with pytest.raises(InvalidInputError, match="not captured"):
        probe_sweep(_acts(p[:, :2], (0, 1)), _acts(n[:, :2], (0, 1)), _acts(p[:, :2], (0, 1)),
                    _acts(n[:, :2], (0, 1)), layers=[3])
    with pytest.raises(InvalidInputError, match="no items"):
        probe_sweep(_acts(p), _acts(n), _acts(p[:0]), _acts(n))
    with pytest.raises(InvalidInputError):
        LinearProbe(torch.zeros(16), 0.0, 0, INFO)
    with pytest.raises(InvalidInputError):
        LinearProbe(torch.ones(15), 0.0, 0, INFO)
    with pytest.raises(InvalidInputError):
        LinearProbe(torch.ones(16), 0.0, 4, INFO)
