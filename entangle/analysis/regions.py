"""Misclassification regions (Defuse, Slack et al., 2021): search a latent space for a model's bugs.

Defuse has three steps, each a function here:

1. *Identification* — sample latents, decode them to inputs, run the model under test and keep
   the latents whose decoded inputs it gets wrong according to an annotator (:func:`probe`).
2. *Distillation* — cluster those latents with a Gaussian mixture (Defuse's Dirichlet-process
   one, or one sized by BIC); each kept component is a misclassification region, one bug each
   (:func:`find_regions`).
3. *Correction* — label a few samples per region once (the annotator), and fine-tune the model
   on them with a retention term that keeps its behaviour elsewhere (:func:`fine_tune`).

A latent space is any object with ``sample(n, rng)`` and ``sample_region(region, n, rng)``
returning a :class:`Probe` (latents, decoded inputs, annotator labels). Two are provided: a
VAE's latent space with a reference classifier as annotator (:class:`VAESpace`, where no exact
latent exists), and the exact style latents of a simulator with the simulator as annotator
(:class:`DigitStyleSpace`, which makes the planted region and its coverage exact).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Probe:
    """Sampled latents with their decoded inputs and the annotator's verdict.

    ``labels`` are the annotator's labels, ``valid`` marks samples it could label (a reference
    classifier abstains on unrecognisable decodes), ``groups`` optionally splits latents into
    groups clustered separately (e.g. the object class), ``planted`` marks samples in a planted
    region where that is known exactly.
    """

    latents: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    groups: np.ndarray | None = None
    planted: np.ndarray | None = None
    outputs: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.latents)

    def subset(self, mask: np.ndarray) -> "Probe":
        pick = lambda a: None if a is None else np.asarray(a)[mask]  # noqa: E731
        outputs = None if self.outputs is None else {k: np.asarray(v)[mask] for k, v in self.outputs.items()}
        return Probe(self.latents[mask], self.inputs[mask], self.labels[mask], self.valid[mask],
                     pick(self.groups), pick(self.planted), outputs)


class LatentSpace(Protocol):
    """What Defuse needs from a generative model: samples and samples from a found region."""

    def sample(self, n: int, rng: np.random.Generator) -> Probe: ...

    def sample_region(self, region: "Region", n: int, rng: np.random.Generator) -> Probe: ...


# --------------------------------------------------------------------------------------------
# regions
# --------------------------------------------------------------------------------------------

@dataclass
class Region:
    """One misclassification region: a Gaussian in latent space (within one group, if any)."""

    index: int
    mean: np.ndarray
    cov: np.ndarray
    weight: float
    n_members: int
    group: Any = None

    def mahalanobis2(self, z: np.ndarray) -> np.ndarray:
        d = np.asarray(z, dtype=np.float64) - self.mean
        return np.einsum("ij,jk,ik->i", d, np.linalg.inv(self.cov), d)

    def summary(self) -> dict[str, Any]:
        return {"region": self.index, "group": self.group, "weight": self.weight,
                "n_members": self.n_members, "mean": self.mean.tolist()}


@dataclass
class Regions:
    """Found regions; a point belongs to the densest region whose ``quantile`` ellipsoid holds it."""

    regions: list[Region]
    dim: int
    quantile: float = 0.95
    member_labels: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self):
        return iter(self.regions)

    def assign(self, latents: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Each point's region index, or -1 outside every region (of the point's group).

        A point is inside a region when it lies within the region's ``quantile`` ellipsoid;
        among the regions it is inside, it belongs to the one with the highest mixture density
        (member count × Gaussian density), so a broad region does not swallow the edges of a
        tight one.
        """
        from scipy import stats
        z = np.asarray(latents, dtype=np.float64)
        limit = stats.chi2.ppf(self.quantile, df=self.dim)
        best = np.full(len(z), -1, dtype=np.int64)
        best_score = np.full(len(z), -np.inf)
        for r in self.regions:
            d2 = r.mahalanobis2(z)
            ok = d2 <= limit
            if r.group is not None and groups is not None:
                ok &= np.asarray(groups) == r.group
            score = np.log(r.n_members) - 0.5 * d2 - 0.5 * np.linalg.slogdet(r.cov)[1]
            better = ok & (score > best_score)
            best[better], best_score[better] = r.index, score[better]
        return best

    def summary(self) -> list[dict[str, Any]]:
        return [r.summary() for r in self.regions]


def _mixture(z: np.ndarray, k_max: int, method: str, seed: int) -> np.ndarray:
    """Component labels of ``z`` from a Gaussian mixture (``bic`` or ``dpgmm``)."""
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture
    if method == "dpgmm":
        gmm = BayesianGaussianMixture(n_components=k_max, covariance_type="full",
                                      weight_concentration_prior_type="dirichlet_process",
                                      max_iter=500, reg_covar=1e-4, random_state=seed)
        return gmm.fit(z).predict(z)
    if method == "bic":
        best, best_bic = None, np.inf
        for k in range(1, k_max + 1):
            gmm = GaussianMixture(k, covariance_type="full", n_init=3, reg_covar=1e-4,
                                  random_state=seed).fit(z)
            bic = gmm.bic(z)
            if bic < best_bic:
                best, best_bic = gmm, bic
        return best.predict(z)
    raise ValueError(f"find_regions method must be 'bic' or 'dpgmm', got {method!r}")


