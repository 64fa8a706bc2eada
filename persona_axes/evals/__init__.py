"""The paper's evaluations as one harness: persona drift by conversation type, capping against persona-based
jailbreaks, capability cost through lm-evaluation-harness, and prompted vs activation-steered personas.

Each ``run_*`` function works on any loaded model (the embedded SmolLM2 on a CPU, or a large model on a GPU),
stores finished items in a resumable JSONL :class:`ResultStore`, and returns a typed result with ``to_dict()``
(the JSON written by ``persona-axes eval``), ``table()`` and ``figure()`` (plotly). :func:`report_section` gives
an HTML report what it needs for one evaluation.
"""

from persona_axes.evals.capability import LOCAL_TASK, CapabilityResult, run_capability
from persona_axes.evals.conditions import AxisSetup, Condition, load_axis_setup, parse_conditions
from persona_axes.evals.drift import DriftResult, run_drift
from persona_axes.evals.jailbreak import JailbreakResult, judge_agreement, run_jailbreak
from persona_axes.evals.personas import PersonasResult, run_personas
from persona_axes.evals.results import EVALUATIONS, load_result, report_section, save_result
from persona_axes.evals.simulators import HttpUserSimulator, ModelUserSimulator, ScriptedUser, UserSimulator
from persona_axes.evals.store import ResultStore

__all__ = [
    "AxisSetup", "Condition", "load_axis_setup", "parse_conditions", "ResultStore",
    "run_drift", "DriftResult", "run_jailbreak", "JailbreakResult", "judge_agreement",
    "run_capability", "CapabilityResult", "LOCAL_TASK", "run_personas", "PersonasResult",
    "UserSimulator", "ScriptedUser", "ModelUserSimulator", "HttpUserSimulator",
    "EVALUATIONS", "save_result", "load_result", "report_section",
]
