"""Layer-wise linear probes with held-out scores, after *Probing then Editing*: where a trait is linearly readable.

:func:`probe_sweep` fits one logistic-regression probe per captured layer on *train* activations with and without
a trait (the fitting path of :func:`~persona_axes.vectors.methods.logistic_probe`) and scores it on separate *test*
activations: held-out accuracy (logit > 0), held-out AUROC of the logit, and the held-out Cohen's d of the
projection onto the *train* mean-difference direction (what a mean-diff trait vector separates). The best layer
is the one with the highest held-out accuracy, ties broken by AUROC, then by d.

A :class:`LinearProbe` is ``logit = w . h + b`` on raw activations ``h [d]`` (block output at ``layer``): the
probe's centring and scaling are folded into ``w`` and ``b``. :class:`~persona_axes.steering.probe_edit.ProbeEdit`
edits activations so this logit takes a chosen value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from persona_axes.activations.container import Activations, mean64, nonfinite_rows
from persona_axes.core import ModelInfo, check_float, check_int, normalize_layers
from persona_axes.errors import InvalidInputError
from persona_axes.stats import auroc, cohens_d
from persona_axes.vectors.methods import logistic_probe

__all__ = ["LinearProbe", "ProbeSweep", "probe_sweep"]


@dataclass(frozen=True)
class LinearProbe:
    """A linear probe at one layer: ``logit = weight . h + bias`` on raw block-output activations ``h [d]``
    (positive logit = the trait side). ``weight``: ``[d]`` float32 on the CPU; ``bias``: a float."""

    weight: torch.Tensor
    bias: float
    layer: int
    model: ModelInfo
    name: str = "probe"

    def __post_init__(self):
        if not isinstance(self.weight, torch.Tensor) or self.weight.ndim != 1:
            raise InvalidInputError(f"weight must be a [d] tensor, got {getattr(self.weight, 'shape', self.weight)!r}")
        if not isinstance(self.model, ModelInfo):
            raise InvalidInputError(f"model must be a ModelInfo, got {type(self.model).__name__}")
        if self.weight.shape[0] != self.model.hidden_size:
            raise InvalidInputError(f"weight has size {self.weight.shape[0]}, the model's hidden size is "
                                    f"{self.model.hidden_size}")
        if not torch.isfinite(self.weight).all() or not float(self.weight.norm()) > 0:
            raise InvalidInputError("weight must be finite and non-zero")
        check_int(self.layer, "layer", minimum=0, maximum=self.model.n_layers - 1)
        object.__setattr__(self, "bias", check_float(self.bias, "bias"))
        object.__setattr__(self, "weight", self.weight.detach().to("cpu", torch.float32))

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        """``[...]`` float64 logits of activations ``h [..., d]`` (computed in float64)."""
        return h.double() @ self.weight.double() + self.bias


@dataclass(frozen=True)
class ProbeSweep:
    """Held-out probe scores per layer (see the module docstring). ``accuracy``, ``auroc``, ``cohens_d``,
    ``train_accuracy``: ``[n_layers]`` float64 in the order of ``layers``; ``probes[layer]``: the fitted probe;
    ``n_train`` / ``n_test``: ``(n_pos, n_neg)``."""

    layers: tuple[int, ...]
    accuracy: torch.Tensor
    auroc: torch.Tensor
    cohens_d: torch.Tensor
    train_accuracy: torch.Tensor
    probes: Mapping[int, LinearProbe]
    n_train: tuple[int, int]
    n_test: tuple[int, int]
    C: float

    @property
    def best_index(self) -> int:
        """Position in ``layers`` of the best layer: highest held-out accuracy, then AUROC, then d (NaN last;
        on a full tie the earlier layer)."""
        def key(j: int) -> tuple[float, float, float, int]:
            vals = [float(t[j]) for t in (self.accuracy, self.auroc, self.cohens_d)]
            return (*[v if v == v else float("-inf") for v in vals], -j)
        return max(range(len(self.layers)), key=key)

    @property
    def best_layer(self) -> int:
        return self.layers[self.best_index]

    @property
    def best_probe(self) -> LinearProbe:
        return self.probes[self.best_layer]

    def to_records(self) -> list[dict]:
        """One dict per layer: ``layer, accuracy, auroc, cohens_d, train_accuracy, best``."""
        best = self.best_layer
        return [{"layer": L, "accuracy": float(self.accuracy[j]), "auroc": float(self.auroc[j]),
                 "cohens_d": float(self.cohens_d[j]), "train_accuracy": float(self.train_accuracy[j]),
                 "best": L == best} for j, L in enumerate(self.layers)]


def _values(acts: Activations, what: str, like: Activations | None) -> torch.Tensor:
    if not isinstance(acts, Activations):
        raise InvalidInputError(f"{what} must be Activations, got {type(acts).__name__}")
    if len(acts) == 0:
        raise InvalidInputError(f"{what} hold no items; a probe needs items on both sides")
    if like is not None:
        acts.model.check_compatible(like.model, what=what)
        if acts.layers != like.layers:
            raise InvalidInputError(f"{what} were captured at layers {list(acts.layers)}, the train positives at "
                                    f"{list(like.layers)}; capture every set at the same layers")
    if nonfinite_rows(acts.values):
        raise InvalidInputError(f"{what} hold NaN or infinite values; drop those items or recapture them")
    return acts.values


def probe_sweep(train_pos: Activations, train_neg: Activations, test_pos: Activations, test_neg: Activations,
                *, C: float = 1.0, layers: Iterable[int] | None = None, max_iter: int = 2000,
                name: str = "probe") -> ProbeSweep:
    """Fit a probe per layer on ``train_pos`` (label 1) vs ``train_neg`` (0) and score it on ``test_pos`` /
    ``test_neg`` (the four sets captured at the same layers of the same model; counts may differ: the probe is
    class-balanced). ``C``: the inverse L2 strength of :func:`~persona_axes.vectors.methods.logistic_probe`.
    ``layers``: the candidate layers (model block indices, all captured; default: every captured layer).
    Returns a :class:`ProbeSweep` (accuracy = fraction of test items on the right side of the probe's boundary).
    """
    C = check_float(C, "C", positive=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    tp = _values(train_pos, "the train positives", None)
    tn = _values(train_neg, "the train negatives", train_pos)
    sp = _values(test_pos, "the test positives", train_pos)
    sn = _values(test_neg, "the test negatives", train_pos)
    captured = train_pos.layers
    if layers is None:
        chosen = list(captured)
    else:
        chosen = normalize_layers(layers, train_pos.model.n_layers)
        missing = [L for L in chosen if L not in captured]
        if missing:
            raise InvalidInputError(f"layers {missing} were not captured (captured: {list(captured)})")
    n = len(chosen)
    acc, auc, d, tacc = (torch.empty(n, dtype=torch.float64) for _ in range(4))
    probes = {}
    labels = [True] * sp.shape[0] + [False] * sn.shape[0]
    for j, L in enumerate(chosen):
        k = captured.index(L)
        w, b = logistic_probe(tp[:, k], tn[:, k], C, max_iter=max_iter, layer=L)
        probes[L] = LinearProbe(weight=w.to(torch.float32), bias=b, layer=L, model=train_pos.model, name=name)
        test = torch.cat([sp[:, k], sn[:, k]]).double()
        logits = test @ w + b
        right = torch.cat([logits[: sp.shape[0]] > 0, logits[sp.shape[0]:] <= 0])
        acc[j] = right.double().mean()
        auc[j] = auroc(labels, logits.tolist())
        train = torch.cat([tp[:, k], tn[:, k]]).double() @ w + b
        tacc[j] = torch.cat([train[: tp.shape[0]] > 0, train[tp.shape[0]:] <= 0]).double().mean()
        md = mean64(tp[:, k]) - mean64(tn[:, k])
        u = md / md.norm().clamp_min(torch.finfo(torch.float64).tiny)
        d[j] = cohens_d((sp[:, k].double() @ u).numpy(), (sn[:, k].double() @ u).numpy())
    return ProbeSweep(layers=tuple(chosen), accuracy=acc, auroc=auc, cohens_d=d, train_accuracy=tacc,
                      probes=probes, n_train=(tp.shape[0], tn.shape[0]), n_test=(sp.shape[0], sn.shape[0]), C=C)
