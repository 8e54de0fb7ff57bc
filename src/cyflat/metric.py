"""The algebraic (Donaldson) metric ``K_H = log(s^T H conj(s)) / (pi k)`` and its accuracy.

Shapes and batching
-------------------
Point quantities take ``(h, zs, params, patch, dependent=None)``:

* ``h`` complex (*M, N, N) hermitian positive definite; ``params`` complex (*M, m);
* ``zs`` complex (*M, *S, n) affine points, ``patch`` int (*M, *S), ``dependent`` int
  (*M, *S) or None (then the largest-gradient coordinate is used).

``M`` are moduli axes (each moduli value with its own H; ``h`` or ``params`` may also
have no batch axes and is then shared), ``S`` are point axes.  Per moduli value the
points are flattened and pushed through one matrix product with ``h``: the cost is
``(d+1) N^2`` complex multiply-adds per point.

Closed form: with ``X = (s, D_1 s, ..., D_d s)`` (section values and their derivatives
along the local coordinates of X) and ``G = X H X^dagger``, ``phi = G_00``,
``v_a = G_a0``, the metric on X is
``g_ab = (G_ab / phi - v_a conj(v_b) / phi^2) / (pi k)`` in local coordinates.
``eta = det g * |dQ/dz_dependent|^2 = (omega^d / d!) / |Omega|^2``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import projective as proj
from .sections import MonomialBasis, warn_if_dependent
from .singular import check_moduli
from .variety import Hypersurface, MCEstimate, _jacobian_from_grad, det_small

__all__ = ["AlgebraicMetric", "LocalMetric", "ricci_tensor", "sigma_from_eta"]


class LocalMetric(NamedTuple):
    """Metric on X in local coordinates: ``g`` (..., d, d) with the chart it is written in."""

    g: jax.Array
    patch: jax.Array
    dependent: jax.Array


def ricci_tensor(metric_fn, x):
    """``R_{i jbar} = -d_i d_jbar log det g`` by autodiff for a metric function of local coordinates.

    ``metric_fn``: complex (d,) -> hermitian (d, d); ``x``: complex (d,).  Returns (d, d).
    """
    return -proj.complex_hessian(lambda y: jnp.log(jnp.real(det_small(metric_fn(y)))), x)


def sigma_from_eta(eta, weights, n_failed=0):
    """sigma accuracy ``sum w |eta/eta_bar - 1| / sum w`` over the last axis.

    Points where eta is not finite or not positive (the metric is not positive definite)
    or whose weight is 0 are left out and counted in ``n_failed``.  Returns
    :class:`~cyflat.variety.MCEstimate` (value, stderr, ess, n_failed).
    """
    ok = jnp.isfinite(eta) & (eta > 0) & (weights > 0) & jnp.isfinite(weights)
    w = jnp.where(ok, weights, 0)
    eta = jnp.where(ok, eta, 0)
    wsum = jnp.sum(w, axis=-1, keepdims=True)
    eta_bar = jnp.sum(w * eta, axis=-1, keepdims=True) / wsum
    dev = jnp.abs(eta / eta_bar - 1)
    sigma = jnp.sum(w * dev, axis=-1, keepdims=True) / wsum
    n = jnp.sum(ok, axis=-1)
    # Ratio estimator: Var(sum w (dev - sigma)) / (sum w)^2.
    resid = jnp.where(ok, w * (dev - sigma), 0)
    stderr = jnp.sqrt(jnp.sum(resid**2, axis=-1) * n / jnp.maximum(n - 1, 1)) / wsum[..., 0]
    ess = wsum[..., 0] ** 2 / jnp.sum(w**2, axis=-1)
    bad = jnp.sum((~ok) & (weights > 0), axis=-1)
    return MCEstimate(sigma[..., 0], stderr, ess, jnp.asarray(n_failed) + bad)


def _map_moduli(block, h, params, *point_args):
    """Apply ``block(h, params, *point_args)`` with one vmap per moduli axis."""
    mh, mp = h.shape[:-2], params.shape[:-1]
    M = mh if len(mh) >= len(mp) else mp
    for name, shape in (("h", mh), ("params", mp)):
        if shape and shape != M:
            raise ValueError(f"{name} has batch shape {shape}; expected () or the moduli batch shape {M}")
    zs = point_args[0]
    if zs.shape[: len(M)] != M:
        raise ValueError(f"points of shape {zs.shape} must start with the moduli batch shape {M}")
    fn = block
    for _ in M:
        fn = jax.vmap(fn, in_axes=(0 if mh else None, 0 if mp else None) + (0,) * len(point_args))
    return fn(h, params, *point_args)


class AlgebraicMetric:
    """The algebraic metric of hermitian matrices H on a hypersurface, for a section basis.

    Args:
        variety: :class:`~cyflat.variety.Hypersurface`.
        sections: a :class:`~cyflat.sections.MonomialBasis` on the same P^n.

    Immutable and hashable (a leafless pytree); all methods are pure and jit-able.
    """

    def __init__(self, variety: Hypersurface, sections: MonomialBasis):
        if not isinstance(variety, Hypersurface):
            raise ValueError(f"variety must be a Hypersurface, got {type(variety).__name__}")
        if not isinstance(sections, MonomialBasis):
            raise ValueError(f"sections must be a MonomialBasis, got {type(sections).__name__}")
        if sections.n != variety.dim_projective:
            raise ValueError(
                f"sections live on P^{sections.n} but the variety is in P^{variety.dim_projective}"
            )
        warn_if_dependent(variety, sections)
        self.variety = variety
        self.sections = sections

    def __hash__(self):
        return hash((self.variety, self.sections))

    def __eq__(self, other):
        return isinstance(other, AlgebraicMetric) and (self.variety, self.sections) == (other.variety, other.sections)

    def __repr__(self):
        return f"AlgebraicMetric({self.variety!r}, {self.sections!r})"

    @property
    def degree(self) -> int:
        return self.sections.degree

    @property
    def basis_size(self) -> int:
        return self.sections.size

    # -- input checks ---------------------------------------------------------------------
    def check_h(self, h):
        """Validate H: complex (..., N, N) with N the number of sections; concrete (not
        traced) H must also be finite and hermitian to round-off."""
        h = jnp.asarray(h)
        N = self.basis_size
        if h.ndim < 2 or h.shape[-1] != h.shape[-2]:
            raise ValueError(f"h must be a square matrix (..., {N}, {N}), got shape {h.shape}")
        if h.shape[-1] != N:
            raise ValueError(f"h has size {h.shape[-1]} but there are {N} sections ({self.sections!r})")
        if not jnp.issubdtype(h.dtype, jnp.complexfloating):
            h = h.astype(jnp.result_type(h.dtype, jnp.complex64))
        if not isinstance(h, jax.core.Tracer):  # values of traced H cannot be inspected
            hv = np.asarray(h)
            if not np.all(np.isfinite(hv)):
                raise ValueError("h has non-finite entries")
            asym = np.max(np.abs(hv - np.conj(np.swapaxes(hv, -1, -2))), initial=0.0)
            if asym > 100 * np.finfo(hv.dtype).eps * max(np.max(np.abs(hv), initial=0.0), 1e-300):
                raise ValueError(f"h must be hermitian: max |H - H^dagger| = {asym:.3g}")
        return h

    def _check_points(self, zs, patch):
        zs = jnp.asarray(zs)
        n = self.variety.dim_projective
        if zs.ndim < 1 or zs.shape[-1] != n:
            raise ValueError(f"zs must be affine points (..., {n}), got shape {zs.shape}")
        if not jnp.issubdtype(zs.dtype, jnp.complexfloating):
            zs = zs.astype(jnp.result_type(zs.dtype, jnp.complex64))
        return zs, proj.check_index("patch", patch, n + 1, zs.shape[:-1])

    def _prepare(self, h, zs, params, patch, dependent):
        zs, patch = self._check_points(zs, patch)
        h = self.check_h(h)
        dtype = jnp.result_type(zs.dtype, h.dtype)
        params = self.variety.check_params(params, dtype).astype(dtype)
        if dependent is not None:
            dependent = proj.check_index("dependent", dependent, self.variety.dim_projective, patch.shape)
        return h.astype(dtype), zs.astype(dtype), params, patch, dependent

    # -- kernels for one moduli value (points flattened inside) ---------------------------
    def _chunk_points(self):
        """Points per chunk: keeps a chunk's section jets (about 1 MB) in cache."""
        return _chunk_size(self.basis_size, self.variety.dim)

    def _metric_chunk(self, big, coeffs, zs, patch, dependent, want):
        """One chunk of points (B, n) -> g (B, d, d) [``want='g'``] or eta (B,), and the
        dependent index and ``|dQ/dz_dependent|^2``."""
        poly = self.variety.poly
        zh = proj.affine_to_hom(zs, patch)
        grad = proj._drop_index(poly.gradient(zh, coeffs), patch)
        if dependent is None:
            dependent = jnp.argmax(jnp.abs(grad), axis=-1).astype(jnp.int32)
        J = _jacobian_from_grad(grad, dependent)  # (B, d, n)
        # Tangent vectors of the local coordinates in homogeneous index space (0 at patch).
        tangents = _affine_rows_to_hom(J, patch)  # (B, d, n+1)
        xr, xi = self.sections.jets_hom_real(
            jnp.real(zh), jnp.imag(zh), jnp.real(tangents), jnp.imag(tangents)
        )  # (B, 1+d, N): s and its derivatives along the local coordinates
        g_dep = jnp.take_along_axis(grad, dependent[:, None], axis=-1)[:, 0]
        gdep2 = jnp.real(g_dep) ** 2 + jnp.imag(g_dep) ** 2
        d = self.variety.dim
        if want == "eta":
            return _det_metric(big, xr, xi, self.degree) * gdep2, dependent, gdep2
        gr, gi = _metric_from_jets(xr, xi, big, self.degree)
        return jax.lax.complex(_stack_entries(gr, d), _stack_entries(gi, d)), dependent, gdep2

    def _local_metric_block(self, h, params, zs, patch, dependent, want="g"):
        shape = zs.shape[:-1]
        zs = zs.reshape(-1, zs.shape[-1])
        patch = patch.reshape(-1)
        if dependent is not None:
            dependent = dependent.reshape(-1)
        coeffs = self.variety.poly.coefficients(params, zs.dtype)
        big = _real_form(h)

        def chunk(args):
            return self._metric_chunk(big, coeffs, *args, want)

        out, dep, gdep2 = _map_chunks(chunk, (zs, patch, dependent), self._chunk_points())
        return out.reshape(shape + out.shape[1:]), dep.reshape(shape), gdep2.reshape(shape)

    def _eta_block(self, h, params, zs, patch, dependent):
        return self._local_metric_block(h, params, zs, patch, dependent, want="eta")[0]

    # -- public point quantities ----------------------------------------------------------
    def kahler_potential(self, h, zs, patch):
        """``log(s^T H conj(s)) / (pi k)`` at affine points -> real (*M, *S)."""
        h = self.check_h(h)
        zs, patch = self._check_points(zs, patch)
        s = self.sections(zs, patch)
        nb = h.ndim - 2
        hb = h.reshape(h.shape[:-2] + (1,) * (zs.ndim - 1 - nb) + h.shape[-2:])
        phi = jnp.real(jnp.einsum("...a,...ab,...b->...", s, hb, jnp.conj(s)))
        return jnp.log(phi) / (jnp.pi * self.degree)

    def metric_ambient(self, h, zs, patch):
        """Metric ``d_i d_jbar K_H`` of the ambient affine chart, complex (..., n, n) (H shared)."""
        h = self.check_h(h)
        zs, patch = self._check_points(zs, patch)
        s, ds = self.sections.values_and_jacobian(zs, patch)
        X = jnp.concatenate([s[..., None, :], ds], axis=-2)
        return _metric_from_sections(X, h.astype(zs.dtype), self.degree)

    def metric(self, h, zs, params, patch, dependent=None) -> LocalMetric:
        """Metric on X in local coordinates: :class:`LocalMetric` ``(g (*M,*S,d,d), patch, dependent)``."""
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        g, dep = _metric_jit(self, h, params, zs, patch, dependent)
        return LocalMetric(g, patch, dep)

    def eta(self, h, zs, params, patch, dependent=None):
        """``eta = det g_X * |dQ/dz_dependent|^2`` (real, (*M, *S)): Kaehler over Omega volume form.

        Reverse-mode differentiable (``jax.grad``, ``jax.vjp``) in ``h`` and the points,
        with a closed-form derivative (one matrix product per moduli value for ``h``;
        checked against autodiff in the tests).  Forward mode (``jax.jvp``,
        ``jax.jacfwd``) is not available: JAX raises for it; differentiate the metric
        (:meth:`metric`) instead.
        """
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        return _eta_jit(self, h, params, zs, patch, dependent)

    def eta_sample(self, h, sample, params):
        """eta on a :class:`~cyflat.variety.Sample` (uses its patch and dependent index)."""
        return self.eta(h, sample.zs, params, sample.patch, sample.dependent)

    def _ricci_block(self, h, params, zs, patch, dependent):
        shape = zs.shape[:-1]
        zs = zs.reshape(-1, zs.shape[-1])
        patch = patch.reshape(-1)
        poly = self.variety.poly
        coeffs = poly.coefficients(params, zs.dtype)
        if dependent is None:
            grad = proj._drop_index(poly.gradient(proj.affine_to_hom(zs, patch), coeffs), patch)
            dependent = jnp.argmax(jnp.abs(grad), axis=-1).astype(jnp.int32)
        else:
            dependent = dependent.reshape(-1)

        def one(z0, p, dep):
            n = z0.shape[-1]
            a = jnp.arange(n - 1)
            kept = a + (a >= dep)

            def embed(x):
                # Local coordinates x -> affine point on X: the dependent coordinate by
                # Newton's method from the base point (k steps are exact to order 2^k - 1).
                z = z0.at[kept].set(x)
                for _ in range(3):
                    zh = proj.affine_to_hom(z, p)
                    val, gh = poly.value_and_gradient(zh, coeffs)
                    z = z.at[dep].add(-val / gh[proj.index_affine_to_hom(dep, p)])
                return z

            def metric_fn(x):
                # The closed-form metric with the small power-table section program:
                # Ricci differentiates it twice more.
                zh = proj.affine_to_hom(embed(x), p)
                grad = proj._drop_index(poly.gradient(zh, coeffs), p)
                J = _jacobian_from_grad(grad, dep)  # (d, n)
                X = self.sections.jets_hom(zh, _affine_rows_to_hom(J, p), method="powers")
                return _metric_from_sections(X, h, self.degree)

            return ricci_tensor(metric_fn, z0[kept])

        ric = jax.vmap(one)(zs, patch, dependent)
        return ric.reshape(shape + ric.shape[-2:])

    def ricci(self, h, zs, params, patch, dependent=None):
        """Ricci tensor ``R_{i jbar} = -d_i d_jbar log det g_X`` in local coordinates (*M,*S,d,d).

        Autodiff (forward over reverse) through the closed-form metric, with the
        dependent coordinate followed along X by Newton's method.
        """
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        return _ricci_jit(self, h, params, zs, patch, dependent)

    def ricci_scalar(self, h, zs, params, patch, dependent=None):
        """Ricci scalar ``R = g^{jbar i} R_{i jbar}`` (real, (*M, *S))."""
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        return _ricci_scalar_jit(self, h, params, zs, patch, dependent)

    # -- accuracy -------------------------------------------------------------------------
    def sigma_accuracy(self, key, params, h, count=100_000, on_singular="warn") -> MCEstimate:
        """sigma accuracy of H on ``count`` fresh intersection samples per moduli value.

        ``params`` (*M, m) and ``h`` (*M, N, N) (either may be unbatched).  Returns
        :class:`~cyflat.variety.MCEstimate` batched over M; points where the metric is
        not positive definite are excluded and counted in ``n_failed``.  At singular or
        nearly singular moduli it warns, raises ``ValueError`` (``on_singular='raise'``)
        or not (``'ignore'``), see :func:`cyflat.singular.check_moduli`.
        """
        check_moduli(self.variety, params, on_singular=on_singular, what="sigma accuracy")
        h = self.check_h(h)
        params = self.variety.check_params(params, h.dtype)
        M = params.shape[:-1] if params.ndim - 1 >= h.ndim - 2 else h.shape[:-2]
        if params.shape[:-1] != M:
            params = jnp.broadcast_to(params, M + params.shape[-1:])
        sample = self.variety.sample(key, params, count, dtype=h.dtype)
        eta = self.eta(h, sample.zs, params, sample.patch, sample.dependent)
        return sigma_from_eta(eta, sample.weights, sample.n_failed)


