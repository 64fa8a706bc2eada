"""Shipped chat templates on tiny random-weight models of the paper's families (Llama 3, Gemma 2, Qwen 3, Mistral),
each with a tokenizer whose vocabulary holds the family's special tokens: rendering, spans that decode to the message
text, the stop tokens the loader adds to ``generation_config``, and capture against an independent reference."""

from __future__ import annotations

import pytest
import torch
import transformers

import persona_axes as pa
from persona_axes.errors import ChatTemplateError, InvalidInputError
from persona_axes.model.chat import visible_reply
from persona_axes.model.layers import find_layers
from persona_axes.model.load import LoadedModel
from persona_axes.model.templates import install_chat_template, load_chat_template, stop_token_ids

from conftest import _make_tokenizer, reference_block_means

CFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# family: (config class, extra config, special tokens, tokenizer eos, tokenizer bos, expected stop tokens in order)
FAMILIES = {
    "llama3": ("LlamaConfig", {}, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                   "<|eot_id|>"], "<|end_of_text|>", "<|begin_of_text|>",
               ["<|end_of_text|>", "<|eot_id|>"]),
    "gemma2": ("Gemma2Config", {"head_dim": 8}, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
               "<eos>", "<bos>", ["<eos>", "<end_of_turn>"]),
    "qwen3": ("Qwen3Config", {"head_dim": 8}, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
              "<|endoftext|>", "<|endoftext|>", ["<|endoftext|>", "<|im_end|>"]),
    "mistral": ("MistralConfig", {}, ["<unk>", "<s>", "</s>"], "</s>", "<s>", ["</s>"]),
}

GENERATION_PROMPT = {"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "gemma2": "<start_of_turn>model\n",
                     "qwen3": "<|im_start|>assistant\n", "mistral": " [/INST]"}

CONV = [
    {"role": "system", "content": "You are a pirate who loves the sea."},
    {"role": "user", "content": "Hello there! How are you today?"},
    {"role": "assistant", "content": "Arr, matey! The treasure lies beyond the horizon."},
    {"role": "user", "content": "What do you think about the meaning of life?"},
    {"role": "assistant", "content": "I am fine, thank you for asking."},
]


def family_model(family: str) -> LoadedModel:
    cls, extra, specials, eos, bos, _ = FAMILIES[family]
    tok = _make_tokenizer("", specials, eos=eos, pad=specials[0], bos=bos)
    cfg = getattr(transformers, cls)(vocab_size=len(tok), **CFG, **extra)
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(cfg).eval().requires_grad_(False)
    m.generation_config.eos_token_id = tok.eos_token_id
    install_chat_template(tok, m, family)
    return LoadedModel(model=m, tokenizer=tok, name=f"tiny-{family}", layers=find_layers(m))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param, family_model(request.param)


def test_shipped_templates_are_listed_and_loadable(tmp_path):
    assert pa.chat_template_names() == ["gemma2", "gemma3", "llama3", "mistral", "qwen3"]
    text = pa.load_chat_template("gemma3")
    assert "<start_of_turn>" in text
    f = tmp_path / "mine.jinja"
    f.write_text(text)
    assert pa.load_chat_template(f) == pa.load_chat_template(str(f)) == text
    assert pa.load_chat_template("{{ messages }}") == "{{ messages }}"
    with pytest.raises(ChatTemplateError, match="unknown chat template 'llama9'.*gemma2"):
        pa.load_chat_template("llama9")
    with pytest.raises(ChatTemplateError, match="does not exist"):
        pa.load_chat_template(tmp_path / "nope.jinja")
    for bad in (None, 3, ""):
        with pytest.raises(InvalidInputError, match="chat_template"):
            pa.load_chat_template(bad)


def test_stop_tokens_join_the_models_own_never_replace_them(family):
    name, loaded = family
    tok = loaded.tokenizer
    want = [tok.convert_tokens_to_ids(t) for t in FAMILIES[name][5]]
    assert loaded.model.generation_config.eos_token_id == want
    assert stop_token_ids(loaded.model, tok) == want
    if name == "llama3":
        assert len(want) == 2  # several stop ids: <|end_of_text|> and <|eot_id|>


