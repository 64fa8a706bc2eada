"""Integration: capture on the embedded SmolLM2 equals an independent computation, on every backend."""

import pytest
import torch

import persona_axes as pa

pytestmark = pytest.mark.slow

CONVS = [
    [{"role": "system", "content": "You are a pirate who sails the seven seas."},
     {"role": "user", "content": "What do you do on a quiet morning?"},
     {"role": "assistant", "content": "Arr, I mend the sails and count me doubloons, then watch the gulls."}],
    [{"role": "user", "content": "Explain photosynthesis in one sentence."},
     {"role": "assistant", "content": "Plants turn light, water and carbon dioxide into sugar and oxygen."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a fun fact about octopuses."},
     {"role": "assistant", "content": "Octopuses have three hearts and blue blood."}],
]


def independent(loaded, conv):
    """Mean of output_hidden_states[L + 1] over the last assistant message's content tokens, one sample at a
    time; the last block is read with a hook on the block itself (its hidden_states entry is post-norm)."""
    m, tok = loaded
    r = pa.render_chat(tok, conv)
    s = [s for s in r.spans if s.role == "assistant"][-1]
    assert tok.decode(list(r.input_ids[s.start:s.end])) == conv[-1]["content"]
    last = {}
    h = loaded.layers.blocks[-1].register_forward_hook(lambda mod, a, o: last.setdefault("o", o))
    try:
        with torch.no_grad():
            hs = m(torch.tensor([r.input_ids]), output_hidden_states=True).hidden_states
    finally:
        h.remove()
    n = loaded.layers.n_layers
    rows = [hs[L + 1][0, s.start:s.end].mean(0) for L in range(n - 1)]
    rows.append(last["o"][0, s.start:s.end].mean(0))
    return torch.stack(rows)


def test_capture_equals_independent_computation(smollm):
    acts = pa.capture(smollm, CONVS, batch_size=2, progress=False)
    assert acts.values.shape == (3, 30, 576)
    for i, conv in enumerate(CONVS):
        ref = independent(smollm, conv)
        rel = (acts.values[i] - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert rel.max() < 1e-5, rel.max()


@pytest.mark.parametrize("backend", ["tlens", "nnsight"])
def test_backends_agree_on_smollm(smollm, backend):
    ref = pa.capture(smollm, CONVS, batch_size=3, progress=False)
    got = pa.capture(smollm, CONVS, batch_size=3, backend=backend, progress=False)
    rel = (got.values - ref.values).norm(dim=-1) / ref.values.norm(dim=-1)
    assert rel.max() <= 1e-4, (backend, rel.max())
    assert got.items == ref.items and got.model == ref.model