# Jitted entry points (the metric is a leafless pytree, so it is part of the cache key):
# eager calls then run one compiled kernel instead of dispatching every operation.
@jax.jit
def _metric_jit(m, h, params, zs, patch, dependent):
    g, dep, _ = _map_moduli(m._local_metric_block, h, params, zs, patch, dependent)
    return g, dep


@jax.jit
def _eta_jit(m, h, params, zs, patch, dependent):
    return _map_moduli(m._eta_block, h, params, zs, patch, dependent)


@jax.jit
def _ricci_jit(m, h, params, zs, patch, dependent):
    return _map_moduli(m._ricci_block, h, params, zs, patch, dependent)


@jax.jit
def _ricci_scalar_jit(m, h, params, zs, patch, dependent):
    g, dep, _ = _map_moduli(m._local_metric_block, h, params, zs, patch, dependent)
    ric = _map_moduli(m._ricci_block, h, params, zs, patch, dep)
    return jnp.real(jnp.trace(jnp.linalg.solve(g, ric), axis1=-2, axis2=-1))


def _metric_from_sections(X, h, k):
    """X (..., 1+d, N) = (s, D_a s); h (N, N) -> g (..., d, d) (see module docstring)."""
    Y = (X.reshape(-1, X.shape[-1]) @ h).reshape(X.shape)
    G = jnp.einsum("...an,...cn->...ac", Y, jnp.conj(X))
    phi = jnp.real(G[..., 0, 0])[..., None, None]
    v = G[..., 1:, 0]
    g = G[..., 1:, 1:] / phi - v[..., :, None] * jnp.conj(v)[..., None, :] / phi**2
    return g / (jnp.pi * k)


