"""Random sampling helpers with explicit PRNG keys.

Every function takes a ``jax.random`` key first and a static ``shape``/``count``;
complex outputs have ``dtype`` complex64 or complex128 (default: complex128 when
``jax_enable_x64`` is on, else complex64, i.e. JAX's default complex type).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "complex_box",
    "complex_normal",
    "projective_points",
    "uniform_complex_sphere",
    "uniform_real_sphere",
    "uniform_unit_disk",
]


def _complex_dtype(dtype):
    if dtype is None:
        return jnp.result_type(complex)
    return jnp.dtype(dtype)


def _real_of(cdtype):
    return jnp.finfo(cdtype).dtype


def _size(shape):
    size = 1
    for s in shape:
        size *= int(s)
    return size


def _real_normal_pairs(key, shape, rdtype):
    """Real standard normals of shape ``shape + (2,)``, drawn as one flat array.

    XLA compiles the PRNG for a 1-D shape about twice as fast as for a
    multi-dimensional one.
    """
    shape = tuple(int(s) for s in shape)
    return jax.random.normal(key, (2 * _size(shape),), rdtype).reshape(shape + (2,))


def complex_normal(key, shape, dtype=None):
    """Standard complex normal: real and imaginary parts i.i.d. N(0, 1/2)."""
    cdtype = _complex_dtype(dtype)
    rdtype = _real_of(cdtype)
    x = _real_normal_pairs(key, shape, rdtype) * jnp.asarray(0.5**0.5, rdtype)
    return jax.lax.complex(x[..., 0], x[..., 1])


def uniform_real_sphere(key, count, dim, dtype=None):
    """``count`` points uniform on the unit sphere S^(dim-1) in R^dim -> real (count, dim)."""
    rdtype = jnp.result_type(float) if dtype is None else dtype
    x = jax.random.normal(key, (count * dim,), rdtype).reshape(count, dim)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def uniform_complex_sphere(key, count, dim, dtype=None):
    """``count`` points uniform on the unit sphere of C^dim -> complex (count, dim)."""
    cdtype = _complex_dtype(dtype)
    x = _real_normal_pairs(key, (count, dim), _real_of(cdtype))
    x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
    return jax.lax.complex(x[..., 0], x[..., 1])


def projective_points(key, count, n, dtype=None):
    """``count`` points of P^n distributed by the Fubini-Study volume, as unit vectors (count, n+1)."""
    return uniform_complex_sphere(key, count, n + 1, dtype)


def uniform_unit_disk(key, shape, radius=1.0, dtype=None):
    """Points uniform (in area) in the complex disk ``|z| <= radius``."""
    cdtype = _complex_dtype(dtype)
    rdtype = _real_of(cdtype)
    k1, k2 = jax.random.split(key)
    r = radius * jnp.sqrt(jax.random.uniform(k1, shape, rdtype))
    theta = jax.random.uniform(k2, shape, rdtype, 0.0, 2 * jnp.pi)
    return (r * jnp.exp(1j * theta)).astype(cdtype)


def complex_box(key, shape, re_range=(-1.0, 1.0), im_range=(-1.0, 1.0), dtype=None):
    """Points uniform in the box ``re_range x im_range`` of the complex plane."""
    cdtype = _complex_dtype(dtype)
    rdtype = _real_of(cdtype)
    k1, k2 = jax.random.split(key)
    re = jax.random.uniform(k1, shape, rdtype, re_range[0], re_range[1])
    im = jax.random.uniform(k2, shape, rdtype, im_range[0], im_range[1])
    return (re + 1j * im).astype(cdtype)
