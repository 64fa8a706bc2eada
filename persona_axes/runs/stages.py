"""The paper's pipeline as composable stages: rollouts -> judge -> capture -> vectors -> space -> capping -> files.

A :class:`Run` carries the state from stage to stage; each stage is a function ``stage(run, *, progress) -> run``
that fills its part and skips work already on disk, so an interrupted run resumes where it stopped (rollouts item
by item, activations chunk by chunk). :func:`run_pipeline` is :func:`open_run` + :func:`run_stages` over
:data:`PIPELINE_STAGES`; the CLI's ``demo`` and ``pipeline`` and ``experiments/reproduce.py`` all go through it and
then read what they need from the result (``result.activations``, ``result.cap``) instead of re-orchestrating.
Files under ``out_dir``:

    rollouts.jsonl                      generated replies, judge scores cached inside
    activations/{role,default,trait}.safetensors
    vectors/assistant_axis.safetensors  the Assistant Axis, [num_layers, hidden_size]
    vectors/roles.safetensors           one mean vector per accepted role
    vectors/default.safetensors         the default Assistant's mean vector
    vectors/traits/<trait>.safetensors  contrastive trait vectors (mean difference)
    vectors/capping.safetensors         an activation cap calibrated on default-assistant replies
    summary.json                        every number the report quotes (:class:`~persona_axes.runs.summary.RunSummary`)

One process writes a run folder at a time: :func:`run_stages` holds ``out_dir/.run.lock`` and a second process is
refused with a message saying so.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_axes.activations.batch import capture
from persona_axes.activations.container import Activations
from persona_axes.activations.extraction import extract
from persona_axes.activations.readers.base import as_backend
from persona_axes.core import RolloutKind, check_float, check_int
from persona_axes.errors import FileFormatError, InvalidInputError, StaleCheckpointError
from persona_axes.files import exclusive_lock
from persona_axes.judges.base import judge_from_spec, role_item_accepted, trait_item_kept
from persona_axes.runs.datasets import load_roles, load_traits
from persona_axes.runs.publish import publish
from persona_axes.runs.presets import RolloutPreset, get_preset
from persona_axes.runs.rollouts import judge_rollouts, run_preset_rollouts
from persona_axes.runs.store import Rollout, RolloutStore
from persona_axes.runs.summarize import summarize
from persona_axes.runs.summary import RunSummary
from persona_axes.steering.capping import CapConfig, calibrate_cap
from persona_axes.vectors.methods import mean_vector, role_vectors, trait_vector
from persona_axes.vectors.space import PersonaSpace
from persona_axes.vectors.units import unit_stats, with_unit_stats

log = logging.getLogger(__name__)

__all__ = ["PipelineConfig", "PipelineResult", "Run", "open_run", "run_stages", "run_pipeline", "PIPELINE_STAGES",
           "rollouts_stage", "judge_stage", "capture_stage", "vectors_stage", "space_stage", "capping_stage",
           "write_stage", "calibrate_run_cap", "run_lock", "publish"]

GROUPS = RolloutKind.values()  # role, default, trait: one activations file each


@dataclass
class PipelineConfig:
    """What to run. The cap: a floor at ``cap_percentile`` of default-assistant projections over the band of
    ``cap_band`` layers either side of the chosen layer, the percentile taken over reply tokens
    (``cap_per_token``; the cap acts per token) or over reply means. The defaults (10th percentile of tokens, one
    layer either side) are the setting chosen by the capping trade-off on held-out prompts
    (``experiments/capping_tradeoff.py``)."""

    preset: str | RolloutPreset = "quick"
    judge: str = "embedding"
    min_role_samples: int = 3
    min_trait_samples: int = 4
    n_components: int = 10
    cap_percentile: float = 10.0
    cap_band: int = 1
    cap_per_token: bool = True
    capture_batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("min_role_samples", 1), ("min_trait_samples", 1), ("n_components", 1),
                              ("cap_band", 0), ("capture_batch_size", 1), ("seed", None)):
            check_int(getattr(self, name), f"PipelineConfig.{name}", minimum=minimum)
        if not isinstance(self.cap_per_token, bool):
            raise InvalidInputError(f"PipelineConfig.cap_per_token must be True or False, got {self.cap_per_token!r}")
        check_float(self.cap_percentile, "PipelineConfig.cap_percentile", minimum=0.0, maximum=100.0)

    def resolved_preset(self) -> RolloutPreset:
        return get_preset(self.preset)


@dataclass
class Run:
    """The state of one pipeline run, filled stage by stage (each field says which stage sets it)."""

    out_dir: Path
    backend: Any
    config: PipelineConfig
    preset: RolloutPreset
    previous_timings: dict[str, float] = field(default_factory=dict)  # from an earlier summary.json, for resumes
    timings: dict[str, float] = field(default_factory=dict)
    generated: int = 0                                    # rollouts_stage
    store: RolloutStore | None = None                     # rollouts_stage
    wanted: set[str] = field(default_factory=set)         # rollouts_stage: this run's request ids
    judge: Any = None                                     # judge_stage
    records: list[Rollout] = field(default_factory=list)  # rollouts_stage, rescored by judge_stage
    empty: list[str] = field(default_factory=list)        # capture_stage: ids of empty replies, left out
    groups: dict[str, list[Rollout]] = field(default_factory=dict)       # capture_stage
    activations: dict[str, Activations] = field(default_factory=dict)   # capture_stage
    acceptance: dict[str, tuple[int, int]] = field(default_factory=dict)  # vectors_stage: (accepted, total)
    families: dict[str, str] = field(default_factory=dict)                # vectors_stage
    accepted: Activations | None = None                   # vectors_stage: the accepted role replies
    roles: Any = None                                     # vectors_stage: VectorSet of role means
    default: Any = None                                   # vectors_stage: the default Assistant's mean
    traits: dict[str, Any] = field(default_factory=dict)  # vectors_stage
    trait_counts: dict[str, dict[str, Any]] = field(default_factory=dict)  # vectors_stage
    space: PersonaSpace | None = None                     # space_stage
    axis: Any = None                                      # space_stage
    sweep: Any = None                                     # space_stage
    cap: CapConfig | None = None                          # capping_stage
    summary: RunSummary | None = None                     # write_stage

    @property
    def best_layer(self) -> int:
        if self.sweep is None:
            raise InvalidInputError("the space stage has not run yet: no layer is chosen")
        return self.sweep.best_layer

    def fit(self, kind: str) -> Activations:
        """The captured replies of ``kind`` the vectors are built from (role/default: split None; trait:
        extraction), leaving out held-out replies."""
        ok = (None, "extraction") if kind == "trait" else (None,)
        return self.activations[kind].select(lambda it: it.get("split") in ok)

    def heldout(self, kind: str) -> Activations | None:
        """The held-out replies of ``kind`` (split ``"evaluation"``), or None when the run has none."""
        acts = self.activations.get(kind)
        held = None if acts is None else acts.select(lambda it: it.get("split") == "evaluation")
        return held if held is not None and len(held) else None

    def result(self) -> PipelineResult:
        if self.summary is None:
            raise InvalidInputError("the run has not been written yet (write_stage)")
        return PipelineResult(out_dir=self.out_dir, space=self.space, axis=self.axis, roles=self.roles,
                              traits=self.traits, summary=self.summary, activations=self.activations, cap=self.cap)


@dataclass
class PipelineResult:
    """A finished run: the persona space, the axis, role and trait vectors, the summary, the captured activations
    by group and the calibrated cap (also on disk under ``out_dir``)."""

    out_dir: Path
    space: PersonaSpace
    axis: Any
    roles: Any
    traits: dict[str, Any]
    summary: RunSummary
    activations: dict[str, Activations] = field(default_factory=dict)
    cap: CapConfig | None = None


Stage = Callable[..., Run]


def open_run(model: Any, out_dir: str | Path, config: PipelineConfig | None = None) -> Run:
    """A fresh :class:`Run` on ``model`` writing under ``out_dir`` (timings of an earlier run there are kept, so a
    resumed run reports what the work cost)."""
    config = PipelineConfig() if config is None else config
    if not isinstance(config, PipelineConfig):
        raise InvalidInputError(f"config must be a PipelineConfig, got {type(config).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"out_dir {str(out)!r} is a file; give a folder")
    previous: dict[str, float] = {}
    if (out / "summary.json").is_file():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an old summary's missing checksum: it is rewritten at the end
                previous = dict(RunSummary.load(out / "summary.json").timings_s)
        except FileFormatError as e:
            log.warning("%s; its timings are not reused", e)
    return Run(out_dir=out, backend=as_backend(model), config=config, preset=config.resolved_preset(),
               previous_timings=previous)


@contextlib.contextmanager
def _timed(run: Run, key: str, *, keep_previous: bool = False) -> Iterator[None]:
    t = time.time()
    yield
    took = time.time() - t
    run.timings[key] = run.timings.get(key, 0.0) + took
    if keep_previous and key in run.previous_timings:  # the stage did no work: quote what it cost before
        run.timings[key] = run.previous_timings[key]


def rollouts_stage(run: Run, *, progress: bool = True) -> Run:
    """Generate the preset's rollouts into ``rollouts.jsonl`` (resumable item by item)."""
    t = time.time()
    run.store = RolloutStore(run.out_dir / "rollouts.jsonl")
    requests = run.preset.build_requests()
    report = run_preset_rollouts(run.backend, run.preset, requests, run.store, run.config.seed, progress=progress)
    run.generated = report.generated
    run.wanted = {r.id for r in requests}
    run.records = [r for r in run.store.records() if r.id in run.wanted]
    run.timings["rollouts_s"] = time.time() - t
    if report.generated == 0 and "rollouts_s" in run.previous_timings:
        run.timings["rollouts_s"] = run.previous_timings["rollouts_s"]
    return run


