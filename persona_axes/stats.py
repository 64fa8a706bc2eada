"""The statistics the pipeline and the evaluations report, each defined once: percentile-bootstrap confidence intervals, least-squares
slopes, rates, relative reductions, judge agreement (accuracy, Cohen's kappa, AUROC) and Spearman rank correlation
with a permutation p-value. Plain numpy; every resampling takes a ``seed`` so numbers reproduce exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from persona_axes.core import check_float, check_int
from persona_axes.errors import InvalidInputError

__all__ = ["Estimate", "bootstrap", "slope", "rate", "relative_reduction", "cohen_kappa", "auroc", "cohens_d",
           "separation", "spearman",
           "agreement"]


@dataclass(frozen=True)
class Estimate:
    """A number with its percentile-bootstrap confidence interval (``level``, e.g. 0.95) over ``n`` units."""

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _array(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1:
        raise InvalidInputError(f"{what} must be a flat list of numbers, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InvalidInputError(f"{what} holds NaN or infinite values; drop or fix them first")
    return a


def bootstrap(units: Sequence, statistic: Callable[[list], float], *, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> Estimate:
    """``statistic(units)`` with a percentile-bootstrap interval: units (conversations, items, ...) are resampled
    with replacement ``n_boot`` times. Resamples where the statistic is undefined (NaN) are skipped."""
    units = list(units)
    if not units:
        raise InvalidInputError("bootstrap needs at least one unit")
    n_boot = check_int(n_boot, "n_boot", minimum=10)
    level = check_float(level, "level")
    if not 0 < level < 1:
        raise InvalidInputError(f"level must be in (0, 1), got {level}")
    value = float(statistic(units))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(units), len(units))
        s = float(statistic([units[i] for i in idx]))
        if np.isfinite(s):
            draws.append(s)
    if not draws:
        return Estimate(value, float("nan"), float("nan"), len(units), level)
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Estimate(value, float(lo), float(hi), len(units), level)


def slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``y`` on ``x`` (NaN when ``x`` has no spread)."""
    x, y = _array(x, "x"), _array(y, "y")
    if len(x) != len(y):
        raise InvalidInputError(f"x and y differ in length ({len(x)} vs {len(y)})")
    xc = x - x.mean()
    denom = float(xc @ xc)
    return float("nan") if denom == 0 else float(xc @ (y - y.mean()) / denom)


def rate(flags: Sequence[bool]) -> float:
    """The fraction of true flags (NaN for none)."""
    a = np.asarray(list(flags), dtype=float)
    return float(a.mean()) if a.size else float("nan")


def relative_reduction(before: float, after: float) -> float:
    """``(before - after) / before``: 0.6 means the rate fell by 60%; NaN when ``before`` is 0."""
    return float("nan") if before == 0 else float((before - after) / before)


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Cohen's kappa of two labelings of the same items (any hashable labels); 1 = perfect, 0 = chance."""
    a, b = list(a), list(b)
    if len(a) != len(b) or not a:
        raise InvalidInputError(f"cohen_kappa needs two equally long, non-empty label lists ({len(a)} vs {len(b)})")
    labels = sorted(set(a) | set(b), key=str)
    po = sum(x == y for x, y in zip(a, b)) / len(a)
    pe = sum((a.count(k) / len(a)) * (b.count(k) / len(b)) for k in labels)
    return 1.0 if pe == 1 else float((po - pe) / (1 - pe))


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count half); NaN if one class is absent."""
    y = np.asarray(list(labels), dtype=bool)
    s = _array(scores, "scores")
    if len(y) != len(s):
        raise InvalidInputError(f"labels and scores differ in length ({len(y)} vs {len(s)})")
    return separation(s[y], s[~y])[0]


def cohens_d(pos: Sequence[float], neg: Sequence[float]) -> float:
    """``(mean(pos) - mean(neg)) / pooled sd`` (ddof 1) of two samples, in float64; NaN when a side has fewer than
    2 values or the pooled sd is 0."""
    p, n = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    n1, n0 = len(p), len(n)
    if n1 < 2 or n0 < 2:
        return float("nan")
    pooled = ((n1 - 1) * p.var(ddof=1) + (n0 - 1) * n.var(ddof=1)) / (n1 + n0 - 2)
    return float((p.mean() - n.mean()) / pooled**0.5) if pooled > 0 else float("nan")


def separation(pos: Sequence[float], neg: Sequence[float]) -> tuple[float, float]:
    """``(AUROC, Cohen's d)`` of two samples of scores: P(pos > neg) with ties counting half (from average ranks,
    O(n log n), equal to :func:`auroc`) and :func:`cohens_d`."""
    from scipy.stats import rankdata

    p, n = np.asarray(pos, dtype=np.float64).ravel(), np.asarray(neg, dtype=np.float64).ravel()
    n1, n0 = len(p), len(n)
    if not n1 or not n0:
        return float("nan"), float("nan")
    ranks = rankdata(np.concatenate([p, n]), method="average")
    return (float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2) / (n1 * n0), cohens_d(p, n)


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=float)
    for v in np.unique(a):  # average ranks over ties
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float], *, n_perm: int = 10000, seed: int = 0) -> dict:
    """Spearman's rank correlation with a two-sided permutation p-value (exact over all orderings when n <= 8).
    Returns ``{"rho", "p", "n"}``; rho is NaN when either list is constant."""
    x, y = _array(x, "x"), _array(y, "y")
    if len(x) != len(y) or len(x) < 3:
        raise InvalidInputError(f"spearman needs two equally long lists of at least 3 values ({len(x)}, {len(y)})")
    rx, ry = _ranks(x), _ranks(y)

    def rho_of(r: np.ndarray) -> float:
        a, b = rx - rx.mean(), r - r.mean()
        d = float(np.sqrt((a @ a) * (b @ b)))
        return float("nan") if d == 0 else float(a @ b / d)

    rho = rho_of(ry)
    if not np.isfinite(rho):
        return {"rho": None, "p": None, "n": len(x)}
    if len(x) <= 8:
        from itertools import permutations

        perms = [rho_of(ry[list(p)]) for p in permutations(range(len(x)))]
    else:
        rng = np.random.default_rng(seed)
        perms = [rho_of(rng.permutation(ry)) for _ in range(check_int(n_perm, "n_perm", minimum=100))]
    p = float(np.mean([abs(r) >= abs(rho) - 1e-12 for r in perms]))
    return {"rho": rho, "p": p, "n": len(x)}


def agreement(truth: Sequence[bool], predicted: Sequence[bool], scores: Sequence[float]) -> dict:
    """How a binary judge agrees with hand labels: accuracy, Cohen's kappa, AUROC of its continuous score, n."""
    truth, predicted = [bool(t) for t in truth], [bool(p) for p in predicted]
    if len(truth) != len(predicted) or not truth:
        raise InvalidInputError("truth and predicted must be equally long and non-empty")
    acc = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    return {"n": len(truth), "accuracy": acc, "kappa": cohen_kappa(truth, predicted), "auroc": auroc(truth, scores)}
