"""Trait intensity as a calibrated control (after the SAC line of work): measure how a behaviour scorer's value
on held-out questions changes with the steering coefficient, then ask for the coefficient that gives a requested
intensity.

:func:`calibrate_intensity` generates one reply per (coefficient, question) under
:class:`~persona_axes.steering.interventions.Steer` (one batched ``generate`` carries several coefficients, one
per row), scores every reply with a :class:`~persona_axes.evals.scorers.Scorer` (higher = more of the behaviour)
and returns an :class:`IntensityCurve`: per-coefficient mean score with a 95% bootstrap interval over questions,
mean repetition (coherence), Spearman's rho and a permutation p over all (coef, score) pairs, the monotone range,
and :meth:`IntensityCurve.coef_for`, which inverts an isotonic (monotone) fit of the mean curve.

Rows of one question share a sampling seed across coefficients (``seed + question index``), so with
``temperature > 0`` the coefficients are compared on the same random draws. The permutation p treats the
(coef, score) pairs as exchangeable under no effect; pairs of one question are not independent, so read p
together with the per-coefficient intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from persona_axes.core import Positions, check_float, check_int
from persona_axes.errors import InvalidInputError, TargetOutOfRangeError
from persona_axes.evals.scorers import Scorer, check_texts, repetition
from persona_axes.stats import Estimate, bootstrap, spearman
from persona_axes.steering.generation import SamplingConfig, generate_replies
from persona_axes.steering.interventions import Steer

__all__ = ["IntensityCurve", "TargetOutOfRangeError", "calibrate_intensity", "isotonic_fit", "replies_scored"]


def isotonic_fit(y: Sequence[float], *, increasing: bool = True, weights: Sequence[float] | None = None) -> list[float]:
    """Least-squares monotone fit of ``y`` (in the order given) by pool-adjacent-violators: non-decreasing when
    ``increasing``, else non-increasing."""
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    if y.ndim != 1 or w.shape != y.shape or (w <= 0).any():
        raise InvalidInputError("isotonic_fit needs a flat y and as many positive weights")
    sign = 1.0 if increasing else -1.0
    blocks: list[list[float]] = []  # [weighted mean (sign-flipped), weight, count]
    for v, wv in zip(sign * y, w):
        blocks.append([v, wv, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [float(sign * m) for m, _, n in blocks for _ in range(n)]


@dataclass(frozen=True)
class IntensityCurve:
    """A scorer's response to a steering coefficient on held-out questions.

    ``coefs`` ascending; ``scores[i][j]`` / ``replies[i][j]``: question ``j`` at ``coefs[i]``; ``mean[i]``: the mean
    score over questions with its 95% bootstrap interval; ``repetition[i]``: mean repetition (0 = none) of the
    replies at ``coefs[i]``; ``rho``/``p``: Spearman over all (coef, score) pairs (None when the scores are
    constant)."""

    scorer: str
    coefs: tuple[float, ...]
    mean: tuple[Estimate, ...]
    scores: tuple[tuple[float, ...], ...]
    replies: tuple[tuple[str, ...], ...]
    repetition: tuple[float, ...]
    rho: float | None
    p: float | None
    questions: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def means(self) -> list[float]:
        return [e.value for e in self.mean]

    @property
    def direction(self) -> int:
        """+1 if the score rises with the coefficient (rho >= 0 or undefined), else -1."""
        return -1 if self.rho is not None and self.rho < 0 else 1

    def steers(self, expected_sign: int, alpha: float = 0.05) -> bool:
        """True when the score moves in ``expected_sign``'s direction (the sign of rho) with p < ``alpha``."""
        if expected_sign not in (1, -1):
            raise InvalidInputError(f"expected_sign must be 1 or -1, got {expected_sign!r}")
        alpha = check_float(alpha, "alpha", positive=True, maximum=1.0)
        return bool(self.rho is not None and self.p is not None and np.sign(self.rho) == expected_sign
                    and self.p < alpha)

    def monotone_range(self, *, tol: float = 0.0, max_repetition: float | None = None) -> tuple[float, float]:
        """The widest run of consecutive coefficients over which the mean score moves in the curve's direction
        (each step may go back by at most ``tol``), leaving out coefficients whose mean repetition exceeds
        ``max_repetition``. Ties go to the run holding the coefficient nearest 0. ``(c, c)`` if no step qualifies."""
        tol = check_float(tol, "tol", nonnegative=True)
        ok = [max_repetition is None or r <= max_repetition for r in self.repetition]
        m, c, d = self.means, self.coefs, self.direction
        best: tuple[int, int] | None = None
        start = None
        for i in range(len(c)):
            if not ok[i]:
                start = None
                continue
            if start is None or d * (m[i] - m[i - 1]) < -tol:
                start = i
            if best is None or _wider((start, i), best, c):
                best = (start, i)
        if best is None:
            raise InvalidInputError(f"every coefficient has mean repetition above max_repetition={max_repetition}")
        return c[best[0]], c[best[1]]

    def fit(self) -> list[float]:
        """The isotonic fit of the mean scores over ``coefs``, in the curve's direction."""
        return isotonic_fit(self.means, increasing=self.direction > 0)

    def reachable(self) -> tuple[float, float]:
        """The lowest and highest score the isotonic fit reaches."""
        f = self.fit()
        return min(f), max(f)

    def coef_for(self, target: float) -> float:
        """The coefficient whose isotonic-fit score equals ``target``, interpolating linearly between measured
        coefficients; where several do (a flat stretch), the one nearest 0 (the gentlest push). Raises
        :class:`TargetOutOfRangeError` (with the reachable range) for a target the fit does not reach."""
        target = check_float(target, "target")
        f, c = self.fit(), self.coefs
        lo, hi = min(f), max(f)
        if not lo - 1e-12 <= target <= hi + 1e-12:
            raise TargetOutOfRangeError(
                f"target {target:g} is outside the reachable {self.scorer} range [{lo:g}, {hi:g}] over coefficients "
                f"{c[0]:g}..{c[-1]:g}; ask for a target inside it or calibrate over a wider range", lo, hi)
        target = min(max(target, lo), hi)
        candidates = []
        for i in range(len(c) - 1):
            f0, f1 = f[i], f[i + 1]
            if f0 == f1:
                if abs(f0 - target) <= 1e-12:
                    candidates += [c[i], c[i + 1]] + ([0.0] if c[i] <= 0 <= c[i + 1] else [])
            elif min(f0, f1) <= target <= max(f0, f1):
                candidates.append(c[i] + (target - f0) / (f1 - f0) * (c[i + 1] - c[i]))
        return float(min(candidates, key=lambda x: (abs(x), x)))

    def to_dict(self) -> dict:
        lo, hi = self.monotone_range()
        return {
            "scorer": self.scorer, "coefs": list(self.coefs), "mean": [e.to_dict() for e in self.mean],
            "repetition": list(self.repetition), "rho": self.rho, "p": self.p, "monotone_range": [lo, hi],
            "reachable": list(self.reachable()), "fit": self.fit(), "questions": list(self.questions),
            "scores": [list(s) for s in self.scores], "replies": [list(r) for r in self.replies],
            "settings": dict(self.settings),
        }


