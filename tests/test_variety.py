"""Hypersurfaces and line-intersection sampling (cyflat.variety): the acceptance checks.

Compilation dominates on CPU, so samples are drawn once per (variety, count, dtype,
moduli shape) and shared between tests (``_sample``), moduli values are batched into one
call where possible, and reference values are computed with numpy or in one jitted
function per check.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cyflat
from cyflat import projective as proj
from cyflat.variety import Hypersurface, _jacobian_from_grad, det_small, newton_distance, weighted_mean_estimate

PSI = 1.5 + 0.7j
OMEGA5 = np.exp(2j * np.pi / 5)

# name -> (variety factory, moduli or None, count, dtype).  psi = 0 makes the Dwork
# members Fermat hypersurfaces, so the Fermat K3 and sextic ride along with their families.
_CASES = {
    "fermat quintic": (lambda: cyflat.Fermat(3), None, 100_000, jnp.complex128),
    # psi = 0, 0.5, PSI, 10 and the images of PSI under psi -> omega psi, psi -> conj(psi)
    "dwork quintic": (
        lambda: cyflat.Dwork(3),
        np.asarray([[0.0], [0.5], [PSI], [10.0], [OMEGA5 * PSI], [np.conj(PSI)]]),
        100_000,
        jnp.complex128,
    ),
    "dwork quintic f32": (lambda: cyflat.Dwork(3), np.asarray([[0.0], [PSI]]), 10_000, jnp.complex64),
    "two-parameter quintic": (lambda: cyflat.TwoParameterQuintic(), np.asarray([1 + 1j, 0.3]), 10_000, jnp.complex128),
    "quartic K3": (lambda: cyflat.Dwork(2), np.asarray([[0.0], [0.7 + 0.2j]]), 10_000, jnp.complex128),
    # drawn inside a caller's jit (see _sample); 10^4 is not a multiple of 3
    "cubic curve": (lambda: cyflat.Fermat(1), None, 10_000, jnp.complex128),
    # a (1, 2) grid of moduli; 10^4 is not a multiple of 6
    "sextic fourfold": (lambda: cyflat.Dwork(4), np.asarray([[[0.0], [0.3 - 0.4j]]]), 10_000, jnp.complex128),
    # not Calabi-Yau (allowed explicitly); a tiny count, not a multiple of the degree
    "cubic in P^3 (not CY)": (
        lambda: Hypersurface("z0**3 + z1**3 + z2**3 + z3**3 + z0*z1*z2", allow_non_cy=True),
        None,
        7,
        jnp.complex128,
    ),
}


@functools.cache
def _sample(name, seed=0):
    make, params, count, dtype = _CASES[name]
    variety = make()
    if name == "cubic curve":  # sampling works inside a caller's jit
        s = jax.jit(lambda k: variety.sample(k, params, count, dtype=dtype))(jax.random.PRNGKey(seed))
    else:
        s = variety.sample(jax.random.PRNGKey(seed), params, count, dtype=dtype)
    return variety, params, jax.tree_util.tree_map(np.asarray, s)


def _flat(params, s):
    """Per-point moduli (N, m) or None, and the sample flattened over moduli."""
    zs = s.zs.reshape(-1, s.zs.shape[-1])
    flat = (zs, s.patch.reshape(-1), s.dependent.reshape(-1), s.weights.reshape(-1))
    if params is None:
        return None, flat
    params = np.asarray(params).reshape(-1, np.shape(params)[-1])
    return np.repeat(params, s.zs.shape[-2], axis=0), flat


def _np_value_and_gradient(poly, z, coeffs):
    """numpy reference: Q and dQ/dz at homogeneous points z (N, n+1), coefficients (N, T)."""
    e = poly.exponents  # (T, n+1)
    val = np.einsum("nt,nt->n", coeffs, np.prod(z[:, None, :] ** e, axis=-1))
    grad = np.empty_like(z)
    for i in range(z.shape[-1]):
        d = e.copy()
        d[:, i] = np.maximum(d[:, i] - 1, 0)
        grad[:, i] = np.einsum("nt,nt->n", coeffs * e[:, i], np.prod(z[:, None, :] ** d, axis=-1))
    return val, grad


def _np_geometry(variety, zs, patch, dependent, params):
    """numpy references on a sample: Newton distance, best patch and dependent coordinate,
    the weight 1 / (|dQ/dz_dep|^2 det(J g_FS J^dagger)), and the induced metric."""
    zs = np.asarray(zs, np.complex128)
    N, n = zs.shape
    cols = np.arange(n + 1)
    src = cols[None, :] - (cols[None, :] > patch[:, None])  # affine index of each hom. index
    zh = np.where(cols[None, :] == patch[:, None], 1, np.take_along_axis(zs, np.clip(src, 0, n - 1), -1))
    if params is None:
        coeffs = np.broadcast_to(np.asarray(variety.coefficients(None)), (N, variety.poly.num_terms))
    else:
        coeffs = np.asarray(variety.coefficients(np.asarray(params, np.complex128)))
    val, grad = _np_value_and_gradient(variety.poly, zh, coeffs)
    dist = np.abs(val) / (np.linalg.norm(grad, axis=-1) * np.linalg.norm(zh, axis=-1))
    keep = cols[None, :n] + (cols[None, :n] >= patch[:, None])
    g_aff = np.take_along_axis(grad, keep, -1)  # (N, n)
    a = np.arange(n - 1)[None, :]
    kept = a + (a >= dependent[:, None])  # (N, d) affine index of local coordinate a
    g_dep = np.take_along_axis(g_aff, dependent[:, None], -1)  # (N, 1)
    J = (np.arange(n)[None, None, :] == kept[:, :, None]).astype(complex)
    J -= (np.take_along_axis(g_aff, kept, -1) / g_dep)[:, :, None] * (np.arange(n)[None, None, :] == dependent[:, None, None])
    r = 1 + np.sum(np.abs(zs) ** 2, axis=-1)[:, None, None]
    G = (np.eye(n) / r - zs.conj()[:, :, None] * zs[:, None, :] / r**2) / np.pi
    g = J @ G @ np.conj(np.swapaxes(J, -1, -2))
    w_ref = 1 / (np.abs(g_dep[:, 0]) ** 2 * np.linalg.det(g).real)
    return dist, np.argmax(np.abs(zh), -1), np.argmax(np.abs(g_aff), -1), w_ref, g


# -- every sampled point lies on X ---------------------------------------------------------


@pytest.mark.parametrize("name", list(_CASES))
def test_samples_lie_on_the_variety(name):
    variety, params, s = _sample(name)
    _, _, count, dtype = _CASES[name]
    batch = () if params is None else np.shape(params)[:-1]
    n = variety.dim_projective
    # shapes and dtypes: `count` points per moduli value, exactly
    assert s.zs.shape == batch + (count, n) and s.zs.dtype == dtype
    assert s.patch.shape == s.dependent.shape == s.weights.shape == batch + (count,)
    assert s.patch.dtype == np.int32 and s.dependent.dtype == np.int32
    assert s.weights.dtype == jnp.finfo(dtype).dtype and s.n_failed.shape == batch
    assert s.n_failed.dtype == np.int32 and np.all(s.n_failed == 0)
    per_point, (zs, patch, dependent, weights) = _flat(params, s)
    # numpy references on (at most) 10^4 points per moduli value
    per_value = min(count, 10_000)
    values = len(zs) // count
    pick = (np.arange(values)[:, None] * count + np.linspace(0, count - 1, per_value).astype(int)).ravel()
    zs, patch, dependent, weights = zs[pick], patch[pick], dependent[pick], weights[pick]
    per_point = None if per_point is None else per_point[pick]
    dist, best_patch, best_dep, w_ref, g_fs = _np_geometry(variety, zs, patch, dependent, per_point)
    tol = 1e-10 if dtype == jnp.complex128 else 1e-4
    assert np.max(dist) <= tol
    # charts: default patch argmax |z_i| (affine coordinates in the unit disk) and default
    # dependent coordinate argmax |dQ/dz_j|
    np.testing.assert_array_equal(patch, best_patch)
    assert np.max(np.abs(zs)) <= 1 + 1e-6
    np.testing.assert_array_equal(dependent, best_dep)
    # weights |Omega|^2 / det g_FS|_X: positive, and equal to the explicit pull-back
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)
    rtol = 1e-11 if dtype == jnp.complex128 else 1e-4
    np.testing.assert_allclose(weights, w_ref, rtol=rtol)
    # the induced Fubini-Study metric is hermitian positive definite
    np.testing.assert_allclose(g_fs, np.conj(np.swapaxes(g_fs, -1, -2)), atol=1e-15)
    assert np.min(np.linalg.eigvalsh(g_fs)) > 0


def test_count_not_multiple_of_line_degree():
    for name in ("cubic curve", "sextic fourfold", "cubic in P^3 (not CY)"):
        variety, _, s = _sample(name)
        count = _CASES[name][2]
        assert count % variety.degree != 0 and s.zs.shape[-2] == count


def test_each_line_yields_degree_many_points():
    variety, _, s = _sample("fermat quintic")
    D = variety.degree
    assert int(s.n_failed) == 0  # then the points are the lines' intersections, in order
    z = np.asarray(proj.normalize(proj.affine_to_hom(s.zs[: 200 * D], s.patch[: 200 * D])))
    sv = np.linalg.svd(z.reshape(200, D, D), compute_uv=False)  # D points of one line
    assert np.max(sv[:, 2] / sv[:, 0]) < 1e-12  # span a 2-plane: they lie on one line
    # consecutive points from different lines do not
    sv_shift = np.linalg.svd(z[2 : 2 + 199 * D].reshape(199, D, D), compute_uv=False)
    assert np.min(sv_shift[:, 2] / sv_shift[:, 0]) > 1e-6
    # ... and the D roots on a line are distinct points of P^n: |<z_a, z_b>| < 1 for a != b
    overlap = np.abs(np.einsum("lai,lbi->lab", z.reshape(200, D, D).conj(), z.reshape(200, D, D))) - np.eye(D)
    assert np.max(overlap) < 1 - 1e-6


# -- the sampler's distribution is Fubini-Study ----------------------------------------------


def _random_hermitian(n1, seed):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(n1, n1)) + 1j * rng.normal(size=(n1, n1))
    return B @ B.conj().T / n1 + 0.3 * np.eye(n1)


def _metric_of_quadratic_form(A, zs, patch):
    """Affine-coordinate metric of K_A = log(z^dagger A z) / pi, closed form (..., n, n)."""
    n = zs.shape[-1]
    z = proj.affine_to_hom(zs, patch)
    hom = proj.index_affine_to_hom(jnp.arange(n), patch[..., None])  # (..., n)
    E = (jnp.arange(n + 1)[:, None] == hom[..., None, :]).astype(zs.dtype)  # (..., n+1, n): dz/dzs
    # with f = z^dagger A z: d_i f = (z^dagger A E)_i, d_jbar f = (E^T A z)_j,
    # d_i d_jbar f = (E^T A E)_ji, and g = (d d-bar f / f - d f d-bar f / f^2) / pi
    Et = jnp.swapaxes(E, -1, -2)
    Az = z @ A.T
    f = jnp.real(jnp.sum(jnp.conj(z) * Az, axis=-1))[..., None, None]
    EAE = Et @ A @ E
    zAE = ((jnp.conj(z) @ A)[..., None, :] @ E)[..., 0, :]  # (..., n)
    EAz = (Et @ Az[..., None])[..., 0]  # (..., n)
    return (jnp.swapaxes(EAE, -1, -2) / f - zAE[..., :, None] * EAz[..., None, :] / f**2) / jnp.pi


@functools.partial(jax.jit, static_argnums=0)
def _det_ratio(variety, A, zs, patch, dependent, params):
    G = _metric_of_quadratic_form(A, zs, patch)
    g_a = variety.induced_metric(G, zs, params, patch, dependent)
    g_fs = variety.induced_fs(zs, params, patch, dependent)
    return jnp.real(det_small(g_a)) / jnp.real(det_small(g_fs))


def test_quadratic_form_metric_closed_form():
    A = _random_hermitian(5, 1)
    z = np.random.default_rng(2).normal(size=(4, 5)) + 0j

    @jax.jit
    def run(A, z):
        zs, patch = proj.hom_to_affine(z)
        eye = _metric_of_quadratic_form(jnp.eye(5, dtype=z.dtype), zs, patch)
        return zs, patch, _metric_of_quadratic_form(A, zs, patch), eye, proj.fs_metric(zs)

    zs, patch, closed, with_identity, fs = (np.asarray(x) for x in run(A, z))

    def K(x, p):  # log(z^dagger A z) / pi in patch p
        z = np.insert(x, p, 1.0)
        return np.log(np.real(z.conj() @ A @ z)) / np.pi

    h = 1e-4
    for x, p, g in zip(zs, patch, closed):
        n = x.size
        # d_i d_jbar K = (K_{x_i x_j} + K_{y_i y_j} + i (K_{x_i y_j} - K_{y_i x_j})) / 4
        basis = np.concatenate([np.eye(n), 1j * np.eye(n)])
        H = np.empty((2 * n, 2 * n))
        for a in range(2 * n):
            for b in range(2 * n):
                ea, eb = h * basis[a], h * basis[b]
                H[a, b] = (K(x + ea + eb, p) - K(x + ea - eb, p) - K(x - ea + eb, p) + K(x - ea - eb, p)) / (4 * h * h)
        fd = (H[:n, :n] + H[n:, n:] + 1j * (H[:n, n:] - H[n:, :n])) / 4
        np.testing.assert_allclose(g, fd, atol=1e-6)
    # A = identity is Fubini-Study
    np.testing.assert_allclose(with_identity, fs, atol=1e-15)


@pytest.mark.parametrize("name, index", [("fermat quintic", None), ("dwork quintic", 2)])
def test_sample_distribution_is_fubini_study(name, index):
    variety, params, s = _sample(name)
    if index is not None:  # psi = PSI
        params = params[index]
        s = jax.tree_util.tree_map(lambda x: x[index], s)
    A = jnp.asarray(_random_hermitian(variety.dim_projective + 1, 3))
    ratio = np.asarray(_det_ratio(variety, A, s.zs, s.patch, s.dependent, params))
    N = ratio.size
    mean, se = ratio.mean(), ratio.std(ddof=1) / np.sqrt(N)
    assert abs(mean - 1) <= 4 * se, (mean, se)
    assert se < 0.02  # the check has power: a wrong distribution would show


# -- Omega volume -----------------------------------------------------------------------------


def test_omega_volume_symmetries_and_standard_error():
    variety, params, s = _sample("dwork quintic")
    count = _CASES["dwork quintic"][2]
    key = jax.random.PRNGKey(0)  # the key of the cached sample s
    est = variety.compute_vol(key, params, count)  # same compiled sampler as the sample
    value, stderr = np.asarray(est.value), np.asarray(est.stderr)
    assert value.shape == stderr.shape == (6,) and np.all(np.asarray(est.n_failed) == 0)
    # psi, omega psi and conj(psi) give the same volume
    for j in (4, 5):
        assert abs(value[j] - value[2]) <= 4 * np.hypot(stderr[j], stderr[2]), (value, stderr)
    assert np.all(stderr < 0.01 * value)
    # compute_vol is the weighted mean of the sample drawn with the same key ...
    ref = weighted_mean_estimate(jnp.ones_like(s.weights), s.weights, s.n_failed, scale=variety.vol_fs)
    np.testing.assert_allclose(ref.value, value, rtol=1e-12)
    np.testing.assert_allclose(ref.stderr, stderr, rtol=1e-10)
    assert np.all(np.asarray(est.ess) > 0.3 * count)
    # ... and its standard error falls like 1/sqrt(N): N = count/16 vs count
    small = weighted_mean_estimate(jnp.ones(count // 16), s.weights[:, : count // 16], s.n_failed, variety.vol_fs)
    ratio = np.asarray(small.stderr) / stderr
    assert np.all(np.abs(ratio - 4) <= 0.4), ratio
    assert float(est) == float(est.value) if est.value.ndim == 0 else True


def test_fermat_volume_matches_dwork_at_zero():
    fermat, _, s_f = _sample("fermat quintic")
    _, _, s_d = _sample("dwork quintic")
    a = weighted_mean_estimate(np.ones_like(s_f.weights), s_f.weights, 0, fermat.vol_fs)
    b = weighted_mean_estimate(np.ones_like(s_d.weights[0]), s_d.weights[0], 0, fermat.vol_fs)
    assert abs(float(a.value) - float(b.value)) <= 4 * float(np.hypot(a.stderr, b.stderr))


# -- geometry of the chart ------------------------------------------------------------------


def _random_affine(variety, params, seed, count=64):
    rng = np.random.default_rng(seed)
    n1 = variety.dim_projective + 1
    z = rng.normal(size=(count, n1)) + 1j * rng.normal(size=(count, n1))
    patch = rng.integers(0, n1, size=count).astype(np.int32)
    zp = np.take_along_axis(z, patch[:, None], -1)
    zs = np.asarray(proj._drop_index(jnp.asarray(z / zp), jnp.asarray(patch)))
    return z, zs, patch


@pytest.mark.parametrize("name", ["two-parameter quintic", "quartic K3", "cubic curve"])
def test_affine_evaluation_is_scaled_homogeneous_evaluation(name):
    variety, params, _ = _sample(name)
    params = None if params is None else np.asarray(params).reshape(-1, variety.num_params)[-1]
    z, zs, patch = _random_affine(variety, params, 5)
    D = variety.degree

    @jax.jit
    def run(z, zs, patch):
        return (
            variety.defining(z, params),
            variety.defining(zs, params, patch),
            variety.grad_defining(z, params),
            variety.grad_defining(zs, params, patch),
        )

    q_hom, q_aff, g_hom, g_aff = (np.asarray(x) for x in run(z, zs, patch))
    zp = np.take_along_axis(z, patch[:, None], -1)[:, 0]
    np.testing.assert_allclose(q_aff, q_hom / zp**D, rtol=1e-12)
    g_ref = np.asarray(proj._drop_index(jnp.asarray(g_hom / zp[:, None] ** (D - 1)), jnp.asarray(patch)))
    np.testing.assert_allclose(g_aff, g_ref, rtol=1e-12)
    # Euler: z . grad Q = D Q
    np.testing.assert_allclose(np.sum(z * g_hom, axis=-1), D * q_hom, rtol=1e-12)


@pytest.mark.parametrize("name", ["fermat quintic", "two-parameter quintic", "sextic fourfold"])
def test_jacobian_embed_is_tangent_and_best_dependent_is_argmax(name):
    variety, params, s = _sample(name)
    per_point, (zs, patch, dependent, _) = _flat(params, s)
    zs, patch, dependent = zs[:500], patch[:500], dependent[:500]
    per_point = None if per_point is None else per_point[:500]
    v = np.random.default_rng(7).normal(size=(500, variety.dim)) + 0j

    @jax.jit
    def run(zs, patch, dependent, params):
        grad = variety.grad_defining(zs, params, patch)
        J = variety.jacobian_embed(zs, params, patch, dependent)
        J_default = variety.jacobian_embed(zs, params, patch)
        return grad, J, J_default, variety.best_dependent(zs, params, patch), _jacobian_from_grad(grad, dependent)

    grad, J, J_default, best, J2 = (np.asarray(x) for x in run(zs, patch, dependent, per_point))
    assert J.shape == (500, variety.dim, variety.dim_projective)
    tangent = np.einsum("nai,na->ni", J, v)  # J^T v
    assert np.max(np.abs(np.sum(grad * tangent, axis=-1)) / np.linalg.norm(grad, axis=-1)) < 1e-13
    np.testing.assert_array_equal(J, J_default)  # the sample's dependent is the default one
    np.testing.assert_array_equal(J, J2)
    np.testing.assert_array_equal(best, np.argmax(np.abs(grad), axis=-1))
    # identity on the kept coordinates
    kept = np.delete(np.arange(variety.dim_projective), dependent[0])
    np.testing.assert_array_equal(J[0][:, kept], np.eye(variety.dim))


def test_sample_intersect_weights_api():
    variety, _, s = _sample("fermat quintic")
    zs, patch = s.zs[:1000], s.patch[:1000]
    w = jax.jit(lambda zs, patch: variety.sample_intersect_weights(zs, None, patch))(zs, patch)
    np.testing.assert_allclose(w, s.weights[:1000], rtol=1e-12)
    # the weight does not depend on which coordinate is the dependent one
    other = (s.dependent[:1000] + 1) % variety.dim_projective
    w2 = jax.jit(lambda zs, patch, d: variety.sample_intersect_weights(zs, None, patch, d))(zs, patch, other)
    np.testing.assert_allclose(w2, w, rtol=1e-10)


def test_solve_defining_puts_points_on_the_variety():
    variety, params, _ = _sample("dwork quintic")
    params = np.asarray(params).reshape(-1, variety.num_params)[-1]
    z, zs, patch = _random_affine(variety, params, 8, count=32)
    dependent = np.random.default_rng(9).integers(0, variety.dim_projective, size=32).astype(np.int32)

    @jax.jit
    def run(zs, patch, dependent):
        roots = variety.solve_defining(zs, params, patch, dependent)  # (32, D)
        onehot = jax.nn.one_hot(dependent, variety.dim_projective, dtype=zs.dtype)[:, None, :]
        pts = zs[:, None, :] * (1 - onehot) + roots[..., None] * onehot
        zh = proj.affine_to_hom(pts, patch[:, None])
        coeffs = variety.coefficients(params)
        val, grad = variety.poly.value_and_gradient(zh, coeffs)
        return roots, newton_distance(val, grad, zh)

    roots, dist = run(zs, patch, dependent)
    assert roots.shape == (32, variety.degree)
    assert float(jnp.max(dist)) < 1e-10


# -- moduli batching, presets and determinism ------------------------------------------------


def test_moduli_batching_shapes_and_keys():
    variety, params, s = _sample("dwork quintic")
    assert s.zs.shape == (6, 100_000, 4) and s.n_failed.shape == (6,)
    # different moduli in a batch use different keys: even psi and omega psi differ
    assert not np.array_equal(s.zs[4], s.zs[2])
    # a (1, 2) grid of moduli
    _, _, s6 = _sample("sextic fourfold")
    assert s6.zs.shape == (1, 2, 10_000, 5) and s6.n_failed.shape == (1, 2)
    # one modulus value without a batch axis
    _, params2, s2 = _sample("two-parameter quintic")
    assert params2.shape == (2,) and s2.zs.shape == (10_000, 4) and s2.n_failed.shape == ()


def test_fermat_members_of_the_dwork_families():
    # psi = 0 gives the Fermat polynomial: the Fermat cases are covered by the families
    for dim in (2, 3, 4):
        f, d = cyflat.Fermat(dim).poly, cyflat.Dwork(dim).poly
        z = np.random.default_rng(dim).normal(size=(8, dim + 2)) + 0j
        np.testing.assert_allclose(
            d.evaluate(z, d.coefficients(np.zeros(1))), f.evaluate(z, f.coefficients(None)), rtol=1e-13
        )


def test_same_key_same_dtype_is_bitwise_identical():
    variety, params, s = _sample("dwork quintic f32")
    again = variety.sample(jax.random.PRNGKey(0), params, 10_000, dtype=jnp.complex64)
    for a, b in zip(s, again):
        np.testing.assert_array_equal(a, np.asarray(b))
    other = variety.sample(jax.random.PRNGKey(1), params, 10_000, dtype=jnp.complex64)
    assert not np.array_equal(s.zs, np.asarray(other.zs))
    v2, p2, s2 = _sample("two-parameter quintic")
    again2 = v2.sample(jax.random.PRNGKey(0), p2, 10_000, dtype=jnp.complex128)
    np.testing.assert_array_equal(s2.zs, np.asarray(again2.zs))
    np.testing.assert_array_equal(s2.weights, np.asarray(again2.weights))
    # an equal variety object hits the same compiled sampler and gives the same points
    again3 = cyflat.TwoParameterQuintic().sample(jax.random.PRNGKey(0), p2, 10_000, dtype=jnp.complex128)
    np.testing.assert_array_equal(s2.zs, np.asarray(again3.zs))


def test_sample_intersect_interface():
    variety, params, s = _sample("two-parameter quintic")
    key = jax.random.PRNGKey(0)  # the key of the cached sample
    z = np.asarray(variety.sample_intersect(key, params, 10_000))
    np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1, rtol=1e-14)
    zp = np.take_along_axis(z, np.asarray(s.patch)[:, None], -1)[:, 0]
    np.testing.assert_allclose(zp.imag, 0, atol=1e-15)
    assert np.all(zp.real > 0)
    (zs, patch), w = variety.sample_intersect(key, params, 10_000, affine=True, weights=True)
    np.testing.assert_array_equal(zs, s.zs)
    np.testing.assert_array_equal(patch, s.patch)
    np.testing.assert_array_equal(w, s.weights)


def test_presets():
    q = cyflat.Fermat(3)
    assert (q.dim, q.dim_projective, q.degree, q.num_params) == (3, 4, 5, 0) and q.vol_fs == pytest.approx(5 / 6)
    assert cyflat.Fermat(2).vol_fs == 2 and cyflat.Fermat(1).vol_fs == 3 and cyflat.Dwork(4).vol_fs == 6 / 24
    d = cyflat.Dwork(3)
    assert d.param_names == ("psi",) and q.known_singular_params() is None
    sing = d.known_singular_params()
    assert sing.shape == (5, 1)
    np.testing.assert_allclose(sing[:, 0] ** 5, 1)
    assert cyflat.TwoParameterQuintic().param_names == ("a1", "a2")
    assert cyflat.VarietySingle is Hypersurface
    # equality and hashing by polynomial; repr names the polynomial
    assert cyflat.Dwork(3) == d and hash(cyflat.Dwork(3)) == hash(d) and d != q
    assert "psi" in repr(d)
    assert Hypersurface.from_sympy("z0**3 + z1**3 + z2**3") == Hypersurface("z0**3+z1**3+z2**3")
    assert jax.tree_util.tree_leaves(d) == []


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("z0**5 + z1**5 + z2**5 + z3**5 + z4**4",), {}, "not homogeneous"),
        (("z0**5 + z1**5 + z2**5 + z3**5 + z4**5 + c*z0*z1*z2*z3*z4",), {}, "unknown symbol"),
        (("z0**5 + z1**5 + z2**5 + z3**5 + z5**5",), {}, "skip"),
        (("z0**5 + z1**5 + z2**5 + z3**5 + z4**",), {}, "cannot parse"),
        (("z0**4 + z1**4 + z2**4 + z3**4 + z4**4",), {}, "degree 4 != n\\+1 = 5"),
        (("z0**2 + z1**2",), {"allow_non_cy": True}, "n >= 2"),
    ],
)
def test_bad_varieties_raise_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Hypersurface(*args, **kwargs)


def test_presets_reject_bad_dimension():
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="dim"):
            cyflat.Fermat(bad)
        with pytest.raises(ValueError, match="dim"):
            cyflat.Dwork(bad)


@pytest.mark.parametrize(
    "variety, params, count, kwargs, match",
    [
        ("dwork", [1.0, 2.0], 10, {}, "expected 1 moduli"),
        ("dwork", None, 10, {}, "needs 1 moduli"),
        ("fermat", [0.5], 10, {}, "expected 0 moduli"),
        ("twoparam", [0.5], 10, {}, "expected 2 moduli"),
        ("fermat", None, 0, {}, "count must be a positive integer"),
        ("fermat", None, -5, {}, "count must be a positive integer"),
        ("fermat", None, 10.0, {}, "count must be a positive integer"),
        ("fermat", None, "10", {}, "count must be a positive integer"),
        ("fermat", None, True, {}, "count must be a positive integer"),
        ("fermat", None, 10, {"dtype": jnp.float64}, "dtype must be complex"),
        ("dwork", np.zeros((0, 1)), 10, {}, "empty batch of moduli"),
    ],
)
def test_bad_sampling_arguments_raise_value_error(variety, params, count, kwargs, match):
    v = {"dwork": cyflat.Dwork(3), "fermat": cyflat.Fermat(3), "twoparam": cyflat.TwoParameterQuintic()}[variety]
    with pytest.raises(ValueError, match=match):
        v.sample(jax.random.PRNGKey(0), params, count, **kwargs)


def test_integer_key_and_complex128_without_x64_raise_value_error():
    v = cyflat.Fermat(3)
    with pytest.raises(ValueError, match="PRNG key"):
        v.sample(0, None, 10)
    with jax.enable_x64(False):  # JAX would silently compute in complex64
        with pytest.raises(ValueError, match="needs 64-bit JAX"):
            v.sample(jax.random.PRNGKey(0), None, 10, dtype=jnp.complex128)


def test_wrong_point_shapes_raise_value_error():
    v = cyflat.Fermat(3)
    with pytest.raises(ValueError, match="5 coordinates"):
        v.defining(jnp.ones((3, 4)), None)
    with pytest.raises(ValueError, match="4 coordinates"):
        v.defining(jnp.ones((3, 5)), None, patch=0)


# -- jit, callbacks and global configuration ------------------------------------------------


def test_sampler_has_no_host_callbacks():
    variety, params, s = _sample("cubic curve")  # drawn inside a jit: it ran there
    jaxpr = str(jax.make_jaxpr(lambda k: variety.sample(k, params, 10_000))(jax.random.PRNGKey(0)))
    assert "callback" not in jaxpr and "while" in jaxpr
    jaxpr2 = str(jax.make_jaxpr(lambda k, p: cyflat.Dwork(3).sample(k, p, 50))(jax.random.PRNGKey(0), jnp.ones((3, 1))))
    assert "callback" not in jaxpr2
    # under vmap over keys too (traced only)
    out = jax.eval_shape(jax.vmap(lambda k: variety.sample(k, params, 100)), jax.random.split(jax.random.PRNGKey(0), 3))
    assert out.zs.shape == (3, 100, 2)


def test_import_leaves_jax_configuration_alone():
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
    env["XLA_FLAGS"] = "--xla_cpu_enable_fast_math=false"
    code = (
        "import os, jax\n"
        "before = jax.config.jax_enable_x64\n"
        "flags = os.environ.get('XLA_FLAGS')\n"
        "import cyflat\n"
        "assert jax.config.jax_enable_x64 == before, 'x64 changed'\n"
        "assert os.environ.get('XLA_FLAGS') == flags, 'XLA_FLAGS changed'\n"
        "assert jax.config.jax_default_matmul_precision is None\n"
        "print('ok', before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok False"


def test_compaction_keeps_order_and_marks_shortfall():
    from cyflat.variety import _compact_indices

    ok = np.ones(20, bool)
    ok[[0, 3, 4, 11]] = False
    idx, filled = jax.jit(_compact_indices, static_argnums=1)(ok, 10)
    np.testing.assert_array_equal(idx, np.flatnonzero(ok)[:10])
    assert np.all(filled)
    # fewer accepted points than requested: the rest repeat the first accepted one and
    # are marked (the sampler gives them weight 0 and counts the rejections in n_failed)
    ok = np.zeros(20, bool)
    ok[[5, 7, 19]] = True
    idx, filled = jax.jit(_compact_indices, static_argnums=1)(ok, 6)
    np.testing.assert_array_equal(idx, [5, 7, 19, 5, 5, 5])
    np.testing.assert_array_equal(filled, [True, True, True, False, False, False])


def test_estimate_counts_only_filled_slots_and_is_nan_without_any():
    w = jnp.array([[2.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    est = weighted_mean_estimate(jnp.ones_like(w), w, 0)
    np.testing.assert_allclose(est.value[0], 3.0)  # mean over the two filled slots
    np.testing.assert_allclose(est.stderr[0], np.std([2.0, 4.0], ddof=1) / np.sqrt(2))
    assert np.isnan(est.value[1]) and np.isnan(est.stderr[1])
