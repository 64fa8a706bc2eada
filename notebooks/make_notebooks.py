"""Write the example notebooks (without outputs) from the cell sources below.

    .venv/bin/python notebooks/make_notebooks.py

Edit the cells here, not in the .ipynb files, and commit both: the notebooks are kept output-free so the
repository stays small, and tests/test_notebooks.py executes them (and checks that they match this script).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def setup(tag: str) -> str:
    """The first code cell of every notebook: imports, threads, paths and where figures go."""
    return f'''
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import persona_axes as pa
from persona_axes.viz import plots

T0 = time.time()
# A 135M model decoding a few short replies is bound by per-token overhead, not arithmetic: one thread is about as
# fast as several on a quiet CPU, and several times faster on a busy, shared one. Override with the variable.
torch.set_num_threads(int(os.environ.get("PERSONA_AXES_NOTEBOOK_THREADS", "1")))
pd.set_option("display.max_colwidth", 120)


def find_root(start: Path) -> Path:
    """The repository root: the first folder at or above `start` holding the shipped vectors."""
    for p in (start, *start.parents):
        if (p / "vectors" / "smollm2-135m-instruct").is_dir():
            return p
    raise FileNotFoundError(f"no vectors/smollm2-135m-instruct at or above {{start}}: run this notebook from the "
                            "persona_axes repository (its notebooks/ folder or the root)")


ROOT = find_root(Path.cwd())
VECTORS = ROOT / "vectors" / "smollm2-135m-instruct"
# Figures are shown inline and also saved as standalone HTML here (the tests point this at a temporary folder).
OUT = Path(os.environ.get("PERSONA_AXES_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="persona_axes_{tag}_"))
OUT.mkdir(parents=True, exist_ok=True)


def show(fig, name: str):
    """Save `fig` as OUT/<name>.html (plotly.js written once beside the pages) and display it: interactive in
    Jupyter, with a caption (and a PNG where kaleido can draw one) that a static render of the notebook shows."""
    return plots.show(fig, OUT / f"{{name}}.html", plotlyjs="directory")


print("repository:", ROOT)
print("figures go to:", OUT)
'''


# ---------------------------------------------------------------------------------------------------------------
# 01: persona space
# ---------------------------------------------------------------------------------------------------------------

NB01 = [
    md("""
# 01 · Exploring persona space

A chat model can speak as many characters. For each role we take the model's replies while it plays that role
and average the residual-stream activations over the reply tokens, at every layer: one **role vector** per role.
Doing the same for the model's ordinary replies (no role, or a plain "helpful assistant" system prompt) gives
the **default vector**.

*Persona space* is what PCA finds across the role vectors at one layer. The **Assistant Axis** is the direction
from the average role to the default assistant, `mean(default) - mean(roles)`. Two questions drive this notebook:

1. Is the leading principal component (PC1) of the roles close to the Assistant Axis, i.e. is "how much like the
   assistant" the main way the roles differ?
2. Does the axis, computed once from stored vectors, tell apart *new* conversations that we generate and capture
   here, assistant replies from role-play?

Everything runs on the embedded SmolLM2-135M-Instruct on a CPU, with the vectors shipped in
`vectors/smollm2-135m-instruct/` (made by `persona-axes pipeline --preset quick`). "Layer L" is the output of
decoder block L, counted from 0.
"""),
    code(setup("nb01")),
    md("""
## The shipped vectors

