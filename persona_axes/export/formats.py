"""Transitional: the names of the old ``persona_axes.export.formats`` module, now in :mod:`persona_axes.export`
(dispatch), :mod:`~persona_axes.export.gguf`, :mod:`~persona_axes.export.repeng` and
:mod:`~persona_axes.export.numpy`. Import from :mod:`persona_axes.export`; this module goes once nothing uses it."""

from persona_axes.export import *  # noqa: F403
from persona_axes.export import FORMATS, guess_format  # noqa: F401
from persona_axes.export.gguf import gguf_layers as _gguf_layers  # noqa: F401
from persona_axes.export.gguf_io import read_gguf as _read_gguf  # noqa: F401
from persona_axes.export.repeng import repeng_layers as _repeng_layers  # noqa: F401
