import pytest
import torch

import persona_axes as pa
import importlib

capture_mod = importlib.import_module("persona_axes.activations.batch")
from persona_axes.errors import (
    ConversationError,
    FileFormatError,
    InvalidInputError,
    LayerOutOfRangeError,
    ModelMismatchError,
    SpanError,
)

from conftest import GEMMA_CONVS, reference_block_means
from helpers import conversations


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _independent(loaded, conv, which_role="assistant", layers=None):
    """Mean of output_hidden_states[L + 1] over the last span of ``which_role``, one sample at a time, plus a
    hook on the last block (whose hidden_states entry is taken after the final norm)."""
    m, tok = loaded
    r = pa.render_chat(tok, conv)
    s = [s for s in r.spans if s.role == which_role][-1]
    last = {}
    h = loaded.layers.blocks[-1].register_forward_hook(lambda mod, a, o: last.setdefault("o", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            hs = m(torch.tensor([r.input_ids]), output_hidden_states=True).hidden_states
    finally:
        h.remove()
    n = loaded.layers.n_layers
    per_layer = [hs[L + 1][0] for L in range(n - 1)] + [last["o"][0]]
    return torch.stack([per_layer[L][s.start : s.end].mean(0) for L in (layers or range(n))])


def test_capture_equals_independent_computation(tiny):
    convs = conversations(5)
    acts = pa.capture(tiny, convs, batch_size=3, progress=False)
    assert acts.values.shape == (5, 4, 64)
    assert acts.layers == (0, 1, 2, 3)
    for i, conv in enumerate(convs):
        ref = _independent(tiny, conv)
        assert torch.allclose(acts.values[i], ref, atol=1e-5, rtol=1e-5)
    assert [it["conversation"] for it in acts.items] == list(range(5))
    assert all(it["role"] == "assistant" for it in acts.items)


def test_batched_equals_one_at_a_time(tiny):
    convs = conversations(7)
    batched = pa.capture(tiny, convs, batch_size=4, progress=False)
    single = pa.capture(tiny, convs, batch_size=1, progress=False)
    assert torch.allclose(batched.values, single.values, atol=1e-5)
    assert batched.items == single.items


@pytest.mark.parametrize("reduce", ["mean", "last", "all"])
def test_left_padding_equals_right_padding(tiny, reduce):
    convs = conversations(7)
    right = pa.capture(tiny, convs, batch_size=7, reduce=reduce, progress=False)
    left = pa.capture(tiny, convs, batch_size=7, reduce=reduce, padding_side="left", progress=False)
    assert torch.allclose(right.values, left.values, atol=1e-5)


def test_last_and_all_reductions(tiny):
    convs = conversations(3)
    mean = pa.capture(tiny, convs, layers=[1, 3], progress=False)
    last = pa.capture(tiny, convs, layers=[1, 3], reduce="last", progress=False)
    allt = pa.capture(tiny, convs, layers=[1, 3], reduce="all", progress=False)
    for ci in range(3):
        rows = allt.where(conversation=ci)
        assert len(rows) == rows.items[0]["n_tokens"]
        assert torch.allclose(rows.values.mean(0), mean.values[ci], atol=1e-5)
        assert torch.equal(rows.values[-1], last.values[ci])
        assert [it["position"] for it in rows.items] == list(range(rows.items[0]["position"], rows.items[0]["position"] + len(rows)))


def test_layer_subset_and_negative_layers(tiny):
    convs = conversations(3)
    full = pa.capture(tiny, convs, progress=False)
    sub = pa.capture(tiny, convs, layers=[2, -1, 0], progress=False)
    assert sub.layers == (0, 2, 3)
    assert torch.allclose(sub.values, full.values[:, [0, 2, 3]], atol=1e-6)
    assert torch.equal(sub.at(-1), sub.values[:, 2])


def test_capture_stops_after_last_layer_and_skips_head(tiny):
    calls = {"head": 0, "block3": 0}
    h1 = tiny.model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    h2 = tiny.layers.blocks[3].register_forward_hook(lambda *a: calls.__setitem__("block3", calls["block3"] + 1))
    try:
        pa.capture(tiny, conversations(2), layers=[0, 1], progress=False)
        assert calls == {"head": 0, "block3": 0}
        pa.capture(tiny, conversations(2), layers=[3], progress=False)
        assert calls == {"head": 0, "block3": 1}
    finally:
        h1.remove(), h2.remove()


def test_which_selects_items(tiny):
    convs = conversations(3)  # 1, 2 and 3 user/assistant pairs
    acts = pa.capture(tiny, convs, which="assistant", progress=False)
    assert len(acts) == 1 + 2 + 3
    assert [it["turn"] for it in acts.items] == [0, 0, 1, 0, 1, 2]
    msgs = pa.capture(tiny, convs, which="messages", metadata=[{"tag": i} for i in range(3)], progress=False)
    assert len(msgs) == sum(len(c) for c in convs)
    assert msgs.where(conversation=2, role="user").items[1]["tag"] == 2


def _hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_exception_inside_capture_leaves_no_hook(tiny, monkeypatch):
    ids = torch.tensor([[5, 6, 7, 8]])
    before = tiny.model(ids).logits
    n_hooks = _hooks(tiny.model)

    def boom(self, flat):
        raise RuntimeError("boom")

    monkeypatch.setattr(capture_mod._Reducer, "__call__", boom)
    with pytest.raises(RuntimeError, match="boom"):
        pa.capture(tiny, conversations(2), progress=False)
    assert _hooks(tiny.model) == n_hooks
    assert torch.equal(tiny.model(ids).logits, before)


def test_save_load_roundtrip_bit_exact(tiny, tmp_path):
    acts = pa.capture(tiny, conversations(3), layers=[1, 2], metadata=[{"label": f"c{i}"} for i in range(3)], progress=False)
    p = acts.save(tmp_path / "acts.safetensors")
    back = pa.Activations.load(p, model=tiny)
    assert torch.equal(back.values, acts.values)
    assert back.layers == acts.layers and back.items == acts.items and back.model == acts.model
    assert back.reduction == "mean"
    # against a model of another shape
    other = pa.ModelInfo(name="tiny-llama", n_layers=6, hidden_size=64)
    with pytest.raises(ModelMismatchError, match="4 layers here, 6 in the model"):
        pa.Activations.load(p, model=other)
    other = pa.ModelInfo(name="tiny-llama", n_layers=4, hidden_size=32)
    with pytest.raises(ModelMismatchError, match="hidden size"):
        pa.Activations.load(p, model=other)


def test_corrupt_and_foreign_files_are_refused(tiny, tmp_path):
    acts = pa.capture(tiny, conversations(2), layers=[1], progress=False)
    p = acts.save(tmp_path / "a.safetensors")
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        pa.Activations.load(tmp_path / "trunc.safetensors")
    from safetensors.torch import save_file

    save_file({"values": torch.zeros(1, 1, 64)}, tmp_path / "foreign.safetensors", metadata={"hello": "x"})
    with pytest.raises(FileFormatError, match="not a persona_axes file"):
        pa.Activations.load(tmp_path / "foreign.safetensors")
    with pytest.raises(FileFormatError, match="no such file"):
        pa.Activations.load(tmp_path / "missing.safetensors")


def test_bad_inputs(tiny):
    convs = conversations(2)
    with pytest.raises(LayerOutOfRangeError, match="0..3"):
        pa.capture(tiny, convs, layers=[4], progress=False)
    with pytest.raises(ConversationError, match="conversation 1.*empty"):
        pa.capture(tiny, [convs[0], []], progress=False)
    with pytest.raises(SpanError, match="conversation 1.*no assistant"):
        pa.capture(tiny, [convs[0], [{"role": "user", "content": "Hi"}]], progress=False)
    with pytest.raises(ConversationError, match="no conversations"):
        pa.capture(tiny, [], progress=False)
    with pytest.raises(InvalidInputError, match="reduce"):
        pa.capture(tiny, convs, reduce="max", progress=False)
    with pytest.raises(InvalidInputError, match="metadata"):
        pa.capture(tiny, convs, metadata=[{}], progress=False)
    with pytest.raises(SpanError, match="no content tokens"):
        pa.capture(tiny, [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]], progress=False)


# -- integration on the embedded SmolLM2 (slow): capture equals an independent computation, on every backend --

SMOLLM_CONVS = [
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


@pytest.mark.slow
def test_smollm_capture_equals_independent_computation(smollm):
    acts = pa.capture(smollm, SMOLLM_CONVS, batch_size=2, progress=False)
    assert acts.values.shape == (3, 30, 576)
    for i, conv in enumerate(SMOLLM_CONVS):
        ref = reference_block_means(smollm, conv)
        rel = (acts.values[i] - ref).norm(dim=-1) / ref.norm(dim=-1)
        assert rel.max() < 1e-5, rel.max()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tlens", "nnsight"])
def test_backends_agree_on_smollm(smollm, backend):
    ref = pa.capture(smollm, SMOLLM_CONVS, batch_size=3, progress=False)
    got = pa.capture(smollm, SMOLLM_CONVS, batch_size=3, backend=backend, progress=False)
    rel = (got.values - ref.values).norm(dim=-1) / ref.values.norm(dim=-1)
    assert rel.max() <= 1e-4, (backend, rel.max())
    assert got.items == ref.items and got.model == ref.model


# -- Gemma 3 270M tier (slow): a second real architecture, through the public GGUF loader ---------------------------

def _max_rel(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@pytest.mark.slow
def test_gemma3_capture_equals_independent_reference_at_every_layer(gemma3):
    acts = pa.capture(gemma3, GEMMA_CONVS, batch_size=3, progress=False)
    assert acts.values.shape == (3, 18, 640) and acts.values.dtype == torch.float32
    worst = max(_max_rel(acts.values[i], reference_block_means(gemma3, conv)) for i, conv in enumerate(GEMMA_CONVS))
    print(f"\ngemma3 capture (batched, right-padded) vs one-at-a-time HF reference: max rel {worst:.2e}")
    assert worst < 1e-4


@pytest.mark.slow
def test_gemma3_last_layer_is_the_raw_block_output_not_the_post_norm_hidden_state(gemma3):
    """Layer 17 (n - 1) is the output of the last block; HF's hidden_states[-1] is after the final norm and differs."""
    conv = GEMMA_CONVS[0]
    acts = pa.capture(gemma3, [conv], layers=[17], progress=False)
    r = pa.render_chat(gemma3.tokenizer, conv)
    s = r.spans[-1]
    got = {}
    h = gemma3.layers.blocks[17].register_forward_hook(lambda mod, a, o: got.setdefault("o", o))
    try:
        with torch.no_grad():
            out = gemma3.model(torch.tensor([r.input_ids], device=gemma3.model.device), output_hidden_states=True)
    finally:
        h.remove()
    raw = (got["o"][0] if isinstance(got["o"], tuple) else got["o"])[0, s.start:s.end].mean(0).float().cpu()
    post_norm = out.hidden_states[-1][0, s.start:s.end].mean(0).float().cpu()
    assert len(out.hidden_states) == 19
    assert _max_rel(acts.at(17)[0], raw) < 1e-5
    assert _max_rel(acts.at(17)[0], post_norm) > 0.1
    normed = gemma3.model.model.norm(got["o"][0] if isinstance(got["o"], tuple) else got["o"])
    assert torch.allclose(normed, out.hidden_states[-1], atol=1e-5)  # hidden_states[-1] == norm(block 17's output)


@pytest.mark.slow
def test_gemma3_batched_equals_one_at_a_time_and_left_equals_right_padding(gemma3):
    one = pa.capture(gemma3, GEMMA_CONVS, batch_size=1, progress=False)
    right = pa.capture(gemma3, GEMMA_CONVS, batch_size=3, padding_side="right", progress=False)
    left = pa.capture(gemma3, GEMMA_CONVS, batch_size=3, padding_side="left", progress=False)
    b, p = _max_rel(right.values, one.values), _max_rel(left.values, right.values)
    print(f"\ngemma3 batched vs one-at-a-time: max rel {b:.2e}; left vs right padding: max rel {p:.2e}")
    assert b < 1e-4 and p < 1e-4
    assert one.items == right.items == left.items


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tlens", "nnsight"])
def test_gemma3_backends_agree(gemma3, backend):
    ref = pa.capture(gemma3, GEMMA_CONVS, batch_size=3, progress=False)
    got = pa.capture(gemma3, GEMMA_CONVS, batch_size=3, backend=backend, progress=False)
    rel = _max_rel(got.values, ref.values)
    print(f"\ngemma3 {backend} vs hf: max rel {rel:.2e}")
    assert rel <= 1e-4, (backend, rel)
    assert got.items == ref.items and got.model == ref.model


# -- dtype and placement: bf16 / fp16 models, and a model dispatched over CPU + disk by accelerate ------------------


@pytest.mark.parametrize("which, vs_float32, vs_same_dtype", [("tiny_bf16", 2e-2, 1e-5), ("tiny_fp16", 3e-3, 5e-4)])
def test_low_precision_capture_is_float32_computed_from_the_models_dtype(request, tiny, which, vs_float32, vs_same_dtype):
    """The same weights in bf16 / fp16 on CPU: capture returns float32 reduced from the hidden states the model computed
    in its own dtype. Stated tolerances (max relative error per row): against the float32 model 2e-2 (bf16; measured
    7.4e-3) and 3e-3 (fp16; measured 9.1e-4); against a one-at-a-time reference in the same dtype 1e-5 (bf16;
    measured 1.2e-7) and 5e-4 (fp16; measured 8.1e-5)."""
    low = request.getfixturevalue(which)
    convs = conversations(7)
    got = pa.capture(low, convs, batch_size=4, progress=False)
    ref32 = pa.capture(tiny, convs, batch_size=4, progress=False)
    same = torch.stack([reference_block_means(low, c) for c in convs])
    assert got.values.dtype == torch.float32 and got.model == ref32.model
    assert _max_rel(got.values, ref32.values) < vs_float32
    assert _max_rel(got.values, same) < vs_same_dtype
    assert _max_rel(got.values, ref32.values) > 0  # it really ran in low precision


@pytest.mark.parametrize("backend", ["hf", "nnsight"])
def test_dispatched_with_disk_offload_captures_the_same_numbers(tiny, tiny_dispatched, backend):
    """accelerate device_map over CPU and disk (blocks 1, 3 and lm_head on disk, their parameters on the meta device,
    every block carrying accelerate's hook): capture equals the undispatched model's exactly."""
    assert all(hasattr(b, "_hf_hook") for b in tiny_dispatched.layers.blocks)
    assert {p.device.type for p in tiny_dispatched.layers.blocks[1].parameters()} == {"meta"}
    convs = conversations(7)
    got = pa.capture(tiny_dispatched, convs, batch_size=4, backend=backend, progress=False)
    ref = pa.capture(tiny, convs, batch_size=4, progress=False)
    assert torch.equal(got.values.cpu(), ref.values.cpu())
    assert got.items == ref.items and got.model == ref.model


def test_dispatched_with_disk_offload_through_transformer_lens(tiny, tiny_checkpoint, tmp_path):
    """TransformerLens cannot shadow a dispatched model and boots its bridge in place (on a model of its own here):
    same numbers within 1e-6 (measured 9e-9 absolute)."""
    from conftest import TINY_OFFLOAD_MAP

    own = pa.load_model(tiny_checkpoint, device_map=TINY_OFFLOAD_MAP, offload_folder=str(tmp_path))
    convs = conversations(5)
    got = pa.capture(own, convs, batch_size=4, backend="tlens", progress=False)
    ref = pa.capture(tiny, convs, batch_size=4, progress=False)
    assert torch.allclose(got.values.cpu(), ref.values.cpu(), rtol=1e-6, atol=1e-6)


def test_public_arguments_are_checked_at_the_boundary(tiny, tmp_path):
    """Types and ranges as a rule: wrong types, floats for integers, unknown enum values (also when read back from a
    file), NaN in values about to be saved: each a typed error naming the argument."""
    from persona_axes.core import ModelInfo, Reduce, Which

    convs = conversations(2)
    for kwargs, err, match in [
        (dict(batch_size=2.0), InvalidInputError, "batch_size"), (dict(batch_size="2"), InvalidInputError, "batch_size"),
        (dict(progress="no"), InvalidInputError, "progress"), (dict(add_generation_prompt=1), InvalidInputError,
                                                                "add_generation_prompt"),
        (dict(reduce="median"), InvalidInputError, "reduce='median'"), (dict(which=1.0), SpanError, "which=1.0"),
        (dict(which=None), SpanError, "which=None"), (dict(layers=["1"]), InvalidInputError, "integers"),
    ]:
        with pytest.raises(err, match=match):
            pa.capture(tiny, convs, **{"progress": False, **kwargs})
    a = pa.capture(tiny, convs, which=Which.ALL, reduce=Reduce.LAST, layers=[0, 1], progress=False)
    b = pa.capture(tiny, convs, which="messages", reduce="last", layers=[0, 1], progress=False)
    assert torch.equal(a.values, b.values) and a.reduction == "last"
    info = ModelInfo("m", 4, 8)
    with pytest.raises(InvalidInputError, match="layers\\[0\\]"):
        pa.Activations(values=torch.zeros(1, 1, 8), layers=(1.5,), items=[{}], model=info)
    with pytest.raises(InvalidInputError, match="reduction='max'"):
        pa.Activations(values=torch.zeros(1, 1, 8), layers=(1,), items=[{}], model=info, reduction="max")
    with pytest.raises(InvalidInputError, match="floating-point tensor"):
        pa.Activations(values=[[[0.0] * 8]], layers=(1,), items=[{}], model=info)
    acts = pa.Activations(values=torch.zeros(2, 1, 8), layers=(1,), items=[{}, {}], model=info)
    with pytest.raises(InvalidInputError, match="layer"):
        acts.at("1")
    with pytest.raises(InvalidInputError, match="index"):
        acts.select([0, 5])
    acts.values[1, 0, 3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        acts.save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()


def _hidden_per_layer(loaded, ids):
    """``[n_layers, seq, d]`` block outputs of one unpadded sequence: output_hidden_states[L + 1], and a hook on
    the last block (its hidden_states entry is taken after the final norm)."""
    last = {}
    h = loaded.layers.blocks[-1].register_forward_hook(lambda mod, a, o: last.setdefault("o", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            hs = loaded.model(torch.tensor([list(ids)]), output_hidden_states=True).hidden_states
    finally:
        h.remove()
    n = loaded.layers.n_layers
    return torch.stack([hs[L + 1][0] for L in range(n - 1)] + [last["o"][0]])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_first_n_reply_tokens_equal_independent_mean(tiny, padding_side):
    convs = conversations(6)
    acts = pa.capture(tiny, convs, reduce="first", first_n=3, batch_size=4, padding_side=padding_side, progress=False)
    assert acts.reduction == "first"
    for i, conv in enumerate(convs):
        r = pa.render_chat(tiny.tokenizer, conv)
        s = [s for s in r.spans if s.role == "assistant"][-1]
        ref = _hidden_per_layer(tiny, r.input_ids)[:, s.start : s.start + 3].mean(1)
        assert torch.allclose(acts.values[i], ref, atol=1e-5, rtol=1e-5)
        assert acts.items[i]["n_reduced"] == 3
    # a window longer than every reply is the reply mean
    long = pa.capture(tiny, convs, reduce="first", first_n=10_000, progress=False)
    mean = pa.capture(tiny, convs, reduce="mean", progress=False)
    assert torch.allclose(long.values, mean.values, atol=1e-6)
    assert [it["n_reduced"] for it in long.items] == [it["n_tokens"] for it in mean.items]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_prompt_end_is_the_last_generation_prompt_token(tiny, padding_side):
    """The token before the reply's content equals the last token of the prompt rendered *without* the reply and
    with the generation prompt (what the model saw when it started the reply), at every layer."""
    convs = conversations(5)
    acts = pa.capture(tiny, convs, reduce="prompt_end", batch_size=2, padding_side=padding_side, progress=False)
    for i, conv in enumerate(convs):
        prompt = pa.render_chat(tiny.tokenizer, conv[:-1], add_generation_prompt=True)
        full = pa.render_chat(tiny.tokenizer, conv)
        n = len(prompt.input_ids)
        assert full.input_ids[:n] == prompt.input_ids  # the reply starts right after the generation prompt
        assert acts.items[i]["position"] == n - 1
        ref = _hidden_per_layer(tiny, prompt.input_ids)[:, -1]
        assert torch.allclose(acts.values[i], ref, atol=1e-5, rtol=1e-5)


def test_new_reductions_check_their_arguments(tiny):
    convs = conversations(2)
    for bad in (0, -1, 2.0, "8", True):
        with pytest.raises(InvalidInputError, match="first_n"):
            pa.capture(tiny, convs, reduce="first", first_n=bad, progress=False)
    with pytest.raises(SpanError, match="prompt_end"):
        pa.capture(tiny, convs, reduce="prompt_end", which="sequence", progress=False)
    meta = capture_mod.item_metadata([pa.render_chat(tiny.tokenizer, c) for c in convs], reduce="first", first_n=2)
    assert [m["n_reduced"] for m in meta] == [2, 2]