def _wider(run: tuple[int, int], best: tuple[int, int], c: Sequence[float]) -> bool:
    span, best_span = c[run[1]] - c[run[0]], c[best[1]] - c[best[0]]
    if span != best_span:
        return span > best_span
    near = min(abs(x) for x in c[run[0]:run[1] + 1])
    return near < min(abs(x) for x in c[best[0]:best[1] + 1])


def _conversation(q: Any, i: int) -> list[dict[str, str]]:
    if isinstance(q, str):
        if not q.strip():
            raise InvalidInputError(f"questions[{i}] is empty")
        return [{"role": "user", "content": q}]
    if isinstance(q, Sequence) and q and all(isinstance(m, Mapping) for m in q):
        return [dict(m) for m in q]
    raise InvalidInputError(f"questions[{i}] must be a question string or a conversation (a list of messages)")


def _check_coefs(coefs: Any) -> list[float]:
    if isinstance(coefs, (str, bytes)) or not isinstance(coefs, (Sequence, np.ndarray, torch.Tensor)):
        raise InvalidInputError(f"coefs must be a list of numbers, got {type(coefs).__name__}")
    values = [check_float(x, f"coefs[{i}]") for i, x in enumerate(list(coefs))]
    if len(set(values)) < 3 or len(set(values)) != len(values):
        raise InvalidInputError(f"coefs must hold at least 3 distinct values and no repeats, got {values}; "
                                "e.g. [-0.3, -0.15, 0, 0.15, 0.3]")
    return sorted(values)