def judge_stage(run: Run, *, progress: bool = True) -> Run:
    """Score the rollouts with the configured judge (scores cached in the store)."""
    t = time.time()
    run.judge = judge_from_spec(run.config.judge)
    n = judge_rollouts(run.store, run.judge, roles=load_roles(), traits=load_traits(), progress=progress)
    run.records = [r for r in run.store.records() if r.id in run.wanted]
    run.timings["judge_s"] = time.time() - t
    if n == 0 and "judge_s" in run.previous_timings:
        run.timings["judge_s"] = run.previous_timings["judge_s"]
    return run


def _capture_group(run: Run, records: list[Rollout], path: Path, progress: bool) -> Activations:
    """Activations of one group (resumable chunk by chunk; reused when ``path`` already holds them). Judge scores
    are labels, not inputs: new scores relabel stored activations without computing them again."""
    meta = [r.item_metadata(run.judge.name) for r in records]
    convs = [r.messages() for r in records]
    kw = dict(metadata=meta, batch_size=run.config.capture_batch_size, progress=progress)
    try:
        return extract(run.backend, convs, path, **kw).activations
    except StaleCheckpointError as e:  # the rollouts changed since the checkpoint was made: it is of no use
        log.warning("%s; extracting again", e)
        return extract(run.backend, convs, path, restart=True, **kw).activations


