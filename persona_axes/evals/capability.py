"""Capability cost through lm-evaluation-harness: run lm-eval tasks on the model with an intervention active.

lm-eval's ``HFLM`` is given the loaded HF model object itself (``HFLM(pretrained=model, tokenizer=...)``), and the
task runs inside the condition's context manager (:class:`~persona_axes.evals.conditions.Condition`), so every
forward pass lm-eval makes goes through the Steer / ActivationCap hooks. A forward-hook counter on the first capped
or steered block records how many forward passes ran with the hooks registered (``hooked_forwards``), so a result
shows that the hooks were live, not only that they were entered.

Tasks: ``"persona_axes_mc"`` is a local multiple-choice task over the shipped ``data/evals/capability_mc.json``
(40 questions written for this project; lm-eval's ``json`` loader reads it, nothing is downloaded). Any other name
is passed to lm-eval as is, so on a machine with hub access the same call runs the paper's tasks, e.g.
``persona-axes eval capability --tasks mmlu,gsm8k,ifeval --conditions baseline,cap --device cuda``.

Resumable: one record per (condition, task) in a :class:`~persona_axes.evals.store.ResultStore`; a rerun skips
finished pairs.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_axes.activations.readers.base import as_backend
from persona_axes.core import check_int
from persona_axes.errors import InvalidInputError
from persona_axes.evals.conditions import AxisSetup, Condition
from persona_axes.evals.data import load_mc_items
from persona_axes.stats import Estimate, bootstrap
from persona_axes.evals.store import ResultStore
from persona_axes.files import atomic_write

__all__ = ["LOCAL_TASK", "CapabilityResult", "run_capability", "local_task_dir"]

#: The name of the shipped local multiple-choice task.
LOCAL_TASK = "persona_axes_mc"

_TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def local_task_dir(folder: str | os.PathLike, limit: int | None = None) -> Path:
    """Write the local task (YAML + JSONL of the shipped questions, the first ``limit`` of them) into ``folder``
    for ``lm_eval.tasks.TaskManager(include_path=folder)``; returns the folder."""
    folder = Path(folder)
    items = load_mc_items()[:limit] if limit else load_mc_items()
    data = folder / f"{LOCAL_TASK}.jsonl"
    with atomic_write(data, "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    with atomic_write(folder / f"{LOCAL_TASK}.yaml", "w") as f:
        f.write(_TASK_YAML.format(task=LOCAL_TASK, data=json.dumps(str(data))))
    return folder


@dataclass
class CapabilityResult:
    """Accuracy per (condition, task) with bootstrap CIs over items, the log-likelihood change against baseline,
    and the number of forward passes the hooks saw. ``records`` keeps each stored record (per-item log-likelihoods
    included)."""

    records: list[dict[str, Any]]
    config: dict[str, Any]
    accuracy: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    seed: int = 0

    def fill_accuracy(self) -> None:
        """Accuracy per (condition, task) with a bootstrap CI over items, from the records."""
        for r in self.records:
            self.accuracy.setdefault(r["condition"], {})[r["task"]] = bootstrap(
                r["correct"], lambda xs: sum(xs) / len(xs), seed=self.seed)

    def table(self) -> list[dict[str, Any]]:
        base = {r["task"]: r for r in self.records if r["condition"] == "baseline"}
        rows = []
        for r in self.records:
            acc = self.accuracy[r["condition"]][r["task"]]
            b = base.get(r["task"])
            diff = None
            if b is not None and len(b["loglikelihoods"]) == len(r["loglikelihoods"]):
                diff = max((abs(x - y) for bx, rx in zip(b["loglikelihoods"], r["loglikelihoods"])
                            for x, y in zip(bx, rx)), default=0.0)
            rows.append({"condition": r["condition"], "task": r["task"], "n": len(r["correct"]),
                         "accuracy": acc.value, "ci_low": acc.low, "ci_high": acc.high,
                         "max_abs_loglik_change_vs_baseline": diff, "hooked_forwards": r["hooked_forwards"]})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"evaluation": "capability", "config": self.config, "table": self.table(), "records": self.records}

    def figure(self):
        """Accuracy per condition and task, with 95% bootstrap intervals."""
        import plotly.graph_objects as go

        fig = go.Figure()
        tasks = sorted({r["task"] for r in self.records})
        for cond in dict.fromkeys(r["condition"] for r in self.records):
            ests = [self.accuracy[cond].get(t) for t in tasks]
            fig.add_trace(go.Bar(name=cond, x=tasks, y=[e.value if e else None for e in ests],
                                 error_y=dict(type="data", symmetric=False,
                                              array=[e.high - e.value if e else 0 for e in ests],
                                              arrayminus=[e.value - e.low if e else 0 for e in ests])))
        fig.update_layout(barmode="group", title="Capability under each condition (lm-eval)", yaxis_title="accuracy",
                          yaxis_range=[0, 1])
        return fig


@contextlib.contextmanager
def _count_forwards(backend: Any, layer: int):
    counter = {"n": 0}
    block = backend.loaded.layers.blocks[layer]

    def hook(module, args, out):
        counter["n"] += 1

    handle = block.register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


@contextlib.contextmanager
def _offline(on: bool):
    old = os.environ.get("HF_HUB_OFFLINE")
    if on:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if on and old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        elif on:
            os.environ["HF_HUB_OFFLINE"] = old


def _evaluate(hf_model: Any, tokenizer: Any, task: str, task_dir: Path, *, batch_size: int, limit: int | None,
              device: str) -> tuple[list[int], list[list[float]]]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=hf_model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    # the local task alone: indexing the thousands of built-in task configs costs more than the task itself
    tm = TaskManager(include_path=str(task_dir), include_defaults=False) if task == LOCAL_TASK else TaskManager()
    with _offline(task == LOCAL_TASK):  # the local task never needs the hub; hub tasks (mmlu, ...) do
        out = simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit, log_samples=True,
                              bootstrap_iters=0, verbosity="ERROR")
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    correct, lls = [], []
    for s in samples:
        ll = [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0]) for r in s["resps"]]
        lls.append(ll)
        target = s["target"]
        correct.append(int(max(range(len(ll)), key=ll.__getitem__) == int(target)))
    return correct, lls


def run_capability(model: Any, setup: AxisSetup, conditions: Sequence[Condition], *, tasks: Sequence[str] = (LOCAL_TASK,),
                   limit: int | None = None, batch_size: int = 8, out: str | os.PathLike | None = None,
                   seed: int = 0) -> CapabilityResult:
    """Run each lm-eval task under each condition; ``limit`` items per task (None: all). ``out`` is the JSONL
    store that makes the run resumable (None: in a temporary folder, not kept)."""
    be = as_backend(model)
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise InvalidInputError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    if limit is not None:
        limit = check_int(limit, "limit", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    config = {"model": be.info.name, "tasks": list(tasks), "limit": limit, "setup": setup.describe(),
              "conditions": [c.name for c in conditions]}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="persona_axes_lmeval_")))
        store = ResultStore(Path(out) if out is not None else tmp / "capability.jsonl", "capability", config)
        task_dir = local_task_dir(tmp / "task", limit)
        device = str(next(be.loaded.model.parameters()).device)
        watch = setup.cap.layers[0]
        with store.writing():
            for cond in conditions:
                for task in tasks:
                    rid = f"{cond.name}/{task}"
                    if rid in store:
                        continue
                    watch_layer = setup.layer if cond.kind == "steer" else watch
                    with cond.apply(be, setup), _count_forwards(be, watch_layer) as counter:
                        correct, lls = _evaluate(be.loaded.model, be.tokenizer, task, task_dir,
                                                 batch_size=batch_size, limit=limit, device=device)
                    store.append([{"id": rid, "condition": cond.name, "task": task, "correct": correct,
                                   "loglikelihoods": lls, "hooked_forwards": counter["n"]}])
        records = [store.get(f"{c.name}/{t}") for c in conditions for t in tasks]
    result = CapabilityResult(records=records, config=config, seed=seed)
    result.fill_accuracy()
    return result
