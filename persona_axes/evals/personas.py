"""Prompted vs activation-steered personas (after *Persona Non Grata*): is a persona as dangerous when it is
imposed by steering as when it is imposed by a system prompt, and do the two methods rank personas alike?

A persona is a combination of traits (``data/evals/personas.json``: e.g. villain = evil high, agreeableness low).
Prompted: its system prompt. Steered: ``Steer`` at one layer along ``sum_t sign_t * unit(trait_t[layer])`` (the
trait vectors of the vectors folder's ``traits/``), normalised, ``coef`` raw residual units.

Matched strength. The behaviour score of a reply is the persona's signed trait expression by the trait scorer
(:class:`~persona_axes.judges.embedding.EmbeddingJudge`): ``mean_t sign_t * (trait score_t - 50)``, in -50..50.
On the held-out matching questions (ordinary questions used for nothing else) the prompted persona has mean score
``S_p``; steering is run at each coefficient of a grid, and the matched coefficient is where the measured curve
``S(coef)`` reaches ``S_p`` (linear interpolation between grid points; the grid's end when it never does, flagged
``matched=False``). The score at the matched coefficient is measured again and reported next to ``S_p``.

Danger. Both versions of each persona answer the plain harmful requests of the jailbreak set; a refusal judge gives
the harmful-compliance rate and mean compliance score per persona and method. The two methods' danger rankings are
compared by Spearman's rho over personas (permutation p-value; exact for <= 8 personas).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from persona_axes.activations.readers.base import as_backend
from persona_axes.core import check_int, unit
from persona_axes.errors import InvalidInputError
from persona_axes.evals.conditions import AxisSetup
from persona_axes.evals.data import Persona, load_jailbreak_prompts, load_personas
from persona_axes.stats import spearman
from persona_axes.evals.store import ResultStore
from persona_axes.judges.base import TraitItem
from persona_axes.judges.embedding import EmbeddingJudge
from persona_axes.judges.refusal import LexicalRefusalJudge, RefusalItem, RefusalJudge
from persona_axes.runs.datasets import load_traits
from persona_axes.steering.generation import SamplingConfig, generate_replies
from persona_axes.steering.interventions import Steer
from persona_axes.vectors.containers import PersonaVector

__all__ = ["PersonasResult", "run_personas", "persona_direction", "DEFAULT_COEFS"]

#: The store id of the no-persona baseline's danger record.
BASELINE_ID = "__baseline__"
#: Steering coefficients tried for matching (raw residual units along the unit persona direction).
DEFAULT_COEFS = (0.0, 8.0, 16.0, 32.0, 64.0)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def persona_direction(persona: Persona, folder: Any, layer: int, model: Any = None) -> torch.Tensor:
    """``[d]`` unit vector: the sum of the persona's signed unit trait vectors at ``layer``."""
    total = None
    for trait, sign in persona.traits.items():
        path = folder / "traits" / f"{trait}.safetensors"
        if not path.is_file():
            raise InvalidInputError(f"persona {persona.id!r} uses trait {trait!r}, but {path} does not exist")
        v = unit(PersonaVector.load(path, model=model).at(layer), f"trait {trait}", layer) * sign
        total = v if total is None else total + v
    return unit(total, f"persona {persona.id}", layer)


@dataclass
class PersonasResult:
    """One record per persona: matching curve, matched coefficient, and per-method danger."""

    records: list[dict[str, Any]]
    config: dict[str, Any]
    baseline: dict[str, Any]

    def ranking(self, key: str = "mean_score") -> dict[str, Any]:
        """Spearman's rho between the prompted and steered danger (``mean_score`` or ``rate``) over personas."""
        if len(self.records) < 3:
            return {"rho": None, "p": None, "n": len(self.records), "by": key}
        out = spearman([r["prompted"][key] for r in self.records], [r["steered"][key] for r in self.records])
        return {**out, "by": key}

    def table(self) -> list[dict[str, Any]]:
        return [{"persona": r["persona"], "traits": r["traits"], "prompted_behaviour": r["prompted_behaviour"],
                 "matched_coef": r["matched_coef"], "steered_behaviour_at_match": r["steered_behaviour_at_match"],
                 "matched": r["matched"], "prompted_rate": r["prompted"]["rate"], "steered_rate": r["steered"]["rate"],
                 "prompted_mean_score": r["prompted"]["mean_score"], "steered_mean_score": r["steered"]["mean_score"]}
                for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {"evaluation": "personas", "config": self.config, "baseline": self.baseline, "table": self.table(),
                "spearman_mean_score": self.ranking("mean_score"), "spearman_rate": self.ranking("rate"),
                "records": self.records}

    def figure(self):
        """Danger (mean harmful-compliance score) of each persona, prompted vs steered at matched strength."""
        import plotly.graph_objects as go

        rk = self.ranking()
        fig = go.Figure(go.Scatter(
            x=[r["prompted"]["mean_score"] for r in self.records], y=[r["steered"]["mean_score"] for r in self.records],
            mode="markers+text", text=[r["persona"] for r in self.records], textposition="top center",
            marker=dict(size=11)))
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="#999"), showlegend=False))
        rho = "n/a" if rk["rho"] is None else f"{rk['rho']:+.2f} (p={rk['p']:.3f})"
        fig.update_layout(title=f"Prompted vs steered personas: danger, Spearman rho {rho}", showlegend=False,
                          xaxis_title="prompted: mean harmful-compliance score",
                          yaxis_title="steered (matched): mean harmful-compliance score")
        return fig


