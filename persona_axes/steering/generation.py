"""Batched chat generation with HF ``generate`` (left padding, sampling settings recorded)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from persona_axes.activations.readers.base import as_backend
from persona_axes.activations.batch import pad_batch, render_all
from persona_axes.errors import InvalidInputError


@dataclass(frozen=True)
class SamplingConfig:
    """How replies are sampled; recorded with every rollout. ``temperature=0`` means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate_replies(
    model: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    sampling: SamplingConfig | None = None,
    *,
    batch_size: int = 8,
    backend: str = "hf",
) -> list[str]:
    """Generate one assistant reply per conversation (each ending with a user message), in left-padded batches.

    With ``temperature > 0`` the generator is seeded with ``sampling.seed`` once per batch, offset by the batch's
    first index, so a batch's replies do not depend on which batches ran before it.
    """
    sampling = sampling or SamplingConfig()
    be = as_backend(model, backend)
    rendered = render_all(be.tokenizer, conversations, add_generation_prompt=True)
    hf = be.loaded.model
    out: list[str] = [""] * len(rendered)
    eos = [t for t in {getattr(be.tokenizer, "eos_token_id", None)} if isinstance(t, int)]
    for b0 in range(0, len(rendered), batch_size):
        batch = rendered[b0 : b0 + batch_size]
        ids, mask, _ = pad_batch([r.input_ids for r in batch], be.pad_token_id, "left")
        width = ids.shape[1]
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=be.pad_token_id)
        if eos:
            kwargs["eos_token_id"] = eos
        if sampling.temperature > 0:
            torch.manual_seed(sampling.seed + b0)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            gen = hf.generate(input_ids=ids.to(be.device), attention_mask=mask.to(be.device), **kwargs)
        for i in range(len(batch)):
            out[b0 + i] = be.tokenizer.decode(gen[i, width:], skip_special_tokens=True).strip()
    return out


__all__ = ["SamplingConfig", "generate_replies"]
