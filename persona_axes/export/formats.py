"""Transitional: the names of the old ``persona_axes.export.formats`` module, now in :mod:`persona_axes.export`
(dispatch), :mod:`~persona_axes.export.gguf`, :mod:`~persona_axes.export.repeng` and
:mod:`~persona_axes.export.numpy`. Import from :mod:`persona_axes.export`; this module goes once nothing uses it
(cli/common.py, cli/info.py and notebook 02's text still name it)."""

from persona_axes.export import *  # noqa: F403
from persona_axes.export import FORMATS, guess_format  # noqa: F401
