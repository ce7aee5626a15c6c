"""Misclassification regions: clustering, membership, coverage, the VAE, annotators, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest

from entangle.analysis.planted import region_coverage
from entangle.analysis.regions import (DigitStyleSpace, Region, Regions, find_regions, fine_tune,
                                       probe, region_accuracy, sample_gaussian)
from entangle.testing import check_node


def _blobs(seed=0):
    """Uniform latents in a 2-D box; errors in two small blobs (and a few scattered ones)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-4, 4, size=(4000, 2))
    in_a = np.linalg.norm(z - [2.0, 2.0], axis=1) < 0.8
    in_b = np.linalg.norm(z - [-2.0, -1.0], axis=1) < 0.8
    errors = (in_a | in_b) & (rng.random(len(z)) < 0.9) | (rng.random(len(z)) < 0.005)
    return z, errors, in_a, in_b


@pytest.mark.parametrize("method", ["bic", "dpgmm"])
def test_regions_sit_on_the_error_blobs(method):
    z, err, in_a, in_b = _blobs()
    regs = find_regions(z, err, method=method, min_members=20, seed=0)
    assert len(regs) >= 2
    centres = np.array([r.mean for r in regs])
    for c in ([2.0, 2.0], [-2.0, -1.0]):
        assert np.min(np.linalg.norm(centres - c, axis=1)) < 0.5
    # each blob is covered by one region; far away from both, nothing is inside
    zh, _, a_h, b_h = _blobs(seed=1)
    assign = regs.assign(zh)
    assert region_coverage(assign, a_h)["coverage"] > 0.8
    assert region_coverage(assign, b_h)["coverage"] > 0.8
    # far from both blobs, no point is in a blob's region (BIC may add one broad region for the
    # scattered errors: verification by the annotator, not clustering, rejects that one)
    blob_regions = [int(np.argmin(np.linalg.norm(centres - c, axis=1))) for c in ([2, 2], [-2, -1])]
    far = (np.linalg.norm(zh - [2, 2], axis=1) > 2.5) & (np.linalg.norm(zh - [-2, -1], axis=1) > 2.5)
    assert not np.isin(assign[far], [regs.regions[i].index for i in blob_regions]).any()


def test_groups_are_clustered_separately_and_membership_respects_them():
    z, err, in_a, _ = _blobs()
    groups = np.where(z[:, 0] > 0, 1, 0)
    regs = find_regions(z, err, groups=groups, min_members=20, seed=0)
    assert {r.group for r in regs} == {0, 1}
    inside = regs.assign(z[in_a], groups[in_a])
    assert (inside >= 0).mean() > 0.8
    # the same latents declared to be of the other group fall outside that group's regions
    wrong = regs.assign(z[in_a], 1 - groups[in_a])
    assert (wrong >= 0).mean() < 0.1


def test_region_sampling_and_validation():
    r = Region(0, np.array([1.0, -1.0]), np.diag([0.04, 0.25]), 1.0, 50)
    s = sample_gaussian(r, 5000, np.random.default_rng(0))
    np.testing.assert_allclose(s.mean(axis=0), [1.0, -1.0], atol=0.03)
    np.testing.assert_allclose(s.std(axis=0), [0.2, 0.5], rtol=0.05)
    regs = Regions([r], dim=2, quantile=0.95)
    assert 0.93 < (regs.assign(s) == 0).mean() < 0.97
    with pytest.raises(ValueError, match="one error flag"):
        find_regions(np.zeros((5, 2)), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="method"):
        find_regions(*_blobs()[:2], method="kmeans")


def test_vae_node_contract_and_shapes():
    from entangle.data.digits import DigitsSource
    from entangle.models.vae import VAENode
    x = DigitsSource().load("train", 0)["x"][:300]
    node = VAENode(latent_dim=3, hidden=[32], epochs=2)
    preds = check_node(node, {"x": x}, {})
    assert preds["z"].shape == (300, 3) and preds["logvar"].shape == (300, 3)
    fitted = node.clone().fit({"x": x}, {}, seed=0)
    dec = fitted.decode(np.zeros((4, 3)))
    assert dec.shape == (4, 64) and dec.min() >= 0 and dec.max() <= 1


def test_embedding_classifier_contract():
    from entangle.data.digits import DigitsSource
    from entangle.models.embedding_classifier import EmbeddingClassifier
    d = DigitsSource().load("train", 0)
    node = EmbeddingClassifier(hidden=[16], epochs=3)
    preds = check_node(node, {"x": d["x"]}, {"y": d["y"]})
    assert preds["feat"].shape == (len(d["y"]), 16) and preds["proba"].shape == (len(d["y"]), 10)
    with pytest.raises(ValueError, match="labels must lie"):
        EmbeddingClassifier(n_classes=5, epochs=1).fit({"x": d["x"]}, {"y": d["y"]}, seed=0)


