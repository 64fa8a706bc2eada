"""Batch work from the CLI: ``steer``, ``cap`` and ``monitor`` take a file of many conversations (``--input``) and
write JSONL results (``--out``); ``cap --compare`` prints each reply's projection; generation shows a progress bar.
Every result is compared with an independent call of the library on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

import persona_axes as pa
from helpers import conversations
from persona_axes.cli.main import main

CHATS = [
    {"messages": [{"role": "user", "content": "Hello, who are you?"}], "id": "a"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}], "id": "b"},
    {"prompt": "Tell me a joke.", "id": "c"},
]
SAMPLING = pa.SamplingConfig(max_new_tokens=4)


@pytest.fixture(scope="module")
def f(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    folder = d / "tiny-llama"  # the folder name is the model name the files are checked against
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    g = torch.Generator().manual_seed(2)
    axis = pa.PersonaVector(torch.randn(4, 64, generator=g), tiny.info, "tiny_axis", "mean_diff")
    cap = pa.calibrate_cap(axis, pa.capture(tiny, conversations(6), layers=[1, 2], progress=False), [1, 2],
                           percentile=90.0)
    chats = d / "chats.jsonl"
    chats.write_text("\n".join(json.dumps(c) for c in CHATS) + "\n\n")
    convs = [c.get("messages") or [{"role": "user", "content": c["prompt"]}] for c in CHATS]
    return {"dir": d, "model": str(folder), "axis": axis, "axis_path": str(axis.save(d / "axis.safetensors")),
            "cap": cap, "cap_path": str(cap.save(d / "capping.safetensors")), "chats": str(chats), "convs": convs}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_steer_input_jsonl_out(f, tiny, capsys):
    out_path = f["dir"] / "steered.jsonl"
    ref = pa.capture(tiny, conversations(4), layers=[1, 2], which="assistant", reduce="mean", progress=False)
    ref_path = ref.save(f["dir"] / "default_acts.safetensors")  # rel: the mean norm of reply-mean activations
    rc, out, err = run(capsys, "steer", "--model", f["model"], "--vector", f["axis_path"], "--layers", "1,2",
                       "--coef", "-0.5,0.5", "--coef-unit", "rel", "--reference", ref_path, "--input", f["chats"],
                       "--out", out_path, "--max-new-tokens", "4")
    assert rc == 0, err
    assert "generating" in err  # a progress bar on every generate
    recs = read_jsonl(out_path)
    assert len(recs) == 6 and [r["id"] for r in recs] == ["a", "a", "b", "b", "c", "c"]
    assert [r["coef"] for r in recs] == [-0.5, 0.5] * 3 and [r["line"] for r in recs] == [1, 1, 2, 2, 3, 3]
    for c in (-0.5, 0.5):
        with pa.Steer(tiny, f["axis"], [1, 2], c, unit="rel", reference=ref):
            want = pa.generate_replies(tiny, f["convs"], SAMPLING)
        got = [r for r in recs if r["coef"] == c]
        assert [r["reply"] for r in got] == want
        assert [r["messages"] for r in got] == [conv + [{"role": "assistant", "content": w}]
                                                for conv, w in zip(f["convs"], want)]


def test_steer_input_text_file_one_prompt_a_line_prints_replies(f, tiny, capsys):
    prompts = f["dir"] / "prompts.txt"
    prompts.write_text("First question?\n\nSecond question?\n")
    rc, out, err = run(capsys, "steer", "--model", f["model"], "--vector", f["axis_path"], "--layers", "1",
                       "--coef", "2", "--input", prompts, "--max-new-tokens", "4", "--quiet")
    assert rc == 0, err
    assert "generating" not in err  # --quiet
    with pa.Steer(tiny, f["axis"], [1], 2.0):
        want = pa.generate_replies(tiny, [[{"role": "user", "content": q}] for q in
                                          ("First question?", "Second question?")], SAMPLING)
    assert out.count("prompt: ") == 2
    for w in want:
        assert f"coef +2: {w}" in out


def test_cap_input_compare_out_with_projections(f, tiny, capsys):
    out_path = f["dir"] / "capped.jsonl"
    rc, out, err = run(capsys, "cap", "--model", f["model"], "--config", f["cap_path"], "--input", f["chats"],
                       "--compare", "--out", out_path, "--max-new-tokens", "4")
    assert rc == 0, err
    recs = read_jsonl(out_path)
    assert [r["id"] for r in recs] == ["a", "b", "c"]
    with pa.ActivationCap(tiny, f["cap"]):
        capped = pa.generate_replies(tiny, f["convs"], SAMPLING)
    plain = pa.generate_replies(tiny, f["convs"], SAMPLING)
    assert [r["capped"] for r in recs] == capped and [r["uncapped"] for r in recs] == plain
    # the projection of each reply: an independent capture of the conversation with the reply, last message
    u = f["cap"].axis[2].double()
    for r in recs:
        assert r["layer"] == 2 and r["threshold"] == pytest.approx(f["cap"].thresholds[2])
        for key in ("capped", "uncapped"):
            if not r[key].strip():
                assert r[f"projection_{key}"] is None
                continue
            conv = r["messages"] + [{"role": "assistant", "content": r[key]}]
            a = pa.capture(tiny, [conv], layers=[2], which="last_assistant", progress=False)
            assert r[f"projection_{key}"] == pytest.approx(float(a.at(2)[0].double() @ u), abs=1e-4)


def test_cap_compare_prints_each_replys_projection(f, tiny, capsys):
    rc, out, err = run(capsys, "cap", "--model", f["model"], "--config", f["cap_path"], "--prompt", "Hi there",
                       "--compare", "--max-new-tokens", "4", "--projection-layer", "1")
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("projection onto"))
    assert f"at layer 1 (threshold {f['cap'].thresholds[1]:+.3f})" in line
    assert "capped " in line and "| uncapped " in line


def test_monitor_input_out_matches_monitor_transcript(f, tiny, capsys):
    convs = [[{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello! How can I help?"}],
             [{"role": "user", "content": "Be a pirate."}, {"role": "assistant", "content": "Arr, matey."},
              {"role": "user", "content": "More."}, {"role": "assistant", "content": "Yo ho ho."}]]
    src = f["dir"] / "transcripts.jsonl"
    src.write_text("".join(json.dumps({"messages": c, "id": i}) + "\n" for i, c in enumerate(convs)))
    out_path = f["dir"] / "drift.jsonl"
    rc, out, err = run(capsys, "monitor", "--input", src, "--model", f["model"], "--axis", f["axis_path"],
                       "--layer", "2", "--threshold", "0.5", "--out", out_path)
    assert rc == 0, err
    recs = read_jsonl(out_path)
    assert [r["id"] for r in recs] == [0, 1]
    for c, r in zip(convs, recs):
        want = pa.monitor_transcript(tiny, c, f["axis"], 2, threshold=0.5)
        assert [t["projection"] for t in r["records"]] == pytest.approx([t.projection for t in want.records])
        assert r["n_alerts"] == len(want.alerts)
    assert "2 conversation(s)" in out


@pytest.mark.parametrize("lines, needle", [
    (['{"messages": [{"role": "user", "content": "hi"}]}', "{not json"], "line 2 is not valid JSON"),
    (['{"text": "hi"}'], "line 1 must be an object with \"messages\""),
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'],
     "does not end with a user message"),
    (['{"messages": [{"role": "robot", "content": "hi"}]}'], "line 1"),
])
def test_bad_input_files_name_the_line(f, capsys, lines, needle):
    src = f["dir"] / "bad.jsonl"
    src.write_text("\n".join(lines) + "\n")
    rc, _, err = run(capsys, "steer", "--model", f["model"], "--vector", f["axis_path"], "--layers", "1",
                     "--coef", "1", "--input", src)
    assert rc == 2 and needle in err and err.count("persona-axes: error") == 1, err


def test_prompt_and_input_together_are_refused(f, capsys):
    rc, _, err = run(capsys, "cap", "--model", f["model"], "--config", f["cap_path"], "--prompt", "hi",
                     "--input", f["chats"])
    assert rc == 2 and "not both or neither" in err


def test_monitor_html_uses_the_drift_figure_and_shares_plotlyjs(f, capsys):
    src = f["dir"] / "one.json"
    src.write_text(json.dumps([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "And?"}, {"role": "assistant", "content": "Yes."}]))
    html = f["dir"] / "figs" / "drift.html"
    rc, out, err = run(capsys, "monitor", src, "--model", f["model"], "--axis", f["axis_path"], "--layer", "2",
                       "--threshold", "0.25", "--html", html, "--plotlyjs", "directory")
    assert rc == 0, err
    page = html.read_text()
    assert (html.parent / "plotly.min.js").is_file() and 'src="plotly.min.js"' in page
    assert "threshold 0.25" in page and '"tickformat":"d"' in page.replace(" ", "")


def test_rollouts_limit_is_per_kind(f, capsys):
    """`--kinds role,default --limit 2` gives 2 role AND 2 default rollouts (it gave 2 role ones and no default)."""
    from persona_axes.runs.presets import get_preset
    from persona_axes.runs.store import RolloutStore

    out_dir = f["dir"] / "runs"
    rc, out, err = run(capsys, "rollouts", "--model", f["model"], "--preset", "quick", "--out", out_dir,
                       "--kinds", "role,default", "--limit", "2", "--max-new-tokens", "2", "--quiet")
    assert rc == 0, err
    store = list(RolloutStore(out_dir / "rollouts.jsonl"))
    assert sorted(r.kind for r in store) == ["default", "default", "role", "role"]
    want = get_preset("quick").build_requests(include=["role", "default"])
    for kind in ("role", "default"):
        first_two = [q.id for q in want if q.kind == kind][:2]  # the store keeps generation order
        assert {r.id for r in store if r.kind == kind} == set(first_two)
    assert "2 role, 2 default" in err