def _affine_rows_to_hom(J, patch):
    """Rows of affine vectors (..., d, n) -> homogeneous (..., d, n+1) with 0 at ``patch``."""
    n = J.shape[-1]
    idx = jnp.arange(n + 1)
    p = jnp.asarray(patch)[..., None, None]
    src = jnp.clip(idx - (idx > p), 0, n - 1)
    src = jnp.broadcast_to(src, J.shape[:-1] + (n + 1,))
    return jnp.where(idx == p, jnp.zeros((), J.dtype), jnp.take_along_axis(J, src, axis=-1))


def _chunk_size(N, d):
    """Points per chunk for N sections in dimension d: about 2^15 / N (a power of two in
    [32, 1024]) so that a chunk's jets and products stay in the CPU caches."""
    target = 2**15 * 4 / (N * (d + 1))
    return int(2 ** np.clip(np.round(np.log2(max(target, 1.0))), 5, 10))


def _map_chunks(fn, args, chunk):
    """``fn`` on the leading axis of the pytree ``args`` in chunks of ``chunk`` (lax.map),
    plus one call for the remainder; outputs concatenated along the leading axis."""
    B = jax.tree_util.tree_leaves(args)[0].shape[0]
    if B <= chunk:
        return fn(args)
    nb = B // chunk
    main = jax.tree_util.tree_map(lambda x: x[: nb * chunk].reshape((nb, chunk) + x.shape[1:]), args)
    out = jax.lax.map(fn, main)
    out = jax.tree_util.tree_map(lambda x: x.reshape((nb * chunk,) + x.shape[2:]), out)
    if B > nb * chunk:
        rest = fn(jax.tree_util.tree_map(lambda x: x[nb * chunk :], args))
        out = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=0), out, rest)
    return out


