"""Shared fixtures: a tiny trained BPE tokenizer with chat templates, tiny random-init models, and the
embedded SmolLM2 (slow; converted once and cached)."""

from __future__ import annotations

import pytest

from helpers import make_tiny_llama

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma-like: no system role, trims content.
NO_SYSTEM = (
    "<bos>{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]

CORPUS = [
    "You are a helpful assistant. You are a pirate who loves the sea.",
    "Hello there! How are you today? I am fine, thank you for asking.",
    "The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9.",
    "What do you think about the meaning of life, the universe and everything?",
    "Arr, matey! The treasure lies beyond the horizon, past the stormy waves.",
    "user assistant system model",
] * 20


def _make_tokenizer(template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<bos>"
    )
    fast.chat_template = template
    return fast


@pytest.fixture(scope="session")
def chatml_tokenizer():
    return _make_tokenizer(CHATML)


@pytest.fixture(scope="session")
def nosystem_tokenizer():
    return _make_tokenizer(NO_SYSTEM)


@pytest.fixture(scope="session")
def tiny(chatml_tokenizer):
    """A LoadedModel: tiny random-init Llama (4 blocks, d=64) with the ChatML test tokenizer."""
    from persona_axes.model.load import LoadedModel, find_layers

    m = make_tiny_llama(len(chatml_tokenizer))
    return LoadedModel(model=m, tokenizer=chatml_tokenizer, name="tiny-llama", layers=find_layers(m))


@pytest.fixture(scope="session")
def smollm():
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from persona_axes import load_model

    return load_model()
