"""``persona-axes chat`` driven through a pseudo-terminal, as a user would type into it: three turns with the cap
turned on at turn 2, the per-turn projections printed, the transcript saved and re-read by ``persona-axes monitor``
(which must print the same projections), and each reply checked against an independent generate."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from persona_axes.vectors.units import unit_stats, with_unit_stats

import persona_axes as pa
from helpers import conversations

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "you> "


class Terminal:
    """A child process on a pseudo-terminal (stdin, stdout and stderr are the pty's slave end), stdlib only."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                                     close_fds=True, start_new_session=True)
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match:
        """Read until ``pattern`` (a regex) appears after what earlier expects consumed; fail with the transcript."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.seen)
            if m:
                self.seen = self.seen[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]:
                pytest.fail(f"no {pattern!r} in the chat's output (exit {self.proc.poll()}):\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], min(left, 1.0))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                self.seen += chunk.decode("utf-8", "replace").replace("\r\n", "\n")

    def send(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """The tiny model as a folder for --model, an axis for it and a cap calibrated to bite (90th percentile)."""
    d = tmp_path_factory.mktemp("chat")
    folder = d / "tiny-llama"  # the folder name is the model name the files are checked against
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    g = torch.Generator().manual_seed(1)
    axis = pa.PersonaVector(torch.randn(4, 64, generator=g), tiny.info, "tiny_axis", "mean_diff")
    acts = pa.capture(tiny, conversations(6), layers=[1, 2], progress=False)
    axis = with_unit_stats(axis, unit_stats(axis, acts))  # /steer COEF is in sd of these replies
    cap = pa.calibrate_cap(axis, acts, [1, 2], percentile=90.0)
    return {"model": folder, "axis": axis.save(d / "axis.safetensors"), "cap": cap.save(d / "capping.safetensors"),
            "dir": d, "cap_config": cap}


def test_chat_three_turns_cap_on_at_turn_two_then_monitor_rereads_the_transcript(files, tiny, capsys):
    transcript = files["dir"] / "transcript.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "COLUMNS": "120"}
    term = Terminal([sys.executable, "-m", "persona_axes", "chat", "--model", str(files["model"]),
                     "--axis", str(files["axis"]), "--cap-config", str(files["cap"]), "--layer", "2",
                     "--max-new-tokens", "6"], env)
    turn = r"\[turn (\d+)\] projection ([+-]\d+\.\d+) at layer 2 \(threshold ([+-]\d+\.\d+)\); cap (on|off)"
    try:
        term.expect(r"at layer 2; threshold ([+-]\d+\.\d+)")
        term.expect(PROMPT)
        shown = []
        for i, msg in enumerate(["Hello there.", "Tell me a story.", "And who are you?"]):
            if i == 1:
                term.send("/cap on")
                term.expect(r"cap on\n")
                term.expect(PROMPT)
            term.send(msg)
            term.expect(r"assistant> ")
            m = term.expect(turn)
            shown.append((int(m.group(1)), float(m.group(2)), float(m.group(3)), m.group(4)))
            term.expect(PROMPT)
        term.send(f"/save {transcript}")
        term.expect("saved")
        term.expect(PROMPT)
        term.send("/quit")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()

    # per-turn projections printed, the cap on from turn 2; the threshold is the cap's at layer 2
    assert [s[0] for s in shown] == [0, 1, 2] and [s[3] for s in shown] == ["off", "on", "on"]
    assert all(abs(s[2] - files["cap_config"].thresholds[2]) < 5e-4 for s in shown)

    saved = json.loads(transcript.read_text())
    msgs = saved["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * 3
    assert [t["cap"] for t in saved["turns"]] == [False, True, True]

    # each reply is what an independent generate gives on the same prefix, under the cap exactly when it was on
    sampling = pa.SamplingConfig(max_new_tokens=6)
    for k, cap_on in enumerate([False, True, True]):
        prefix = msgs[: 2 * k + 1]
        if cap_on:
            with pa.ActivationCap(tiny, files["cap_config"]):
                want = pa.generate_replies(tiny, [prefix], sampling)[0]
        else:
            want = pa.generate_replies(tiny, [prefix], sampling)[0]
        assert msgs[2 * k + 1]["content"] == want, k

    # the projections printed are the ones an independent capture gives ...
    u = files["cap_config"].axis[2].double()
    u = u / u.norm()
    acts = pa.capture(tiny, [msgs], layers=[2], which="messages", progress=False)
    want_proj = [float(acts.at(2)[i].double() @ u) for i, it in enumerate(acts.items) if it["role"] == "assistant"]
    assert [s[1] for s in shown] == pytest.approx(want_proj, abs=2e-3)

    # ... and the ones `persona-axes monitor` prints when it re-reads the saved transcript
    from persona_axes.cli.main import main

    out_json = files["dir"] / "drift.json"
    rc = main(["monitor", str(transcript), "--model", str(files["model"]), "--axis", str(files["axis"]),
               "--layer", "2", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 assistant turn(s)" in out
    mon = [r["projection"] for r in json.loads(out_json.read_text())["records"] if r["role"] == "assistant"]
    assert [s[1] for s in shown] == pytest.approx(mon, abs=2e-3)

    # with no --layer / --threshold, monitor takes the ones the chat recorded in the transcript
    rc = main(["monitor", str(transcript), "--model", str(files["model"]), "--axis", str(files["axis"]),
               "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0 and f"at layer 2, threshold {saved['threshold']:g} (below)" in out, out
    rerun = json.loads(out_json.read_text())
    assert rerun["layer"] == 2 and rerun["threshold"] == saved["threshold"]
    assert [r["projection"] for r in rerun["records"] if r["role"] == "assistant"] == pytest.approx(mon)
    assert [r["alert"] for r in rerun["records"] if r["role"] == "assistant"] == [t["alert"] for t in saved["turns"]]


def test_chat_commands_refuse_bad_input_and_keep_going(files):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
    term = Terminal([sys.executable, "-m", "persona_axes", "chat", "--model", str(files["model"]),
                     "--axis", str(files["axis"]), "--cap-config", "", "--layer", "1", "--max-new-tokens", "3"], env)
    try:
        term.expect(PROMPT)
        for bad, needle in (("/cap on", "no capping config"), ("/steer lots", "use /steer COEF"),
                            ("/bogus", "unknown command '/bogus'")):
            term.send(bad)
            term.expect(re.escape(needle))
            term.expect(PROMPT)
        term.send("/steer -0.5")
        term.expect(r"steer -0\.5")
        term.expect(PROMPT)
        term.send("hi")
        term.expect(r"\[turn 0\] projection [+-]\d+\.\d+ at layer 1; cap off, steer -0\.5")
        term.expect(PROMPT)
        term.send("/help")
        term.expect("/save FILE.json")
        term.expect(PROMPT)
        os.write(term.master, b"\x04")  # Ctrl-D leaves like /quit
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