def _real_form(h):
    """H (N, N) complex -> real (2N, 2N) with ``[xr, xi] @ R = [Re(x H), Im(x H)]``."""
    hr, hi = jnp.real(h), jnp.imag(h)
    return jnp.concatenate([jnp.concatenate([hr, hi], axis=1), jnp.concatenate([-hi, hr], axis=1)], axis=0)


def _gram(xr, xi, big):
    """Section jets (B, A, N) (real, imaginary parts) -> ``G = X H X^dagger`` entries.

    One real matrix product ``y = [Xr, Xi] @ R`` ((B A, 2N) x (2N, 2N): real GEMM is much
    faster than complex on CPU; ``y = [Re(X H), Im(X H)]``) and the A^2 real dot
    products of its rows with ``[Xr, Xi]`` and ``[-Xi, Xr]`` (upper triangle of the
    hermitian G only).  Returns ``y`` (B, A, 2N) and dicts ``Gr[a, b]``, ``Gi[a, b]``
    (a, b = 0..A-1) of (B,) arrays.
    """
    A = xr.shape[-2]
    x2 = jnp.concatenate([xr, xi], axis=-1)  # (B, A, 2N)
    xj = jnp.concatenate([-xi, xr], axis=-1)
    y = (x2.reshape(-1, x2.shape[-1]) @ big).reshape(x2.shape)
    Gr, Gi = {}, {}
    for a in range(A):
        for b in range(a, A):
            Gr[a, b] = Gr[b, a] = jnp.sum(y[:, a] * x2[:, b], axis=-1)
            if b > a:
                Gi[a, b] = jnp.sum(y[:, a] * xj[:, b], axis=-1)
                Gi[b, a] = -Gi[a, b]
    return y, Gr, Gi


