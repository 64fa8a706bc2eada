"""The persona-space report: its numbers against the run's files and an independent PCA; the steering sweep against
plain generation; the CLI's demo end to end on SmolLM2 (smoke preset)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from sklearn.decomposition import PCA

import persona_axes as pa
from persona_axes.errors import InvalidInputError
from persona_axes.runs.stages import PipelineConfig, run_pipeline
from persona_axes.viz.report import pipeline_report, steering_sweep, text_summary, write_report
from persona_axes.runs.rollouts import RolloutPreset

from test_cli import run

TINY = RolloutPreset(name="tiny", roles=("pirate", "accountant", "dog", "oracle", "poet"), prompts_per_role=1,
                     questions=3, default_prompts=2, traits=("evil", "humorous"), trait_pairs=1, trait_questions=3,
                     samples=1, max_new_tokens=6, temperature=0.0, batch_size=8)


@pytest.fixture(scope="module")
def result(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = PipelineConfig(preset=TINY, judge="none", min_role_samples=2, min_trait_samples=2, n_components=4)
    return run_pipeline(tiny, out, cfg, progress=False)


def _independent_pc1(result, layer):
    """PC1 loadings of the role vectors at ``layer`` with scikit-learn, signed to point towards the Assistant."""
    roles = result.roles
    X = torch.stack([roles[n].vector[layer] for n in roles.names]).double().numpy()
    pca = PCA(n_components=1).fit(X)
    axis = result.axis.vector[layer].double().numpy()
    sign = 1.0 if float(pca.components_[0] @ axis) >= 0 else -1.0
    return dict(zip(roles.names, (sign * pca.transform(X)[:, 0]).tolist()))


def test_text_summary_matches_files_and_independent_pca(result):
    text = text_summary(result)
    s = json.loads((result.out_dir / "summary.json").read_text())
    L = s["best_layer"]
    rows = [ln.split() for ln in text.splitlines() if re.match(r"^\s+\d+\s+[+-]\d", ln)]
    assert [int(r[0]) for r in rows] == list(range(4))
    for r in rows:
        assert float(r[1]) == pytest.approx(s["pc1_cosine_by_layer"][int(r[0])], abs=5e-4)
    assert [r[0] for r in rows if r[-1] == "<"] == [str(L)]
    pc1 = _independent_pc1(result, L)
    ranked = sorted(pc1, key=lambda n: -pc1[n])
    line = next(ln for ln in text.splitlines() if "most assistant-like" in ln)
    named = re.findall(r"(\w+) [+-]\d", line)
    assert named == ranked[:5]
    for n, v in re.findall(r"(\w+) ([+-]\d+\.\d)", line):
        assert float(v) == pytest.approx(pc1[n], abs=0.051)


def test_report_page_has_every_figure_and_the_numbers(result, tmp_path):
    path = write_report(result, tmp_path / "r.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('class="plotly-graph-div"') == 5
    # plotly.js is inlined once and nothing is fetched: the page opens offline
    assert page.count("window.PlotlyConfig") == 1 and 'src="http' not in page
    s = result.summary
    for L, c in enumerate(s["pc1_cosine_by_layer"]):
        assert f"<td>{L}</td><td>{c:+.3f}</td>" in page
    assert "<tr class=best><td>{}</td>".format(s["best_layer"]) in page
    for name in result.roles.names:
        assert f"<td class=l>{name}</td>" in page
    # a given layer moves the page's centre there; an unfitted one is refused with the fitted list
    assert "Persona map at layer 1" in pipeline_report(result, layer=1)
    with pytest.raises(InvalidInputError, match=r"layer 9 is not one of the fitted layers \[0, 1, 2, 3\]"):
        pipeline_report(result, layer=9)


def test_report_with_plotlyjs_in_the_directory(result, tmp_path):
    """plotly.js written once beside the report instead of 4.8 MB inside it; the page refers to it."""
    inline = write_report(result, tmp_path / "inline.html")
    path = write_report(result, tmp_path / "r.html", plotlyjs="directory")
    page = path.read_text()
    assert (tmp_path / "plotly.min.js").is_file() and 'src="plotly.min.js"' in page
    assert page.count('class="plotly-graph-div"') == 5 and page.count('src="plotly.min.js"') == 1
    assert path.stat().st_size < inline.stat().st_size - 3_000_000


def test_steering_sweep_rows(tiny, result):
    q = "Hello there! How are you today?"
    rows = steering_sweep(tiny, result.axis, 2, [0.0, 4.0, -4.0], question=q, max_new_tokens=6)
    assert [r.coef for r in rows] == [0.0, 4.0, -4.0] and {r.unit for r in rows} == {"unit"}
    plain = pa.generate_replies(tiny, [[{"role": "user", "content": q}]], pa.SamplingConfig(max_new_tokens=6))[0]
    assert rows[0].reply == plain  # the zero row is unsteered
    with pa.Steer(tiny, result.axis.unit(2), layers=[2], coef=-4.0, positions="generated"):
        alone = pa.generate_replies(tiny, [[{"role": "user", "content": q}]], pa.SamplingConfig(max_new_tokens=6))[0]
    assert rows[2].reply == alone  # a row of the batch equals that coefficient run on its own
    with pytest.raises(InvalidInputError, match="coefs is empty"):
        steering_sweep(tiny, result.axis, 2, [], question=q)


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_writes_the_report(smollm, capsys, tmp_path):
    out = tmp_path / "demo"
    rc, text, err = run(capsys, "demo", "--preset", "smoke", "--judge", "none", "--out", out, "--quiet",
                        "--max-new-tokens", "8")
    assert rc == 0, err
    assert len(re.findall(r"^\s+\d+\s+[+-]\d\.\d{3}\s", text, flags=re.M)) == 30  # one row per layer
    assert len(re.findall(r"^\s+[+-]\d\.\d: ", text, flags=re.M)) == 5  # the steering sweep
    page = (out / "report.html").read_text()
    assert page.count('class="plotly-graph-div"') == 5 and "Steering along the Assistant Axis" in page
    # re-running resumes: nothing is generated again
    rc, text, err = run(capsys, "demo", "--preset", "smoke", "--judge", "none", "--out", out, "--quiet", "--no-steer")
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["rollouts_generated_this_run"] == 0
    assert "Steering along" not in (out / "report.html").read_text()
    # the pipeline subcommand on the same folder resumes too, and publishes the vectors with a README
    rc, text, err = run(capsys, "pipeline", "--preset", "smoke", "--judge", "none", "--out", out, "--quiet",
                        "--publish", tmp_path / "pub")
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["rollouts_generated_this_run"] == 0
    axis = pa.PersonaVector.load(tmp_path / "pub" / "assistant_axis.safetensors", model=smollm)
    assert torch.equal(axis.vector, pa.PersonaVector.load(out / "vectors" / "assistant_axis.safetensors").vector)
    assert "## The Assistant Axis and PC1" in (tmp_path / "pub" / "README.md").read_text()


def test_evaluation_sections_from_a_folder_of_results():
    """One section per evaluation result in a folder (as `persona-axes eval --out` writes them), each with the
    result's own headline and one table row per row of its stored table (read here straight from the JSON)."""
    import json

    from persona_axes.viz.report import evaluation_sections

    folder = Path(__file__).resolve().parents[1] / "experiments" / "results" / "evals_smollm2"
    files = sorted(p for p in folder.glob("*.json"))
    assert files, "the shipped evaluation results are missing"
    sections = evaluation_sections(folder)
    assert len(sections) == len(files)
    for (heading, html_text), path in zip(sections, files):
        data = json.loads(path.read_text())
        assert heading and heading in {"Persona drift by conversation type", "Capping against persona jailbreaks",
                                       "Capability cost (lm-eval)", "Prompted vs steered personas"}
        assert html_text.count("<tr>") == len(data["table"]) + 1  # header + one row per table row
    with pytest.raises(pa.InvalidInputError, match="neither a result file nor a folder"):
        evaluation_sections(folder / "missing.json")


def test_report_gains_a_section_per_evaluation_in_the_run_folder(result, tmp_path):
    """Results written by `persona-axes eval --out <run>/evals` appear in the run's report without being asked for."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "experiments" / "results" / "evals_smollm2"
    evals = Path(result.out_dir) / "evals"
    try:
        shutil.copytree(src, evals)
        page = pipeline_report(result)
        for heading in ("Persona drift by conversation type", "Capping against persona jailbreaks",
                        "Capability cost (lm-eval)", "Prompted vs steered personas"):
            assert f"<h2>{heading}</h2>" in page
        assert "Persona drift by conversation type" not in pipeline_report(result, evaluations=[])
    finally:
        shutil.rmtree(evals, ignore_errors=True)
