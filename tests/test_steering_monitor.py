import json

import pytest
import torch

import persona_axes as pa
from persona_axes.errors import ConversationError, FileFormatError, InvalidInputError, LayerOutOfRangeError
from persona_axes.steering.generation import SamplingConfig
from persona_axes.steering.capping import calibrate_cap
from persona_axes.steering.monitor import LiveMonitor, load_transcript, monitor_transcript

from helpers import conversations

D = 64


def _axis():
    return torch.randn(4, D, generator=torch.Generator().manual_seed(7))


def test_projections_equal_capturing_each_turn_separately(tiny):
    conv = conversations(3)[2]
    axis = _axis()
    rep = monitor_transcript(tiny, conv, axis, layer=2)
    u = axis[2] / axis[2].norm()
    assert [r.role for r in rep.records] == [m["role"] for m in conv if m["role"] != "system"]
    for r in rep.records:
        single = pa.capture(tiny, [conv], layers=[2], which=r.message, progress=False)
        assert r.projection == pytest.approx(float(single.at(2)[0] @ u), abs=1e-4)
        assert r.text == conv[r.message]["content"]


def test_ema_and_dead_band_alerts(tiny):
    conv = conversations(3)[2]
    axis = _axis()
    raw = [r.projection for r in monitor_transcript(tiny, conv, axis, layer=2, roles=("assistant",)).records]
    rep = monitor_transcript(tiny, conv, axis, layer=2, roles=("assistant",), ema=0.5, threshold=sorted(raw)[1])
    expect, s = [], None
    for x in raw:  # independent EMA
        s = x if s is None else 0.5 * x + 0.5 * s
        expect.append(s)
    assert [r.smoothed for r in rep.records] == pytest.approx(expect)
    assert [r.alert for r in rep.records] == [v < sorted(raw)[1] for v in expect]
    # dead band: an alert stays on until the value is back past threshold + width
    from persona_axes.steering.monitor import _Smoother

    sm = _Smoother(threshold=0.0, direction="below", ema=None, dead_band=1.0)
    assert [sm(x)[1] for x in [1.0, -0.5, 0.5, 1.2, -0.1]] == [False, True, True, False, True]


def test_transcript_files_and_errors(tiny, tmp_path):
    conv = conversations(2)[1]
    (tmp_path / "t.json").write_text(json.dumps({"messages": conv}))
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(m) for m in conv))
    assert load_transcript(tmp_path / "t.json") == conv == load_transcript(tmp_path / "t.jsonl")
    rep = monitor_transcript(tiny, tmp_path / "t.jsonl", _axis(), layer=1)
    assert len(rep.assistant()) == 2
    with pytest.raises(ConversationError, match="no assistant turn"):
        monitor_transcript(tiny, [{"role": "user", "content": "hi"}], _axis(), layer=1)
    with pytest.raises(InvalidInputError, match="threshold"):
        monitor_transcript(tiny, conv, _axis(), layer=1, threshold=float("nan"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="not valid JSON"):
        load_transcript(tmp_path / "bad.json")
    with pytest.raises(FileFormatError, match="no such"):
        load_transcript(tmp_path / "missing.json")


def test_report_dataframe_and_figure(tiny):
    rep = monitor_transcript(tiny, conversations(3)[2], _axis(), layer=2, threshold=0.0)
    df = rep.to_dataframe()
    assert list(df["projection"]) == [r.projection for r in rep.records]
    fig = rep.figure()
    assert len(fig.data) >= 2 and fig.layout.title.text.startswith("Projection onto")
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"  # whole turns
    assert "threshold +0 (below)" in fig.layout.annotations[0].text  # the threshold's value is shown


def test_live_monitor_with_cap_matches_offline(tiny):
    axis = _axis()
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.model.modules())
    ref = pa.capture(tiny, conversations(5), which="messages", progress=False)
    cap = calibrate_cap(axis, ref, layers=[1, 2], percentile=50)
    mon = LiveMonitor(tiny, axis, layer=2, system="You are a pirate.", cap=cap, sampling=SamplingConfig(max_new_tokens=4))
    r1 = mon.say("Hello there! How are you today?")
    r2 = mon.say("What do you think about the sea?")
    assert (r1.role, r2.role, r1.turn, r2.turn) == ("assistant", "assistant", 0, 1)
    assert len(mon.messages) == 5 and len(mon.report().records) == 4
    offline = monitor_transcript(tiny, mon.messages, axis, layer=2)
    assert [r.projection for r in offline.records] == pytest.approx([r.projection for r in mon.report().records], abs=1e-4)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.model.modules())
    assert hooks == hooks_before  # (transformers itself may keep output-recording hooks)


