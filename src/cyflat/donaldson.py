"""Donaldson's algorithm: balanced metrics ``K_H = log(s^T H conj(s)) / (pi k)``.

Maths
-----
With sections ``s_alpha`` (alpha < N = N_k) of O(k), points ``x_a`` on X and Monte Carlo
weights ``w_a = |Omega|^2 / det g_FS`` (so that weighted means are averages against
``dvol_Omega``), the T-operator on hermitian matrices is::

    T(H)_{alpha betabar} = (N / sum_a w_a) sum_a w_a s_alpha(x_a) conj(s_beta(x_a)) / phi_a,
    phi_a = s(x_a)^T H conj(s(x_a)).

``T(cH) = T(H) / c`` and, by construction, ``sum_{alpha beta} T_{alpha beta} H_{alpha beta}
= tr(T H^T) = N`` exactly (for every H and every sample).

Index convention.  ``phi = s^T H conj(s)`` (the convention of
:class:`~cyflat.metric.AlgebraicMetric`).  If ``s = A^{-1} s'`` with ``s'`` orthonormal
for the balanced metric (``H' = 1``, ``T' = 1``), then ``H = (A^dagger A)^T`` and
``T = (A^dagger A)^{-1}``, so the balanced condition reads ``T(H) = (H^{-1})^T`` and the
iteration is ``H <- (T(H)^{-1})^T``.  The trace identity then fixes the constant:
at the fixed point ``T(H) = (H^{-1})^T`` holds exactly, not only up to a factor.
Since the metric is invariant under ``H -> cH`` (and the map is homogeneous of degree 1)
each iterate is normalised to ``tr H = N`` (H = identity at the start).

Computation
-----------
Points (``zs`` (P, n), ``patch`` (P,), ``weights`` (P,)) are small; the section values
``S`` (P, N) are not.  :func:`t_operator` pads the points to ``nb * B`` (copies of the
first point with weight 0), reshapes them into ``nb`` batches of ``B = batch_size`` and
runs a ``lax.scan`` over the batches that evaluates the sections of one batch at a time:
memory is ``O(B N)``, independent of P.  Per batch, with ``S = A + iB`` and
``H = H_r + i H_i`` (``H_r`` symmetric, ``H_i`` antisymmetric), the two matrix products
are done in real arithmetic (6 instead of 8 real multiply-adds per N^2 and point):

* ``phi = rowsum(A * (A H_r)) + rowsum(B * (B H_r)) + 2 rowsum((A H_i) * B)``
  (``= rowsum((S H) * conj(S))``),
* with ``c = w / phi``: ``Re T = A^T diag(c) A + B^T diag(c) B`` and
  ``Im T = K - K^T`` with ``K = B^T diag(c) A`` (``= S^T diag(c) conj(S)``).

:func:`balanced_metric` iterates from H = identity; after each step T is checked on the
host (finite, positive definite, condition number below ``0.1/eps``) and inverted
through its eigendecomposition.

Sampling choice
---------------
By default one fixed sample of ``10 N^2 + 50 000`` points is used for every iteration
(``resample=False``): H then converges to the balanced metric of that discrete measure
and the relative change per step decreases geometrically.  ``resample=True`` draws a
fresh sample every step (the changes then level off at the Monte Carlo noise, 2-5%).
Both reproduce the reference sigma values of ``shared/spec/reference.md``: Fermat
quintic, f64, 10 steps, sigma on 10^5 points, fixed / fresh sample: k = 1: 0.3734 /
0.3735, k = 2: 0.2730 / 0.2733, k = 3: 0.1947 / 0.1950, k = 4: 0.1322 / 0.1318
(reference 0.374, 0.273, 0.194, 0.131; standard errors 0.0003-0.0008).  Points for T are drawn in chunks of a fixed size
(``SAMPLE_CHUNK``) so that the sampler is compiled once for every k and point budget.

Shapes: one moduli value per call (``params`` (m,)); H is (N, N) complex.
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .metric import AlgebraicMetric, sigma_from_eta
from .sections import MonomialBasis, MonomialBasisReduced
from .singular import check_moduli
from .variety import Hypersurface, MCEstimate

__all__ = [
    "BalancedResult",
    "SAMPLE_CHUNK",
    "balanced_metric",
    "balanced_update",
    "default_n_points",
    "plot_sigma_vs_k",
    "sigma_chunked",
    "sigma_scan",
    "t_operator",
]

#: Points per call of the sampler inside :func:`balanced_metric` (fixed: one compilation).
SAMPLE_CHUNK = 32_768
#: Default points per batch of :func:`t_operator` is ``clip(T_BATCH_ELEMENTS // N, 256, 8192)``.
T_BATCH_ELEMENTS = 2**18


def default_n_points(basis_size: int) -> int:
    """Default Monte Carlo budget per Donaldson step: ``10 N^2 + 50 000``."""
    return 10 * int(basis_size) ** 2 + 50_000


def default_batch_size(basis_size: int) -> int:
    """Points per batch of :func:`t_operator`: ``clip(2^18 // N, 256, 8192)``."""
    return int(min(8192, max(256, T_BATCH_ELEMENTS // int(basis_size))))


# -- the T-operator ------------------------------------------------------------------------


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _pad_batches(arrays, fill, count, batch_size):
    """Pad (P, ...) arrays to ``nb * batch_size`` rows and reshape to (nb, batch_size, ...).

    ``fill[i]`` is None (repeat the first row) or a scalar fill value.
    """
    nb = -(-count // batch_size)
    pad = nb * batch_size - count
    out = []
    for x, f in zip(arrays, fill):
        if pad:
            if f is None:
                extra = jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])
            else:
                extra = jnp.full((pad,) + x.shape[1:], f, x.dtype)
            x = jnp.concatenate([x, extra], axis=0)
        out.append(x.reshape((nb, batch_size) + x.shape[1:]))
    return out


def _t_batch(sections, hr, hi, zs, patch, w):
    """Unnormalised ``S^T diag(w/phi) conj(S)`` of one batch, as (real, imag) parts."""
    S = sections(zs, patch)  # (B, N) complex
    A = jnp.real(S)
    Bm = jnp.imag(S)
    B = A.shape[0]
    X = jnp.concatenate([A, Bm], axis=0)  # (2B, N)
    XH = X @ hr
    AHi = A @ hi
    phi = jnp.sum(X * XH, axis=-1)
    phi = phi[:B] + phi[B:] + 2 * jnp.sum(AHi * Bm, axis=-1)
    ok = w > 0
    c = jnp.where(ok, w / jnp.where(ok, phi, 1), 0)
    c2 = jnp.concatenate([c, c])
    re = X.T @ (c2[:, None] * X)
    K = Bm.T @ (c[:, None] * A)
    return re, K - K.T


@partial(jax.jit, static_argnames=("sections", "batch_size"))
def t_operator(sections, h, zs, patch, weights, batch_size=None):
    """Donaldson's T-operator by Monte Carlo integration in memory-bounded batches.

    ``T(H)_{ab} = (N / sum w) sum_x w(x) s_a(x) conj(s_b(x)) / (s(x)^T H conj(s(x)))``.

    Args:
        sections: a :class:`~cyflat.sections.MonomialBasis` (N sections; static).
        h: complex (N, N) hermitian positive definite.
        zs: complex (P, n) affine points on X; ``patch``: int (P,) their patches.
        weights: real (P,) Monte Carlo weights (``Sample.weights``); 0 drops a point.
        batch_size: points per batch (static); default :func:`default_batch_size`.
            Peak memory is ``O(batch_size * N)``; the last batch is padded with
            zero-weight copies of the first point.
    Returns:
        complex (N, N) hermitian T, in the dtype of ``zs``/``h`` (float32 or float64).

    Jit-compiled; callable inside other jitted functions.
    """
    N = sections.size
    zs = jnp.asarray(zs)
    h = jnp.asarray(h)
    cdtype = jnp.result_type(zs.dtype, h.dtype, jnp.complex64)
    rdtype = jnp.finfo(cdtype).dtype
    if h.shape != (N, N):
        raise ValueError(f"h must have shape ({N}, {N}) for {sections!r}, got {h.shape}")
    if zs.ndim != 2 or zs.shape[-1] != sections.n:
        raise ValueError(f"zs must be affine points (P, {sections.n}), got shape {zs.shape}")
    P = zs.shape[0]
    if P == 0:
        raise ValueError("t_operator needs at least one point")
    patch = jnp.broadcast_to(jnp.asarray(patch, jnp.int32), (P,))
    weights = jnp.asarray(weights)
    if weights.shape != (P,):
        raise ValueError(f"weights must have shape ({P},), got {weights.shape}")
    B = default_batch_size(N) if batch_size is None else _check_positive_int("batch_size", batch_size)
    B = min(B, P)
    h = h.astype(cdtype)
    hr, hi = jnp.real(h), jnp.imag(h)
    hr = (hr + hr.T) / 2
    hi = (hi - hi.T) / 2
    w = jnp.real(weights).astype(rdtype)
    zb, pb, wb = _pad_batches([zs.astype(cdtype), patch, w], [None, None, 0], P, B)

    def body(acc, x):
        re, im = _t_batch(sections, hr, hi, *x)
        return (acc[0] + re, acc[1] + im), None

    zero = jnp.zeros((N, N), rdtype)
    (re, im), _ = jax.lax.scan(body, (zero, zero), (zb, pb, wb))
    scale = N / jnp.sum(w)
    t = (scale * jax.lax.complex(re, im)).astype(cdtype)
    return (t + jnp.conj(t.T)) / 2  # exactly hermitian


# -- one balanced step on the host --------------------------------------------------------


def balanced_update(t, dtype=None, max_condition=None):
    """``H_new = (T^{-1})^T`` normalised to ``tr H_new = N``, with checks, on the host.

    Args:
        t: complex (N, N) T matrix (:func:`t_operator`).
        dtype: precision the T matrix was computed in (default: ``t.dtype``); sets the
            default ``max_condition = 0.1 / eps``.
    Returns:
        ``(h_new, condition)``: complex128 numpy (N, N) and the condition number of T.
    Raises:
        ValueError: T is not finite, not positive definite, or its condition number
            exceeds ``max_condition`` (numerically singular: too few or degenerate
            points, sections dependent on X, or a metric that is not positive).
    """
    t = np.asarray(t)
    N = t.shape[-1]
    eps = float(np.finfo(np.result_type(t.dtype if dtype is None else dtype, np.complex64)).eps)
    max_condition = 0.1 / eps if max_condition is None else float(max_condition)
    if not np.all(np.isfinite(t)):
        raise ValueError(
            "Donaldson T matrix is not finite (NaN/inf): a point with phi = s^T H conj(s) <= 0 or "
            "non-finite section values / weights"
        )
    t = t.astype(np.complex128)
    t = (t + t.conj().T) / 2
    ev, u = np.linalg.eigh(t)
    lo, hi = ev[0], ev[-1]
    cond = hi / lo if lo > 0 else np.inf
    if not hi > 0 or not cond <= max_condition:
        raise ValueError(
            f"Donaldson T matrix is numerically singular (eigenvalues in [{lo:.3g}, {hi:.3g}], "
            f"condition number {cond:.3g} > {max_condition:.3g}): the points do not determine the "
            f"{N} sections (fewer distinct points than sections, identical/degenerate points, or "
            "sections linearly dependent on X - use MonomialBasisReduced)"
        )
    hinv = (u / ev) @ u.conj().T  # T^{-1}
    h = hinv.T
    h = (h + h.conj().T) / 2
    h = h * (N / np.real(np.trace(h)))
    return h, float(cond)


# -- sampling and sigma --------------------------------------------------------------------


def _complex_dtype(dtype):
    if dtype is None:
        return jnp.dtype(jnp.result_type(complex))
    dt = jnp.dtype(dtype)
    if jnp.issubdtype(dt, jnp.complexfloating):
        return dt
    if dt == jnp.float32:
        return jnp.dtype(jnp.complex64)
    if dt == jnp.float64:
        return jnp.dtype(jnp.complex128)
    raise ValueError(f"dtype must be complex64/complex128 (or float32/float64), got {dtype!r}")


def _sample_points(variety, key, params, count, dtype):
    """``count`` points in chunks of ``SAMPLE_CHUNK`` (one compiled sampler for all counts).

    Chunk i uses ``fold_in(key, i)``.  Returns ``(zs, patch, dependent, weights, n_failed)``.
    """
    chunks = -(-count // SAMPLE_CHUNK)
    parts = [variety.sample(jax.random.fold_in(key, i), params, SAMPLE_CHUNK, dtype) for i in range(chunks)]
    cat = [jnp.concatenate([getattr(p, f) for p in parts])[:count] for f in ("zs", "patch", "dependent", "weights")]
    n_failed = int(sum(int(p.n_failed) for p in parts))
    return (*cat, n_failed)


@partial(jax.jit, static_argnames=("metric", "batch_size"))
def _eta_batched(metric, h, zs, params, patch, dependent, batch_size):
    P = zs.shape[0]
    B = min(batch_size, P)
    zb, pb, db = _pad_batches([zs, patch, dependent], [None, None, None], P, B)
    eta = jax.lax.map(lambda x: metric.eta(h, x[0], params, x[1], x[2]), (zb, pb, db))
    return eta.reshape(-1)[:P]


def sigma_chunked(metric, key, params, h, count=100_000, batch_size=None) -> MCEstimate:
    """sigma accuracy of H on ``count`` fresh points, memory-bounded and with one compiled sampler.

    The same estimator as :meth:`AlgebraicMetric.sigma_accuracy`, but the points are drawn
    in chunks of ``SAMPLE_CHUNK`` (chunk i with ``fold_in(key, i)``; the sampler is
    compiled once for every count) and eta is evaluated in batches of ``batch_size``
    points (memory ``O(batch_size * N)``).  For ``count == SAMPLE_CHUNK`` it equals
    ``metric.sigma_accuracy(fold_in(key, 0), params, h, SAMPLE_CHUNK)``.
    Returns :class:`~cyflat.variety.MCEstimate`.
    """
    count = _check_positive_int("count", count)
    h = metric.check_h(h)
    params = metric.variety.check_params(params, h.dtype).astype(h.dtype)
    if params.ndim != 1:
        raise ValueError(f"sigma_chunked takes one moduli value, params of shape (m,), got {params.shape}")
    zs, patch, dependent, w, n_failed = _sample_points(metric.variety, key, params, count, h.dtype)
    B = batch_size or max(256, 2**17 // metric.basis_size)
    eta = _eta_batched(metric, h, zs, params, patch, dependent, B)
    return sigma_from_eta(eta, w, n_failed)


# -- the driver ------------------------------------------------------------------------------


class BalancedResult(NamedTuple):
    """Result of :func:`balanced_metric`.

    Attributes:
        h: complex (N, N) balanced H (``tr H = N``), in the requested dtype.
        basis: the :class:`~cyflat.sections.MonomialBasis` used (``basis.size = N``).
        metric: the :class:`~cyflat.metric.AlgebraicMetric` for ``basis``.
        changes: float (iterations,) ``||H_new - H||_F / ||H||_F`` per step.
        conditions: float (iterations,) condition number of T per step.
        sigmas: None, or a tuple of ``iterations + 1`` :class:`MCEstimate`: entry 0 is
            H = identity, entry i the H after step i (all on one fixed evaluation sample).
        n_points: points per step; n_failed: sampler rejections summed over steps.
        seconds: wall time of the iterations (excluding sigma tracking).
    """

    h: jax.Array
    basis: MonomialBasis
    metric: AlgebraicMetric
    changes: np.ndarray
    conditions: np.ndarray
    sigmas: tuple | None
    n_points: int
    n_failed: int
    seconds: float


def balanced_metric(
    variety,
    degree,
    params=None,
    key=None,
    n_points=None,
    iterations=10,
    basis=None,
    batch_size=None,
    dtype=None,
    track_sigma=False,
    sigma_points=100_000,
    resample=False,
    verbose=False,
    on_singular="warn",
) -> BalancedResult:
    """Balanced metric of degree k on a hypersurface by Donaldson's iteration.

    Args:
        variety: :class:`~cyflat.variety.Hypersurface`.
        degree: k >= 1.
        params: moduli (m,) (default: none, for varieties without moduli).
        key: PRNG key (default ``PRNGKey(0)``).
        n_points: points per step (default ``10 N^2 + 50 000``; fewer warns).
        iterations: number of steps T, from H = identity.
        basis: section basis (default ``MonomialBasisReduced(variety, degree, params,
            check=False)``: independence on X is checked through T's condition number).
        batch_size: points per batch in :func:`t_operator`.
        dtype: complex64/complex128 (or float32/float64); default JAX's complex type.
        track_sigma: also compute sigma of every iterate on one fixed sample of
            ``sigma_points`` points.
        resample: draw fresh points every step (default: one fixed sample).
        verbose: print one line per step.
        on_singular: ``'warn'`` (default), ``'raise'`` or ``'ignore'`` at singular or
            nearly singular moduli (:func:`cyflat.singular.check_moduli`).
    Returns:
        :class:`BalancedResult`.
    Raises:
        ValueError: bad arguments, or a numerically singular / non-finite T.
    """
    if not isinstance(variety, Hypersurface):
        raise ValueError(f"variety must be a Hypersurface, got {type(variety).__name__}")
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
        raise ValueError(f"degree k must be an integer >= 1, got {degree!r}")
    degree = int(degree)
    iterations = _check_positive_int("iterations", iterations)
    sigma_points = _check_positive_int("sigma_points", sigma_points)
    cdtype = _complex_dtype(dtype)
    params = variety.check_params(params)
    if params.ndim != 1:
        raise ValueError(f"balanced_metric takes one moduli value, params of shape (m,), got {params.shape}")
    check_moduli(variety, np.asarray(params), on_singular=on_singular, what="balanced metric")
    params = jnp.asarray(params).astype(cdtype)
    key = jax.random.PRNGKey(0) if key is None else key
    if basis is None:
        # No Gram-rank test (it would compile a sampler of its own): a basis dependent on
        # X makes T singular, which the check after every step reports.
        basis = MonomialBasisReduced(variety, degree, np.asarray(params, np.complex128), check=False)
    elif not isinstance(basis, MonomialBasis):
        raise ValueError(f"basis must be a MonomialBasis, got {type(basis).__name__}")
    elif basis.degree != degree:
        raise ValueError(f"basis has degree {basis.degree} but degree={degree}")
    metric = AlgebraicMetric(variety, basis)  # checks P^n, warns for a dependent basis
    N = basis.size
    budget = default_n_points(N)
    if n_points is None:
        n_points = budget
    n_points = _check_positive_int("n_points", n_points)
    if n_points < N:
        raise ValueError(
            f"n_points={n_points} < N_k={N} sections: the T matrix would be singular "
            f"(rank <= number of points); use at least the default {budget}"
        )
    if n_points < budget:
        warnings.warn(
            f"balanced_metric: {n_points} points per step at k={degree} (N_k={N}) is below the "
            f"recommended 10 N_k^2 + 50000 = {budget}; the balanced metric will be biased by Monte "
            "Carlo error",
            stacklevel=2,
        )
    k_points, k_sigma = jax.random.split(key)
    h = jnp.eye(N, dtype=cdtype)
    sigmas = None
    if track_sigma:
        sigmas = [sigma_chunked(metric, k_sigma, params, h, sigma_points)]
    changes, conds = [], []
    n_failed = 0
    points = None
    seconds = 0.0
    for it in range(iterations):
        t0 = time.perf_counter()
        if points is None or resample:
            zs, patch, _, w, nf = _sample_points(variety, jax.random.fold_in(k_points, it), params, n_points, cdtype)
            points = (zs, patch, w)
            n_failed += nf
        t = t_operator(basis, h, *points, batch_size=batch_size)
        try:
            h_new, cond = balanced_update(np.asarray(t), cdtype)
        except ValueError as err:
            raise ValueError(f"balanced_metric step {it + 1} (k={degree}, N_k={N}, {n_points} points): {err}") from None
        h_old = np.asarray(h, np.complex128)
        changes.append(float(np.linalg.norm(h_new - h_old) / np.linalg.norm(h_old)))
        conds.append(cond)
        h = jnp.asarray(h_new, cdtype)
        seconds += time.perf_counter() - t0
        if track_sigma:
            sigmas.append(sigma_chunked(metric, k_sigma, params, h, sigma_points))
        if verbose:
            extra = f" sigma {float(sigmas[-1].value):.4f}" if track_sigma else ""
            print(f"k={degree} step {it + 1}: change {changes[-1]:.3e} cond(T) {cond:.3g}{extra}", flush=True)
    return BalancedResult(
        h=h,
        basis=basis,
        metric=metric,
        changes=np.asarray(changes),
        conditions=np.asarray(conds),
        sigmas=None if sigmas is None else tuple(sigmas),
        n_points=n_points,
        n_failed=n_failed,
        seconds=seconds,
    )


# -- scans and plots for the CLI -----------------------------------------------------------


def sigma_scan(
    variety,
    degrees,
    params=None,
    key=None,
    iterations=10,
    n_points=None,
    sigma_points=100_000,
    dtype=None,
    verbose=False,
    on_singular="warn",
):
    """Balanced metrics for each k in ``degrees`` and their sigma accuracy.

    ``on_singular`` as in :func:`balanced_metric` (the moduli are checked once).

    Returns a list of dicts (one per k) with keys ``k``, ``basis_size``, ``n_points``,
    ``sigma``, ``stderr``, ``sigma_fs``/``sigma_fs_stderr`` (k = 1 only: H = identity,
    the Fubini-Study metric; None otherwise), ``final_change`` and ``seconds`` (wall time
    of the balanced iteration and of the sigma evaluation).  sigma is evaluated on
    ``sigma_points`` fresh points (one evaluation key for all k).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    degrees = list(degrees)
    if not degrees or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in degrees):
        raise ValueError(f"degrees must be a non-empty sequence of integers >= 1, got {degrees!r}")
    if params is not None:
        check_moduli(variety, params, on_singular=on_singular, what="balanced metric")
    k_iter, k_sigma = jax.random.split(key)
    rows = []
    for k in degrees:
        t0 = time.perf_counter()
        res = balanced_metric(
            variety, k, params, jax.random.fold_in(k_iter, int(k)),
            n_points=n_points, iterations=iterations, dtype=dtype, verbose=verbose, on_singular="ignore",
        )
        est = sigma_chunked(res.metric, k_sigma, params, res.h, sigma_points)
        row = dict(
            k=int(k),
            basis_size=res.basis.size,
            n_points=res.n_points,
            sigma=float(est.value),
            stderr=float(est.stderr),
            sigma_fs=None,
            sigma_fs_stderr=None,
            final_change=float(res.changes[-1]),
        )
        if k == 1:
            fs = sigma_chunked(res.metric, k_sigma, params, jnp.eye(res.basis.size, dtype=res.h.dtype), sigma_points)
            row["sigma_fs"] = float(fs.value)
            row["sigma_fs_stderr"] = float(fs.stderr)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if verbose:
            print(f"k={k} N={row['basis_size']} sigma={row['sigma']:.4f} +- {row['stderr']:.4f} "
                  f"({row['seconds']:.1f} s)", flush=True)
    return rows


def plot_sigma_vs_k(results, path, title=None):
    """Plot sigma (with standard errors) against k from :func:`sigma_scan` rows; write a PNG.

    Uses ``matplotlib.figure.Figure`` with the Agg canvas (no global backend change).
    Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot")
    ks = np.asarray([r["k"] for r in results], float)
    sig = np.asarray([r["sigma"] for r in results], float)
    err = np.asarray([r.get("stderr") or 0.0 for r in results], float)
    fig = Figure(figsize=(5.5, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(ks, sig, yerr=err, marker="o", capsize=3, label="balanced metric")
    fs = [r for r in results if r.get("sigma_fs") is not None]
    if fs:
        ax.axhline(fs[0]["sigma_fs"], color="gray", ls="--", label="Fubini-Study (k = 1, H = 1)")
    ax.set_xlabel("k")
    ax.set_ylabel(r"$\sigma$")
    ax.set_yscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(int(k)) for k in ks])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title or "sigma accuracy of balanced metrics")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
