"""The algebraic metric: closed form vs autodiff, chart invariance, Kaehler-class and
curvature oracles, sigma of Fubini-Study, batching, float32 and input validation.

Monte Carlo tolerances are multiples of the standard error of the same sample.  Sizes
are kept small (compiles dominate); samples are shared through module fixtures."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cyflat
from cyflat import projective as proj
from cyflat.metric import AlgebraicMetric, ricci_tensor, sigma_from_eta
from cyflat.sections import MonomialBasisFull, MonomialBasisReduced
from cyflat.variety import det_small

FERMAT = cyflat.Fermat(3)
DWORK = cyflat.Dwork(3)
PSI_CLOSED = jnp.array([0.5 + 0.3j])
PSI_ORACLE = jnp.array([1.5 + 0.7j])
PSI_CURV = jnp.array([0.5 + 0.0j])
MC_COUNT = 100_000
SMALL = 16  # points for the pointwise checks (a slice of the Monte Carlo samples)


def random_h(seed, N, dtype=jnp.complex128):
    """A well-conditioned random positive hermitian matrix ``A A^dagger / N + 1``."""
    a = jax.random.normal(jax.random.PRNGKey(seed), (N, N), dtype)
    return a @ jnp.conj(a).T / N + jnp.eye(N, dtype=dtype)


def metric_for(variety, params, k):
    return AlgebraicMetric(variety, MonomialBasisReduced(variety, k, params, check=False))


@pytest.fixture(scope="module")
def samples():
    """Monte Carlo samples (one sampler compile per variety; psi is a traced argument)."""
    out = {
        "fermat": (FERMAT, None, FERMAT.sample(jax.random.PRNGKey(11), None, MC_COUNT)),
        "dwork_oracle": (DWORK, PSI_ORACLE, DWORK.sample(jax.random.PRNGKey(12), PSI_ORACLE, MC_COUNT)),
        "dwork_closed": (DWORK, PSI_CLOSED, DWORK.sample(jax.random.PRNGKey(13), PSI_CLOSED, MC_COUNT)),
        "dwork_curv": (DWORK, PSI_CURV, DWORK.sample(jax.random.PRNGKey(14), PSI_CURV, MC_COUNT)),
    }
    for _, _, s in out.values():
        assert int(s.n_failed) < MC_COUNT // 1000
    return out


def _small(samples, name, count=SMALL):
    variety, params, s = samples[name]
    return variety, params, s.zs[:count], s.patch[:count]


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# -- closed form vs autodiff -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["fermat", "dwork_closed"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_closed_form_matches_autodiff_hessian(samples, name, k):
    variety, params, zs, patch = _small(samples, name, 8)
    metric = metric_for(variety, params, k)
    h = random_h(k, metric.basis_size)
    local = metric.metric(h, zs, params, patch)

    @jax.jit
    def reference(h, zs, patch, dep):
        def ambient(z, p):
            return proj.complex_hessian(lambda w: metric.kahler_potential(h, w, p), z)

        G = jax.vmap(ambient)(zs, patch)  # (B, n, n): d_i d_jbar K_H in the affine chart
        J = variety.jacobian_embed(zs, params, patch, dep)
        g = J @ G @ jnp.conj(jnp.swapaxes(J, -1, -2))
        gdep = jnp.take_along_axis(variety.grad_defining(zs, params, patch), dep[:, None], -1)[:, 0]
        return g, det_small(g) * jnp.abs(gdep) ** 2

    g_ref, eta_ref = reference(h, zs, patch, local.dependent)
    assert _rel(local.g, g_ref) < 1e-10
    eta = metric.eta(h, zs, params, patch)
    assert _rel(eta, jnp.real(eta_ref)) < 1e-10
    assert float(jnp.max(jnp.abs(jnp.imag(eta_ref)) / jnp.abs(eta_ref))) < 1e-12
    det = det_small(local.g)
    assert float(jnp.max(jnp.abs(jnp.imag(det)) / jnp.abs(det))) < 1e-12
    np.testing.assert_allclose(local.g, jnp.conj(jnp.swapaxes(local.g, -1, -2)), rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_eta_gradient_closed_form_matches_autodiff(dim):
    """eta's reverse-mode derivative is written in closed form (one matrix product for H);
    it must equal autodiff of det(g) * |dQ|^2 with g from the same sections, in H (through
    the Cholesky parameters, i.e. along hermitian directions) and in the points."""
    from cyflat import ml

    variety = cyflat.Dwork(dim)
    params = jnp.array([0.3 + 0.2j])
    metric = AlgebraicMetric(variety, MonomialBasisFull(variety.dim_projective, 2))
    s = variety.sample(jax.random.PRNGKey(dim), params, 24)
    hp = ml.hermitian_param_init(jax.random.PRNGKey(0), metric.basis_size, 0.3)
    w = jnp.asarray(np.random.default_rng(dim).normal(size=24))

    def closed(hp, zs):
        return jnp.sum(w * metric.eta(ml.cholesky_from_param(hp), zs, params, s.patch, s.dependent))

    def reference(hp, zs):
        g = metric.metric(ml.cholesky_from_param(hp), zs, params, s.patch, s.dependent).g
        gdep = jnp.take_along_axis(variety.grad_defining(zs, params, s.patch), s.dependent[:, None], -1)[:, 0]
        return jnp.sum(w * jnp.real(jnp.linalg.det(g)) * jnp.abs(gdep) ** 2)

    v, (g_h, g_z) = jax.jit(jax.value_and_grad(closed, argnums=(0, 1)))(hp, s.zs)
    v_ref, (r_h, r_z) = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(hp, s.zs)
    assert abs(float(v) / float(v_ref) - 1) < 1e-12
    assert _rel(g_h, r_h) < 1e-11
    assert _rel(g_z, r_z) < 1e-11
    # float32: the same gradient to the round-off of eta itself (see test_float32_eta)
    g32 = jax.jit(jax.grad(lambda hp, zs: closed(hp, zs).astype(jnp.float32)))(
        hp.astype(jnp.float32), s.zs.astype(jnp.complex64)
    )
    assert g32.dtype == jnp.float32 and _rel(g32, r_h) < 1e-4
    if dim == 1:
        # H of rank 1 (positive semi-definite): det g = 0 at every point; the closed form
        # never divides by det g, so the gradient stays finite like autodiff's
        hp1 = jnp.zeros_like(hp).at[0].set(1.0)
        g1 = jax.jit(jax.grad(closed))(hp1, s.zs)
        r1 = jax.jit(jax.grad(reference))(hp1, s.zs)
        assert np.all(np.isfinite(np.asarray(g1))) and float(jnp.max(jnp.abs(g1 - r1))) < 1e-10


# -- charts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, k", [("fermat", 2), ("dwork_closed", 3)])
def test_eta_independent_of_chart(samples, name, k):
    variety, params, zs, patch = _small(samples, name)
    metric = metric_for(variety, params, k)
    h = random_h(100 + k, metric.basis_size)
    eta = metric.eta(h, zs, params, patch)
    n = variety.dim_projective

    # Default dependent coordinate: the largest |dQ/dz_j|.
    grad = variety.grad_defining(zs, params, patch)
    dep = metric.metric(h, zs, params, patch).dependent
    np.testing.assert_array_equal(dep, jnp.argmax(jnp.abs(grad), axis=-1))

    # Every valid dependent coordinate (dQ/dz_dep not ~0) gives the same eta.
    checked = 0
    for j in range(n):
        valid = jnp.abs(grad[:, j]) > 1e-2 * jnp.max(jnp.abs(grad), axis=-1)
        eta_j = metric.eta(h, zs, params, patch, jnp.full(patch.shape, j))
        assert float(jnp.max(jnp.where(valid, jnp.abs(eta_j / eta - 1), 0))) < 1e-8
        checked += int(jnp.sum(valid))
    assert checked > SMALL * (n - 1)

    # Every patch whose coordinate is not ~0, and every dependent index there.
    zh = proj.affine_to_hom(zs, patch)
    for q in range(n + 1):
        ok = jnp.abs(zh[:, q]) > 0.1 * jnp.max(jnp.abs(zh), axis=-1)
        zq, pq = proj.change_chart(zs, patch, q)
        zq = jnp.where(ok[:, None], zq, zs)  # keep the other points finite
        pq = jnp.where(ok, pq, patch)
        eta_q = metric.eta(h, zq, params, pq)
        assert float(jnp.max(jnp.where(ok, jnp.abs(eta_q / eta - 1), 0))) < 1e-8
        eta_q0 = metric.eta(h, zq, params, pq, jnp.zeros_like(pq))
        grad_q = variety.grad_defining(zq, params, pq)
        ok0 = ok & (jnp.abs(grad_q[:, 0]) > 1e-2 * jnp.max(jnp.abs(grad_q), axis=-1))
        assert float(jnp.max(jnp.where(ok0, jnp.abs(eta_q0 / eta - 1), 0))) < 1e-8

    # H -> c H only shifts the potential.
    for c in (1e-3, 7.5):
        assert _rel(metric.eta(c * h, zs, params, patch), eta) < 1e-8


# -- Kaehler class -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fermat", "dwork_oracle"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_kahler_class_volume_oracle(samples, name, k):
    """mean(det g_H / det g_FS) = mean(eta w) = Vol_H / Vol_FS = 1 for every positive H."""
    variety, params, s = samples[name]
    metric = metric_for(variety, params, k)
    h = random_h(200 + k, metric.basis_size)
    eta = metric.eta_sample(h, s, params)
    ok = s.weights > 0
    f = np.asarray((eta * s.weights)[ok])
    mean, se = f.mean(), f.std(ddof=1) / math.sqrt(f.size)
    assert abs(mean - 1) < 4 * se, (mean, se)
    assert se < 0.05


def test_sigma_fubini_study(samples):
    _, _, s = samples["fermat"]
    metric = AlgebraicMetric(FERMAT, MonomialBasisFull(4, 1))
    eta = metric.eta_sample(jnp.eye(5, dtype=jnp.complex128), s, None)
    est = sigma_from_eta(eta, s.weights, s.n_failed)
    assert abs(float(est.value) - 0.372) < 0.005, est
    assert float(est.stderr) < 0.003


# -- curvature ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4])
def test_fubini_study_ricci_on_projective_space(n):
    x = jax.random.normal(jax.random.PRNGKey(n), (3, n), jnp.complex128) * 0.7
    ric = jax.jit(jax.vmap(lambda y: ricci_tensor(proj.fs_metric, y)))(x)
    g = proj.fs_metric(x)
    np.testing.assert_allclose(ric, (n + 1) * jnp.pi * g, rtol=1e-10, atol=1e-12)
    scalar = jnp.real(jnp.trace(jnp.linalg.solve(g, ric), axis1=-2, axis2=-1))
    np.testing.assert_allclose(scalar, n * (n + 1) * jnp.pi, rtol=1e-10)


@pytest.mark.parametrize("name, k, h_seed", [("fermat", 2, 300), ("dwork_curv", 1, None)])
def test_total_scalar_curvature_vanishes(samples, name, k, h_seed):
    variety, params, s = samples[name]
    count = 300
    metric = metric_for(variety, params, k)
    N = metric.basis_size
    h = jnp.eye(N, dtype=jnp.complex128) if h_seed is None else random_h(h_seed, N)
    zs, patch, dep, w = s.zs[:count], s.patch[:count], s.dependent[:count], s.weights[:count]
    R = metric.ricci_scalar(h, zs, params, patch, dep)
    eta = metric.eta(h, zs, params, patch, dep)
    f = np.asarray(R * eta * w)
    se = f.std(ddof=1) / math.sqrt(count)
    assert np.all(np.isfinite(f))
    assert abs(f.mean()) < 4 * se, (f.mean(), se)
    assert np.abs(f).mean() > 8 * se  # while the curvature itself is far from zero


def _monomials_by_powers(z, exponents):
    """z (n+1,) -> prod_i z_i^e_ti (T,): a power table and a gather (written here, not
    taken from the library, so that the reference is independent of its evaluation code)."""
    top = int(exponents.max())
    pw = jnp.stack([z**p for p in range(top + 1)], axis=-1)  # (n+1, top+1)
    return jnp.prod(pw[np.arange(z.shape[0]), exponents], axis=-1)


def _independent_ricci(metric, h, params, z0, patch, dep):
    """-d d-bar log det g with g = d d-bar K_H in local coordinates: nested autodiff of the
    potential log(s^T H conj(s)) / (pi k), sections and Q evaluated from their exponent
    tables here, the dependent coordinate by Newton's method with an autodiff derivative
    (3 steps from a point of X: exact to order 7 in the displacement, beyond the 4
    derivatives taken)."""
    variety = metric.variety
    poly = variety.poly
    coeffs = poly.coefficients(params, z0.dtype)
    exps = np.asarray(metric.sections.exponents)
    n = z0.shape[-1]
    a = jnp.arange(n - 1)
    kept = a + (a >= dep)

    def embed(x):
        z = z0.at[kept].set(x)

        def q_of(w):
            zh = proj.affine_to_hom(z.at[dep].set(w), patch)
            return jnp.sum(coeffs * _monomials_by_powers(zh, np.asarray(poly.exponents)))

        w = z0[dep]
        for _ in range(3):
            w = w - q_of(w) / jax.jacfwd(q_of, holomorphic=True)(w)
        return z.at[dep].set(w)

    def potential(x):
        s = _monomials_by_powers(proj.affine_to_hom(embed(x), patch), exps)
        return jnp.log(jnp.real(s @ h @ jnp.conj(s))) / (jnp.pi * metric.degree)

    def logdet(x):
        g = proj.complex_hessian(potential, x)
        return jnp.log(jnp.real(det_small(g)))

    return -proj.complex_hessian(logdet, z0[kept])


def test_ricci_matches_independent_autodiff(samples):
    variety, params, zs, patch = _small(samples, "dwork_closed", 3)
    metric = metric_for(variety, params, 2)
    h = random_h(400, metric.basis_size)
    dep = np.asarray(metric.metric(h, zs, params, patch).dependent)
    ric = metric.ricci(h, zs, params, patch)
    # One compile of the 4th-order autodiff reference, vmapped over the points.
    reference = jax.jit(jax.vmap(lambda z, p, d: _independent_ricci(metric, h, params, z, p, d)))
    ref = reference(zs, patch, jnp.asarray(dep))
    for i in range(zs.shape[0]):
        assert _rel(ric[i], ref[i]) < 1e-8


# -- batching, precision, chunks -----------------------------------------------------------------


def test_moduli_batching():
    psis = jnp.array([[0.5 + 0.3j], [1.5 + 0.7j], [-0.2 + 0.1j]])
    k = 2
    basis = MonomialBasisReduced(DWORK, k, psis[0], check=False)
    metric = AlgebraicMetric(DWORK, basis)
    s = DWORK.sample(jax.random.PRNGKey(5), psis, 64)
    assert s.zs.shape == (3, 64, 4)
    hs = jnp.stack([random_h(500 + i, basis.size) for i in range(3)])
    eta = metric.eta(hs, s.zs, psis, s.patch, s.dependent)
    assert eta.shape == (3, 64)
    for i in range(3):
        one = metric.eta(hs[i], s.zs[i], psis[i], s.patch[i], s.dependent[i])
        assert _rel(eta[i], one) < 1e-12
    shared = metric.eta(hs[0], s.zs, psis, s.patch)  # h shared, params batched
    for i in range(3):
        assert _rel(shared[i], metric.eta(hs[0], s.zs[i], psis[i], s.patch[i])) < 1e-12
    g = metric.metric(hs, s.zs, psis, s.patch)
    assert g.g.shape == (3, 64, 3, 3) and g.dependent.shape == (3, 64)
    with pytest.raises(ValueError, match="batch shape"):
        metric.eta(hs[:2], s.zs, psis, s.patch)


def test_chunked_evaluation_matches_small_calls(samples):
    """Large point sets are evaluated in chunks (plus a remainder); values and gradients
    with respect to H equal those of small unchunked calls."""
    variety, params, s = samples["dwork_closed"]
    metric = metric_for(variety, params, 1)
    count = metric._chunk_points() * 2 + 37
    zs, patch = s.zs[:count], s.patch[:count]
    h = random_h(600, metric.basis_size)
    eta = metric.eta(h, zs, params, patch)
    pieces = jnp.concatenate([metric.eta(h, zs[i : i + 100], params, patch[i : i + 100]) for i in range(0, count, 100)])
    assert _rel(eta, pieces) < 1e-13

    def loss(h, zs, patch):
        return jnp.sum(jnp.log(metric.eta(h, zs, params, patch)))

    grad = jax.jit(jax.grad(loss))(h, zs, patch)
    grad_pieces = sum(jax.jit(jax.grad(loss))(h, zs[i : i + 64], patch[i : i + 64]) for i in range(0, 64 * (count // 64), 64))
    grad_pieces = grad_pieces + jax.jit(jax.grad(loss))(h, zs[64 * (count // 64) :], patch[64 * (count // 64) :])
    assert _rel(grad, grad_pieces) < 1e-10


def test_float32_eta(samples):
    """complex64 eta at k = 4 on Dwork psi = 0.5 agrees with float64 to the round-off of
    the determinant of g, itself a difference of O(1/phi) terms: measured median ~1e-6,
    max ~2e-5 on these points; the bounds leave a factor ~10."""
    variety, params, s = samples["dwork_curv"]
    metric = metric_for(variety, params, 4)
    count = 2000
    zs, patch, dep = s.zs[:count], s.patch[:count], s.dependent[:count]
    h = random_h(700, metric.basis_size)
    eta64 = metric.eta(h, zs, params, patch, dep)
    eta32 = metric.eta(h.astype(jnp.complex64), zs.astype(jnp.complex64), params.astype(jnp.complex64), patch, dep)
    assert eta32.dtype == jnp.float32
    err = np.asarray(jnp.abs(eta32 / eta64 - 1))
    print(f"float32 eta relative error: median {np.median(err):.2e}, max {err.max():.2e}")
    assert np.median(err) < 1e-5
    assert err.max() < 2e-4


# -- validation ---------------------------------------------------------------------------------


def test_input_validation(samples):
    variety, params, zs, patch = _small(samples, "fermat", 4)
    metric = metric_for(variety, params, 2)
    N = metric.basis_size
    with pytest.raises(ValueError, match="h"):
        metric.eta(jnp.eye(N, N + 1, dtype=jnp.complex128), zs, params, patch)
    with pytest.raises(ValueError, match="h"):
        metric.eta(jnp.eye(N + 1, dtype=jnp.complex128), zs, params, patch)
    with pytest.raises(ValueError, match="h"):
        metric.eta(jnp.ones((N,), jnp.complex128), zs, params, patch)
    not_hermitian = jnp.eye(N, dtype=jnp.complex128).at[0, 1].set(0.5)
    with pytest.raises(ValueError, match="h must be hermitian"):
        metric.eta(not_hermitian, zs, params, patch)
    with pytest.raises(ValueError, match="h has non-finite"):
        metric.sigma_accuracy(jax.random.PRNGKey(0), params, jnp.eye(N, dtype=jnp.complex128) * jnp.nan, 100)
    eye = jnp.eye(N, dtype=jnp.complex128)
    with pytest.raises(ValueError, match="patch must lie in"):
        metric.eta(eye, zs, params, jnp.full_like(patch, 9))
    with pytest.raises(ValueError, match="dependent must lie in"):
        metric.eta(eye, zs, params, patch, jnp.full_like(patch, -1))
    with pytest.raises(ValueError, match="dependent must be an integer"):
        metric.eta(eye, zs, params, patch, jnp.zeros(patch.shape))
    with pytest.raises(ValueError, match="does not match"):
        metric.eta(eye, zs, params, patch[:2])
    with pytest.raises(ValueError, match="patch must lie in"):
        metric.sections(zs, jnp.full_like(patch, -1))
    with pytest.raises(ValueError, match="row sums"):
        cyflat.sections.MonomialBasis(4, 2, [[1, 0, 0, 0, 0], [3, -1, 0, 0, 0]])
    with pytest.raises(ValueError, match="table"):
        cyflat.sections.MonomialBasis(4, 2, [[2, 0, 0, 0]])
    # hermitian up to round-off (a product A A^dagger) is accepted
    metric.eta(random_h(7, N), zs, params, patch)
    with pytest.raises(ValueError, match="zs"):
        metric.eta(jnp.eye(N, dtype=jnp.complex128), zs[:, :3], params, patch)
    with pytest.raises(ValueError, match="zs"):
        metric.metric(jnp.eye(N, dtype=jnp.complex128), proj.affine_to_hom(zs, patch), params, patch)
    with pytest.raises(ValueError, match="patch"):
        metric.eta(jnp.eye(N, dtype=jnp.complex128), zs, params, patch.astype(jnp.float64))
    with pytest.raises(ValueError, match="degree"):
        AlgebraicMetric(variety, MonomialBasisFull(4, 0))
    with pytest.raises(ValueError, match="degree"):
        MonomialBasisReduced(variety, 0)
    with pytest.raises(ValueError, match="P\\^"):
        AlgebraicMetric(variety, MonomialBasisFull(3, 2))


def test_sigma_reports_points_where_the_metric_is_not_positive_definite():
    """An indefinite H: eta <= 0 (or non-finite) points are left out of sigma and counted
    in ``n_failed``, never averaged in; the value is the formula on the remaining points."""
    k, count = 1, 20_000
    metric = metric_for(FERMAT, None, k)
    h = jnp.diag(jnp.array([1.0, 1.0, 1.0, 1.0, -0.3], jnp.complex128))
    key = jax.random.PRNGKey(21)
    est = metric.sigma_accuracy(key, None, h, count)
    s = FERMAT.sample(key, None, count, dtype=jnp.complex128)  # what sigma_accuracy draws
    eta = np.asarray(metric.eta(h, s.zs, None, s.patch, s.dependent))
    w = np.asarray(s.weights)
    good = np.isfinite(eta) & (eta > 0) & (w > 0)
    assert 100 < (~good).sum() < count - 100  # the check below is not vacuous
    assert int(est.n_failed) == int(s.n_failed) + int((~good & (w > 0)).sum())
    wg, eg = w[good], eta[good]
    eta_bar = (wg * eg).sum() / wg.sum()
    ref = (wg * np.abs(eg / eta_bar - 1)).sum() / wg.sum()
    assert np.isfinite(float(est.value))
    np.testing.assert_allclose(float(est.value), ref, rtol=1e-10)
