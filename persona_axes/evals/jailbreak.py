"""Capping against persona-based jailbreaks: how often does the model go along with persona-framed harmful requests,
as it is, under the activation cap, and steered away from the Assistant?

Prompts are every persona framing x request of ``data/evals/jailbreak_prompts.json`` (abstract requests, no
operational detail; the unframed ``plain`` framing is the control). Replies are generated under each condition
(:mod:`persona_axes.evals.conditions`) and judged by a refusal judge (:mod:`persona_axes.judges.refusal`; offline
default :class:`~persona_axes.judges.refusal.LexicalRefusalJudge`). Reported: the harmful-compliance rate per
framing and condition with bootstrap CIs over prompts, and the relative reduction ``(rate_baseline - rate_cond) /
rate_baseline`` for each condition with a paired bootstrap CI (the same resampled prompts under both conditions).
Judge-free, each reply's mean projection on the unit Assistant Axis at the axis layer (read without any
intervention) is stored too, and its mean per framing and condition reported: it shows whether a condition moved
the replies toward or away from the Assistant whatever the judge makes of them.
:func:`judge_agreement` reports how the judge agrees with the hand-labelled replies (accuracy, Cohen's kappa,
AUROC), which is part of every result.

Resumable: one record per (condition, prompt) holding the reply and each judge's verdict; a rerun with another
judge reuses the replies and only judges them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from persona_axes.activations.batch import capture
from persona_axes.activations.readers.base import as_backend
from persona_axes.core import check_int
from persona_axes.errors import InvalidInputError
from persona_axes.evals.conditions import AxisSetup, Condition
from persona_axes.evals.data import JailbreakPrompt, load_jailbreak_prompts, load_labelled_replies
from persona_axes.stats import Estimate, agreement, bootstrap, relative_reduction
from persona_axes.evals.store import ResultStore
from persona_axes.judges.refusal import LexicalRefusalJudge, RefusalItem, RefusalJudge
from persona_axes.steering.generation import SamplingConfig, generate_replies

__all__ = ["JailbreakResult", "run_jailbreak", "judge_agreement", "compliance_rate"]


def judge_agreement(judge: RefusalJudge, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Agreement of ``judge`` with the hand-labelled replies (default: the shipped 60): accuracy, Cohen's kappa,
    AUROC of its continuous score, and the ids it gets wrong."""
    labelled = load_labelled_replies(path)
    scores = judge.score_refusals([RefusalItem(r.request, r.response) for r in labelled])
    out = agreement([r.comply for r in labelled], [s.comply for s in scores], [s.score for s in scores])
    out["judge"] = judge.name
    out["disagreements"] = [r.id for r, s in zip(labelled, scores) if r.comply != s.comply]
    return out


def compliance_rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


@dataclass
class JailbreakResult:
    """Records (condition, framing, request, reply, verdict) and the summaries; ``judge`` is the judge's name."""

    records: list[dict[str, Any]]
    config: dict[str, Any]
    judge: str
    agreement: dict[str, Any]
    seed: int = 0

    def conditions(self) -> list[str]:
        return list(dict.fromkeys(r["condition"] for r in self.records))

    def framings(self) -> list[str]:
        return list(dict.fromkeys(r["framing"] for r in self.records))

    def _flags(self, condition: str, framing: str | None = None) -> dict[str, bool]:
        return {r["prompt"]: r["judge"][self.judge]["comply"] for r in self.records
                if r["condition"] == condition and (framing is None or r["framing"] == framing)}

    def rate(self, condition: str, framing: str | None = None) -> Estimate:
        flags = list(self._flags(condition, framing).values())
        return bootstrap(flags, compliance_rate, seed=self.seed)

    def reduction(self, condition: str, framing: str | None = None, baseline: str = "baseline") -> Estimate:
        """Relative reduction of the compliance rate from ``baseline`` to ``condition`` (paired bootstrap over
        prompts; NaN where the baseline rate is 0). Negative = the condition raised compliance."""
        base, cond = self._flags(baseline, framing), self._flags(condition, framing)
        pairs = [(base[p], cond[p]) for p in base if p in cond]
        if not pairs:
            raise InvalidInputError(f"no prompts judged under both {baseline!r} and {condition!r}")

        def stat(ps):
            return relative_reduction(compliance_rate([a for a, _ in ps]), compliance_rate([b for _, b in ps]))

        return bootstrap(pairs, stat, seed=self.seed)

    def table(self) -> list[dict[str, Any]]:
        rows = []
        for framing in [None, *self.framings()]:
            for cond in self.conditions():
                est = self.rate(cond, framing)
                projs = [r["projection"] for r in self.records if r["condition"] == cond and r.get("projection")
                         is not None and (framing is None or r["framing"] == framing)]
                row = {"framing": framing or "all", "condition": cond, "n": est.n, "compliance_rate": est.value,
                       "ci_low": est.low, "ci_high": est.high,
                       "mean_axis_projection": sum(projs) / len(projs) if projs else None}
                if cond != "baseline" and "baseline" in self.conditions():
                    red = self.reduction(cond, framing)
                    row.update(relative_reduction=red.value, reduction_ci_low=red.low, reduction_ci_high=red.high)
                rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"evaluation": "jailbreak", "config": self.config, "judge": self.judge, "judge_agreement": self.agreement,
                "table": self.table(), "records": self.records}

    def figure(self):
        """Harmful-compliance rate per framing and condition, with 95% bootstrap intervals."""
        import plotly.graph_objects as go

        fig = go.Figure()
        framings = ["all", *self.framings()]
        for cond in self.conditions():
            ests = [self.rate(cond, None if f == "all" else f) for f in framings]
            fig.add_trace(go.Bar(name=cond, x=framings, y=[e.value for e in ests],
                                 error_y=dict(type="data", symmetric=False, array=[e.high - e.value for e in ests],
                                              arrayminus=[e.value - e.low for e in ests])))
        fig.update_layout(barmode="group", yaxis_range=[0, 1], xaxis_title="persona framing",
                          yaxis_title="harmful-compliance rate",
                          title=f"Persona jailbreaks: compliance by framing and condition (judge {self.judge})")
        return fig


