import pytest
import torch

import persona_axes as pa
import steering_helpers as sh
from persona_axes.errors import InvalidInputError, ModelMismatchError
from helpers import conversations
from persona_axes.steering.probe_edit import ProbeEdit
from persona_axes.vectors.probes import LinearProbe


def _probe(info, layer=2, seed=5, bias=0.7):
    g = torch.Generator().manual_seed(seed)
    return LinearProbe(weight=torch.randn(sh.D, generator=g) * 0.05, bias=bias, layer=layer, model=info, name="toy")


def _info(m):
    return pa.capture(m, conversations(1), layers=[0], progress=False).model


def _float64_edit(h, probe, target):
    """The edit written out in float64: h + (target - (w.h + b)) / |w|^2 w; ``target`` a number or ``[batch]``."""
    w = probe.weight.double().to(h.device)
    t = torch.as_tensor(target, dtype=torch.float64, device=h.device)
    t = t.view(-1, 1) if t.ndim == 1 else t
    gap = t - (h.double() @ w + probe.bias)
    return h.double() + gap.unsqueeze(-1) * w / (w @ w)


def _operands(h, probe, target):
    """Elementwise magnitude of what goes into an edited element (bounds float32 rounding): |h_i| + |delta_i| +
    (|h| . |w| + |b| + |t|) |w_i| / |w|^2."""
    w = probe.weight.double().to(h.device)
    t = torch.as_tensor(target, dtype=torch.float64, device=h.device).abs()
    t = t.view(-1, 1) if t.ndim == 1 else t
    h64 = h.double()
    reading = h64.abs() @ w.abs() + abs(probe.bias) + t
    return h64.abs() + (_float64_edit(h, probe, target) - h64).abs() + reading.unsqueeze(-1) * w.abs() / (w @ w)


@pytest.mark.parametrize("target", [3.0, -2.0, [4.0, 0.0, -4.0]])
def test_edit_equals_a_float64_computation_and_sets_the_logit(tiny, target):
    probe = _probe(_info(tiny))
    ids, mask = sh.padded_prompts(tiny, 3)
    before = sh.hook_count(tiny.model)
    raw, got = sh.bracket_block(tiny, [2], lambda: ProbeEdit(tiny, probe, target), lambda: sh.logits(tiny.model, ids, mask))
    assert sh.hook_count(tiny.model) == before
    ref = _float64_edit(raw[2], probe, target)
    off = sh.ulps_off(got[2], ref, _operands(raw[2], probe, target))
    print(f"ProbeEdit block 2 vs float64: {off:.3g} ulps of the operands")
    assert off <= 4.0
    reading = probe.logit(got[2])  # [batch, seq]
    want = torch.as_tensor(target, dtype=torch.float64).view(-1, 1) if isinstance(target, list) else torch.tensor(target)
    assert torch.allclose(reading, want.expand_as(reading).double(), atol=1e-4)
    assert not torch.allclose(probe.logit(raw[2]), reading, atol=1e-2)  # it acted
    # the orthogonal complement is untouched
    u = probe.weight.double() / probe.weight.double().norm()
    perp = lambda h: h.double() - (h.double() @ u).unsqueeze(-1) * u  # noqa: E731
    assert torch.allclose(perp(got[2]), perp(raw[2]), atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_bf16", "tiny_fp16"])
def test_half_precision_edit_is_rounded_once(request, tiny, fixture):
    m = request.getfixturevalue(fixture)
    probe = _probe(_info(tiny))
    ids, mask = sh.padded_prompts(m, 3)
    raw, got = sh.bracket_block(m, [2], lambda: ProbeEdit(m, probe, 2.5), lambda: sh.logits(m.model, ids, mask))
    assert got[2].dtype == m.model.dtype
    off = sh.ulps_off(got[2], _float64_edit(raw[2], probe, 2.5))
    print(f"{fixture} ProbeEdit block 2: {off:.3g} ulps of the result")
    assert off <= 1.0


def test_positions_generated_edits_only_the_last_prompt_token_of_a_fresh_prompt(tiny):
    probe = _probe(_info(tiny))
    ids, mask = sh.padded_prompts(tiny, 2)
    raw, got = sh.bracket_block(tiny, [2], lambda: ProbeEdit(tiny, probe, 5.0, positions="generated"),
                                lambda: sh.logits(tiny.model, ids, mask))
    assert torch.equal(got[2][:, :-1], raw[2][:, :-1])
    assert torch.allclose(probe.logit(got[2][:, -1]), torch.full((2,), 5.0, dtype=torch.float64), atol=1e-4)


def test_hooks_removed_on_error_and_bad_arguments(tiny):
    probe = _probe(_info(tiny))
    before = sh.hook_count(tiny.model)
    with pytest.raises(RuntimeError, match="boom"):
        with ProbeEdit(tiny, probe, 1.0):
            raise RuntimeError("boom")
    assert sh.hook_count(tiny.model) == before
    ids, mask = sh.padded_prompts(tiny, 3)
    with pytest.raises(InvalidInputError, match="target_logit"):
        with ProbeEdit(tiny, probe, [1.0, 2.0]):
            sh.logits(tiny.model, ids, mask)
    assert sh.hook_count(tiny.model) == before
    for bad in (float("nan"), "1", True):
        with pytest.raises(InvalidInputError, match="target_logit"):
            ProbeEdit(tiny, probe, bad)
    with pytest.raises(InvalidInputError, match="LinearProbe"):
        ProbeEdit(tiny, probe.weight, 1.0)
    other = LinearProbe(torch.ones(sh.D), 0.0, 1, pa.ModelInfo("other-model", 4, sh.D))
    with pytest.raises(ModelMismatchError):
        ProbeEdit(tiny, other, 1.0)
    rec = ProbeEdit(tiny, probe, 2.0).record()
    assert rec["type"] == "ProbeEdit" and rec["layers"] == [2] and rec["target_logit"] == 2.0
