"""Machine-learning tools: Cholesky parametrisation of H, batched sampling, the
Monge-Ampere loss and an MLP from moduli to H.

Conventions (``shared/spec/conventions.md``):

* **Cholesky parametrisation.**  A hermitian positive (semi-)definite N x N matrix is
  written ``H = M M^dagger`` with ``M`` upper triangular, real diagonal ``diag`` (N,) and
  complex strictly-upper entries ``upper`` (N(N-1)/2,) in the row-major order of
  ``numpy.triu_indices(N, 1)``.  The flat real parameter vector ``h_par`` (N^2,) is
  ``[diag, upper.real, upper.imag]``.  H is positive definite iff no diagonal entry is 0,
  and ``H -> c^2 H`` is ``h_par -> c h_par``.
* **Samples** for one moduli value are tuples ``(params (m,), zs (B, n), patch (B,),
  weights (B,))``: affine points ``zs`` in homogeneous patch ``patch`` (int32) with Monte
  Carlo weights ``|Omega|^2 / det g_FS`` (0 marks a rejected point).  :class:`BatchSampler`
  yields the same with a leading moduli axis P.
* **Monge-Ampere loss** (:func:`variance_eta_loss`):
  ``sum_i w_i (eta_i/eta_bar - 1)^2 / sum_i w_i`` with the weighted mean ``eta_bar``
  held constant under differentiation, plus a penalty for negative ``eta``.  It is
  invariant under ``H -> c H`` and under rescaling all weights.

Nothing here changes JAX's configuration; precision follows the arrays' dtypes (and the
``dtype`` arguments), defaulting to JAX's default float/complex types.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .variety import sample_dtype

__all__ = [
    "BatchSampler",
    "HNetMLP",
    "NEGATIVE_ETA_PENALTY",
    "cholesky_decode",
    "cholesky_from_param",
    "hermitian_param_init",
    "sigma_loss",
    "variance_eta_loss",
]


# -- Cholesky parametrisation ------------------------------------------------------------


def _cholesky_index(N: int) -> np.ndarray:
    """(N, N) int table: entry (r, c) of M is ``values[table[r, c]]`` with
    ``values = [diag (N), upper (N(N-1)/2), 0]``."""
    table = np.full((N, N), N + N * (N - 1) // 2, dtype=np.int32)  # points at the 0
    table[np.arange(N), np.arange(N)] = np.arange(N)
    r, c = np.triu_indices(N, 1)
    table[r, c] = N + np.arange(r.size)
    return table


@jax.jit
def cholesky_decode(diag, upper):
    r"""Hermitian matrix ``H = M M^dagger`` from its Cholesky factor.

    ``M`` is upper triangular with real diagonal ``diag`` and strictly-upper entries
    ``upper`` in row-major order (that of ``numpy.triu_indices(N, 1)``): for N = 3,
    ``M = [[d0, u0, u1], [0, d1, u2], [0, 0, d2]]``.

    Args:
        diag: real (..., N) diagonal of M.
        upper: complex (..., N(N-1)/2) strictly-upper entries of M (a real array is
            taken as complex with zero imaginary part).  Leading batch axes of ``diag``
            and ``upper`` broadcast.
    Returns:
        complex (..., N, N) hermitian, positive semi-definite ``H`` (positive definite
        iff all ``diag`` entries are non-zero); complex64 or complex128 following the
        inputs' precision.  Jitted (one compilation per shape and dtype); vmap-able and
        differentiable.
    """
    diag = jnp.asarray(diag)
    upper = jnp.asarray(upper)
    if diag.ndim < 1:
        raise ValueError(f"diag must have shape (..., N), got {diag.shape}")
    N = diag.shape[-1]
    K = N * (N - 1) // 2
    if upper.ndim < 1 or upper.shape[-1] != K:
        raise ValueError(f"upper must have shape (..., {K}) for N = {N}, got {upper.shape}")
    if jnp.issubdtype(diag.dtype, jnp.complexfloating):
        raise ValueError(f"diag must be real, got dtype {diag.dtype}")
    cdtype = jnp.result_type(diag.dtype, upper.dtype, jnp.complex64)
    batch = jnp.broadcast_shapes(diag.shape[:-1], upper.shape[:-1])
    values = jnp.concatenate(
        [
            jnp.broadcast_to(diag, batch + (N,)).astype(cdtype),
            jnp.broadcast_to(upper, batch + (K,)).astype(cdtype),
            jnp.zeros(batch + (1,), cdtype),
        ],
        axis=-1,
    )
    M = values[..., _cholesky_index(N)]  # (..., N, N) gather: cheap and batched
    return M @ jnp.conj(jnp.swapaxes(M, -1, -2))


def _basis_size_from_param_length(length: int) -> int:
    N = math.isqrt(length)
    if N * N != length or N == 0:
        raise ValueError(
            f"Cholesky parameters must have length N^2 (N diagonal + N(N-1) off-diagonal "
            f"real numbers), got length {length}, which is not a positive perfect square"
        )
    return N


@jax.jit
def cholesky_from_param(h_par):
    """Hermitian matrix from the flat real Cholesky parameters.

    Args:
        h_par: real (..., N^2): ``[diag (N), upper.real (N(N-1)/2), upper.imag (N(N-1)/2)]``
            (see :func:`cholesky_decode`).  N is inferred statically from the length.
    Returns:
        complex (..., N, N) ``H = M M^dagger``.
    Raises:
        ValueError: if the length is not a perfect square or ``h_par`` is complex.
    """
    h_par = jnp.asarray(h_par)
    if h_par.ndim < 1:
        raise ValueError("h_par must have shape (..., N^2), got a scalar")
    if jnp.issubdtype(h_par.dtype, jnp.complexfloating):
        raise ValueError(f"h_par must be real (real and imaginary parts are separate entries), got {h_par.dtype}")
    if not jnp.issubdtype(h_par.dtype, jnp.floating):
        h_par = h_par.astype(jnp.result_type(float))
    N = _basis_size_from_param_length(h_par.shape[-1])
    K = N * (N - 1) // 2
    diag = h_par[..., :N]
    upper = jax.lax.complex(h_par[..., N : N + K], h_par[..., N + K :])
    return cholesky_decode(diag, upper)


def hermitian_param_init(key, basis_size: int, fluctuate=None, dtype=float):
    """Cholesky parameters (N^2,) of the identity, optionally with a noisy diagonal.

    Args:
        key: PRNG key (only used when ``fluctuate`` is given; may be None otherwise).
        basis_size: N.
        fluctuate: if given, the diagonal entries are ``1 + fluctuate * normal noise``
            (standard normal); the off-diagonal parameters stay 0.
        dtype: real dtype of the result (default: JAX's default float type).
    Returns:
        real (N^2,) parameters for :func:`cholesky_from_param` (H = identity exactly
        without ``fluctuate``).
    """
    if isinstance(basis_size, bool) or not isinstance(basis_size, (int, np.integer)) or basis_size < 1:
        raise ValueError(f"basis_size must be a positive integer, got {basis_size!r}")
    N = int(basis_size)
    dtype = jnp.result_type(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise ValueError(f"dtype must be real, got {dtype}")
    diag = jnp.ones((N,), dtype)
    if fluctuate is not None:
        if key is None:
            raise ValueError("hermitian_param_init: a PRNG key is needed when fluctuate is given")
        diag = diag + jnp.asarray(fluctuate, dtype) * jax.random.normal(key, (N,), dtype)
    return jnp.concatenate([diag, jnp.zeros((N * N - N,), dtype)])


# -- sampling ------------------------------------------------------------------------------


def _as_key(seed):
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or a PRNG key, got {seed!r}")
    if isinstance(seed, (int, np.integer)):
        return jax.random.PRNGKey(int(seed))
    return seed


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# Traces of the buffer-filling function per static configuration (a Python side effect
# that runs only while tracing, i.e. once per compilation).
_FILL_TRACES: dict = {}


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _fill_buffer(key, variety, params_sampler, P, B, S, cdtype):
    """One buffer: S batches of P moduli (``params_sampler``) with B points each.

    The S * P moduli values are sampled together (one pass over all their lines, see
    :meth:`~cyflat.variety.Hypersurface.sample`), which is several times faster than
    sampling batch by batch when B is small.
    """
    config = (variety, params_sampler, P, B, S, cdtype)
    _FILL_TRACES[config] = _FILL_TRACES.get(config, 0) + 1
    m = variety.num_params
    kp, ks = jax.random.split(key)

    def draw(k):
        if params_sampler is None:
            return jnp.zeros((P, 0), cdtype)
        params = jnp.asarray(params_sampler(k, P))
        if params.shape != (P, m):
            raise ValueError(f"params_sampler(key, {P}) must return shape ({P}, {m}), got {params.shape}")
        return params.astype(cdtype)

    params = jax.vmap(draw)(jax.random.split(kp, S))  # (S, P, m)
    s = variety.sample(ks, params, B, dtype=cdtype)  # leading axes (S, P)
    # Returned as S separate batches: slicing a stacked buffer outside jit costs an
    # eager dispatch per array and batch (about 0.1 ms each on CPU, as much as a
    # small training step).
    batches = tuple((params[i], s.zs[i], s.patch[i], s.weights[i], s.n_failed[i]) for i in range(S))
    return batches, jnp.sum(s.n_failed, axis=1)  # (S,) rejected points per batch


class BatchSampler:
    """Buffered iterator over batches of moduli and points on the variety.

    Each item is ``(params, zs, patch, weights)`` with shapes ``(P, m)``, ``(P, B, n)``,
    ``(P, B)``, ``(P, B)`` (P = ``batch_size_params`` moduli values, B = ``batch_size``
    points each); dtypes: complex ``dtype`` for params and zs, int32 patch, real weights.
    Weight 0 marks a point the sampler had to reject (see ``n_failed_total``).
    Use it as ``params, zs, patch, weights = next(sampler)``; per moduli value the tuple
    ``(params[i], zs[i], patch[i], weights[i])`` is a sample for :func:`variance_eta_loss`.

    One jit-compiled function fills a whole buffer of ``buffer_size`` batches at once
    (draw P moduli with ``params_sampler`` for each batch, then
    :meth:`~cyflat.variety.Hypersurface.sample` B points for all of them in one pass).
    Refills call the same compiled function with a fresh key (``compile_count`` stays 1); samplers with the same
    configuration (variety, the same ``params_sampler`` object, sizes, dtype) share it.
    Buffer b is filled with the key ``jax.random.fold_in(key(seed), b)``, so the same
    seed always gives the same batches, with or without prefetching, and a run can resume
    the stream at any batch (``start_step``) without sampling the skipped ones.

    With ``prefetch=True`` (default) the next buffer is dispatched as soon as the current
    one is put in use: JAX dispatch is asynchronous, so sampling runs while training
    consumes the current buffer (fully overlapped when sampling and training use
    different devices; on one device the work is queued in order).  This keeps two
    buffers alive.

    Args:
        seed: integer or PRNG key.
        variety: a :class:`~cyflat.variety.Hypersurface`.
        params_sampler: ``(key, P) -> complex (P, m)`` moduli draws, jax-traceable, e.g.
            ``lambda k, n: cyflat.random.uniform_unit_disk(k, (n, 1), radius=0.5)``.
            May be None for a variety without moduli (m = 0).
        batch_size_params: P.
        batch_size: B.
        buffer_size: number of batches generated per compiled call.
        device: where batches are placed (``jax.device_put``): a ``jax.Device``, or a
            ``jax.sharding.Sharding`` describing one batch's arrays (a ``NamedSharding``'s
            spec names the moduli axis and optionally the points axis; ``params`` get
            only the first; P and B must divide over the named mesh axes).  Every batch
            of a buffer is placed when the buffer is generated.  None keeps the arrays
            on JAX's default device, where they are computed.
        dtype: complex64 or complex128 for points and moduli (default: JAX's default
            complex type).
        prefetch: dispatch the next buffer early (see above).
        start_step: skip this many batches of the stream (to resume training after
            ``start_step`` steps: the next batch is the one an uninterrupted sampler
            would return at that step).

    Attributes:
        compile_count: how often the fill function was traced (compiled) for this
            sampler's configuration; 1 after any number of refills.
        refills: buffers generated so far (including a prefetched one).
        n_failed_total: rejected intersection points (``Sample.n_failed``) summed over
            all batches this sampler returned so far (int; synchronises with the device).
        n_points_total: points this sampler returned so far (``batches * P * B``).
        last_n_failed: int32 (P,) rejected points per moduli value of the last batch.
    """

    def __init__(
        self,
        seed,
        variety,
        params_sampler: Callable[[Any, int], Any] | None,
        batch_size_params: int = 5,
        batch_size: int = 100,
        buffer_size: int = 20,
        device=None,
        dtype=None,
        *,
        prefetch: bool = True,
        start_step: int = 0,
    ):
        P = self.batch_size_params = _positive_int("batch_size_params", batch_size_params)
        B = self.batch_size = _positive_int("batch_size", batch_size)
        S = self.buffer_size = _positive_int("buffer_size", buffer_size)
        cdtype = sample_dtype(dtype)
        m = variety.num_params
        if params_sampler is None and m:
            raise ValueError(f"params_sampler is required: the variety has {m} moduli")
        self.variety = variety
        self.params_sampler = params_sampler
        self.dtype = cdtype
        self.device = device
        self.prefetch = bool(prefetch)
        self._config = (variety, params_sampler, P, B, S, cdtype)
        self._place = self._placement(device, P, B)
        if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
            raise ValueError(f"start_step must be a non-negative integer, got {start_step!r}")
        self._root_key = _as_key(seed)
        self._next_fill = int(start_step) // S  # index of the next buffer to generate
        self.refills = 0
        self._failed_done = 0  # jax scalar after the first swap; summed lazily
        self._batches_done = 0
        self.last_n_failed = None
        self._buffer = self._dispatch()
        self._next_buffer = self._dispatch() if self.prefetch else None
        self._index = int(start_step) % S
        self._index0 = self._index  # batches of the first buffer skipped by start_step

    @staticmethod
    def _placement(device, P, B):
        """-> function placing a list of batches ``(params, zs, patch, weights, n_failed)``."""
        if device is None:
            return lambda batches: batches
        if isinstance(device, jax.sharding.NamedSharding):
            mesh, spec = device.mesh, tuple(device.spec)
            for axis, size, what in zip(spec[:2], (P, B), ("batch_size_params", "batch_size")):
                names = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
                devices = math.prod(mesh.shape[name] for name in names)
                if size % devices:
                    raise ValueError(
                        f"{what} = {size} must be a multiple of the {devices} devices of mesh axes {names} in `device`"
                    )

            moduli_only = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec[:1]))
            points = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec[:2]))

            def put(batches):  # params (P, m) and n_failed (P,) only have the moduli axis
                return [
                    tuple(jax.device_put(a, points if i in (1, 2, 3) else moduli_only) for i, a in enumerate(batch))
                    for batch in batches
                ]

            return put
        return lambda batches: jax.device_put(batches, device)

    @property
    def compile_count(self) -> int:
        return _FILL_TRACES.get(self._config, 0)

    def _dispatch(self):
        key = jax.random.fold_in(self._root_key, self._next_fill)
        self._next_fill += 1
        self.refills += 1
        batches, failed = _fill_buffer(key, *self._config)
        return self._place(batches), failed

    def _swap(self):
        self._failed_done = self._failed_done + jnp.sum(self._buffer[1][self._index0 :])
        self._buffer = self._next_buffer if self.prefetch else self._dispatch()
        if self.prefetch:
            self._next_buffer = self._dispatch()
        self._index = self._index0 = 0

    @property
    def n_failed_total(self) -> int:
        current = jnp.sum(self._buffer[1][self._index0 : self._index]) if self._index > self._index0 else 0
        return int(self._failed_done + current)

    @property
    def n_points_total(self) -> int:
        return self._batches_done * self.batch_size_params * self.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        if self._index == self.buffer_size:
            self._swap()
        params, zs, patch, weights, n_failed = self._buffer[0][self._index]
        self._index += 1
        self._batches_done += 1
        self.last_n_failed = n_failed
        return params, zs, patch, weights

    def next(self):
        """The next batch ``(params, zs, patch, weights)`` (same as ``next(self)``)."""
        return self.__next__()


# -- loss ----------------------------------------------------------------------------------

#: Default factor of the negative-eta penalty in :func:`variance_eta_loss`.
NEGATIVE_ETA_PENALTY = 10.0

# A generic affine point used in place of bad points when no good point exists (keeps
# the metric's arithmetic, hence gradients, finite; such points carry zero weight).
_FALLBACK_POINT = 0.31 + 0.17j


def _ratio_loss(h, sample, algebraic_metric, negative_penalty, deviation, name):
    """Weighted mean of ``deviation(x)`` plus the negative-eta penalty, with
    ``x = eta / |eta_bar|`` masked as described in :func:`variance_eta_loss`."""
    if len(sample) != 4:
        raise ValueError(
            f"sample must be the tuple (params, zs, patch, weights) for one moduli value, got {len(sample)} "
            "entries (from a cyflat Sample s use (params, s.zs, s.patch, s.weights))"
        )
    params, zs, patch, weights = sample
    zs = jnp.asarray(zs)
    patch = jnp.asarray(patch)
    weights = jnp.asarray(weights)
    if zs.ndim != 2 or weights.shape != zs.shape[:1]:
        raise ValueError(
            f"{name} takes ONE moduli value: zs (B, n) and weights (B,), got "
            f"{zs.shape} and {weights.shape} (vmap over the moduli axis)"
        )
    patch = jnp.broadcast_to(patch, weights.shape)
    corrupt = ~jnp.all(jnp.isfinite(weights))
    ok_in = (weights > 0) & jnp.isfinite(weights) & jnp.all(jnp.isfinite(zs), axis=-1)
    ref = jnp.argmax(ok_in)
    z_ref = jnp.where(ok_in[ref], zs[ref], jnp.asarray(_FALLBACK_POINT, zs.dtype))
    zs_safe = jnp.where(ok_in[:, None], zs, z_ref)
    patch_safe = jnp.where(ok_in, patch, patch[ref])

    eta = algebraic_metric.eta(h, zs_safe, params, patch_safe)
    eta = jnp.real(eta)
    ok = ok_in & jnp.isfinite(eta)
    rdtype = jnp.result_type(eta.dtype, jnp.real(weights).dtype)
    w = jnp.where(ok, weights, 0).astype(rdtype)
    eta = jnp.where(ok, eta, 1).astype(rdtype)  # double-where: bad entries never enter arithmetic

    wsum = jnp.sum(w)
    wsum = jnp.where(wsum > 0, wsum, 1)
    eta_bar = jax.lax.stop_gradient(jnp.sum(w * eta) / wsum)
    scale = jnp.abs(eta_bar)
    scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1)
    x = eta / scale
    loss = jnp.sum(w * deviation(x)) / wsum + negative_penalty * jnp.sum(w * jax.nn.relu(-x) ** 2) / wsum
    return jnp.where(corrupt, jnp.asarray(jnp.nan, loss.dtype), loss)


def variance_eta_loss(h, sample, algebraic_metric, negative_penalty=NEGATIVE_ETA_PENALTY):
    r"""Monge-Ampere (variance of eta) loss of H for ONE moduli value.

    With ``eta_i = algebraic_metric.eta(h, zs, params, patch)`` and
    ``eta_bar = sum_i w_i eta_i / sum_i w_i`` (under ``jax.lax.stop_gradient``; its
    absolute value is used, and 1 if it vanishes), ``x_i = eta_i / |eta_bar|``:

    .. math::
        L = \frac{\sum_i w_i (x_i - 1)^2}{\sum_i w_i}
            + c \, \frac{\sum_i w_i \, \mathrm{relu}(-x_i)^2}{\sum_i w_i},

    the second term (``c = negative_penalty``, default :data:`NEGATIVE_ETA_PENALTY` = 10)
    being zero when all eta >= 0 and growing quadratically for negative eta (a metric
    that is not positive definite).  L = 0 iff eta is constant (and positive) on the
    weighted points; L is invariant under ``H -> c H`` and ``w -> c w``.  No logarithm of
    eta is taken.

    Bad points are masked before any arithmetic that could produce NaN (values and
    gradients): a point counts only if its weight is positive (0 marks a point the
    sampler rejected), its coordinates are finite and its eta is finite.  Points failing
    the first two tests are replaced by a good point before eta is evaluated, so their
    gradient is exactly 0.  (A non-finite eta at finite coordinates, which needs a
    singular H, is dropped from the value, but its gradient can still be non-finite.)
    With no valid point L = 0.  A non-finite WEIGHT is not a rejected point but a
    corrupted sample: the loss is then NaN (its gradient stays finite, all masked), so
    a training loop can notice and skip the batch.

    Args:
        h: complex (N, N) hermitian matrix, e.g. ``cholesky_from_param(h_par)``.
        sample: ``(params (m,), zs (B, n), patch (B,), weights (B,))`` for one moduli
            value.  Batch over moduli with
            ``jax.vmap(variance_eta_loss, in_axes=(0, 0, None))(hs, batch, metric)``
            and average.
        algebraic_metric: an object with ``eta(h, zs, params, patch)`` -> real (B,),
            e.g. :class:`~cyflat.metric.AlgebraicMetric`.
        negative_penalty: factor c of the negative-eta penalty.
    Returns:
        real scalar loss (dtype of eta).
    """
    return _ratio_loss(h, sample, algebraic_metric, negative_penalty, lambda x: (x - 1) ** 2, "variance_eta_loss")


def sigma_loss(h, sample, algebraic_metric, negative_penalty=NEGATIVE_ETA_PENALTY):
    r"""The sigma accuracy itself as a loss, for ONE moduli value.

    Same inputs, masking and negative-eta penalty as :func:`variance_eta_loss`, with
    the absolute instead of the squared deviation:

    .. math::
        L = \frac{\sum_i w_i |x_i - 1|}{\sum_i w_i}
            + c \, \frac{\sum_i w_i \, \mathrm{relu}(-x_i)^2}{\sum_i w_i},
        \qquad x_i = \eta_i / |\bar\eta|,

    whose first term is the Monte Carlo estimate of sigma (:func:`cyflat.metric.sigma_from_eta`)
    on the batch.  The Monge-Ampere loss weighs the tails of eta quadratically, so its
    minimiser is not the metric of smallest sigma within the ansatz (on the Dwork quintic
    at psi = 8 + 8i, k = 3: the H minimising the variance on 2 * 10^4 points has sigma
    0.116, a network trained on that loss reaches 0.111 with a larger variance).  The
    gradient of ``|x - 1|`` is ``sign(x - 1)``: use an adaptive optimiser (Adam).
    Invariant under ``H -> c H``; 0 iff eta is constant and positive on the weighted points.
    """
    return _ratio_loss(h, sample, algebraic_metric, negative_penalty, lambda x: jnp.abs(x - 1), "sigma_loss")


#: Training losses by name (``train.loss`` in the config).
LOSSES = {"variance": variance_eta_loss, "sigma": sigma_loss}


# -- network ------------------------------------------------------------------------------


def _exponent_set(powers) -> tuple[int, ...]:
    out = {0}
    for p in powers:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
            raise ValueError(f"powers must be non-negative integers, got {tuple(powers)!r}")
        out.add(int(p))
    return tuple(sorted(out))


def _exponent_table(m: int, powers) -> np.ndarray:
    """(F, m) exponent vectors with entries in {0} u powers, all-zero excluded."""
    exps = _exponent_set(powers)
    rows = [r for r in itertools.product(exps, repeat=m) if any(r)]
    return np.asarray(rows, dtype=np.int32).reshape(-1, m)


def _power_features(psi, powers):
    """psi complex (..., m) -> (..., F) products ``prod_j psi_j^{e_j}``."""
    m = psi.shape[-1]
    exps = _exponent_set(powers)
    pw = jnp.stack([jax.lax.integer_pow(psi, e) if e else jnp.ones_like(psi) for e in exps], axis=-1)
    pos = {e: i for i, e in enumerate(exps)}
    table = np.vectorize(pos.get)(_exponent_table(m, powers)).astype(np.int32).reshape(-1, m)  # (F, m)
    picked = pw[..., np.arange(m)[None, :], table]  # (..., F, m)
    return jnp.prod(picked, axis=-1)


class HNetMLP(nn.Module):
    r"""MLP from complex moduli to the N^2 real Cholesky parameters of H.

    Input: moduli ``psi`` complex (m,) or (..., m) (a scalar counts as m = 1).
    Output: real (N^2,) or (..., N^2) parameters for :func:`cholesky_from_param`, in
    ``dtype`` (default: ``param_dtype``; default of that: JAX's default float type).

    **Features.**  With ``u = psi / moduli_scale`` (divide first, so that large moduli do
    not overflow or saturate float32: set ``moduli_scale`` to the radius of the moduli
    region), the monomials ``f = prod_j u_j^{e_j}`` over all exponent vectors with
    ``e_j in {0} u powers``, except all zeros (:meth:`num_features`: 3 for m = 1 and
    powers (1, 2, 3); 15 for m = 2), feed the network as the concatenation of

    - ``angle(psi_j)`` for each modulus (m numbers) if ``feature_angle``,
    - ``|f|`` (F numbers) if ``feature_abs``,
    - ``Re f`` and ``Im f`` (2F numbers) if ``feature_parts``.

    **Layers.**  ``Dense(size) -> activation -> Dropout(dropout_rate)`` for each entry of
    ``layer_sizes`` (dropout only if the rate is positive; it is active when called with
    ``deterministic=False`` and a ``'dropout'`` rng), then a final Dense layer
    (``'final'``) with ZERO kernel.  Its bias makes the output at initialisation exactly
    the identity parameters of :func:`hermitian_param_init` (diagonal ``1 +
    init_fluctuation * normal noise`` drawn from the init rng, exactly 1 if
    ``init_fluctuation`` is 0):

    - ``sig_suppress=False``: output = final layer, bias = identity parameters ``h0``.
    - ``sig_suppress=True``: the final layer has 2 N^2 outputs ``(a, b)`` and the output
      is ``sigmoid(a) * b``; biases ``a = 0`` and ``b = 2 h0``, so the output starts at
      ``0.5 * 2 h0 = h0`` exactly.  The sigmoid lets the network switch entries off.
    """

    basis_size: int
    layer_sizes: Sequence[int] = (64, 64)
    powers: Sequence[int] = (1, 2, 3)
    feature_angle: bool = True
    feature_abs: bool = True
    feature_parts: bool = True
    activation: Callable = nn.sigmoid
    dropout_rate: float = 0.0
    sig_suppress: bool = True
    init_fluctuation: float = 0.0
    moduli_scale: float = 1.0
    dtype: Any = None
    param_dtype: Any = None

    @staticmethod
    def num_features(m: int, powers: Sequence[int] = (1, 2, 3)) -> int:
        """Number F of moduli monomials for m moduli: ``|{0} u powers|^m - 1``."""
        return len(_exponent_set(powers)) ** int(m) - 1

    def input_size(self, m: int) -> int:
        """Length of the network's input feature vector for m moduli."""
        F = self.num_features(m, self.powers)
        return m * self.feature_angle + F * self.feature_abs + 2 * F * self.feature_parts

    @nn.compact
    def __call__(self, moduli, deterministic: bool = True):
        """moduli complex (m,) or (..., m) -> real (N^2,) or (..., N^2) Cholesky parameters."""
        N = self.basis_size
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
            raise ValueError(f"basis_size must be a positive integer, got {N!r}")
        if isinstance(self.moduli_scale, (int, float, np.number)) and not self.moduli_scale > 0:
            raise ValueError(f"moduli_scale must be positive, got {self.moduli_scale!r}")
        if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0 for p in self.powers) or not any(
            p > 0 for p in self.powers
        ):
            raise ValueError(f"powers must be non-negative integers, at least one positive, got {self.powers!r}")
        if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in self.layer_sizes):
            raise ValueError(f"layer_sizes must be positive integers, got {self.layer_sizes!r}")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        if jnp.shape(moduli)[-1:] == (0,):
            raise ValueError("HNetMLP needs at least one modulus (got an input with 0 moduli)")
        if not (self.feature_angle or self.feature_abs or self.feature_parts):
            raise ValueError("HNetMLP: at least one of feature_angle, feature_abs, feature_parts must be on")
        pdtype = jnp.result_type(float if self.param_dtype is None else self.param_dtype)
        dtype = pdtype if self.dtype is None else jnp.result_type(self.dtype)

        psi = jnp.asarray(moduli)
        if psi.ndim == 0:
            psi = psi[None]
        cdtype = jnp.result_type(psi.dtype, dtype, jnp.complex64)
        psi = psi.astype(cdtype)
        f = _power_features(psi / jnp.asarray(self.moduli_scale, cdtype), self.powers)
        groups = []
        if self.feature_angle:
            groups.append(jnp.angle(psi))
        if self.feature_abs:
            groups.append(jnp.abs(f))
        if self.feature_parts:
            groups += [jnp.real(f), jnp.imag(f)]
        x = jnp.concatenate(groups, axis=-1).astype(dtype)

        for i, size in enumerate(self.layer_sizes):
            x = nn.Dense(size, dtype=dtype, param_dtype=pdtype, name=f"hidden_{i}")(x)
            x = self.activation(x)
            if self.dropout_rate > 0:
                x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)

        fluct = self.init_fluctuation if self.init_fluctuation else None
        sig = self.sig_suppress

        def bias_init(key, shape, bdtype):
            h0 = hermitian_param_init(key, N, fluct, bdtype)
            return jnp.concatenate([jnp.zeros_like(h0), 2 * h0]) if sig else h0

        out = nn.Dense(
            2 * N * N if sig else N * N,
            dtype=dtype,
            param_dtype=pdtype,
            kernel_init=nn.initializers.zeros,
            bias_init=bias_init,
            name="final",
        )(x)
        if sig:
            a, b = out[..., : N * N], out[..., N * N :]
            out = jax.nn.sigmoid(a) * b
        return out
