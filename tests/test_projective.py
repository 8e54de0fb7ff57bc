"""Charts and the Fubini-Study metric (cyflat.projective) and the random helpers.

Library calls are jitted and reference values computed with numpy: on CPU every
distinct eager JAX operation is a separate compilation, which dominates a test's time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyflat import projective as proj
from cyflat import random as cyrandom


def _points(seed, count, n1):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(count, n1)) + 1j * rng.normal(size=(count, n1))
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


_hom_to_affine = jax.jit(proj.hom_to_affine)
_affine_to_hom = jax.jit(proj.affine_to_hom)


# -- index conversions and charts ------------------------------------------------------


def test_index_conversions_are_inverse():
    n1 = 5
    for patch in range(n1):
        hom = np.array([h for h in range(n1) if h != patch])
        aff = np.asarray(proj.index_hom_to_affine(hom, patch))
        np.testing.assert_array_equal(aff, np.arange(n1 - 1))
        np.testing.assert_array_equal(proj.index_affine_to_hom(aff, patch), hom)


def test_default_chart_is_argmax_and_unit_disk():
    z = _points(1, 500, 5)
    zs, patch = _hom_to_affine(z)
    assert zs.shape == (500, 4) and patch.shape == (500,) and patch.dtype == jnp.int32
    np.testing.assert_array_equal(patch, np.argmax(np.abs(z), axis=-1))
    np.testing.assert_array_equal(jax.jit(proj.best_patch)(z), patch)
    assert np.max(np.abs(zs)) <= 1.0 + 1e-15


def test_chart_round_trip_exact_up_to_scale():
    z = _points(2, 300, 5)
    zs, patch = _hom_to_affine(z)
    zh = np.asarray(_affine_to_hom(zs, patch))
    patch = np.asarray(patch)
    # exactly 1 at the patch coordinate, and proportional to z: zh = z / z_patch
    np.testing.assert_array_equal(np.take_along_axis(zh, patch[:, None], -1)[:, 0], 1)
    zp = np.take_along_axis(z, patch[:, None], -1)
    np.testing.assert_allclose(zh * zp, z, rtol=0, atol=4e-16)
    cross = z[:, :, None] * zh[:, None, :] - z[:, None, :] * zh[:, :, None]
    assert np.max(np.abs(cross)) < 1e-15
    # change of chart to other patches and back
    change = jax.jit(proj.change_chart)
    for patch_to in (0, 3, None):
        zs2, p2 = change(zs, patch, patch_to)
        zs3, p3 = change(zs2, p2, patch)
        np.testing.assert_array_equal(p3, patch)
        np.testing.assert_allclose(zs3, zs, rtol=0, atol=1e-14)
        if patch_to is not None:
            np.testing.assert_array_equal(p2, patch_to)


def test_affine_to_hom_explicit_patch_and_drop_index():
    zs = np.asarray([[0.5, 0.25j, -1.0]])
    np.testing.assert_array_equal(proj.affine_to_hom(zs, 2), [[0.5, 0.25j, 1.0, -1.0]])
    np.testing.assert_array_equal(proj.affine_to_hom(zs, 0), [[1.0, 0.5, 0.25j, -1.0]])
    np.testing.assert_array_equal(proj._drop_index(jnp.asarray([[1, 2, 3, 4]]), jnp.asarray([1])), [[1, 3, 4]])


def test_normalize_unit_norm_keeps_phase():
    z = 3.0 * _points(3, 50, 4)
    u = np.asarray(proj.normalize(z))
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(u * 3.0, z, rtol=1e-14)


# -- Fubini-Study --------------------------------------------------------------------------


def test_fs_metric_is_complex_hessian_of_potential():
    zs, _ = _hom_to_affine(_points(4, 20, 5))
    g, h = jax.jit(lambda zs: (proj.fs_metric(zs), jax.vmap(lambda x: proj.complex_hessian(proj.fs_potential, x))(zs)))(zs)
    g, h = np.asarray(g), np.asarray(h)
    np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12 * np.max(np.abs(g)))
    # hermitian positive definite, with det g_FS = pi^-n (1 + |z|^2)^-(n+1)
    np.testing.assert_allclose(g, np.conj(np.swapaxes(g, -1, -2)), atol=1e-15)
    assert np.min(np.linalg.eigvalsh(g)) > 0
    n = zs.shape[-1]
    r = 1 + np.sum(np.abs(np.asarray(zs)) ** 2, axis=-1)
    np.testing.assert_allclose(np.linalg.det(g).real, np.pi**-n * r ** -(n + 1), rtol=1e-12)
    np.testing.assert_allclose(proj.fs_potential(zs), np.log(r) / np.pi, rtol=1e-14)


def test_complex_hessian_of_log_quadratic_form():
    # d dbar log(z^dagger A z) for an affine chart of P^2: compare with the closed form
    rng = np.random.default_rng(6)
    B = rng.normal(size=(3, 3)) + 1j * rng.normal(size=(3, 3))
    A = B @ B.conj().T + np.eye(3)
    x = np.asarray([0.3 - 0.2j, -0.5 + 0.1j])
    z = np.concatenate([x, [1.0]])

    def pot(y):
        zz = jnp.concatenate([y, jnp.ones(1, y.dtype)])
        return jnp.log(jnp.real(jnp.conj(zz) @ A @ zz))

    h = np.asarray(jax.jit(lambda x: proj.complex_hessian(pot, x))(x))
    f = np.real(z.conj() @ A @ z)
    E = np.eye(3)[:, :2]
    closed = (E.T @ A @ E).T / f - np.outer(z.conj() @ A @ E, E.T @ A @ z) / f**2
    np.testing.assert_allclose(h, closed, rtol=1e-12, atol=1e-14)


# -- random helpers ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(jnp.complex128, 1e-14), (jnp.complex64, 1e-6)])
def test_complex_sphere_norms_and_dtype(dtype, tol):
    k = jax.random.PRNGKey(7)
    z, z2 = jax.jit(
        lambda k: (cyrandom.uniform_complex_sphere(k, 1000, 5, dtype), cyrandom.projective_points(k, 1000, 4, dtype))
    )(k)
    assert z.shape == (1000, 5) and z.dtype == dtype
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z, np.complex128), axis=-1), 1.0, rtol=tol)
    np.testing.assert_array_equal(z, z2)


def test_complex_sphere_moments():
    # uniform on S^9 in C^5: E|z_i|^2 = 1/5, E z_i = 0, E z_0 conj(z_1) = 0
    N = 20000
    z = np.asarray(jax.jit(lambda k: cyrandom.uniform_complex_sphere(k, N, 5))(jax.random.PRNGKey(8)))
    a2 = np.abs(z) ** 2
    se = np.std(a2, axis=0) / np.sqrt(N)
    assert np.all(np.abs(np.mean(a2, axis=0) - 0.2) < 4 * se)
    assert np.max(np.abs(np.mean(z, axis=0))) < 4 * np.sqrt(0.2 / N)
    c = z[:, 0] * np.conj(z[:, 1])
    assert abs(np.mean(c)) < 4 * np.std(c) / np.sqrt(N) * np.sqrt(2)


def test_real_sphere_and_complex_normal():
    N = 20000
    x, z = jax.jit(
        lambda k: (cyrandom.uniform_real_sphere(k, 500, 3), cyrandom.complex_normal(k, (N,), jnp.complex128))
    )(jax.random.PRNGKey(9))
    assert x.shape == (500, 3) and x.dtype == jnp.float64
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-14)
    z = np.asarray(z)
    # real and imaginary parts i.i.d. N(0, 1/2): E|z|^2 = 1 with Var |z|^2 = 1
    assert abs(np.mean(np.abs(z) ** 2) - 1) < 4 / np.sqrt(N)
    assert abs(np.mean(z.real**2) - 0.5) < 4 * np.sqrt(0.5 / N)
    assert abs(np.mean(z.real * z.imag)) < 4 * np.sqrt(0.25 / N)


def test_uniform_disk_mean_square_radius():
    N = 20000
    draws = jax.jit(
        lambda k: [cyrandom.uniform_unit_disk(kk, (N,), radius=r) for kk, r in zip(jax.random.split(k), (1.0, 2.5))]
    )(jax.random.PRNGKey(11))
    for z, radius in zip(draws, (1.0, 2.5)):
        r2 = np.abs(np.asarray(z)) ** 2
        assert np.max(r2) <= radius**2 * (1 + 1e-12)
        # |z|^2 / r^2 is uniform on [0, 1]: mean 1/2, standard deviation 1/sqrt(12)
        assert abs(np.mean(r2) - radius**2 / 2) < 4 * radius**2 / np.sqrt(12 * N)
        assert abs(np.mean(np.angle(z))) < 4 * np.pi / np.sqrt(3 * N)


def test_complex_box_ranges():
    z = np.asarray(
        jax.jit(lambda k: cyrandom.complex_box(k, (4000,), re_range=(-2.0, 1.0), im_range=(0.5, 0.75)))(
            jax.random.PRNGKey(12)
        )
    )
    re, im = z.real, z.imag
    assert re.min() >= -2 and re.max() <= 1 and im.min() >= 0.5 and im.max() <= 0.75
    assert re.min() < -1.9 and re.max() > 0.9 and im.min() < 0.51 and im.max() > 0.74  # fills the box


def test_random_helpers_follow_key_and_dtype():
    def draw(k, dtype):
        return (
            cyrandom.complex_normal(k, (7,), dtype),
            cyrandom.uniform_unit_disk(k, (7,), dtype=dtype),
            cyrandom.complex_box(k, (7,), dtype=dtype),
            cyrandom.uniform_complex_sphere(k, 7, 3, dtype),
        )

    k = jax.random.PRNGKey(13)
    f32 = jax.jit(lambda k: draw(k, jnp.complex64))
    for a, b in zip(f32(k), f32(k)):
        assert a.dtype == jnp.complex64
        np.testing.assert_array_equal(a, b)
    for a in jax.eval_shape(lambda k: draw(k, jnp.complex128), k):
        assert a.dtype == jnp.complex128
    assert jax.eval_shape(lambda k: cyrandom.complex_normal(k, (3,)), k).dtype == jnp.result_type(complex)
