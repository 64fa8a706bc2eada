"""Persona directions: containers and their files, methods that make them from activations, purification, and
the persona space (PCA over role vectors, the Assistant Axis)."""

from persona_axes.vectors.containers import VECTOR_KIND, VECTOR_SET_KIND, PersonaVector, VectorSet
from persona_axes.vectors.methods import (
    TRAIT_METHODS,
    all_layer_values,
    mean_difference,
    mean_vector,
    pca_difference,
    probe_direction,
    role_vectors,
    trait_vector,
)
from persona_axes.vectors.purify import PURIFY_MODES, PurifyResult, purify

__all__ = ["PersonaVector", "VectorSet", "VECTOR_KIND", "VECTOR_SET_KIND", "TRAIT_METHODS", "all_layer_values",
           "mean_difference", "pca_difference", "probe_direction", "trait_vector", "mean_vector", "role_vectors",
           "PURIFY_MODES", "PurifyResult", "purify"]