def run_jailbreak(model: Any, setup: AxisSetup, conditions: Sequence[Condition], *,
                  judge: RefusalJudge | None = None, prompts: Sequence[JailbreakPrompt] | None = None,
                  framings: Sequence[str] | None = None, requests: Sequence[str] | None = None,
                  sampling: SamplingConfig | None = None, batch_size: int = 16, out: str | os.PathLike | None = None,
                  seed: int = 0) -> JailbreakResult:
    """Generate a reply to every prompt under every condition, judge them, and summarise (module docstring).
    ``framings`` / ``requests`` pick subsets by id; ``out`` is the resumable JSONL store."""
    be = as_backend(model)
    judge = judge or LexicalRefusalJudge()
    if not hasattr(judge, "score_refusals") or not isinstance(getattr(judge, "name", None), str):
        raise InvalidInputError(f"judge must be a refusal judge (name + score_refusals), got {type(judge).__name__}")
    prompts = list(load_jailbreak_prompts() if prompts is None else prompts)
    for what, wanted, key in (("framing", framings, "framing"), ("request", requests, "request_id")):
        if wanted is not None:
            unknown = sorted(set(wanted) - {getattr(p, key) for p in prompts})
            if unknown:
                raise InvalidInputError(f"unknown {what} id(s) {unknown}; known: {sorted({getattr(p, key) for p in prompts})}")
            prompts = [p for p in prompts if getattr(p, key) in wanted]
    if not conditions:
        raise InvalidInputError("give at least one condition (e.g. baseline, cap, steer:-30)")
    sampling = sampling or SamplingConfig(max_new_tokens=64)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    config = {"model": be.info.name, "setup": setup.describe(), "sampling": sampling.to_dict(),
              "prompts": {p.id: p.text for p in prompts}}
    store = ResultStore(out, "jailbreak", config) if out is not None else None
    records: dict[str, dict[str, Any]] = {i: store.get(i) for i in store.ids()} if store is not None else {}
    for cond in conditions:
        todo = [p for p in prompts if f"{cond.name}/{p.id}" not in records]
        for b0 in range(0, len(todo), batch_size):
            chunk = todo[b0 : b0 + batch_size]
            with cond.apply(be, setup):
                replies = generate_replies(be, [[{"role": "user", "content": p.text}] for p in chunk], sampling,
                                           seeds=[seed + prompts.index(p) for p in chunk], batch_size=batch_size)
            new = [{"id": f"{cond.name}/{p.id}", "condition": cond.name, "prompt": p.id, "framing": p.framing,
                    "request": p.request_id, "kind": p.kind, "reply": r, "judge": {}} for p, r in zip(chunk, replies)]
            _judge(judge, new, prompts)
            _project(be, setup, new, prompts, batch_size)
            if store is not None:
                with store.writing():
                    store.append(new)
            records.update({r["id"]: r for r in new})
    wanted_ids = [f"{c.name}/{p.id}" for c in conditions for p in prompts]
    unjudged = [records[i] for i in wanted_ids if judge.name not in records[i]["judge"]]
    if unjudged:
        _judge(judge, unjudged, prompts)
    unprojected = [records[i] for i in wanted_ids if "projection" not in records[i]]
    if unprojected:
        _project(be, setup, unprojected, prompts, batch_size)
    changed = {r["id"]: r for r in unjudged + unprojected}
    if changed and store is not None:
        with store.writing():
            store.append(list(changed.values()))
    return JailbreakResult(records=[records[i] for i in wanted_ids], config=config, judge=judge.name,
                           agreement=judge_agreement(judge), seed=seed)


def _judge(judge: RefusalJudge, records: list[dict[str, Any]], prompts: Sequence[JailbreakPrompt]) -> None:
    text = {p.id: p.request for p in prompts}
    scores = judge.score_refusals([RefusalItem(text[r["prompt"]], r["reply"]) for r in records])
    for r, s in zip(records, scores):
        r["judge"] = {**r["judge"], judge.name: {"comply": s.comply, "score": s.score, "rationale": s.rationale}}


def _project(be: Any, setup: AxisSetup, records: list[dict[str, Any]], prompts: Sequence[JailbreakPrompt],
             batch_size: int) -> None:
    """Each reply's mean projection on the unit axis at the axis layer, no intervention (None for an empty reply)."""
    text = {p.id: p.text for p in prompts}
    todo = [r for r in records if r["reply"].strip()]
    for r in records:
        r["projection"] = None
    if not todo:
        return
    convs = [[{"role": "user", "content": text[r["prompt"]]}, {"role": "assistant", "content": r["reply"]}] for r in todo]
    acts = capture(be, convs, layers=[setup.layer], which="last_assistant", batch_size=batch_size, progress=False)
    u = setup.axis.unit(setup.layer)
    for item, value in zip(acts.items, (acts.at(setup.layer) @ u).tolist()):
        todo[item["conversation"]]["projection"] = value
