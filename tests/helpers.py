"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import torch


def make_tiny_llama(vocab_size: int, n_layers: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def conversations(n: int = 7):
    """Varied multi-turn conversations of different lengths."""
    out = []
    for i in range(n):
        conv = [{"role": "system", "content": "You are a pirate who loves the sea." if i % 2 else "You are a helpful assistant."}]
        for t in range(1 + i % 3):
            conv.append({"role": "user", "content": f"Hello there! How are you today? {'Numbers: 1 2 3. ' * (i + t)}"})
            conv.append({"role": "assistant", "content": "Arr, matey! " * (1 + (i * 3 + t) % 5) + "The treasure lies beyond."})
        out.append(conv)
    return out


def sigkill_when(argv, ready, *, env, timeout: float = 120.0, poll: float = 0.02):
    """Start ``argv`` as a subprocess, SIGKILL it as soon as ``ready()`` is true, and return it (killed).

    Fails the test with the process's stderr if it exits on its own before it was ready to be killed."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(poll)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc


def tiny_loaded():
    """The ``tiny`` fixture's model, built outside pytest (for scripts that tests run in a subprocess)."""
    from conftest import CHATML, _make_tokenizer
    from persona_axes.model.load import LoadedModel, find_layers

    tok = _make_tokenizer(CHATML)
    m = make_tiny_llama(len(tok))
    return LoadedModel(model=m, tokenizer=tok, name="tiny-llama", layers=find_layers(m))


def slow_down(owner, name: str, seconds: float) -> None:
    """Make every call of ``owner.name`` sleep ``seconds`` after it returns, so a test can kill a process mid-way."""
    import time

    real = getattr(owner, name)

    def slow(*args, **kwargs):
        out = real(*args, **kwargs)
        time.sleep(seconds)
        return out

    setattr(owner, name, slow)
