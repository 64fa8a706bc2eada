"""``persona-axes export`` (cli/export.py): a steer baked into a llama.cpp control vector, read back with the gguf
package; the help text; the refusals."""

from __future__ import annotations

import os
import stat

import gguf
import numpy as np
import pytest
import torch

import persona_axes as pa
from persona_axes.activations.container import Activations
from persona_axes.cli.main import main

INFO = pa.ModelInfo("synthetic", 6, 16)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(5)
    vec = pa.PersonaVector(torch.randn(6, 16, generator=g), INFO, "axis", "assistant_axis")
    acts = Activations(values=torch.randn(4, 6, 16, generator=g) * 7, layers=tuple(range(6)),
                       items=[{"i": i} for i in range(4)], model=INFO)
    return vec, vec.save(tmp_path / "axis.safetensors"), acts, acts.save(tmp_path / "acts.safetensors")


def test_export_as_steer_rel(capsys, tmp_path, files):
    """The file equals coef x (mean residual norm at L / |v_L|) x v_L at layer 2 and holds nothing else."""
    vec, vpath, acts, apath = files
    out = tmp_path / "steer.gguf"
    old = os.umask(0o022)
    try:
        rc, stdout, err = run(capsys, "export", vpath, "--format", "gguf", "--out", out, "--layers", "2",
                              "--coef-unit", "rel", "--coef", "-0.3", "--reference", apath)
    finally:
        os.umask(old)
    assert rc == 0, err
    assert "verified" in stdout and "--control-vector" in stdout
    r = gguf.GGUFReader(out)
    assert [t.name for t in r.tensors] == ["direction.2"]
    norm = acts.values[:, 2].double().norm(dim=-1).mean()
    want = -0.3 * norm * vec.vector[2].double() / vec.vector[2].double().norm()
    np.testing.assert_allclose(np.asarray(r.tensors[0].data), want.numpy(), rtol=1e-6, atol=1e-6)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644


def test_export_help_says_how_it_relates_to_steer(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "every other layer" not in text
    assert "--control-vector-scaled FILE:S" in text and "persona-axes steer" in text
    assert "--coef-unit" in text and "--reference" in text


@pytest.mark.parametrize("extra, needle", [
    (["--coef-unit", "rel", "--coef", "0.3"], "needs --reference"),
    (["--coef", "1", "--scale", "2"], "old name of --coef"),
    (["--coef-unit", "rel", "--normalize", "--reference", "x"], "--normalize is --coef-unit unit"),
    (["--coef-unit", "sd", "--coef", "2"], "needs --reference"),
    (["--coef-unit", "gap", "--coef", "2"], "needs a vector file with stored unit statistics"),
])
def test_export_refusals(capsys, tmp_path, files, extra, needle):
    _, vpath, _, _ = files
    rc, _, err = run(capsys, "export", vpath, "--format", "gguf", "--out", tmp_path / "x.gguf", *extra)
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "x.gguf").exists()


def test_export_as_steer_sd_and_gap_from_stored_statistics(capsys, tmp_path, files):
    """A vector with stored unit statistics needs no --reference: the file holds coef x sd (or gap) along the unit
    vector, and --reference measures sd afresh for the same numbers."""
    from persona_axes.vectors.units import unit_stats, with_unit_stats

    vec, _, acts, apath = files
    stats = unit_stats(vec, acts, positive=acts.select([0, 1]), negative=acts.select([2, 3]))
    stats = type(stats)(rel=stats.rel, sd=stats.sd, gap=[abs(g) for g in stats.gap], reference="test")
    vpath = with_unit_stats(vec, stats).save(tmp_path / "with_stats.safetensors")
    for unit in ("sd", "gap"):
        out = tmp_path / f"{unit}.gguf"
        rc, stdout, err = run(capsys, "export", vpath, "--format", "gguf", "--out", out, "--layers", "3",
                              "--coef-unit", unit, "--coef", "2")
        assert rc == 0 and "verified" in stdout, err
        got = np.asarray(gguf.GGUFReader(out).tensors[0].data)
        want = 2 * stats.of(unit)[3] * vec.vector[3].double() / vec.vector[3].double().norm()
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
    rc, _, err = run(capsys, "export", tmp_path / "axis.safetensors", "--format", "gguf", "--out", tmp_path / "r.gguf",
                     "--layers", "3", "--coef-unit", "sd", "--coef", "2", "--reference", apath)
    assert rc == 0, err
    np.testing.assert_allclose(np.asarray(gguf.GGUFReader(tmp_path / "r.gguf").tensors[0].data),
                               np.asarray(gguf.GGUFReader(tmp_path / "sd.gguf").tensors[0].data), rtol=1e-6)
