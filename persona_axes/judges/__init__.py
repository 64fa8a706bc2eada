"""Judges: the protocol, scores and thresholds (:mod:`.base`), the offline :class:`EmbeddingJudge` (:mod:`.embedding`)
and the :class:`HttpJudge` for OpenAI-compatible endpoints (:mod:`.http`)."""

from persona_axes.judges.base import (
    ROLE_ACCEPT_THRESHOLD,
    TRAIT_HIGH_THRESHOLD,
    Judge,
    NoJudge,
    RoleItem,
    RoleScore,
    TraitItem,
    TraitScore,
    accepts_role,
    judge_from_spec,
    keeps_trait_sample,
)
from persona_axes.judges.embedding import EmbeddingJudge
from persona_axes.judges.http import HttpJudge

__all__ = [
    "ROLE_ACCEPT_THRESHOLD", "TRAIT_HIGH_THRESHOLD", "Judge", "NoJudge", "RoleItem", "RoleScore", "TraitItem",
    "TraitScore", "accepts_role", "judge_from_spec", "keeps_trait_sample", "EmbeddingJudge", "HttpJudge",
]
