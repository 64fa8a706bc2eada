"""The one generation path: batched chat replies with HF ``generate`` (left padding, per-row seeds, the model's own
stop tokens). Rollouts, steering sweeps, monitors and the CLI all generate through :func:`generate_replies`.

Seeds. With ``temperature > 0`` every row samples from its own ``torch.Generator`` (``seeds[i]``; by default
``sampling.seed + i``, ``i`` the conversation's index). Sampling happens in a logits processor that draws each row's
token with that row's generator (temperature, then nucleus top-p), so a reply depends only on its own conversation
and seed: not on its batch neighbours, the batch size or earlier batches (up to the tiny floating-point differences
different padding can cause). ``temperature == 0`` is greedy decoding and ignores seeds.

Stop tokens. A reply ends at the first of ANY stop id: the model's ``generation_config.eos_token_id`` (an int or a
list: Llama-3 instruct lists ``<|eot_id|>`` besides ``<|end_of_text|>``, Gemma ``<end_of_turn>`` besides ``<eos>``)
plus the tokenizer's ``eos_token_id``. The reply text is cut at that token; stop tokens never appear in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from persona_axes.activations.batch import pad_batch, render_all
from persona_axes.activations.readers.base import as_backend
from persona_axes.core import check_float, check_int
from persona_axes.errors import InvalidInputError


@dataclass(frozen=True)
class SamplingConfig:
    """How replies are sampled; recorded with every rollout. ``temperature=0`` means greedy decoding; ``seed`` is
    the run's seed (rows derive their own from it)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check_int(self.max_new_tokens, "max_new_tokens", minimum=1)
        check_float(self.temperature, "temperature", nonnegative=True)
        top_p = check_float(self.top_p, "top_p")
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p}")
        check_int(self.seed, "seed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a reply: ``generation_config.eos_token_id`` (int or list) plus the tokenizer's eos id,
    in that order, without repeats. Never replaces the model's own list."""
    out: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in [*(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]), getattr(tokenizer, "eos_token_id", None)]:
        if isinstance(t, torch.Tensor):
            t = t.tolist()
        if isinstance(t, int) and not isinstance(t, bool) and t not in out:
            out.append(t)
    return out


class RowSampler:
    """A logits processor that samples each row's next token with that row's own ``torch.Generator`` (temperature
    and nucleus top-p applied first) and returns logits that keep only the drawn token, so greedy search emits it.
    A row's draws therefore depend only on its own seed and its own logits, not on its batch."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.seeds = [int(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.generators:  # made on the device the logits come from (the last one, if the model is split)
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            sorted_probs = sorted_logits.softmax(-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # keep the smallest prefix reaching top_p
            drop[..., 0] = False
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return out


def _check_seeds(seeds: Any, n: int) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise InvalidInputError(f"seeds must be a list of integers (one per conversation), got {type(seeds).__name__}")
    if len(seeds) != n:
        raise InvalidInputError(f"seeds has {len(seeds)} entries for {n} conversations; give one per conversation")
    return [check_int(s, f"seeds[{i}]") for i, s in enumerate(seeds)]


def generate_replies(
    model: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    sampling: SamplingConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    """One assistant reply per conversation (each ending with a user message), generated in left-padded batches of
    ``batch_size`` in the order given. ``seeds``: one per conversation for sampled decoding (default
    ``sampling.seed + i``); see the module docstring for seeds and stop tokens. ``progress`` shows a bar per batch.
    ``model`` is a LoadedModel, a Backend or a ``(model, tokenizer)`` pair."""
    sampling = SamplingConfig() if sampling is None else sampling
    if not isinstance(sampling, SamplingConfig):
        raise InvalidInputError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    be = as_backend(model)
    rendered = render_all(be.tokenizer, conversations, add_generation_prompt=True)
    seeds = _check_seeds(seeds, len(rendered))
    if seeds is None:
        seeds = [sampling.seed + i for i in range(len(rendered))]
    hf = be.loaded.model
    stops = stop_token_ids(hf, be.tokenizer)
    out: list[str] = [""] * len(rendered)
    bar = tqdm(total=len(rendered), desc="generating", unit="reply", disable=not progress)
    try:
        for b0 in range(0, len(rendered), batch_size):
            batch = rendered[b0 : b0 + batch_size]
            ids, mask, _ = pad_batch([r.input_ids for r in batch], be.pad_token_id, "left")
            width = ids.shape[1]
            kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=be.pad_token_id,
                                          do_sample=False, temperature=None, top_p=None, top_k=None)
            if stops:
                kwargs["eos_token_id"] = stops
            if sampling.temperature > 0:
                from transformers import LogitsProcessorList

                sampler = RowSampler(seeds[b0 : b0 + len(batch)], sampling.temperature, sampling.top_p)
                kwargs["logits_processor"] = LogitsProcessorList([sampler])
            with torch.inference_mode():
                gen = hf.generate(input_ids=ids.to(be.device), attention_mask=mask.to(be.device), **kwargs)
            for i in range(len(batch)):
                out[b0 + i] = decode_reply(be.tokenizer, gen[i, width:].tolist(), stops)
            bar.update(len(batch))
    finally:
        bar.close()
    return out


def decode_reply(tokenizer: Any, new_ids: Sequence[int], stops: Sequence[int]) -> str:
    """The text of generated ids up to (not including) the first stop id, special tokens dropped, stripped."""
    stop_set = set(stops)
    end = next((k for k, t in enumerate(new_ids) if t in stop_set), len(new_ids))
    return tokenizer.decode(list(new_ids[:end]), skip_special_tokens=True).strip()


__all__ = ["SamplingConfig", "RowSampler", "generate_replies", "decode_reply", "stop_token_ids"]
