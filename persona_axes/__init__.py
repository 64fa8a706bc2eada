"""persona_axes: persona directions in language models — capture, vectors, persona space, the Assistant Axis,
steering, activation capping and drift monitoring.

"Layer L" means the output of decoder block L (the residual stream after block L), 0-based, everywhere.
The public API, bottom to top of the house (docs/ARCHITECTURE.md); larger surfaces live in their packages:
``persona_axes.evals`` (behavioural evaluations), ``persona_axes.engines`` (rollout engines),
``persona_axes.runs`` (the pipeline's stages), ``persona_axes.viz`` (figures, report).
"""

import persona_axes.progress  # noqa: F401  (first: quiets tqdm.auto's "IProgress not found" before transformers imports it)
from persona_axes.core import ModelInfo, __version__
from persona_axes.errors import *  # noqa: F401,F403  (the exception hierarchy is part of the public API)
from persona_axes.errors import __all__ as _errors
from persona_axes.files import shipped_vectors_dir
from persona_axes.model.chat import MessageSpan, RenderedChat, render_chat
from persona_axes.model.gguf import convert_gguf
from persona_axes.model.load import LoadedModel, default_model_path, find_layers, load_model
from persona_axes.model.templates import chat_template_names, load_chat_template
from persona_axes.activations.batch import capture
from persona_axes.activations.container import Activations
from persona_axes.activations.extraction import Extraction, extract
from persona_axes.activations.readers import BACKENDS, Backend, make_backend
from persona_axes.vectors.containers import PersonaVector, VectorSet
from persona_axes.vectors.methods import (
    mean_difference, mean_vector, pca_difference, probe_direction, role_vectors, trait_vector,
)
from persona_axes.vectors.probes import LinearProbe, ProbeSweep, probe_sweep
from persona_axes.vectors.purify import purify
from persona_axes.vectors.register import remove_shared_register
from persona_axes.vectors.space import LayerSweep, PersonaSpace
from persona_axes.vectors.units import UnitStats, stats_of, unit_stats, with_unit_stats
from persona_axes.export import export_vector, import_vector
from persona_axes.export.official import import_official_axis, import_official_capping
from persona_axes.steering.capping import ActivationCap, CapConfig, calibrate_cap
from persona_axes.steering.generation import SamplingConfig, generate_replies
from persona_axes.steering.interventions import Ablate, Steer
from persona_axes.steering.probe_edit import ProbeEdit
from persona_axes.steering.monitor import DriftReport, LiveMonitor, monitor_transcript
from persona_axes.runs.datasets import load_default_prompts, load_questions, load_roles, load_traits
from persona_axes.runs.splits import DataSplit, split_data
from persona_axes.evals.intensity import IntensityCurve, calibrate_intensity

__all__ = [
    "__version__",
    # models, chat, capture
    "load_model", "default_model_path", "find_layers", "LoadedModel", "convert_gguf", "chat_template_names",
    "load_chat_template", "make_backend", "Backend", "BACKENDS",
    "ModelInfo", "render_chat", "RenderedChat", "MessageSpan", "capture", "Activations", "extract", "Extraction",
    # data and generation
    "load_roles", "load_traits", "load_questions", "load_default_prompts", "SamplingConfig", "generate_replies",
    "split_data", "DataSplit",
    # vectors and persona space
    "PersonaVector", "VectorSet", "trait_vector", "mean_difference", "pca_difference", "probe_direction",
    "mean_vector", "role_vectors", "purify", "remove_shared_register", "PersonaSpace", "LayerSweep",
    "probe_sweep", "ProbeSweep", "LinearProbe", "UnitStats", "unit_stats", "with_unit_stats", "stats_of",
    # interventions and monitoring
    "Steer", "Ablate", "ProbeEdit", "ActivationCap", "CapConfig", "calibrate_cap", "monitor_transcript",
    "LiveMonitor", "DriftReport", "calibrate_intensity", "IntensityCurve",
    # files: other tools' formats, the paper's published vectors, the vectors shipped with the package
    "export_vector", "import_vector", "import_official_axis", "import_official_capping", "shipped_vectors_dir",
    *_errors,
]
