"""One linear head for every linear model here, with scikit-learn's contract.

The logistic level (hashed n-grams), the router, the encoder's head, the LM probe and the
post-hoc deferral rule all score z = standardise(x) @ coef_ + intercept_ and read class
probabilities off it; each had its own copy of that arithmetic. It lives here once, learned
two ways: ``partial_fit`` takes one SGD pass over a batch (online, as the hashed levels learn)
and ``fit`` refits an L2 logistic regression with L-BFGS on all it is given (heads over frozen
features, which need honest confidences; scikit-learn's objective, ``policies.lbfgs``).
``state``/``load_state`` give and take the arrays that versions store, in the keys, shapes
and dtypes they have always had.

What ``coef_`` holds:

- ``classes=None``: a binary event (y in {0, 1}): one vector (dim,), intercept (1,) float64.
- ``classes=[...]``: one float32 row per class, in that order. ``"ovr"`` (SGD's one-vs-rest)
  keeps one row for two classes, scoring ``classes[1]``; ``"multinomial"`` (softmax) keeps a
  row per class, two included, and a class that no fit has seen gets intercept ``UNSEEN``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
from scipy import sparse
from sklearn.linear_model import SGDClassifier

from policies.lbfgs import fit_logistic

UNSEEN = -30.0  # intercept of a class no fit has seen: e^-30 of the mass, never the answer


class LinearHead:
    """Class probabilities from a linear score, learned by ``fit`` or ``partial_fit``;
    hyper-parameters in the constructor, what it learned in attributes ending in ``_``."""

    def __init__(
        self,
        classes: Sequence[Hashable] | None = None,
        multi_class: Literal["ovr", "multinomial"] = "ovr",
        c: float = 1.0,
        alpha: float = 1e-4,
        max_iter: int = 300,
        warm_start: bool = False,
    ) -> None:
        self.classes = None if classes is None else list(classes)
        self.multi_class = multi_class
        self.c, self.max_iter, self.warm_start = c, max_iter, warm_start  # fit (L-BFGS)
        self.alpha = alpha  # partial_fit (SGD)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.mean_: np.ndarray | None = None  # standardisation, set by ``fit`` (dense inputs)
        self.scale_: np.ndarray | None = None
        self.resume_t: float | None = None  # SGD's step count to go on from (None: restart)
        self._sgd: SGDClassifier | None = None
        self._warm: tuple[np.ndarray, np.ndarray] | None = None  # classes and the last fit

    @property
    def fitted(self) -> bool:
        return self.coef_ is not None

    @property
    def t_(self) -> float | None:
        """The SGD optimiser's step count; None until ``partial_fit`` ran in this process."""
        return None if self._sgd is None else float(self._sgd.t_)

    # ------------------------------------------------------------------ serving

    def decision_function(self, x: Any) -> np.ndarray:
        """Scores (n,) for a binary event, (n, rows) otherwise; x dense (n, dim) or sparse."""
        coef, intercept = self._coefficients()
        if self.mean_ is not None and self.scale_ is not None:
            x = (x - self.mean_) / self.scale_
        z = np.asarray(x @ coef if coef.ndim == 1 else x @ coef.T)
        return z + intercept.astype(z.dtype, copy=False)

    def decision_row(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """One sparse row's scores from its non-zero entries, with no matrix built: the hot
        path of the hashed n-gram level, which is not standardised."""
        coef, intercept = self._coefficients()
        z = np.asarray(coef[indices] @ values if coef.ndim == 1 else coef[:, indices] @ values)
        return z + intercept.astype(z.dtype, copy=False)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (n, k); (k,) for one dense vector."""
        one = not sparse.issparse(x) and np.ndim(x) == 1
        p = self._proba(self.decision_function(np.atleast_2d(x) if one else x))
        return p[0] if one else p

    def predict_proba_row(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``predict_proba`` of one sparse row given as ``decision_row`` takes it."""
        return self._proba(self.decision_row(indices, values)[None])[0]

    def _proba(self, z: np.ndarray) -> np.ndarray:
        if z.ndim == 1 or (z.shape[1] == 1 and self.multi_class == "ovr"):
            p = 1.0 / (1.0 + np.exp(-(z if z.ndim == 1 else z[:, 0])))
            out = np.empty((len(p), 2), dtype=p.dtype)  # np.stack costs more on the hot path
            out[:, 0], out[:, 1] = 1.0 - p, p  # as scikit-learn: P(0) = 1 - P(1)
            return out
        if self.multi_class == "multinomial":
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        p = 1.0 / (1.0 + np.exp(-z))  # one-vs-rest, normalised
        return p / p.sum(axis=1, keepdims=True)

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        if self.coef_ is None or self.intercept_ is None:
            raise ValueError("the linear head has not been fitted")
        return self.coef_, self.intercept_

    # ------------------------------------------------------------------ learning

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        moments: tuple[np.ndarray, np.ndarray] | None = None,
        max_iter: int | None = None,
    ) -> bool:
        """Refit on all of (x, y), standardised; False, changing nothing, while y holds a
        single class. ``warm_start`` starts L-BFGS from the last fit's solution. ``moments``:
        x's column means and standard deviations, where the caller keeps them up to date
        (computing them costs as much as an L-BFGS step on a large memory). ``max_iter``: at
        most this many L-BFGS iterations this time (a warm start that need not converge:
        the next refit goes on from where this one stopped)."""
        present = np.unique(y)
        if len(present) < 2:
            return False
        mean, std = moments if moments is not None else (x.mean(axis=0), x.std(axis=0))
        mean, scale = mean.astype(x.dtype, copy=False), (std + 1e-3).astype(x.dtype, copy=False)
        start = None
        if self.warm_start and self._warm is not None and np.array_equal(self._warm[0], present):
            start = self._warm[1]
        coef, intercept = fit_logistic(
            (x - mean) / scale,
            np.searchsorted(present, y),
            len(present),
            self.c,
            start,
            max_iter or self.max_iter,
            sample_weight=sample_weight,
        )
        self._warm = (present, np.column_stack([coef, intercept]))
        self.mean_, self.scale_ = mean.astype(np.float32), scale.astype(np.float32)
        self._export(coef, intercept, list(present))
        return True

    def partial_fit(
        self, x: Any, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> LinearHead:
        """One SGD pass (log loss, L2 ``alpha``) over a batch, from the current coefficients:
        those of a loaded version too, at its step count ``resume_t``."""
        if self.multi_class != "ovr":
            raise ValueError("partial_fit learns one-vs-rest (SGD); a softmax head uses fit")
        classes = np.array(self.classes if self.classes is not None else [0, 1])
        if self._sgd is None:
            self._sgd = SGDClassifier(loss="log_loss", alpha=self.alpha, random_state=0)
            if self.coef_ is not None:
                self._sgd.partial_fit(x[:1], y[:1], classes=classes)  # sizes it; overwritten
                self._sgd.coef_, self._sgd.intercept_ = self._sklearn(self._sgd)
                if self.resume_t is not None:
                    self._sgd.t_ = self.resume_t
        self._sgd.partial_fit(x, y, classes=classes, sample_weight=sample_weight)
        self._export(self._sgd.coef_, self._sgd.intercept_, list(self._sgd.classes_))
        return self

    def _export(self, coef: np.ndarray, intercept: np.ndarray, present: list[Any]) -> None:
        """scikit-learn's rows (one per class it saw, sorted; one for two) into this layout."""
        if self.classes is None:
            self.coef_ = coef[0].astype(np.float32)
            self.intercept_ = np.array(intercept[:1], dtype=np.float64)
            return
        if self.multi_class == "ovr" and len(self.classes) == 2:
            c32, i32 = coef.astype(np.float32), intercept.astype(np.float32)
            flip = present[1] != self.classes[1]  # sklearn's row scores its sorted classes[1]
            self.coef_, self.intercept_ = (-c32, -i32) if flip else (c32, i32)
            return
        rows = np.zeros((len(self.classes), coef.shape[1]), dtype=np.float32)
        icpt = np.full(len(self.classes), UNSEEN, dtype=np.float32)
        at = [self.classes.index(cls) for cls in present]
        if len(present) == 2 and coef.shape[0] == 1:  # softmax over (0, z) == sigmoid(z)
            rows[at[1]], icpt[at[1]], icpt[at[0]] = coef[0], intercept[0], 0.0
        else:
            rows[at], icpt[at] = coef, intercept
        self.coef_, self.intercept_ = rows, icpt

    def _sklearn(self, sgd: SGDClassifier) -> tuple[np.ndarray, np.ndarray]:
        """The inverse of ``_export`` for SGD, which has seen every class: its rows, in the
        dtype of the data it learns from."""
        coef, intercept = self._coefficients()
        present, wide = list(sgd.classes_), sgd.coef_.dtype
        if self.classes is None:
            return coef[None].astype(wide), intercept.astype(wide)
        if len(self.classes) == 2:
            sign = 1.0 if present[1] == self.classes[1] else -1.0
            return (sign * coef).astype(wide), (sign * intercept).astype(wide)
        order = [self.classes.index(cls) for cls in present]
        return coef[order].astype(wide), intercept[order].astype(wide)

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, np.ndarray]:
        """The coefficients (and standardisation) as versions store them; none before a fit."""
        if self.coef_ is None or self.intercept_ is None:
            return {}
        out = {"coef": self.coef_, "intercept": self.intercept_}
        if self.mean_ is not None and self.scale_ is not None:
            out.update(mean=self.mean_, scale=self.scale_)
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Adopt published coefficients (a version without them leaves the head as it is);
        the next ``partial_fit`` restarts SGD from them."""
        if "coef" not in arrays:
            return
        self.coef_ = arrays["coef"].astype(np.float32)
        wide = np.float64 if self.classes is None else np.float32
        self.intercept_ = arrays["intercept"].astype(wide)
        self.mean_ = arrays["mean"].astype(np.float32) if "mean" in arrays else None
        self.scale_ = arrays["scale"].astype(np.float32) if "scale" in arrays else None
        self._sgd, self.resume_t = None, None
