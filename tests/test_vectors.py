"""Trait/role vectors, purification and vector files, on synthetic activations with a planted direction.

Every number is checked against an independent numpy / scikit-learn computation, never against itself.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo
from persona_axes.errors import FileFormatError, InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.files import load_tensors, save_tensors
from persona_axes.vectors.containers import PersonaVector, VectorSet
from persona_axes.vectors.methods import (
    TRAIT_METHODS,
    mean_difference,
    mean_vector,
    pca_difference,
    probe_direction,
    role_vectors,
    trait_vector,
)
from persona_axes.vectors.purify import PurifyResult, purify

T, D = 6, 64
INFO = ModelInfo(name="synthetic", n_layers=T, hidden_size=D)


def _acts(values: torch.Tensor, items=None, layers=None, info=INFO) -> Activations:
    n = values.shape[0]
    return Activations(values=values.float(), layers=tuple(range(T)) if layers is None else layers,
                       items=items or [{"i": i} for i in range(n)], model=info)


def planted(n_pos=200, n_neg=200, seed=0, noise=0.02):
    """pos/neg activations that differ along one planted unit direction per layer (``dirs [T, d]``).

    pos[i] and neg[i] share a per-pair base (the "question"); the trait shifts them by ``+-a_i / 2`` along the
    planted direction, on top of a large per-layer offset and small independent noise.
    """
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(T, D, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    offset = 3 * torch.randn(T, D, generator=g, dtype=torch.float64)
    n = max(n_pos, n_neg)
    base = noise * torch.randn(n, T, D, generator=g, dtype=torch.float64)
    a = 3.0 * (1 + 0.2 * torch.randn(n, 1, 1, generator=g, dtype=torch.float64))
    pos = offset + base[:n_pos] + a[:n_pos] / 2 * dirs + noise * torch.randn(n_pos, T, D, generator=g, dtype=torch.float64)
    neg = offset + base[:n_neg] - a[:n_neg] / 2 * dirs + noise * torch.randn(n_neg, T, D, generator=g, dtype=torch.float64)
    return _acts(pos), _acts(neg), dirs.numpy()


def np_cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def np_mean_diff(pos: Activations, neg: Activations) -> np.ndarray:
    return pos.values.double().numpy().mean(0) - neg.values.double().numpy().mean(0)


# -- trait vectors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", TRAIT_METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_method_recovers_planted_direction(method, seed):
    pos, neg, dirs = planted(seed=seed)
    v = trait_vector(pos, neg, method, name="evil")
    assert isinstance(v, PersonaVector)
    assert v.vector.shape == (T, D) and v.vector.dtype == torch.float32
    assert v.name == "evil" and v.method == method and v.n_samples == 400
    cos = np_cos(v.vector.numpy(), dirs)
    assert (cos >= 0.999).all(), cos
    # every method points towards pos and has the mean difference's norm at each layer
    md = np_mean_diff(pos, neg)
    assert (np_cos(v.vector.numpy(), md) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(v.vector.numpy(), axis=-1), np.linalg.norm(md, axis=-1), rtol=1e-5)


def test_mean_difference_matches_numpy_with_unequal_counts():
    pos, neg, dirs = planted(n_pos=150, n_neg=90, seed=3)
    v = mean_difference(pos, neg)
    np.testing.assert_allclose(v.numpy(), np_mean_diff(pos, neg), atol=1e-5)
    assert (np_cos(v.numpy(), dirs) >= 0.999).all()


def test_pca_difference_matches_numpy_svd_of_paired_differences():
    pos, neg, _ = planted(n_pos=80, n_neg=80, seed=4, noise=0.5)
    v = pca_difference(pos, neg).numpy()
    diffs = pos.values.double().numpy() - neg.values.double().numpy()
    md = np_mean_diff(pos, neg)
    for L in range(T):
        top = np.linalg.svd(diffs[:, L], full_matrices=False)[2][0]
        top = top * np.sign(top @ md[L])
        np.testing.assert_allclose(np_cos(v[L], top), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(v[L]), np.linalg.norm(md[L]), rtol=1e-5)


def test_probe_matches_independent_sklearn_fit():
    from sklearn.linear_model import LogisticRegression

    pos, neg, _ = planted(n_pos=60, n_neg=40, seed=5, noise=0.8)
    v = probe_direction(pos, neg, C=0.5).numpy()
    X = np.concatenate([pos.values.double().numpy(), neg.values.double().numpy()])
    y = np.r_[np.ones(60), np.zeros(40)]
    for L in range(T):
        x = X[:, L]
        xs = (x - x.mean(0)) / np.sqrt(x.var(0).mean())
        w = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000).fit(xs, y).coef_[0]
        np.testing.assert_allclose(np_cos(v[L], w), 1.0, atol=1e-5)


def test_pca_difference_needs_equal_counts():
    pos, neg, _ = planted(n_pos=10, n_neg=9)
    with pytest.raises(InvalidInputError, match="unequal pos/neg sets"):
        pca_difference(pos, neg)
    with pytest.raises(InvalidInputError, match="unequal pos/neg sets"):
        trait_vector(pos, neg, "pca_diff")


def test_layer_order_of_activations_does_not_matter():
    pos, neg, _ = planted(n_pos=30, n_neg=30)
    perm = [3, 0, 5, 1, 4, 2]
    p2 = Activations(pos.values[:, perm], tuple(perm), pos.items, INFO)
    n2 = Activations(neg.values[:, perm], tuple(perm), neg.items, INFO)
    assert torch.equal(mean_difference(p2, n2), mean_difference(pos, neg))


def test_trait_vector_input_errors():
    pos, neg, _ = planted(n_pos=20, n_neg=20)
    partial = Activations(pos.values[:, [0, 2, 4]], (0, 2, 4), pos.items, INFO)
    with pytest.raises(InvalidInputError, match="layers=None"):
        trait_vector(partial, neg)
    bad = pos.values.clone()
    bad[[1, 5, 7], 2, 3] = float("nan")
    bad[5, 0, 0] = float("inf")
    with pytest.raises(InvalidInputError, match=r"\b3 of 20 rows"):
        trait_vector(_acts(bad), neg)
    empty = _acts(torch.zeros(0, T, D), items=[])
    with pytest.raises(InvalidInputError, match="no items"):
        trait_vector(empty, neg)
    other = ModelInfo(name="other", n_layers=T, hidden_size=D)
    with pytest.raises(ModelMismatchError):
        trait_vector(pos, _acts(neg.values, info=other))
    with pytest.raises(InvalidInputError, match="method"):
        trait_vector(pos, neg, "lda")
    with pytest.raises(InvalidInputError, match="C must be positive"):
        probe_direction(pos, neg, C=0)


# -- role and mean vectors -------------------------------------------------------------------------------------


def _role_acts(counts: dict[str, int], seed=0):
    g = torch.Generator().manual_seed(seed)
    vals, items = [], []
    for r, c in counts.items():
        centre = 2 * torch.randn(T, D, generator=g)
        vals.append(centre + 0.3 * torch.randn(c, T, D, generator=g))
        items += [{"role": r, "k": i} for i in range(c)]
    return _acts(torch.cat(vals), items=items)


def test_role_vectors_are_group_means():
    acts = _role_acts({"pirate": 5, "judge": 3, "poet": 4})
    vs = role_vectors(acts, families={"pirate": "fiction", "judge": "work", "ghost": "fiction"})
    assert isinstance(vs, VectorSet)
    assert vs.names == ["pirate", "judge", "poet"] and vs.method == "role_mean"
    assert vs.n_samples == {"pirate": 5, "judge": 3, "poet": 4}
    assert vs.families == {"pirate": "fiction", "judge": "work"}
    vals = acts.values.double().numpy()
    roles = np.array([it["role"] for it in acts.items])
    for r in vs.names:
        np.testing.assert_allclose(vs[r].vector.numpy(), vals[roles == r].mean(0), atol=1e-5)
    assert vs.stack().shape == (3, T, D)
    assert vs["pirate"].metadata == {"family": "fiction"} and vs["poet"].n_samples == 4


def test_role_vectors_min_count_warns_and_errors():
    acts = _role_acts({"pirate": 5, "judge": 2, "poet": 1})
    with pytest.warns(UserWarning, match=r"'judge' \(2\).*'poet' \(1\)"):
        vs = role_vectors(acts, min_count=3)
    assert vs.names == ["pirate"]
    with pytest.raises(InvalidInputError, match="min_count=9"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            role_vectors(acts, min_count=9)
    with pytest.raises(InvalidInputError, match="'persona'"):
        role_vectors(acts, key="persona")
    mixed = _acts(acts.values, items=[{"role": "x"}] * 4 + [{}] * (len(acts) - 4))
    with pytest.warns(UserWarning, match="have no 'role'"):
        assert role_vectors(mixed).names == ["x"]


def test_mean_vector():
    acts = _role_acts({"default": 7})
    v = mean_vector(acts, "assistant")
    assert v.method == "default_mean" and v.n_samples == 7 and v.name == "assistant"
    np.testing.assert_allclose(v.vector.numpy(), acts.values.double().numpy().mean(0), atol=1e-5)


# -- PersonaVector API -----------------------------------------------------------------------------------------


def _vec(name="v", seed=0, method="mean_diff", **kw) -> PersonaVector:
    g = torch.Generator().manual_seed(seed)
    return PersonaVector(vector=torch.randn(T, D, generator=g), model=INFO, name=name, method=method, **kw)


def test_persona_vector_accessors():
    v, w = _vec(seed=1), _vec("w", seed=2)
    assert torch.equal(v.at(2), v.vector[2]) and torch.equal(v.at(-1), v.vector[T - 1])
    with pytest.raises(LayerOutOfRangeError):
        v.at(T)
    np.testing.assert_allclose(np.linalg.norm(v.unit().numpy(), axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(v.unit(3).numpy(), v.vector[3].numpy() / np.linalg.norm(v.vector[3].numpy()), atol=1e-6)
    np.testing.assert_allclose(v.cosine(w).numpy(), np_cos(v.vector.numpy(), w.vector.numpy()), atol=1e-6)
    np.testing.assert_allclose(v.cosine(w.vector[0]).numpy(), np_cos(v.vector.numpy(), w.vector[0].numpy()), atol=1e-6)
    with pytest.raises(ModelMismatchError):
        v.cosine(PersonaVector(torch.ones(T, D), ModelInfo("other", T, D), "o", "mean_diff"))
    z = v.vector.clone()
    z[4] = 0
    with pytest.raises(InvalidInputError, match=r"layer\(s\) \[4\]"):
        PersonaVector(z, INFO, "z", "mean_diff").unit()


def test_persona_vector_validation():
    with pytest.raises(InvalidInputError, match="n_layers=6"):
        PersonaVector(torch.zeros(5, D), INFO, "v", "mean_diff")
    bad = torch.zeros(T, D)
    bad[2, 0] = float("nan")
    with pytest.raises(InvalidInputError, match=r"layer\(s\) \[2\]"):
        PersonaVector(bad, INFO, "v", "mean_diff")
    with pytest.raises(InvalidInputError, match="reserved"):
        _vec(metadata={"method": "x"})
    with pytest.raises(InvalidInputError, match="strings"):
        _vec(metadata={"k": 3})


# -- purification ----------------------------------------------------------------------------------------------


def _purify_setup(seed=0):
    """A trait vector = own direction + overlaps with three other (mutually non-orthogonal) vectors."""
    g = torch.Generator().manual_seed(seed)
    others = [PersonaVector(torch.randn(T, D, generator=g) * (1 + i), INFO, f"o{i}", "role_mean") for i in range(3)]
    others[2] = PersonaVector(others[2].vector + 0.7 * others[0].vector, INFO, "o2", "role_mean")
    own = torch.randn(T, D, generator=g) * 3
    v = own + 0.4 * others[0].vector + 0.3 * others[1].vector - 0.2 * others[2].vector
    return PersonaVector(v, INFO, "trait", "mean_diff", n_samples=10, metadata={"note": "x"}), others


def test_purify_sequential_is_projection_on_complement():
    vec, others = _purify_setup()
    res = purify(vec, others, mode="sequential")
    assert isinstance(res, PurifyResult) and res.mode == "sequential"
    p = res.vector.vector.double().numpy()
    v = vec.vector.double().numpy()
    O = np.stack([o.vector.double().numpy() for o in others], 1)  # [T, k, d]
    for L in range(T):
        # independent: least-squares residual of v on the span of the others
        coef = np.linalg.lstsq(O[L].T, v[L], rcond=None)[0]
        np.testing.assert_allclose(p[L], v[L] - O[L].T @ coef, atol=1e-5)
        for i in range(3):
            assert abs(np_cos(p[L], O[L, i])) <= 1e-6
        assert np_cos(p[L], v[L]) > 0.8  # the trait's own component stays dominant
    for i, o in enumerate(others):
        np.testing.assert_allclose(res.cos_before[o.name].numpy(), np_cos(v, O[:, i]), atol=1e-6)
        assert res.cos_after[o.name].abs().max() <= 1e-6
    np.testing.assert_allclose(res.self_cosine.numpy(), np_cos(p, v), atol=1e-6)
    assert res.vector.method == "purified" and res.vector.metadata["purify_mode"] == "sequential"
    assert res.vector.metadata["note"] == "x" and res.vector.name == "trait"
    # order of the others does not change the result
    res2 = purify(vec, others[::-1])
    np.testing.assert_allclose(res2.vector.vector.numpy(), res.vector.vector.numpy(), atol=1e-5)


def test_purify_symmetric_matches_lowdin():
    vec, others = _purify_setup(seed=1)
    res = purify(vec, others, mode="symmetric")
    seq = purify(vec, others, mode="sequential")
    p = res.vector.vector.double().numpy()
    v = vec.vector.double().numpy()
    for L in range(T):
        M = np.stack([v[L]] + [o.vector[L].double().numpy() for o in others])
        U = M / np.linalg.norm(M, axis=1, keepdims=True)
        # independent Löwdin: the orthonormal polar factor of U (closest orthonormal set), via SVD
        P, _, Vh = np.linalg.svd(U, full_matrices=False)
        W = P @ Vh
        np.testing.assert_allclose(W @ W.T, np.eye(4), atol=1e-10)
        np.testing.assert_allclose(np_cos(p[L], W[0]), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(p[L]), abs(v[L] @ W[0]), rtol=1e-5)
        for i, o in enumerate(others):
            partner = res.partners[o.name][L].double().numpy()
            np.testing.assert_allclose(partner, W[i + 1], atol=1e-6)
            assert abs(np_cos(p[L], partner)) <= 1e-6
        assert np_cos(p[L], v[L]) > 0.8
    for o in others:
        assert res.cos_partners[o.name].abs().max() <= 1e-6
        # against the raw others the overlap is reported, not removed, in this mode
        np.testing.assert_allclose(res.cos_after[o.name].numpy(), np_cos(p, o.vector.double().numpy()), atol=1e-6)
    # Löwdin keeps at least as much of the own direction as Gram-Schmidt (power-mean inequality)
    assert (res.self_cosine >= seq.self_cosine - 1e-6).all()


def test_purify_errors():
    vec, others = _purify_setup()
    in_span = PersonaVector(others[0].vector + others[1].vector, INFO, "s", "mean_diff")
    with pytest.raises(InvalidInputError, match="span"):
        purify(in_span, others)
    dep = others + [PersonaVector(others[0].vector - others[1].vector, INFO, "dep", "role_mean")]
    with pytest.raises(InvalidInputError, match="linearly dependent"):
        purify(vec, dep, mode="symmetric")
    assert purify(vec, dep).cos_after["dep"].abs().max() <= 1e-6  # sequential skips the dependent one
    with pytest.raises(InvalidInputError, match="repeated"):
        purify(vec, [others[0], others[0]])
    with pytest.raises(ModelMismatchError):
        purify(vec, [PersonaVector(others[0].vector, ModelInfo("other", T, D), "o", "role_mean")])
    with pytest.raises(InvalidInputError, match="mode"):
        purify(vec, others, mode="lowdin")
    with pytest.raises(InvalidInputError, match="no other"):
        purify(vec, [])
    # a VectorSet works as the others
    vs = VectorSet.from_vectors(others)
    np.testing.assert_array_equal(purify(vec, vs).vector.vector.numpy(), purify(vec, others).vector.vector.numpy())


# -- files -----------------------------------------------------------------------------------------------------


def test_persona_vector_round_trip_is_bit_exact(tmp_path):
    v = _vec("evil", seed=3, method="pca_diff", n_samples=42, metadata={"trait": "evil", "note": "é"})
    path = v.save(tmp_path / "evil.safetensors")
    w = PersonaVector.load(path, model=INFO)
    assert torch.equal(w.vector, v.vector) and w.vector.dtype == torch.float32
    assert (w.name, w.method, w.n_samples, w.model, w.metadata) == (v.name, v.method, v.n_samples, v.model, v.metadata)
    tensors, md = load_tensors(path, kind="vector")
    assert list(tensors) == ["vector"] and tuple(tensors["vector"].shape) == (T, D)
    for k in ("model", "hidden_size", "num_layers", "layer_site", "method", "n_samples", "name"):
        assert k in md
    with pytest.raises(ModelMismatchError):
        PersonaVector.load(path, model=ModelInfo("synthetic", T + 1, D))
    with pytest.raises(ModelMismatchError):
        PersonaVector.load(path, model=ModelInfo("other", T, D))
    assert torch.equal(PersonaVector.load(path, model=ModelInfo("other", T, D), strict_name=False).vector, v.vector)


def test_vector_file_errors(tmp_path):
    v = _vec()
    path = v.save(tmp_path / "v.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError):
        PersonaVector.load(tmp_path / "cut.safetensors")
    md = {**INFO.to_metadata(), "name": "v", "method": "mean_diff", "n_samples": "1"}
    save_tensors(tmp_path / "shape.safetensors", {"vector": torch.zeros(T - 1, D)}, md, kind="vector")
    with pytest.raises(FileFormatError, match="shape"):
        PersonaVector.load(tmp_path / "shape.safetensors")
    save_tensors(tmp_path / "f64.safetensors", {"vector": torch.zeros(T, D, dtype=torch.float64)}, md, kind="vector")
    with pytest.raises(FileFormatError, match="float32"):
        PersonaVector.load(tmp_path / "f64.safetensors")
    save_tensors(tmp_path / "nometa.safetensors", {"vector": torch.zeros(T, D)}, INFO.to_metadata(), kind="vector")
    with pytest.raises(FileFormatError, match="lacks"):
        PersonaVector.load(tmp_path / "nometa.safetensors")
    VectorSet.from_vectors([v]).save(tmp_path / "set.safetensors")
    with pytest.raises(FileFormatError, match="vector_set"):
        PersonaVector.load(tmp_path / "set.safetensors")
    with pytest.raises(FileFormatError, match="no such file"):
        PersonaVector.load(tmp_path / "missing.safetensors")


def test_vector_set_round_trip_is_bit_exact(tmp_path):
    acts = _role_acts({"zeta": 3, "alpha": 4, "mid dle/role": 2})
    vs = role_vectors(acts, families={"zeta": "z", "alpha": "a"})
    path = vs.save(tmp_path / "roles.safetensors")
    ws = VectorSet.load(path, model=INFO)
    assert ws.names == ["zeta", "alpha", "mid dle/role"]  # order kept
    for n in vs.names:
        assert torch.equal(ws.vectors[n], vs.vectors[n])
    assert (ws.n_samples, ws.families, ws.method, ws.model, ws.metadata) == (
        vs.n_samples, vs.families, vs.method, vs.model, vs.metadata)
    tensors, md = load_tensors(path, kind="vector_set")
    assert sorted(tensors) == sorted(vs.names)
    assert md["n_samples"].startswith("{")
    with pytest.raises(ModelMismatchError):
        VectorSet.load(path, model=ModelInfo("synthetic", T, D + 1))
    md = {**INFO.to_metadata(), "name": "s", "method": "role_mean", "names": '["a","b"]', "n_samples": "{}"}
    save_tensors(tmp_path / "bad.safetensors", {"a": torch.zeros(T, D)}, md, kind="vector_set")
    with pytest.raises(FileFormatError, match="do not match"):
        VectorSet.load(tmp_path / "bad.safetensors")
    save_tensors(tmp_path / "bad2.safetensors", {"a": torch.zeros(T, D), "b": torch.zeros(T, 3)}, md, kind="vector_set")
    with pytest.raises(FileFormatError, match="shape"):
        VectorSet.load(tmp_path / "bad2.safetensors")


def test_vector_set_api():
    vs = VectorSet.from_vectors([_vec("a", 1), _vec("b", 2, n_samples=5)])
    assert vs.names == ["a", "b"] and len(vs) == 2 and "a" in vs and list(vs) == ["a", "b"]
    assert vs.n_samples == {"a": 0, "b": 5} and vs.method == "mean_diff"
    assert torch.equal(vs.stack()[1], _vec("b", 2).vector)
    assert vs.subset(["b"]).names == ["b"]
    with pytest.raises(KeyError):
        vs["c"]
    with pytest.raises(InvalidInputError, match="repeated"):
        VectorSet.from_vectors([_vec("a"), _vec("a")])
    with pytest.raises(InvalidInputError, match="non-empty"):
        VectorSet({}, INFO, "m")
    with pytest.raises(InvalidInputError, match="not in the set"):
        VectorSet({"a": torch.zeros(T, D)}, INFO, "m", n_samples={"b": 1})
