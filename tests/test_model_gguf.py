"""GGUF loading (issue 11.3): ``load_model("x.gguf")``, ``load_model(folder, gguf_file=...)``, the public converter
``convert_gguf`` with its chat-template rule; fast tests on header-only GGUF files written here, and the real path on
Gemma 3 270M (slow; the ``gemma3`` fixture converts it once into the cache)."""

from __future__ import annotations

import pytest
import torch

import persona_axes as pa
from persona_axes.errors import ChatTemplateError, InvalidInputError, ModelLoadError
from persona_axes.model.gguf import convert_gguf, gguf_metadata, resolve_gguf
from persona_axes.model.load import load_model


def _write_gguf(path, *, chat_template=None, arch="llama"):
    """A header-only GGUF file (metadata, no tensors), with string arrays like a tokenizer's to walk past."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.name", "fake model")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    w.add_array("tokenizer.ggml.scores", [0.5] * 10)
    w.add_uint32("tokenizer.ggml.eos_token_id", 7)
    if chat_template is not None:
        w.add_string("tokenizer.chat_template", chat_template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_header_reader_reads_keys_past_arrays(tmp_path):
    f = _write_gguf(tmp_path / "a.gguf", chat_template="{{ messages }}")
    md = gguf_metadata(f, ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "nope"))
    assert md == {"general.architecture": "llama", "tokenizer.chat_template": "{{ messages }}",
                  "tokenizer.ggml.eos_token_id": 7}
    trunc = tmp_path / "t.gguf"
    trunc.write_bytes(f.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="truncated or damaged"):
        gguf_metadata(trunc, ("tokenizer.chat_template",))


def test_gguf_path_is_taken_as_a_gguf_not_as_a_missing_folder(tmp_path, monkeypatch):
    """Old defect: load_model('x.gguf') said the path did not exist. Now it goes to the converter, which here stops
    (before any slow work) because the file has no chat template, and says how to pass one."""
    monkeypatch.setenv("PERSONA_AXES_CACHE", str(tmp_path / "cache"))
    f = _write_gguf(tmp_path / "base.gguf")
    for call in (lambda: load_model(f), lambda: load_model(str(f)), lambda: load_model(tmp_path, gguf_file="base.gguf")):
        with pytest.raises(ChatTemplateError, match="chat_template='<name>'.*gemma3") as e:
            call()
        assert "does not exist" not in str(e.value)
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_convert_gguf_argument_errors(tmp_path):
    f = _write_gguf(tmp_path / "m.gguf")
    with pytest.raises(InvalidInputError, match="gguf_file="):
        resolve_gguf(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_gguf(tmp_path, gguf_file="other.gguf")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        convert_gguf(tmp_path / "not.gguf")
    with pytest.raises(ChatTemplateError, match="unknown chat template 'gemma9'"):
        convert_gguf(f, chat_template="gemma9")
    with pytest.raises(InvalidInputError, match="path"):
        convert_gguf(3)
    with pytest.raises(InvalidInputError, match="name"):
        convert_gguf(f, chat_template="gemma3", name="")


# -- the real path on Gemma 3 270M (slow) ------------------------------------------------------------------------


@pytest.mark.slow
def test_gemma3_loads_from_its_gguf_with_the_supplied_template(gemma3):
    assert gemma3.name == "gemma-3-270m-q4_k_m"
    assert gemma3.layers.n_layers == 18 and gemma3.layers.hidden_size == 640
    assert type(gemma3.model).__name__ == "Gemma3ForCausalLM"
    assert gemma3.model.dtype == torch.float32
    assert gemma3.tokenizer.chat_template == pa.load_chat_template("gemma3")
    end_of_turn = gemma3.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn == 106
    # the stop-token rule: the template's end-of-turn token joins the model's own eos, which stays first
    assert gemma3.model.generation_config.eos_token_id == [1, 106]


@pytest.mark.slow
def test_gemma3_folder_plus_gguf_file_gives_model_and_tokenizer(gemma3):
    """Old defect: gguf_file= reached the model only, so the tokenizer failed. Same file and template: same cached
    folder, no second conversion."""
    from conftest import gemma3_gguf_path

    path = gemma3_gguf_path()
    folder = convert_gguf(path.parent, gguf_file=path.name, chat_template="gemma3")
    assert folder == convert_gguf(path, chat_template="gemma3")
    loaded = load_model(path.parent, gguf_file=path.name, chat_template="gemma3")
    assert len(loaded.tokenizer) == len(gemma3.tokenizer) == 262144
    ids = loaded.tokenizer("The capital of France is")["input_ids"]
    assert ids == [2, 818, 5279, 529, 7001, 563]
    for (k, a), b in zip(loaded.model.state_dict().items(), gemma3.model.state_dict().values()):
        assert torch.equal(a, b.to(a.device)), k