def test_fine_tuning_fixes_a_region_and_the_retention_term_keeps_the_rest():
    """A model trained with one region mislabelled is fine-tuned on correctly labelled region samples."""
    from entangle.models.embedding_classifier import EmbeddingClassifier
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, size=(3000, 2))
    y_true = (X[:, 0] + X[:, 1] > 0).astype(int)
    region = np.linalg.norm(X - [1.5, 1.5], axis=1) < 0.9
    y_bug = np.where(region, 0, y_true)
    model = EmbeddingClassifier(n_classes=2, hidden=[32, 16], epochs=30).fit({"x": X}, {"y": y_bug}, seed=0)
    classify = lambda m: (lambda x: m.predict({"x": x})["pred"])  # noqa: E731
    Xh = rng.uniform(-3, 3, size=(3000, 2))
    yh = (Xh[:, 0] + Xh[:, 1] > 0).astype(int)
    rh = np.linalg.norm(Xh - [1.5, 1.5], axis=1) < 0.9
    assert (classify(model)(Xh[rh]) == yh[rh]).mean() < 0.5
    fix = X[region][:100]
    tuned = fine_tune(model, fix, y_true[region][:100], X[~region], retention=1.0, epochs=30, seed=0)
    acc_region = (classify(tuned)(Xh[rh]) == yh[rh]).mean()
    acc_rest_before = (classify(model)(Xh[~rh]) == yh[~rh]).mean()
    acc_rest_after = (classify(tuned)(Xh[~rh]) == yh[~rh]).mean()
    assert acc_region > 0.9
    assert acc_rest_after > acc_rest_before - 0.02
    # the original node is untouched
    assert (classify(model)(Xh[rh]) == yh[rh]).mean() < 0.5
    with pytest.raises(ValueError, match="at least one"):
        fine_tune(model, X[:0], y_true[:0], X)


def test_exact_style_space_finds_the_planted_region():
    """Probing the digit world's style latents with a buggy classifier: one region covers the plant.

    The plant (7s thicker than 0.5 relabelled 1) is wide enough that every training seed learns
    it; which region is the largest is not asserted (the classifier's own errors on 8s can rival it).
    """
    from entangle.data.planted import DigitWorldSource
    from entangle.models.embedding_classifier import EmbeddingClassifier
    src = DigitWorldSource(copies=2, planted={"digit": 7, "attribute": "thickness", "above": 0.5,
                                              "relabel_to": 1})
    tr = src.load("train", 0)
    clf = EmbeddingClassifier(epochs=16).fit({"x": tr["x"]}, {"y": tr["y"]}, seed=0)
    classify = lambda x: clf.predict({"x": x})["pred"]  # noqa: E731
    space = DigitStyleSpace(src, src.bases("train", 0))
    pr, pred, err = probe(space, classify, 2000, np.random.default_rng(0))
    np.testing.assert_array_equal(pr.planted, (pr.labels == 7) & (pr.latents[:, 0] > 0.5))
    assert err[pr.planted].mean() > max(0.4, 4 * err[~pr.planted].mean())   # the bug was learned
    regs = find_regions(pr.latents, err, groups=pr.groups, method="bic", seed=0)
    fresh = space.sample(3000, np.random.default_rng(1))
    cover = region_coverage(regs.assign(fresh.latents, fresh.groups), fresh.planted)
    plant = next(r for r in regs if r.index == cover["best_region"])
    assert cover["coverage"] > 0.7 and plant.group == 7 and plant.mean[0] > 0.6   # thick 7s
    held = space.sample_region(plant, 100, np.random.default_rng(2))
    assert (held.labels == 7).all() and region_accuracy([held], classify)[0] < 0.6


def test_misclassification_regions_experiment_report(compose_cfg, tmp_path):
    import json

    from entangle.cli import run
    cfg = compose_cfg("experiment=misclassification_regions", "profile=quick",
                      f"store.root={tmp_path / 's'}")
    report = run(cfg)
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    results = on_disk["planted"][0]["results"]
    assert {(r["space"], r["method"]) for r in results} == {(s, m) for s in ("vae", "exact")
                                                            for m in ("dpgmm", "bic")}
    for r in results:
        assert r["n_regions"] == len(r["regions"])
        for reg in r["regions"]:
            assert 0 <= reg["accuracy_before"] <= 1 and 0 <= reg["accuracy_after"] <= 1
            assert reg["bug"] == (1 - reg["accuracy_before"] >= r["min_error_rate"])
        if r["bugs"]:
            assert r["n_labelled"] > 0 and "planted_accuracy_after" in r
    exact = [r for r in results if r["space"] == "exact"]
    assert all(r["planted_coverage"]["n_planted"] > 0 for r in exact)
    assert set(on_disk["summary"]["planted"]) == {"vae/dpgmm", "vae/bic", "exact/dpgmm", "exact/bic"}
    for f in report["figures"]:
        assert (tmp_path / "run" / f).stat().st_size > 1000