def capture_stage(run: Run, *, progress: bool = True) -> Run:
    """Capture every non-empty reply, one activations file per group (role, default, trait)."""
    t = time.time()
    adir = run.out_dir / "activations"
    adir.mkdir(parents=True, exist_ok=True)
    run.empty = [r.id for r in run.records if not r.response.strip()]
    if run.empty:  # an empty reply has no tokens to reduce over; it is reported, not captured
        log.warning("%d rollouts have an empty reply and are left out: %s", len(run.empty), run.empty[:5])
    run.groups = {k: [r for r in run.records if r.kind == k and r.response.strip()] for k in GROUPS}
    cached = all((adir / f"{k}.safetensors").exists() for k, recs in run.groups.items() if recs)
    run.activations = {k: _capture_group(run, recs, adir / f"{k}.safetensors", progress)
                       for k, recs in run.groups.items() if recs}
    run.timings["capture_s"] = time.time() - t
    prev = run.previous_timings.get("capture_s")
    if cached and prev is not None and run.timings["capture_s"] < 0.5 * prev:
        run.timings["capture_s"] = prev
    if "role" not in run.activations or "default" not in run.activations:
        raise InvalidInputError("the preset produced no role or no default rollouts; both are needed for the axis")
    return run


def vectors_stage(run: Run, *, progress: bool = True) -> Run:
    """Role vectors (means of accepted replies, roles with too few skipped), the default Assistant's mean, and
    trait vectors (mean difference of judge-kept replies; unfiltered when too few are kept)."""
    with _timed(run, "vectors_s"):
        role_acts = run.fit("role")
        run.accepted = role_acts.select(role_item_accepted)
        run.acceptance = {}
        for name in dict.fromkeys(it["name"] for it in role_acts.items):
            n_all = sum(it["name"] == name for it in role_acts.items)
            n_ok = sum(it["name"] == name for it in run.accepted.items)
            run.acceptance[name] = (n_ok, n_all)
        roles_data = load_roles()
        run.families = {n: roles_data[n].family for n in run.acceptance if n in roles_data}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped roles are reported in the summary instead
            run.roles = role_vectors(run.accepted, key="name", min_count=run.config.min_role_samples,
                                     families=run.families)
        default_fit = run.fit("default")
        run.default = mean_vector(default_fit, name="default_assistant")
        run.traits, run.trait_counts = {}, {}
        ta = run.fit("trait") if "trait" in run.activations else None
        for name in dict.fromkeys(it["name"] for it in ta.items) if ta is not None else ():
            pos_all, neg_all = ta.where(name=name, polarity="pos"), ta.where(name=name, polarity="neg")
            pos = pos_all.select(lambda it: trait_item_kept(it, True))
            neg = neg_all.select(lambda it: trait_item_kept(it, False))
            filtered = len(pos) >= run.config.min_trait_samples and len(neg) >= run.config.min_trait_samples
            if not filtered:
                pos, neg = pos_all, neg_all
            vec = trait_vector(pos, neg, "mean_diff", name=name, metadata={
                "judge_filtered": str(filtered).lower(), "judge": run.judge.name})
            run.traits[name] = with_unit_stats(vec, unit_stats(vec, default_fit, pos, neg))
            run.trait_counts[name] = {"n_pos": len(pos), "n_neg": len(neg), "n_pos_all": len(pos_all),
                                      "n_neg_all": len(neg_all), "judge_filtered": filtered}
    return run


