import math

import pytest
import torch

from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError
from persona_axes.vectors.containers import PersonaVector
from persona_axes.vectors.register import remove_shared_register

INFO = ModelInfo("toy", n_layers=3, hidden_size=32)


def _basis(k, seed=0):
    q, _ = torch.linalg.qr(torch.randn(32, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T  # [k, 32] orthonormal rows


def _pv(name, rows):
    return PersonaVector(vector=torch.stack(rows).float(), model=INFO, name=name, method="mean_diff", n_samples=10)


def test_pair_with_a_known_shared_part_is_decorrelated_symmetrically():
    s, p, q, r, t = _basis(5)
    # layer 1: a and b share s (cos 0.8); c is unrelated; other layers: random-ish but independent
    a = _pv("impolite", [p + 0.1 * t, 2 * (2 * s + p), r + p])
    b = _pv("humorous", [q + 0.1 * r, 3 * (2 * s + q), t + q])
    c = _pv("optimistic", [r, r + 0.1 * s, s + t])
    res = remove_shared_register([a, b, c], layer=1, threshold=0.3)
    assert res.groups == (("impolite", "humorous"),)
    (pair,) = res.pairs
    assert (pair.a, pair.b, pair.layer) == ("impolite", "humorous", 1)
    assert pair.cos_before == pytest.approx(0.8, abs=1e-6)
    assert abs(pair.cos_after) < 1e-6
    assert torch.equal(res.vectors["optimistic"].vector, c.vector) and res.kept_norm["optimistic"] == 1.0
    # independent closed form of the symmetric removal for a pair: unit result (s_hat + e_hat) / sqrt(2), scaled
    # by the original's component along it
    ua, ub = a.vector[1].double() / a.vector[1].double().norm(), b.vector[1].double() / b.vector[1].double().norm()
    s_hat, e_hat = (ua + ub) / (ua + ub).norm(), (ua - ub) / (ua - ub).norm()
    u = (s_hat + e_hat) / math.sqrt(2)
    want = (a.vector[1].double() @ u) * u
    assert torch.allclose(res.vectors["impolite"].vector[1].double(), want, atol=1e-5)
    # each keeps cos 45 deg + half the original angle: sqrt((1 + sqrt(1 - c^2)) / 2) with c = 0.8 -> 0.9487
    assert res.kept_norm["impolite"] == pytest.approx(math.sqrt((1 + 0.6) / 2), abs=1e-6)
    assert res.kept_norm["humorous"] == pytest.approx(res.kept_norm["impolite"], abs=1e-6)
    # the shared direction is reduced, not removed; the own parts p, q are kept and made the dominant ones
    before, after = res.shared_cos["impolite"]
    assert after < before
    own = lambda v: float(v.vector[1].double() @ p / v.vector[1].double().norm())  # noqa: E731
    assert own(res.vectors["impolite"]) > own(a)
    md = res.vectors["impolite"].metadata
    assert md["purify_mode"] == "symmetric" and "humorous" in md["purified_against"]
    assert res.to_records()[0]["kept_norm_a"] == res.kept_norm["impolite"]


def test_a_known_register_direction_is_projected_out_of_the_flagged_pair_only():
    s, p, q, r, t = _basis(5, seed=1)
    a = _pv("impolite", [p + s, 2 * s + p, r + p])
    b = _pv("humorous", [q + s, 2 * s + q, t + q])
    c = _pv("optimistic", [r + s, r + 0.3 * s, s + t])  # contains s too, but is not similar enough to be flagged
    register = _pv("casual", [s, s, s])
    res = remove_shared_register({"impolite": a, "humorous": b, "optimistic": c}, layer=1, threshold=0.5,
                                 direction=register)
    assert res.mode == "direction" and res.groups == (("impolite", "humorous"),)
    assert torch.allclose(res.vectors["impolite"].vector[1].double(), p, atol=1e-6)  # exactly the own part
    assert torch.allclose(res.vectors["humorous"].vector[1].double(), q, atol=1e-6)
    assert abs(res.pairs[0].cos_after) < 1e-6
    assert res.kept_norm["impolite"] == pytest.approx(1 / math.sqrt(5), abs=1e-6)
    assert res.shared_cos["impolite"][1] == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(res.vectors["optimistic"].vector, c.vector)


def test_per_vector_layers_groups_and_bad_inputs():
    s, p, q, r, t = _basis(5, seed=2)
    a = _pv("a", [p, s + p, p])
    b = _pv("b", [q, s + q, s + q])
    c = _pv("c", [r, r, s + r])
    # a and b overlap only at a's layer 1; b and c at layer 2 (both used there): one group of three
    res = remove_shared_register([a, b, c], layer={"a": 1, "b": 2, "c": 2}, threshold=0.3)
    assert [(x.a, x.b, x.layer) for x in res.pairs] == [("a", "b", 1), ("b", "c", 2)]
    assert res.groups == (("a", "b", "c"),)
    assert remove_shared_register([a, b, c], layer=0, threshold=0.3).groups == ()
    with pytest.raises(InvalidInputError, match="two vectors"):
        remove_shared_register([a], layer=0)
    with pytest.raises(InvalidInputError, match="layer"):
        remove_shared_register([a, b], layer={"a": 0})
    with pytest.raises(InvalidInputError, match="layer"):
        remove_shared_register([a, b], layer=3)
    with pytest.raises(InvalidInputError, match="threshold"):
        remove_shared_register([a, b], layer=0, threshold=2.0)
    with pytest.raises(InvalidInputError, match="distinct"):
        remove_shared_register([a, a], layer=0)
