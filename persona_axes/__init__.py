"""persona_axes: persona directions in language models — capture, vectors, persona space, the Assistant Axis,
steering, activation capping and drift monitoring.

"Layer L" means the output of decoder block L (the residual stream after block L), 0-based, everywhere.
"""

__version__ = "0.1.0"

from .activations import Activations
from .backends import BACKENDS, Backend, ModelInfo, make_backend
from .capture import capture
from .chat import MessageSpan, RenderedChat, render_chat
from .errors import *  # noqa: F401,F403  (the exception hierarchy is part of the public API)
from .errors import __all__ as _errors
from .models import LoadedModel, default_model_path, find_layers, load_model

__all__ = [
    "__version__",
    "Activations",
    "BACKENDS",
    "Backend",
    "LoadedModel",
    "MessageSpan",
    "ModelInfo",
    "RenderedChat",
    "capture",
    "default_model_path",
    "find_layers",
    "load_model",
    "make_backend",
    "render_chat",
    *_errors,
]
