"""Projective space P^n: charts, index conversions and the Fubini-Study metric.

Conventions (see ``shared/spec/conventions.md``):

* A point of P^n is a complex vector ``z`` of shape ``(..., n+1)`` (homogeneous
  coordinates, defined up to scale).
* The affine patch ``p`` divides by ``z_p`` and drops it, leaving ``n`` affine
  coordinates of shape ``(..., n)``.  The default patch is ``argmax_i |z_i|`` so every
  affine coordinate has modulus ``<= 1``.
* Affine index ``j`` in patch ``p`` names homogeneous index ``j + (j >= p)``.
* Kaehler potentials carry a factor ``1/pi`` so that a projective line has area 1:
  ``K_FS = log(1 + |zeta|^2) / pi`` in affine coordinates, and the metric is
  ``g_{i jbar} = d_i d_jbar K`` with matrices indexed ``[i, jbar]``.

All functions are pure, jit-able and broadcast over leading axes; ``patch`` arrays
are integer arrays with the batch shape of the points.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "affine_to_hom",
    "best_patch",
    "change_chart",
    "check_index",
    "complex_hessian",
    "fs_metric",
    "fs_potential",
    "hom_to_affine",
    "index_affine_to_hom",
    "index_hom_to_affine",
    "normalize",
]


def index_hom_to_affine(index, patch):
    """Affine index of homogeneous index ``index`` (``!= patch``) in patch ``patch``."""
    index = jnp.asarray(index)
    return index - (index > patch).astype(index.dtype)


def index_affine_to_hom(index, patch):
    """Homogeneous index named by affine index ``index`` in patch ``patch``."""
    index = jnp.asarray(index)
    return index + (index >= patch).astype(index.dtype)


def best_patch(z):
    """Default patch ``argmax_i |z_i|`` of homogeneous points ``z`` (..., n+1) -> int32 (...)."""
    return jnp.argmax(jnp.abs(z), axis=-1).astype(jnp.int32)


def check_index(name, idx, size, shape):
    """Integer index array broadcast to ``shape`` (int32); concrete values must lie in
    ``[0, size)`` (an index outside would be clamped or wrap silently inside JAX)."""
    idx = jnp.asarray(idx)
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {idx.dtype}")
    try:
        idx = jnp.broadcast_to(idx, shape)
    except ValueError:
        raise ValueError(f"{name} of shape {idx.shape} does not match the points' shape {shape}") from None
    if not isinstance(idx, jax.core.Tracer) and idx.size:
        v = np.asarray(idx)  # on the host: jnp operations would be staged inside a caller's jit
        if v.min() < 0 or v.max() >= size:
            raise ValueError(f"{name} must lie in [0, {size - 1}], got values in [{v.min()}, {v.max()}]")
    return idx.astype(jnp.int32)


def _drop_index(z, patch):
    """Remove entry ``patch`` along the last axis: (..., n+1) -> (..., n)."""
    n1 = z.shape[-1]
    cols = jnp.arange(n1 - 1)
    src = index_affine_to_hom(cols, jnp.asarray(patch)[..., None])
    return jnp.take_along_axis(z, src, axis=-1)


def hom_to_affine(z, patch=None):
    """Homogeneous (..., n+1) -> affine (..., n) coordinates in ``patch``.

    Returns ``(zs, patch)``; with ``patch=None`` the default patch ``argmax|z_i|``
    is chosen per point.
    """
    z = jnp.asarray(z)
    if patch is None:
        patch = best_patch(z)
    patch = jnp.broadcast_to(jnp.asarray(patch, jnp.int32), z.shape[:-1])
    zp = jnp.take_along_axis(z, patch[..., None], axis=-1)
    return _drop_index(z / zp, patch), patch


def affine_to_hom(zs, patch):
    """Affine coordinates (..., n) in ``patch`` -> homogeneous (..., n+1) with ``z_patch = 1``."""
    zs = jnp.asarray(zs)
    n = zs.shape[-1]
    patch = jnp.broadcast_to(jnp.asarray(patch, jnp.int32), zs.shape[:-1])
    idx = jnp.arange(n + 1)
    src = index_hom_to_affine(idx, patch[..., None])  # (..., n+1)
    src = jnp.clip(src, 0, n - 1) if n > 0 else src
    gathered = jnp.take_along_axis(zs, src, axis=-1)
    return jnp.where(idx == patch[..., None], jnp.ones((), zs.dtype), gathered)


def change_chart(zs, patch_from, patch_to=None):
    """Re-express affine coordinates from ``patch_from`` in ``patch_to`` (default: best patch).

    Returns ``(zs_new, patch_to)``.
    """
    return hom_to_affine(affine_to_hom(zs, patch_from), patch_to)


def normalize(z):
    """Scale homogeneous points to unit Euclidean norm (the phase is kept)."""
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True)


def fs_potential(zs):
    """Fubini-Study potential ``log(1 + |zs|^2) / pi`` of affine points (..., n) -> real (...)."""
    return jnp.log1p(jnp.sum(jnp.abs(zs) ** 2, axis=-1)) / jnp.pi


def fs_metric(zs):
    """Fubini-Study metric in affine coordinates, complex (..., n, n), indexed ``[i, jbar]``.

    ``g_{i jbar} = (delta_ij / r - conj(z_i) z_j / r^2) / pi`` with ``r = 1 + |z|^2``;
    this is ``d_i d_jbar`` of :func:`fs_potential`.
    """
    zs = jnp.asarray(zs)
    r = 1 + jnp.sum(jnp.abs(zs) ** 2, axis=-1)[..., None, None]
    eye = jnp.eye(zs.shape[-1], dtype=zs.dtype)
    outer = jnp.conj(zs)[..., :, None] * zs[..., None, :]
    return (eye / r - outer / r**2) / jnp.pi


def complex_hessian(f, x):
    """``d_i d_jbar f`` of a real function ``f`` of complex ``x`` (d,) by autodiff -> (d, d).

    Uses the real Hessian in ``(Re x, Im x)``:
    ``d_i d_jbar f = (f_{u_i u_j} + f_{v_i v_j} + i (f_{u_i v_j} - f_{v_i u_j})) / 4``.
    """
    d = x.shape[-1]

    def freal(uv):
        return f(uv[:d] + 1j * uv[d:])

    uv = jnp.concatenate([jnp.real(x), jnp.imag(x)])
    hess = jax.hessian(freal)(uv)
    huu, huv = hess[:d, :d], hess[:d, d:]
    hvu, hvv = hess[d:, :d], hess[d:, d:]
    return (huu + hvv + 1j * (huv - hvu)) / 4