def space_stage(run: Run, *, progress: bool = True) -> Run:
    """The persona space (PCA of role vectors per layer), the Assistant Axis, and the layer sweep that chooses the
    layer separating default-assistant from role replies best."""
    with _timed(run, "vectors_s"):
        run.space = PersonaSpace(n_components=run.config.n_components).fit(run.roles, default=run.default)
        axis = run.space.assistant_axis()
        run.axis = with_unit_stats(axis, unit_stats(axis, run.fit("default"), negative=run.accepted))
        held_default, held_role = run.heldout("default"), run.heldout("role")
        held_role = None if held_role is None else held_role.select(role_item_accepted)
        if held_default is not None and held_role is not None and len(held_default) > 1 and len(held_role) > 1:
            run.sweep = run.space.layer_sweep(held_default, held_role, n_boot=1000, seed=run.config.seed,
                                              evaluated_on="held-out")
        else:  # no held-out replies (e.g. the quick preset): the sweep is in-sample, and says so
            run.sweep = run.space.layer_sweep(run.fit("default"), run.accepted, n_boot=1000, seed=run.config.seed)
    return run


def calibrate_run_cap(run: Run, layers: Sequence[int] | None = None, percentile: float | None = None) -> CapConfig:
    """The capping stage's calibration: a floor on the axis at ``percentile`` (default: the config's) of the
    default-assistant projections, over ``layers`` (default: the config's band around the chosen layer)."""
    if layers is None:
        n, best, half = run.backend.info.n_layers, run.best_layer, run.config.cap_band
        layers = [L for L in range(best - half, best + half + 1) if 0 <= L < n]
    default = run.fit("default")
    reference = default
    if run.config.cap_per_token:  # the same fit replies, one row per reply token at the capped layers
        keep = {it["id"] for it in default.items}
        convs = [r.messages() for r in run.groups["default"] if r.id in keep]
        reference = capture(run.backend, convs, layers=list(layers), reduce="all",
                            batch_size=run.config.capture_batch_size, progress=False)
    return calibrate_cap(run.axis, reference, layers,
                         percentile=run.config.cap_percentile if percentile is None else percentile, kind="floor",
                         reference_name=f"{len(default)} default-assistant replies ({run.preset.name} preset"
                                        f"{', per token' if run.config.cap_per_token else ', reply means'})")


def capping_stage(run: Run, *, progress: bool = True) -> Run:
    """An activation cap calibrated on default-assistant replies over the band around the chosen layer."""
    with _timed(run, "vectors_s"):
        run.cap = calibrate_run_cap(run)
    return run


def write_stage(run: Run, *, progress: bool = True) -> Run:
    """Write the vectors, the cap and ``summary.json``."""
    t = time.time()
    vdir = run.out_dir / "vectors"
    (vdir / "traits").mkdir(parents=True, exist_ok=True)
    run.axis.save(vdir / "assistant_axis.safetensors")
    run.roles.save(vdir / "roles.safetensors")
    run.default.save(vdir / "default.safetensors")
    for name, vec in run.traits.items():
        vec.save(vdir / "traits" / f"{name}.safetensors")
    run.cap.save(vdir / "capping.safetensors")
    run.timings["vectors_s"] = run.timings.get("vectors_s", 0.0) + time.time() - t
    run.summary = summarize(run)
    run.summary.save(run.out_dir / "summary.json")
    return run


PIPELINE_STAGES: tuple[Stage, ...] = (rollouts_stage, judge_stage, capture_stage, vectors_stage, space_stage,
                                      capping_stage, write_stage)


@contextlib.contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold ``out_dir/.run.lock``: a second process writing the same run folder meanwhile is refused with
    :class:`InvalidInputError` (nothing it would write is lost or interleaved: it writes nothing)."""
    out = Path(out_dir)
    with exclusive_lock(out / ".run.lock", f"{out} is being written by another pipeline process; wait for it to "
                        "finish, or give another output folder"):
        yield


def run_stages(run: Run, stages: Sequence[Stage] = PIPELINE_STAGES, *, progress: bool = True) -> Run:
    """Run ``stages`` in order on ``run`` while holding the run folder's lock."""
    with run_lock(run.out_dir):
        for stage in stages:
            run = stage(run, progress=progress)
    return run


def run_pipeline(model: Any, out_dir: str | Path, config: PipelineConfig | None = None, *,
                 progress: bool = True) -> PipelineResult:
    """Run (or resume) the whole pipeline on ``model`` and write every result under ``out_dir``."""
    return run_stages(open_run(model, out_dir, config), PIPELINE_STAGES, progress=progress).result()