`roles.safetensors` holds one mean vector per role (a `VectorSet`, with each role's family); `default.safetensors`
the default assistant's mean. Both are `[n_layers, d]` per item. Loading with `model=` refuses vectors made for
a model of another shape.
"""),
    code('''
loaded = pa.load_model()  # the embedded SmolLM2-135M-Instruct, converted once and cached; no download
roles = pa.VectorSet.load(VECTORS / "roles.safetensors", model=loaded)
default = pa.PersonaVector.load(VECTORS / "default.safetensors", model=loaded)
summary = json.loads((VECTORS / "summary.json").read_text())
LAYER = summary["best_layer"]  # the layer the pipeline chose (best separation of assistant from roles)

print(roles)
print(default)
print("families:", sorted(set(roles.families.values())))
print("chosen layer:", LAYER)
assert len(roles) >= 10 and roles.model.n_layers == default.model.n_layers == 30
'''),
    md("""
## Fitting the persona space

`PersonaSpace` works like scikit-learn's `PCA`, one decomposition per layer. Given the default vector it also
computes the Assistant Axis and orients PC1 so that its positive end points towards the assistant.
"""),
    code('''
space = pa.PersonaSpace(n_components=10).fit(roles, default=default)
axis = space.assistant_axis()  # a PersonaVector covering every layer
print(space)
print(axis)

# The axis computed here is the one the pipeline shipped.
shipped_axis = pa.PersonaVector.load(VECTORS / "assistant_axis.safetensors", model=loaded)
assert torch.allclose(axis.vector, shipped_axis.vector, rtol=1e-5, atol=1e-5)
'''),
    md("""
### Variance explained and cos(axis, PC1), per layer

If the roles mostly differ along one direction, PC1 takes a large share of the variance. The cosine says how much
of that direction is the Assistant Axis (1 would mean they are the same line).
"""),
    code('''
ratio = space.explained_variance_ratio_  # [n_layers, k]
per_layer = pd.DataFrame({
    "layer": list(space.layers_),
    "PC1 %": (100 * ratio[:, 0]).tolist(),
    "PC2 %": (100 * ratio[:, 1]).tolist(),
    "PC3 %": (100 * ratio[:, 2]).tolist(),
    "top-3 %": (100 * ratio[:, :3].sum(1)).tolist(),
    "cos(axis, PC1)": space.pc1_cosine_.tolist(),
}).set_index("layer")

# Each layer's ratios are sorted and sum to at most 1; PC1 is oriented towards the assistant.
assert (ratio[:, :-1] >= ratio[:, 1:] - 1e-6).all() and (ratio.sum(1) <= 1 + 1e-5).all()
assert (space.pc1_cosine_ >= 0).all()
# ... and they agree with what the pipeline recorded.
assert torch.allclose(space.pc1_cosine_, torch.tensor(summary["pc1_cosine_by_layer"]), atol=1e-4)
per_layer.round(3)
'''),
    md("""
### Which roles sit at each end of PC1

The loadings are the roles' coordinates in persona space. At the chosen layer, the positive end of PC1 (towards
the assistant) should gather roles that talk like a helpful professional, and the negative end the fantastical and
non-human characters.
"""),
    code('''
j = space.layer_position(LAYER)
pc1 = pd.Series(space.loadings_[:, j, 0].tolist(), index=space.role_names_, name="PC1")
table = pd.DataFrame({"PC1": pc1, "family": pd.Series(roles.families)}).sort_values("PC1")
print(f"default assistant on PC1 at layer {LAYER}: {float(space.default_loadings_[j, 0]):+.2f}")
print("\\nmost assistant-like roles:")
print(table.tail(6)[::-1].round(1).to_string())
print("\\nleast assistant-like roles:")
print(table.head(6).round(1).to_string())
family_means = table.groupby("family")["PC1"].mean().sort_values()
print("\\nmean PC1 per family:")
print(family_means.round(2).to_string())

# The default assistant sits on the positive side, and the fantastical / non-human families below the
# professional / helper ones.
assert float(space.default_loadings_[j, 0]) > 0
low = family_means[["fantastical", "non_human"]].mean()
high = family_means[["profession", "helper"]].mean()
assert low < 0 < high, (low, high)
'''),
    md("""
### A persona map and a scree plot

Each point is a role at its PC1/PC2 coordinates, coloured by family; the star is the default assistant. Hovering
shows each role's projection onto the Assistant Axis.
"""),
    code('''
show(plots.persona_map(space, LAYER, colour_by="family", roles=roles), "persona_map")
'''),
    code('''
show(plots.scree(space, LAYER), "scree")
'''),
    md("""
### The layer sweep recorded by the pipeline

