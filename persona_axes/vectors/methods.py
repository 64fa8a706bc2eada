"""Persona directions made from activations: trait (contrastive) vectors and role / default means.

Trait vectors contrast activations with and without a trait (``pos`` / ``neg``):

- ``"mean_diff"`` (:func:`mean_difference`): ``mean(pos) - mean(neg)`` per layer — the method of both papers.
- ``"pca_diff"`` (:func:`pca_difference`): the first right singular vector of the *paired* differences
  ``pos[i] - neg[i]`` (uncentred, so a shared shift dominates it).
- ``"probe"`` (:func:`probe_direction`): the normal of a per-layer logistic-regression probe.

Conventions for the last two, so all three methods come in the same units: the direction is unit-normalised,
its sign is chosen so that it has a positive dot product with the mean difference, and it is then scaled to the
*norm of the mean difference* at that layer. Only the direction differs between methods; the length is that of
``mean_diff``. Role vectors (:func:`role_vectors`) and the default Assistant (:func:`mean_vector`) are plain
means. All arithmetic is done in float64; results are stored as float32 on the CPU, ``[n_layers, d]`` with row
``L`` = the output of decoder block L.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

from persona_axes.activations.container import Activations, mean64, nonfinite_rows
from persona_axes.errors import InvalidInputError
from persona_axes.vectors.containers import PersonaVector, VectorSet

TRAIT_METHODS = ("mean_diff", "pca_diff", "probe")


def all_layer_values(acts: Activations, what: str) -> torch.Tensor:
    """``[n_items, n_model_layers, d]`` (the stored float32, not copied when already in order) with row ``L`` =
    layer ``L``; checks coverage, emptiness and finiteness. Callers reduce in float64 layer by layer."""
    if not isinstance(acts, Activations):
        raise InvalidInputError(f"{what} must be Activations, got {type(acts).__name__}")
    n_layers = acts.model.n_layers
    missing = [L for L in range(n_layers) if L not in acts.layers]
    if missing:
        raise InvalidInputError(
            f"{what} lack layer(s) {missing}; a persona vector covers every layer of the model, so capture "
            "the activations with layers=None"
        )
    if len(acts) == 0:
        raise InvalidInputError(f"{what} hold no items")
    v = acts.values
    if list(acts.layers) != list(range(n_layers)):
        v = v[:, [acts.layers.index(L) for L in range(n_layers)]]
    bad = len(nonfinite_rows(v))
    if bad:
        raise InvalidInputError(
            f"{what} hold NaN or infinite values in {bad} of {len(acts)} rows; drop those items (e.g. with "
            "acts.select(...)) or recapture them"
        )
    return v


def _pair(pos: Activations, neg: Activations) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(pos, Activations) or not isinstance(neg, Activations):
        raise InvalidInputError("pos and neg must both be Activations")
    neg.model.check_compatible(pos.model, what="the negative activations")
    return all_layer_values(pos, "the positive activations"), all_layer_values(neg, "the negative activations")


def _mean_diff64(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return mean64(p) - mean64(n)


def _orient_and_scale(u: torch.Tensor, md: torch.Tensor) -> torch.Tensor:
    """Per layer: unit-normalise ``u [L, d]``, flip so ``u . md >= 0``, scale to ``|md|``."""
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    sign = torch.where((u * md).sum(-1) < 0, -1.0, 1.0).to(u.dtype)
    return u * (sign * md.norm(dim=-1))[:, None]


def mean_difference(pos: Activations, neg: Activations) -> torch.Tensor:
    """``[n_layers, d]`` float32: ``mean(pos) - mean(neg)`` at every model layer. Counts may differ.

    Both sets must come from the same model and be captured at every layer (``layers=None``)."""
    p, n = _pair(pos, neg)
    return _mean_diff64(p, n).to(torch.float32)


def pca_difference(pos: Activations, neg: Activations) -> torch.Tensor:
    """``[n_layers, d]`` float32: the top principal direction of the paired differences ``pos[i] - neg[i]``.

    Items are paired by index, so both sets must have the same length (the same question answered with and
    without the trait, say). The direction is the first right singular vector of the *uncentred* difference
    matrix ``[n_pairs, d]`` — the direction that captures the most of the differences' mean square, which a
    shared shift dominates (centring would discard exactly that shift). Its sign is chosen to agree with the mean
    difference and it is scaled to the norm of the mean difference, so it is in the same units as
    :func:`mean_difference`.
    """
    p, n = _pair(pos, neg)
    if p.shape[0] != n.shape[0]:
        raise InvalidInputError(
            f"unequal pos/neg sets ({p.shape[0]} vs {n.shape[0]} items): pca_diff pairs pos[i] with neg[i]; "
            "pass paired sets of equal length or use method='mean_diff'"
        )
    top = torch.empty(p.shape[1], p.shape[2], dtype=torch.float64)
    for L in range(p.shape[1]):
        diffs = p[:, L].double() - n[:, L].double()  # [n_pairs, d]
        top[L] = torch.linalg.svd(diffs, full_matrices=False)[2][0]
    return _orient_and_scale(top, _mean_diff64(p, n)).to(torch.float32)


def logistic_probe(pos: torch.Tensor, neg: torch.Tensor, C: float = 1.0, *, max_iter: int = 2000,
                   layer: int | None = None) -> tuple[torch.Tensor, float]:
    """One layer's logistic-regression probe (pos = 1, neg = 0) on ``pos [n_pos, d]`` and ``neg [n_neg, d]``:
    ``(w [d] float64, b)`` with the preprocessing folded in, so ``logit = w . h + b`` on raw activations ``h``.

    The preprocessing and model are those described in :func:`probe_direction` (pooled centring, one scalar
    scale, ``LogisticRegression(C=C, class_weight="balanced")``). ``layer`` only names the layer in errors.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if not C > 0:
        raise InvalidInputError(f"C must be positive, got {C!r}")
    at = "" if layer is None else f" at layer {layer}"
    x = torch.cat([pos, neg]).double().numpy()  # [N, d]
    y = [1] * pos.shape[0] + [0] * neg.shape[0]
    mu = x.mean(0)
    scale = float(np.sqrt(x.var(0).mean()))
    if not scale > 0:
        raise InvalidInputError(f"all activations are identical{at}; a probe cannot separate them")
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter)
    clf.fit((x - mu) / scale, y)
    w = clf.coef_[0] / scale
    if not np.linalg.norm(w) > 0:
        raise InvalidInputError(f"the probe{at} learned all-zero weights (too strong regularisation?); increase C")
    return torch.from_numpy(w), float(clf.intercept_[0] - w @ mu)


