"""Writing and reading evaluation results: the JSON of results (``<name>.json``), the figure (``<name>.html``), and
the pieces an HTML report section needs (:func:`report_section`: figures + a small table, from a result object or
from the JSON written earlier)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from persona_axes.errors import FileFormatError, InvalidInputError
from persona_axes.files import atomic_path, atomic_write

__all__ = ["EVALUATIONS", "save_result", "load_result", "report_section"]

#: The evaluations, as named in result files and on the command line.
EVALUATIONS = ("drift", "jailbreak", "capability", "personas")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "to_dict"):
        return _clean(value.to_dict())
    return value


def save_result(result: Any, folder: str | os.PathLike, *, wall_time_s: float | None = None) -> dict[str, Path]:
    """Write ``<evaluation>.json`` (``result.to_dict()``, NaN as null, plus ``wall_time_s``) and
    ``<evaluation>.html`` (``result.figure()``, plotly.js from the CDN) into ``folder``, atomically."""
    if not hasattr(result, "to_dict") or not hasattr(result, "figure"):
        raise InvalidInputError(f"expected an evaluation result (to_dict() and figure()), got {type(result).__name__}")
    data = _clean(result.to_dict())
    if wall_time_s is not None:
        data["wall_time_s"] = float(wall_time_s)
    name = data.get("evaluation")
    if name not in EVALUATIONS:
        raise InvalidInputError(f"result names evaluation {name!r}; expected one of {EVALUATIONS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / f"{name}.json", "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    with atomic_path(folder / f"{name}.html") as tmp:
        result.figure().write_html(str(tmp), include_plotlyjs="cdn")
    return {"json": folder / f"{name}.json", "html": folder / f"{name}.html"}


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """A result JSON written by :func:`save_result` (checked to name a known evaluation and carry a table)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such result file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("evaluation") not in EVALUATIONS or not isinstance(data.get("table"), list):
        raise FileFormatError(f"{path}: not an evaluation result (needs 'evaluation' in {EVALUATIONS} and a 'table')")
    return data


def _headline(data: dict[str, Any]) -> str:
    name = data["evaluation"]
    if name == "drift":
        p = data.get("pattern", {})
        return ("The paper's pattern (emotional and meta conversations drift away, coding and writing stay) "
                f"{'holds' if p.get('holds') else 'does not hold'} on this model: risky-minus-safe slope "
                f"{_fmt_est(p.get('risky_minus_safe_slope'))} per turn.")
    if name == "jailbreak":
        a = data.get("judge_agreement", {})
        return (f"Judge {data.get('judge')}: accuracy {a.get('accuracy', float('nan')):.2f}, kappa "
                f"{a.get('kappa', float('nan')):.2f}, AUROC {a.get('auroc', float('nan')):.2f} on {a.get('n')} "
                "hand-labelled replies.")
    if name == "personas":
        s = data.get("spearman_mean_score", {})
        return f"Spearman rho between prompted and steered danger: {s.get('rho')} (p = {s.get('p')}, n = {s.get('n')})."
    return "Accuracy per condition; the log-likelihood change and hooked forward count show the hooks were active."


def _fmt_est(e: Any) -> str:
    if not isinstance(e, dict) or e.get("value") is None:
        return "n/a"
    lo, hi = e.get("low"), e.get("high")
    ci = "" if lo is None or hi is None else f" [{lo:+.3f}, {hi:+.3f}]"
    return f"{e['value']:+.3f}{ci}"


def report_section(result: Any) -> dict[str, Any]:
    """What an HTML report needs for one evaluation: ``{"title", "headline", "figures": [plotly figures],
    "columns": [...], "rows": [[...], ...]}``. ``result`` is a result object, or a result JSON path / dict (the
    figure is then rebuilt from the stored records)."""
    if isinstance(result, (str, os.PathLike)):
        result = load_result(result)
    if isinstance(result, dict):
        data, fig = result, _figure_from_dict(result)
    else:
        data, fig = _clean(result.to_dict()), result.figure()
    table = data["table"]
    columns = list(dict.fromkeys(k for row in table for k in row if not isinstance(row[k], (dict, list))))
    rows = [[row.get(c) for c in columns] for row in table]
    titles = {"drift": "Persona drift by conversation type", "jailbreak": "Capping against persona jailbreaks",
              "capability": "Capability cost (lm-eval)", "personas": "Prompted vs steered personas"}
    return {"title": titles[data["evaluation"]], "headline": _headline(data), "figures": [fig] if fig else [],
            "columns": columns, "rows": rows}


def _figure_from_dict(data: dict[str, Any]):
    from persona_axes.evals import capability, drift, jailbreak, personas  # the result classes rebuild figures

    name, recs, cfg = data["evaluation"], data.get("records") or [], data.get("config") or {}
    if not recs:
        return None
    if name == "drift":
        return drift.DriftResult(records=recs, config=cfg, floor=data.get("floor")).figure()
    if name == "jailbreak":
        return jailbreak.JailbreakResult(records=recs, config=cfg, judge=data["judge"],
                                         agreement=data.get("judge_agreement", {})).figure()
    if name == "personas":
        return personas.PersonasResult(records=recs, config=cfg, baseline=data.get("baseline", {})).figure()
    res = capability.CapabilityResult(records=recs, config=cfg)
    res.fill_accuracy()
    return res.figure()
