"""PersonaSpace and the Assistant Axis on synthetic role vectors with a planted low-rank structure.

Fitted numbers are compared with independent numpy / scikit-learn computations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.vectors.space import LayerSweep, PersonaSpace
from persona_axes.vectors.containers import PersonaVector, VectorSet

T, D, R = 6, 64, 40
INFO = ModelInfo(name="synthetic", n_layers=T, hidden_size=D)
BEST = 3
#: how far the default sits from the average role along the Assistant direction, per layer (largest at BEST)
AXIS_LEN = [2.0, 4.0, 6.0, 12.0, 6.0, 4.0]


def planted(seed=0, axis_scale=1.0):
    """Role vectors ``[R, T, d]`` = layer mean + 3 latent factors (scales 6, 3, 1.5) + small noise, and a default
    vector ``[T, d]`` that sits at the negative end of factor 0 (the planted Assistant direction ``q0``)."""
    g = torch.Generator().manual_seed(seed)
    mu = 2 * torch.randn(T, D, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(T, D, 3, generator=g, dtype=torch.float64))[0].transpose(1, 2)  # [T, 3, d]
    z = torch.randn(R, 3, generator=g, dtype=torch.float64)
    z = torch.linalg.qr(z - z.mean(0))[0] * (R - 1) ** 0.5  # centred, uncorrelated, unit variance in the sample
    z = z * torch.tensor([6.0, 3.0, 1.5], dtype=torch.float64)
    roles = mu + torch.einsum("rk,tkd->rtd", z, Q) + 0.01 * torch.randn(R, T, D, generator=g, dtype=torch.float64)
    roles_mean = roles.mean(0)
    default = roles_mean - axis_scale * torch.tensor(AXIS_LEN, dtype=torch.float64)[:, None] * Q[:, 0]
    return roles.float(), default.float(), Q[:, 0].numpy(), g


def role_set(roles: torch.Tensor) -> VectorSet:
    return VectorSet({f"r{i}": roles[i] for i in range(len(roles))}, INFO, "role_mean",
                     n_samples={f"r{i}": 5 for i in range(len(roles))})


def default_vec(default: torch.Tensor) -> PersonaVector:
    return PersonaVector(default, INFO, "default", "default_mean", n_samples=20)


def np_cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    roles, default, _, _ = planted()
    sp = PersonaSpace(n_components=5).fit(role_set(roles), default_vec(default))
    assert sp.components_.shape == (T, 5, D) and sp.loadings_.shape == (R, T, 5)
    assert sp.mean_.shape == (T, D) and sp.explained_variance_.shape == (T, 5)
    assert sp.role_names_ == [f"r{i}" for i in range(R)] and sp.layers_ == tuple(range(T))
    X = roles.double().numpy()
    for L in range(T):
        ref = PCA(n_components=5, svd_solver="full").fit(X[:, L])
        np.testing.assert_allclose(sp.explained_variance_[L].numpy(), ref.explained_variance_, rtol=1e-4)
        np.testing.assert_allclose(sp.explained_variance_ratio_[L].numpy(), ref.explained_variance_ratio_, rtol=1e-4)
        np.testing.assert_allclose(sp.mean_[L].numpy(), ref.mean_, atol=1e-5)
        # PC1's variance from an independent eigen-decomposition of the covariance matrix
        top = np.linalg.eigvalsh(np.cov(X[:, L].T))[-1]
        np.testing.assert_allclose(float(sp.explained_variance_[L, 0]), top, rtol=1e-4)
        signs = np.sign((sp.components_[L].double().numpy() * ref.components_).sum(-1))
        np.testing.assert_allclose(sp.components_[L].numpy() * signs[:, None], ref.components_, atol=1e-5)
        np.testing.assert_allclose(sp.loadings_[:, L].numpy() * signs, ref.transform(X[:, L]), atol=1e-4)
        np.testing.assert_allclose(sp.transform(roles[:, L], L).numpy() * signs, ref.transform(X[:, L]), atol=1e-4)
    # planted: three factors explain almost everything, with variances in ratio 36 : 9 : 2.25
    assert (sp.explained_variance_ratio_[:, :3].sum(-1) > 0.99).all()


def test_assistant_axis_is_mean_difference_and_aligns_with_pc1():
    roles, default, q0, _ = planted()
    sp = PersonaSpace(n_components=4).fit(role_set(roles), default_vec(default))
    expected = default.double().numpy() - roles.double().numpy().mean(0)
    np.testing.assert_allclose(sp.assistant_axis_.numpy(), expected, atol=1e-5)
    axis = sp.assistant_axis()
    assert isinstance(axis, PersonaVector) and axis.method == "assistant_axis" and axis.model == INFO
    assert axis.n_samples == R + 20
    np.testing.assert_allclose(axis.vector.numpy(), expected, atol=1e-5)
    # the default sits at one end of the main factor, so PC1 is the axis (oriented towards the Assistant)
    assert (sp.pc1_cosine_ > 0.999).all()
    np.testing.assert_allclose(sp.pc1_cosine_.numpy(), np_cos(expected, sp.components_[:, 0].double().numpy()), atol=1e-6)
    assert (np.abs(np_cos(sp.components_[:, 0].double().numpy(), q0)) > 0.999).all()
    # default loadings: the mean default vector's coordinates, far positive on PC1
    ref = np.einsum("td,tkd->tk", default.double().numpy() - sp.mean_.double().numpy(), sp.components_.double().numpy())
    np.testing.assert_allclose(sp.default_loadings_.numpy(), ref, atol=1e-4)
    assert (sp.default_loadings_[:, 0] > 0).all()


def test_fit_accepts_tensors_and_activations_and_layer_subsets():
    roles, default, _, g = planted()
    acts = Activations(default + 0.1 * torch.randn(30, T, D, generator=g, dtype=torch.float64).float(),
                       tuple(range(T)), [{}] * 30, INFO)
    a = PersonaSpace(n_components=3).fit(roles, acts.values.double().mean(0).float(), model=INFO)
    b = PersonaSpace(n_components=3).fit(role_set(roles), acts)
    np.testing.assert_allclose(a.components_.numpy(), b.components_.numpy(), atol=1e-6)
    np.testing.assert_allclose(a.assistant_axis_.numpy(), b.assistant_axis_.numpy(), atol=1e-5)
    assert a.role_names_[0] == "role_0" and b.n_default_ == 30
    sub = PersonaSpace(n_components=3, layers=[1, -1]).fit(role_set(roles), acts)
    assert sub.layers_ == (1, 5) and sub.components_.shape == (2, 3, D)
    np.testing.assert_allclose(sub.components_[1].numpy(), b.components_[5].numpy(), atol=1e-6)
    np.testing.assert_allclose(sub.transform(roles[:, 5], 5).numpy(), b.transform(roles[:, 5], 5).numpy(), atol=1e-5)
    assert sub.assistant_axis().vector.shape == (T, D)  # the axis covers every layer
    with pytest.raises(LayerOutOfRangeError):
        sub.transform(roles[:, 2], 2)
    # no default: PCA only
    c = PersonaSpace(n_components=None).fit(roles)
    assert c.components_.shape == (T, R, D) and c.assistant_axis_ is None
    with pytest.raises(InvalidInputError, match="default"):
        c.assistant_axis()


def test_transform_and_project_are_consistent():
    roles, default, _, g = planted()
    sp = PersonaSpace(n_components=4).fit(role_set(roles), default_vec(default))
    x = 3 * torch.randn(7, 2, D, generator=g)
    L = 2
    t = sp.transform(x, L)
    assert t.shape == (7, 2, 4)
    X = x.double().numpy()
    comps = sp.components_[L].double().numpy()
    np.testing.assert_allclose(t.numpy(), (X - sp.mean_[L].double().numpy()) @ comps.T, atol=1e-4)
    axis = sp.assistant_axis_[L].double().numpy()
    np.testing.assert_allclose(sp.project(x, L).numpy(), X @ (axis / np.linalg.norm(axis)), atol=1e-4)
    np.testing.assert_allclose(sp.project(x, L, "pc1").numpy(), X @ comps[0], atol=1e-4)
    for i in range(4):
        centred = sp.project(x, L, i) - sp.project(sp.mean_[L], L, i)
        np.testing.assert_allclose(centred.numpy(), t[..., i].numpy(), atol=1e-4)
    acts = Activations(x[:, 0][:, None].expand(7, T, D).contiguous(), tuple(range(T)), [{}] * 7, INFO)
    np.testing.assert_allclose(sp.transform(acts, L).numpy(), t[:, 0].numpy(), atol=1e-5)
    with pytest.raises(InvalidInputError, match="component index"):
        sp.project(x, L, 4)
    with pytest.raises(ModelMismatchError):
        sp.transform(torch.zeros(3, D + 1), L)


def _sweep_acts(roles, default, g, n=60):
    """Default and role activations scattered around their vectors with the same isotropic noise at every layer;
    the planted axis is longest at layer BEST, so the separation is strongest there."""
    noise = 1.0
    d_vals = default + noise * torch.randn(n, T, D, generator=g, dtype=torch.float64).float()
    idx = torch.arange(n) % R
    r_vals = roles[idx] + noise * torch.randn(n, T, D, generator=g, dtype=torch.float64).float()
    return (Activations(d_vals, tuple(range(T)), [{}] * n, INFO),
            Activations(r_vals, tuple(range(T)), [{"role": f"r{int(i)}"} for i in idx], INFO))


def test_layer_sweep_picks_the_planted_layer():
    from sklearn.metrics import roc_auc_score

    roles, default, _, g = planted()
    sp = PersonaSpace(n_components=4).fit(role_set(roles), default_vec(default))
    dacts, racts = _sweep_acts(roles, default, g)
    sweep = sp.layer_sweep(dacts, racts)
    assert isinstance(sweep, LayerSweep) and sweep.layers == tuple(range(T))
    assert sweep.best_layer == BEST
    for L in range(T):
        axis = sp.assistant_axis_[L].double().numpy()
        u = axis / np.linalg.norm(axis)
        p1, p0 = dacts.at(L).double().numpy() @ u, racts.at(L).double().numpy() @ u
        auc = roc_auc_score(np.r_[np.ones(len(p1)), np.zeros(len(p0))], np.r_[p1, p0])
        np.testing.assert_allclose(float(sweep.auroc[L]), auc, atol=1e-9)
        sd = np.sqrt(((len(p1) - 1) * p1.var(ddof=1) + (len(p0) - 1) * p0.var(ddof=1)) / (len(p1) + len(p0) - 2))
        np.testing.assert_allclose(float(sweep.cohens_d[L]), (p1.mean() - p0.mean()) / sd, rtol=1e-6)
        np.testing.assert_allclose(float(sweep.pc1_cosine[L]), float(sp.pc1_cosine_[L]), atol=1e-7)
    recs = sweep.to_records()
    assert [r["layer"] for r in recs] == list(range(T)) and sum(r["best"] for r in recs) == 1
    assert recs[BEST]["best"] and set(recs[0]) >= {"layer", "auroc", "cohens_d", "pc1_cosine"}
    # the rule: max AUROC, then max d among ties
    top = max(r["auroc"] for r in recs)
    tied = [r for r in recs if r["auroc"] >= top - 1e-9]
    assert max(tied, key=lambda r: r["cohens_d"])["layer"] == BEST


def test_layer_sweep_breaks_auroc_ties_by_cohens_d():
    roles, default, _, g = planted(axis_scale=10.0)  # default far beyond every role: AUROC saturates
    sp = PersonaSpace(n_components=4).fit(role_set(roles), default_vec(default))
    sweep = sp.layer_sweep(*_sweep_acts(roles, default, g))
    assert int((sweep.auroc == 1.0).sum()) >= 3 and sweep.auroc[BEST] == 1.0
    assert sweep.best_layer == BEST and int(sweep.cohens_d.argmax()) == BEST
    # with a tolerance wide enough to tie every layer, d alone decides; a zero tolerance needs exact ties
    assert sp.layer_sweep(*_sweep_acts(roles, default, g), tol=1.0).best_layer == BEST


def test_layer_sweep_uses_shared_layers_only():
    roles, default, _, g = planted()
    sp = PersonaSpace(n_components=4).fit(role_set(roles), default_vec(default))
    dacts, racts = _sweep_acts(roles, default, g)
    sub = Activations(dacts.values[:, [0, 1, 2]], (0, 1, 2), dacts.items, INFO)
    sweep = sp.layer_sweep(sub, racts)
    assert sweep.layers == (0, 1, 2) and sweep.best_layer == 2
    with pytest.raises(InvalidInputError, match="at least 2"):
        sp.layer_sweep(dacts.select([0]), racts)
    with pytest.raises(ModelMismatchError):
        sp.layer_sweep(Activations(dacts.values, dacts.layers, dacts.items, ModelInfo("other", T, D)), racts)


def test_bad_inputs():
    roles, default, _, _ = planted()
    with pytest.raises(InvalidInputError, match="at least 2"):
        PersonaSpace().fit(roles[:1])
    bad = roles.clone()
    bad[3, 2, 1] = float("nan")
    with pytest.raises(InvalidInputError, match="role_3"):
        PersonaSpace().fit(bad)
    other = PersonaVector(default, ModelInfo("other-model", T, D), "default", "default_mean")
    with pytest.raises(ModelMismatchError):
        PersonaSpace(n_components=3).fit(role_set(roles), other)
    with pytest.raises(ModelMismatchError):
        PersonaSpace(n_components=3).fit(role_set(roles), torch.zeros(T, D + 1))
    with pytest.raises(InvalidInputError, match=r"\[n_layers=6"):
        PersonaSpace(n_components=3).fit(role_set(roles), torch.zeros(T - 1, D))
    with pytest.raises(ModelMismatchError):
        PersonaSpace().fit(roles, model=ModelInfo("synthetic", T + 1, D))
    with pytest.raises(InvalidInputError, match="not fitted"):
        PersonaSpace().transform(roles[:, 0], 0)
    with pytest.raises(InvalidInputError, match="n_components"):
        PersonaSpace(n_components=0)
    with pytest.warns(UserWarning, match="keeping 40"):
        assert PersonaSpace(n_components=100).fit(roles).n_components_ == R
    with pytest.raises(InvalidInputError, match="identical"):
        PersonaSpace(n_components=2).fit(torch.ones(3, T, D))
