"""Persona space: PCA of role vectors per layer, and the Assistant Axis.

:class:`PersonaSpace` follows the Assistant Axis paper: at each layer the role vectors (one mean activation per
role) are mean-centred and decomposed by PCA; the leading components span "persona space". Given the default
Assistant's activations, the **Assistant Axis** at each layer is ``mean(default) - mean(role vectors)``: it points
from the average role towards the default Assistant. PC1 is oriented to agree with it, and the cosine between
the two (``pc1_cosine_``) says how much the main axis of role variation is the Assistant-vs-role axis.

Fitted attributes end in ``_`` (as in scikit-learn) and are float32 tensors on the CPU; the computation is
done in float64. Unless ``layers`` restricts the fit, position ``j`` of a per-layer attribute is model layer
``j``; in general it is model layer ``layers_[j]``, and every method takes *model* layer indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo, check_int, normalize_layers
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.stats import separation
from persona_axes.vectors.containers import PersonaVector, VectorSet
from persona_axes.vectors.methods import all_layer_values

_EPS = torch.finfo(torch.float64).tiny


@dataclass
class LayerSweep:
    """How well the Assistant Axis separates default from role activations, per layer.

    For each layer in ``layers`` both sets are projected on the unit axis. ``auroc [n]``: probability that a
    default item projects higher than a role item (ties count half). ``cohens_d [n]``: difference of the mean
    projections (default - role) over their pooled standard deviation. ``pc1_cosine [n]``: cos(axis, PC1).
    ``default_mean`` / ``role_mean [n]``: mean projections. ``best_layer``: chosen by ``rule``.
    ``auroc_ci`` / ``cohens_d_ci [n, 2]``: 95% percentile-bootstrap intervals (both sets resampled with replacement,
    each on its own), NaN when the sweep ran without bootstrap. ``evaluated_on``: what the two sets were, e.g.
    ``"held-out"`` (replies to roles, prompts or questions nothing was fitted on) or ``"in-sample"``.
    """

    layers: tuple[int, ...]
    auroc: torch.Tensor
    cohens_d: torch.Tensor
    pc1_cosine: torch.Tensor
    default_mean: torch.Tensor
    role_mean: torch.Tensor
    n_default: int
    n_role: int
    best_layer: int
    rule: str
    auroc_ci: torch.Tensor | None = None
    cohens_d_ci: torch.Tensor | None = None
    evaluated_on: str = "in-sample"

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per layer: ``layer, auroc, cohens_d, pc1_cosine, default_mean, role_mean, best``."""
        return [
            {
                "layer": L,
                "auroc": float(self.auroc[j]),
                "cohens_d": float(self.cohens_d[j]),
                "pc1_cosine": float(self.pc1_cosine[j]),
                "default_mean": float(self.default_mean[j]),
                "role_mean": float(self.role_mean[j]),
                "best": L == self.best_layer,
                **({} if self.auroc_ci is None else {
                    "auroc_ci": [float(x) for x in self.auroc_ci[j]],
                    "cohens_d_ci": [float(x) for x in self.cohens_d_ci[j]]}),
            }
            for j, L in enumerate(self.layers)
        ]


