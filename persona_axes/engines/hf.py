"""The in-process engine: HF ``generate`` through the one generation path,
:func:`~persona_axes.steering.generation.generate_replies`.

Requests are rendered with the model's chat template, sorted longest prompt first (ties by id, so the order never
depends on the order given) and generated in batches of ``batch_size``, each row with its own request's seed; each
finished batch is yielded at once.

Token counts: ``generate_replies`` returns texts, so ``completion_tokens`` is the length of the reply text
re-tokenized (cut at the first stop token and stripped). For real tokenizers that is the number of tokens generated
up to a token or two at the edges; for a tokenizer whose decode/encode does not round-trip (random-init test
models) it can be larger. ``finish_reason`` is ``"length"`` when that count reaches ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from persona_axes.activations.batch import render_all
from persona_axes.activations.readers.base import as_backend
from persona_axes.core import check_int
from persona_axes.engines.base import Engine, EngineReply, EngineRequest, check_requests, check_sampling
from persona_axes.steering.generation import SamplingConfig, generate_replies

__all__ = ["HFEngine"]


class HFEngine(Engine):
    """Generate in this process with a loaded model (a LoadedModel, Backend or ``(model, tokenizer)`` pair).

    ``name`` (default: the model's name) is what rollouts record as their model.
    """

    def __init__(self, model: Any, *, batch_size: int = 16, name: str | None = None):
        self.backend = as_backend(model)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.name = str(self.backend.info.name) if name is None else str(name)

    def stream(self, requests: Sequence[EngineRequest], sampling: SamplingConfig | None = None
               ) -> Iterator[list[EngineReply]]:
        requests = check_requests(requests)
        sampling = check_sampling(sampling)
        if not requests:
            return
        be = self.backend
        rendered = render_all(be.tokenizer, [list(r.messages) for r in requests], add_generation_prompt=True)
        order = sorted(range(len(requests)), key=lambda i: (-len(rendered[i]), requests[i].id))
        for b0 in range(0, len(order), self.batch_size):
            idx = order[b0 : b0 + self.batch_size]
            texts = generate_replies(be, [rendered[i] for i in idx], sampling, seeds=[requests[i].seed for i in idx],
                                     batch_size=len(idx))
            group = []
            for i, text in zip(idx, texts):
                n = len(be.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
                group.append(EngineReply(requests[i].id, text, n, "length" if n >= sampling.max_new_tokens else "stop",
                                         prompt_tokens=len(rendered[i])))
            yield group
