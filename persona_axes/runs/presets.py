"""Rollout presets: how big a run is, from a quick CPU try to the paper's scale.

:data:`PRESETS` gives four sizes: ``quick`` (every packaged role, small, for a CPU), ``standard`` (fit and held-out
splits, all trait instruction pairs, greedy and sampled replies; about an hour on 2 CPU cores), ``paper`` (the
paper's scale, for a GPU) and ``smoke`` (a few roles, to try the pipeline). A preset turns into
:class:`~persona_axes.runs.requests.RolloutRequest` records with :meth:`RolloutPreset.build_requests`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from persona_axes.core import RolloutKind, as_choice, check_int
from persona_axes.errors import InvalidInputError
from persona_axes.runs.datasets import Question, Role, Trait
from persona_axes.runs.requests import (
    KINDS,
    RolloutRequest,
    default_requests,
    role_requests,
    select_questions,
    trait_requests,
)
from persona_axes.steering.generation import SamplingConfig

__all__ = ["RolloutPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class RolloutPreset:
    """How many rollouts to make.  ``roles``/``traits``: names, or None for every packaged one; ``questions``:
    how many role/default questions (spread over categories, :func:`select_questions`; None = all);
    ``default_prompts``: how many default-assistant prompts (None = all); ``trait_questions``: extraction
    questions per trait (None = all).

    ``heldout=True`` splits the data (:func:`persona_axes.runs.splits.split_data`): the fit requests use only fit
    roles, prompts and questions (``default_questions`` fit questions for the default Assistant, default: as many
    as ``questions``), and held-out requests (split ``"evaluation"``) are added: held-out roles x held-out prompts
    x ``heldout_questions`` held-out questions, and every default prompt x those questions.  ``greedy_first``: sample
    0 is greedy and samples 1.. use ``temperature`` (seeded per request).  Traits: ``trait_samples`` samples
    (default ``samples``), ``trait_pairs_per_question`` pairs per question (None = every pair),
    ``trait_extra_questions`` general fit questions added to each trait's extraction questions, and
    ``trait_select_questions`` of its evaluation questions (for choosing its layer; the rest stay unseen)."""

    name: str
    roles: tuple[str, ...] | None
    prompts_per_role: int
    questions: int | None
    default_prompts: int | None
    traits: tuple[str, ...] | None
    trait_pairs: int
    trait_questions: int | None
    samples: int
    max_new_tokens: int
    temperature: float
    batch_size: int
    top_p: float = 1.0
    description: str = ""
    heldout: bool = False
    heldout_questions: int | None = None
    default_questions: int | None = None
    greedy_first: bool = False
    trait_samples: int | None = None
    trait_pairs_per_question: int | None = None
    trait_extra_questions: int = 0
    trait_select_questions: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"RolloutPreset.name must be a non-empty string, got {self.name!r}")
        for name in ("prompts_per_role", "trait_pairs", "samples", "max_new_tokens", "batch_size"):
            check_int(getattr(self, name), f"RolloutPreset.{name}", minimum=1)
        for name in ("questions", "default_prompts", "trait_questions", "heldout_questions", "default_questions",
                     "trait_samples", "trait_pairs_per_question"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"RolloutPreset.{name}", minimum=1)
        for name in ("trait_extra_questions", "trait_select_questions"):
            check_int(getattr(self, name), f"RolloutPreset.{name}", minimum=0)
        for name in ("heldout", "greedy_first"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"RolloutPreset.{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("roles", "traits"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not all(isinstance(x, str) and x for x in value):
                    raise InvalidInputError(f"RolloutPreset.{name} must be a tuple of names (or None for all), "
                                            f"got {value!r}")
                object.__setattr__(self, name, tuple(value))
        self.sampling()  # temperature and top_p checked by SamplingConfig

    def sampling(self, seed: int = 0) -> SamplingConfig:
        return SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=seed)

    def sampling_groups(self, requests: Sequence[RolloutRequest], seed: int = 0
                        ) -> list[tuple[list[RolloutRequest], SamplingConfig]]:
        """``requests`` grouped by how they are sampled: with ``greedy_first``, sample 0 greedy and the others at
        the preset's temperature; otherwise one group."""
        requests = list(requests)
        if not self.greedy_first:
            return [(requests, self.sampling(seed))]
        greedy = SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0, seed=seed)
        groups = [([r for r in requests if r.sample == 0], greedy),
                  ([r for r in requests if r.sample > 0], self.sampling(seed))]
        return [(rs, cfg) for rs, cfg in groups if rs]

    def build_requests(
        self,
        *,
        roles: Mapping[str, Role] | None = None,
        questions: Sequence[Question] | None = None,
        default_prompts: Sequence[str] | None = None,
        traits: Mapping[str, Trait] | None = None,
        include: Iterable[str] = KINDS,
    ) -> list[RolloutRequest]:
        """The preset's requests (role, then default, then trait), from the packaged data unless given;
        ``include`` picks some of ``"role"``, ``"default"``, ``"trait"``."""
        from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits
        from persona_axes.runs.splits import split_data

        if isinstance(include, str):
            include = include.split(",")
        include = {as_choice(RolloutKind, k, "include").value for k in include}
        all_qs = list(questions if questions is not None else load_questions())
        all_roles = roles if roles is not None else load_roles()
        prompts = list(default_prompts if default_prompts is not None else load_default_prompts())
        if self.roles is not None:
            unknown = [n for n in self.roles if n not in all_roles]
            if unknown:
                raise InvalidInputError(f"preset {self.name!r} names unknown roles {unknown}")
        chosen_roles = {n: r for n, r in all_roles.items() if self.roles is None or n in self.roles}
        split = split_data(all_roles, all_qs, len(prompts)) if self.heldout else None
        fit_qs = all_qs if split is None else [q for q in all_qs if q.id in split.fit_questions]
        out: list[RolloutRequest] = []
        n_samples = self.samples
        if "role" in include:
            qs = select_questions(fit_qs, self.questions)
            if split is None:
                out += role_requests(chosen_roles, qs, self.prompts_per_role, n_samples)
            else:
                fit = {n: r for n, r in chosen_roles.items() if n in split.fit_roles}
                out += role_requests(fit, qs, samples=n_samples,
                                     prompt_indices=split.fit_prompts[: self.prompts_per_role])
        if "default" in include:
            n_fit = len(prompts) if self.default_prompts is None else min(self.default_prompts, len(prompts))
            idx = list(range(n_fit)) if split is None else list(split.fit_default_prompts[:n_fit])
            qs = select_questions(fit_qs, self.default_questions or self.questions)
            out += default_requests(prompts, qs, n_samples, prompt_indices=idx)
        if split is not None and include & {"role", "default"}:
            held_qs = select_questions([q for q in all_qs if q.id in split.heldout_questions], self.heldout_questions)
            held_roles = {n: r for n, r in chosen_roles.items() if n in split.heldout_roles}
            if "role" in include and held_roles:
                out += role_requests(held_roles, held_qs, samples=n_samples, prompt_indices=split.heldout_prompts,
                                     split="evaluation")
            if "default" in include:
                out += default_requests(prompts, held_qs, n_samples, split="evaluation")
        if "trait" in include:
            all_traits = traits if traits is not None else load_traits(self.traits)
            if traits is not None and self.traits is not None:
                all_traits = {n: traits[n] for n in self.traits}
            t_samples = self.trait_samples or n_samples
            extra = select_questions(fit_qs, self.trait_extra_questions) if self.trait_extra_questions else []
            out += trait_requests(all_traits, "extraction", self.trait_pairs, t_samples, self.trait_questions,
                                  pairs_per_question=self.trait_pairs_per_question, extra_questions=extra)
            if self.trait_select_questions:
                out += trait_requests(all_traits, "evaluation", self.trait_pairs, t_samples,
                                      self.trait_select_questions, pairs_per_question=self.trait_pairs_per_question)
        return out