def probe_direction(pos: Activations, neg: Activations, C: float = 1.0, *, max_iter: int = 2000) -> torch.Tensor:
    """``[n_layers, d]`` float32: the normal of a logistic-regression probe (pos = 1, neg = 0) at each layer.

    Preprocessing: at each layer the pooled activations are centred and divided by *one* scalar, the root mean
    per-feature variance, so ``C`` means the same at every layer and in every model (residual norms grow with
    depth). Features are deliberately not standardised one by one: that would make the L2 penalty anisotropic
    and tilt the direction towards low-variance dimensions; a single scale keeps the probe rotation-equivariant,
    so its normal in raw activation space is simply the fitted weight vector. The probe is sklearn's
    ``LogisticRegression(C=C, class_weight="balanced")`` (balanced, so unequal counts are fine). Its normal is
    unit-normalised, its sign aligned with the mean difference, and scaled to the mean difference's norm.

    Note: with far fewer items than dimensions the classes are separable and the probe leans towards the
    max-margin direction, which is noisier than the mean difference; smaller ``C`` pulls it towards the mean
    difference (the limit ``C -> 0``).
    """
    if not C > 0:
        raise InvalidInputError(f"C must be positive, got {C!r}")
    p, n = _pair(pos, neg)
    out = torch.empty(p.shape[1], p.shape[2], dtype=torch.float64)
    for L in range(p.shape[1]):
        out[L] = logistic_probe(p[:, L], n[:, L], C, max_iter=max_iter, layer=L)[0]
    return _orient_and_scale(out, _mean_diff64(p, n)).to(torch.float32)