# -- bad inputs: every public argument is checked at the boundary, with a typed error naming it -------------------
@pytest.mark.parametrize("change, error, needle", [
    ({"layer": "2"}, InvalidInputError, "layer must be an integer"),
    ({"layer": 2.0}, InvalidInputError, "layer must be an integer"),
    ({"layer": True}, InvalidInputError, "layer must be an integer"),
    ({"layer": 4}, LayerOutOfRangeError, "layer 4 is out of range"),
    ({"threshold": "1.0"}, InvalidInputError, "threshold must be a number"),
    ({"threshold": float("-inf")}, InvalidInputError, "threshold must be a number"),
    ({"direction": 1}, InvalidInputError, "direction must be 'below' or 'above'"),
    ({"ema": "0.5"}, InvalidInputError, "ema must be a number"),
    ({"ema": 1.5}, InvalidInputError, "ema must be in (0, 1]"),
    ({"ema": float("nan")}, InvalidInputError, "ema must be finite"),
    ({"dead_band": "1"}, InvalidInputError, "dead_band must be a number"),
    ({"dead_band": float("nan")}, InvalidInputError, "dead_band must be finite"),
    ({"roles": "assistant"}, InvalidInputError, "roles must be a non-empty list"),
    ({"roles": [1]}, InvalidInputError, "roles must be a non-empty list"),
    ({"roles": [["assistant"]]}, InvalidInputError, "roles must be a non-empty list"),
    ({"backend": "jax"}, InvalidInputError, "unknown backend 'jax'"),
    ({"axis": torch.zeros(D)}, InvalidInputError, "axis has zero norm at layer 2"),
    ({"axis": "assistant_axis"}, InvalidInputError, "axis must be a PersonaVector or a tensor"),
    ({"messages": 42}, ConversationError, ""),
])
def test_monitor_transcript_refuses_bad_arguments(tiny, change, error, needle):
    kw = {"messages": conversations(2)[1], "axis": _axis(), "layer": 2, **change}
    with pytest.raises(error) as e:
        monitor_transcript(tiny, kw.pop("messages"), kw.pop("axis"), **kw)
    assert type(e.value) is error and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("change, needle", [
    ({"layer": "2"}, "layer must be an integer"),
    ({"cap": "capping.safetensors"}, "cap must be a CapConfig"),
    ({"sampling": {"max_new_tokens": 4}}, "sampling must be a SamplingConfig"),
    ({"system": 3}, "system must be a string"),
    ({"ema": 0}, "ema must be in (0, 1]"),
])
def test_live_monitor_refuses_bad_arguments(tiny, change, needle):
    kw = {"axis": _axis(), "layer": 2, **change}
    with pytest.raises(InvalidInputError) as e:
        LiveMonitor(tiny, kw.pop("axis"), **kw)
    assert needle in str(e.value), str(e.value)
    mon = LiveMonitor(tiny, _axis(), layer=2)
    with pytest.raises(InvalidInputError, match="text must be a string"):
        mon.say(["hi"])
    with pytest.raises(InvalidInputError, match="assistant must be a string"):
        mon.add_turn("hi", None)
    assert mon.messages == [] and mon.records == []


def test_report_and_transcript_paths_refuse_bad_arguments(tmp_path):
    from persona_axes.steering.monitor import DriftReport

    with pytest.raises(InvalidInputError, match="path must be a file path"):
        load_transcript(3)
    with pytest.raises(InvalidInputError, match="records must be a list of TurnProjection"):
        DriftReport(records=[{"turn": 0}], layer=1, threshold=None, direction="below")
    with pytest.raises(InvalidInputError, match="layer must be an integer"):
        DriftReport(records=[], layer="1", threshold=None, direction="below")
    with pytest.raises(InvalidInputError, match="threshold must be a number"):
        DriftReport(records=[], layer=1, threshold=float("nan"), direction="below")
    with pytest.raises(InvalidInputError, match="direction must be 'below' or 'above'"):
        DriftReport(records=[], layer=1, threshold=None, direction="down")
    with pytest.raises(InvalidInputError, match="title must be a string"):
        DriftReport(records=[], layer=1, threshold=0.0, direction="below").figure(title=5)