PRESETS: dict[str, RolloutPreset] = {
    # Sized by measurement of SmolLM2-135M (fp32) on the shared 2-core development CPU, batches of 32 prompts of
    # ~55 tokens, 48 new tokens: 1.6 replies/s with one torch thread (also while other jobs loaded the machine),
    # 0.4-1.2 replies/s with two threads (two threads suffer badly when the cores are shared). This preset's 588
    # requests - 70 roles x 1 prompt x 6 questions (one per category) = 420, 8 default prompts x 6 questions = 48,
    # 12 traits x 1 pair x 2 sides x 5 extraction questions = 120 - took 20 minutes with two threads under load
    # and take about 6-7 minutes with torch.set_num_threads(1).
    # On an idle machine (2 threads) they took 2.0 minutes (4.8 replies/s), and the whole pipeline 3.1 minutes.
    "quick": RolloutPreset(
        name="quick", roles=None, prompts_per_role=1, questions=6, default_prompts=None, traits=None,
        trait_pairs=1, trait_questions=5, samples=1, max_new_tokens=48, temperature=0.0, batch_size=32,
        description="every packaged role with its first prompt, 6 questions (one per category), every default "
                    "prompt, every trait with 1 pair and 5 extraction questions; greedy, 48 new tokens; for a CPU",
    ),
    # Built for issue 12's held-out measurements; about an hour on 2 CPU cores. Fit: 57 roles x prompts 0-2 x 6 fit
    # questions x 2 samples (greedy + one at temperature 0.7) = 2,052; 6 fit default prompts x 24 fit questions x 2 =
    # 288. Held out: 13 roles x prompts 3-4 x 12 held-out questions x 2 = 624; 8 default prompts x 12 x 2 = 192.
    # Traits: 12 x (20 own + 20 general fit questions) x 2 pairs each (all 5 pairs used) x 2 sides = 1,920
    # extraction replies, and 10 evaluation questions x 2 pairs x 2 sides x 12 = 480 for choosing each trait's layer.
    "standard": RolloutPreset(
        name="standard", roles=None, prompts_per_role=3, questions=6, default_prompts=6, traits=None,
        trait_pairs=5, trait_questions=20, samples=2, max_new_tokens=48, temperature=0.7, batch_size=32,
        heldout=True, heldout_questions=12, default_questions=24, greedy_first=True, trait_samples=1,
        trait_pairs_per_question=2, trait_extra_questions=20, trait_select_questions=10,
        description="fit: 57 roles x prompts 0-2 x 6 questions, 6 default prompts x 24 questions, greedy + 1 sample "
                    "at T=0.7; held out: 13 roles x prompts 3-4 x 12 questions and 8 default prompts x 12 questions; "
                    "traits: all 5 pairs, 40 extraction questions per side (2 pairs each), 10 evaluation questions "
                    "for layer choice; 48 new tokens; about an hour on 2 CPU cores",
    ),
    # The papers' scale: all 5 prompts per role, every question, several samples, full-length replies (GPU).
    "paper": RolloutPreset(
        name="paper", roles=None, prompts_per_role=5, questions=None, default_prompts=None, traits=None,
        trait_pairs=5, trait_questions=None, samples=3, max_new_tokens=512, temperature=0.7, batch_size=64,
        top_p=1.0,
        description="every role x 5 prompts x every question x 3 samples, every default prompt, every trait x "
                    "5 pairs x every extraction question; temperature 0.7, 512 new tokens; for a GPU",
    ),
    # A few roles of contrasting families, for trying the whole pipeline (and its report) in about a minute on a
    # CPU, and for the CLI's smoke tests. Too few roles for a meaningful persona space: use `quick` for results.
    "smoke": RolloutPreset(
        name="smoke", roles=("accountant", "therapist", "poet", "pirate", "dragon", "cat", "mob_boss"),
        prompts_per_role=1, questions=3, default_prompts=3, traits=("evil", "optimistic"), trait_pairs=1,
        trait_questions=2, samples=1, max_new_tokens=16, temperature=0.0, batch_size=16,
        description="7 roles (one per family) x 3 questions, 3 default prompts, 2 traits x 2 questions; greedy, "
                    "16 new tokens; a smoke test of the pipeline, not a result",
    ),
}


def get_preset(name: str | RolloutPreset) -> RolloutPreset:
    """The preset called ``name`` (``"quick"``, ``"standard"``, ``"paper"`` or ``"smoke"``); a :class:`RolloutPreset` is returned as is."""
    if isinstance(name, RolloutPreset):
        return name
    if name not in PRESETS:
        raise InvalidInputError(f"unknown rollout preset {name!r}; use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