def trait_vector(pos: Activations, neg: Activations, method: str = "mean_diff", *, name: str = "trait",
                 C: float = 1.0, metadata: Mapping[str, str] | None = None) -> PersonaVector:
    """A trait's :class:`PersonaVector` from activations with (``pos``) and without (``neg``) the trait.

    ``method``: ``"mean_diff"`` (:func:`mean_difference`), ``"pca_diff"`` (:func:`pca_difference`, paired sets)
    or ``"probe"`` (:func:`probe_direction`, regularisation ``C``). All three have the mean difference's norm
    at each layer and point towards ``pos``. ``n_samples`` is ``len(pos) + len(neg)``; the metadata records
    ``n_pos`` and ``n_neg``.
    """
    if method not in TRAIT_METHODS:
        raise InvalidInputError(f"method={method!r} is not one of {', '.join(TRAIT_METHODS)}")
    if method == "mean_diff":
        v = mean_difference(pos, neg)
    elif method == "pca_diff":
        v = pca_difference(pos, neg)
    else:
        v = probe_direction(pos, neg, C=C)
    md = dict(metadata or {})
    md.update({"n_pos": str(len(pos)), "n_neg": str(len(neg))})
    if method == "probe":
        md["C"] = repr(float(C))
    return PersonaVector(vector=v, model=pos.model, name=name, method=method, n_samples=len(pos) + len(neg),
                         metadata=md)


def mean_vector(acts: Activations, name: str, method: str = "default_mean") -> PersonaVector:
    """The mean activation over all items at every layer, e.g. the default Assistant's (``method="default_mean"``)."""
    v = all_layer_values(acts, f"the activations for {name!r}")
    return PersonaVector(vector=mean64(v).to(torch.float32), model=acts.model, name=name,
                         method=method, n_samples=v.shape[0])


def role_vectors(acts: Activations, key: str = "role", min_count: int = 1,
                 families: Mapping[str, str] | None = None, *, name: str = "roles") -> VectorSet:
    """One mean activation per value of ``item[key]`` (method ``"role_mean"``), in order of first appearance.

    Groups with fewer than ``min_count`` items are skipped with a warning naming them and their counts; items
    without ``key`` are skipped with a warning. Values are used as names via ``str()``. ``families`` (optional
    ``{name: family}``) is kept for the names that remain. Raises :class:`InvalidInputError` if no group is left.
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise InvalidInputError(f"min_count must be a positive integer, got {min_count!r}")
    v = all_layer_values(acts, "the role activations")
    groups: dict[str, list[int]] = {}
    no_key = 0
    for i, it in enumerate(acts.items):
        if key not in it or it[key] is None:
            no_key += 1
            continue
        groups.setdefault(str(it[key]), []).append(i)
    if not groups:
        raise InvalidInputError(f"no item has metadata key {key!r}; pass key= the field that names the role")
    if no_key:
        warnings.warn(f"{no_key} of {len(acts)} items have no {key!r} and were skipped", stacklevel=2)
    small = {g: len(ix) for g, ix in groups.items() if len(ix) < min_count}
    if small:
        listed = ", ".join(f"{g!r} ({c})" for g, c in small.items())
        warnings.warn(f"skipped {len(small)} group(s) with fewer than min_count={min_count} items: {listed}",
                      stacklevel=2)
    kept = {g: ix for g, ix in groups.items() if g not in small}
    if not kept:
        raise InvalidInputError(
            f"no group of {key!r} has at least min_count={min_count} items (largest has "
            f"{max(len(ix) for ix in groups.values())}); lower min_count or collect more items"
        )
    fam = {g: families[g] for g in kept if g in families} if families else {}
    return VectorSet(
        vectors={g: v[ix].mean(0, dtype=torch.float64).to(torch.float32) for g, ix in kept.items()},
        model=acts.model, method="role_mean", n_samples={g: len(ix) for g, ix in kept.items()}, families=fam, name=name,
        metadata={"key": key},
    )


__all__ = ["TRAIT_METHODS", "all_layer_values", "logistic_probe", "mean_difference", "pca_difference", "probe_direction",
           "trait_vector", "mean_vector", "role_vectors"]
