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

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import projective as proj
from .sections import MonomialBasis, warn_if_dependent
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
        """Validate H: complex (..., N, N) with N the number of sections."""
        h = jnp.asarray(h)
        N = self.basis_size
        if h.ndim < 2 or h.shape[-1] != h.shape[-2]:
            raise ValueError(f"h must be a square matrix (..., {N}, {N}), got shape {h.shape}")
        if h.shape[-1] != N:
            raise ValueError(f"h has size {h.shape[-1]} but there are {N} sections ({self.sections!r})")
        if not jnp.issubdtype(h.dtype, jnp.complexfloating):
            h = h.astype(jnp.result_type(h.dtype, jnp.complex64))
        return h

    def _check_points(self, zs, patch):
        zs = jnp.asarray(zs)
        n = self.variety.dim_projective
        if zs.ndim < 1 or zs.shape[-1] != n:
            raise ValueError(f"zs must be affine points (..., {n}), got shape {zs.shape}")
        if not jnp.issubdtype(zs.dtype, jnp.complexfloating):
            zs = zs.astype(jnp.result_type(zs.dtype, jnp.complex64))
        patch = jnp.asarray(patch)
        if not jnp.issubdtype(patch.dtype, jnp.integer):
            raise ValueError(f"patch must be an integer array, got dtype {patch.dtype}")
        return zs, jnp.broadcast_to(patch, zs.shape[:-1]).astype(jnp.int32)

    def _prepare(self, h, zs, params, patch, dependent):
        zs, patch = self._check_points(zs, patch)
        h = self.check_h(h)
        dtype = jnp.result_type(zs.dtype, h.dtype)
        params = self.variety.check_params(params, dtype).astype(dtype)
        if dependent is not None:
            dependent = jnp.broadcast_to(jnp.asarray(dependent, jnp.int32), patch.shape)
        return h.astype(dtype), zs.astype(dtype), params, patch, dependent

    # -- kernels for one moduli value (points flattened inside) ---------------------------
    def _local_metric_block(self, h, params, zs, patch, dependent):
        shape = zs.shape[:-1]
        zs = zs.reshape(-1, zs.shape[-1])
        patch = patch.reshape(-1)
        poly = self.variety.poly
        coeffs = poly.coefficients(params, zs.dtype)
        zh = proj.affine_to_hom(zs, patch)
        grad = proj._drop_index(poly.gradient(zh, coeffs), patch)
        if dependent is None:
            dependent = jnp.argmax(jnp.abs(grad), axis=-1).astype(jnp.int32)
        else:
            dependent = dependent.reshape(-1)
        J = _jacobian_from_grad(grad, dependent)  # (B, d, n)
        s, ds = self.sections.values_and_jacobian(zs, patch)  # (B, N), (B, n, N)
        X = jnp.concatenate([s[:, None, :], J @ ds], axis=1)  # (B, d+1, N)
        g = _metric_from_sections(X, h, self.degree)
        g_dep = jnp.take_along_axis(grad, dependent[:, None], axis=-1)[:, 0]
        return (
            g.reshape(shape + g.shape[-2:]),
            dependent.reshape(shape),
            (jnp.abs(g_dep) ** 2).reshape(shape),
        )

    def _eta_block(self, h, params, zs, patch, dependent):
        g, _, gdep2 = self._local_metric_block(h, params, zs, patch, dependent)
        return jnp.real(det_small(g)) * gdep2

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
        g, dep, _ = _map_moduli(self._local_metric_block, h, params, zs, patch, dependent)
        return LocalMetric(g, patch, dep)

    def eta(self, h, zs, params, patch, dependent=None):
        """``eta = det g_X * |dQ/dz_dependent|^2`` (real, (*M, *S)): Kaehler over Omega volume form."""
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        return _map_moduli(self._eta_block, h, params, zs, patch, dependent)

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
                g, _, _ = self._local_metric_block(h, params, embed(x)[None], p[None], dep[None])
                return g[0]

            return ricci_tensor(metric_fn, z0[kept])

        ric = jax.vmap(one)(zs, patch, dependent)
        return ric.reshape(shape + ric.shape[-2:])

    def ricci(self, h, zs, params, patch, dependent=None):
        """Ricci tensor ``R_{i jbar} = -d_i d_jbar log det g_X`` in local coordinates (*M,*S,d,d).

        Autodiff (forward over reverse) through the closed-form metric, with the
        dependent coordinate followed along X by Newton's method.
        """
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        return _map_moduli(self._ricci_block, h, params, zs, patch, dependent)

    def ricci_scalar(self, h, zs, params, patch, dependent=None):
        """Ricci scalar ``R = g^{jbar i} R_{i jbar}`` (real, (*M, *S))."""
        h, zs, params, patch, dependent = self._prepare(h, zs, params, patch, dependent)
        g, dep, _ = _map_moduli(self._local_metric_block, h, params, zs, patch, dependent)
        ric = _map_moduli(self._ricci_block, h, params, zs, patch, dep)
        return jnp.real(jnp.trace(jnp.linalg.solve(g, ric), axis1=-2, axis2=-1))

    # -- accuracy -------------------------------------------------------------------------
    def sigma_accuracy(self, key, params, h, count=100_000) -> MCEstimate:
        """sigma accuracy of H on ``count`` fresh intersection samples per moduli value.

        ``params`` (*M, m) and ``h`` (*M, N, N) (either may be unbatched).  Returns
        :class:`~cyflat.variety.MCEstimate` batched over M; points where the metric is
        not positive definite are excluded and counted in ``n_failed``.
        """
        h = self.check_h(h)
        params = self.variety.check_params(params, h.dtype)
        M = params.shape[:-1] if params.ndim - 1 >= h.ndim - 2 else h.shape[:-2]
        if params.shape[:-1] != M:
            params = jnp.broadcast_to(params, M + params.shape[-1:])
        sample = self.variety.sample(key, params, count, dtype=h.dtype)
        eta = self.eta(h, sample.zs, params, sample.patch, sample.dependent)
        return sigma_from_eta(eta, sample.weights, sample.n_failed)


def _metric_from_sections(X, h, k):
    """X (..., 1+d, N) = (s, D_a s); h (N, N) -> g (..., d, d) (see module docstring)."""
    Y = (X.reshape(-1, X.shape[-1]) @ h).reshape(X.shape)
    G = jnp.einsum("...an,...cn->...ac", Y, jnp.conj(X))
    phi = jnp.real(G[..., 0, 0])[..., None, None]
    v = G[..., 1:, 0]
    g = G[..., 1:, 1:] / phi - v[..., :, None] * jnp.conj(v)[..., None, :] / phi**2
    return g / (jnp.pi * k)


jax.tree_util.register_pytree_node(AlgebraicMetric, lambda x: ((), x), lambda aux, _: aux)
