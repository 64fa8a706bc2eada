"""Probe editing at inference, after *Probing then Editing*: set a linear probe's logit to a target value.

:class:`ProbeEdit` moves each edited token's block output ``h [d]`` (at the probe's layer) along the probe's normal
``w`` until the probe reads ``target``: ``h <- h + (target - (w . h + b)) / |w|^2 * w``. Afterwards
``w . h + b = target`` exactly (up to rounding); the components orthogonal to ``w`` are untouched, so the edit is
the smallest change (in L2) that gives the probe that reading. ``target`` is a logit: ``0`` is the probe's
boundary, ``+4`` is a confident trait reading (sigmoid 0.98), ``-4`` a confident non-trait one.

Built on the hook base of :mod:`persona_axes.steering.interventions` (positions, composition, placement, and the
float32 edit rounded once to the block's dtype, as :class:`~persona_axes.steering.interventions.Steer` and
:class:`~persona_axes.steering.capping.ActivationCap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from persona_axes.errors import InvalidInputError
from persona_axes.core import Positions
from persona_axes.steering.interventions import Intervention, coef_tensor
from persona_axes.vectors.probes import LinearProbe

__all__ = ["ProbeEdit"]


class ProbeEdit(Intervention):
    """Set the logit of ``probe`` (a :class:`~persona_axes.vectors.probes.LinearProbe`) to ``target_logit`` at
    the chosen positions of the output of block ``probe.layer``. ``target_logit``: a number, or a ``[batch]``
    tensor / list with one target per batch row. ``positions`` / ``prompt_length`` as for
    :class:`~persona_axes.steering.interventions.Steer`."""

    def __init__(self, model: Any, probe: LinearProbe, target_logit: float | Sequence[float] | torch.Tensor,
                 *, positions: Positions | str = "all", prompt_length: int | None = None):
        if not isinstance(probe, LinearProbe):
            raise InvalidInputError(f"probe must be a LinearProbe (from probe_sweep), got {type(probe).__name__}")
        super().__init__(model, probe.layer, positions, prompt_length)
        probe.model.check_compatible(self.info, what=f"the probe {probe.name!r}")
        self.probe = probe
        self.target = coef_tensor(target_logit, "target_logit")
        w64 = probe.weight.double()
        self.weight = probe.weight  # [d] float32
        self.step = (w64 / (w64 @ w64)).to(torch.float32)  # w / |w|^2: one logit unit along the normal
        self.bias = torch.tensor(probe.bias, dtype=torch.float32)

    def edit(self, layer, hidden, mask):
        w = self.on_block(self.weight, hidden)
        step = self.on_block(self.step, hidden)
        t = self.on_block(self.target, hidden)
        if t.ndim == 1:
            if t.shape[0] != hidden.shape[0]:
                raise InvalidInputError(f"target_logit has {t.shape[0]} entries but the batch has {hidden.shape[0]} "
                                        "rows; pass one per row")
            t = t.view(-1, 1)
        gap = t - (hidden @ w + self.on_block(self.bias, hidden))  # [batch, seq]
        delta = gap.unsqueeze(-1) * step
        if mask is not None:
            delta = delta * mask.to(hidden.dtype)
        return hidden + delta

    def record(self):
        return {**super().record(), "probe": self.probe.name, "target_logit": self.target.tolist()}
