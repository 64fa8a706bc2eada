"""Rollout engines: the protocol (:mod:`~persona_axes.engines.base`), in-process HF generation
(:mod:`~persona_axes.engines.hf`) and OpenAI-compatible servers (:mod:`~persona_axes.engines.openai_http`)."""