def find_regions(latents: np.ndarray, errors: np.ndarray, *, groups: np.ndarray | None = None,
                 method: str = "bic", max_regions: int = 8, min_members: int = 10,
                 min_weight: float = 0.05, quantile: float = 0.95, seed: int = 0) -> Regions:
    """Cluster the latents of errors into regions with a Gaussian mixture.

    ``method="dpgmm"`` is Defuse's Dirichlet-process mixture (scikit-learn's variational one,
    ``max_regions`` components); ``method="bic"`` fits 1..``max_regions`` components and keeps
    the count with the lowest BIC. The variational mixture tends to keep every component it
    starts with (it splits one uniform box of errors into several regions whatever the
    concentration prior), which BIC's penalty avoids; both are offered so they can be compared.
    With ``groups``, each group's errors are clustered separately (the group then belongs to
    its regions). A component becomes a region when it holds at least ``min_members`` errors and
    ``min_weight`` of its group's errors. Regions are numbered largest first.
    """
    z = np.asarray(latents, dtype=np.float64)
    err = np.asarray(errors, dtype=bool)
    if z.ndim != 2 or len(z) != len(err):
        raise ValueError(f"latents must be (n, k) with one error flag per row; got {z.shape} and {err.shape}")
    group_arr = np.asarray(groups) if groups is not None else np.zeros(len(z), dtype=np.int64)
    found: list[Region] = []
    for g in np.unique(group_arr[err]):
        rows = err & (group_arr == g)
        zg = z[rows]
        if len(zg) < max(min_members, 2):
            continue
        k = int(min(max_regions, max(1, len(zg) // max(min_members, 1))))
        lab = _mixture(zg, k, method, seed)
        for c in np.unique(lab):
            members = int((lab == c).sum())
            share = members / len(zg)
            if members < min_members or share < min_weight:
                continue
            mem = zg[lab == c]
            cov = np.cov(mem, rowvar=False) + 1e-4 * np.eye(z.shape[1])
            found.append(Region(-1, mem.mean(axis=0), np.atleast_2d(cov), float(share), members,
                                None if groups is None else (g.item() if isinstance(g, np.generic) else g)))
    found.sort(key=lambda r: -r.n_members)
    for i, r in enumerate(found):
        r.index = i
    return Regions(found, z.shape[1], quantile)


def sample_gaussian(region: Region, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` latents from a region's Gaussian."""
    return rng.multivariate_normal(region.mean, region.cov, size=n, method="cholesky")


# --------------------------------------------------------------------------------------------
# identification
# --------------------------------------------------------------------------------------------

def probe(space: LatentSpace, classify: Callable[[np.ndarray], np.ndarray], n: int,
          rng: np.random.Generator) -> tuple[Probe, np.ndarray, np.ndarray]:
    """Sample ``n`` latents, decode, classify; returns the probe, predictions and errors.

    An error is a valid sample whose prediction differs from the annotator's label.
    """
    pr = space.sample(n, rng)
    pred = np.asarray(classify(pr.inputs))
    errors = pr.valid & (pred != pr.labels)
    return pr, pred, errors


class VAESpace:
    """A VAE's latent space around the data, with a reference classifier as annotator.

    Latents are drawn as in Defuse: the posterior mean of a random anchor (a training input)
    plus Gaussian noise of standard deviation ``scale``; a decoded sample is labelled by the
    annotator when its probability for the top class reaches ``confidence`` (else it is not a
    recognisable digit and is dropped, as Defuse's annotators drop unrecognisable samples).
    """

    def __init__(self, vae: Any, anchors: np.ndarray, annotator: Any, *, scale: float = 0.5,
                 confidence: float = 0.9):
        self.vae = vae
        self.anchors = np.asarray(anchors, dtype=np.float64)
        self.annotator = annotator
        self.scale = scale
        self.confidence = confidence

    def _label(self, z: np.ndarray) -> Probe:
        x = self.vae.decode(z)
        proba = self.annotator.predict_proba(x)
        labels = np.asarray(self.annotator.classes_)[proba.argmax(axis=1)]
        return Probe(z, x, labels, proba.max(axis=1) >= self.confidence)

    def sample(self, n: int, rng: np.random.Generator) -> Probe:
        idx = rng.integers(0, len(self.anchors), n)
        z = self.anchors[idx] + self.scale * rng.standard_normal((n, self.anchors.shape[1]))
        return self._label(z)

    def sample_region(self, region: Region, n: int, rng: np.random.Generator) -> Probe:
        return self._label(sample_gaussian(region, n, rng))


class DigitStyleSpace:
    """The exact latent space of :class:`~entangle.data.planted.DigitWorldSource`: style latents.

    A sample is a base digit (from ``bases``, the source's rows of one split) rendered with a
    style drawn from the prior; the simulator is the annotator (the base digit's true class), and
    the planted region is known exactly. Regions are found per class (``groups``), in the
    3-D style space; region samples are clipped to the prior's box.
    """

    def __init__(self, source: Any, bases: np.ndarray):
        from entangle.data.planted import _digits
        self.source = source
        self.bases = np.asarray(bases, dtype=np.int64)
        self.base_labels = _digits()[1][self.bases]

    def _render(self, base: np.ndarray, style: np.ndarray, rng: np.random.Generator) -> Probe:
        out = self.source.render(base, style, rng=rng, split=None)
        return Probe(style, out["x"], out["y_true"], np.ones(len(base), dtype=bool),
                     groups=out["y_true"], planted=out["planted"], outputs=out)

    def sample(self, n: int, rng: np.random.Generator) -> Probe:
        base = self.bases[rng.integers(0, len(self.bases), n)]
        return self._render(base, self.source.sample_style(n, rng), rng)

    def sample_region(self, region: Region, n: int, rng: np.random.Generator) -> Probe:
        from entangle.data.planted import STYLE
        prior = self.source._prior()
        lo = np.array([prior[k][0] for k in STYLE])
        hi = np.array([prior[k][1] for k in STYLE])
        style = np.clip(sample_gaussian(region, n, rng), lo, hi)
        pool = self.bases if region.group is None else self.bases[self.base_labels == region.group]
        if len(pool) == 0:
            raise ValueError(f"no base digits of class {region.group} to render region {region.index}")
        return self._render(pool[rng.integers(0, len(pool), n)], style, rng)


def reference_annotator(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> Any:
    """A strong reference classifier (RBF SVM, probabilities calibrated by 3-fold CV) as annotator.

    Trained on all the labelled data with its true labels; decoded samples are labelled by it
    where no exact annotator exists.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    svm = make_pipeline(StandardScaler(), SVC(C=10.0, gamma="scale", random_state=seed))
    model = CalibratedClassifierCV(svm, cv=3, ensemble=False)
    model.fit(np.asarray(x, dtype=np.float64).reshape(len(x), -1), np.asarray(y))
    return model


# --------------------------------------------------------------------------------------------
# correction
# --------------------------------------------------------------------------------------------

def fine_tune(node: Any, x_fix: np.ndarray, y_fix: np.ndarray, x_keep: np.ndarray, *,
              retention: float = 1.0, epochs: int = 20, lr: float = 1e-3, batch_size: int = 128,
              seed: int = 0) -> Any:
    """Fine-tune a classifier on labelled region samples while distilling it on retained data.

    The loss is the cross-entropy on ``(x_fix, y_fix)`` plus ``retention`` × the KL divergence
    from the original model's predictions to the fine-tuned model's on ``x_keep`` (the training
    inputs to keep behaving on). ``node`` must offer ``logits(X)``, ``module_`` and
    ``with_module(module)`` (as :class:`~entangle.models.embedding_classifier.EmbeddingClassifier`);
    it is left unchanged and a fine-tuned copy is returned.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    if len(x_fix) == 0:
        raise ValueError("fine_tune needs at least one labelled region sample")
    x_fix = np.asarray(x_fix, dtype=np.float64).reshape(len(x_fix), -1)
    x_keep = np.asarray(x_keep, dtype=np.float64).reshape(len(x_keep), x_fix.shape[1])
    if not len(x_keep) and retention > 0:
        log.warning("fine_tune: no retained inputs, so no retention term (every input lies in a region)")
    student = copy.deepcopy(node.module_).train()
    teacher = node.module_.eval()
    Xf = node.tensor(x_fix)
    yf = torch.as_tensor(np.asarray(y_fix), dtype=torch.long)
    Xk = node.tensor(x_keep) if len(x_keep) else None
    with torch.no_grad():
        tk = torch.log_softmax(teacher(Xk)[0], dim=1) if Xk is not None else None
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(int(epochs)):
        perm = torch.randperm(len(Xf), generator=gen)
        for start in range(0, len(Xf), batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(student(Xf[idx])[0], yf[idx])
            if Xk is not None and retention > 0:
                k = torch.randint(0, len(Xk), (batch_size,), generator=gen)
                log_p = torch.log_softmax(student(Xk[k])[0], dim=1)
                loss = loss + retention * F.kl_div(log_p, tk[k], log_target=True,
                                                   reduction="batchmean")
            loss.backward()
            opt.step()
    return node.with_module(student.eval())


def region_accuracy(probes: Sequence[Probe], classify: Callable[[np.ndarray], np.ndarray]
                    ) -> list[float]:
    """Accuracy of ``classify`` against the annotator on each region's valid samples."""
    out = []
    for pr in probes:
        ok = pr.valid
        out.append(float(np.mean(np.asarray(classify(pr.inputs[ok])) == pr.labels[ok]))
                   if ok.any() else float("nan"))
    return out