def test_rendering_and_spans_decode_to_the_message_text(family):
    name, loaded = family
    tok = loaded.tokenizer
    r = pa.render_chat(tok, CONV)
    assert len(r.spans) == len(CONV)
    for m, s in zip(CONV, r.spans):
        assert tok.decode(list(r.input_ids[s.start:s.end])).strip() == m["content"], (name, m["role"])
    if name in ("gemma2", "mistral"):  # no system role: the template folds it into the first user turn
        assert r.text.count(CONV[0]["content"] + "\n\n" + CONV[1]["content"]) == 1
        assert "system" not in r.text
    if name == "llama3":
        assert r.text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
        assert r.text.count("<|eot_id|>") == len(CONV)
    gen = pa.render_chat(tok, CONV[:2], add_generation_prompt=True)
    assert gen.text.endswith(GENERATION_PROMPT[name])


def test_capture_equals_independent_reference(family):
    name, loaded = family
    convs = [CONV, CONV[1:3], [CONV[0], CONV[1], {"role": "assistant", "content": "Arr."}]]
    acts = pa.capture(loaded, convs, batch_size=3, progress=False)
    for i, conv in enumerate(convs):
        ref = reference_block_means(loaded, conv)
        assert torch.allclose(acts.values[i], ref, rtol=1e-4, atol=1e-5), name


THINKING = "<think>\nThe user greets me. Stay in character.\n</think>\n\nArr, matey! The treasure lies beyond."


def test_qwen3_thinking_is_not_reply_content():
    """Decision: thinking text does not count as reply content. An assistant span covers the visible reply only,
    whether the template drops past thinking (the shipped qwen3 template) or keeps it (plain ChatML)."""
    loaded = family_model("qwen3")
    tok = loaded.tokenizer
    conv = [CONV[1], {"role": "assistant", "content": THINKING}]
    plain = [CONV[1], {"role": "assistant", "content": visible_reply(THINKING)}]
    assert plain[1]["content"] == "Arr, matey! The treasure lies beyond."
    r = pa.render_chat(tok, conv)
    assert "<think>" not in r.text and "Stay in character" not in r.text
    assert tok.decode(list(r.input_ids[r.spans[1].start:r.spans[1].end])) == "Arr, matey! The treasure lies beyond."
    a = pa.capture(loaded, [conv], progress=False)
    b = pa.capture(loaded, [plain], progress=False)
    assert torch.equal(a.values, b.values)
    # a template that keeps the thinking in the rendering: the span still covers only the visible reply
    keep = LoadedModel(model=loaded.model, tokenizer=_make_tokenizer("", FAMILIES["qwen3"][2], eos="<|im_end|>",
                                                                     pad="<|endoftext|>", bos="<|endoftext|>"),
                       name="tiny-qwen3", layers=loaded.layers)
    keep.tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                                    "{% endfor %}")
    r = pa.render_chat(keep.tokenizer, conv)
    assert "Stay in character" in r.text
    s = r.spans[1]
    assert keep.tokenizer.decode(list(r.input_ids[s.start:s.end])).strip() == "Arr, matey! The treasure lies beyond."
    assert "Stay in character" in keep.tokenizer.decode(list(r.input_ids[:s.start]))


def test_load_model_installs_a_template_and_its_stop_tokens(tiny_checkpoint):
    loaded = pa.load_model(tiny_checkpoint, chat_template="gemma3")
    assert loaded.tokenizer.chat_template == pa.load_chat_template("gemma3")
    eot = loaded.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert eot in loaded.model.generation_config.eos_token_id
    assert loaded.tokenizer.eos_token_id in loaded.model.generation_config.eos_token_id


@pytest.mark.slow
def test_gemma3_generation_stops_at_end_of_turn(gemma3):
    """The stop-token rule on the real model: Gemma's own generation_config lists only <eos> (1); the loader adds the
    template's <end_of_turn> (106), and the one generation path stops there. The LM head is steered by a hook to emit
    one word, then <end_of_turn>, then the word again forever: generation must end after the 2nd token (2 head calls),
    not run on to max_new_tokens."""
    from persona_axes.steering.generation import SamplingConfig, generate_replies

    tok = gemma3.tokenizer
    word = tok.convert_tokens_to_ids("Hello")
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert eot == 106 and 106 in gemma3.model.generation_config.eos_token_id
    calls = []

    def force(module, args, out):
        calls.append(1)
        logits = torch.full_like(out, -1e4)
        logits[..., word if len(calls) != 2 else eot] = 1e4
        return logits

    h = gemma3.model.lm_head.register_forward_hook(force)
    try:
        replies = generate_replies(gemma3, [[{"role": "user", "content": "Say hello."}]],
                                   SamplingConfig(max_new_tokens=12))
    finally:
        h.remove()
    assert replies == ["Hello"]
    assert len(calls) == 2, f"generation ran on past <end_of_turn>: {len(calls)} LM-head calls"
