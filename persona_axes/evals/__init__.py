"""The paper's evaluations as one harness: persona drift by conversation type, capping against persona-based
jailbreaks, capability cost through lm-evaluation-harness, and prompted vs activation-steered personas.

Each ``run_*`` function works on any loaded model (the embedded SmolLM2 on a CPU, or a large model on a GPU),
stores finished items in a resumable JSONL :class:`ResultStore`, and returns a typed result with ``to_dict()``
(the JSON written by ``persona-axes eval``), ``table()`` and ``figure()`` (plotly).
"""

from persona_axes.evals.capability import LOCAL_TASK, CapabilityResult, run_capability
from persona_axes.evals.conditions import AxisSetup, Condition, load_axis_setup, parse_conditions
from persona_axes.evals.store import ResultStore

__all__ = ["AxisSetup", "Condition", "load_axis_setup", "parse_conditions", "ResultStore", "LOCAL_TASK",
           "CapabilityResult", "run_capability"]
