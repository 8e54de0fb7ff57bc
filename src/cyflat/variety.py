"""Calabi-Yau hypersurfaces X = {Q(z; psi) = 0} in P^n and sampling points on them.

Conventions (``shared/spec/conventions.md``):

* ``zs`` (..., n) are affine coordinates in patch ``patch`` (..., int32), the patch
  being a homogeneous index.  The default patch is ``argmax_i |z_i|``.
* ``dependent`` (..., int32) is an *affine* index: the coordinate that the defining
  equation determines.  The default is the affine index with the largest ``|dQ/dz_j|``.
  The remaining ``d = n - 1`` affine coordinates are the local coordinates on X.
* ``jacobian_embed`` is the (..., d, n) Jacobian ``dz_j / dx_a`` of X -> affine chart.
  An ambient hermitian metric ``G`` (..., n, n) pulls back to ``J G J^dagger``.
* The holomorphic top form is ``Omega = dx / (dQ/dz_dependent)``, so
  ``|Omega|^2 = 1 / |dQ/dz_dependent|^2``.
* Moduli ``params`` are complex arrays (..., m); leading axes broadcast against the
  points' batch axes with numpy rules.

Sampling intersects X with random lines p + t q (p, q uniform on the unit sphere of
C^{n+1}): the n+1 intersection points are distributed by the Fubini-Study volume of X.
The Monte Carlo weight ``w = |Omega|^2 / det g_FS|_X`` turns means over samples into
integrals against ``dvol_Omega``: ``int_X f dvol_Omega ~= vol_fs * mean(f w)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import projective as proj
from .polynomial import Polynomial
from .roots import polyroots, projective_roots
from .singular import check_moduli

__all__ = [
    "Dwork",
    "Fermat",
    "Hypersurface",
    "MCEstimate",
    "Sample",
    "TwoParameterQuintic",
    "VarietySingle",
    "det_small",
    "newton_distance",
]


class Sample(NamedTuple):
    """Points on X: the one structure where geometry and learning meet.

    Attributes:
        zs: complex (..., N, n) affine coordinates.
        patch: int32 (..., N) homogeneous index of the patch (``z_patch = 1``).
        dependent: int32 (..., N) affine index of the dependent coordinate.
        weights: real (..., N) Monte Carlo weights ``|Omega|^2 / det g_FS``; 0 marks a
            point that could not be computed (see ``n_failed``).
        n_failed: int32 (...) number of intersection points rejected (not finite,
            Newton residual above tolerance, root finder not converged); rejected
            points are replaced by points from spare lines, and only when the spares
            run out are they returned with weight 0.
    """

    zs: jax.Array
    patch: jax.Array
    dependent: jax.Array
    weights: jax.Array
    n_failed: jax.Array


class MCEstimate(NamedTuple):
    """A Monte Carlo estimate: value, standard error, effective sample size
    ``(sum w)^2 / sum w^2`` and the number of points left out as invalid."""

    value: jax.Array
    stderr: jax.Array
    ess: jax.Array
    n_failed: jax.Array

    def __float__(self):
        return float(self.value)


def det_small(m):
    """Determinant of square matrices (..., d, d); explicit for d <= 3 (fast on CPU)."""
    d = m.shape[-1]
    if d == 1:
        return m[..., 0, 0]
    if d == 2:
        return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    if d == 3:
        return (
            m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0])
        )
    return jnp.linalg.det(m)


def newton_distance(value, grad, z):
    """``|Q(z)| / (|grad Q(z)| |z|)``: distance of a homogeneous point to X to first order."""
    return jnp.abs(value) / (jnp.linalg.norm(grad, axis=-1) * jnp.linalg.norm(z, axis=-1))


def _residual_tol(dtype):
    eps = float(jnp.finfo(dtype).eps)
    return 10 * eps**0.75  # f64: 1.8e-11, f32: 6.4e-5


class Hypersurface:
    """A hypersurface ``X = {Q(z; params) = 0}`` in P^n, of complex dimension ``d = n - 1``.

    Args:
        polynomial: a :class:`Polynomial`, a sympy expression or a string in z0..zn.
        params: names of the moduli (ignored when a :class:`Polynomial` is given).
        n: ambient dimension, when a coordinate does not appear in the polynomial.
        allow_non_cy: accept a degree other than ``n+1`` (then X is not Calabi-Yau and
            Omega-based quantities lose their meaning; the sampler still works).

    The object is immutable, hashable and a pytree without leaves: pass it to jitted
    functions freely.  Moduli are ordinary array arguments of every method.
    """

    def __init__(self, polynomial, params=(), n=None, *, allow_non_cy=False, name=None):
        if isinstance(polynomial, Polynomial):
            poly = polynomial
        else:
            poly = Polynomial(polynomial, params, n)
        if poly.n < 2:
            raise ValueError(f"need ambient dimension n >= 2 for a hypersurface of dimension >= 1, got P^{poly.n}")
        if poly.degree != poly.n + 1 and not allow_non_cy:
            raise ValueError(
                f"degree {poly.degree} != n+1 = {poly.n + 1}: the hypersurface in P^{poly.n} is not "
                "Calabi-Yau (pass allow_non_cy=True to use it anyway)"
            )
        self.poly = poly
        self.name = name or repr(poly)

    @classmethod
    def from_sympy(cls, poly, params=(), **kwargs):
        """Build from a sympy expression (or string) with moduli names ``params``."""
        return cls(poly, params=params, **kwargs)

    # -- identity and basic properties --------------------------------------------------
    def __hash__(self):
        return hash((type(self).__name__, self.poly))

    def __eq__(self, other):
        return type(self) is type(other) and self.poly == other.poly

    def __repr__(self):
        return f"{type(self).__name__}({self.poly.expr}, params={list(self.param_names)})"

    @property
    def dim_projective(self) -> int:
        """n: the ambient space is P^n."""
        return self.poly.n

    @property
    def dim(self) -> int:
        """d = n - 1: complex dimension of X."""
        return self.poly.n - 1

    @property
    def degree(self) -> int:
        return self.poly.degree

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.poly.param_names

    @property
    def num_params(self) -> int:
        return self.poly.num_params

    @property
    def vol_fs(self) -> float:
        """Kaehler volume of X in the class H: ``degree / d!`` (the quintic: 5/6)."""
        return self.degree / math.factorial(self.dim)

    def check_params(self, params, dtype=None):
        """Validate moduli -> complex array (..., m)."""
        return self.poly.check_params(params, dtype)

    def coefficients(self, params, dtype=None):
        return self.poly.coefficients(params, dtype)

    def known_singular_params(self):
        """Moduli (k, m) where the family is known to be singular, or None if unknown."""
        return None

    # -- the defining polynomial ----------------------------------------------------------
    def _hom(self, z, patch):
        z = jnp.asarray(z)
        if patch is None:
            if z.shape[-1] != self.dim_projective + 1:
                raise ValueError(f"homogeneous points must have {self.dim_projective + 1} coordinates, got shape {z.shape}")
            return z
        if z.shape[-1] != self.dim_projective:
            raise ValueError(f"affine points must have {self.dim_projective} coordinates, got shape {z.shape}")
        return proj.affine_to_hom(z, patch)

    def defining(self, z, params, patch=None):
        """Q at homogeneous points (..., n+1), or at affine points (..., n) in ``patch``."""
        zh = self._hom(z, patch)
        return self.poly.evaluate(zh, self.coefficients(params, zh.dtype))

    def grad_defining(self, z, params, patch=None):
        """dQ/dz: (..., n+1) for homogeneous points; (..., n) affine derivatives with ``patch``."""
        zh = self._hom(z, patch)
        grad = self.poly.gradient(zh, self.coefficients(params, zh.dtype))
        return grad if patch is None else proj._drop_index(grad, jnp.broadcast_to(patch, grad.shape[:-1]))

    def best_dependent(self, zs, params, patch):
        """Affine index with the largest ``|dQ/dz_j|`` (int32, (...))."""
        return jnp.argmax(jnp.abs(self.grad_defining(zs, params, patch)), axis=-1).astype(jnp.int32)

    def jacobian_embed(self, zs, params, patch, dependent=None):
        """Jacobian of X -> affine chart, complex (..., d, n).

        Row ``a`` is the tangent vector for local coordinate ``a`` (the a-th affine
        coordinate other than ``dependent``): 1 at that coordinate and
        ``-(dQ/dz_kept)/(dQ/dz_dependent)`` at the dependent one.
        """
        grad = self.grad_defining(zs, params, patch)
        if dependent is None:
            dependent = jnp.argmax(jnp.abs(grad), axis=-1).astype(jnp.int32)
        return _jacobian_from_grad(grad, dependent)

    def induced_metric(self, G, zs, params, patch, dependent=None):
        """Pull back an ambient metric G (..., n, n) to X: ``J G J^dagger`` (..., d, d)."""
        J = self.jacobian_embed(zs, params, patch, dependent)
        return J @ G @ jnp.conj(jnp.swapaxes(J, -1, -2))

    def induced_fs(self, zs, params, patch, dependent=None):
        """Fubini-Study metric restricted to X in local coordinates (..., d, d)."""
        return self.induced_metric(proj.fs_metric(zs), zs, params, patch, dependent)

    def solve_defining(self, zs, params, patch, dependent):
        """All values of the dependent affine coordinate that put the point on X.

        ``zs`` (..., n): the entry at ``dependent`` is ignored.  Returns complex
        (..., degree) roots; a missing top power of ``z_dependent`` gives ``inf`` roots.
        """
        zs = jnp.asarray(zs)
        D = self.degree
        k = np.arange(D + 1)
        w = jnp.asarray(np.exp(2j * np.pi * k / (D + 1)), zs.dtype)
        onehot = jax.nn.one_hot(dependent, self.dim_projective, dtype=zs.dtype)[..., None, :]
        trial = zs[..., None, :] * (1 - onehot) + w[:, None] * onehot  # (..., D+1, n)
        params = self.check_params(params, zs.dtype)
        vals = self.defining(trial, params[..., None, :], jnp.asarray(patch)[..., None])
        inv_dft = jnp.asarray(np.exp(-2j * np.pi * np.outer(k, k) / (D + 1)) / (D + 1), zs.dtype)
        roots, _ = polyroots(vals @ inv_dft.T)
        return roots

    def sample_intersect_weights(self, zs, params, patch, dependent=None):
        """Monte Carlo weights ``|Omega|^2 / det g_FS|_X`` of points on X (real, (...))."""
        grad = self.grad_defining(zs, params, patch)
        if dependent is None:
            dependent = jnp.argmax(jnp.abs(grad), axis=-1).astype(jnp.int32)
        return _weights(grad, dependent, zs)

    # -- sampling -------------------------------------------------------------------------
    def sample(self, key, params, count, dtype=None) -> Sample:
        """Sample ``count`` points on X per moduli value by line intersection.

        Args:
            key: PRNG key.
            params: moduli (m,), or (..., m) for a batch of moduli.  The lines of all
                moduli values are drawn from ``key`` together and intersected in one
                pass (fast for many moduli with few points each); each moduli value
                gets its own lines, so points depend on the whole batch, not only on
                ``key`` and that value.
            count: number of points per moduli value (positive int, static).
            dtype: complex64 or complex128 (default: JAX's default complex type).
        Returns:
            :class:`Sample` with leading axes ``params.shape[:-1]``.
        """
        count = _check_count(count)
        cdtype = sample_dtype(dtype)
        key = _check_key(key)
        params = self.check_params(params, cdtype).astype(cdtype)
        if 0 in params.shape[:-1]:
            raise ValueError(f"params has an empty batch of moduli (shape {params.shape})")
        return _sample_jit(self, key, params, count, cdtype)

    def sample_intersect(self, key, params, count, affine=False, weights=False, dtype=None):
        """Sample points on X (the interface of earlier libraries).

        Returns homogeneous points (..., count, n+1) (unit norm, patch coordinate
        real positive); with ``affine=True`` the pair ``(zs, patch)``; with
        ``weights=True`` additionally the weights: ``((zs, patch), w)`` or ``(z, w)``.
        Rejected points are counted in :meth:`sample`'s ``n_failed`` (use that to see them).
        """
        s = self.sample(key, params, count, dtype)
        out = (s.zs, s.patch) if affine else proj.normalize(proj.affine_to_hom(s.zs, s.patch))
        return (out, s.weights) if weights else out

    def compute_vol(self, key, params, count=100_000, dtype=None, on_singular="warn") -> MCEstimate:
        """Omega-volume ``int_X |Omega|^2`` with its Monte Carlo standard error.

        Returns :class:`MCEstimate` (value, stderr, ess, n_failed), batched like ``params``.
        At singular or nearly singular moduli (:func:`cyflat.singular.check_moduli`) it
        warns, raises ``ValueError`` (``on_singular='raise'``) or not (``'ignore'``).
        """
        check_moduli(self, params, on_singular=on_singular, what="volume estimate")
        s = self.sample(key, params, count, dtype)
        return weighted_mean_estimate(jnp.ones_like(s.weights), s.weights, s.n_failed, scale=self.vol_fs)


VarietySingle = Hypersurface

jax.tree_util.register_pytree_node(Hypersurface, lambda x: ((), x), lambda aux, _: aux)


def weighted_mean_estimate(f, w, n_failed, scale=1.0) -> MCEstimate:
    """``scale * mean(f w)`` over the last axis with standard error and effective sample size.

    Only points with a positive weight count (weight 0 marks a slot the sampler could
    not fill); with none the value and error are NaN, never a plausible 0.
    """
    ok = w > 0
    n = jnp.sum(ok, axis=-1)
    fw = jnp.where(ok, f * w, 0)
    mean = jnp.sum(fw, axis=-1) / n
    var = jnp.sum(jnp.where(ok, (fw - mean[..., None]) ** 2, 0), axis=-1) / (n - 1)
    stderr = jnp.sqrt(var / n)
    nan = jnp.asarray(jnp.nan, mean.dtype)
    mean, stderr = jnp.where(n > 0, mean, nan), jnp.where(n > 1, stderr, nan)
    wz = jnp.where(ok, w, 0)
    ess = jnp.sum(wz, axis=-1) ** 2 / jnp.sum(wz**2, axis=-1)
    return MCEstimate(scale * mean, scale * stderr, ess, n_failed)


def sample_dtype(dtype):
    """The complex dtype for sampled points: ``dtype`` or JAX's default complex type.

    Raises ValueError for a non-complex dtype, and for complex128 while JAX runs in 32-bit
    mode (JAX would silently compute in complex64, and every point would fail the
    float64 residual tolerance).
    """
    cdtype = jnp.dtype(jnp.result_type(complex) if dtype is None else dtype)
    if not jnp.issubdtype(cdtype, jnp.complexfloating):
        raise ValueError(f"dtype must be complex64 or complex128, got {cdtype}")
    if jnp.dtype(jax.dtypes.canonicalize_dtype(cdtype)) != cdtype:
        raise ValueError(
            f"dtype {cdtype} needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) "
            "or work inside `with jax.enable_x64(True):`"
        )
    return cdtype


def _check_key(key):
    if isinstance(key, (int, np.integer)):
        raise ValueError(f"key must be a JAX PRNG key, e.g. jax.random.PRNGKey({key}), got the integer {key}")
    return key


def _check_count(count):
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if count <= 0:
        raise ValueError(f"count must be a positive integer, got {count}")
    return int(count)


def _jacobian_from_grad(grad, dependent):
    """(..., n) affine gradient and (...) dependent index -> J (..., d, n)."""
    n = grad.shape[-1]
    dependent = jnp.asarray(dependent)[..., None]
    a = jnp.arange(n - 1)
    kept = a + (a >= dependent)  # (..., d) affine index of local coordinate a
    g_dep = jnp.take_along_axis(grad, dependent, axis=-1)  # (..., 1)
    g_kept = jnp.take_along_axis(grad, kept, axis=-1)  # (..., d)
    cols = jnp.arange(n)
    eye_part = (cols == kept[..., None]).astype(grad.dtype)  # (..., d, n)
    dep_col = (cols == dependent[..., None]).astype(grad.dtype)  # (..., 1, n)
    return eye_part - (g_kept / g_dep)[..., None] * dep_col


def _abs2(x):
    return jnp.real(x) ** 2 + jnp.imag(x) ** 2


def _weights(grad, dependent, zs):
    """Monte Carlo weights ``|Omega|^2 / det g_FS|_X`` from the affine gradient (..., n).

    Closed form: with ``G = g_FS`` (n x n) and any tangent frame, ``det(J G J^dagger) =
    det(G) (grad^dagger G^-1 grad) / |dQ/dz_dependent|^2``, and for Fubini-Study
    ``det G = pi^-n r^-(n+1)``, ``G^-1 = pi r (1 + conj(z) z^T)``, ``r = 1 + |z|^2``:

        w = pi^(n-1) r^n / (|grad|^2 + |z . grad|^2),

    independent of the dependent coordinate (``dependent`` is accepted for
    compatibility).  Equals ``1 / (|dQ/dz_dep|^2 det(J g_FS J^dagger))`` exactly.
    """
    del dependent
    n = zs.shape[-1]
    r = 1 + jnp.sum(_abs2(zs), axis=-1)
    den = jnp.sum(_abs2(grad), axis=-1) + _abs2(jnp.sum(zs * grad, axis=-1))
    return jnp.pi ** (n - 1) * r**n / den


def _compact_indices(ok, count):
    """Indices of the first ``count`` True entries of ``ok`` (M,), in order.

    Returns ``(idx, filled)``: ``filled`` is False for slots left over when ``ok`` has
    fewer than ``count`` True entries (their ``idx`` is the first True entry, or 0).
    One single-operand sort of int32 keys (rejected points are pushed behind all
    accepted ones); the keys are almost sorted already, so this is cheap, and it
    compiles much faster on CPU than a scatter-based compaction or a stable argsort.
    """
    M = ok.shape[0]
    i = jnp.arange(M, dtype=jnp.int32)
    keys = jnp.sort(jnp.where(ok, i, i + M))[:count]
    filled = keys < M
    first_ok = jnp.argmax(ok).astype(jnp.int32)
    return jnp.where(filled, keys, first_ok), filled


# Newton steps along the sampling line after the root finder (each costs one gradient
# evaluation).  The roots of the line polynomial are accurate to round-off in its
# coefficients; one step with the exact polynomial removes that error.
_POLISH_STEPS = 1


# Lines per chunk of the sampler's main loop (see _sample_lines).
_CHUNK_LINES = 4096


def _chunk_lines() -> int:
    """Lines per chunk: 4096 keeps a chunk in the CPU caches; accelerators want larger
    chunks (fewer sequential loop iterations, e.g. for a training buffer of many moduli)."""
    return _CHUNK_LINES if jax.default_backend() == "cpu" else 16 * _CHUNK_LINES


def _sample_chunk(poly: Polynomial, pq, coeffs, dtype):
    """Intersect Lc lines p + t q with X: pq (2, n+1, Lc) -> per-point arrays (Lc, D).

    ``coeffs`` (Lc, T): the coefficients of the family member each line is intersected with.

    Returns ``(zs, patch, dependent, w, ok)`` with ``zs`` (n, Lc, D).

    Layout: coordinate-major arrays (n+1, Lc, D), so that every step is an elementwise
    kernel over contiguous rows (no strided access, gathers or small trailing-axis
    reductions), and the polynomial is evaluated by straight-line code on the rows.
    XLA's CPU backend re-evaluates cheap elementwise producers inside every consumer
    (``optimization_barrier`` does not stop it there), so the expensive intermediates
    are produced by operations it does not duplicate: loops (the values of Q on each
    line, the Newton iteration), reductions and divisions.
    """
    n, D = poly.n, poly.degree
    n1 = n + 1
    p, q = pq[0], pq[1]  # (n+1, Lc)
    # Coefficients of Q(p + t q): values at the (D+1)-th roots of unity (one loop over
    # them), then an inverse DFT (exact up to round-off for |p| = |q| = 1).
    wk = np.exp(2j * np.pi * np.arange(D + 1) / (D + 1))
    vals = jax.lax.map(lambda w: poly._value_coords(list(p + w * q), coeffs), jnp.asarray(wk, dtype))  # (D+1, Lc)
    inv_dft = np.exp(-2j * np.pi * np.outer(np.arange(D + 1), np.arange(D + 1)) / (D + 1)) / (D + 1)
    a = jnp.einsum("kl,jk->lj", vals, jnp.asarray(inv_dft, dtype))  # (Lc, D+1)
    s, t, converged = projective_roots(a)  # (Lc, D), max(|s|, |t|) = 1
    z = s * p[:, :, None] + t * q[:, :, None]  # (n+1, Lc, D)
    # Newton direction along the line: q where the point is mostly p, else p.
    direction = jnp.where(_abs2(s) >= _abs2(t), q[:, :, None], p[:, :, None])

    # Affine patch argmax |z_i|; scale to z_patch = 1 exactly.
    patch = jnp.argmax(_abs2(z), axis=0).astype(jnp.int32)  # (Lc, D)
    at_patch = jnp.arange(n1, dtype=jnp.int32)[:, None, None] == patch
    zero = jnp.zeros((), dtype)
    zp = jnp.sum(jnp.where(at_patch, z, zero), axis=0)
    inv_zp = jnp.conj(zp) / _abs2(zp)
    zh = jnp.where(at_patch, jnp.ones((), dtype), z * inv_zp)
    # The same line through zh, moving only the affine coordinates.
    d_p = jnp.sum(jnp.where(at_patch, direction, zero), axis=0)
    dh = jnp.where(at_patch, zero, (direction - d_p * zh) * inv_zp)

    # _POLISH_STEPS Newton steps along the line, then (Q, grad Q) at the final point, as
    # one loop: the evaluation is compiled once and its results are materialised.
    point_coeffs = coeffs[:, None, :]  # (Lc, 1, T): broadcasts over the D roots

    def newton(i, carry):
        zh, _, _ = carry
        val, grad = poly._value_and_gradient_coords(list(zh), point_coeffs)
        grad = jnp.stack(grad)
        slope = jnp.sum(grad * dh, axis=0)
        good = (slope != 0) & (i < _POLISH_STEPS)
        step = jnp.where(good, val / jnp.where(good, slope, 1), 0)
        return jnp.where(good, zh - step * dh, zh), val, grad

    zh, val, grad = jax.lax.fori_loop(0, _POLISH_STEPS + 1, newton, (zh, zh[0], zh))

    # Dependent coordinate: largest |dQ/dz_j| among the affine coordinates.
    g2 = _abs2(grad)
    dep_h = jnp.argmax(jnp.where(at_patch, -1, g2), axis=0).astype(jnp.int32)
    dependent = dep_h - (dep_h > patch).astype(jnp.int32)
    # Weights in closed form (see _weights) from homogeneous quantities (z_patch = 1):
    # |grad_aff|^2 = |grad|^2 - |grad_p|^2, zs . grad_aff = z . grad - grad_p.
    r = jnp.sum(_abs2(zh), axis=0)
    g_p = jnp.sum(jnp.where(at_patch, grad, zero), axis=0)
    zg = jnp.sum(zh * grad, axis=0)
    g2sum = jnp.sum(g2, axis=0)
    w = jnp.pi ** (n - 1) * r**n / (g2sum - _abs2(g_p) + _abs2(zg - g_p))
    resid2 = _abs2(val) / (g2sum * r)  # squared Newton distance |Q| / (|grad Q| |z|)
    zs = jnp.where(jnp.arange(n)[:, None, None] < patch, zh[:-1], zh[1:])  # drop the patch coordinate
    finite = jnp.isfinite(w) & jnp.all(jnp.isfinite(zs), axis=0)
    ok = converged[:, None] & (resid2 <= _residual_tol(dtype) ** 2) & finite & (w > 0)
    return zs, patch, dependent, w, ok


def _sample_lines(variety: Hypersurface, key, params, count: int, dtype):
    """Kernel for a flat batch of moduli: params (M, m) -> Sample with leading axis M.

    All lines of all moduli values are intersected together, so that a batch of many
    moduli with few points each runs at the speed of one large sample: every line
    carries the coefficients of its own member of the family, and the lines are
    processed in C >= 2 chunks of about :func:`_chunk_lines` lines by a ``lax.map``.
    Besides bounding memory and the root finder's iterations (each chunk iterates until
    its own roots converge), the loop makes XLA materialise the per-point results and
    the random lines.  (Within one fused computation XLA's CPU backend re-evaluates cheap
    elementwise producers inside every consumer, and ``optimization_barrier`` does not
    stop it there; with C = 1 the loop would be inlined.)

    Moduli value i owns the ``L`` consecutive lines ``i L .. (i + 1) L - 1`` (``count / D``
    lines plus 2% spare, at least 2).  Every intersection point passing the checks (root
    finder converged, squared Newton distance below tolerance, finite positive weight)
    is kept in line order; the first ``count`` of each moduli value are returned, the
    spare lines replacing rejected points.
    """
    poly = variety.poly
    n, D = poly.n, poly.degree
    n1 = n + 1
    Mb = params.shape[0]
    rdtype = jnp.finfo(dtype).dtype
    lines = -(-count // D)
    spare = max(2, math.ceil(0.02 * lines))
    L = lines + spare  # lines per moduli value
    C = max(2, round(Mb * L / _chunk_lines()))
    Lc = -(-(Mb * L) // C)
    coeffs = jax.vmap(lambda p: poly.coefficients(p, dtype))(params)  # (M, T)
    owner = jnp.minimum(jnp.arange(C * Lc, dtype=jnp.int32) // L, Mb - 1)  # moduli index per line
    line_coeffs = coeffs[owner].reshape(C, Lc, -1)  # (C, Lc, T); padding lines: any member
    # p, q uniform on the unit sphere of C^{n+1}, from one flat PRNG call (compiles
    # fast), laid out (chunk, p/q, coordinate, line)
    x = jax.random.normal(key, (C * 2 * n1 * 2 * Lc,), rdtype).reshape(C, 2, n1, 2, Lc)
    x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=(2, 3), keepdims=True))
    pq = jax.lax.complex(x[:, :, :, 0], x[:, :, :, 1])  # (C, 2, n+1, Lc)
    out = jax.lax.map(lambda a: _sample_chunk(poly, a[0], a[1], dtype), (pq, line_coeffs))
    zs, patch, dependent, w, ok = out  # zs (C, n, Lc, D), others (C, Lc, D)
    per = L * D  # candidate points per moduli value

    def per_moduli(a):  # (C, Lc, D) -> (M, L D), dropping the padding lines
        return a.reshape(C * Lc * D)[: Mb * per].reshape(Mb, per)

    ok = per_moduli(ok)
    idx, filled = jax.vmap(lambda o: _compact_indices(o, count))(ok)  # (M, count)

    def take(a):
        return jnp.take_along_axis(per_moduli(a), idx, axis=1)

    return Sample(
        zs=jnp.stack([take(zs[:, j]) for j in range(n)], axis=-1),
        patch=take(patch),
        dependent=take(dependent),
        weights=jnp.where(filled, take(w), jnp.zeros((), rdtype)),
        n_failed=jnp.sum(~ok, axis=1).astype(jnp.int32),
    )


def _sample_impl(variety, key, params, count, dtype):
    batch = params.shape[:-1]
    flat = params.reshape((math.prod(batch), params.shape[-1]))
    out = _sample_lines(variety, key, flat, count, dtype)
    return jax.tree_util.tree_map(lambda x: x.reshape(batch + x.shape[1:]), out)


_sample_jit = jax.jit(_sample_impl, static_argnums=(0, 3, 4))


# -- presets --------------------------------------------------------------------------------


def _fermat_expr(n):
    return " + ".join(f"z{i}**{n + 1}" for i in range(n + 1))


class Fermat(Hypersurface):
    """Fermat hypersurface ``sum_i z_i^(n+1) = 0`` of complex dimension ``dim`` (n = dim + 1).

    ``Fermat(3)`` is the Fermat quintic in P^4; ``Fermat(1)`` the cubic curve in P^2.
    """

    def __init__(self, dim: int = 3):
        _check_dim(dim)
        super().__init__(_fermat_expr(dim + 1), name=f"Fermat({dim})")


class Dwork(Hypersurface):
    """Dwork family ``sum_i z_i^(n+1) - (n+1) psi prod_i z_i``, n = dim + 1, modulus ``psi``.

    Singular exactly where ``psi^(n+1) = 1``.  ``Dwork(3)`` is the Dwork quintic.
    """

    def __init__(self, dim: int = 3):
        _check_dim(dim)
        n = dim + 1
        prod = "*".join(f"z{i}" for i in range(n + 1))
        super().__init__(f"{_fermat_expr(n)} - {n + 1}*psi*{prod}", params=("psi",), name=f"Dwork({dim})")

    def known_singular_params(self):
        n1 = self.dim_projective + 1
        return np.exp(2j * np.pi * np.arange(n1) / n1)[:, None]


class TwoParameterQuintic(Hypersurface):
    """``sum z_i^5 + a1 prod z_i + a2 sum_i z_i sum_{j != i} z_j^4`` in P^4 (moduli a1, a2)."""

    def __init__(self):
        fermat = _fermat_expr(4)
        prod = "*".join(f"z{i}" for i in range(5))
        cross = " + ".join(f"z{i}*z{j}**4" for i in range(5) for j in range(5) if i != j)
        super().__init__(f"{fermat} + a1*{prod} + a2*({cross})", params=("a1", "a2"), name="TwoParameterQuintic")


def _check_dim(dim):
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim (complex dimension of the variety) must be an integer >= 1, got {dim!r}")


for _cls in (Fermat, Dwork, TwoParameterQuintic):
    jax.tree_util.register_pytree_node(_cls, lambda x: ((), x), lambda aux, _: aux)
del _cls