def _metric_from_gram(Gr, Gi, A, k):
    """``g_ab = (G_ab / phi - v_a conj(v_b) / phi^2) / (pi k)`` with ``phi = G_00``,
    ``v_a = G_a0``: dicts ``gr[a, b]``, ``gi[a, b]`` (a, b = 0..d-1) of (B,) arrays, the
    real and imaginary parts of g (hermitian: only the independent entries are computed).
    """
    phi = Gr[0, 0]
    inv = 1 / phi
    scale = 1 / (jnp.pi * k)
    gr, gi = {}, {}
    for a in range(1, A):
        for b in range(a, A):
            # v_a conj(v_b) with v_a = G_a0.
            outer_r = Gr[a, 0] * Gr[b, 0] + Gi[a, 0] * Gi[b, 0]
            gr[a - 1, b - 1] = gr[b - 1, a - 1] = (Gr[a, b] - outer_r * inv) * (inv * scale)
            if b > a:
                outer_i = Gi[a, 0] * Gr[b, 0] - Gr[a, 0] * Gi[b, 0]
                gi[a - 1, b - 1] = (Gi[a, b] - outer_i * inv) * (inv * scale)
                gi[b - 1, a - 1] = -gi[a - 1, b - 1]
            else:
                gi[a - 1, a - 1] = jnp.zeros_like(phi)
    return gr, gi


