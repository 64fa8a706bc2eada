"""persona_axes.core: option enums, argument checks, layer specs and unit directions, each defined once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from persona_axes.core import (
    CapKind, ModelInfo, Positions, Reduce, Unit, as_choice, check_finite, check_float, check_int, cosine64,
    format_layers, normalize_layers, parse_layer_spec, unit,
)
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError


def test_enums_are_their_strings():
    assert Positions.PROMPT == "prompt" and str(Unit.REL) == "rel"
    assert Reduce.values() == ("mean", "last", "all", "first", "prompt_end")
    assert as_choice(Positions, "generated", "positions") is Positions.GENERATED
    assert as_choice(CapKind, CapKind.FLOOR, "kind") is CapKind.FLOOR


@pytest.mark.parametrize("bad", ["promt", "", None, 1, Unit.RAW])
def test_as_choice_names_the_argument_and_the_choices(bad):
    with pytest.raises(InvalidInputError, match=r"positions=.*all, prompt, generated"):
        as_choice(Positions, bad, "positions")


@pytest.mark.parametrize("bad", [2.0, "2", True, None, torch.tensor(2.0), [2]])
def test_check_int_refuses_what_is_not_an_integer(bad):
    with pytest.raises(InvalidInputError, match="batch_size must be an integer"):
        check_int(bad, "batch_size")


def test_check_int_ranges_and_integer_likes():
    assert check_int(np.int64(3), "n") == 3 and check_int(torch.tensor(4), "n") == 4
    with pytest.raises(InvalidInputError, match="n must be >= 1, got 0"):
        check_int(0, "n", minimum=1)
    with pytest.raises(InvalidInputError, match="n must be <= 5"):
        check_int(6, "n", maximum=5)


@pytest.mark.parametrize("bad,match", [("0.5", "must be a number"), (True, "must be a number"),
                                       (math.nan, "must be finite"), (math.inf, "must be finite"), (None, "must be a number")])
def test_check_float_refusals(bad, match):
    with pytest.raises(InvalidInputError, match=f"coef {match}"):
        check_float(bad, "coef")


def test_check_float_ranges():
    assert check_float(np.float32(0.25), "x") == 0.25 and check_float(torch.tensor(2), "x") == 2.0
    with pytest.raises(InvalidInputError, match="> 0"):
        check_float(0.0, "norm", positive=True)
    with pytest.raises(InvalidInputError, match=">= 0"):
        check_float(-1e-9, "p", nonnegative=True)
    with pytest.raises(InvalidInputError, match="<= 100"):
        check_float(101, "percentile", minimum=0, maximum=100)


def test_check_finite():
    check_finite(torch.ones(3), "v")
    with pytest.raises(InvalidInputError, match="v holds NaN"):
        check_finite(torch.tensor([1.0, float("nan")]), "v")


def test_normalize_layers_against_python_indexing():
    n = 7
    for spec in ([0], [-1], [3, -2, 3], range(2, 5), torch.tensor([1, 6]), 4, torch.tensor(5)):
        items = [spec] if isinstance(spec, int) or (isinstance(spec, torch.Tensor) and spec.ndim == 0) else list(spec)
        expected = sorted({list(range(n))[int(i)] for i in items})
        assert normalize_layers(spec, n) == expected
    assert normalize_layers(None, n) == list(range(n))
    assert normalize_layers("2:4,6", n) == [2, 3, 6]


@pytest.mark.parametrize("bad,err", [([1.0], InvalidInputError), (["1"], InvalidInputError), ([True], InvalidInputError),
                                     ([7], LayerOutOfRangeError), ([-8], LayerOutOfRangeError), ([], InvalidInputError),
                                     (3.0, InvalidInputError), (object(), InvalidInputError)])
def test_normalize_layers_refusals(bad, err):
    with pytest.raises(err):
        normalize_layers(bad, 7)


def test_parse_layer_spec_forms_and_errors():
    assert parse_layer_spec("all", 5) == [0, 1, 2, 3, 4]
    assert parse_layer_spec(" 1, 3:5 ,-1", 6) == [1, 3, 4, 5]
    assert parse_layer_spec("-3:-1", 6) == [3, 4]
    for bad in ["", "x", "3:1", "1,,2", ":3", "9", "2:9"]:
        with pytest.raises(InvalidInputError, match="accepted forms"):
            parse_layer_spec(bad, 6)


def test_format_layers():
    assert format_layers([9, 0, 1, 2, 3, 7, 10]) == "0-3, 7, 9-10"
    assert format_layers([]) == "none"


def test_unit_and_cosine_against_numpy():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4, 16, generator=g)
    ref = v.numpy().astype(np.float64) / np.linalg.norm(v.numpy().astype(np.float64), axis=-1, keepdims=True)
    np.testing.assert_allclose(unit(v).numpy(), ref, rtol=1e-6)
    w = torch.randn(4, 16, generator=g)
    a, b = v.double().numpy(), w.double().numpy()
    np.testing.assert_allclose(cosine64(v, w).numpy(), (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))
    assert cosine64(torch.zeros(3), torch.ones(3)).item() == 0.0
    with pytest.raises(InvalidInputError, match="axis has zero norm at layer 3"):
        unit(torch.zeros(5), "axis", 3)
    with pytest.raises(InvalidInputError, match="NaN"):
        unit(torch.tensor([1.0, float("nan")]), "axis")


def test_model_info_metadata_round_trip_and_mismatch():
    info = ModelInfo("org/Model", 30, 576)
    assert ModelInfo.from_metadata(info.to_metadata()) == info
    info.check_compatible(ModelInfo("model", 30, 576))  # names compare by their last component
    with pytest.raises(ModelMismatchError, match="hidden size 576 here, 640"):
        info.check_compatible(ModelInfo("org/Model", 30, 640))
