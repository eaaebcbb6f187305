"""L2-regularised logistic regression by L-BFGS: scikit-learn's objective and optimiser
settings, with a loss that keeps the data in float32.

``LogisticRegression(solver="lbfgs")`` minimises mean(sample loss) + ||W||^2 / (2 C n) with
scipy's L-BFGS-B, and so does this; but scikit-learn multiplies float32 data by the float64
parameters L-BFGS hands it, which copies the whole memory to float64 at every function
evaluation. On a head's 20,000 remembered 898-wide examples that copy, not the arithmetic, was
most of a refit (bench learner). Here the products run in float32 (the data's own precision)
and the sums in float64; the optimum is the same.

The fit runs with one BLAS thread. numpy and scipy each bring their own OpenBLAS, and the
optimiser alternates between them at every step: on a 2-core machine each library's idle
threads spin while the other works, which made a refit on 800 examples take 80 ms instead
of 5 (measured). A refit's products are too small to gain from a second thread anyway.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit, logsumexp
from threadpoolctl import ThreadpoolController

#: numpy's and scipy's BLAS libraries, loaded by now (the imports above).
_BLAS = ThreadpoolController()


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    c: float,
    start: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on x (n, d) and class indices y in [0, n_classes). Two classes: one row of
    weights scoring class 1 (a sigmoid); more: a row per class (a softmax). ``start``: the
    parameters to begin from, (rows, d + 1), intercept last. Returns the weights
    (rows, d) and intercepts (rows,)."""
    n, d = x.shape
    rows = 1 if n_classes == 2 else n_classes
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = float(sw.sum())
    share = sw / total  # each sample's weight in the mean loss
    l2 = 1.0 / (c * total)
    onehot = np.zeros((n, rows))
    if rows == 1:
        onehot[:, 0] = y == 1
    else:
        onehot[np.arange(n), y] = 1.0
    dtype = x.dtype

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        params = w.reshape(rows, d + 1)
        weights, intercept = params[:, :d], params[:, d]
        z = (x @ weights.T.astype(dtype)).astype(np.float64) + intercept
        if rows == 1:
            # log(1 + e^z) - y z, and its derivative sigmoid(z) - y
            loss = -log_expit(z[:, 0]) + (1.0 - onehot[:, 0]) * z[:, 0]
            g = (expit(z[:, 0]) - onehot[:, 0])[:, None]
        else:
            lse = logsumexp(z, axis=1)
            loss = lse - (z * onehot).sum(axis=1)
            g = np.exp(z - lse[:, None]) - onehot
        g *= share[:, None]
        f = float(share @ loss) + 0.5 * l2 * float((weights * weights).sum())
        grad = np.empty_like(params)
        grad[:, :d] = (g.T.astype(dtype) @ x).astype(np.float64) + l2 * weights
        grad[:, d] = g.sum(axis=0)
        return f, grad.ravel()

    w0 = np.zeros((rows, d + 1)) if start is None else np.asarray(start, dtype=np.float64)
    with _BLAS.limit(limits=1, user_api="blas"):
        res = optimize.minimize(
            loss_grad,
            w0.ravel(),
            method="L-BFGS-B",
            jac=True,
            options={
                "maxiter": max_iter,
                "maxls": 50,
                "gtol": tol,
                "ftol": 64 * np.finfo(float).eps,
            },
        )
    params = res.x.reshape(rows, d + 1)
    return params[:, :d], params[:, d]
