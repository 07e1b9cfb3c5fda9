"""Conventional speaker personalisation, the baselines ICL must beat (all on pooled encoder features).

* ``si``: the speaker-independent classifier (logistic regression on the
  training speakers; no personalisation).
* ``spk_norm``: per-speaker normalisation. The classifier is trained on
  features z-normalised per training speaker; a test speaker's features are
  normalised with the mean and variance of the *enrolment audio* (labels
  unused). With few utterances the variance is shrunk toward the training
  speakers' average within-speaker variance (``prior_weight`` pseudo-utterances),
  and with none the population prior stands in.
* ``finetune``: the SI classifier fine-tuned on the enrolment pairs by a few
  full-batch gradient steps on cross-entropy, pulled toward its starting
  weights (L2); steps and learning rate are chosen on dev speakers.
* ``ncm``: nearest-class-mean of the enrolment embeddings (softmax over minus
  squared distances / temperature, only classes the enrolment holds), mixed
  with the SI posteriors: ``(1 - alpha) p_si + alpha p_ncm``; alpha and the
  temperature are chosen on dev speakers.

Everything is plain numpy arrays, saved as npz (never pickled).
"""
from __future__ import annotations

import itertools

import numpy as np

from sertk.tasks.egemaps_linear import fit_logreg, logreg_predict, speaker_normalize, standardize