class PersonaSpace:
    """PCA of role vectors at each layer, plus the Assistant Axis.

    ``n_components``: components kept per layer (``None``: all, i.e. ``min(n_roles, d)``; larger requests are
    clipped to that with a warning). ``layers``: model layers to fit (``None``: all).

    After :meth:`fit`: ``components_ [n_fit_layers, k, d]`` (unit rows), ``explained_variance_ [n_fit_layers, k]``
    (with ``n_roles - 1`` degrees of freedom, as in scikit-learn), ``explained_variance_ratio_``,
    ``mean_ [n_fit_layers, d]`` (mean role vector), ``loadings_ [n_roles, n_fit_layers, k]`` (role coordinates),
    ``role_names_``, ``layers_``, ``n_components_``, ``model_``. With a default: ``assistant_axis_
    [n_fit_layers, d]``, ``pc1_cosine_ [n_fit_layers]``, ``default_loadings_ [n_fit_layers, k]`` (coordinates of
    the mean default vector).

    Sign convention: each component is flipped so that its largest-magnitude coordinate is positive; then, when a
    default is given, PC1 is flipped if needed so that it has a non-negative cosine with the Assistant Axis (so
    positive PC1 points towards the Assistant).
    """

    def __init__(self, n_components: int | None = 10, layers: int | Iterable[int] | None = None):
        if n_components is not None and (isinstance(n_components, bool) or not isinstance(n_components, int)
                                         or n_components < 1):
            raise InvalidInputError(f"n_components must be a positive integer or None, got {n_components!r}")
        self.n_components = n_components
        self.layers = layers

    def __repr__(self) -> str:
        fitted = hasattr(self, "components_")
        extra = f", fitted on {self.n_roles_} roles" if fitted else ""
        return f"PersonaSpace(n_components={self.n_components}, layers={self.layers!r}{extra})"

    # -- fitting ------------------------------------------------------------------------------------------------

    def fit(self, roles: VectorSet | torch.Tensor,
            default: PersonaVector | torch.Tensor | Activations | None = None, *,
            model: ModelInfo | None = None) -> PersonaSpace:
        """Fit on role vectors.

        ``roles``: a :class:`VectorSet` or a tensor ``[n_roles, n_layers, d]`` whose layer axis covers every model
        layer (row ``L`` = layer ``L``). ``default``: the default Assistant — a PersonaVector (e.g. from
        :func:`~persona_axes.vectors.methods.mean_vector`), a ``[n_layers, d]`` mean, or Activations captured at every
        layer (averaged). ``model``: the model identity when neither input carries one (needed only by
        :meth:`assistant_axis`). Returns ``self``.
        """
        X, names, info = self._parse_roles(roles, model)
        n_roles, n_layers, d = X.shape
        D, n_default, info = self._parse_default(default, info, n_layers, d)
        self.model_ = info
        self._n_layers_total = n_layers
        self.layers_ = tuple(normalize_layers(self.layers, n_layers))
        cap = min(n_roles, d)
        k = cap if self.n_components is None else min(self.n_components, cap)
        if self.n_components is not None and self.n_components > cap:
            warnings.warn(
                f"n_components={self.n_components} is more than min(n_roles={n_roles}, d={d}); keeping {k}",
                stacklevel=2,
            )
        self.n_components_ = k
        self.role_names_ = names
        self.n_roles_ = n_roles
        self.n_default_ = n_default

        role_mean = X.mean(0)  # [T, d]
        self._axis_full = None if D is None else D - role_mean
        nl = len(self.layers_)
        comps = torch.empty(nl, k, d, dtype=torch.float64)
        var = torch.empty(nl, k, dtype=torch.float64)
        ratio = torch.empty(nl, k, dtype=torch.float64)
        for j, L in enumerate(self.layers_):
            Xc = X[:, L] - role_mean[L]
            _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
            total = float((S**2).sum())
            if not total > 0:
                raise InvalidInputError(f"all role vectors are identical at layer {L}; there is no variance to fit")
            V = Vh[:k]
            big = V.abs().argmax(-1)
            V = V * torch.where(V.gather(-1, big[:, None]) < 0, -1.0, 1.0).to(V.dtype)
            if self._axis_full is not None and float(self._axis_full[L] @ V[0]) < 0:
                V[0] = -V[0]
            comps[j] = V
            var[j] = S[:k] ** 2 / max(n_roles - 1, 1)
            ratio[j] = S[:k] ** 2 / total
        lay = list(self.layers_)
        mean = role_mean[lay]
        self.components_ = comps.to(torch.float32)
        self.explained_variance_ = var.to(torch.float32)
        self.explained_variance_ratio_ = ratio.to(torch.float32)
        self.mean_ = mean.to(torch.float32)
        self.loadings_ = torch.einsum("nld,lkd->nlk", X[:, lay] - mean, comps).to(torch.float32)
        if self._axis_full is not None:
            axis = self._axis_full[lay]
            self.assistant_axis_ = axis.to(torch.float32)
            self.pc1_cosine_ = ((axis * comps[:, 0]).sum(-1) / axis.norm(dim=-1).clamp_min(_EPS)).to(torch.float32)
            self.default_loadings_ = torch.einsum("ld,lkd->lk", D[lay] - mean, comps).to(torch.float32)
        else:
            self.assistant_axis_ = self.pc1_cosine_ = self.default_loadings_ = None
        return self

    @staticmethod
    def _parse_roles(roles: Any, model: ModelInfo | None) -> tuple[torch.Tensor, list[str], ModelInfo | None]:
        if isinstance(roles, VectorSet):
            if model is not None:
                roles.model.check_compatible(model, what="the role vectors")
            X, names, info = roles.stack(), roles.names, roles.model
        elif isinstance(roles, torch.Tensor):
            if roles.ndim != 3:
                raise InvalidInputError(f"role vectors must be [n_roles, n_layers, d], got shape {tuple(roles.shape)}")
            X, names, info = roles.detach().cpu(), [f"role_{i}" for i in range(roles.shape[0])], model
            if info is not None and tuple(X.shape[1:]) != (info.n_layers, info.hidden_size):
                raise ModelMismatchError(
                    f"role vectors of shape {tuple(X.shape)} do not fit {info.name!r} "
                    f"([n_roles, {info.n_layers}, {info.hidden_size}] expected)"
                )
        else:
            raise InvalidInputError(f"roles must be a VectorSet or a tensor, got {type(roles).__name__}")
        if X.shape[0] < 2:
            raise InvalidInputError(f"need at least 2 role vectors to fit a persona space, got {X.shape[0]}")
        X = X.to(torch.float64)
        bad = (~torch.isfinite(X)).flatten(1).any(1).nonzero().flatten().tolist()
        if bad:
            raise InvalidInputError(f"role vectors {[names[i] for i in bad]} hold NaN or infinite values")
        return X, list(names), info

    @staticmethod
    def _parse_default(default: Any, info: ModelInfo | None, n_layers: int,
                       d: int) -> tuple[torch.Tensor | None, int, ModelInfo | None]:
        if default is None:
            return None, 0, info
        if isinstance(default, (PersonaVector, Activations)):
            if info is not None:
                default.model.check_compatible(info, what="the default vector" if isinstance(default, PersonaVector)
                                               else "the default activations")
            elif (default.model.n_layers, default.model.hidden_size) != (n_layers, d):
                raise ModelMismatchError(
                    f"the default was made for {default.model.name!r} ({default.model.n_layers} layers, d="
                    f"{default.model.hidden_size}) but the role vectors have {n_layers} layers, d={d}"
                )
            info = info or default.model
            if isinstance(default, PersonaVector):
                return default.vector.to(torch.float64), default.n_samples, info
            v = all_layer_values(default, "the default activations")
            return v.mean(0, dtype=torch.float64), v.shape[0], info
        if isinstance(default, torch.Tensor):
            D = default.detach().cpu()
            if D.ndim != 2 or D.shape[0] != n_layers:
                raise InvalidInputError(
                    f"a default tensor must be [n_layers={n_layers}, d={d}], got shape {tuple(D.shape)}"
                )
            if D.shape[1] != d:
                raise ModelMismatchError(f"the default has width {D.shape[1]} but the role vectors have d={d}")
            D = D.to(torch.float64)
            if not torch.isfinite(D).all():
                raise InvalidInputError("the default vector holds NaN or infinite values")
            return D, 1, info
        raise InvalidInputError(
            "default must be a PersonaVector, a [n_layers, d] tensor, Activations or None, "
            f"got {type(default).__name__}"
        )

    # -- using the fit ------------------------------------------------------------------------------------------

    def check_fitted(self, need_axis: bool = False) -> None:
        if not hasattr(self, "components_"):
            raise InvalidInputError("this PersonaSpace is not fitted yet; call fit(roles, default) first")
        if need_axis and self.assistant_axis_ is None:
            raise InvalidInputError("no Assistant Axis: fit(roles, default=...) with the default Assistant's vector")

    def layer_position(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InvalidInputError(f"layer must be an integer, got {layer!r}")
        T = self._n_model_layers()
        L = layer % T if -T <= layer < 0 else layer
        try:
            return self.layers_.index(L)
        except ValueError:
            raise LayerOutOfRangeError(
                f"layer {layer} was not fitted; this space covers layers {list(self.layers_)}"
            ) from None

    def _n_model_layers(self) -> int:
        return self._n_layers_total

    def _rows(self, x: Any, layer: int) -> torch.Tensor:
        if isinstance(x, Activations):
            if self.model_ is not None:
                x.model.check_compatible(self.model_, what="these activations")
            x = x.at(layer)
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"expected a tensor [..., d] or Activations, got {type(x).__name__}")
        d = self.components_.shape[-1]
        if x.ndim < 1 or x.shape[-1] != d:
            raise ModelMismatchError(f"inputs have width {x.shape[-1] if x.ndim else 0}, but this space has d={d}")
        x = x.detach().cpu().to(torch.float64)
        if not torch.isfinite(x).all():
            raise InvalidInputError("inputs hold NaN or infinite values")
        return x

    def transform(self, x: torch.Tensor | Activations, layer: int) -> torch.Tensor:
        """``[..., k]`` coordinates of ``x [..., d]`` (or Activations, taken at ``layer``) in the PCA basis at model
        layer ``layer``: ``(x - mean_) @ components_.T``."""
        self.check_fitted()
        j = self.layer_position(layer)
        x = self._rows(x, layer)
        return ((x - self.mean_[j].double()) @ self.components_[j].double().T).to(torch.float32)

    def direction(self, layer: int, onto: str | int = "axis") -> torch.Tensor:
        """``[d]`` the unit direction ``onto`` (``"axis"``, ``"pc1"`` or a 0-based component index) at ``layer``."""
        self.check_fitted(need_axis=onto == "axis")
        j = self.layer_position(layer)
        if onto == "axis":
            a = self.assistant_axis_[j].double()
            if not a.norm() > 0:
                raise InvalidInputError(f"the Assistant Axis is zero at layer {layer}")
            return (a / a.norm()).to(torch.float32)
        if onto == "pc1":
            onto = 0
        if isinstance(onto, bool) or not isinstance(onto, int) or not 0 <= onto < self.n_components_:
            raise InvalidInputError(
                f"onto must be 'axis', 'pc1' or a component index 0..{self.n_components_ - 1}, got {onto!r}"
            )
        return self.components_[j, onto]

    def project(self, x: torch.Tensor | Activations, layer: int, onto: str | int = "axis") -> torch.Tensor:
        """``[...]`` scalar projection ``x . u`` of ``x [..., d]`` on the unit direction ``u`` (see
        :meth:`direction`). Not centred: ``project(x, L, i) - project(mean_, L, i) == transform(x, L)[..., i]``."""
        u = self.direction(layer, onto).double()
        return (self._rows(x, layer) @ u).to(torch.float32)

    def assistant_axis(self) -> PersonaVector:
        """The Assistant Axis at every model layer (``mean(default) - mean(roles)``), method ``"assistant_axis"``.

        It covers all layers of the model, including ones outside ``layers_``."""
        self.check_fitted(need_axis=True)
        if self.model_ is None:
            raise InvalidInputError("the fit had no model identity; pass fit(..., model=ModelInfo(...))")
        return PersonaVector(
            vector=self._axis_full.to(torch.float32), model=self.model_, name="assistant_axis",
            method="assistant_axis", n_samples=self.n_roles_ + self.n_default_,
            metadata={"n_roles": str(self.n_roles_), "n_default": str(self.n_default_)},
        )

    def layer_sweep(self, default_acts: Activations, role_acts: Activations, *, tol: float = 1e-9,
                    n_boot: int = 0, seed: int = 0, evaluated_on: str = "in-sample") -> LayerSweep:
        """Per fitted layer captured in both sets: AUROC and Cohen's d of the projections on the unit Assistant
        Axis (default vs role activations), and cos(axis, PC1); with ``n_boot`` > 0, 95% bootstrap intervals
        (``seed`` fixes the resampling). Pass held-out replies and ``evaluated_on="held-out"`` to measure the axis
        on data it was not built from.

        ``best_layer`` rule: the highest AUROC; layers within ``tol`` of it (AUROC often saturates at 1) are
        ranked by the largest Cohen's d, then by the lowest layer.
        """
        self.check_fitted(need_axis=True)
        for acts, what in ((default_acts, "default"), (role_acts, "role")):
            if not isinstance(acts, Activations):
                raise InvalidInputError(f"the {what} activations must be Activations, got {type(acts).__name__}")
            if self.model_ is not None:
                acts.model.check_compatible(self.model_, what=f"the {what} activations")
            if len(acts) < 2:
                raise InvalidInputError(f"need at least 2 {what} items to compare spreads, got {len(acts)}")
        layers = [L for L in self.layers_ if L in default_acts.layers and L in role_acts.layers]
        if not layers:
            raise InvalidInputError(
                f"the activations share no layer with this space (fitted layers {list(self.layers_)}, default "
                f"{list(default_acts.layers)}, role {list(role_acts.layers)})"
            )
        check_int(n_boot, "n_boot", minimum=0)
        check_int(seed, "seed")
        n1, n0 = len(default_acts), len(role_acts)
        gen = np.random.default_rng(seed)
        boot1 = gen.integers(0, n1, size=(n_boot, n1))
        boot0 = gen.integers(0, n0, size=(n_boot, n0))
        ci = {k: torch.full((len(layers), 2), float("nan"), dtype=torch.float64) for k in ("auroc", "d")}
        stats = {k: torch.empty(len(layers), dtype=torch.float64) for k in ("auroc", "d", "pc1", "m1", "m0")}
        for i, L in enumerate(layers):
            u = self.direction(L, "axis").double()
            p1 = default_acts.at(L).double()
            p0 = role_acts.at(L).double()
            for p, what in ((p1, "default"), (p0, "role")):
                bad = int((~torch.isfinite(p)).any(-1).sum())
                if bad:
                    raise InvalidInputError(
                        f"the {what} activations hold NaN or infinite values in {bad} rows at layer {L}"
                    )
            p1, p0 = p1 @ u, p0 @ u
            a, b = p1.numpy(), p0.numpy()
            auc, d = separation(a, b)
            if d != d:  # no spread on either side: identical groups are 0 apart, different ones infinitely far
                diff = float(p1.mean() - p0.mean())
                d = 0.0 if diff == 0 else float("inf") * (1 if diff > 0 else -1)
            stats["auroc"][i], stats["d"][i] = auc, d
            stats["pc1"][i] = float(self.pc1_cosine_[self.layer_position(L)])
            stats["m1"][i], stats["m0"][i] = float(p1.mean()), float(p0.mean())
            if n_boot:
                reps = np.array([separation(a[i1], b[i0]) for i1, i0 in zip(boot1, boot0)])
                ci["auroc"][i] = torch.from_numpy(np.nanpercentile(reps[:, 0], [2.5, 97.5]))
                ci["d"][i] = torch.from_numpy(np.nanpercentile(reps[:, 1], [2.5, 97.5]))
        top = float(stats["auroc"].max())
        cands = [i for i in range(len(layers)) if stats["auroc"][i] >= top - tol]
        best = max(cands, key=lambda i: (float(stats["d"][i]), -layers[i]))
        return LayerSweep(
            layers=tuple(layers), auroc=stats["auroc"], cohens_d=stats["d"], pc1_cosine=stats["pc1"],
            default_mean=stats["m1"], role_mean=stats["m0"], n_default=n1, n_role=n0, best_layer=layers[best],
            rule=f"max AUROC; ties within {tol:g} broken by max Cohen's d, then lowest layer",
            auroc_ci=ci["auroc"] if n_boot else None, cohens_d_ci=ci["d"] if n_boot else None,
            evaluated_on=str(evaluated_on),
        )


__all__ = ["PersonaSpace", "LayerSweep"]
