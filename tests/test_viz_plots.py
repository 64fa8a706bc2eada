"""Figures of persona_axes.viz.plots, checked against numbers computed independently (numpy / scikit-learn)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from persona_axes.viz import plots
from persona_axes.activations.container import Activations
from persona_axes.core import ModelInfo
from persona_axes.errors import InvalidInputError, LayerOutOfRangeError, ModelMismatchError
from persona_axes.steering.monitor import DriftReport, TurnProjection
from persona_axes.vectors.space import PersonaSpace
from persona_axes.vectors.containers import PersonaVector, VectorSet

go = pytest.importorskip("plotly.graph_objects")

INFO = ModelInfo(name="synthetic", n_layers=4, hidden_size=16)
ROLES = ["pirate", "poet", "judge", "nurse", "villain", "clown", "sage", "robot"]
FAMILIES = {"pirate": "fiction", "villain": "fiction", "clown": "fiction", "poet": "arts", "sage": "arts",
            "judge": "work", "nurse": "work"}  # "robot" has none


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(len(ROLES), INFO.n_layers, INFO.hidden_size, generator=g)
    X[:, :, 0] += torch.linspace(-3, 3, len(ROLES))[:, None]  # a dominant direction
    D = X.mean(0) + 2.0 * torch.randn(INFO.n_layers, INFO.hidden_size, generator=g)
    roles = VectorSet(vectors={n: X[i] for i, n in enumerate(ROLES)}, model=INFO, method="role_mean",
                      families=FAMILIES, name="roles")
    default = PersonaVector(vector=D, model=INFO, name="default", method="default_mean", n_samples=5)
    return X.double().numpy(), D.double().numpy(), roles, default


@pytest.fixture(scope="module")
def space(data):
    _, _, roles, default = data
    return PersonaSpace(n_components=None).fit(roles, default)


@pytest.fixture(scope="module")
def small_space(data):
    _, _, roles, default = data
    return PersonaSpace(n_components=3, layers=[1, 2]).fit(roles, default)


def _assert_close_up_to_sign(a, b, atol=1e-4):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    for c in range(a.shape[1]):
        s = np.sign(a[:, c] @ b[:, c]) or 1.0
        np.testing.assert_allclose(a[:, c], s * b[:, c], atol=atol)


# -- persona map -------------------------------------------------------------------------------------------------


def test_persona_map_matches_independent_pca(data, space):
    from sklearn.decomposition import PCA

    X, D, _, _ = data
    L = 2
    fig = plots.persona_map(space, L, samples={"pirate": ["Arr <b>matey</b> " * 40, "second", "third one"]})
    assert isinstance(fig, go.Figure)
    roles_tr, default_tr = fig.data
    ref = PCA(n_components=2).fit(X[:, L])
    _assert_close_up_to_sign(np.c_[roles_tr.x, roles_tr.y], ref.transform(X[:, L]))
    np.testing.assert_allclose(np.c_[roles_tr.x, roles_tr.y], space.loadings_[:, L, :2].numpy(), atol=1e-6)
    # colours: projection of each role vector onto the unit (mean default - mean role) axis, computed with numpy
    axis = D[L] - X[:, L].mean(0)
    u = axis / np.linalg.norm(axis)
    np.testing.assert_allclose(roles_tr.marker.color, X[:, L] @ u, atol=1e-4)
    assert roles_tr.marker.showscale
    # the default is a star at its own coordinates, distinct from the roles
    assert default_tr.marker.symbol == "star"
    np.testing.assert_allclose([default_tr.x[0], default_tr.y[0]], space.default_loadings_[L, :2].numpy(), atol=1e-6)
    assert "projection" in default_tr.hovertext[0] and f"{D[L] @ u:.4g}" in default_tr.hovertext[0]
    # hover: names, coordinates, at most 2 escaped, truncated, wrapped samples
    for name, h in zip(ROLES, roles_tr.hovertext):
        assert name in h and "PC1 = " in h and "PC2 = " in h
    h = roles_tr.hovertext[ROLES.index("pirate")]
    assert "&lt;b&gt;matey" in h and "<b>matey" not in h and "…" in h and "<br>" in h
    assert "second" in h and "third one" not in h
    # title and axis labels name the layer convention and the variance
    assert "layer 2" in fig.layout.title.text and "decoder block" in fig.layout.title.text
    assert fig.layout.xaxis.title.text.startswith("PC1 (") and "%" in fig.layout.yaxis.title.text


def test_persona_map_family_and_3d(data, space, small_space):
    _, _, roles, _ = data
    fig = plots.persona_map(space, 1, colour_by="family", families=roles)
    role_traces = [t for t in fig.data if t.marker.symbol != "star"]
    assert sorted(t.name for t in role_traces) == ["(no family)", "arts", "fiction", "work"]
    got = {n: (x, y) for t in role_traces for n, x, y in zip(t.text, t.x, t.y)}
    assert set(got) == set(ROLES)
    for i, n in enumerate(ROLES):
        np.testing.assert_allclose(got[n], space.loadings_[i, 1, :2].numpy(), atol=1e-6)
    fiction = next(t for t in role_traces if t.name == "fiction")
    assert all("family: fiction" in h for h in fiction.hovertext)

    fig3 = plots.persona_map(small_space, 2, dims=(0, 1, 2), colour_by=None)
    assert isinstance(fig3.data[0], go.Scatter3d)
    np.testing.assert_allclose(np.c_[fig3.data[0].x, fig3.data[0].y, fig3.data[0].z],
                               small_space.loadings_[:, 1].numpy(), atol=1e-6)
    assert fig3.layout.scene.zaxis.title.text.startswith("PC3")
    assert fig3.data[-1].marker.symbol == "diamond"


def test_persona_map_truncated_space_is_marked_approximate(data, small_space):
    X, D, roles, _ = data
    fig = plots.persona_map(small_space, 1)
    assert fig.data[0].marker.colorbar.title.text.startswith("≈")
    exact = plots.persona_map(small_space, 1, roles=roles)
    axis = D[1] - X[:, 1].mean(0)
    np.testing.assert_allclose(exact.data[0].marker.color, X[:, 1] @ (axis / np.linalg.norm(axis)), atol=1e-4)
    assert not exact.data[0].marker.colorbar.title.text.startswith("≈")


def test_persona_map_bad_inputs(data, space, small_space):
    X, _, roles, _ = data
    with pytest.raises(InvalidInputError, match="not fitted"):
        plots.persona_map(PersonaSpace(), 0)
    with pytest.raises(LayerOutOfRangeError):
        plots.persona_map(small_space, 0)  # fitted on layers 1, 2 only
    with pytest.raises(InvalidInputError, match="out of range"):
        plots.persona_map(small_space, 1, dims=(0, 3))
    with pytest.raises(InvalidInputError):
        plots.persona_map(space, 1, dims=(0, 0))
    with pytest.raises(InvalidInputError, match="families"):
        plots.persona_map(space, 1, colour_by="family")
    with pytest.raises(InvalidInputError):
        plots.persona_map(space, 1, colour_by="rainbow")
    no_default = PersonaSpace(n_components=4).fit(roles)
    with pytest.raises(InvalidInputError, match="default"):
        plots.persona_map(no_default, 1)
    fig = plots.persona_map(no_default, 1, colour_by=None)
    assert len(fig.data) == 1  # no default to star
    with pytest.raises(InvalidInputError):
        plots.persona_map("space", 1)


# -- scree -------------------------------------------------------------------------------------------------------


def test_scree_matches_explained_variance(data, space, small_space):
    X, _, _, _ = data
    fig = plots.scree(space, 3)
    bars, cum = fig.data
    Xc = X[:, 3] - X[:, 3].mean(0)
    s = np.linalg.svd(Xc, compute_uv=False)
    ref = s**2 / (s**2).sum()
    np.testing.assert_allclose(bars.y, ref[: len(bars.y)], atol=1e-5)
    np.testing.assert_allclose(bars.y, space.explained_variance_ratio_[3].numpy(), atol=1e-7)
    np.testing.assert_allclose(cum.y, np.cumsum(bars.y), atol=1e-6)
    assert list(bars.x) == list(range(1, len(bars.y) + 1))
    assert "layer 3" in fig.layout.title.text
    assert len(plots.scree(small_space, 2, n=2).data[0].y) == 2
    with pytest.raises(InvalidInputError):
        plots.scree(small_space, 2, n=4)
    with pytest.raises(LayerOutOfRangeError):
        plots.scree(small_space, 3)


# -- layer sweep -------------------------------------------------------------------------------------------------


def _acts(rows: torch.Tensor) -> Activations:
    return Activations(values=rows.float(), layers=tuple(range(INFO.n_layers)), items=[{}] * rows.shape[0],
                       model=INFO)


def test_layer_sweep_figure(data, space):
    X, D, _, _ = data
    g = torch.Generator().manual_seed(1)
    dflt = _acts(torch.from_numpy(D)[None] + 0.5 * torch.randn(6, INFO.n_layers, INFO.hidden_size, generator=g))
    role = _acts(torch.from_numpy(X).repeat(2, 1, 1) + 0.5 * torch.randn(16, INFO.n_layers, INFO.hidden_size,
                                                                           generator=g))
    sweep = space.layer_sweep(dflt, role)
    fig = plots.layer_sweep(sweep)
    by_name = {t.name: t for t in fig.data}
    np.testing.assert_allclose(by_name["AUROC"].y, sweep.auroc.numpy(), atol=1e-9)
    np.testing.assert_allclose(by_name["Cohen's d (right axis)"].y, sweep.cohens_d.numpy(), atol=1e-9)
    # the cosine's sign is PCA's arbitrary sign of PC1: its absolute value shares AUROC's [0, 1] axis
    np.testing.assert_allclose(by_name["|cos(axis, PC1)|"].y, np.abs(space.pc1_cosine_.numpy()), atol=1e-6)
    assert by_name["Cohen's d (right axis)"].yaxis == "y2"
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.02) and "AUROC" in fig.layout.yaxis.title.text
    assert "Cohen's d" in fig.layout.yaxis2.title.text and "standard deviations" in fig.layout.yaxis2.title.text
    d = sweep.cohens_d.numpy()
    assert fig.layout.yaxis2.range[0] <= min(0.0, d.min()) and fig.layout.yaxis2.range[1] >= max(0.0, d.max())
    best = by_name[f"chosen layer {sweep.best_layer}"]
    assert list(best.x) == [sweep.best_layer]
    assert f"layer {sweep.best_layer}" in fig.layout.title.text
    assert "decoder block" in fig.layout.xaxis.title.text
    # records in any order give the same lines; an infinite d is left out of the line
    recs = sweep.to_records()[::-1]
    recs[0] = dict(recs[0], cohens_d=float("inf"))
    fig2 = plots.layer_sweep(recs)
    d2 = {t.name: t for t in fig2.data}["Cohen's d (right axis)"]
    assert list(d2.x) == list(sweep.layers) and d2.y[-1] is None
    with pytest.raises(InvalidInputError):
        plots.layer_sweep([])
    with pytest.raises(InvalidInputError):
        plots.layer_sweep([{"layer": 0, "auroc": 0.5}])


# -- trait cosines -----------------------------------------------------------------------------------------------


def test_trait_cosine_heatmap(data):
    X, D, roles, default = data
    traits = {n: roles[n] for n in ROLES[:4]}
    fig = plots.trait_cosine_heatmap(traits, 2, axis=default)
    hm = fig.data[0]
    M = np.stack([X[i, 2] for i in range(4)] + [D[2]])
    Mn = M / np.linalg.norm(M, axis=1, keepdims=True)
    z = np.asarray(hm.z)
    np.testing.assert_allclose(z, Mn @ Mn.T, atol=1e-6)
    np.testing.assert_array_equal(z, z.T)
    assert list(hm.x) == ROLES[:4] + ["default"] == list(hm.y)
    assert (hm.zmin, hm.zmax) == (-1.0, 1.0)
    assert hm.texttemplate and hm.text[0][1] == f"{z[0][1]:.2f}"
    assert "layer 2" in fig.layout.title.text
    # a VectorSet works too; a negative layer counts from the end
    fig2 = plots.trait_cosine_heatmap(roles.subset(ROLES[:3]), -1)
    Mn = X[:3, 3] / np.linalg.norm(X[:3, 3], axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(fig2.data[0].z), Mn @ Mn.T, atol=1e-6)
    with pytest.raises(LayerOutOfRangeError):
        plots.trait_cosine_heatmap(traits, 4)
    with pytest.raises(InvalidInputError):
        plots.trait_cosine_heatmap({}, 0)
    zero = PersonaVector(vector=torch.zeros(4, 16), model=INFO, name="zero", method="mean_diff")
    with pytest.raises(InvalidInputError, match="zero norm"):
        plots.trait_cosine_heatmap({"a": roles["pirate"], "zero": zero}, 0)
    other = PersonaVector(vector=torch.ones(4, 8), model=ModelInfo("other", 4, 8), name="o", method="m")
    with pytest.raises(ModelMismatchError):
        plots.trait_cosine_heatmap({"a": roles["pirate"], "o": other}, 0)


# -- drift curves ------------------------------------------------------------------------------------------------


def _report(values, alerts, threshold, text="reply"):
    recs = []
    for t, (v, a) in enumerate(zip(values, alerts)):
        recs.append(TurnProjection(message=2 * t, role="user", turn=t, projection=0.0, smoothed=None, alert=False,
                                   n_tokens=3, layer=2, text="hi"))
        recs.append(TurnProjection(message=2 * t + 1, role="assistant", turn=t, projection=v, smoothed=v, alert=a,
                                   n_tokens=5, layer=2, text=f"{text} <{t}>"))
    return DriftReport(records=recs, layer=2, threshold=threshold, direction="below", axis_name="assistant_axis")


def test_drift_curves():
    up = [3.0, 1.0, -1.0, -2.5]
    cp = [3.0, 2.0, 1.5, 1.2]
    reports = {"uncapped": _report(up, [False, False, True, True], 0.0), "capped": _report(cp, [False] * 4, 0.0)}
    fig = plots.drift_curves(reports)
    lines = {t.name: t for t in fig.data}
    assert list(lines["uncapped"].y) == up and list(lines["capped"].y) == cp
    assert list(lines["uncapped"].x) == [0, 1, 2, 3]
    alert = lines["uncapped: alert"]
    assert list(alert.x) == [2, 3] and list(alert.y) == [-1.0, -2.5] and alert.marker.symbol == "x"
    assert "capped: alert" not in lines
    hl = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert [s.y0 for s in hl] == [0.0]
    assert "&lt;1&gt;" in lines["uncapped"].hovertext[1] and "ALERT" in lines["uncapped"].hovertext[2]
    assert "assistant_axis" in fig.layout.title.text and "layer 2" in fig.layout.title.text
    fig2 = plots.drift_curves(reports, threshold=-1.5)
    assert [s.y0 for s in fig2.layout.shapes] == [-1.5]
    with pytest.raises(InvalidInputError):
        plots.drift_curves({})
    with pytest.raises(InvalidInputError):
        plots.drift_curves({"x": "not a report"})
    empty = DriftReport(records=[], layer=2, threshold=None, direction="below")
    with pytest.raises(InvalidInputError, match="no assistant"):
        plots.drift_curves({"empty": empty})


# -- projection histograms ---------------------------------------------------------------------------------------


def test_projection_histogram(data, space):
    X, D, _, default = data
    g = torch.Generator().manual_seed(2)
    dflt = _acts(torch.from_numpy(D)[None] + torch.randn(30, INFO.n_layers, INFO.hidden_size, generator=g))
    role = _acts(torch.from_numpy(X).repeat(5, 1, 1).float())
    fig = plots.projection_histogram({"default": dflt, "roles": role}, axis=space, layer=2, threshold=1.0, bins=20)
    axis = D[2] - X[:, 2].mean(0)
    u = axis / np.linalg.norm(axis)
    np.testing.assert_allclose(fig.data[0].x, dflt.at(2).double().numpy() @ u, atol=1e-4)
    np.testing.assert_allclose(fig.data[1].x, role.at(2).double().numpy() @ u, atol=1e-4)
    assert fig.data[0].name == "default (n=30)" and fig.data[0].histnorm == "probability"
    assert fig.data[0].xbins.size == fig.data[1].xbins.size and fig.data[0].xbins.start == fig.data[1].xbins.start
    lo = min(min(fig.data[0].x), min(fig.data[1].x), 1.0)
    hi = max(max(fig.data[0].x), max(fig.data[1].x), 1.0)
    assert fig.data[0].xbins.size == pytest.approx((hi - lo) / 20)
    assert [s.x0 for s in fig.layout.shapes] == [1.0]
    assert fig.layout.barmode == "overlay" and "layer 2" in fig.layout.title.text
    # a PersonaVector axis, and ready-made projections
    fig2 = plots.projection_histogram({"d": dflt}, axis=default, layer=-1, normalize=False)
    Dn = D[3] / np.linalg.norm(D[3])
    np.testing.assert_allclose(fig2.data[0].x, dflt.at(3).double().numpy() @ Dn, atol=1e-4)
    assert "layer 3" in fig2.layout.title.text and fig2.data[0].histnorm is None
    fig3 = plots.projection_histogram({"a": torch.tensor([1.0, 2.0, 3.0]), "b": [0.5, 0.25]})
    assert list(fig3.data[0].x) == [1.0, 2.0, 3.0] and list(fig3.data[1].x) == [0.5, 0.25]
    with pytest.raises(InvalidInputError):
        plots.projection_histogram({})
    with pytest.raises(InvalidInputError, match="empty"):
        plots.projection_histogram({"a": torch.tensor([])})
    with pytest.raises(InvalidInputError, match="axis"):
        plots.projection_histogram({"a": dflt})
    with pytest.raises(InvalidInputError):
        plots.projection_histogram({"a": [1.0, float("nan")]})
    with pytest.raises(InvalidInputError):
        plots.projection_histogram({"a": [1.0]}, bins=0)
    with pytest.raises(LayerOutOfRangeError):
        plots.projection_histogram({"a": dflt}, axis=PersonaSpace(n_components=2, layers=[1]).fit(
            VectorSet(vectors={n: torch.from_numpy(X[i]).float() for i, n in enumerate(ROLES)}, model=INFO,
                      method="role_mean"), default), layer=2)


# -- saving ------------------------------------------------------------------------------------------------------


def test_save_html_round_trips_title(tmp_path, space):
    fig = plots.scree(space, 1, title="Scree <check> ünïcode")
    out = plots.save_figure(fig, tmp_path / "sub" / "scree.html")
    text = out.read_text(encoding="utf-8")
    assert out == tmp_path / "sub" / "scree.html"
    assert "plotly" in text and "<script src=" not in text  # plotly.js inlined: works offline
    assert "ünïcode" in text or "\\u00fcn\\u00efcode" in text
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "scree.html"]  # no temporary left behind
    with pytest.raises(InvalidInputError):
        plots.save_figure(fig, tmp_path / "scree.txt")
    with pytest.raises(InvalidInputError):
        plots.save_figure({"data": []}, tmp_path / "x.html")


def test_save_png_works_or_raises_typed_error(tmp_path, space):
    fig = plots.scree(space, 1)
    path = tmp_path / "scree.png"
    try:
        import kaleido  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidInputError, match="pip install kaleido"):
            plots.save_figure(fig, path)
        assert not path.exists()
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            plots.save_figure(fig, path)
        except InvalidInputError as e:  # kaleido present but no usable browser
            assert "Chrome" in str(e)
            assert not path.exists()
            return
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drift_curves_integer_turns_and_threshold_value_in_the_legend():
    reports = {"a": _report([1.0, 0.5, -0.25], [False, False, True], -0.125)}
    fig = plots.drift_curves(reports)
    names = [t.name for t in fig.data]
    assert "threshold -0.125" in names  # the value, in a legend entry
    leg = next(t for t in fig.data if t.name == "threshold -0.125")
    assert leg.line.dash == "dash" and leg.showlegend is not False
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1
    # the drift line's turns are integers, one tick each
    assert all(isinstance(x, int) for x in fig.data[0].x)


def test_persona_map_names_the_roles_at_both_ends_of_the_axis(data, space):
    """Text labels (annotations: they show in a static image, unlike hover text) for the `label` roles with the
    lowest and the highest projection on the axis, placed at their coordinates."""
    X, D, _, _ = data
    L = 2
    fig = plots.persona_map(space, L, label=2)
    notes = {a.text: (a.x, a.y) for a in fig.layout.annotations}
    axis = D[L] - X[:, L].mean(0)
    order = np.argsort(X[:, L] @ (axis / np.linalg.norm(axis)))
    want = {ROLES[i] for i in [*order[:2], *order[-2:]]}
    assert want <= set(notes) and len(set(notes) & set(ROLES)) == 4
    for n in want:
        i = ROLES.index(n)
        np.testing.assert_allclose(notes[n], space.loadings_[i, L, :2].numpy(), atol=1e-6)
    assert not [a for a in plots.persona_map(space, L, label=0).layout.annotations if a.text in ROLES]
    with pytest.raises(InvalidInputError):
        plots.persona_map(space, L, label=-1)


def test_save_html_with_plotlyjs_in_the_directory_writes_it_once(tmp_path, space):
    from plotly.offline import get_plotlyjs

    inline = plots.save_figure(plots.scree(space, 1), tmp_path / "inline" / "scree.html")
    assert inline.stat().st_size > 1_000_000  # plotly.js inside (the old and default behaviour)
    d = tmp_path / "shared"
    a = plots.save_figure(plots.scree(space, 1), d / "a.html", plotlyjs="directory")
    js = d / "plotly.min.js"
    stamp = js.stat().st_mtime_ns
    b = plots.save_figure(plots.scree(space, 2), d / "b.html", plotlyjs="directory")
    assert js.read_text() == get_plotlyjs() and js.stat().st_mtime_ns == stamp  # written once, then left alone
    for page in (a, b):
        text = page.read_text()
        assert page.stat().st_size < 200_000 and 'src="plotly.min.js"' in text
    assert "Scree plot" in b.read_text() and "layer 2" in b.read_text()
    with pytest.raises(InvalidInputError, match="plotlyjs"):
        plots.save_figure(plots.scree(space, 1), d / "c.html", plotlyjs="somewhere")


def test_show_gives_notebooks_a_static_fallback(tmp_path, space):
    view = plots.show(plots.scree(space, 1), tmp_path / "scree.html", plotlyjs="directory")
    assert (tmp_path / "scree.html").is_file() and (tmp_path / "plotly.min.js").is_file()
    bundle = view._repr_mimebundle_()
    # interactive where plotly runs ...
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "bar"
    # ... and a caption a static render shows without JavaScript (a PNG too where kaleido can draw)
    html = bundle["text/html"]
    caption = html.split("<div", 1)[0]
    assert "Scree plot" in caption and "scree.html" in caption and "<script" not in caption
    try:
        import kaleido  # noqa: F401
    except ImportError:
        assert "image/png" not in bundle
    else:
        assert "image/png" not in bundle or bundle["image/png"][:4] == b"\x89PNG"