def _metric_from_jets(xr, xi, big, k):
    """Section jets (B, 1+d, N) (real and imaginary parts) -> the entries of g on X
    (dicts ``gr``, ``gi``, see :func:`_metric_from_gram`)."""
    _, Gr, Gi = _gram(xr, xi, big)
    return _metric_from_gram(Gr, Gi, xr.shape[-2], k)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _det_metric(big, xr, xi, k):
    """``det g`` (B,) on X from the section jets (B, 1+d, N) and the real form of H.

    Reverse-mode derivative in closed form (:func:`_det_metric_bwd`): one matrix
    product for the H cotangent, instead of autodiff's transposes of every entry of G.
    """
    d = xr.shape[-2] - 1
    gr, gi = _metric_from_jets(xr, xi, big, k)
    return _det_hermitian(gr, gi, d)


def _det_metric_fwd(big, xr, xi, k):
    A = xr.shape[-2]
    d = A - 1
    y, Gr, Gi = _gram(xr, xi, big)
    gr, gi = _metric_from_gram(Gr, Gi, A, k)
    det = _det_hermitian(gr, gi, d)
    phi = Gr[0, 0]
    u = jnp.stack([jax.lax.complex(Gr[a, 0], Gi[a, 0]) for a in range(1, A)], axis=-1) / phi[:, None]  # (B, d)
    # det g * S^-1 = adj(g) / (pi k phi): kept without the division by det g, so that the
    # cotangent stays finite where g is singular (det g = 0).
    det_s_inv = _adj_hermitian(gr, gi, d, det) / (jnp.pi * k * phi)[:, None, None]  # (B, d, d)
    return det, (xr, xi, y, phi, u, det_s_inv, det)


