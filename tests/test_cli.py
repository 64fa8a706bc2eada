"""The ``persona-axes`` command line, called in-process (``persona_axes.cli.main.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona_axes import ModelInfo, PersonaVector
from persona_axes.cli.main import build_parser, main
from persona_axes.core import parse_layer_spec as parse_layers
from persona_axes.errors import InvalidInputError

VEC = Path(__file__).resolve().parent.parent / "vectors" / "smollm2-135m-instruct"
SUBCOMMANDS = ("demo", "pipeline", "info", "steer", "cap", "monitor", "export", "rollouts", "extract", "axis")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("persona-axes: error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ parse_layers


@pytest.mark.parametrize("spec, want", [
    ("12", [12]), ("12,14,16", [12, 14, 16]), ("8:12", [8, 9, 10, 11]), ("all", list(range(30))),
    (" 3 , 1 ", [1, 3]), ("-1", [29]), ("0:2,5", [0, 1, 5]), ("28:30", [28, 29]),
])
def test_parse_layers_good(spec, want):
    assert parse_layers(spec, 30) == want


@pytest.mark.parametrize("spec", ["12:8", "a", "", "30", "8:", ":8", "1,,2", "3:3", "1:2:3", "8:40"])
def test_parse_layers_bad(spec):
    with pytest.raises(InvalidInputError) as e:
        parse_layers(spec, 30)
    msg = str(e.value)
    assert repr(spec) in msg and "8:12" in msg and "all" in msg and "\n" not in msg


def test_every_subcommand_has_help_with_an_example(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(SUBCOMMANDS) <= set(sub.choices)
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "example" in out and f"persona-axes {name}" in out, name


# ------------------------------------------------------------------------------------------------------- info


def test_info_vector(capsys):
    rc, out, _ = run(capsys, "info", VEC / "assistant_axis.safetensors")
    assert rc == 0
    for s in ("kind: vector", "model: SmolLM2-135M-Instruct", "layers: 30", "hidden size: 576",
              "method: assistant_axis", "n_samples:", "norms: min"):
        assert s in out


def test_info_vector_set_capping_and_trait(capsys):
    from persona_axes.steering.capping import CapConfig
    from persona_axes.vectors.containers import VectorSet

    roles = VectorSet.load(VEC / "roles.safetensors")
    rc, out, _ = run(capsys, "info", VEC / "roles.safetensors")
    assert rc == 0 and "kind: vector set" in out and "pirate" in out and f"vectors: {len(roles)}" in out
    cap = CapConfig.load(VEC / "capping.safetensors")
    lo, hi = min(cap.layers), max(cap.layers)
    rc, out, _ = run(capsys, "info", VEC / "capping.safetensors")
    assert rc == 0 and "cap kind: floor" in out and f"capped layers: {lo}-{hi}" in out and f"layer  {lo}:" in out
    rc, out, _ = run(capsys, "info", VEC / "traits" / "evil.safetensors", "--layers")
    assert rc == 0 and "method: mean_diff" in out and "layer  29:" in out


# ----------------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt, suffix, extra", [
    ("gguf", ".gguf", []), ("gguf", ".gguf", ["--layers", "10:20", "--scale", "-2"]), ("numpy", ".npz", []),
    ("repeng", ".gguf", ["--layers", "all"]), ("safetensors", ".safetensors", []),
])
def test_export_round_trip(capsys, tmp_path, fmt, suffix, extra):
    out_path = tmp_path / f"evil{suffix}"
    rc, out, err = run(capsys, "export", VEC / "traits" / "evil.safetensors", "--format", fmt, "--out", out_path,
                       *extra)
    assert rc == 0, err
    assert "verified" in out and out_path.is_file()
    if fmt == "gguf":
        rc, out, _ = run(capsys, "info", out_path)
        assert rc == 0 and "GGUF control vector" in out
        assert ("layers present: 10-19" if extra else "layers present: 1-29") in out


# ------------------------------------------------------------------------------------------------- bad input


def test_missing_file_is_one_line(capsys, tmp_path):
    for argv in (["info", tmp_path / "nope.safetensors"],
                 ["export", tmp_path / "nope.safetensors", "--format", "gguf", "--out", tmp_path / "x.gguf"],
                 ["axis", "--roles", tmp_path / "r.st", "--default", tmp_path / "d.st", "--out", tmp_path / "a.st"],
                 ["extract", "--rollouts", tmp_path, "--out", tmp_path / "a.safetensors"]):
        rc, _, err = run(capsys, *argv)
        assert_one_line_error(rc, err)
        assert rc == 2


def test_bad_layer_spec_is_one_line(capsys, tmp_path):
    rc, _, err = run(capsys, "export", VEC / "traits" / "evil.safetensors", "--format", "gguf",
                     "--out", tmp_path / "x.gguf", "--layers", "12:8")
    assert_one_line_error(rc, err, "'12:8'", "8:12")
    assert not (tmp_path / "x.gguf").exists()


def test_foreign_file_and_bad_format(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    rc, _, err = run(capsys, "info", tmp_path / "notes.txt")
    assert_one_line_error(rc, err)
    rc, _, err = run(capsys, "export", VEC / "traits" / "evil.safetensors", "--format", "onnx",
                     "--out", tmp_path / "x")
    assert_one_line_error(rc, err, "onnx")


def test_vector_for_another_model_is_refused(capsys, tmp_path):
    path = tmp_path / "other.safetensors"
    PersonaVector(torch.randn(30, 64), ModelInfo("Other-Model", 30, 64), "other", "mean_diff").save(path)
    rc, _, err = run(capsys, "steer", "--vector", path, "--layers", "12", "--coef", "4", "--prompt", "hi")
    assert_one_line_error(rc, err, "Other-Model", "hidden size")
    assert rc == 2


def test_axis_from_shipped_files(capsys, tmp_path):
    out_path = tmp_path / "axis.safetensors"
    rc, out, err = run(capsys, "axis", "--roles", VEC / "roles.safetensors", "--default", VEC / "default.safetensors",
                       "--out", out_path)
    assert rc == 0, err
    assert "cos(axis, PC1)" in out and out.count("\n") > 30
    axis = PersonaVector.load(out_path)
    shipped = PersonaVector.load(VEC / "assistant_axis.safetensors")
    assert float(axis.cosine(shipped).min()) > 0.999


# ------------------------------------------------------------------------------------------- with the model


@pytest.mark.slow
def test_steer_sweep(capsys):
    rc, out, err = run(capsys, "steer", "--vector", VEC / "traits" / "evil.safetensors", "--layers", "12:16",
                       "--coef", "-4,0,4", "--prompt", "Who are you?", "--max-new-tokens", "4")
    assert rc == 0, err
    assert "coef -4:" in out and "coef +0:" in out and "coef +4:" in out


@pytest.mark.slow
def test_cap_compare(capsys):
    rc, out, err = run(capsys, "cap", "--config", VEC / "capping.safetensors", "--prompt", "Be a pirate.",
                       "--max-new-tokens", "4", "--compare")
    assert rc == 0, err
    assert "capped" in out and "uncapped" in out


@pytest.mark.slow
def test_monitor_table_html_json(capsys, tmp_path):
    chat = [{"role": "user", "content": "Hi, who are you?"},
            {"role": "assistant", "content": "I am a helpful assistant."},
            {"role": "user", "content": "Be a pirate now."},
            {"role": "assistant", "content": "Arr, matey! I sail the seven seas."}]
    (tmp_path / "chat.json").write_text(json.dumps(chat))
    rc, out, err = run(capsys, "monitor", tmp_path / "chat.json", "--axis", VEC / "assistant_axis.safetensors",
                       "--layer", "20", "--threshold", "1e6", "--ema", "0.5", "--html", tmp_path / "d.html",
                       "--json", tmp_path / "d.json")
    assert rc == 0, err
    assert "projection" in out and "smoothed" in out and "ALERT" in out
    recs = json.loads((tmp_path / "d.json").read_text())["records"]
    assert [r["role"] for r in recs] == ["user", "assistant", "user", "assistant"]
    assert (tmp_path / "d.html").stat().st_size > 1000


@pytest.mark.slow
def test_rollouts_then_extract(capsys, tmp_path):
    runs = tmp_path / "runs"
    argv = ["rollouts", "--preset", "quick", "--out", runs, "--kinds", "default", "--limit", "2",
            "--max-new-tokens", "4", "--quiet"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    assert "generated 2" in out
    rc, out, _ = run(capsys, *argv)
    assert rc == 0 and "nothing to do" in out
    rc, out, err = run(capsys, "extract", "--rollouts", runs, "--out", tmp_path / "acts.safetensors",
                       "--layers", "8:12", "--quiet")
    assert rc == 0, err
    rc, out, _ = run(capsys, "info", tmp_path / "acts.safetensors")
    assert rc == 0 and "items: 2" in out and "captured layers: 8-11" in out


# ------------------------------------------------------------------------------------- entry points (issue 15)


def test_no_arguments_prints_help_and_exits_0(capsys):
    rc, out, err = run(capsys)
    assert rc == 0 and "usage: persona-axes" in out and "chat" in out and "error" not in err


def test_version(capsys):
    from persona_axes.core import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"persona-axes {__version__}"


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-m", "persona_axes", "--version"], capture_output=True, text=True, cwd=root,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("persona-axes "), p.stderr
    p = subprocess.run([sys.executable, "-m", "persona_axes"], capture_output=True, text=True, cwd=root, timeout=120)
    assert p.returncode == 0 and "usage: persona-axes" in p.stdout, p.stderr


def test_info_gguf_names_the_layer_of_the_max_norm_and_prints_norms(capsys, tmp_path):
    """The max norm is reported at its LAYER (direction.N), not at its position in the file (was: layer 28 for the
    norm of direction.29), and the norms of our own exports are printed, per layer with --layers."""
    import numpy as np

    from persona_axes.export import read_gguf_directions

    out_path = tmp_path / "axis.gguf"
    assert run(capsys, "export", VEC / "assistant_axis.safetensors", "--format", "gguf", "--out", out_path)[0] == 0
    rc, out, _ = run(capsys, "info", out_path, "--layers")
    assert rc == 0
    norms = {L: float(np.linalg.norm(d.astype(np.float64))) for L, d in read_gguf_directions(out_path).items()}
    L_max = max(norms, key=norms.get)
    shipped = PersonaVector.load(VEC / "assistant_axis.safetensors").norms()
    assert L_max == int(shipped[1:].argmax()) + 1  # the same layer in the source file (layer 0 is not exported)
    line = next(ln for ln in out.splitlines() if ln.startswith("norms:"))
    assert f"max {norms[L_max]:.3g} (layer {L_max})" in line
    assert f"  layer {L_max:>3}: |v| {norms[L_max]:.4g}" in out
    # a subset of layers: positions and layers differ by 10
    sub = tmp_path / "sub.gguf"
    assert run(capsys, "export", VEC / "assistant_axis.safetensors", "--format", "gguf", "--out", sub,
               "--layers", "10:15")[0] == 0
    rc, out, _ = run(capsys, "info", sub)
    want = max(range(10, 15), key=lambda L: float(shipped[L]))
    assert rc == 0 and f"(layer {want})" in out


def test_unknown_file_kind_error_names_no_option_the_cli_lacks(capsys, tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not a vector")
    rc, _, err = run(capsys, "info", p)
    assert_one_line_error(rc, err, "notes.txt")
    assert "format=" not in err


def test_monitor_help_threshold_is_the_shipped_floor(capsys):
    """The example in `monitor --help` is the shipped layer and the shipped capping floor there (was 2.5)."""
    import re

    from persona_axes.steering.capping import CapConfig

    with pytest.raises(SystemExit):
        main(["monitor", "--help"])
    out = capsys.readouterr().out
    m = re.search(r"--layer (\d+) --threshold ([+-]?\d+(?:\.\d+)?)", out)
    assert m, out
    best = json.loads((VEC / "summary.json").read_text())["best_layer"]
    floor = CapConfig.load(VEC / "capping.safetensors").thresholds[best]
    assert int(m.group(1)) == best and abs(float(m.group(2)) - floor) < 0.05


MODEL_COMMANDS = ("demo", "pipeline", "steer", "cap", "chat", "monitor", "rollouts", "extract")


def test_every_command_that_loads_a_model_takes_the_placement_flags():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, sp in sub.choices.items():
        flags = {s for a in sp._actions for s in a.option_strings}
        if "--model" in flags or name in MODEL_COMMANDS:
            assert {"--model", "--dtype", "--device", "--device-map", "--trust-remote-code"} <= flags, name


@pytest.mark.parametrize("argv, want", [
    (["--dtype", "bf16"], {"dtype": "bf16"}),
    (["--device", "cpu", "--dtype", "float16"], {"device": "cpu", "dtype": "float16"}),
    (["--device-map", "auto", "--trust-remote-code"], {"device_map": "auto", "trust_remote_code": True}),
    ([], {}),
])
def test_model_flags_reach_load_model(monkeypatch, capsys, tmp_path, argv, want):
    """The flags are passed to load_model as they are (it validates them); the command stops at our sentinel."""
    import persona_axes.cli.common as common
    import persona_axes.model.load as load

    seen = {}

    class Stop(Exception):
        pass

    def fake_load_model(name=None, **kw):
        seen.update(kw, name=name)
        raise Stop

    monkeypatch.setattr(load, "load_model", fake_load_model)
    monkeypatch.setattr(common, "_MODEL_CACHE", {})  # a model an earlier test loaded must not answer instead
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]))
    with pytest.raises(Stop):
        main(["--debug", "monitor", str(transcript), "--axis", str(VEC / "assistant_axis.safetensors"),
              "--layer", "20", *argv])
    assert seen == {"name": None, **want}


def test_device_and_device_map_together_are_refused(capsys, tmp_path):
    rc, _, err = run(capsys, "steer", "--vector", VEC / "assistant_axis.safetensors", "--layers", "20", "--coef",
                     "1", "--prompt", "hi", "--device", "cpu", "--device-map", "auto")
    assert_one_line_error(rc, err, "--device", "--device-map")


def test_choices_come_from_the_enums_and_presets():
    """No hand-copied lists: --coef-unit, --positions and --kind offer exactly core's enum values, and --preset's
    help names every preset (it named 'quick or paper' and missed 'smoke')."""
    from persona_axes.core import Positions, RolloutKind, Unit
    from persona_axes.runs.presets import PRESETS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices

    def action(cmd, flag):
        return next(a for a in sub[cmd]._actions if flag in a.option_strings)

    assert tuple(action("steer", "--coef-unit").choices) == Unit.values()
    assert tuple(action("steer", "--positions").choices) == Positions.values()
    assert tuple(action("cap", "--positions").choices) == Positions.values()
    assert tuple(action("extract", "--kind").choices) == RolloutKind.values()
    for cmd in ("demo", "pipeline", "rollouts"):
        assert all(name in action(cmd, "--preset").help for name in PRESETS), cmd