METHODS = ("si", "spk_norm", "finetune", "ncm")
FINETUNE_GRID = {"steps": [0, 5, 20, 50], "lr": [0.03, 0.1, 0.3], "l2": [0.1]}
NCM_GRID = {"alpha": [0.0, 0.25, 0.5, 0.75, 1.0], "temperature": [0.25, 1.0]}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class PersonalBaselines:
    """The four baselines over one feature space; ``arrays`` holds every fitted number."""

    def __init__(self, arrays: dict[str, np.ndarray], num_labels: int):
        self.a = {k: np.asarray(v) for k, v in arrays.items()}
        self.num_labels = int(num_labels)

    # ---- fitting --------------------------------------------------------------
    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, speakers: list[str], num_labels: int, seed: int = 0,
            C: float = 1.0, prior_weight: float = 4.0) -> "PersonalBaselines":
        si = fit_logreg(x, y, None, seed, C=C, max_iter=5000, class_weight="balanced")
        xn = speaker_normalize(x, speakers)
        sn = fit_logreg(xn, y, None, seed, C=C, max_iter=5000, class_weight="balanced")
        spk = np.asarray(speakers)
        means = np.stack([x[spk == s].mean(0) for s in np.unique(spk)])
        varis = np.stack([x[spk == s].var(0) for s in np.unique(spk)])
        arrays = {f"si_{k}": v for k, v in si.items()}
        arrays.update({f"sn_{k}": v for k, v in sn.items()})
        arrays.update(prior_mean=means.mean(0), prior_var=varis.mean(0), prior_weight=np.array(prior_weight),
                      ft_steps=np.array(0), ft_lr=np.array(0.1), ft_l2=np.array(0.1),
                      ncm_alpha=np.array(0.0), ncm_temperature=np.array(1.0))
        return cls(arrays, num_labels)

    def _z(self, prefix: str) -> dict:
        return {k: self.a[f"{prefix}_{k}"] for k in ("mean", "scale", "classes", "coef", "intercept")}

    # ---- decisions: posteriors [N, num_labels] -----------------------------------
    def si(self, xq: np.ndarray) -> np.ndarray:
        z = self._z("si")
        return logreg_predict(standardize(xq, z["mean"], z["scale"], None), z, self.num_labels)[1]

    def spk_norm(self, xq: np.ndarray, xe: np.ndarray) -> np.ndarray:
        k, w = len(xe), float(self.a["prior_weight"])
        mu = xe.mean(0) if k else self.a["prior_mean"]
        var = (k * (xe.var(0) if k else 0.0) + w * self.a["prior_var"]) / max(k + w, 1e-12)
        sd = np.sqrt(var)
        xn = (xq - mu) / np.where(sd > 1e-8, sd, 1.0)
        z = self._z("sn")
        return logreg_predict(standardize(xn, z["mean"], z["scale"], None), z, self.num_labels)[1]

    def finetune(self, xq: np.ndarray, xe: np.ndarray, ye: np.ndarray, steps: int | None = None,
                 lr: float | None = None, l2: float | None = None) -> np.ndarray:
        z = self._z("si")
        steps = int(self.a["ft_steps"] if steps is None else steps)
        lr = float(self.a["ft_lr"] if lr is None else lr)
        l2 = float(self.a["ft_l2"] if l2 is None else l2)
        classes = list(z["classes"])
        w0, b0 = z["coef"], z["intercept"]
        if w0.shape[0] == 1:  # binary: the second class's logit only
            w0, b0 = np.concatenate([np.zeros_like(w0), w0]), np.concatenate([np.zeros_like(b0), b0])
        w, b = w0.copy(), b0.copy()
        keep = np.isin(ye, classes)
        if steps and keep.any():
            xs = standardize(xe[keep], z["mean"], z["scale"], None)
            onehot = np.eye(len(classes))[[classes.index(v) for v in ye[keep]]]
            for _ in range(steps):
                g = _softmax(xs @ w.T + b) - onehot
                w -= lr * (g.T @ xs / len(xs) + l2 * (w - w0))
                b -= lr * (g.mean(0) + l2 * (b - b0))
        p = _softmax(standardize(xq, z["mean"], z["scale"], None) @ w.T + b)
        out = np.zeros((len(xq), self.num_labels))
        out[:, z["classes"]] = p
        return out

    def ncm(self, xq: np.ndarray, xe: np.ndarray, ye: np.ndarray, alpha: float | None = None,
            temperature: float | None = None) -> np.ndarray:
        alpha = float(self.a["ncm_alpha"] if alpha is None else alpha)
        tau = float(self.a["ncm_temperature"] if temperature is None else temperature)
        p_si = self.si(xq)
        if not len(xe) or alpha == 0.0:
            return p_si
        z = self._z("si")
        qs, es = (standardize(v, z["mean"], z["scale"], None) for v in (xq, xe))
        logits = np.full((len(xq), self.num_labels), -np.inf)
        for c in np.unique(ye):
            logits[:, int(c)] = -((qs - es[ye == c].mean(0)) ** 2).sum(1) / (tau * qs.shape[1])
        return (1.0 - alpha) * p_si + alpha * _softmax(logits)

    def predict(self, method: str, xq: np.ndarray, xe: np.ndarray, ye: np.ndarray) -> np.ndarray:
        """Posteriors of ``method`` for queries ``xq`` given enrolment features ``xe`` and labels ``ye``."""
        if method == "si":
            return self.si(xq)
        if method == "spk_norm":
            return self.spk_norm(xq, xe)
        if method == "finetune":
            return self.finetune(xq, xe, ye)
        if method == "ncm":
            return self.ncm(xq, xe, ye)
        raise ValueError(f"unknown baseline {method!r}; known: {METHODS}")

    # ---- tuning on dev speakers -------------------------------------------------------
    def tune(self, draws: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
             finetune_grid: dict | None = None, ncm_grid: dict | None = None) -> dict:
        """Pick fine-tuning and NCM settings by mean dev UAR over ``draws`` of (xe, ye, xq, yq); returns them."""
        def uar(fn) -> float:
            scores = []
            for xe, ye, xq, yq in draws:
                pred = fn(xq, xe, ye).argmax(1)
                present = np.unique(yq)
                scores.append(np.mean([(pred[yq == c] == c).mean() for c in present]))
            return float(np.mean(scores)) if scores else 0.0

        chosen = {}
        fg = {**FINETUNE_GRID, **(finetune_grid or {})}
        best = max(itertools.product(fg["steps"], fg["lr"], fg["l2"]),
                   key=lambda h: (uar(lambda q, e, y: self.finetune(q, e, y, *h)), -h[0]))
        self.a.update(ft_steps=np.array(best[0]), ft_lr=np.array(best[1]), ft_l2=np.array(best[2]))
        chosen["finetune"] = {"steps": int(best[0]), "lr": float(best[1]), "l2": float(best[2])}
        ng = {**NCM_GRID, **(ncm_grid or {})}
        best = max(itertools.product(ng["alpha"], ng["temperature"]),
                   key=lambda h: (uar(lambda q, e, y: self.ncm(q, e, y, *h)), -h[0]))
        self.a.update(ncm_alpha=np.array(best[0]), ncm_temperature=np.array(best[1]))
        chosen["ncm"] = {"alpha": float(best[0]), "temperature": float(best[1])}
        return chosen

    # ---- io ------------------------------------------------------------------------
    def save(self, path) -> None:
        from sertk.common.fileio import atomic_path
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, num_labels=np.array(self.num_labels), **self.a)

    @classmethod
    def load(cls, path) -> "PersonalBaselines":
        z = np.load(path)
        return cls({k: z[k] for k in z.files if k != "num_labels"}, int(z["num_labels"]))