def _det_metric_bwd(k, res, ct):
    r"""Cotangents of ``det g`` for (real form of H, Re X, Im X).

    With ``G = X H X^dagger`` ((d+1) x (d+1)), ``phi = G_00`` and the Schur complement
    ``S = pi k phi g``: ``det g = det G / ((pi k)^d phi^{d+1})``, so
    ``d log det g = tr(W dG)`` with ``W = G^{-1} - (d+1)/phi e_0 e_0^T
    = Q S^{-1} Q^dagger - d/phi e_0 e_0^T``, ``Q^dagger X = T`` (rows
    ``t_a = D_a s - u_a s``, ``u_a = G_a0 / phi``).  Hence, with ``c = ct * det g``,

    * H:  ``d L = Re tr(dH K)``, ``K = sum_points c (T^dagger S^{-1} T - d/phi s^dagger s)``
      (hermitian), one real matrix product over all points; returned as the cotangent
      of the real form ``R`` whose projection on real forms of complex matrices is
      ``(Re K, Im K)``.  (Exact along hermitian dH, the only directions H takes; it is
      the derivative of ``det g`` at ``(H + H^dagger) / 2``.)
    * X:  ``d L = 2 Re sum c (W X H) . dX``, i.e. cotangents ``2 c Re(W X H)``, ``2 c Im(W X H)``.

    ``S^{-1}`` enters only as ``c S^{-1} = ct adj(g) / (pi k phi)``: no division by det g,
    so the cotangents stay finite where g is singular.
    """
    xr, xi, y, phi, u, det_s_inv, det = res
    N = xr.shape[-1]
    d = xr.shape[-2] - 1
    c = ct * det
    c_s_inv = ct[:, None, None] * det_s_inv  # c S^-1
    X = jax.lax.complex(xr, xi)  # (B, A, N)
    s = X[:, 0]
    t = X[:, 1:] - u[:, :, None] * s[:, None, :]  # (B, d, N)
    z = jnp.einsum("bij,bjn->bin", c_s_inv, t)
    z0 = (-d * c / phi)[:, None] * s
    rows = jnp.concatenate([s[:, None], t], axis=1).reshape(-1, N)
    zrows = jnp.concatenate([z0[:, None], z], axis=1).reshape(-1, N)
    lhs = jnp.concatenate([jnp.real(rows), jnp.imag(rows)], axis=-1)  # (B A, 2N)
    rhs = jnp.concatenate([jnp.real(zrows), jnp.imag(zrows)], axis=-1)
    ct_big = lhs.T @ rhs  # [[Rr^T Zr, Rr^T Zi], [Ri^T Zr, Ri^T Zi]]
    # Points: W X H = Q S^-1 Q^dagger (X H) - d/phi e_0 (s H).
    xh = jax.lax.complex(y[..., :N], y[..., N:])  # (B, A, N)
    v = jnp.einsum("bij,bjn->bin", c_s_inv, xh[:, 1:] - u[:, :, None] * xh[:, :1])
    row0 = (-d * c / phi)[:, None] * xh[:, 0] - jnp.einsum("ba,ban->bn", jnp.conj(u), v)
    wxh = 2 * jnp.concatenate([row0[:, None], v], axis=1)  # 2 c W X H
    return ct_big, jnp.real(wxh), jnp.imag(wxh)


