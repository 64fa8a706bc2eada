"""The one generation path: the model's own stop tokens (issue 11.1), per-row seeds (a row's sample depends only on
its own seed), greedy decoding, argument checks."""

from __future__ import annotations

import pytest
import torch

from persona_axes.activations.batch import render_all
from persona_axes.errors import InvalidInputError
from persona_axes.steering.generation import SamplingConfig, generate_replies, stop_token_ids

QUESTIONS = ["Hello there! How are you today?", "What do you think about the meaning of life?",
             "Tell me about the sea.", "Numbers: 1 2 3 4 5", "Arr, matey!"]


def convs(qs=QUESTIONS):
    return [[{"role": "user", "content": q}] for q in qs]


def plain_generate(tiny, conv, n_new, **kwargs):
    """``model.generate`` on one conversation with the model's own generation_config: the reference."""
    ids = torch.tensor([render_all(tiny.tokenizer, [conv], add_generation_prompt=True)[0].input_ids])
    out = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                              do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def test_stop_ids_of_generation_config_are_kept_not_replaced(tiny):
    """With a second stop id in generation_config, generate_replies stops where model.generate stops; on the old
    code (eos_token_id=[tokenizer.eos]) it ran on past it."""
    conv = convs()[0]
    free = plain_generate(tiny, conv, 20, eos_token_id=[])  # no stop at all: what the model says
    eos = tiny.tokenizer.eos_token_id
    k, stop = next((k, t) for k, t in enumerate(free) if k >= 2 and t != eos and t not in free[:k])
    gc = tiny.model.generation_config
    old = gc.eos_token_id
    try:
        gc.eos_token_id = [old, stop] if isinstance(old, int) else [*old, stop]
        ref = plain_generate(tiny, conv, 20)
        assert ref[-1] == stop and len(ref) == k + 1  # model.generate stops at the added id
        assert stop in stop_token_ids(tiny.model, tiny.tokenizer) and eos in stop_token_ids(tiny.model, tiny.tokenizer)
        got = generate_replies(tiny, [conv], SamplingConfig(max_new_tokens=20))[0]
        want = tiny.tokenizer.decode(free[:k], skip_special_tokens=True).strip()
        assert got == want
        assert tiny.tokenizer.decode([stop]).strip() not in got[len(want):]  # cut at the stop token, never shown
        # in a batch with other rows too
        batch = generate_replies(tiny, convs(), SamplingConfig(max_new_tokens=20), batch_size=5)
        assert batch[0] == want
    finally:
        gc.eos_token_id = old


def test_stop_ids_int_or_list_plus_tokenizer_eos(tiny):
    class GC:
        eos_token_id = 7

    class M:
        generation_config = GC()

    assert stop_token_ids(M(), tiny.tokenizer) == [7, tiny.tokenizer.eos_token_id]
    GC.eos_token_id = [5, tiny.tokenizer.eos_token_id, 9]
    assert stop_token_ids(M(), tiny.tokenizer) == [5, tiny.tokenizer.eos_token_id, 9]
    GC.eos_token_id = None
    assert stop_token_ids(M(), tiny.tokenizer) == [tiny.tokenizer.eos_token_id]


def test_a_sampled_row_depends_only_on_its_own_seed(tiny):
    s = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=0)
    seeds = [11, 12, 13, 14, 15]
    together = generate_replies(tiny, convs(), s, seeds=seeds, batch_size=5)
    alone = [generate_replies(tiny, [c], s, seeds=[sd])[0] for c, sd in zip(convs(), seeds)]
    assert together == alone
    shuffled = generate_replies(tiny, convs()[::-1], s, seeds=seeds[::-1], batch_size=2)
    assert shuffled[::-1] == together
    other = generate_replies(tiny, convs(), s, seeds=[s_ + 100 for s_ in seeds], batch_size=5)
    assert sum(a != b for a, b in zip(other, together)) >= 3  # other seeds, other samples
    # default seeds: sampling.seed + index, whatever the batch size
    assert generate_replies(tiny, convs(), s, batch_size=2) == generate_replies(tiny, convs(), s, batch_size=5)


def test_greedy_is_batch_independent_and_ignores_seeds(tiny):
    g = SamplingConfig(max_new_tokens=8)
    together = generate_replies(tiny, convs(), g, batch_size=5)
    alone = [generate_replies(tiny, [c], g)[0] for c in convs()]
    assert together == alone
    assert generate_replies(tiny, convs(), g, seeds=[1, 2, 3, 4, 5], batch_size=5) == together
    # greedy equals plain model.generate
    ref = plain_generate(tiny, convs()[1], 8)
    stops = stop_token_ids(tiny.model, tiny.tokenizer)
    ref = ref[: next((k for k, t in enumerate(ref) if t in stops), len(ref))]
    assert together[1] == tiny.tokenizer.decode(ref, skip_special_tokens=True).strip()


@pytest.mark.parametrize("kwargs, match", [
    (dict(seeds=[1, 2]), "seeds has 2 entries"),
    (dict(seeds="12345"), "seeds must be a list"),
    (dict(seeds=[1, 2, 3, 4, 5.0]), r"seeds\[4\] must be an integer"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(batch_size="2"), "batch_size must be an integer"),
])
def test_bad_arguments_are_refused(tiny, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        generate_replies(tiny, convs(), SamplingConfig(max_new_tokens=2), **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(max_new_tokens="4"), "max_new_tokens must be an integer"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(seed=1.5), "seed must be an integer"),
])
def test_sampling_config_is_checked(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        SamplingConfig(**kwargs)


def test_sampling_requires_a_sampling_config(tiny):
    with pytest.raises(InvalidInputError, match="sampling must be a SamplingConfig"):
        generate_replies(tiny, convs(), {"max_new_tokens": 2})