def calibrate_intensity(model: Any, vector: Any, scorer: Scorer, questions: Sequence[Any], *, layers: Any,
                        coefs: Sequence[float], unit: str = "raw", reference: Any = None,
                        positions: Positions | str = "all", max_new_tokens: int = 48, seed: int = 0,
                        batch_size: int = 16, temperature: float = 0.0, n_boot: int = 2000,
                        progress: bool = False) -> IntensityCurve:
    """Steer ``vector`` at ``layers`` with each coefficient in ``coefs`` (``unit``/``reference``/``positions`` as
    for :class:`~persona_axes.steering.interventions.Steer`), reply to every question (a string, asked as one user
    turn, or a whole conversation), score the replies with ``scorer`` and return the :class:`IntensityCurve`.
    Use held-out questions that no part of the vector was fitted on. ``model``: a LoadedModel or Backend."""
    if not isinstance(scorer, Scorer):
        raise InvalidInputError(f"scorer must follow the Scorer protocol (name, measures, score(texts)), "
                                f"got {type(scorer).__name__}")
    if isinstance(questions, (str, bytes)) or not isinstance(questions, Sequence) or len(questions) < 2:
        raise InvalidInputError("questions must be a list of at least 2 questions (strings or conversations)")
    convs = [_conversation(q, i) for i, q in enumerate(questions)]
    coef_list = _check_coefs(coefs)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    seed = check_int(seed, "seed")
    sampling = SamplingConfig(max_new_tokens=check_int(max_new_tokens, "max_new_tokens", minimum=1),
                              temperature=check_float(temperature, "temperature", nonnegative=True), seed=seed)
    rows = [(ci, qi) for ci in range(len(coef_list)) for qi in range(len(convs))]
    replies: dict[tuple[int, int], str] = {}
    from tqdm.auto import tqdm

    with tqdm(total=len(rows), desc="calibrating", unit="reply", disable=not progress) as bar:
        for b0 in range(0, len(rows), batch_size):
            chunk = rows[b0:b0 + batch_size]
            coef_t = torch.tensor([coef_list[ci] for ci, _ in chunk], dtype=torch.float32)
            with Steer(model, vector, layers, coef_t, unit=unit, reference=reference, positions=positions):
                out = generate_replies(model, [convs[qi] for _, qi in chunk], sampling,
                                       seeds=[seed + qi for _, qi in chunk], batch_size=len(chunk))
            replies.update(zip(chunk, out))
            bar.update(len(chunk))
    reply_grid = [[replies[(ci, qi)] for qi in range(len(convs))] for ci in range(len(coef_list))]
    score_grid = []
    for r in reply_grid:
        s = [float(x) for x in scorer.score(r)]
        if len(s) != len(r) or not np.isfinite(s).all():
            raise InvalidInputError(f"scorer {scorer.name!r} must return one finite number per reply")
        score_grid.append(s)
    means = tuple(bootstrap(s, lambda u: float(np.mean(u)), n_boot=n_boot, seed=seed) for s in score_grid)
    reps = tuple(float(np.mean(repetition.score(r))) for r in reply_grid)
    xs = [coef_list[ci] for ci in range(len(coef_list)) for _ in convs]
    sp = spearman(xs, [v for s in score_grid for v in s], seed=seed)
    return IntensityCurve(
        scorer=scorer.name, coefs=tuple(coef_list), mean=means, scores=tuple(tuple(s) for s in score_grid),
        replies=tuple(tuple(r) for r in reply_grid), repetition=reps, rho=sp["rho"], p=sp["p"],
        questions=tuple(c[-1]["content"] for c in convs),
        settings={"layers": _jsonable(layers), "unit": str(unit), "positions": str(positions),
                  "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature, "seed": seed,
                  "batch_size": batch_size, "n_questions": len(convs)},
    )


def _jsonable(layers: Any) -> Any:
    if isinstance(layers, (int, str)):
        return layers
    try:
        return [int(x) for x in layers]
    except TypeError:
        return str(layers)


def replies_scored(curve: IntensityCurve, scorer: Scorer) -> list[list[float]]:
    """Score the curve's stored replies again with another scorer (e.g. a second behaviour), coefficient by row."""
    return [list(scorer.score(check_texts(list(r)))) for r in curve.replies]