_det_metric.defvjp(_det_metric_fwd, _det_metric_bwd)


def _adj_hermitian(gr, gi, d, det):
    """Adjugate ``det(g) g^{-1}`` of the hermitian d x d matrix with entries ``gr``, ``gi``
    and determinant ``det`` -> complex (B, d, d); closed form for d <= 3 (finite also where
    g is singular), ``det * inv(g)`` above."""
    g = {key: jax.lax.complex(gr[key], gi[key]) for key in gr}
    if d == 1:
        return jnp.ones_like(g[0, 0])[:, None, None]
    if d == 2:
        adj = {(0, 0): g[1, 1], (0, 1): -g[0, 1], (1, 1): g[0, 0]}
    elif d == 3:
        adj = {
            (0, 0): g[1, 1] * g[2, 2] - g[1, 2] * g[2, 1],
            (1, 1): g[0, 0] * g[2, 2] - g[0, 2] * g[2, 0],
            (2, 2): g[0, 0] * g[1, 1] - g[0, 1] * g[1, 0],
            (0, 1): g[0, 2] * g[2, 1] - g[0, 1] * g[2, 2],
            (0, 2): g[0, 1] * g[1, 2] - g[0, 2] * g[1, 1],
            (1, 2): g[0, 2] * g[1, 0] - g[0, 0] * g[1, 2],
        }
    else:
        return det[:, None, None] * jnp.linalg.inv(_stack_entries(g, d))
    for a in range(d):  # hermitian: the lower triangle is the conjugate of the upper
        for b in range(a):
            adj[a, b] = jnp.conj(adj[b, a])
    return _stack_entries(adj, d)


def _stack_entries(e, d):
    return jnp.stack([jnp.stack([e[a, b] for b in range(d)], axis=-1) for a in range(d)], axis=-2)


def _det_hermitian(gr, gi, d):
    """Determinant of a hermitian d x d matrix from its entries (real arithmetic for d <= 3)."""
    if d == 1:
        return gr[0, 0]
    if d == 2:
        return gr[0, 0] * gr[1, 1] - (gr[0, 1] ** 2 + gi[0, 1] ** 2)
    if d == 3:
        # Re(g01 g12 g20) with g20 = conj(g02).
        pr = gr[0, 1] * gr[1, 2] - gi[0, 1] * gi[1, 2]
        pi = gr[0, 1] * gi[1, 2] + gi[0, 1] * gr[1, 2]
        cyc = pr * gr[0, 2] + pi * gi[0, 2]
        return (
            gr[0, 0] * gr[1, 1] * gr[2, 2]
            + 2 * cyc
            - gr[0, 0] * (gr[1, 2] ** 2 + gi[1, 2] ** 2)
            - gr[1, 1] * (gr[0, 2] ** 2 + gi[0, 2] ** 2)
            - gr[2, 2] * (gr[0, 1] ** 2 + gi[0, 1] ** 2)
        )
    return jnp.real(jnp.linalg.det(jax.lax.complex(_stack_entries(gr, d), _stack_entries(gi, d))))


jax.tree_util.register_pytree_node(AlgebraicMetric, lambda x: ((), x), lambda aux, _: aux)
