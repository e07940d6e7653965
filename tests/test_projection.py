"""Projections of latent states: deterministic PCA, figure contents, the optional UMAP extra."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest
import torch

from workbench.engine.trace import Trace
from workbench.lens.projection import UMAP_INSTALL_HINT, pca, project_latents
from workbench.lens.trajectory import LatentTrajectory

B, S, L, D, V = 4, 5, 2, 6, 7


def _traj(seed: int = 0, method: str = "m", n_latent=(4, 4, 2, 3)) -> LatentTrajectory:
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, S, L + 1, D, generator=g)
    valid = torch.arange(S)[None, :] <= torch.tensor(n_latent)[:, None]
    return LatentTrajectory(
        log_probs=torch.randn(B, S, V, generator=g).log_softmax(-1),
        valid=valid,
        hidden_states=hs,
        embeds=torch.randn(B, S, D, generator=g),
        correct=[True, False, True, False],
        questions=[f"q{i}" for i in range(B)],
        method=method,
    )


def test_pca_is_deterministic_with_sign_convention():
    x = np.random.default_rng(0).normal(size=(30, 5))
    c1, comp1, ev1 = pca(x)
    c2, comp2, _ = pca(x.copy())
    assert np.array_equal(c1, c2)
    big = np.abs(comp1).argmax(1)
    assert (comp1[np.arange(2), big] > 0).all()  # largest loading of each component is positive
    c3, comp3, _ = pca(-x)  # mirrored data: same components (sign fixed), mirrored coordinates
    assert np.allclose(comp3, comp1) and np.allclose(c3, -c1)
    assert ev1[0] >= ev1[1] and 0 < ev1.sum() <= 1
    ref = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:2]  # same subspace as numpy's SVD
    assert np.allclose(np.abs(ref @ comp1.T), np.eye(2), atol=1e-8)
    with pytest.raises(ValueError):
        pca(np.zeros((1, 3)))


def test_project_trajectory_points_and_figure():
    tr = _traj()
    proj = project_latents(tr)
    n = int(tr.valid.sum())
    assert proj.coords.shape == (n, 2) and len(proj.frame) == n
    assert proj.state == "hidden" and proj.method == "pca"
    assert {"method", "example", "step", "label", "correct", "x", "y"} <= set(proj.frame.columns)
    manual = tr.hidden_states[:, :, -1][tr.valid].double().numpy()
    assert np.allclose(proj.coords, pca(manual)[0])
    fig = proj.figure()
    assert len(fig.data) == 2  # one line trace for all paths + one marker trace coloured by step
    lines, points = fig.data
    assert (
        lines.mode == "lines" and sum(v is None for v in lines.x) == B
    )  # one break per example path
    assert list(points.marker.color) == proj.frame["step"].tolist()
    by_correct = proj.figure(color_by="correct")
    assert len(by_correct.data) == 1 + 2
    assert "PC1" in fig.layout.xaxis.title.text
    again = project_latents(tr)
    assert np.array_equal(again.coords, proj.coords)  # deterministic


def test_project_several_methods_and_embeds():
    trajs = {"a": _traj(0), "b": _traj(1)}
    proj = project_latents(trajs, color_by="method")
    assert sorted(set(proj.frame["method"])) == ["a", "b"]
    fig = proj.figure()
    assert len(fig.data) == 2 + 2  # a path trace per method, a marker trace per method
    emb = project_latents(trajs["a"], state="embeds")
    assert len(emb.frame) == int(trajs["a"].fed.sum())  # only fed steps have an embedding
    with pytest.raises(ValueError, match="color_by"):
        project_latents(trajs, color_by="nope")
    with pytest.raises(ValueError, match="method"):
        project_latents(trajs, method="tsne")


def test_project_trace_directly():
    tr = _traj()
    trace = Trace(
        prompt_ids=torch.zeros(B, 2, dtype=torch.long),
        prompt_mask=torch.ones(B, 2),
        fed=tr.fed,
        embeds=tr.embeds,
        topk_ids=tr.topk_ids,
        topk_probs=tr.topk_probs,
        entropy=tr.entropies,
        stop=torch.zeros(B, S, dtype=torch.bool),
        n_latent=tr.fed.sum(1),
        hidden_states=tr.hidden_states,
    )
    proj = project_latents(trace, layer=1)
    assert len(proj.frame) == int(tr.valid.sum()) and proj.layer == 1


def test_umap_missing_extra_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "umap" or name.startswith("umap."):
            raise ImportError("No module named 'umap'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "umap", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError) as info:
        project_latents(_traj(), method="umap")
    assert str(info.value) == UMAP_INSTALL_HINT
    assert "pip install 'workbench[umap]'" in str(info.value) and "umap-learn" in str(info.value)


def test_umap_warns_when_few_points(monkeypatch):
    """A stand-in ``umap`` checks the wiring (random_state, n_neighbors clipped) without the JIT."""
    import types

    seen = {}

    class FakeUMAP:
        def __init__(self, **kw):
            seen.update(kw)

        def fit_transform(self, x):
            return x[:, : seen["n_components"]]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    tr = _traj()
    with pytest.warns(UserWarning, match="n_neighbors"):
        proj = project_latents(tr, method="umap", n_neighbors=50, random_state=7)
    n = int(tr.valid.sum())
    assert seen["random_state"] == 7 and seen["n_neighbors"] == n - 1
    assert proj.coords.shape == (n, 2) and "UMAP 1" in proj.figure().layout.xaxis.title.text
