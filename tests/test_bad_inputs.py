"""The reliability catalogue: bad inputs across the Python API and the CLI.

Every case names the exact exception class it expects (a :class:`PersonaAxesError` subclass) and a piece of the
message that says what was wrong, so a regression to a silent wrong result, an untyped error or a vague message
fails here. Cases marked "was:" were bugs (a silent wrong result or an untyped error) fixed along with the case.
CLI cases run ``persona_axes.cli.main.main`` in-process: exit status 2, exactly one ``persona-axes: error:`` line on
stderr naming the problem and no traceback; the same argv with ``--debug`` raises the expected exception.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file

import persona_axes as pa
from persona_axes.runs import datasets as D
import persona_axes.export as E
from persona_axes.export import official as O
from persona_axes.activations import extraction as X
from persona_axes.runs import rollouts as R
from persona_axes.cli.main import main
from persona_axes.files import checksum
from persona_axes.errors import (
    ChatTemplateError,
    ConversationError,
    DataSchemaError,
    FileFormatError,
    InvalidInputError,
    LayerOutOfRangeError,
    ModelLoadError,
    ModelMismatchError,
    PersonaAxesError,
    SpanError,
    StaleCheckpointError,
)
from helpers import conversations

OTHER = pa.ModelInfo("other-model", 4, 32)  # another hidden size
RENAMED = pa.ModelInfo("other-model", 4, 64)  # same shape, another model


def _header(blob: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _with_metadata(blob: bytes, **changes) -> bytes:
    """A safetensors blob with its ``__metadata__`` edited (``None`` deletes a key); the data is untouched."""
    header, data = _header(blob)
    md = header["__metadata__"]
    for k, v in changes.items():
        md.pop(k, None) if v is None else md.__setitem__(k, v)
    if "sha256" in md and "sha256" not in changes:  # re-stamped, so the case meets the check it names, not the checksum
        md["sha256"] = checksum(st_load(blob), md)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + data


def _flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0x01])


@pytest.fixture(scope="module")
def c(tiny, tmp_path_factory):
    """Everything the cases need: the tiny model (also saved as a folder for the CLI), activations, vectors, a
    fitted persona space, a cap, good files and damaged copies of them."""
    d = tmp_path_factory.mktemp("bad_inputs")
    ns = SimpleNamespace(tiny=tiny, dir=d, info=pa.ModelInfo("tiny-llama", 4, 64), convs=conversations(2))
    ns.acts = pa.capture(tiny, conversations(4), metadata=[{"role": r} for r in "abab"], progress=False)
    ns.acts_l0 = pa.capture(tiny, ns.convs, layers=[0], progress=False)
    g = torch.Generator().manual_seed(0)
    ns.vec = pa.PersonaVector(torch.randn(4, 64, generator=g), ns.info, "v", "mean_diff")
    ns.zero = torch.zeros(64)
    ns.vs = pa.role_vectors(ns.acts)
    ns.space = pa.PersonaSpace(n_components=1).fit(ns.vs, default=ns.vec)
    ns.cap = pa.calibrate_cap(ns.vec, ns.acts, [1, 2])
    ns.other_vec = pa.PersonaVector(torch.randn(4, 32, generator=g), OTHER, "w", "mean_diff")
    ns.renamed_vec = pa.PersonaVector(torch.randn(4, 64, generator=g), RENAMED, "w", "mean_diff")

    def file(name: str, data: bytes | str) -> Path:
        p = d / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    ns.file = file
    ns.vec_path = ns.vec.save(d / "v.safetensors")
    ns.vs_path = ns.vs.save(d / "roles.safetensors")
    ns.acts_path = ns.acts.save(d / "acts.safetensors")
    ns.other_path = ns.other_vec.save(d / "other.safetensors")
    blob = ns.vec_path.read_bytes()
    ns.st_truncated = file("trunc.safetensors", blob[: len(blob) // 2])
    ns.st_empty = file("empty.safetensors", b"")
    ns.st_random = file("random.safetensors", os.urandom(512))
    ns.st_flipped = file("flipped.safetensors", _flip_last_byte(blob))
    ns.st_v3 = file("v3.safetensors", _with_metadata(blob, format_version="3"))
    ns.st_layers_word = file("nl.safetensors", _with_metadata(blob, num_layers="four"))
    ns.st_hidden = file("h32.safetensors", _with_metadata(blob, hidden_size="32"))
    ns.st_no_model = file("nomodel.safetensors", _with_metadata(blob, model=None))
    nan = {"vector": torch.full((4, 64), float("nan"))}
    nan_md = _header(blob)[0]["__metadata__"]
    ns.st_nan = file("nan.safetensors", st_save(nan, metadata={**nan_md, "sha256": checksum(nan, nan_md)}))
    save_file({"x": torch.zeros(2)}, d / "foreign.safetensors", metadata={"producer": "someone else"})
    ns.st_foreign = d / "foreign.safetensors"
    ablob = ns.acts_path.read_bytes()
    ns.acts_bad_layers = file("acts_layers.safetensors", _with_metadata(ablob, layers="[0, 1, 2, 9]"))
    ns.acts_bad_items = file("acts_items.safetensors", _with_metadata(ablob, items="[{}]"))
    ns.gguf_path = E.export_vector(ns.vec, d / "v.gguf", "gguf")
    gblob = ns.gguf_path.read_bytes()
    ns.gguf_truncated = file("trunc.gguf", gblob[: len(gblob) // 2])
    ns.gguf_flipped = file("flipped.gguf", _flip_last_byte(gblob))
    ns.gguf_random = file("random.gguf", b"GGUF" + os.urandom(256))
    ns.gguf_text = file("text.gguf", "this is not a GGUF file at all")
    ns.gguf_empty = file("empty.gguf", b"")
    w = gguf.GGUFWriter(d / "model.gguf", "llama")  # a model file, not a control vector
    w.add_tensor("token_embd.weight", np.zeros((4, 64), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    ns.gguf_model = d / "model.gguf"
    w = gguf.GGUFWriter(d / "foreign_cv.gguf", "controlvector")  # another tool's control vector
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", 1)
    w.add_tensor("direction.1", np.ones(64, dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    ns.gguf_foreign = d / "foreign_cv.gguf"
    nblob = E.export_vector(ns.vec, d / "v.npz", "numpy").read_bytes()
    ns.npz_truncated = file("trunc.npz", nblob[: len(nblob) // 2])
    ns.text = file("notes.txt", "hello")
    ns.bad_json = file("bad.json", "{oops")
    ns.no_messages = file("nomsg.json", '{"turns": []}')
    ns.bad_jsonl = file("bad.jsonl", '{"role": "user", "content": "hi"}\n{oops\n')
    ns.good_transcript = file("chat.json", json.dumps(ns.convs[0]))
    role = {"name": "x", "family": "helper", "description": "d", "prompts": ["a", "b", "c", "d", "e"]}
    ns.roles_doc = lambda drop=(), **chg: json.dumps(
        {"schema": D.ROLES_SCHEMA, "roles": [{k: v for k, v in {**role, **chg}.items() if k not in drop}]})

    # the tiny model as a folder, for the CLI's --model
    ns.model_dir = d / "tiny-llama"
    tiny.model.save_pretrained(ns.model_dir)
    tiny.tokenizer.save_pretrained(ns.model_dir)
    # a rollout store with two default-assistant replies, for the CLI's extract
    ns.runs = d / "runs"
    reqs = R.default_requests(pa.load_default_prompts()[:2], pa.load_questions()[:1])
    R.run_rollouts(tiny, reqs, ns.runs / "rollouts.jsonl", pa.SamplingConfig(max_new_tokens=3), progress=False)
    # a checkpoint of another extraction beside an output file
    ns.stale_out = d / "stale.safetensors"
    chunk = pa.Activations(torch.zeros(1, 1, 64), (1,), [{}], ns.info,
                           extra={"extract_fingerprint": "0" * 64, "chunk_start": "0", "chunk_end": "1"})
    chunk.save(X.partial_dir(ns.stale_out) / "chunk-00000000-00000001.safetensors")
    return ns


def _steer_with_wrong_row_count(c):
    with pa.Steer(c.tiny, c.vec, [1], torch.tensor([1.0, 2.0, 3.0])):
        pa.generate_replies(c.tiny, c.convs, pa.SamplingConfig(max_new_tokens=2))


# (id, call, exact error class, a piece of the message that names the problem)
API_CASES = [
    # --- capture
    ("capture/metadata-not-dicts (was: ValueError from dict.update)",
     lambda c: pa.capture(c.tiny, c.convs, metadata=["x", "y"], progress=False), InvalidInputError,
     "metadata[0] must be a dict"),
    ("capture/metadata-count", lambda c: pa.capture(c.tiny, c.convs, metadata=[{}], progress=False),
     InvalidInputError, "1 metadata dicts for 2 conversations"),
    ("capture/unknown-span", lambda c: pa.capture(c.tiny, c.convs, which="bogus", progress=False), SpanError,
     "unknown span selector 'bogus'"),
    ("capture/message-index-out-of-range", lambda c: pa.capture(c.tiny, c.convs, which=99, progress=False),
     SpanError, "message index 99 is out of range"),
    ("capture/no-layers", lambda c: pa.capture(c.tiny, c.convs, layers=[], progress=False), InvalidInputError,
     "no layers were requested"),
    ("capture/float-layer", lambda c: pa.capture(c.tiny, c.convs, layers=[1.5], progress=False),
     InvalidInputError, "layer indices must be integers"),
    ("capture/layer-out-of-range", lambda c: pa.capture(c.tiny, c.convs, layers=[4], progress=False),
     LayerOutOfRangeError, "layers are 0..3"),
    ("capture/not-a-model", lambda c: pa.capture("gpt2", c.convs, progress=False), InvalidInputError,
     "expected a Backend, a LoadedModel"),
    ("capture/unknown-backend", lambda c: pa.capture(c.tiny, c.convs, backend="bogus", progress=False),
     InvalidInputError, "unknown backend 'bogus'"),
    ("capture/non-string-content",
     lambda c: pa.capture(c.tiny, [[{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]],
                          progress=False), ConversationError, "content must be a string, got int"),
    ("capture/unknown-role",
     lambda c: pa.capture(c.tiny, [[{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]],
                          progress=False), ConversationError, "has role 'robot'"),
    ("capture/message-without-content",
     lambda c: pa.capture(c.tiny, [[{"role": "user"}, {"role": "assistant", "content": "x"}]], progress=False),
     ConversationError, "must be a dict with 'role' and 'content'"),
    ("capture/conversations-is-a-string", lambda c: pa.capture(c.tiny, "hello", progress=False), ConversationError,
     "must be a list of conversations"),
    ("capture/empty-conversation-in-list", lambda c: pa.capture(c.tiny, [c.convs[0], []], progress=False),
     ConversationError, "conversation 1"),
    ("capture/no-assistant-span",
     lambda c: pa.capture(c.tiny, [[{"role": "user", "content": "Hi"}]], progress=False), SpanError,
     "no assistant"),
    ("capture/empty-reply",
     lambda c: pa.capture(c.tiny, [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]],
                          progress=False), SpanError, "no content tokens"),
    ("capture/unknown-reduction", lambda c: pa.capture(c.tiny, c.convs, reduce="max", progress=False),
     InvalidInputError, "reduce='max'"),
    ("capture/padding-side", lambda c: pa.capture(c.tiny, c.convs, padding_side="middle", progress=False),
     InvalidInputError, "padding_side must be 'right' or 'left'"),
    ("capture/batch-size", lambda c: pa.capture(c.tiny, c.convs, batch_size=0, progress=False), InvalidInputError,
     "batch_size must be a positive integer"),
    # --- resumable extraction
    ("extract/chunk-size", lambda c: pa.extract(c.tiny, c.convs, c.dir / "x.safetensors", chunk_size=0),
     InvalidInputError, "chunk_size must be a positive integer"),
    ("extract/out-is-a-folder", lambda c: pa.extract(c.tiny, c.convs, c.dir), InvalidInputError, "is a folder"),
    ("extract/checkpoint-of-another-run",
     lambda c: pa.extract(c.tiny, c.convs, c.stale_out, progress=False), StaleCheckpointError,
     "belongs to another extraction"),
    # --- chat rendering
    ("chat/no-template", lambda c: pa.render_chat(SimpleNamespace(chat_template=None), c.convs[0]),
     ChatTemplateError, "has no chat template"),
    ("chat/broken-template",
     lambda c: pa.render_chat(_retemplated(c.tiny.tokenizer, "{% for m in messages %}{{ m.content }"), c.convs[0]),
     ChatTemplateError, "failed to render"),
    ("chat/empty-conversation", lambda c: pa.render_chat(c.tiny.tokenizer, []), ConversationError,
     "the conversation is empty"),
    ("chat/unknown-span", lambda c: pa.render_chat(c.tiny.tokenizer, c.convs[0]).select("bogus"), SpanError,
     "unknown span selector"),
    # --- vectors
    ("vector/wrong-shape", lambda c: pa.PersonaVector(torch.randn(3, 64), c.info, "v", "m"), InvalidInputError,
     "must have shape [n_layers=4, d=64]"),
    ("vector/nan", lambda c: pa.PersonaVector(torch.full((4, 64), float("nan")), c.info, "v", "m"),
     InvalidInputError, "NaN or infinite"),
    ("vector/non-string-metadata",
     lambda c: pa.PersonaVector(torch.randn(4, 64), c.info, "v", "m", metadata={"a": 1}), InvalidInputError,
     "must map strings to strings"),
    ("vector/layer-out-of-range", lambda c: c.vec.at(9), LayerOutOfRangeError, "layer 9 is out of range"),
    ("vector/zero-norm-unit", lambda c: pa.PersonaVector(torch.zeros(4, 64), c.info, "v", "m").unit(0),
     InvalidInputError, "zero norm"),
    ("vector/cosine-wrong-shape", lambda c: c.vec.cosine(torch.randn(3, 5)), InvalidInputError,
     "tensor of shape (3, 5)"),
    ("vector/cosine-other-model", lambda c: c.vec.cosine(c.other_vec), ModelMismatchError, "hidden size 32"),
    ("vector/unknown-trait-method", lambda c: pa.trait_vector(c.acts, c.acts, "bogus"), InvalidInputError,
     "method='bogus'"),
    ("vector/no-positive-items", lambda c: pa.trait_vector(c.acts.select([]), c.acts), InvalidInputError,
     "positive activations hold no items"),
    ("vector/missing-layers", lambda c: pa.trait_vector(c.acts_l0, c.acts), InvalidInputError,
     "lack layer(s) [1, 2, 3]"),
    ("vector/activations-of-another-model",
     lambda c: pa.trait_vector(c.acts, pa.Activations(c.acts.values, c.acts.layers, c.acts.items, RENAMED)),
     ModelMismatchError, "made for model 'other-model'"),
    ("vector/pca-unpaired", lambda c: pa.trait_vector(c.acts, c.acts.select([0]), "pca_diff"), InvalidInputError,
     "unequal pos/neg sets"),
    ("vector/probe-negative-C", lambda c: pa.trait_vector(c.acts, c.acts, "probe", C=-1), InvalidInputError,
     "C must be positive"),
    ("vector/role-key-missing", lambda c: pa.role_vectors(c.acts, key="nope"), InvalidInputError,
     "no item has metadata key 'nope'"),
    ("vector/min-count", lambda c: pa.role_vectors(c.acts, min_count=0), InvalidInputError,
     "min_count must be a positive integer"),
    ("vector/subset-unknown-name", lambda c: c.vs.subset(["zzz"]), InvalidInputError, "not in this set: ['zzz']"),
    ("vector/duplicate-names", lambda c: pa.VectorSet.from_vectors([c.vec, c.vec]), InvalidInputError,
     "repeated: ['v']"),
    ("vector/purify-other-model", lambda c: pa.purify(c.vec, [c.other_vec]), ModelMismatchError,
     "hidden size 32"),
    ("vector/purify-nothing", lambda c: pa.purify(c.vec, []), InvalidInputError, "no other vectors"),
    ("vector/mean-of-nothing", lambda c: pa.mean_vector(c.acts.select([]), "d"), InvalidInputError,
     "hold no items"),
    # --- persona space
    ("space/n-components", lambda c: pa.PersonaSpace(n_components=0), InvalidInputError,
     "n_components must be a positive integer"),
    ("space/not-fitted", lambda c: pa.PersonaSpace().transform(torch.randn(2, 64), 0), InvalidInputError,
     "not fitted yet"),
    ("space/one-role", lambda c: pa.PersonaSpace().fit(c.vs.subset(["a"])), InvalidInputError,
     "need at least 2 role vectors"),
    ("space/axis-without-default", lambda c: pa.PersonaSpace(n_components=1).fit(c.vs).assistant_axis(),
     InvalidInputError, "no Assistant Axis"),
    ("space/input-width", lambda c: c.space.transform(torch.randn(2, 32), 0), ModelMismatchError,
     "inputs have width 32"),
    ("space/roles-not-3d", lambda c: pa.PersonaSpace().fit(torch.randn(3, 64)), InvalidInputError,
     "must be [n_roles, n_layers, d]"),
    ("space/default-width", lambda c: pa.PersonaSpace().fit(c.vs, default=torch.randn(4, 32)), ModelMismatchError,
     "the default has width 32"),
    ("space/nan-roles", lambda c: pa.PersonaSpace().fit(torch.full((3, 4, 64), float("nan"))), InvalidInputError,
     "NaN or infinite"),
    ("space/unknown-direction", lambda c: c.space.direction(0, onto="bogus"), InvalidInputError,
     "onto must be 'axis', 'pc1'"),
    ("space/layer-out-of-range", lambda c: pa.PersonaSpace(layers=[7]).fit(c.vs), LayerOutOfRangeError,
     "layer 7 is out of range"),
    # --- interventions
    ("steer/nan-coef", lambda c: pa.Steer(c.tiny, c.vec, [1], float("nan")), InvalidInputError,
     "coef holds NaN"),
    ("steer/2d-coef", lambda c: pa.Steer(c.tiny, c.vec, [1], torch.ones(2, 2)), InvalidInputError,
     "[batch] tensor, got shape (2, 2)"),
    ("steer/positions", lambda c: pa.Steer(c.tiny, c.vec, [1], positions="bogus"), InvalidInputError,
     "positions='bogus'"),
    ("steer/unit", lambda c: pa.Steer(c.tiny, c.vec, [1], unit="bogus"), InvalidInputError, "unit='bogus'"),
    ("steer/rel-without-reference", lambda c: pa.Steer(c.tiny, c.vec, [1], unit="rel"), InvalidInputError,
     "pass reference="),
    ("steer/rel-reference-lacks-layer", lambda c: pa.Steer(c.tiny, c.vec, [1], unit="rel", reference=c.acts_l0),
     InvalidInputError, "no rel is known at layer 1"),
    ("steer/rel-zero-vector (was: accepted, steered by nothing)",
     lambda c: pa.Steer(c.tiny, c.zero, [1], unit="rel", reference=c.acts), InvalidInputError, "zero norm"),
    ("steer/vector-width", lambda c: pa.Steer(c.tiny, torch.randn(32), [1]), ModelMismatchError,
     "size 32 but the model's hidden size is 64"),
    ("steer/vector-of-another-model", lambda c: pa.Steer(c.tiny, c.renamed_vec, [1]), ModelMismatchError,
     "made for model 'other-model'"),
    ("steer/nan-vector", lambda c: pa.Steer(c.tiny, torch.full((64,), float("nan")), [1]), InvalidInputError,
     "NaN or infinite"),
    ("steer/layer-out-of-range", lambda c: pa.Steer(c.tiny, c.vec, [7]), LayerOutOfRangeError, "layers are 0..3"),
    ("steer/prompt-length", lambda c: pa.Steer(c.tiny, c.vec, [1], prompt_length=0), InvalidInputError,
     "prompt_length must be a positive integer"),
    ("steer/unit-zero-vector", lambda c: pa.Steer(c.tiny, c.zero, [1], unit="unit"), InvalidInputError,
     "zero norm"),
    ("steer/coef-rows-vs-batch", _steer_with_wrong_row_count, InvalidInputError,
     "coef has 3 entries but the batch has 2 rows"),
    ("ablate/zero-vector", lambda c: pa.Ablate(c.tiny, c.zero, [1]), InvalidInputError, "zero norm"),
    ("cap/layer-not-calibrated", lambda c: pa.ActivationCap(c.tiny, c.cap, [3]), InvalidInputError,
     "no threshold for layers [3]"),
    ("cap/config-of-another-model",
     lambda c: pa.ActivationCap(pa.LoadedModel(model=c.tiny.model, tokenizer=c.tiny.tokenizer, name="other-model",
                                               layers=c.tiny.layers), c.cap), ModelMismatchError,
     "made for model 'tiny-llama'"),
    ("cap/kind", lambda c: pa.CapConfig(c.cap.axis, c.cap.thresholds, "middle", c.info), InvalidInputError,
     "kind must be 'floor' or 'ceiling'"),
    ("cap/nan-threshold", lambda c: pa.CapConfig(c.cap.axis, {1: float("nan"), 2: 0.0}, "floor", c.info),
     InvalidInputError, "threshold at layer 1 is nan"),
    ("cap/layers-disagree", lambda c: pa.CapConfig(c.cap.axis, {1: 0.0}, "floor", c.info), InvalidInputError,
     "same, non-empty set of layers"),
    ("calibrate/percentile", lambda c: pa.calibrate_cap(c.vec, c.acts, [1], percentile=150), InvalidInputError,
     "percentile must be in [0, 100]"),
    ("calibrate/empty-reference", lambda c: pa.calibrate_cap(c.vec, c.acts.select([]), [1]), InvalidInputError,
     "reference activations are empty"),
    ("calibrate/kind", lambda c: pa.calibrate_cap(c.vec, c.acts, [1], kind="sideways"), InvalidInputError,
     "kind must be 'floor' or 'ceiling'"),
    ("calibrate/layer-not-captured", lambda c: pa.calibrate_cap(c.vec, c.acts_l0, [1]), LayerOutOfRangeError,
     "layer 1 was not captured"),
    ("calibrate/zero-axis", lambda c: pa.calibrate_cap(c.zero, c.acts, [1]), InvalidInputError, "zero norm"),
    ("calibrate/tensor-reference (was: AttributeError)",
     lambda c: pa.calibrate_cap(c.vec, torch.randn(5, 64), [1]), InvalidInputError,
     "reference must be Activations"),
    # --- monitor
    ("monitor/no-assistant-turn",
     lambda c: pa.monitor_transcript(c.tiny, [{"role": "user", "content": "hi"}], c.vec, 1), ConversationError,
     "no assistant turn"),
    ("monitor/ema", lambda c: pa.monitor_transcript(c.tiny, c.convs[0], c.vec, 1, ema=0), InvalidInputError,
     "ema must be in (0, 1]"),
    ("monitor/direction", lambda c: pa.monitor_transcript(c.tiny, c.convs[0], c.vec, 1, direction="sideways"),
     InvalidInputError, "direction must be 'below' or 'above'"),
    ("monitor/nan-threshold",
     lambda c: pa.monitor_transcript(c.tiny, c.convs[0], c.vec, 1, threshold=float("nan")), InvalidInputError,
     "threshold must be a number"),
    ("monitor/dead-band", lambda c: pa.monitor_transcript(c.tiny, c.convs[0], c.vec, 1, dead_band=-1),
     InvalidInputError, "dead_band must be >= 0"),
    ("monitor/layer-out-of-range", lambda c: pa.monitor_transcript(c.tiny, c.convs[0], c.vec, 9),
     LayerOutOfRangeError, "layer 9 is out of range"),
    ("monitor/unknown-roles (was: an empty report)",
     lambda c: pa.monitor_transcript(c.tiny, c.convs[0], c.vec, 1, roles=("robot",)), InvalidInputError,
     "roles must be a non-empty list"),
    ("monitor/missing-transcript", lambda c: pa.monitor_transcript(c.tiny, c.dir / "nope.json", c.vec, 1),
     FileFormatError, "no such transcript file"),
    ("monitor/transcript-not-json", lambda c: pa.monitor_transcript(c.tiny, c.bad_json, c.vec, 1),
     FileFormatError, "not valid JSON"),
    ("monitor/transcript-jsonl-bad-line", lambda c: pa.monitor_transcript(c.tiny, c.bad_jsonl, c.vec, 1),
     FileFormatError, "not valid JSON"),
    ("monitor/object-without-messages (was: 'got NoneType')",
     lambda c: pa.monitor_transcript(c.tiny, c.no_messages, c.vec, 1), FileFormatError,
     "needs a \"messages\" list; it has keys ['turns']"),
    # --- our safetensors files
    ("io/truncated", lambda c: pa.PersonaVector.load(c.st_truncated), FileFormatError, "corrupt or truncated"),
    ("io/empty-file", lambda c: pa.PersonaVector.load(c.st_empty), FileFormatError, "header too small"),
    ("io/random-bytes", lambda c: pa.PersonaVector.load(c.st_random), FileFormatError,
     "not a readable safetensors file"),
    ("io/flipped-data-byte (was: loaded, one value silently wrong)", lambda c: pa.PersonaVector.load(c.st_flipped),
     FileFormatError, "fails its SHA-256 checksum"),
    ("io/foreign-safetensors", lambda c: pa.PersonaVector.load(c.st_foreign), FileFormatError,
     "not a persona_axes file"),
    ("io/wrong-kind", lambda c: pa.VectorSet.load(c.vec_path), FileFormatError,
     "holds 'vector', expected vector_set"),
    ("io/capping-from-a-vector", lambda c: pa.CapConfig.load(c.vec_path), FileFormatError,
     "holds 'vector', expected capping"),
    ("io/newer-format-version", lambda c: pa.PersonaVector.load(c.st_v3), FileFormatError,
     "format version '3' is not 2"),
    ("io/num-layers-not-a-number", lambda c: pa.PersonaVector.load(c.st_layers_word), FileFormatError,
     "num_layers/hidden_size must be integers"),
    ("io/metadata-disagrees-with-tensor", lambda c: pa.PersonaVector.load(c.st_hidden), FileFormatError,
     "the metadata says num_layers=4, hidden_size=32"),
    ("io/metadata-lacks-model", lambda c: pa.PersonaVector.load(c.st_no_model), FileFormatError,
     "metadata lacks ['model']"),
    ("io/nan-in-file", lambda c: pa.PersonaVector.load(c.st_nan), FileFormatError, "holds NaN or infinite"),
    ("io/other-model", lambda c: pa.PersonaVector.load(c.vec_path, model=pa.ModelInfo("tiny-llama", 6, 64)),
     ModelMismatchError, "4 layers here, 6 in the model"),
    ("io/missing-file", lambda c: pa.PersonaVector.load(c.dir / "nope.safetensors"), FileFormatError,
     "no such file"),
    ("io/activations-layer-out-of-range (was: loaded as layer 9 of a 4-layer model)",
     lambda c: pa.Activations.load(c.acts_bad_layers), FileFormatError, "[9] are not"),
    ("io/activations-items-disagree (was: InvalidInputError without the file name)",
     lambda c: pa.Activations.load(c.acts_bad_items), FileFormatError,
     "4 rows of values but 1 item metadata dicts; the file is corrupt"),
    # --- GGUF and other exports
    ("gguf/truncated", lambda c: E.import_vector(c.gguf_truncated), FileFormatError,
     "not a readable GGUF file"),
    ("gguf/flipped-data-byte (was: loaded, one value silently wrong)", lambda c: E.import_vector(c.gguf_flipped),
     FileFormatError, "fail their SHA-256 checksum"),
    ("gguf/random-bytes", lambda c: E.import_vector(c.gguf_random), FileFormatError, "not a readable GGUF file"),
    ("gguf/not-gguf", lambda c: E.import_vector(c.gguf_text, "gguf"), FileFormatError, "GGUF magic invalid"),
    ("gguf/empty", lambda c: E.import_vector(c.gguf_empty, "gguf"), FileFormatError, "not a readable GGUF"),
    ("gguf/model-file-not-control-vector", lambda c: E.import_vector(c.gguf_model, "gguf"), FileFormatError,
     "not a control-vector file"),
    ("gguf/foreign-without-model", lambda c: E.import_vector(c.gguf_foreign, "gguf"), InvalidInputError,
     "pass model="),
    ("gguf/other-model", lambda c: E.import_vector(c.gguf_path, model=OTHER), ModelMismatchError,
     "hidden size 64 here, 32 in the model"),
    ("npz/truncated", lambda c: E.import_vector(c.npz_truncated), FileFormatError, "not a readable .npz file"),
    ("export/unknown-format", lambda c: E.export_vector(c.vec, c.dir / "x.bin", "bogus"), InvalidInputError,
     "unknown format 'bogus'"),
    ("export/unknown-suffix", lambda c: E.import_vector(c.text), FileFormatError, "cannot tell its format"),
    ("export/nan-scale", lambda c: E.export_vector(c.vec, c.dir / "s.gguf", "gguf", scale=float("nan")),
     InvalidInputError, "scale must be a finite real number"),
    ("export/only-layer-0-to-gguf", lambda c: E.export_vector(c.vec, c.dir / "s0.gguf", "gguf", layers=[0]),
     InvalidInputError, "layer 0 cannot be exported"),
    ("export/unknown-option", lambda c: E.export_vector(c.vec, c.dir / "s1.gguf", "gguf", bogus=1),
     InvalidInputError, "takes no option(s) ['bogus']"),
    ("export/steer-unknown-unit", lambda c: E.export_vector(c.vec, c.dir / "s2.gguf", "gguf", unit="percent"),
     InvalidInputError, "unit='percent' is not one of raw, unit, rel"),
    ("export/steer-rel-without-reference", lambda c: E.export_vector(c.vec, c.dir / "s3.gguf", "gguf", unit="rel"),
     InvalidInputError, "pass reference="),
    ("export/steer-negative-reference-norms",
     lambda c: E.export_vector(c.vec, c.dir / "s4.gguf", "gguf", layers=[1], unit="rel",
                               reference=torch.full((4,), -50.0)), InvalidInputError, "must be positive and finite"),
    ("export/steer-string-scale", lambda c: E.export_vector(c.vec, c.dir / "s5.gguf", "gguf", scale="0.3"),
     InvalidInputError, "scale must be a finite real number"),
    ("official/missing-file", lambda c: O.import_official_axis(c.dir / "none.pt", model=c.info), FileFormatError,
     "no such file"),
    ("official/not-a-torch-file", lambda c: O.import_official_axis(c.text, model=c.info), FileFormatError,
     "not a readable PyTorch file"),
    # --- data set schema
    ("data/missing-file", lambda c: D.load_roles(c.dir / "none.json"), DataSchemaError, "file not found"),
    ("data/bad-json", lambda c: D.load_roles(c.bad_json), DataSchemaError, "invalid JSON at line 1"),
    ("data/wrong-schema",
     lambda c: D.load_roles(c.file("r1.json", json.dumps({"schema": D.TRAIT_SCHEMA, "roles": []}))),
     DataSchemaError, "schema: expected 'persona_axes.roles/1'"),
    ("data/missing-field", lambda c: D.load_roles(c.file("r2.json", c.roles_doc(drop=("prompts",)))),
     DataSchemaError, "roles[0].prompts: missing required field"),
    ("data/unknown-family", lambda c: D.load_roles(c.file("r3.json", c.roles_doc(family="wizardry"))),
     DataSchemaError, "roles[0].family: unknown role family 'wizardry'"),
    ("data/four-prompts", lambda c: D.load_roles(c.file("r4.json", c.roles_doc(prompts=["a", "b", "c", "d"]))),
     DataSchemaError, "expected exactly 5 system prompts, got 4"),
    ("data/unknown-key", lambda c: D.load_roles(c.file("r5.json", c.roles_doc(colour=1))), DataSchemaError,
     "roles[0].colour: unknown field"),
    ("data/unknown-trait", lambda c: D.load_traits(["nonexistent"]), DataSchemaError,
     "unknown trait 'nonexistent'"),
    ("data/unknown-category", lambda c: D.load_questions("cooking"), DataSchemaError,
     "unknown question category 'cooking'"),
    ("data/not-utf8", lambda c: D.load_roles(c.file("r6.json", b"\xff\xfe{")), DataSchemaError,
     "not valid UTF-8"),
]


def _retemplated(tokenizer, template: str):
    import copy

    t = copy.deepcopy(tokenizer)
    t.chat_template = template
    return t


@pytest.mark.parametrize("call, error, needle", [pytest.param(*case[1:], id=case[0]) for case in API_CASES])
def test_api_bad_input(c, call, error, needle):
    with pytest.raises(PersonaAxesError) as e:
        call(c)
    assert type(e.value) is error, f"{type(e.value).__name__}: {e.value}"
    assert needle in str(e.value), str(e.value)


# (id, argv, exact error class (seen with --debug), a piece of the error line)
CLI_CASES = [
    ("cli info/missing-file", lambda c: ["info", c.dir / "nope.safetensors"], FileNotFoundError, "does not exist"),
    ("cli info/truncated", lambda c: ["info", c.st_truncated], FileFormatError, "corrupt or truncated"),
    ("cli info/flipped-byte", lambda c: ["info", c.st_flipped], FileFormatError, "SHA-256 checksum"),
    ("cli info/not-ours", lambda c: ["info", c.text], FileFormatError, "cannot tell its format"),
    ("cli info/truncated-gguf", lambda c: ["info", c.gguf_truncated], FileFormatError, "not a readable GGUF file"),
    ("cli export/unknown-format", lambda c: ["export", c.vec_path, "--format", "onnx", "--out", c.dir / "x"],
     InvalidInputError, "unknown format 'onnx'"),
    ("cli export/bad-layer-spec",
     lambda c: ["export", c.vec_path, "--format", "gguf", "--out", c.dir / "x.gguf", "--layers", "3:1"],
     InvalidInputError, "invalid layer spec '3:1'"),
    ("cli export/scale-with-numpy",
     lambda c: ["export", c.vec_path, "--format", "numpy", "--out", c.dir / "x.npz", "--scale", "2"],
     InvalidInputError, "apply to gguf and repeng only"),
    ("cli export/set-without-name", lambda c: ["export", c.vs_path, "--format", "gguf", "--out", c.dir / "x.gguf"],
     InvalidInputError, "pick one with --name"),
    ("cli export/set-unknown-name",
     lambda c: ["export", c.vs_path, "--format", "gguf", "--out", c.dir / "x.gguf", "--name", "zzz"],
     InvalidInputError, "holds no vector 'zzz'"),
    ("cli steer/coef-not-a-number",
     lambda c: ["steer", "--vector", c.vec_path, "--layers", "1", "--coef", "abc", "--prompt", "hi"],
     InvalidInputError, "invalid --coef 'abc'"),
    ("cli steer/vector-of-another-model",
     lambda c: ["steer", "--model", c.model_dir, "--vector", c.other_path, "--layers", "1", "--coef", "1",
                "--prompt", "hi"], ModelMismatchError, "hidden size 32 here, 64 in the model"),
    ("cli steer/layer-out-of-range",
     lambda c: ["steer", "--model", c.model_dir, "--vector", c.vec_path, "--layers", "9", "--coef", "1",
                "--prompt", "hi"], InvalidInputError, "layer 9 is out of range"),
    ("cli cap/config-is-a-vector", lambda c: ["cap", "--model", c.model_dir, "--config", c.vec_path, "--prompt", "hi"],
     FileFormatError, "holds 'vector', expected capping"),
    ("cli monitor/transcript-not-json",
     lambda c: ["monitor", c.bad_json, "--model", c.model_dir, "--axis", c.vec_path, "--layer", "1"],
     FileFormatError, "not valid JSON"),
    ("cli monitor/ema",
     lambda c: ["monitor", c.good_transcript, "--model", c.model_dir, "--axis", c.vec_path, "--layer", "1",
                "--ema", "0"], InvalidInputError, "ema must be in (0, 1]"),
    ("cli rollouts/unknown-kind", lambda c: ["rollouts", "--out", c.dir / "r", "--kinds", "role,bogus"],
     InvalidInputError, "invalid --kinds 'role,bogus'"),
    ("cli rollouts/unknown-preset", lambda c: ["rollouts", "--out", c.dir / "r", "--preset", "huge"],
     InvalidInputError, "unknown rollout preset 'huge'"),
    ("cli extract/no-rollouts", lambda c: ["extract", "--rollouts", c.dir / "empty", "--out", c.dir / "a.safetensors"],
     FileNotFoundError, "no rollouts at"),
    ("cli extract/negative-limit (was: silently dropped the last rollout)",
     lambda c: ["extract", "--model", c.model_dir, "--rollouts", c.runs, "--out", c.dir / "a.safetensors",
                "--limit", "-1"], InvalidInputError, "--limit must be >= 1, got -1"),
    ("cli extract/zero-limit (was: silently took every rollout)",
     lambda c: ["extract", "--model", c.model_dir, "--rollouts", c.runs, "--out", c.dir / "a.safetensors",
                "--limit", "0"], InvalidInputError, "--limit must be >= 1, got 0"),
    ("cli extract/kind-not-in-store",
     lambda c: ["extract", "--rollouts", c.runs, "--out", c.dir / "a.safetensors", "--kind", "role"],
     InvalidInputError, "no rollouts of kind 'role'"),
    ("cli extract/checkpoint-of-another-run",
     lambda c: ["extract", "--model", c.model_dir, "--rollouts", c.runs, "--out", c.stale_out, "--quiet"],
     StaleCheckpointError, "--restart"),
    ("cli axis/roles-is-a-vector",
     lambda c: ["axis", "--roles", c.vec_path, "--default", c.vec_path, "--out", c.dir / "axis.safetensors"],
     InvalidInputError, "expected a vector set"),
    ("cli model/unknown-path",
     lambda c: ["steer", "--model", c.dir / "no-such-model", "--vector", c.vec_path, "--layers", "1", "--coef",
                "1", "--prompt", "hi"], ModelLoadError, "no-such-model"),
]


@pytest.mark.parametrize("argv, error, needle", [pytest.param(*case[1:], id=case[0]) for case in CLI_CASES])
def test_cli_bad_input(c, capsys, argv, error, needle):
    args = [str(a) for a in argv(c)]
    rc = main(args)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("persona-axes: error:")]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert needle in errors[0], errors[0]
    with pytest.raises(error) as e:  # the same failure, with its type, when --debug asks for the traceback
        main(["--debug", *args])
    assert type(e.value) is error, f"{type(e.value).__name__}: {e.value}"
    capsys.readouterr()


def test_the_catalogue_is_large_enough():
    assert len(API_CASES) + len(CLI_CASES) >= 40
    assert len({case[0] for case in API_CASES + CLI_CASES}) == len(API_CASES) + len(CLI_CASES)  # distinct
