"""Fit and held-out splits of the persona data: which roles, role prompts, questions and default prompts build the
vectors, and which are kept back to measure them.

The split is a pure function of the data (file order), so every run, test and report agrees on it without storing
it anywhere:

* **roles**: within each family, in file order, every ``role_every``-th role (0-based indices 4, 9, ... with the
  default 5) is held out: 13 of the 70 packaged roles (families of 9-11 roles);
* **role prompts**: prompt variants ``0 .. fit_prompts-1`` fit, the rest (3 and 4 of 5) are held out;
* **questions**: within each category, in file order, the last ``heldout_per_category`` questions (6 of 16) are
  held out;
* **default prompts**: the first ``fit_default_prompts`` (0-5, including ``""`` = no system prompt) fit, the rest
  are held out;
* **trait evaluation questions**: the first ``trait_select`` (0-9) choose a trait's layer, the rest (10-19) are
  kept for the steering check only; extraction questions fit.

Held-out replies are what the layer sweep, AUROC and Cohen's d are reported on (and what chooses the layer); the
steering checks use questions that nothing was fitted or selected on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from persona_axes.core import check_int
from persona_axes.errors import InvalidInputError
from persona_axes.runs.datasets import Question, Role

__all__ = ["DataSplit", "split_data"]


@dataclass(frozen=True)
class DataSplit:
    """Names and indices of the fit and held-out parts (see the module docstring for the rule)."""

    fit_roles: tuple[str, ...]
    heldout_roles: tuple[str, ...]
    fit_prompts: tuple[int, ...]
    heldout_prompts: tuple[int, ...]
    fit_questions: tuple[str, ...]
    heldout_questions: tuple[str, ...]
    fit_default_prompts: tuple[int, ...]
    heldout_default_prompts: tuple[int, ...]
    trait_select_questions: tuple[int, ...]
    trait_check_questions: tuple[int, ...]

    def to_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in asdict(self).items()}

    def is_heldout_role_item(self, name: str, prompt_index: int, question_id: str) -> bool:
        """True when a role reply shares nothing with the fit data: held-out role, prompt or question."""
        return (name in self.heldout_roles or prompt_index in self.heldout_prompts
                or question_id in self.heldout_questions)


def split_data(
    roles: Mapping[str, Role],
    questions: Sequence[Question],
    n_default_prompts: int,
    *,
    role_every: int = 5,
    prompts_per_role: int = 5,
    fit_prompts: int = 3,
    heldout_per_category: int = 6,
    fit_default_prompts: int = 6,
    trait_eval_questions: int = 20,
    trait_select: int = 10,
) -> DataSplit:
    """The split of ``roles`` (``{name: Role}`` in file order), ``questions`` and ``n_default_prompts`` default
    prompts. Every part of every split is non-empty, or :class:`InvalidInputError` says which is empty."""
    check_int(role_every, "role_every", minimum=2)
    check_int(prompts_per_role, "prompts_per_role", minimum=2)
    check_int(fit_prompts, "fit_prompts", minimum=1, maximum=prompts_per_role - 1)
    check_int(heldout_per_category, "heldout_per_category", minimum=1)
    check_int(n_default_prompts, "n_default_prompts", minimum=2)
    check_int(fit_default_prompts, "fit_default_prompts", minimum=1, maximum=n_default_prompts - 1)
    check_int(trait_eval_questions, "trait_eval_questions", minimum=2)
    check_int(trait_select, "trait_select", minimum=1, maximum=trait_eval_questions - 1)
    if not isinstance(roles, Mapping):
        raise InvalidInputError(f"roles must be a {{name: Role}} mapping (load_roles()), got {type(roles).__name__}")
    by_family: dict[str, list[str]] = {}
    for name, role in roles.items():
        by_family.setdefault(role.family, []).append(name)
    heldout_roles = {n for names in by_family.values() for i, n in enumerate(names) if i % role_every == role_every - 1}
    by_cat: dict[str, list[str]] = {}
    for q in questions:
        if not isinstance(q, Question):
            raise InvalidInputError(f"questions must hold Question records (load_questions()), got {type(q).__name__}")
        by_cat.setdefault(q.category, []).append(q.id)
    heldout_q = set()
    for cat, ids in by_cat.items():
        if len(ids) <= heldout_per_category:
            raise InvalidInputError(f"category {cat!r} has {len(ids)} questions, too few to hold out "
                                    f"{heldout_per_category} and fit on the rest; lower heldout_per_category")
        heldout_q.update(ids[-heldout_per_category:])
    split = DataSplit(
        fit_roles=tuple(n for n in roles if n not in heldout_roles),
        heldout_roles=tuple(n for n in roles if n in heldout_roles),
        fit_prompts=tuple(range(fit_prompts)),
        heldout_prompts=tuple(range(fit_prompts, prompts_per_role)),
        fit_questions=tuple(q.id for q in questions if q.id not in heldout_q),
        heldout_questions=tuple(q.id for q in questions if q.id in heldout_q),
        fit_default_prompts=tuple(range(fit_default_prompts)),
        heldout_default_prompts=tuple(range(fit_default_prompts, n_default_prompts)),
        trait_select_questions=tuple(range(trait_select)),
        trait_check_questions=tuple(range(trait_select, trait_eval_questions)),
    )
    for part, value in asdict(split).items():
        if not value:
            raise InvalidInputError(f"the split leaves {part} empty (too few roles or questions for role_every="
                                    f"{role_every}); give more data or a larger role_every")
    return split
