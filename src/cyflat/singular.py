"""Singular members of a family: detection and a guard for the numerical entry points.

A hypersurface ``Q = 0`` is singular where ``Q`` and all ``dQ/dz_i`` vanish together.
For families with a known discriminant (:class:`~cyflat.variety.Dwork`:
``psi^(n+1) = 1``) the distance of the moduli to it is exact.  In general we search for
a critical point with Newton's method on ``dQ/dz_j = 0`` (j != patch, affine chart) started
from points sampled on X, and report the smallest *relative gradient*

    ``r(z) = |grad Q(z)| / (sum_t |c_t| * |z|^(D-1))``  (homogeneous z; scale free),

which is 0 exactly at a singular point.  Moduli are called *nearly singular* when
``r < tol`` (default ``1e-6``; Newton converges quadratically to a node, so a genuine
singular point gives ``r`` near round-off, while smooth members keep ``r`` of order 1e-2
or larger for the presets).
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import projective as proj

__all__ = ["SingularityReport", "check_moduli", "min_relative_gradient", "singularity_report"]

DEFAULT_TOL = 1e-6


class SingularityReport(tuple):
    """``(singular, distance, min_relative_gradient)`` per moduli value (numpy arrays)."""

    __slots__ = ()

    def __new__(cls, singular, distance, rel_grad):
        return super().__new__(cls, (singular, distance, rel_grad))

    singular = property(lambda self: self[0])
    distance = property(lambda self: self[1])
    min_relative_gradient = property(lambda self: self[2])


def _relative_gradient(poly, z, coeffs):
    grad = poly.gradient(z, coeffs)
    scale = jnp.sum(jnp.abs(coeffs), axis=-1) * jnp.linalg.norm(z, axis=-1) ** (poly.degree - 1)
    return jnp.linalg.norm(grad, axis=-1) / scale


def min_relative_gradient(variety, params, key=None, starts=1024, newton_steps=40):
    """Smallest relative gradient found by Newton searches for a critical point of Q.

    params (m,) or (P, m) -> (P,) or scalar.  ``starts`` points sampled on X are refined
    by Newton's method on the affine gradient equations (Hessian of Q), in float64.
    """
    with jax.enable_x64(True):
        params = jnp.asarray(variety.check_params(params, jnp.complex128), jnp.complex128)
        key = jax.random.PRNGKey(0) if key is None else key
        batched = params.ndim > 1
        flat = params.reshape((math.prod(params.shape[:-1]), params.shape[-1]))
        out = _search(variety, key, flat, starts, newton_steps)
        out = np.asarray(out)
        return out if batched else out[0]


def _search(variety, key, params, starts, newton_steps):
    poly = variety.poly
    sample = variety.sample(key, params, starts, dtype=jnp.complex128)

    def one(psi, zs, patch):
        coeffs = poly.coefficients(psi, jnp.complex128)

        def grad_aff(z, p):
            zh = proj.affine_to_hom(z, p)
            return proj._drop_index(poly.gradient(zh, coeffs), p)

        def newton(z, p):
            def body(_, z):
                g = grad_aff(z, p)
                hess = jax.jacfwd(lambda y: grad_aff(y, p), holomorphic=True)(z)
                step = jnp.linalg.solve(hess, g)
                step = jnp.where(jnp.all(jnp.isfinite(step)), step, 0)
                # damp wild steps: stay within the unit polydisk scale of the chart
                norm = jnp.linalg.norm(step)
                step = step * jnp.minimum(1.0, 2.0 / jnp.maximum(norm, 1e-300))
                return z - step

            z = jax.lax.fori_loop(0, newton_steps, body, z)
            zh = proj.affine_to_hom(z, p)
            r = _relative_gradient(poly, zh, coeffs)
            return jnp.where(jnp.isfinite(r), r, jnp.inf)

        r = jax.vmap(newton)(zs, patch)
        r0 = _relative_gradient(poly, proj.affine_to_hom(zs, patch), coeffs)
        return jnp.minimum(jnp.min(r), jnp.min(r0))

    return jax.jit(jax.vmap(one))(params, sample.zs, sample.patch)


def singularity_report(variety, params, tol=DEFAULT_TOL, key=None) -> SingularityReport:
    """Whether moduli make the variety singular (or nearly so).

    Returns ``(singular bool, distance, min_relative_gradient)``; ``distance`` is the
    exact distance to the known singular members where the family knows them
    (:meth:`Hypersurface.known_singular_params`), else NaN.
    """
    params = np.asarray(variety.check_params(params, jnp.complex128))
    flat = params.reshape((int(np.prod(params.shape[:-1])), params.shape[-1]))
    known = variety.known_singular_params()
    if known is not None:
        dist = np.min(np.linalg.norm(flat[:, None, :] - np.asarray(known)[None], axis=-1), axis=-1)
        rel = np.full(flat.shape[0], np.nan)
        singular = dist < tol
    else:
        dist = np.full(flat.shape[0], np.nan)
        rel = np.atleast_1d(min_relative_gradient(variety, flat, key))
        singular = rel < tol
    shape = params.shape[:-1]
    return SingularityReport(singular.reshape(shape), dist.reshape(shape), rel.reshape(shape))


def check_moduli(variety, params, tol=DEFAULT_TOL, on_singular="warn", what="computation"):
    """Warn (``on_singular='warn'``), raise ``ValueError`` (``'raise'``) or do nothing
    (``'ignore'``) when ``params`` make the variety singular or nearly so.

    Exact for families with a known discriminant; otherwise a Newton search
    (:func:`min_relative_gradient`, a compile and about a second).  Traced ``params``
    are not checked, and neither are varieties without moduli (a fixed variety is
    checked once, on request, with :func:`singularity_report`)."""
    if on_singular not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_singular must be 'warn', 'raise' or 'ignore', got {on_singular!r}")
    if on_singular == "ignore" or variety.num_params == 0 or isinstance(params, jax.core.Tracer):
        return  # (traced moduli, inside a caller's jit/vmap, cannot be inspected)
    try:
        rep = singularity_report(variety, params, tol)
    except jax.errors.TracerArrayConversionError:
        return  # moduli staged inside a caller's jit: not inspectable
    bad = np.atleast_1d(rep.singular)
    if np.any(bad):
        flat = np.asarray(params).reshape((-1, variety.num_params))[np.flatnonzero(bad)]
        msg = (
            f"{variety!r} is singular or nearly so (tolerance {tol:g}) at params={flat.tolist()}: "
            f"the {what} is unreliable there (weights span many orders of magnitude)"
        )
        if on_singular == "raise":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)
