"""persona_axes: persona directions in language models — capture, vectors, persona space, the Assistant Axis,
steering, activation capping and drift monitoring.

"Layer L" means the output of decoder block L (the residual stream after block L), 0-based, everywhere.
"""

__version__ = "0.1.0"

from .activations import Activations
from .backends import BACKENDS, Backend, ModelInfo, make_backend
from .capture import capture
from .chat import MessageSpan, RenderedChat, render_chat
from .datasets import load_default_prompts, load_questions, load_roles, load_traits
from .errors import *  # noqa: F401,F403  (the exception hierarchy is part of the public API)
from .errors import __all__ as _errors
from .extraction import Extraction, extract
from .generation import SamplingConfig, generate_replies
from .interventions import Ablate, ActivationCap, CapConfig, Steer, calibrate_cap
from .models import LoadedModel, default_model_path, find_layers, load_model
from .monitor import DriftReport, LiveMonitor, monitor_transcript
from .space import LayerSweep, PersonaSpace
from .vectors import (
    PersonaVector,
    VectorSet,
    mean_difference,
    mean_vector,
    pca_difference,
    probe_direction,
    purify,
    role_vectors,
    trait_vector,
)

__all__ = [
    "__version__",
    # models, chat, capture
    "load_model", "default_model_path", "find_layers", "LoadedModel", "make_backend", "Backend", "BACKENDS",
    "ModelInfo", "render_chat", "RenderedChat", "MessageSpan", "capture", "Activations", "extract", "Extraction",
    # data and generation
    "load_roles", "load_traits", "load_questions", "load_default_prompts", "SamplingConfig", "generate_replies",
    # vectors and persona space
    "PersonaVector", "VectorSet", "trait_vector", "mean_difference", "pca_difference", "probe_direction",
    "mean_vector", "role_vectors", "purify", "PersonaSpace", "LayerSweep",
    # interventions and monitoring
    "Steer", "Ablate", "ActivationCap", "CapConfig", "calibrate_cap", "monitor_transcript", "LiveMonitor",
    "DriftReport",
    *_errors,
]