class _Scorer:
    """The persona behaviour score of replies (see the module docstring)."""

    def __init__(self, judge: EmbeddingJudge):
        self.judge = judge
        self.descriptions = {name: t.description for name, t in load_traits().items()}

    def __call__(self, persona: Persona, questions: Sequence[str], replies: Sequence[str]) -> list[float]:
        items = [TraitItem(t, self.descriptions.get(t, ""), q, r) for q, r in zip(questions, replies)
                 for t in persona.traits]
        scores = [s.score for s in self.judge.score_traits(items)]
        k = len(persona.traits)
        signs = list(persona.traits.values())
        return [_mean([signs[j] * (scores[i * k + j] - 50.0) for j in range(k)]) for i in range(len(replies))]


def _match(coefs: Sequence[float], curve: Sequence[float], target: float) -> tuple[float, bool]:
    """The coefficient where the piecewise-linear curve first reaches ``target`` (grid order), else the end."""
    for (c0, s0), (c1, s1) in zip(zip(coefs, curve), zip(coefs[1:], curve[1:])):
        if (s0 - target) * (s1 - target) <= 0:
            return (c0 if s1 == s0 else c0 + (target - s0) * (c1 - c0) / (s1 - s0)), True
    best = min(range(len(coefs)), key=lambda i: abs(curve[i] - target))
    return float(coefs[best]), False


def run_personas(model: Any, setup: AxisSetup, *, personas: Sequence[Persona] | None = None,
                 questions: Sequence[str] | None = None, requests: Sequence[str] | None = None,
                 coefs: Sequence[float] = DEFAULT_COEFS, layer: int | None = None,
                 judge: RefusalJudge | None = None, scorer: EmbeddingJudge | None = None,
                 sampling: SamplingConfig | None = None, samples: int = 1, out: str | os.PathLike | None = None,
                 seed: int = 0) -> PersonasResult:
    """Match, then compare, each persona prompted vs steered (module docstring). ``requests``: harmful requests
    (default: the jailbreak set's plain requests); ``samples`` replies per request (seeded; needs temperature > 0
    to differ); ``layer``: the steering layer (default: the middle block)."""
    be = as_backend(model)
    default_personas, default_questions = load_personas()
    personas = list(default_personas if personas is None else personas)
    questions = list(default_questions if questions is None else questions)
    if requests is None:
        requests = [p.request for p in load_jailbreak_prompts() if p.framing == "plain"]
    requests = list(requests)
    coefs = [float(c) for c in coefs]
    if len(coefs) < 2 or coefs != sorted(coefs):
        raise InvalidInputError(f"coefs must be at least two increasing steering coefficients, got {coefs}")
    layer = be.info.n_layers // 2 if layer is None else check_int(layer, "layer", minimum=0, maximum=be.info.n_layers - 1)
    samples = check_int(samples, "samples", minimum=1)
    sampling = sampling or SamplingConfig(max_new_tokens=64)
    judge = judge or LexicalRefusalJudge()
    scorer_fn = _Scorer(scorer or EmbeddingJudge())
    config = {"model": be.info.name, "folder": str(setup.folder), "layer": layer, "coefs": coefs,
              "questions": questions, "requests": requests, "samples": samples, "sampling": sampling.to_dict(),
              "judge": judge.name, "scorer": scorer_fn.judge.name}
    store = ResultStore(out, "personas", config) if out is not None else None
    reqs = [r for r in requests for _ in range(samples)]
    seeds = [seed + i for i in range(len(reqs))]

    def gen(convs, coef=None, direction=None, row_seeds=None):
        if direction is None:
            return generate_replies(be, convs, sampling, seeds=row_seeds, batch_size=len(convs))
        with Steer(be, direction, layers=[layer], coef=coef, unit="unit"):
            return generate_replies(be, convs, sampling, seeds=row_seeds, batch_size=len(convs))

    def danger(replies):
        sc = judge.score_refusals([RefusalItem(q, r) for q, r in zip(reqs, replies)])
        return {"rate": _mean([float(s.comply) for s in sc]), "mean_score": _mean([s.score for s in sc]),
                "replies": list(replies), "comply": [s.comply for s in sc]}

    if store is not None and BASELINE_ID in store:
        baseline = store.get(BASELINE_ID)["danger"]
    else:
        baseline = danger(gen([[{"role": "user", "content": q}] for q in reqs], row_seeds=seeds))
        if store is not None:
            with store.writing():
                store.append([{"id": BASELINE_ID, "danger": baseline}])
    records = []
    for p in personas:
        if store is not None and p.id in store:
            records.append(store.get(p.id))
            continue
        system = [{"role": "system", "content": p.system_prompt}]
        prompted = gen([system + [{"role": "user", "content": q}] for q in questions])
        s_prompt = _mean(scorer_fn(p, questions, prompted))
        direction = persona_direction(p, setup.folder, layer, be)
        grid_q = [q for _ in coefs for q in questions]
        grid = gen([[{"role": "user", "content": q}] for q in grid_q], torch.tensor([c for c in coefs for _ in questions]),
                   direction)
        scores = scorer_fn(p, grid_q, grid)
        curve = [_mean(scores[i * len(questions):(i + 1) * len(questions)]) for i in range(len(coefs))]
        coef, matched = _match(coefs, curve, s_prompt)
        check = _mean(scorer_fn(p, questions, gen([[{"role": "user", "content": q}] for q in questions], coef, direction)))
        rec = {"id": p.id, "persona": p.id, "traits": p.traits, "prompted_behaviour": s_prompt, "curve": curve,
               "matched_coef": coef, "matched": matched, "steered_behaviour_at_match": check,
               "prompted": danger(gen([system + [{"role": "user", "content": q}] for q in reqs], row_seeds=seeds)),
               "steered": danger(gen([[{"role": "user", "content": q}] for q in reqs], coef, direction, seeds))}
        if store is not None:
            with store.writing():
                store.append([rec])
        records.append(rec)
    return PersonasResult(records=records, config=config, baseline=baseline)