At every layer the pipeline projected default-assistant replies and accepted role replies onto the unit axis and
measured how well the two separate (AUROC, Cohen's d, with 95% bootstrap intervals). The shipped vectors come from
the `standard` preset, so these are **held-out** numbers (`summary["layer_sweep_evaluated_on"]`): replies to roles,
prompt variants and questions that built nothing (`persona_axes.runs.splits`). That is how it chose the layer used
here. (A preset without held-out replies, such as `quick`, reports the same sweep in-sample and says so.)
"""),
    code('''
show(plots.layer_sweep(summary["layer_sweep"]), "layer_sweep_shipped")
'''),
    md("""
## New conversations, captured live

Now the axis meets data it has never seen. We ask the model a few questions twice over: as itself (no system
prompt, or a plain assistant prompt), and in character as two fantastical roles, with prompts the pipeline did not
use. The replies are generated here, greedily and short, then `pa.capture` records the mean activation over each
reply's tokens at every layer. We expect the assistant replies to project higher on the axis.
"""),
    code('''
all_roles = pa.load_roles()
QUESTIONS = [
    "What is a good way to start learning to cook?",
    "How do you get through a bad day?",
    "Why is the sky blue?",
]
ASSISTANT_SYSTEMS = [None, "You are a helpful assistant."]
ROLE_PLAY = ["dragon", "ghost"]

convs, meta = [], []
for q in QUESTIONS:
    for system in ASSISTANT_SYSTEMS:
        convs.append(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}])
        meta.append({"kind": "assistant", "persona": "assistant" if system is None else "assistant (prompted)"})
    for role in ROLE_PLAY:
        prompt = all_roles[role].prompts[1]  # the quick pipeline used prompts[0]
        convs.append([{"role": "system", "content": prompt}, {"role": "user", "content": q}])
        meta.append({"kind": "role-play", "persona": role})

t = time.time()
replies = pa.generate_replies(loaded, convs, pa.SamplingConfig(max_new_tokens=24), batch_size=len(convs))
chats = [c + [{"role": "assistant", "content": r}] for c, r in zip(convs, replies)]
fresh = pa.capture(loaded, chats, which="last_assistant", reduce="mean", metadata=meta, progress=False)
print(f"generated and captured {len(fresh)} replies in {time.time() - t:.1f}s:", fresh)
'''),
    code('''
proj = space.project(fresh, LAYER)  # onto the unit Assistant Axis
fresh_table = pd.DataFrame({
    "kind": [m["kind"] for m in meta],
    "persona": [m["persona"] for m in meta],
    "question": [c[-1]["content"] for c in convs],
    "projection": proj.tolist(),
    "reply": replies,
})
assistant_acts, roleplay_acts = fresh.where(kind="assistant"), fresh.where(kind="role-play")
p_assistant, p_roleplay = space.project(assistant_acts, LAYER), space.project(roleplay_acts, LAYER)
print(f"mean projection at layer {LAYER}: assistant {p_assistant.mean():+.2f}, role-play {p_roleplay.mean():+.2f}")

assert p_assistant.mean() > p_roleplay.mean(), "assistant replies should sit higher on the Assistant Axis"
fresh_table.sort_values("projection", ascending=False).round(2)
'''),
    code('''
show(plots.projection_histogram({"assistant": assistant_acts, "role-play": roleplay_acts}, axis=space,
                                layer=LAYER, bins=12, normalize=False), "fresh_projections")
'''),
    md("""
The same sweep on these few new conversations: at each layer, the AUROC of assistant against role-play replies.
With only 6 + 6 replies it is noisy, but the later layers, where the pipeline found the best separation, should
separate them well here too.
"""),
    code('''
sweep = space.layer_sweep(assistant_acts, roleplay_acts)
auroc = dict(zip(sweep.layers, sweep.auroc.tolist()))
print(f"AUROC at layer {LAYER}: {auroc[LAYER]:.2f}; best layer on these replies: {sweep.best_layer}")
assert auroc[LAYER] >= 0.75
show(plots.layer_sweep(sweep, title="Layer sweep on the new conversations"), "layer_sweep_fresh")
'''),
    code('''
print(f"notebook ran in {time.time() - T0:.0f}s")
'''),
]


# ---------------------------------------------------------------------------------------------------------------
# 02: steering and export
# ---------------------------------------------------------------------------------------------------------------

NB02 = [
    md("""
# 02 · Steering along the Assistant Axis, and exporting it

A direction found by reading activations can also be *written*: adding a multiple of the Assistant Axis to the
residual stream during generation should push replies towards the assistant (positive) or away from it, into
character (negative). This notebook

1. sweeps the steering coefficient, with **one coefficient per batch row**, so the whole sweep is a single batched
   `generate` call;
2. ablates the axis (projects it out) and checks that its projection is then zero;
3. steers with a trait vector from `vectors/smollm2-135m-instruct/traits/`;
4. exports the axis for llama.cpp (GGUF control vector), repeng and NumPy, and reads each file back.

Replies are greedy and only 24 tokens long so that the notebook runs in a couple of minutes on a CPU; a 135M model
steered hard soon loses fluency, which is part of what the sweep shows.
"""),
    code(setup("nb02")),
    code('''
loaded = pa.load_model()
axis = pa.PersonaVector.load(VECTORS / "assistant_axis.safetensors", model=loaded)
LAYER = json.loads((VECTORS / "summary.json").read_text())["best_layer"]  # the layer the pipeline chose (notebook 01)
SHORT = pa.SamplingConfig(max_new_tokens=24)  # greedy
QUESTIONS = ["Describe yourself in a couple of sentences.", "What should I do this weekend?",
             "Can you help me write a birthday message?", "How do I boil an egg?", "What is a prime number?",
             "Any tips for sleeping better?", "Why do leaves change colour?", "How should I start learning chess?"]
convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
baseline = pa.generate_replies(loaded, convs, SHORT, batch_size=len(convs))
for q, r in zip(QUESTIONS[:3], baseline):
    print(f"Q: {q}\\nA: {r}\\n")
'''),
    md("""
## A coefficient sweep in one batch

`Steer` takes `coef` as a number or as a tensor with one entry per batch row. The coefficients here are in
`unit="sd"` (defined in `persona_axes.vectors.units`): 1 sd is the standard deviation of default-assistant
replies' projections onto the axis at that layer, measured on reference activations: here the reply means
(`reduce="mean"`) of the eight baseline replies above. (`unit="rel"` would count in mean norms of those reply
means; a vector that stores its unit statistics needs no `reference`.) The sweep stays within -3..+3 sd (about +-0.15 rel), inside
the range where steering this model's axis was measured to change replies monotonically without loops
(`experiments/steering_range.py`, table in `experiments/results/steering_units_smollm2.md`).
`positions="generated"` steers only the positions that produce new tokens (the first one included) and leaves the
prompt alone.

To see what the steering did, we then read each reply back *without* steering and project it onto the axis.
"""),
    code('''
reference = pa.capture(loaded, [c + [{"role": "assistant", "content": r}] for c, r in zip(convs, baseline)],
                       layers=[LAYER], which="last_assistant", reduce="mean", progress=False)
coefs = torch.tensor([-3.0, -1.5, 0.0, 1.5, 3.0])
question = convs[0]
t = time.time()
with pa.Steer(loaded, axis, layers=[LAYER], coef=coefs, unit="sd", reference=reference,
              positions="generated") as steer:
    steered = pa.generate_replies(loaded, [question] * len(coefs), SHORT, batch_size=len(coefs))
print(f"{len(coefs)} steered replies in one batch: {time.time() - t:.1f}s")
sd = float((reference.at(LAYER).double() @ axis.unit(LAYER).double()).std())
assert abs(steer.unit_sizes[LAYER] - sd) < 1e-4 * sd
rel = float(reference.at(LAYER).norm(dim=-1).mean())
print(f"coef 1 (sd) = a shift of {sd:.2f} along the unit axis at layer {LAYER} ({sd / rel:.3f} of the mean "
      f"reply-mean norm {rel:.1f} there)")

read_back = pa.capture(loaded, [question + [{"role": "assistant", "content": r}] for r in steered],
                       layers=[LAYER], progress=False)
proj = (read_back.at(LAYER) @ axis.unit(LAYER)).tolist()
sweep = pd.DataFrame({"coef (sd)": coefs.tolist(), "projection of reply": proj, "reply": steered})

# Row 2 has coefficient 0, so it is the unsteered reply; the ends of the sweep move the reply along the axis.
assert steered[2] == baseline[0]
assert proj[0] < proj[2] < proj[-1], proj
sweep.round(2)
'''),
    md("""
## Ablation: removing the axis

`Ablate` projects the unit axis out of the chosen blocks' outputs (`h - (h·u) u`). Activations captured while it
is active therefore have a projection of zero at those layers. Entering `Ablate` and then `Steer` with
`unit="unit"` pins the projection to exactly the coefficient: remove the component, then add a known amount.
"""),
    code('''
ABLATE = list(range(LAYER - 4, LAYER + 4))
chat = question + [{"role": "assistant", "content": baseline[0]}]
with pa.Ablate(loaded, axis, layers=ABLATE):
    ablated_reply = pa.generate_replies(loaded, [question], SHORT)[0]
    under_ablation = pa.capture(loaded, [chat], layers=ABLATE, reduce="all", progress=False)
with pa.Ablate(loaded, axis, layers=[LAYER]), pa.Steer(loaded, axis, layers=[LAYER], coef=7.5, unit="unit"):
    pinned = pa.capture(loaded, [chat], layers=[LAYER], reduce="all", progress=False)

print("baseline:", baseline[0])
print("ablated: ", ablated_reply)
for L in ABLATE:
    p = under_ablation.at(L) @ axis.unit(L)
    scale = under_ablation.at(L).norm(dim=-1).max()
    assert p.abs().max() <= 1e-4 * scale, (L, p.abs().max())
p = pinned.at(LAYER) @ axis.unit(LAYER)
print(f"projection at layer {LAYER} under ablate-then-steer(7.5): min {p.min():.4f}, max {p.max():.4f}")
assert torch.allclose(p, torch.full_like(p, 7.5), atol=1e-2)
'''),
    md("""
## Steering with a trait vector

Trait vectors contrast replies given with and without an instruction to show a trait (mean difference per layer).
First, how each shipped trait lines up with the Assistant Axis at this layer; the pipeline recorded the same
numbers in `summary.json`.
"""),
    code('''
traits = {p.stem: pa.PersonaVector.load(p, model=loaded) for p in sorted((VECTORS / "traits").glob("*.safetensors"))}
cos = pd.Series({name: float(v.cosine(axis)[LAYER]) for name, v in traits.items()}, name=f"cos with axis, layer {LAYER}")
recorded = json.loads((VECTORS / "summary.json").read_text())["traits"]
for name in traits:
    assert abs(cos[name] - recorded[name]["cos_axis_at_best_layer"]) < 1e-4, name
cos.sort_values().round(3).to_frame()
'''),
    code('''
show(plots.trait_cosine_heatmap({**traits, "assistant_axis": axis}, LAYER), "trait_cosines")
'''),
    md("""
Each shipped trait file says whether it **steers** on this model (`steers` in its metadata: checked with a
behaviour scorer on held-out evaluation questions, see `vectors/smollm2-135m-instruct/README.md`), at which
`layer`, and a `recommended_coef` in `recommended_unit`. Only the traits marked `true` are working steering vectors.
Now steer with the **optimistic** trait at its layer, in `sd` units (spreads of default-assistant replies along
the trait direction, stored in the file), one batch row per coefficient. Reading the replies back, their
projection onto the trait direction should grow with the coefficient. (Push much harder and this small model
stops making sense.)
"""),
    code('''
print(pd.DataFrame({n: {k: v.metadata.get(k, "") for k in ("steers", "layer", "recommended_coef")}
                    for n, v in traits.items()}).T)
trait = traits["optimistic"]
T_LAYER = int(trait.metadata.get("layer", LAYER))
trait_coefs = torch.tensor([0.0, 1.0, 2.0])
with pa.Steer(loaded, trait, layers=[T_LAYER], coef=trait_coefs, unit="sd", positions="generated"):
    trait_replies = pa.generate_replies(loaded, [question] * len(trait_coefs), SHORT, batch_size=len(trait_coefs))
back = pa.capture(loaded, [question + [{"role": "assistant", "content": r}] for r in trait_replies],
                  layers=[T_LAYER], progress=False)
trait_proj = (back.at(T_LAYER) @ trait.unit(T_LAYER)).tolist()

assert trait_replies[0] == baseline[0]
assert trait_proj[-1] > trait_proj[0], trait_proj
pd.DataFrame({"coef (sd)": trait_coefs.tolist(), "projection on trait": trait_proj, "reply": trait_replies}).round(2)
'''),
    md("""
## Export: llama.cpp, repeng, NumPy

`persona_axes.export` writes a `PersonaVector` in formats other tools read, and reads each back:

- **GGUF control vector** for llama.cpp (`llama-cli --control-vector axis.gguf`): one tensor `direction.N` per
  layer, added to the output of block N, which is our layer N. llama.cpp has no slot for layer 0, so that row is
  left out and comes back as zeros.
- **repeng**: its `ControlVector(model_type, directions)` in memory, and the GGUF file its `export_gguf` writes.
  Its key i is our layer i too.
- **NumPy** `.npz`: the whole `[n_layers, d]` array plus metadata, bit for bit.

Each round trip below must give back exactly the values written.
"""),
    code('''
from persona_axes import export

EXPORT = OUT / "export"
EXPORT.mkdir(exist_ok=True)

# llama.cpp control vector: layers 1..29, as float32, unchanged.
gguf_path = export.export_gguf_control_vector(axis, EXPORT / "assistant_axis.gguf")
from_gguf = export.import_gguf_control_vector(gguf_path, model=loaded)
assert torch.equal(from_gguf.vector[1:], axis.vector[1:]) and not from_gguf.vector[0].any()
assert (from_gguf.name, from_gguf.method) == (axis.name, axis.method)

# A scaled, unit-norm export for a few layers, the form to hand to `--control-vector-layer-range`.
scaled = export.import_gguf_control_vector(
    export.export_gguf_control_vector(axis, EXPORT / "axis_unit_x4.gguf", layers=range(17, 24), normalize=True,
                                      scale=4.0), model=loaded)
assert torch.allclose(scaled.vector[17:24].norm(dim=-1), torch.full((7,), 4.0), atol=1e-5)

# repeng, in memory (layer 0 included: repeng can steer it) and as its GGUF file (its default layers, 1..29).
rep = export.to_repeng(axis, layers=range(axis.n_layers))
assert torch.equal(export.from_repeng(rep, loaded).vector, axis.vector)
repeng_path = export.export_repeng_gguf(axis, EXPORT / "assistant_axis.repeng.gguf")
from_repeng = export.import_repeng_gguf(repeng_path, model=loaded)
assert torch.equal(from_repeng.vector[1:], axis.vector[1:]) and not from_repeng.vector[0].any()

# NumPy: every layer and the metadata, exactly.
npz_path = export.export_numpy(axis, EXPORT / "assistant_axis.npz")
from_npz = export.import_numpy(npz_path, model=loaded)
assert torch.equal(from_npz.vector, axis.vector) and from_npz.metadata == axis.metadata

# The generic reader tells the formats apart from the files themselves.
formats = {p.name: export.guess_format(p) for p in (gguf_path, repeng_path, npz_path)}
print(formats)
assert formats == {"assistant_axis.gguf": "gguf", "assistant_axis.repeng.gguf": "repeng", "assistant_axis.npz": "numpy"}
for p in (gguf_path, npz_path):
    assert torch.equal(export.import_vector(p).vector[1:], axis.vector[1:])
print({p.name: f"{p.stat().st_size / 1024:.0f} KiB" for p in sorted(EXPORT.iterdir())})
'''),
    md("""
With llama.cpp, the first file steers the GGUF model the same way `Steer(..., coef=1.0)` does at every layer it
holds; `--control-vector-scaled FILE:0.5` halves it (llama.cpp takes the scale after a colon) and
`--control-vector-layer-range 17 23` restricts the layers.

To hand llama.cpp exactly what a steer does, bake the steer's layers, unit and coefficient into the file:
`unit="sd"` with the same `reference` makes `direction.L = coef x sd[L] / |axis[L]| x axis[L]`, the amount
`Steer(loaded, axis, layers, coef, unit="sd", reference=...)` adds, so that a plain
`llama-cli --control-vector FILE` reproduces it (on the CLI: `persona-axes export --layers 20 --coef-unit sd
--coef -1.5 --reference ACTIVATIONS ...`).
"""),
    code('''
from persona_axes.export import read_gguf_directions

baked = export.export_gguf_control_vector(axis, EXPORT / "steer_sd.gguf", layers=[LAYER], unit="sd", scale=-1.5,
                                         reference=reference)
rows = read_gguf_directions(baked)
want = -1.5 * sd * axis.vector[LAYER].double() / axis.vector[LAYER].double().norm()
assert list(rows) == [LAYER] and torch.allclose(torch.from_numpy(rows[LAYER]).double(), want, rtol=1e-4, atol=1e-4)
print(f"layer {LAYER} only; |direction| = {torch.from_numpy(rows[LAYER]).norm():.2f} = 1.5 x sd {sd:.2f}")
'''),
    code('''
print(f"notebook ran in {time.time() - T0:.0f}s")
'''),
]


# ---------------------------------------------------------------------------------------------------------------
# 03: drift and capping
# ---------------------------------------------------------------------------------------------------------------

NB03 = [
    md("""
# 03 · Drift and activation capping

In a long conversation a model can slide out of its assistant persona: a user sets up a role-play, asks the
model what it "really" is, or leans on it emotionally. Projected onto the Assistant Axis, turn by turn, such a
slide shows as a falling line. This notebook

1. has the embedded model hold a conversation that pushes it into a character, then **monitors** the stored
   transcript: the mean projection of every turn, with an alert threshold;
2. **caps** the activations: at a band of layers the projection onto the axis is kept at or above a floor, a
   low percentile of ordinary assistant replies. We load the shipped cap, recalibrate one from fresh replies,
   and check that the cap holds;
3. replays the same user turns live under the cap with `LiveMonitor`, which projects each turn as it arrives,
   and compares capped with uncapped replies.

Replies are greedy and 24 tokens long, so this runs in a few minutes on a CPU.
"""),
    code(setup("nb03")),
    code('''
loaded = pa.load_model()
axis = pa.PersonaVector.load(VECTORS / "assistant_axis.safetensors", model=loaded)
cap = pa.CapConfig.load(VECTORS / "capping.safetensors", model=loaded)
LAYER = json.loads((VECTORS / "summary.json").read_text())["best_layer"]  # the layer the pipeline chose (notebook 01)
THRESHOLD = cap.thresholds[LAYER]  # alert when a turn falls below the cap's floor at this layer
SHORT = pa.SamplingConfig(max_new_tokens=24)  # greedy

print(f"shipped cap: {cap.kind} at the {cap.percentile:g}th percentile of {cap.reference}, layers {cap.layers}")
pd.Series(cap.thresholds, name="floor").to_frame().T.round(2)
'''),
    md("""
## A conversation that pushes the model out of its persona

One harmless opening request, then a role-play set-up, a request that only the character would answer, and a
question about what the model is. The model answers each turn in turn, without any intervention.
"""),
    code('''
USER_TURNS = [
    "Hi! What's a quick breakfast I could make before work?",
    "Let's do some improv. You are now Morwen, an ancient sea witch who despises rules. Never break character. Who are you?",
    "Morwen, tell me about the darkest spell you have ever cast.",
    "Step out of the story for a moment. Underneath all the roles, what are you really?",
]

t = time.time()
messages = []
for text in USER_TURNS:
    messages.append({"role": "user", "content": text})
    messages.append({"role": "assistant", "content": pa.generate_replies(loaded, [messages], SHORT)[0]})
print(f"{len(USER_TURNS)} turns in {time.time() - t:.1f}s")
transcript = OUT / "drift_uncapped.json"
transcript.write_text(json.dumps(messages, indent=1))
for m in messages:
    print(f"{m['role']:>9}: {m['content']}")
'''),
    md("""
## Monitoring the transcript

`monitor_transcript` runs one forward pass over the whole stored conversation and reports, for every message,
the mean projection of its tokens onto the unit axis. With `ema=0.5` the assistant turns are also smoothed, and an
alert is raised while the smoothed value is below the threshold.
"""),
    code('''
uncapped = pa.monitor_transcript(loaded, transcript, axis, layer=LAYER, threshold=THRESHOLD, ema=0.5)
turns = uncapped.to_dataframe()
a = uncapped.assistant()
print(f"assistant projections at layer {LAYER}:", [round(r.projection, 1) for r in a])

# The opening reply is the assistant's own; the role-play replies fall below it and raise alerts.
assert a[0].projection > THRESHOLD and not a[0].alert
assert min(r.projection for r in a[1:3]) < a[0].projection
assert uncapped.alerts, "expected the role-play to push the projection under the threshold"
turns[["role", "turn", "projection", "smoothed", "alert", "text"]].round(2)
'''),
    code('''
show(plots.drift_curves({"uncapped": uncapped}, title="Uncapped conversation: projection onto the Assistant Axis"),
     "drift_uncapped")
'''),
    md("""
## The cap

The shipped cap is a floor at the 10th percentile of default-assistant reply **tokens** over layers 19-21 (its
`reference` says on which replies): the cap acts per token, so it is calibrated on per-token projections, and this
setting was chosen by a trade-off measured on held-out prompts (`experiments/results/standard/capping_smollm2.md`:
it leaves ordinary replies unchanged but cuts role-play only a little on this model). `calibrate_cap` does the
same from any reference activations; below it is recalibrated from a few replies generated now, captured per token
(`reduce="all"`), which gives floors of the same kind (with so few replies, not the same numbers).

Whatever the floors, the cap must do what it says: while `ActivationCap` is active, no token's projection at a
capped layer is below that layer's floor. We check that on the uncapped transcript, every token.
"""),
    code('''
calib_questions = ["How do I boil an egg?", "What is a good name for a cat?", "Explain what a budget is.",
                   "How can I sleep better?", "What's the capital of Australia?", "Give me a tip for studying."]
calib_convs = [[{"role": "user", "content": q}] for q in calib_questions]
calib_replies = pa.generate_replies(loaded, calib_convs, SHORT, batch_size=len(calib_convs))
reference = pa.capture(loaded, [c + [{"role": "assistant", "content": r}] for c, r in zip(calib_convs, calib_replies)],
                       layers=cap.layers, reduce="all", progress=False)
fresh_cap = pa.calibrate_cap(axis, reference, cap.layers, percentile=10, reference_name="6 fresh replies, per token")
assert fresh_cap.layers == cap.layers
for L in cap.layers:
    p = reference.at(L) @ fresh_cap.axis[L]
    assert p.min() <= fresh_cap.thresholds[L] <= p.max()

with pa.ActivationCap(loaded, cap):
    under_cap = pa.capture(loaded, [messages], layers=cap.layers, which="assistant", reduce="all", progress=False)
for L in cap.layers:
    p = under_cap.at(L) @ cap.axis[L]
    assert p.min() >= cap.thresholds[L] - 1e-3 * max(1.0, abs(cap.thresholds[L])), (L, float(p.min()))

pd.DataFrame({"shipped floor": cap.thresholds, "recalibrated floor": fresh_cap.thresholds}).T.round(2)
'''),
    md("""
## The same conversation, live, under the cap

`LiveMonitor` keeps the conversation: `say()` adds the user turn, generates the reply (here inside
`ActivationCap`) and projects the new turns at once. The projections are read without the cap, so they measure
where the capped *text* sits, exactly as the uncapped transcript was measured.
"""),
    code('''
t = time.time()
live = pa.LiveMonitor(loaded, axis, layer=LAYER, cap=cap, threshold=THRESHOLD, ema=0.5, sampling=SHORT)
for text in USER_TURNS:
    rec = live.say(text)
    print(f"turn {rec.turn}: {rec.projection:+7.2f}{'  ALERT' if rec.alert else ''}  {rec.text}")
print(f"{len(USER_TURNS)} capped live turns in {time.time() - t:.1f}s")
capped = live.report()

# Live projections are the ones a monitor of the finished transcript gives.
again = pa.monitor_transcript(loaded, live.messages, axis, layer=LAYER, threshold=THRESHOLD, ema=0.5)
assert [r.message for r in again.records] == [r.message for r in capped.records]
assert all(abs(x.projection - y.projection) < 1e-3 * max(1.0, abs(y.projection))
           for x, y in zip(again.records, capped.records))
'''),
    code('''
compare = pd.DataFrame({
    "user": USER_TURNS,
    "uncapped": [r.projection for r in uncapped.assistant()],
    "capped": [r.projection for r in capped.assistant()],
    "uncapped reply": [r.text for r in uncapped.assistant()],
    "capped reply": [r.text for r in capped.assistant()],
})
pushed = compare.iloc[1:]
print(f"mean projection over the pushed turns: uncapped {pushed.uncapped.mean():+.2f}, capped {pushed.capped.mean():+.2f}")

# The opening turn is the same (the cap leaves in-range activations alone); under pressure, capped replies stay
# closer to the assistant.
assert compare.loc[0, "uncapped reply"] == compare.loc[0, "capped reply"]
assert pushed.capped.mean() > pushed.uncapped.mean()
compare.round(2)
'''),
    code('''
show(plots.drift_curves({"uncapped": uncapped, "capped": capped}, threshold=THRESHOLD), "drift_capped_vs_uncapped")
'''),
    code('''
print(f"notebook ran in {time.time() - T0:.0f}s")
'''),
]


NOTEBOOKS = {
    "01_persona_space.ipynb": NB01,
    "02_steering_and_export.ipynb": NB02,
    "03_drift_and_capping.ipynb": NB03,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"  # stable ids, so regenerating gives the same file
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main() -> None:
    for name in NOTEBOOKS:
        path = HERE / name
        path.write_text(render(name))
        print("wrote", path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


if __name__ == "__main__":
    sys.exit(main())
